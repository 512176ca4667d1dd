"""Everything ``fit``, ``evaluate`` and ``predict`` check before the model changes.

:func:`plan_fit` checks every argument of ``fit`` in one place and returns a
:class:`FitPlan`: the loss, optimizer, data, targets, weights, validation data,
metrics, callbacks and the distribution strategy, all validated, so that the
loop that follows never has to refuse anything half-way.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from .._checks import as_input, check_same_samples, count
from ..data import n_samples, sample_shape, samples, take_rows
from ..losses import Loss, get_loss
from ..metrics import Metric, get_metric, is_multilabel
from ..nn import Module, Sigmoid, Softmax
from ..optim.base import Transform
from ..optim.optimizers import Adam, get_optimizer
from .callbacks import Callback
from .distributed import strategy_for
from .strategy import Strategy

__all__ = ["DEFAULT_BATCH_SIZE", "FitPlan", "Targets", "plan_fit"]

#: the batch size of a ``fit`` that names none (``batch_size=None`` is the full batch)
DEFAULT_BATCH_SIZE = 32


def check_model(model: Any) -> None:
    if not isinstance(model, Module):
        raise TypeError(f"model must be a portnn Module, got {type(model).__name__}")


def model_dtype(model: Module) -> Any:
    dtype = model.compute_dtype()
    return dtype if dtype is not None else model.xp.float32


def n_outputs(model: Module, x_row: Any) -> int:
    """Width of the model's output, from one sample through the inference path."""
    y = model.infer(x_row)
    if isinstance(y, tuple):
        raise ValueError(
            f"the model gives {len(y)} outputs (a tuple); a loss takes one: end it with a "
            "Concatenate or Add, or a layer that merges them"
        )
    if y.ndim > 2:
        raise ValueError(
            f"the model's outputs have shape {tuple(y.shape[1:])} per sample; losses and metrics take "
            "(samples, outputs): end the model with pn.Flatten() or a Dense on flattened features"
        )
    return int(y.shape[-1])


def ends_in_probabilities(model: Module) -> bool:
    """Whether the model's output is that of a Softmax or a Sigmoid."""
    return isinstance(model.output_layer(), Sigmoid | Softmax)


def outputs_are_logits(model: Module, loss: Loss | None) -> bool:
    """Whether outputs are raw scores (threshold 0) rather than probabilities (0.5)."""
    if ends_in_probabilities(model):
        return False
    return bool(getattr(loss, "from_logits", False))


class Targets:
    """Targets validated on the host once, with the dtype they take on the backend and,
    when ``sample_weight``/``class_weight`` are given, one host weight per sample."""

    def __init__(
        self, model: Module, loss: Loss, X: Any, y: Any, name: str = "y",
        sample_weight: Any = None, class_weight: Any = None, width: int | None = None,
    ) -> None:
        backend = model.backend
        dtype = model_dtype(model)
        if width is None:  # the output width, from one sample through the model (unless known)
            first = take_rows(X, 0, 1)
            first = tuple(backend.asarray(f, dtype) for f in first) if isinstance(first, tuple) else backend.asarray(first, dtype)
            width = n_outputs(model, first)
        self.n_outputs = width
        try:
            self.values = loss.prepare_target(y, self.n_outputs, n_samples=n_samples(X))
        except (TypeError, ValueError) as e:
            raise type(e)(str(e).replace("y ", f"{name} ", 1) if name != "y" else str(e)) from None
        self.dtype = loss.target_dtype(backend, dtype, self.values)
        self.weights = loss.sample_weights(self.values, self.n_outputs, sample_weight, class_weight)
        self.multilabel = is_multilabel(loss, self.n_outputs)

    def rows(self, start: int, stop: int) -> Targets:
        """These targets (and weights) for samples ``start:stop``."""
        part = copy.copy(self)
        part.values = self.values[start:stop]
        part.weights = None if self.weights is None else self.weights[start:stop]
        return part


def batch_input(backend: Any, name: str, x: Any, dtype: Any, finite: bool = True) -> tuple[Any, bool]:
    """``x`` (an array or a tuple of arrays) on ``backend`` as a batch; whether it was one sample."""
    if isinstance(x, tuple):
        if not x:
            raise ValueError(f"{name} is an empty tuple; a model with several inputs takes one array per input")
        items = tuple(as_input(backend, f"{name}[{i}]", xi, dtype, ndims=None, finite=finite) for i, xi in enumerate(x))
        if all(xi.ndim == 1 for xi in items):
            return tuple(xi[None, ...] for xi in items), True
        check_same_samples(name, items)
        return items, False
    xb = as_input(backend, name, x, dtype, ndims=None, finite=finite)
    return (xb[None, ...], True) if xb.ndim == 1 else (xb, False)


def metric_list(metrics: Sequence[str | Metric] | None) -> list[Metric]:
    if metrics is None:
        return []
    if isinstance(metrics, str | Metric):
        metrics = [metrics]
    if not isinstance(metrics, list | tuple):
        raise TypeError(
            f"metrics must be a metric name, a portnn Metric or a list of them, got {type(metrics).__name__} {metrics!r}"
        )
    for i, m in enumerate(metrics):
        if not isinstance(m, str | Metric):
            raise TypeError(f"metrics[{i}] must be a metric name or a portnn Metric, got {type(m).__name__} {m!r}")
    found = [get_metric(m) for m in metrics]
    names = [m.name for m in found]
    if len(set(names)) != len(names):
        raise ValueError(f"metrics has duplicate names: {names}")
    return found


def callback_list(callbacks: Sequence[Callback] | Callback | None) -> list[Callback]:
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    if callbacks is not None and not isinstance(callbacks, list | tuple):
        raise TypeError(f"callbacks must be a list of portnn Callbacks, got {type(callbacks).__name__}")
    callbacks = list(callbacks or [])
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks[{i}] is a {type(cb).__name__}, not a portnn Callback")
    return callbacks


def loss_of(model: Module, loss: Loss | str | None, caller: str) -> Loss:
    """``loss`` as a Loss, or the one the model was fitted with."""
    found = get_loss(loss) if loss is not None else model.loss
    if found is None:
        raise ValueError(f"{caller} needs a loss, e.g. loss='cross_entropy' or loss=pn.MSELoss()")
    return found


@dataclasses.dataclass
class FitPlan:
    """``fit``'s arguments, checked: what the training loop runs."""

    loss: Loss
    optimizer: Transform
    epochs: int
    initial_epoch: int
    batch_size: int
    shuffle: bool
    seed: int | None
    verbose: Any
    metrics: list[Metric]
    callbacks: list[Callback]
    on_nonfinite: str | None
    jit: bool
    strategy: Strategy
    X: Any
    targets: Targets
    validation: tuple[Any, Targets] | None
    logits: bool

    @property
    def n(self) -> int:
        return n_samples(self.X)

    def logged(self) -> list[str]:
        """The keys every epoch's logs will hold."""
        keys = ["loss", *(m.name for m in self.metrics), "lr"]
        if self.validation is not None:
            keys += [f"val_{k}" for k in keys[:-1]]
        return keys


def _split_fraction(validation_split: Any) -> float:
    if isinstance(validation_split, bool) or not isinstance(validation_split, int | float):
        raise TypeError(f"validation_split must be a number, got {type(validation_split).__name__}")
    if not 0.0 <= float(validation_split) < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
    return float(validation_split)


def _options(model: Module, a: dict[str, Any]) -> dict[str, Any]:
    """The arguments that need no data, checked."""
    check_model(model)
    epochs = count("epochs", a["epochs"], minimum=0)
    initial_epoch = count("initial_epoch", a["initial_epoch"], minimum=0)
    if initial_epoch > epochs:
        raise ValueError(f"initial_epoch ({initial_epoch}) is past epochs ({epochs})")
    if not isinstance(a["shuffle"], bool):
        raise TypeError(f"shuffle must be True or False, got {a['shuffle']!r}")
    if a["on_nonfinite"] not in ("raise", "skip_batch", None):
        raise ValueError(f"on_nonfinite must be 'raise', 'skip_batch' or None, got {a['on_nonfinite']!r}")
    if not model.parameters():
        raise ValueError("model has no parameters to train")
    if not model.parameters(trainable_only=True):
        raise ValueError("every parameter of the model is frozen (trainable=False); unfreeze a layer to train it")
    jit = a["jit"]
    if not isinstance(jit, bool):
        raise TypeError(f"jit must be True or False, got {jit!r}")
    if jit and model.backend != "jax":
        raise ValueError(
            f"jit=True compiles the step with jax.jit and needs the model on the 'jax' backend, "
            f"not {str(model.backend)!r}; move it with model.to('jax')"
        )
    optimizer = a["optimizer"]
    return {
        "loss": loss_of(model, a["loss"], "fit"),
        "optimizer": get_optimizer(optimizer) if optimizer is not None else model.optimizer or Adam(lr=1e-3),
        "epochs": epochs,
        "initial_epoch": initial_epoch,
        "shuffle": a["shuffle"],
        "seed": count("seed", a["seed"], minimum=0, allow_none=True),
        "verbose": a["verbose"],
        "metrics": metric_list(a["metrics"]),
        "callbacks": callback_list(a["callbacks"]),
        "on_nonfinite": a["on_nonfinite"],
        "jit": jit,
        "strategy": strategy_for(a["distributed"]),
    }


def plan_fit(model: Module, X: Any, y: Any, **a: Any) -> FitPlan:
    """Check every argument of ``fit`` (named as ``fit`` names them); nothing changes yet."""
    options = _options(model, a)
    batch_size = count("batch_size", a["batch_size"], allow_none=True)
    split = _split_fraction(a["validation_split"])
    if split and a["validation_data"] is not None:
        raise ValueError("pass validation_data or validation_split, not both")
    loss, dtype = options["loss"], model_dtype(model)
    model.check_input_kind(X, "X")
    X = samples(model.backend, "X", X, dtype, finite=a["check_finite"])
    targets = Targets(model, loss, X, y, sample_weight=a["sample_weight"], class_weight=a["class_weight"])
    n = n_samples(X)
    validation = None
    if split:
        n_val = int(n * split)
        if n_val < 1 or n_val >= n:
            raise ValueError(f"validation_split={split} leaves {n_val} of {n} samples for validation")
        n -= n_val
        validation = (take_rows(X, n, n + n_val), targets.rows(n, n + n_val))
        X, targets = take_rows(X, 0, n), targets.rows(0, n)
        if targets.weights is not None and not (targets.weights > 0).any():
            raise ValueError("every sample left for training after validation_split has weight 0")
    elif a["validation_data"] is not None:
        validation = _validation_data(model, loss, X, a["validation_data"], a["check_finite"])
    batch_size = n if batch_size is None else min(batch_size, n)
    if n % batch_size == 1 and _one_sample_starves_batch_norm(model, X):
        raise ValueError(
            f"the last batch would hold 1 of the {n} samples, and batch normalization needs at "
            f"least 2 per batch; choose another batch_size than {batch_size}"
        )
    plan = FitPlan(
        **options, batch_size=batch_size, X=X, targets=targets, validation=validation,
        logits=outputs_are_logits(model, loss),
    )
    logged = plan.logged()
    for cb in plan.callbacks:
        missing = [key for key in cb.required_logs() if key not in logged]
        if missing:
            raise KeyError(
                f"{type(cb).__name__} monitors {missing[0]!r}, which fit will not log "
                f"(logged: {', '.join(sorted(logged))}); pass validation data or metrics, or monitor another key"
            )
    return plan


def _one_sample_starves_batch_norm(model: Module, X: Any) -> bool:
    """Whether a batch of one sample would leave a layer that trains on batch statistics
    (BatchNorm) one value per channel: on (N, features) input, not on images, where one
    sample has H x W values per channel. Unknown shapes count as starving."""
    norms = {prefix[:-1] for prefix, m in model.named_modules() if getattr(m, "needs_batch_statistics", False)}
    if not norms:
        return False
    try:  # the shapes each layer gives, from one inference pass over zeros through a copy
        rows = model.summary(input_shape=sample_shape(X), file=None).rows
    except (TypeError, ValueError):
        return True
    for row in rows:
        shape = row["output_shape"] if row["name"] in norms else None  # BatchNorm keeps its input's shape
        if row["name"] in norms and (not isinstance(shape, tuple) or len(shape) < 3 or math.prod(shape[2:]) < 2):
            return True
    return False


def _validation_data(model: Module, loss: Loss, X: Any, data: Any, finite: bool) -> tuple[Any, Targets]:
    if not isinstance(data, tuple | list) or len(data) not in (2, 3):
        raise TypeError("validation_data must be a pair (X_val, y_val) or a triple (X_val, y_val, sample_weight_val)")
    Xv = samples(model.backend, "validation X", data[0], model_dtype(model), finite=finite)
    if sample_shape(Xv) != sample_shape(X):
        raise ValueError(
            f"validation X has samples of shape {sample_shape(Xv)}, X of shape {sample_shape(X)}"
            if not isinstance(X, tuple) or not isinstance(Xv, tuple) or len(X) == len(Xv)
            else f"validation X has {len(Xv)} inputs, X has {len(X)}"
        )
    try:
        targets = Targets(model, loss, Xv, data[1], "validation y", sample_weight=data[2] if len(data) == 3 else None)
    except (TypeError, ValueError) as e:
        message = str(e)
        raise type(e)(message if message.startswith("validation") else f"validation_data's {message}") from None
    return Xv, targets
