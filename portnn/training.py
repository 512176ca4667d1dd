"""Training and inference loops: value_and_grad, fit, evaluate, predict, gradient_check.

Data of any array library is accepted (see :mod:`portnn.data`). Losses and
metrics are summed on the device and read once per epoch (or when the progress
bar redraws), so a training step never waits for the host.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np  # host side only: shuffling orders, seeds and gradient_check's perturbations

from ._checks import as_input, check_same_samples, count, host_array, positive_number
from .backend import dtype_name, host_rng, to_numpy
from .callbacks import Callback
from ._tree import flatten
from .data import Batcher, feature_matrix, is_dask, map_rows, n_samples, sample_shape, samples, take_rows
from .distributed import data_parallel as _data_parallel
from .nn import Module, Sigmoid, Softmax
from .nn.module import call_backward, provide_workflows
from .losses import Loss, get_loss
from .callbacks import needs_batch_hooks
from .metrics import Batch, Metric, get_metric, is_multilabel
from .optim.base import Transform, learning_rate
from .optim.optimizers import Adam, get_optimizer, update_trainable
from ._guard import TrainingDivergedError, all_finite, arrays_of
from ._signals import deferred_signals, redeliver
from .progress import Progress

__all__ = [
    "History",
    "TrainingDivergedError",
    "evaluate",
    "fit",
    "gradient_check",
    "predict",
    "predict_classes",
    "predict_proba",
    "value_and_grad",
]


#: the batch size of a ``fit`` that names none (``batch_size=None`` is the full batch)
DEFAULT_BATCH_SIZE = 32


class History:
    """What ``fit`` recorded, one entry per epoch.

    ``history.history`` maps ``"loss"``, each metric, their ``"val_"`` versions
    and ``"lr"`` to lists of floats; ``history.epoch`` lists the epoch indices
    and ``history.times`` the wall time of each epoch in seconds.
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {"loss": []}
        self.epoch: list[int] = []
        self.times: list[float] = []

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __contains__(self, key: str) -> bool:
        return key in self.history

    def record(self, epoch: int, seconds: float, **values: float) -> None:
        self.epoch.append(epoch)
        self.times.append(seconds)
        for key, value in values.items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self) -> str:
        last = {k: round(v[-1], 6) for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last})"


# ---------------------------------------------------------------- shared pieces


def _model_dtype(model: Module) -> Any:
    dtype = model.compute_dtype()
    return dtype if dtype is not None else model.xp.float32


def _n_outputs(model: Module, x_row: Any) -> int:
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


def _ends_in_probabilities(model: Module) -> bool:
    """Whether the model's output is that of a Softmax or a Sigmoid."""
    return isinstance(model.output_layer(), Sigmoid | Softmax)


def _outputs_are_logits(model: Module, loss: Loss | None) -> bool:
    """Whether outputs are raw scores (threshold 0) rather than probabilities (0.5)."""
    if _ends_in_probabilities(model):
        return False
    return bool(getattr(loss, "from_logits", False))


class _Targets:
    """Targets validated on the host once, with the dtype they take on the backend."""

    def __init__(self, model: Module, loss: Loss, X: Any, y: Any, name: str = "y") -> None:
        backend = model.backend
        dtype = _model_dtype(model)
        first = take_rows(X, 0, 1)
        first = tuple(backend.asarray(f, dtype) for f in first) if isinstance(first, tuple) else backend.asarray(first, dtype)
        self.n_outputs = _n_outputs(model, first)
        try:
            self.values = loss.prepare_target(y, self.n_outputs, n_samples=n_samples(X))
        except (TypeError, ValueError) as e:
            raise type(e)(str(e).replace("y ", f"{name} ", 1) if name != "y" else str(e)) from None
        self.dtype = loss.target_dtype(backend, dtype, self.values)


def _penalized(model: Module) -> list[tuple[str, Module]]:
    return [(prefix, m) for prefix, m in model.named_modules() if m.has_penalty()]


def _add_penalties(model: Module, penalized: list[tuple[str, Module]], value: Any, grads: dict[str, Any]) -> Any:
    """Add L1/L2 penalties of layers that have them to the loss value and gradients."""
    for prefix, module in penalized:
        penalty, penalty_grads = module.penalty()
        value = value + penalty
        for key, g in penalty_grads.items():
            grads[prefix + key] = grads[prefix + key] + g
    return value


def _value_and_grad(
    model: Module, loss: Loss, xb: Any, yb: Any, penalized: list[tuple[str, Module]], wb: Any = None
) -> tuple[Any, dict[str, Any], Any]:
    """(loss value, gradients by full parameter name, predictions) for one batch
    (``wb``: its sample weights, or None)."""
    pred, backward = model.apply(xb, True)
    value, dpred = loss.value_and_grad(pred, yb, model.xp, weight=wb)
    grads = flatten(call_backward(backward, dpred, False)[1])
    if penalized:
        value = _add_penalties(model, penalized, value, grads)
    return value, grads, pred


# ---------------------------------------------------------------- value_and_grad


def value_and_grad(model: Module, loss: Loss | str, x: Any, y: Any) -> tuple[Any, dict[str, Any]]:
    """Loss of ``model`` on ``(x, y)`` and its gradient for every parameter.

    Runs the forward pass in training mode. Returns ``(loss, grads)``: the loss
    as a 0-d array of the model's backend (layer penalties included), and a dict
    with the keys of ``model.parameters(trainable_only=True)`` (frozen parameters
    have none). The gradients are also kept for ``model.gradients()``.
    """
    _check_model(model)
    loss = get_loss(loss)
    backend = model.backend
    dtype = _model_dtype(model)
    model.check_input_kind(x, "x")
    xb, single = _batch_input(backend, "x", x, dtype)
    y_host = host_array("y", y)
    if single:
        y_host = y_host[None, ...]
    targets = _Targets(model, loss, xb, y_host)
    target = backend.asarray(targets.values, targets.dtype)
    value, grads, _ = _value_and_grad(model, loss, xb, target, _penalized(model))
    grads = {name: grads[name] for name in model.parameters(trainable_only=True) if name in grads}
    model.store_gradients(grads)
    return value, grads


def _batch_input(backend: Any, name: str, x: Any, dtype: Any, finite: bool = True) -> tuple[Any, bool]:
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


# ---------------------------------------------------------------- fit


def _check_model(model: Any) -> None:
    if not isinstance(model, Module):
        raise TypeError(f"model must be a portnn Module, got {type(model).__name__}")


def _metrics(metrics: Sequence[str | Metric] | None) -> list[Metric]:
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


def _callbacks(callbacks: Sequence[Callback] | Callback | None) -> list[Callback]:
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    if callbacks is not None and not isinstance(callbacks, list | tuple):
        raise TypeError(f"callbacks must be a list of portnn Callbacks, got {type(callbacks).__name__}")
    callbacks = list(callbacks or [])
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks[{i}] is a {type(cb).__name__}, not a portnn Callback")
    return callbacks


def _split_fraction(validation_split: Any) -> float:
    if isinstance(validation_split, bool) or not isinstance(validation_split, int | float):
        raise TypeError(f"validation_split must be a number, got {type(validation_split).__name__}")
    if not 0.0 <= float(validation_split) < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
    return float(validation_split)


def fit(
    model: Module,
    X: Any,
    y: Any,
    loss: Loss | str | None = None,
    optimizer: Transform | str | None = None,
    epochs: int = 1,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    shuffle: bool = True,
    seed: int | None = None,
    verbose: int | str = "auto",
    validation_data: tuple[Any, Any] | None = None,
    validation_split: float = 0.0,
    metrics: Sequence[str | Metric] | None = None,
    callbacks: Sequence[Callback] | None = None,
    initial_epoch: int = 0,
    check_finite: bool = True,
    on_nonfinite: str | None = "raise",
    jit: bool = False,
    distributed: Any = False,
    sample_weight: Any = None,
    class_weight: Any = None,
) -> History:
    """Train ``model`` on ``(X, y)`` with mini-batch gradient descent.

    ``loss`` and ``optimizer`` are objects or names (an optimizer may be any
    transform or ``chain(...)`` of :mod:`portnn.optim`); once given they are kept on
    the model (``model.loss``, ``model.optimizer``, ``model.optimizer_state``) and
    reused by later calls, so a second ``fit`` continues where the first stopped;
    with none given or kept, the optimizer is ``Adam(1e-3)``. Batches hold
    ``batch_size`` samples (32 unless given; ``None`` trains on the full batch);
    the last batch may be smaller.
    ``sample_weight`` (one number >= 0 per sample) and ``class_weight`` (a dict
    ``{class: weight}`` or ``"balanced"``, scikit-learn's rule) weigh every batch's
    loss as ``sum(w * l) / sum(w)`` and the metrics as scikit-learn does; a weight
    of 0 is the same as leaving the sample out. ``validation_data`` may be
    ``(X_val, y_val, sample_weight_val)``.
    The shuffling order of epoch ``k`` depends only on ``seed`` and ``k``, so
    ``initial_epoch`` resumes a run exactly. ``validation_data=(Xv, yv)`` or
    ``validation_split`` (the last fraction of ``X``, taken before shuffling)
    adds ``val_`` entries to the history. ``verbose``: ``"auto"``/``1`` a
    progress bar on a terminal (a line per epoch otherwise), ``2`` a line per
    epoch, ``0`` silent. Every argument is checked before the model changes.

    A step whose loss or gradient is NaN or infinite is never applied: with
    ``on_nonfinite="raise"`` (default) ``fit`` raises :class:`TrainingDivergedError`
    with the model at its last finite step and ``model.history`` holding the
    completed epochs; ``"skip_batch"`` skips such batches and goes on; ``None``
    turns the check (one host read per step) off. ``jit=True`` (JAX backend)
    compiles the whole step -- forward, backward and update -- with ``jax.jit``
    (see :mod:`portnn.jit`); the results equal the eager loop's within float
    rounding. Ctrl-C or SIGTERM stops
    training at the end of the current step; callbacks get ``on_interrupt``
    (a :class:`ModelCheckpoint` writes a final checkpoint), then the signal is
    handed back (Ctrl-C raises ``KeyboardInterrupt``). Callbacks that define
    ``on_train_batch_begin/end`` get them with the batch index within the epoch
    (from 0) and logs holding the batch's ``loss`` (one host read per batch, paid
    only when a callback has these hooks); validation calls the test hooks.
    ``distributed=True``
    (or a :class:`~portnn.DataParallel`) trains data-parallel over MPI
    under ``mpiexec``, each rank computing its share of every batch; see
    :mod:`portnn.distributed`.
    Returns a :class:`History`.
    """
    _check_model(model)
    loss_obj = get_loss(loss) if loss is not None else getattr(model, "loss", None)
    if loss_obj is None:
        raise ValueError("fit needs a loss, e.g. loss='cross_entropy' or loss=pn.MSELoss()")
    if optimizer is not None:
        opt = get_optimizer(optimizer)
    else:
        opt = getattr(model, "optimizer", None) or Adam(lr=1e-3)
    epochs = count("epochs", epochs, minimum=0)
    initial_epoch = count("initial_epoch", initial_epoch, minimum=0)
    if initial_epoch > epochs:
        raise ValueError(f"initial_epoch ({initial_epoch}) is past epochs ({epochs})")
    batch_size = count("batch_size", batch_size, allow_none=True)
    split = _split_fraction(validation_split)
    if split and validation_data is not None:
        raise ValueError("pass validation_data or validation_split, not both")
    metric_objs = _metrics(metrics)
    callback_objs = _callbacks(callbacks)
    seed = count("seed", seed, minimum=0, allow_none=True)
    if not isinstance(shuffle, bool):
        raise TypeError(f"shuffle must be True or False, got {shuffle!r}")
    if on_nonfinite not in ("raise", "skip_batch", None):
        raise ValueError(f"on_nonfinite must be 'raise', 'skip_batch' or None, got {on_nonfinite!r}")
    if not model.parameters():
        raise ValueError("model has no parameters to train")
    if not model.parameters(trainable_only=True):
        raise ValueError("every parameter of the model is frozen (trainable=False); unfreeze a layer to train it")
    if not isinstance(jit, bool):
        raise TypeError(f"jit must be True or False, got {jit!r}")
    if jit and model.backend != "jax":
        raise ValueError(
            f"jit=True compiles the step with jax.jit and needs the model on the 'jax' backend, "
            f"not {str(model.backend)!r}; move it with model.to('jax')"
        )
    dist = _data_parallel(distributed, jit=jit)

    backend = model.backend
    xp = backend.xp
    dtype = _model_dtype(model)
    model.check_input_kind(X, "X")
    X = samples(backend, "X", X, dtype, finite=check_finite)
    targets = _Targets(model, loss_obj, X, y)
    weights = loss_obj.sample_weights(targets.values, targets.n_outputs, sample_weight, class_weight)
    n = n_samples(X)
    validation = None
    if split:
        n_val = int(n * split)
        if n_val < 1 or n_val >= n:
            raise ValueError(f"validation_split={split} leaves {n_val} of {n} samples for validation")
        n -= n_val
        Xv, yv = take_rows(X, n, n + n_val), targets.values[n:]
        wv = None if weights is None else weights[n:]
        X, targets.values = take_rows(X, 0, n), targets.values[:n]
        if weights is not None:
            weights = weights[:n]
            if not (weights > 0).any():
                raise ValueError("every sample left for training after validation_split has weight 0")
        validation = (Xv, yv, wv)
    elif validation_data is not None:
        if not isinstance(validation_data, tuple | list) or len(validation_data) not in (2, 3):
            raise TypeError("validation_data must be a pair (X_val, y_val) or a triple (X_val, y_val, sample_weight_val)")
        Xv = samples(backend, "validation X", validation_data[0], dtype, finite=check_finite)
        if sample_shape(Xv) != sample_shape(X):
            raise ValueError(
                f"validation X has samples of shape {sample_shape(Xv)}, X of shape {sample_shape(X)}"
                if not isinstance(X, tuple) or not isinstance(Xv, tuple) or len(X) == len(Xv)
                else f"validation X has {len(Xv)} inputs, X has {len(X)}"
            )
        val_targets = _Targets(model, loss_obj, Xv, validation_data[1], "validation y")
        wv = validation_data[2] if len(validation_data) == 3 else None
        try:
            wv = loss_obj.sample_weights(val_targets.values, val_targets.n_outputs, wv)
        except (TypeError, ValueError) as e:
            raise type(e)(f"validation_data's {e}") from None
        validation = (Xv, val_targets.values, wv)
    batch_size = n if batch_size is None else min(batch_size, n)
    multilabel = is_multilabel(loss_obj, targets.n_outputs)
    if n % batch_size == 1 and any(getattr(m, "needs_batch_statistics", False) for m in model.modules()):
        raise ValueError(
            f"the last batch would hold 1 of the {n} samples, and batch normalization needs at "
            f"least 2 per batch; choose another batch_size than {batch_size}"
        )
    logged = ["loss", *(m.name for m in metric_objs), "lr"]
    if validation is not None:
        logged += [f"val_{k}" for k in logged[:-1]]
    for cb in callback_objs:
        missing = [key for key in cb.required_logs() if key not in logged]
        if missing:
            raise KeyError(
                f"{type(cb).__name__} monitors {missing[0]!r}, which fit will not log "
                f"(logged: {', '.join(sorted(logged))}); pass validation data or metrics, or monitor another key"
            )
    progress = Progress(verbose if dist is None else dist.verbose(verbose), epochs, n)
    if dist is not None:
        dist.agree(model, n_samples=n, n_features=str(sample_shape(X)), batch_size=batch_size, epochs=epochs,
                   initial_epoch=initial_epoch, shuffle=shuffle, seed=seed, validation=validation is not None)

    # everything is valid: from here on the model may change; if fit fails before its
    # first step, these are put back
    previous = {k: getattr(model, k, None) for k in ("loss", "optimizer", "optimizer_state", "history", "resume_point")}
    optimizer_before = dict(vars(opt))
    model.loss = loss_obj
    if opt is not getattr(model, "optimizer", None) or getattr(model, "optimizer_state", None) is None:
        model.optimizer = opt
        model.optimizer_state = opt.init(model.parameters(), xp)
    history = model.history = History()
    model.stop_training = False
    batcher = _batcher(model, X, targets.values, targets.dtype, weights)
    batch_hooks = needs_batch_hooks(callback_objs, "train")
    penalized = _penalized(model)
    logits = _outputs_are_logits(model, loss_obj)
    skip_steps, seed = _resume_from(model, initial_epoch, n, batch_size, seed, shuffle)
    base_seed = seed if seed is not None else int(np.random.SeedSequence().entropy % 2**63)
    params = {"epochs": epochs, "initial_epoch": initial_epoch, "steps": -(-n // batch_size), "batch_size": batch_size}
    for cb in callback_objs:
        cb.set_model(model)
        cb.set_params(params)
    logs: dict[str, Any] = {}
    check = on_nonfinite is not None
    applied = 0
    compiled = _compiled_step(model, loss_obj, opt, penalized, check) if jit else None
    with deferred_signals() as interrupt:
        train_step = compiled
        if train_step is None:
            train_step = _EagerStep(model, loss_obj, opt, penalized, check, dist, interrupt)
        try:
            if dist is not None:
                base_seed, callback_objs = dist.start(model, base_seed, callback_objs)
            for cb in callback_objs:
                cb.on_train_begin(logs)
            for epoch in range(initial_epoch, epochs):
                for cb in callback_objs:
                    cb.on_epoch_begin(epoch, logs)
                for m in metric_objs:
                    m.reset()
                progress.start_epoch(epoch)
                order = host_rng([base_seed, epoch]).permutation(n) if shuffle else None
                total: Any = 0.0
                seen = skipped = first = 0
                mass: Any = 0  # the weight seen: the number of samples when unweighted
                if skip_steps:  # an interrupted epoch resumes at the step it stopped before
                    first, total, seen, skipped, *rest = skip_steps, *model.resume_point["sums"]
                    mass = rest[0] if rest else seen
                    order = (np.arange(n) if order is None else order)[first * batch_size :]
                    skip_steps = 0
                model.resume_point = None
                batches = batcher.batches(order, batch_size) if dist is None else dist.batches(batcher, order, batch_size)
                for step, (xb, yb, nb) in enumerate(batches, start=first):
                    yb, wb = yb if weights is not None else (yb, None)
                    if batch_hooks:
                        for cb in callback_objs:
                            cb.on_train_batch_begin(step, {"size": nb})
                    value, pred, finite = train_step(xb, yb, wb)  # applied unless not finite
                    if finite is False:
                        if on_nonfinite == "raise":
                            raise TrainingDivergedError(epoch, step, float(value))
                        skipped += 1
                    else:
                        applied += 1
                        weight = nb if wb is None else xp.sum(wb)
                        total = total + value * weight
                        seen += nb
                        mass = mass + weight
                        if metric_objs:
                            batch = Batch(pred, yb, xp, logits, weight=wb, multilabel=multilabel)
                            for m in metric_objs:
                                m.update(batch)
                    if batch_hooks:
                        for cb in callback_objs:
                            cb.on_train_batch_end(step, {"loss": float(value), "size": nb})
                    if interrupt.received:
                        model.resume_point = {
                            "epoch": epoch, "step": step + 1, "n_samples": n, "batch_size": batch_size,
                            "seed": base_seed, "shuffle": shuffle, "sums": [float(total), seen, skipped],
                        }
                        if weights is not None:
                            model.resume_point["sums"].append(float(mass))
                        break
                    progress.advance(nb, lambda: {"loss": float(total) / max(float(mass), 1e-300)})
                if interrupt.received:
                    break
                if dist is not None:
                    dist.end_epoch(model, metric_objs)
                logs = {"loss": float(total) / float(mass) if seen and float(mass) > 0 else math.nan}
                logs.update(_results(metric_objs) if seen else {})
                if validation is not None:
                    val = _evaluate(model, loss_obj, *validation, targets.dtype, metric_objs, batch_size, logits,
                                    multilabel, callback_objs)
                    logs.update({f"val_{k}": v for k, v in val.items()})
                logs["lr"] = learning_rate(model.optimizer_state)
                if on_nonfinite == "skip_batch":
                    logs["skipped_batches"] = float(skipped)
                seconds = progress.end_epoch(epoch, logs)
                history.record(epoch, seconds, **{k: v for k, v in logs.items() if isinstance(v, float)})
                for cb in callback_objs:
                    cb.on_epoch_end(epoch, logs)
                if model.stop_training:
                    break
        except BaseException:
            if not applied:  # nothing was trained: the model and the optimizer are as they were
                for key, value in previous.items():
                    setattr(model, key, value)
                vars(opt).clear()
                vars(opt).update(optimizer_before)
            raise
        finally:
            batcher.close()  # the prefetch worker stops here, whatever ended the loop
            progress.close()
            if compiled is not None:
                compiled.finish()
            if dist is not None:
                dist.finish(interrupt)
        if interrupt.received:
            for cb in callback_objs:
                cb.on_interrupt(logs)
    if interrupt.received:
        redeliver(interrupt.received)  # the model is at the last completed step
        return history  # reached only if the previous handler does not raise or exit
    for cb in callback_objs:
        cb.on_train_end(logs)
    return history


class _EagerStep:
    """One training step on the portable path, op by op; call it with a batch.

    ``step(xb, yb)`` computes the loss and gradients (with ``dist``: this rank's
    share, averaged over all ranks) and the optimizer's update, which returns new
    arrays. With ``check`` set, the step is kept only if the loss, the updated
    parameters and the updated optimizer slots are all finite (one host read; a
    non-finite gradient always reaches the updated parameters); otherwise the
    model keeps its arrays and this batch's running statistics are undone.
    Returns ``(loss value, predictions, finite)``, as :class:`portnn.jit.CompiledStep` does.
    """

    def __init__(
        self, model: Module, loss: Loss, opt: Transform, penalized: list, check: bool, dist: Any, interrupt: Any
    ) -> None:
        self.model, self.loss, self.opt, self.penalized = model, loss, opt, penalized
        self.check, self.dist, self.interrupt = check, dist, interrupt
        self.xp = model.xp
        self.has_buffers = bool(model.buffers())

    def __call__(self, xb: Any, yb: Any, wb: Any = None) -> tuple[Any, Any, bool | None]:
        model, xp = self.model, self.xp
        buffers = model.buffers() if self.has_buffers and self.check else None
        compute = lambda: _value_and_grad(model, self.loss, xb, yb, self.penalized, wb)  # noqa: E731
        if self.dist is None:
            value, grads, pred = compute()
        else:  # this rank's share, then averaged over all ranks
            value, grads, pred = self.dist.value_and_grad(compute, model, xb, self.interrupt)
        # an overflow here is caught by the check below (NumPy would also warn of it)
        with np.errstate(over="ignore", invalid="ignore"):
            new_params, new_state = update_trainable(
                self.opt, model.parameters(), list(model.parameters(trainable_only=True)), grads, model.optimizer_state, xp
            )
        finite = all_finite(value, [*new_params.values(), *arrays_of(new_state)], xp) if self.check else None
        if finite is False:
            if buffers:
                model.load_buffers(buffers, check_finite=False)  # undo this batch's running statistics
            return value, pred, finite
        with model.weights_lock.writing():
            model.assign_parameters(new_params)
            model.optimizer_state = new_state
        return value, pred, finite


def _compiled_step(model: Module, loss: Loss, opt: Transform, penalized: list, check: bool) -> Any:
    from .jit import CompiledStep

    return CompiledStep(model, loss, opt, lambda m, l, xb, yb, wb: _value_and_grad(m, l, xb, yb, penalized, wb), check)


def _resume_from(model: Module, initial_epoch: int, n: int, batch_size: int, seed: int | None, shuffle: bool) -> tuple[int, int | None]:
    """(steps of the first epoch already trained, the shuffling seed) from the record an
    interrupted run left on the model (``model.resume_point``), when this call continues it."""
    point = getattr(model, "resume_point", None)
    if not point or point["epoch"] != initial_epoch:
        return 0, seed
    asked = {"n_samples": n, "batch_size": batch_size, "shuffle": shuffle}
    if seed is not None:
        asked["seed"] = seed
    differ = [k for k, v in asked.items() if point[k] != v]
    if differ:
        warnings.warn(
            f"the model was interrupted at epoch {initial_epoch}, step {point['step']} of a run with "
            f"another {', '.join(differ)}; epoch {initial_epoch} starts again from its first step",
            RuntimeWarning,
            stacklevel=3,
        )
        return 0, seed
    return point["step"], point["seed"]


def _results(metric_objs: list[Metric]) -> dict[str, Any]:
    return {m.name: m.result() for m in metric_objs}


def _batcher(model: Module, X: Any, y: Any, y_dtype: Any, weights: Any) -> Batcher:
    """Batches of ``(X, y)``, each ``y`` with its sample weights (a pair) when there are weights."""
    if weights is None:
        return Batcher(model.backend, _model_dtype(model), X, y, y_dtype)
    return Batcher(model.backend, _model_dtype(model), X, (y, weights), (y_dtype, _model_dtype(model)))


def _evaluate(
    model: Module,
    loss: Loss,
    X: Any,
    y: Any,
    weights: Any,
    y_dtype: Any,
    metric_objs: list[Metric],
    batch_size: int,
    logits: bool,
    multilabel: bool = False,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Mean loss (penalties excluded) and metrics over ``(X, y)`` in the current mode,
    weighted by ``weights`` (host, one per sample) unless None; calls the test hooks."""
    xp = model.xp
    total: Any = 0.0
    mass: Any = 0
    fresh = [copy.copy(m) for m in metric_objs]  # the training metrics keep their sums
    for m in fresh:
        m.reset()
    hooks = needs_batch_hooks(callbacks, "test")
    for cb in callbacks:
        cb.on_test_begin({})
    with _batcher(model, X, y, y_dtype, weights) as batcher:
        for i, (xb, yb, nb) in enumerate(batcher.batches(None, batch_size)):
            yb, wb = yb if weights is not None else (yb, None)
            if hooks:
                for cb in callbacks:
                    cb.on_test_batch_begin(i, {"size": nb})
            pred = model.infer(xb)
            value, _ = loss.value_and_grad(pred, yb, xp, weight=wb)
            weight = nb if wb is None else xp.sum(wb)
            total, mass = total + value * weight, mass + weight
            if fresh:
                batch = Batch(pred, yb, xp, logits, weight=wb, multilabel=multilabel)
                for m in fresh:
                    m.update(batch)
            if hooks:
                for cb in callbacks:
                    cb.on_test_batch_end(i, {"loss": float(value), "size": nb})
    results = {"loss": float(total) / float(mass) if float(mass) > 0 else math.nan, **_results(fresh)}
    for cb in callbacks:
        cb.on_test_end(dict(results))
    return results


# ---------------------------------------------------------------- evaluate / predict


def evaluate(
    model: Module,
    X: Any,
    y: Any,
    loss: Loss | str | None = None,
    metrics: Sequence[str | Metric] | None = None,
    batch_size: int | None = None,
    check_finite: bool = True,
    sample_weight: Any = None,
    class_weight: Any = None,
    callbacks: Sequence[Callback] | None = None,
) -> float | dict[str, Any]:
    """Mean loss of ``model`` on ``(X, y)`` in inference mode (the model's loss if none given).

    With ``metrics`` it returns a dict ``{"loss": ..., "accuracy": ...}`` instead
    of the loss alone. ``sample_weight``/``class_weight`` weigh the loss and the
    metrics as in ``fit`` (the metrics equal scikit-learn's weighted ones).
    ``callbacks`` get ``on_test_begin/end`` and the test batch hooks.
    """
    _check_model(model)
    loss_obj = get_loss(loss) if loss is not None else getattr(model, "loss", None)
    if loss_obj is None:
        raise ValueError("evaluate needs a loss (or a model that was fitted with one)")
    metric_objs = _metrics(metrics)
    callback_objs = _callbacks(callbacks)
    batch_size = count("batch_size", batch_size, allow_none=True)
    model.check_input_kind(X, "X")
    X = samples(model.backend, "X", X, _model_dtype(model), finite=check_finite)
    targets = _Targets(model, loss_obj, X, y)
    weights = loss_obj.sample_weights(targets.values, targets.n_outputs, sample_weight, class_weight)
    for cb in callback_objs:
        cb.set_model(model)
    with model.weights_lock.reading():  # a step in another thread never lands half-way
        results = _evaluate(
            model,
            loss_obj,
            X,
            targets.values,
            weights,
            targets.dtype,
            metric_objs,
            n_samples(X) if batch_size is None else batch_size,
            _outputs_are_logits(model, loss_obj),
            is_multilabel(loss_obj, targets.n_outputs),
            callback_objs,
        )
    return results if metrics is not None else results["loss"]


def predict(
    model: Module,
    X: Any,
    batch_size: int | None = None,
    check_finite: bool = True,
    callbacks: Sequence[Callback] | None = None,
) -> Any:
    """Outputs of ``model`` for ``X`` (2-D batch, or 1-D single sample) in inference mode.

    Returns an array of the model's backend; host data is moved batch by batch.
    A 2-D Dask array gives a Dask array, computed block by block on the workers.
    ``callbacks`` get ``on_predict_begin/end`` and the predict batch hooks (their
    logs hold the batch's ``outputs``).
    """
    _check_model(model)
    batch_size = count("batch_size", batch_size, allow_none=True)
    callback_objs = _callbacks(callbacks)
    backend = model.backend
    dtype = _model_dtype(model)
    if is_dask(X) and _ndim(X) == 2 and backend != "dask":
        return _over_dask(model, X, lambda m, b: predict(m, b, batch_size, check_finite))
    if _single(X):
        model.check_input_kind(X, "X")
        x, _ = _batch_input(backend, "X", X, dtype, finite=check_finite)
        with model.weights_lock.reading():
            return _first(model.infer(x))
    model.check_input_kind(X, "X")
    X = samples(backend, "X", X, dtype, finite=check_finite)
    n = n_samples(X)
    for cb in callback_objs:
        cb.set_model(model)
        cb.on_predict_begin({})
    hooks = needs_batch_hooks(callback_objs, "predict")
    outputs = []
    # the lock: a training step in another thread never lands half-way through these outputs
    with Batcher(backend, dtype, X) as batcher, model.weights_lock.reading():
        for i, (xb, _, nb) in enumerate(batcher.batches(None, n if batch_size is None else batch_size)):
            if hooks:
                for cb in callback_objs:
                    cb.on_predict_batch_begin(i, {"size": nb})
            outputs.append(model.infer(xb))
            if hooks:
                for cb in callback_objs:
                    cb.on_predict_batch_end(i, {"outputs": outputs[-1], "size": nb})
    for cb in callback_objs:
        cb.on_predict_end({})
    return outputs[0] if len(outputs) == 1 else _concat(backend.xp, outputs)


def _single(X: Any) -> bool:
    """Whether ``X`` is one sample: a 1-D array (or a tuple of them)."""
    if isinstance(X, tuple):
        return bool(X) and all(_ndim(xi) == 1 for xi in X)
    return _ndim(X) == 1


def _first(y: Any) -> Any:
    return tuple(_first(v) for v in y) if isinstance(y, tuple) else y[0, ...]


def _concat(xp: Any, outputs: list[Any]) -> Any:
    if isinstance(outputs[0], tuple):
        return tuple(_concat(xp, [o[i] for o in outputs]) for i in range(len(outputs[0])))
    return xp.concat(outputs, axis=0)


def predict_proba(model: Module, X: Any, batch_size: int | None = None) -> Any:
    """Class probabilities: the outputs if the model ends in Softmax/Sigmoid, else softmax
    (several outputs) or sigmoid (one output, or each of several independent labels when
    the model was trained with binary cross-entropy on them) of its scores."""
    from . import functional as F

    if is_dask(X) and _ndim(X) == 2 and model.backend != "dask":
        return _over_dask(model, X, lambda m, b: predict_proba(m, b, batch_size))
    out = predict(model, X, batch_size=batch_size)
    if _ends_in_probabilities(model):
        return out
    xp = model.xp
    if out.shape[-1] == 1 or is_multilabel(getattr(model, "loss", None), out.shape[-1]):
        return F.sigmoid(out, xp=xp)
    return F.softmax(out, xp=xp)


def predict_classes(model: Module, X: Any, batch_size: int | None = None) -> Any:
    """Predicted class labels (integers of the model's backend): one per sample, or the 0/1
    matrix of independent labels for a model trained with binary cross-entropy on several."""
    from .metrics import predicted_labels

    if is_dask(X) and _ndim(X) == 2 and model.backend != "dask":
        return _over_dask(model, X, lambda m, b: predict_classes(m, b, batch_size))
    out = predict(model, X, batch_size=batch_size)
    single = out.ndim == 1
    loss = getattr(model, "loss", None)
    multilabel = is_multilabel(loss, out.shape[-1])
    labels = predicted_labels(out[None, :] if single else out, model.xp, _outputs_are_logits(model, loss), multilabel)
    return labels[0] if single else labels


def _over_dask(model: Module, X: Any, fn: Any) -> Any:
    """``fn(model, block)`` for every row block of a Dask ``X``, on the workers: a Dask array (NumPy blocks)."""
    _check_model(model)
    dtype = _model_dtype(model)
    X = feature_matrix(model.backend, "X", X, dtype, finite=False)  # values are checked block by block
    probe = to_numpy(fn(model, np.zeros((1, int(X.shape[1])), dtype_name(dtype))))  # output width and dtype
    return map_rows(X, lambda block: to_numpy(fn(model, block)), probe.shape[1] if probe.ndim == 2 else None, probe.dtype)


def _ndim(X: Any) -> int:
    shape = getattr(X, "shape", None)
    if shape is None and isinstance(X, list | tuple):
        return host_array("X", X).ndim  # a ragged list is a ValueError saying where
    return np.ndim(X) if shape is None else len(shape)


# ---------------------------------------------------------------- gradient check


def gradient_check(
    model: Module,
    loss: Loss | str,
    x: Any,
    y: Any,
    eps: float = 1e-5,
    max_checks: int = 32,
    seed: int = 0,
) -> float:
    """Largest relative error between backprop and central differences, in float64.

    Works on a float64 copy of the model (on NumPy where the backend has no
    float64); the model itself is not changed. Up to ``max_checks`` entries of
    each parameter are checked, chosen with ``seed``.
    Relative error is ``|a - n| / max(|a|, |n|, 1e-5)``: entries smaller than
    1e-5 in both are compared absolutely, since float64 rounding in the loss
    (about 1e-16 / eps) would swamp their relative error.
    """
    _check_model(model)
    loss = get_loss(loss)
    eps = positive_number("eps", eps)
    max_checks = count("max_checks", max_checks)
    seed = count("seed", seed, minimum=0)
    probe = model.copy()
    try:
        probe.to(dtype="float64")
    except Exception:
        probe.to("numpy", dtype="float64")
    backend = probe.backend
    xp = backend.xp
    xb, single = _batch_input(backend, "x", x, xp.float64)
    y_host = host_array("y", y)
    if single:
        y_host = y_host[None, ...]
    target = loss.prepare_target(y_host, _n_outputs(probe, take_rows(xb, 0, 1)), n_samples=n_samples(xb))
    target = backend.asarray(target, loss.target_dtype(backend, xp.float64, target))

    # modules that draw random numbers (Dropout) draw them from a host generator
    # ``generator``; every evaluation starts from the same generator state, so all see one mask
    generators = [
        m.generator for m in probe.modules() if isinstance(getattr(m, "generator", None), np.random.Generator)
    ]
    states = [g.bit_generator.state for g in generators]

    def rewind() -> None:
        for g, state in zip(generators, states):
            g.bit_generator.state = state

    def loss_at() -> float:
        rewind()
        pred, _ = probe.apply(xb, True)
        value, _ = loss.value_and_grad(pred, target, xp)
        for _, module in penalized:
            value = value + module.penalty()[0]
        return float(value)

    rewind()
    penalized = _penalized(probe)
    _, grads, _ = _value_and_grad(probe, loss, xb, target, penalized)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for full, original in probe.parameters().items():
        if full not in grads:
            continue  # a frozen parameter: no gradient to check
        values = to_numpy(original).astype(np.float64).copy()
        analytic = to_numpy(grads[full]).reshape(-1)
        flat = values.reshape(-1)
        picks = np.arange(flat.size)
        if flat.size > max_checks:
            picks = rng.choice(flat.size, size=max_checks, replace=False)
        for i in picks:
            keep = flat[i]
            flat[i] = keep + eps
            probe.assign_parameters({full: backend.asarray(values)})
            plus = loss_at()
            flat[i] = keep - eps
            probe.assign_parameters({full: backend.asarray(values)})
            minus = loss_at()
            flat[i] = keep
            numeric = (plus - minus) / (2 * eps)
            a = float(analytic[i])
            error = abs(a - numeric) / max(abs(a), abs(numeric), 1e-5)
            worst = max(worst, error if math.isfinite(error) else math.inf)
        probe.assign_parameters({full: original})
    return worst


provide_workflows(
    fit=fit, predict=predict, evaluate=evaluate, predict_proba=predict_proba, predict_classes=predict_classes
)
