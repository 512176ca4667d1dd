"""scikit-learn estimators: :class:`MLPClassifier` and :class:`MLPRegressor` on any backend.

They take scikit-learn's parameters (those of
:class:`sklearn.neural_network.MLPClassifier` and ``MLPRegressor``, with the
same names and meanings), build a :class:`~portnn.Sequential` of
:class:`~portnn.Dense` layers and train it with :func:`portnn.fit`. So they work
in a ``Pipeline``, ``GridSearchCV`` or ``cross_val_score`` like any other
estimator, and pass scikit-learn's estimator checks; beside the usual fitted
attributes they expose the trained model as ``model_``.

With ``sklearn.config_context(array_api_dispatch=True)`` they train on the array
library of the input (PyTorch tensors, CuPy, ``array_api_strict``) and return
that library's arrays; ``backend=`` trains elsewhere (``backend="cupy"`` trains
NumPy data on the GPU) and still answers in the input's library.

This module needs scikit-learn (``pip install "portnn[sklearn]"``). ``import
portnn`` does not import it: ``portnn.MLPClassifier`` imports this module on
first use.
"""

from __future__ import annotations

import copy
import math
import numbers
import pickle
import warnings
from typing import Any

import numpy as np

try:
    import sklearn
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state
    from sklearn.utils._param_validation import Interval, Options, StrOptions
    from sklearn.utils.class_weight import compute_class_weight
    from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
    from sklearn.utils.validation import (
        _check_sample_weight,
        _num_samples,
        check_is_fitted,
        column_or_1d,
        validate_data,
    )
except ImportError as e:  # scikit-learn missing, or older than 1.6 (no validate_data)
    raise ImportError(
        "portnn.MLPClassifier and portnn.MLPRegressor need scikit-learn >= 1.6: "
        'pip install "portnn[sklearn]"'
    ) from e

import array_api_compat

from . import functional as F
from .backend import (
    Backend,
    BackendError,
    _has_float64,
    _library_name,
    _make_backend,
    backend_of,
    dtype_name,
    to_numpy,
    use_backend,
)
from .train.callbacks import Callback, restore, snapshot
from .nn import Dense, Identity, Module, ReLU, Sequential, Sigmoid, Tanh
from .losses import (
    BinaryCrossEntropy,
    BinaryLogLoss,
    CrossEntropy,
    HalfPoissonDeviance,
    HalfSquaredError,
    Loss,
)
from .optim.base import learning_rate, with_learning_rate
from .optim.optimizers import OPTIMIZERS, SGD, Adam, Optimizer
from .nn import BatchNorm, Dropout
from ._guard import TrainingDivergedError
from .train.loop import fit as _train
from .train.inference import predict as _outputs

__all__ = ["MLPClassifier", "MLPRegressor"]

_ACTIVATIONS: dict[str, type[Module]] = {
    "identity": Identity,
    "logistic": Sigmoid,
    "tanh": Tanh,
    "relu": ReLU,
}


# ---------------------------------------------------------------- helpers


def _input_namespace(X: Any) -> Any:
    """The namespace scikit-learn validates ``X`` in: its own under array API dispatch, else NumPy."""
    if sklearn.get_config()["array_api_dispatch"] and _library_name(X) not in (None, "numpy"):
        return array_api_compat.array_namespace(X)
    return np


def _float_dtypes(X: Any) -> tuple[Any, Any]:
    xp = _input_namespace(X)
    return (xp.float64, xp.float32)


def _same_place(a: Backend | None, b: Backend | None) -> bool:
    """Whether two backends (None: NumPy) are one library on one device."""
    a_name = "numpy" if a is None else str(a)
    b_name = "numpy" if b is None else str(b)
    if a_name != b_name:
        return False
    return a_name == "numpy" or getattr(a, "device", None) == getattr(b, "device", None)


def _to_place(x: Any, place: Backend | None) -> Any:
    """``x`` (an array of any backend) in the library and on the device of ``place`` (None: NumPy)."""
    if place is None or str(place) == "numpy":
        return to_numpy(x)
    if _same_place(backend_of(x), place):
        return x
    return place.asarray(x)


def _take_rows(X: Any, rows: np.ndarray) -> Any:
    """Rows of ``X`` in its own library (NumPy: fancy indexing; others: ``take``)."""
    if isinstance(X, np.ndarray):
        return X[rows]
    xp = array_api_compat.array_namespace(X)
    return xp.take(X, xp.asarray(rows, device=array_api_compat.device(X)), axis=0)


def _host_sample_weight(sample_weight: Any, n_samples: int) -> np.ndarray:
    """``sample_weight`` checked as scikit-learn checks it (a scalar or one finite number >= 0
    per sample, not all zero; the errors name ``sample_weight``), as a float64 NumPy vector.

    The weights stay on the host whatever the library of ``X``: portnn's ``fit`` takes host
    weights and moves their rows with the batches. Only the number of samples of ``X`` is
    needed, so a NumPy stand-in of that length keeps scikit-learn from moving them."""
    if _library_name(sample_weight) not in (None, "numpy"):
        sample_weight = to_numpy(sample_weight)
    rows = np.empty((n_samples, 0))
    return _check_sample_weight(sample_weight, rows, dtype=np.float64, ensure_non_negative=True)


def _weighted_part(weights: np.ndarray | None, rows: np.ndarray, part: str) -> np.ndarray | None:
    """The weights of ``rows`` (one side of the early-stopping split), refused if all zero:
    a weighted loss or score over no weight at all is 0 / 0."""
    if weights is None:
        return None
    part_weights = weights[rows]
    if not part_weights.any():
        raise ValueError(
            f"The sample weights for the {part} set are all zero (sample_weight and "
            "class_weight); consider using a different random_state or validation_fraction."
        )
    return part_weights


def _hidden_sizes(value: Any) -> list[int]:
    sizes = [value] if isinstance(value, numbers.Integral) else list(value)
    if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s <= 0 for s in sizes):
        raise ValueError(f"hidden_layer_sizes must hold integers > 0, got {value!r}")
    return [int(s) for s in sizes]


class _HostArray:
    """An array of another library, pickled as NumPy together with where it lived."""

    def __init__(self, x: Any) -> None:
        place = backend_of(x)
        self.value = np.array(to_numpy(x))
        self.backend = str(place)
        self.device = _picklable(place.device)

    def restore(self) -> Any:
        place = _place_or_numpy(self.backend, self.device)
        return self.value if place is None else place.asarray(self.value, copy=True)


def _picklable(device: Any) -> Any:
    try:
        pickle.dumps(device)
    except Exception:  # noqa: BLE001 -- a device that cannot be pickled becomes the default one
        return None
    return device


def _place_or_numpy(name: str, device: Any) -> Backend | None:
    """The backend (None for NumPy) to restore onto; NumPy, with a warning, if it is not usable here."""
    if name == "numpy":
        return None
    try:
        return _make_backend(name, device)
    except (BackendError, TypeError, ValueError, RuntimeError) as e:
        warnings.warn(
            f"the estimator was pickled on backend {name!r}, which cannot be used here ({e}); "
            "it is restored on NumPy",
            UserWarning,
            stacklevel=3,
        )
        return None


def _model_to_host(model: Sequential) -> dict[str, Any]:
    """A copy of ``model`` moved to NumPy (optimizer state included), and where it lived."""
    return {
        "model": model.copy().to("numpy"),
        "backend": str(model.backend),
        "device": _picklable(model.backend.device),
    }


def _model_from_host(saved: dict[str, Any]) -> Sequential:
    place = _place_or_numpy(saved["backend"], saved["device"])
    model = saved["model"]
    return model if place is None else model.to(str(place), device=place.device)


class _Monitor(Callback):
    """scikit-learn's bookkeeping after every epoch: the loss curve, the stopping rule
    (``tol`` / ``n_iter_no_change``, on the training loss or the validation score) and the
    SGD learning-rate schedules."""

    def __init__(
        self,
        estimator: _BaseMLP,
        optimizer: Optimizer,
        n_train: int,
        validation: Any,
        schedule: bool,
    ) -> None:
        self.estimator = estimator
        self.optimizer = optimizer
        self.n_train = n_train
        self.validation = validation
        self.schedule = schedule
        self.stopped = False
        self.best: Any = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        est = self.estimator
        est.n_iter_ += 1
        est.t_ += self.n_train
        est.loss_ = float(logs["loss"])
        est.loss_curve_.append(est.loss_)
        if est.verbose:
            print(f"Iteration {est.n_iter_}, loss = {est.loss_:.8f}")
        if self.validation is not None:
            score = est._validation_score(self.model, *self.validation)
            est.validation_scores_.append(score)
            if est.verbose:
                print(f"Validation score: {score:f}")
            if score < est.best_validation_score_ + est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                self.best = snapshot(self.model)
        else:
            if est.loss_ > est.best_loss_ - est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            est.best_loss_ = min(est.best_loss_, est.loss_)
        if self.schedule and est.learning_rate == "invscaling":
            self._set_rate(float(est.learning_rate_init) / (est.t_ + 1) ** est.power_t)
        if est._no_improvement_count > est.n_iter_no_change:
            what = "Validation score" if self.validation is not None else "Training loss"
            message = (
                f"{what} did not improve more than tol={est.tol:f} for "
                f"{est.n_iter_no_change} consecutive epochs."
            )
            if self.schedule and est.learning_rate == "adaptive" and self._rate() > 1e-6:
                self._set_rate(self._rate() / 5.0)
                est._no_improvement_count = 0
                if est.verbose:
                    print(f"{message} Setting learning rate to {self._rate():f}")
            else:
                if est.verbose:
                    print(f"{message} Stopping.")
                self.stopped = True
                self.model.stop_training = True

    def _rate(self) -> float:
        return learning_rate(self.model.optimizer_state)

    def _set_rate(self, lr: float) -> None:
        """The rate of the next steps, in the optimizer state (saved and resumed with it)."""
        self.model.optimizer_state = with_learning_rate(self.model.optimizer_state, lr)


# ---------------------------------------------------------------- the estimators


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
        layers: list[Module] = []
        with use_backend(target):
            for i in range(len(sizes) - 1):
                layers.append(Dense(sizes[i], sizes[i + 1], seed=root + i, dtype=dtype))
                if i < len(sizes) - 2:
                    if self.batch_norm:
                        layers.append(BatchNorm(sizes[i + 1], dtype=dtype))
                    layers.append(_ACTIVATIONS[self.activation]())
                    if self.dropout:
                        layers.append(Dropout(float(self.dropout), seed=root + i))
            return Sequential(*layers)

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


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier, trained by portnn on any backend.

    The parameters are those of :class:`sklearn.neural_network.MLPClassifier`
    with the same meaning (``solver`` is ``"adam"`` or ``"sgd"``; there is no
    ``"lbfgs"``), plus portnn's: ``dropout`` (after every hidden activation),
    ``batch_norm`` (:class:`~portnn.BatchNorm` before every hidden activation),
    ``optimizer`` (a portnn optimizer or its name, in place of ``solver``),
    ``backend`` and ``device`` (where to train; None: the library of the
    input), and ``dtype`` (``"float32"`` or ``"float64"``; None: that of the
    input). See the "scikit-learn" page of the documentation.

    Two classes train one sigmoid output with binary log loss, more classes a
    softmax over one output per class with cross-entropy, and a label
    indicator matrix (multi-label) one sigmoid output per label.

    ``class_weight`` (None, a dict ``{label: weight}`` with the labels as in
    ``y``, or ``"balanced"``: ``n_samples / (n_classes * count of the
    class)``, scikit-learn's rule) multiplies ``fit``'s ``sample_weight``:
    each sample weighs ``sample_weight * class_weight[its label]``.

    Fitted attributes: ``classes_``, ``model_`` (the trained
    :class:`~portnn.Sequential`), ``loss_``, ``loss_curve_``, ``best_loss_``,
    ``validation_scores_`` and ``best_validation_score_`` (with
    ``early_stopping``), ``n_iter_``, ``t_``, ``n_features_in_``,
    ``n_outputs_``, ``n_layers_``, ``out_activation_``, and ``coefs_`` /
    ``intercepts_`` (the Dense layers' weights and biases).
    """

    _parameter_constraints: dict = {
        **_BaseMLP._parameter_constraints,
        "class_weight": [None, dict, StrOptions({"balanced"})],
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
        class_weight: dict | str | None = None,
        dropout: float = 0.0,
        batch_norm: bool = False,
        optimizer: str | Optimizer | None = None,
        backend: str | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        self.class_weight = class_weight
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

    def partial_fit(
        self, X: Any, y: Any, sample_weight: Any = None, classes: Any = None
    ) -> MLPClassifier:
        """One epoch over ``X, y``, continuing from the previous call.

        ``classes`` (every label that will ever be seen) is required on the first
        call, as in scikit-learn, and may be omitted afterwards. ``sample_weight``
        weighs the samples as in :meth:`fit` (the argument order is scikit-learn's).
        """
        return self._fit(X, y, incremental=True, classes=classes, sample_weight=sample_weight)

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
        check_classification_targets(y)
        if first:
            binarizer = self._new_binarizer(y, incremental=incremental, classes=classes)
        else:
            binarizer = self._binarizer
            self._check_known_labels(y, incremental=incremental, classes=classes)
        weights = self._combined_weights(y, binarizer, sample_weight, incremental=incremental)
        if first:  # every check passed: the label bookkeeping may change
            self._binarizer = binarizer
            labels = binarizer.classes_
            source = backend_of(X)
            if labels.dtype.kind in "biuf" and source is not None and str(source) != "numpy":
                self.classes_ = source.asarray(labels)  # everything follows X
            else:
                self.classes_ = labels
            self.out_activation_ = "softmax" if binarizer.y_type_ == "multiclass" else "logistic"
        kind = binarizer.y_type_
        if kind == "multilabel-indicator":
            return np.asarray(y, dtype=np.float64), int(y.shape[1]), weights
        if kind == "multiclass":
            indices = np.searchsorted(binarizer.classes_, y).astype(np.int64)
            return indices, len(binarizer.classes_), weights
        return binarizer.transform(y)[:, 0].astype(np.float64), 1, weights  # binary: 0/1

    def _new_binarizer(self, y: np.ndarray, *, incremental: bool, classes: Any) -> LabelBinarizer:
        """The labels of a first fit (of ``classes`` for ``partial_fit``), not yet stored."""
        if incremental:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            classes = unique_labels(to_numpy(classes))
        binarizer = LabelBinarizer()
        binarizer.fit(
            classes if incremental and not type_of_target(y).startswith("multilabel") else y
        )
        if binarizer.y_type_ != "multilabel-indicator" and len(binarizer.classes_) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes in the data, "
                f"but the data contains only one class: {binarizer.classes_[0]!r}"
            )
        return binarizer

    def _check_known_labels(self, y: np.ndarray, *, incremental: bool, classes: Any) -> None:
        """scikit-learn's rules for the labels of a later ``partial_fit`` or warm ``fit``."""
        known = self._binarizer.classes_
        if incremental and classes is not None:
            classes = unique_labels(to_numpy(classes))
            if not np.array_equal(classes, known):
                raise ValueError(
                    f"`classes={classes!r}` is not the same as on last call to "
                    f"partial_fit, was: {known!r}"
                )
        seen = unique_labels(y)
        if self.warm_start and not incremental:
            if set(seen) != set(known):
                raise ValueError(
                    "warm_start can only be used where `y` has the same classes as in the "
                    f"previous call to fit. Previously got {known}, `y` has {seen}"
                )
        elif len(np.setdiff1d(seen, known, assume_unique=True)):
            raise ValueError(
                f"`y` has classes not in `self.classes_`. `self.classes_` has {known}. 'y' has {seen}."
            )

    def _combined_weights(
        self,
        y: np.ndarray,
        binarizer: LabelBinarizer,
        sample_weight: np.ndarray | None,
        *,
        incremental: bool,
    ) -> np.ndarray | None:
        """``sample_weight * class_weight[label]`` per sample (None: neither given, unweighted).

        The class weights are computed here, not by portnn's ``fit``, because the keys of a
        ``class_weight`` dict are the user's labels (strings, say), which only the estimator
        knows; ``fit`` then sees plain per-sample weights."""
        if self.class_weight is None:
            return sample_weight
        if binarizer.y_type_ == "multilabel-indicator":
            raise ValueError(
                "class_weight is not supported for multi-label targets; pass sample_weight instead"
            )
        labels = binarizer.classes_
        if isinstance(self.class_weight, str):  # "balanced", from the counts of this y
            if incremental:  # a batch's counts are not the data's: scikit-learn's SGD refuses too
                raise ValueError(
                    "class_weight='balanced' is not supported for partial_fit: compute the "
                    "weights once, compute_class_weight('balanced', classes=classes, y=y) on "
                    "(a large enough sample of) the training targets, and pass them as a dict "
                    "{label: weight}"
                )
            per_class = compute_class_weight("balanced", classes=labels, y=y)
        else:
            per_class = self._class_weight_vector(labels)
        weights = per_class[np.searchsorted(labels, y)]
        if sample_weight is not None:
            weights = weights * sample_weight
        if not weights.any():
            raise ValueError(
                "sample_weight and class_weight give every sample a weight of zero; at least "
                "one sample must weigh more than zero"
            )
        return weights

    def _class_weight_vector(self, labels: np.ndarray) -> np.ndarray:
        """One weight per class (the order of ``classes_``) from the dict ``class_weight``;
        classes it leaves out weigh 1, as in scikit-learn."""
        index = {label: i for i, label in enumerate(labels.tolist())}
        weights = np.ones(len(labels))
        for label, value in self.class_weight.items():
            if label not in index:
                raise ValueError(
                    f"class_weight has the label {label!r}, which is not one of the classes "
                    f"{labels.tolist()!r}"
                )
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(
                    f"class_weight[{label!r}] must be a finite number >= 0, got {value!r}"
                )
            weights[index[label]] = float(value)
        return weights

    def _loss(self) -> Loss:
        kind = self._binarizer.y_type_
        if kind == "multiclass":
            return CrossEntropy(from_logits=True)
        if kind == "multilabel-indicator":
            return BinaryLogLoss()
        return BinaryCrossEntropy(from_logits=True)

    def _labels_from_outputs(self, out: Any, xp: Any) -> Any:
        """Class indices (binary, multi-class) or a 0/1 indicator matrix (multi-label)."""
        if self._binarizer.y_type_ == "multilabel-indicator":
            return xp.astype(out > 0, xp.int64)
        if out.shape[1] == 1:
            return xp.astype(out[:, 0] > 0, xp.int64)
        return xp.argmax(out, axis=1)

    def _validation_score(
        self, model: Module, X: Any, y: np.ndarray, sample_weight: np.ndarray | None
    ) -> float:
        out = to_numpy(_outputs(model, X, check_finite=False))
        if not np.isfinite(out).all():
            return math.nan
        predicted = to_numpy(self._labels_from_outputs(out, np))
        return float(accuracy_score(y.astype(np.int64), predicted, sample_weight=sample_weight))

    def predict(self, X: Any) -> Any:
        """Predicted labels (an indicator matrix for multi-label targets)."""
        out, place = self._raw(X, "predict")
        labels = self._labels_from_outputs(out, self.model_.xp)
        if self._binarizer.y_type_ == "multilabel-indicator":
            return _to_place(labels, place)
        classes = self.classes_
        if isinstance(classes, np.ndarray):
            picked = classes[to_numpy(labels)]
            return picked if classes.dtype.kind not in "biuf" else _to_place(picked, place)
        xp = array_api_compat.array_namespace(classes)
        return _to_place(xp.take(classes, _to_place(labels, backend_of(classes)), axis=0), place)

    def predict_proba(self, X: Any) -> Any:
        """Probability of each class, in the order of ``classes_`` (of each label, for multi-label)."""
        out, place = self._raw(X, "predict_proba")
        return _to_place(self._proba(out, self.model_.xp, log=False), place)

    def predict_log_proba(self, X: Any) -> Any:
        """Log of :meth:`predict_proba`, computed without forming the probabilities."""
        out, place = self._raw(X, "predict_log_proba")
        return _to_place(self._proba(out, self.model_.xp, log=True), place)

    def _proba(self, out: Any, xp: Any, *, log: bool) -> Any:
        if self._binarizer.y_type_ == "multiclass":
            return F.log_softmax(out, xp=xp) if log else F.softmax(out, xp=xp)
        if log:  # log(sigmoid(z)) = min(z, 0) - log1p(exp(-|z|))

            def log_sigmoid(z: Any) -> Any:
                return xp.minimum(z, 0.0) - xp.log1p(xp.exp(-xp.abs(z)))

            positive, negative = log_sigmoid(out), log_sigmoid(-out)
        else:
            positive = F.sigmoid(out, xp=xp)
            negative = 1.0 - positive
        if self._binarizer.y_type_ == "multilabel-indicator":
            return positive
        return xp.concat([negative, positive], axis=1)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


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
