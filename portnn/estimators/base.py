"""What :class:`MLPClassifier` and :class:`MLPRegressor` share: the parameters, building
the network, training it with :func:`portnn.fit`, prediction and pickling."""

from __future__ import annotations

import copy
import numbers
import warnings
from typing import Any

import numpy as np

from ..backend import (
    Backend,
    BackendError,
    _has_float64,
    _library_name,
    _make_backend,
    backend_of,
    dtype_name,
    to_numpy,
)
from .._guard import TrainingDivergedError
from ..losses import Loss
from ..nn import Dense, Module, Sequential
from ..optim.optimizers import OPTIMIZERS, SGD, Adam, Optimizer
from ..train.callbacks import restore
from ..train.inference import predict as _outputs
from ..train.loop import fit as _train
from ._sklearn import (
    BaseEstimator,
    ClassifierMixin,
    ConvergenceWarning,
    Interval,
    Options,
    StrOptions,
    _num_samples,
    check_is_fitted,
    check_random_state,
    column_or_1d,
    sklearn,
    train_test_split,
    validate_data,
)
from .monitor import _Monitor
from .network import _ACTIVATIONS, _hidden_sizes, _network
from .pickling import _HostArray, _model_from_host, _model_to_host, _picklable, _place_or_numpy
from .places import _float_dtypes, _same_place, _take_rows
from .weights import _host_sample_weight, _weighted_part


class _BaseMLP(BaseEstimator):
    """What the classifier and the regressor share: parameters, training, prediction, pickling."""

    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(numbers.Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(_ACTIVATIONS))],
        "solver": [StrOptions({"sgd", "adam"})],
        "alpha": [Interval(numbers.Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(numbers.Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(numbers.Real, 0, None, closed="neither")],
        "power_t": [Interval(numbers.Real, 0, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(numbers.Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="left")],
        "beta_1": [Interval(numbers.Real, 0, 1, closed="left")],
        "beta_2": [Interval(numbers.Real, 0, 1, closed="left")],
        "epsilon": [Interval(numbers.Real, 0, None, closed="neither")],
        "n_iter_no_change": [
            Interval(numbers.Integral, 1, None, closed="left"),
            Options(numbers.Real, {np.inf}),
        ],
        "dropout": [Interval(numbers.Real, 0, 1, closed="left")],
        "batch_norm": ["boolean"],
        "optimizer": [None, StrOptions(set(OPTIMIZERS)), Optimizer],
        "backend": [None, str],
        "device": "no_validation",
        "dtype": "no_validation",  # checked in fit: a name or any library's float32/float64
    }

    def __init__(
        self,
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
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.optimizer = optimizer
        self.backend = backend
        self.device = device
        self.dtype = dtype

    # ------------------------------------------------------------ what subclasses give

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
        """(the targets as a host array for the loss, the number of outputs, the weight of each
        sample or None); on the first fit also the label bookkeeping (``classes_``,
        ``out_activation_``), set only once every check has passed."""
        raise NotImplementedError

    def _loss(self) -> Loss:
        raise NotImplementedError

    def _validation_score(
        self, model: Module, X: Any, y: np.ndarray, sample_weight: np.ndarray | None
    ) -> float:
        raise NotImplementedError

    # ------------------------------------------------------------ training

    def _check_input(self, X: Any, y: Any, reset: bool) -> tuple[Any, Any]:
        X, y = validate_data(
            self, X, y, multi_output=True, dtype=_float_dtypes(X), reset=reset, **self._y_checks
        )
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    _y_checks: dict[str, Any] = {}

    def _places(self, X: Any) -> tuple[Backend | None, Backend]:
        """(the library/device of the input, None for NumPy; the backend to train on)."""
        source = backend_of(X)
        if source is not None and str(source) == "numpy":
            source = None
        try:
            if self.backend is not None:
                target = _make_backend(self.backend, self.device)
            elif self.device is not None:
                target = _make_backend("numpy" if source is None else str(source), self.device)
            else:
                target = source if source is not None else _make_backend("numpy")
        except (BackendError, TypeError, ValueError) as e:
            raise ValueError(
                f"backend={self.backend!r}, device={self.device!r} cannot be used: {e}"
            ) from None
        return source, target

    def _compute_dtype(self, X: Any, target: Backend) -> str:
        if self.dtype is not None:
            name = dtype_name(self.dtype)
            if name not in ("float32", "float64"):
                raise ValueError(f"dtype must be 'float32', 'float64' or None, got {self.dtype!r}")
        else:
            name = dtype_name(X.dtype)
        if name == "float64" and not _has_float64(target):
            name = "float32"
        return name

    def _seed_root(self) -> int:
        if isinstance(self.random_state, numbers.Integral) and not isinstance(
            self.random_state, bool
        ):
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    def _build(
        self, n_features: int, n_outputs: int, target: Backend, dtype: str, root: int
    ) -> Sequential:
        sizes = [n_features, *_hidden_sizes(self.hidden_layer_sizes), n_outputs]
        return _network(
            sizes, self.activation, self.batch_norm, self.dropout, target, dtype, root
        )

    def _make_optimizer(self) -> tuple[Optimizer, bool]:
        """(a fresh optimizer, whether scikit-learn's SGD learning-rate schedules apply)."""
        choice = self.optimizer
        if isinstance(choice, Optimizer):
            return copy.deepcopy(choice), False
        solver = self.solver if choice is None else choice
        if solver == "adam":
            return Adam(
                lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2), eps=self.epsilon
            ), False
        if solver == "sgd":
            momentum = float(self.momentum)
            return SGD(
                lr=self.learning_rate_init,
                momentum=momentum,
                nesterov=bool(self.nesterovs_momentum and momentum > 0),
            ), True
        return OPTIMIZERS[solver](lr=self.learning_rate_init), False

    def _fit(
        self, X: Any, y: Any, *, incremental: bool, classes: Any = None, sample_weight: Any = None
    ) -> _BaseMLP:
        validate = getattr(self, "_validate_params", None)
        if validate is not None:
            validate()
        _hidden_sizes(self.hidden_layer_sizes)
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        first = not hasattr(self, "model_") or (not self.warm_start and not incremental)
        if sample_weight is not None:  # before validate_data, which resets n_features_in_
            sample_weight = _host_sample_weight(sample_weight, _num_samples(X))
        X, y = self._check_input(X, y, reset=first)
        if first:  # every check before the estimator changes
            source, target = self._places(X)
            dtype = self._compute_dtype(X, target)
        targets, n_outputs, weights = self._prepare_targets(
            to_numpy(y),
            X,
            first=first,
            incremental=incremental,
            classes=classes,
            sample_weight=sample_weight,
        )
        if first:
            self._start(X, n_outputs, source, target, dtype)
        model = self.model_
        X_train, t_train, w_train, validation = self._split(X, targets, weights)
        n_train = int(X_train.shape[0])
        batch_size = self._batch_size(n_train)
        self._set_penalty(model, batch_size, w_train)

        keep = incremental and model.optimizer is not None
        if keep:
            optimizer, schedule = model.optimizer, getattr(self, "_schedule", False)
        else:
            optimizer, schedule = self._make_optimizer()
        self._schedule = schedule
        monitor = _Monitor(self, optimizer, n_train, validation, schedule)
        self.n_iter_ = 0
        epochs = 1 if incremental else int(self.max_iter)
        try:
            _train(
                model,
                X_train,
                t_train,
                loss=self._loss(),
                optimizer=optimizer,
                epochs=self._epochs + epochs,
                initial_epoch=self._epochs,
                batch_size=batch_size,
                shuffle=bool(self.shuffle),
                seed=self._seed,
                verbose=0,
                callbacks=[monitor],
                check_finite=False,
                **({} if w_train is None else {"sample_weight": w_train}),
            )
        except TrainingDivergedError as e:
            raise ValueError(
                "Solver produced non-finite parameter weights. The input data may contain large "
                f"values and need to be preprocessed, or learning_rate_init is too large ({e})"
            ) from None
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", UserWarning, stacklevel=3)
        finally:
            self._epochs += self.n_iter_
        if not incremental and not monitor.stopped and self.n_iter_ == self.max_iter:
            warnings.warn(
                f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                "optimization hasn't converged yet.",
                ConvergenceWarning,
                stacklevel=3,
            )
        if validation is not None and monitor.best is not None:
            restore(model, monitor.best)
        return self

    def _start(
        self, X: Any, n_outputs: int, source: Backend | None, target: Backend, dtype: str
    ) -> None:
        """A fresh model and fresh bookkeeping: a first fit (not warm-started, not partial)."""
        self._input_place = source
        self._seed = self._seed_root()
        self._epochs = 0
        self.n_outputs_ = n_outputs
        self.model_ = self._build(int(X.shape[1]), n_outputs, target, dtype, self._seed)
        self.n_layers_ = len(_hidden_sizes(self.hidden_layer_sizes)) + 2
        self.t_ = 0
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

    def _split(
        self, X: Any, targets: np.ndarray, weights: np.ndarray | None
    ) -> tuple[Any, np.ndarray, np.ndarray | None, tuple[Any, np.ndarray, Any] | None]:
        """(X, targets, weights) to train on, and the held-out ``(X, targets, weights)`` of
        ``early_stopping`` (else None): scikit-learn's split, seeded with ``random_state`` and
        stratified for classes; the weights go with their samples."""
        if not self.early_stopping:
            return X, targets, weights, None
        stratify = targets if isinstance(self, ClassifierMixin) and targets.ndim == 1 else None
        rows = np.arange(X.shape[0])
        train_rows, val_rows = train_test_split(
            rows, test_size=self.validation_fraction, random_state=self._seed, stratify=stratify
        )
        if val_rows.shape[0] < 2:
            raise ValueError(
                "The validation set is too small. Increase 'validation_fraction' or the size "
                "of your dataset."
            )
        w_train = _weighted_part(weights, train_rows, "training")
        validation = (
            _take_rows(X, val_rows),
            targets[val_rows],
            _weighted_part(weights, val_rows, "validation"),
        )
        return _take_rows(X, train_rows), targets[train_rows], w_train, validation

    def _batch_size(self, n_train: int) -> int:
        if self.batch_size == "auto":
            return min(200, n_train)
        if self.batch_size > n_train:
            warnings.warn(
                "Got `batch_size` less than 1 or larger than sample size. It is going to be "
                "clipped",
                UserWarning,
                stacklevel=4,
            )
        return int(np.clip(self.batch_size, 1, n_train))

    def _set_penalty(self, model: Module, batch_size: int, weights: np.ndarray | None) -> None:
        """scikit-learn's ``alpha * ||W||^2 / (2 * the batch's weight)`` on every Dense layer.

        The batch's weight is its size unweighted and its sum of weights with weights, as in
        scikit-learn: so a weight of 0 leaves a sample out of the penalty's share too, and a
        weight of 2 counts it twice. ``Dense.l2`` is one number for every batch, so it takes
        the batch size times the mean weight: exact for a full batch, the mean sum otherwise.
        """
        mass = batch_size * (1.0 if weights is None else float(np.mean(weights)))
        for layer in model.layers:
            if isinstance(layer, Dense):
                layer.l2 = float(self.alpha) / (2 * mass)

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> _BaseMLP:
        """Train on ``X, y`` for up to ``max_iter`` epochs (from scratch unless ``warm_start``).

        ``sample_weight`` (one number >= 0 per sample, or None: all 1) weighs each sample's
        loss: every batch's loss is ``sum(w * l) / sum(w)``, so a weight of 0 leaves the sample
        out and an integer weight counts it as often (exactly so with one full batch). With
        ``early_stopping`` the weights follow the split and weigh the validation score.
        Returns the estimator.
        """
        return self._fit(X, y, incremental=False, sample_weight=sample_weight)

    # ------------------------------------------------------------ prediction

    def _raw(self, X: Any, method: str) -> tuple[Any, Backend | None]:
        """(the model's outputs for ``X`` on its backend, where the answer goes: X's library)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=_float_dtypes(X), reset=False)
        place = backend_of(X)
        if place is not None and str(place) == "numpy":
            place = None
        if sklearn.get_config()["array_api_dispatch"] and not _same_place(place, self._input_place):

            def describe(p: Backend | None) -> str:
                return "numpy" if p is None else f"{p} on device {p.device!r}"

            raise ValueError(
                f"Inputs passed to {type(self).__name__}.{method}() must use the same namespace and "
                f"the same device as those passed to fit(). fit() got {describe(self._input_place)}, "
                f"{method}() got {describe(place)}."
            )
        return _outputs(self.model_, X, check_finite=False), place

    # ------------------------------------------------------------ sklearn-style views of the model

    @property
    def coefs_(self) -> list[Any]:
        """The weight matrix of each Dense layer (arrays of the backend trained on)."""
        check_is_fitted(self)
        return [m.weight for m in self.model_.layers if isinstance(m, Dense)]

    @property
    def intercepts_(self) -> list[Any]:
        """The bias vector of each Dense layer (arrays of the backend trained on)."""
        check_is_fitted(self)
        return [m.bias for m in self.model_.layers if isinstance(m, Dense)]

    # ------------------------------------------------------------ pickling

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        for key, value in state.items():
            if key == "model_":
                state[key] = _model_to_host(value)
            elif _library_name(value) not in (None, "numpy"):
                state[key] = _HostArray(value)
            elif isinstance(value, Backend):
                state[key] = ("backend", str(value), _picklable(value.device))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        for key, value in state.items():
            if key == "model_":
                state[key] = _model_from_host(value)
            elif isinstance(value, _HostArray):
                state[key] = value.restore()
            elif isinstance(value, tuple) and len(value) == 3 and value[0] == "backend":
                state[key] = _place_or_numpy(value[1], value[2])
        super().__setstate__(state)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.array_api_support = True
        tags.input_tags.sparse = False
        return tags
