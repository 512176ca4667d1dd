"""The regressor: squared error or Poisson deviance, one output per target column."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backend import to_numpy
from ..losses import HalfPoissonDeviance, HalfSquaredError, Loss
from ..nn import Module
from ..optim.optimizers import Optimizer
from ..train.inference import predict as _outputs
from ._sklearn import RegressorMixin, StrOptions, r2_score
from .base import _BaseMLP
from .places import _to_place


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor, trained by portnn on any backend.

    The parameters are those of :class:`sklearn.neural_network.MLPRegressor`
    with the same meaning -- ``loss`` is ``"squared_error"`` (half the squared
    error, as in scikit-learn) or ``"poisson"`` (half the Poisson deviance with
    a log link: ``model_`` outputs the log of the prediction) -- plus portnn's
    ``dropout``, ``batch_norm``, ``optimizer``, ``backend``, ``device`` and
    ``dtype``, as for :class:`MLPClassifier`. Targets may have several
    columns (one output each).

    Fitted attributes: ``model_``, ``loss_``, ``loss_curve_``, ``best_loss_``,
    ``validation_scores_``, ``best_validation_score_``, ``n_iter_``, ``t_``,
    ``n_features_in_``, ``n_outputs_``, ``n_layers_``, ``out_activation_``,
    ``coefs_`` and ``intercepts_``.
    """

    _parameter_constraints: dict = {
        **_BaseMLP._parameter_constraints,
        "loss": [StrOptions({"squared_error", "poisson"})],
    }

    def __init__(
        self,
        loss: str = "squared_error",
        hidden_layer_sizes: Any = (100,),
        activation: str = "relu",
        *,
        solver: str = "adam",
        alpha: float = 0.0001,
        batch_size: int | str = "auto",
        learning_rate: str = "constant",
        learning_rate_init: float = 0.001,
        power_t: float = 0.5,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: Any = None,
        tol: float = 1e-4,
        verbose: bool = False,
        warm_start: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        n_iter_no_change: int = 10,
        dropout: float = 0.0,
        batch_norm: bool = False,
        optimizer: str | Optimizer | None = None,
        backend: str | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        self.loss = loss
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes,
            activation=activation,
            solver=solver,
            alpha=alpha,
            batch_size=batch_size,
            learning_rate=learning_rate,
            learning_rate_init=learning_rate_init,
            power_t=power_t,
            max_iter=max_iter,
            shuffle=shuffle,
            random_state=random_state,
            tol=tol,
            verbose=verbose,
            warm_start=warm_start,
            momentum=momentum,
            nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            n_iter_no_change=n_iter_no_change,
            dropout=dropout,
            batch_norm=batch_norm,
            optimizer=optimizer,
            backend=backend,
            device=device,
            dtype=dtype,
        )

    _y_checks = {"y_numeric": True}

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """One epoch over ``X, y``, continuing from the previous call; ``sample_weight`` weighs
        the samples as in :meth:`fit`."""
        return self._fit(X, y, incremental=True, sample_weight=sample_weight)

    def _prepare_targets(
        self,
        y: np.ndarray,
        X: Any,
        *,
        first: bool,
        incremental: bool,
        classes: Any,
        sample_weight: np.ndarray | None,
    ) -> tuple[np.ndarray, int, np.ndarray | None]:
        if self.loss == "poisson" and (y < 0).any():
            raise ValueError(
                "Some value(s) of y are negative which is not allowed for Poisson regression."
            )
        if first:
            self.out_activation_ = "exp" if self.loss == "poisson" else "identity"
        n_outputs = 1 if y.ndim == 1 else int(y.shape[1])
        return np.asarray(y, dtype=np.float64), n_outputs, sample_weight

    def _loss(self) -> Loss:
        return HalfPoissonDeviance() if self.loss == "poisson" else HalfSquaredError()

    def _predictions(self, out: Any, xp: Any) -> Any:
        if self.loss == "poisson":
            out = xp.exp(out)
        return out[:, 0] if out.shape[1] == 1 else out

    def _validation_score(
        self, model: Module, X: Any, y: np.ndarray, sample_weight: np.ndarray | None
    ) -> float:
        pred = to_numpy(self._predictions(_outputs(model, X, check_finite=False), model.xp))
        if not np.isfinite(pred).all():
            return math.nan
        return float(r2_score(y, pred, sample_weight=sample_weight))

    def predict(self, X: Any) -> Any:
        """Predicted values: shape ``(n_samples,)``, or ``(n_samples, n_outputs)`` for several targets."""
        out, place = self._raw(X, "predict")
        return _to_place(self._predictions(out, self.model_.xp), place)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
