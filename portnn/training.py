"""Training and inference loops: value_and_grad, fit, predict, evaluate, gradient_check.

Data of any array library is accepted. Host data (NumPy, lists) is moved to the
model's device one batch at a time; data already on the model's backend is
batched on the device. Losses are summed on the device and read once per epoch,
so a training step never waits for the host.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._checks import as_input, check_ndim, check_not_empty, count, host_array, is_device_array
from .backend import Backend, _library_name, host_rng, to_numpy
from .layers import Module
from .losses import Loss, get_loss
from .optimizers import SGD, Optimizer, get_optimizer

__all__ = ["History", "evaluate", "fit", "gradient_check", "predict", "value_and_grad"]


class History:
    """What ``fit`` recorded: ``history.history["loss"]`` holds one value per epoch."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {"loss": []}
        self.epoch: list[int] = []

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __contains__(self, key: str) -> bool:
        return key in self.history

    def record(self, epoch: int, **values: float) -> None:
        self.epoch.append(epoch)
        for key, value in values.items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self) -> str:
        last = {k: v[-1] for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last})"


# ---------------------------------------------------------------- inputs


def _n_outputs(model: Module, x_row: Any) -> int:
    """Width of the model's output, from one sample through the inference path."""
    y, _ = model._forward(x_row, False)
    return int(y.shape[-1])


def _features(model: Module, name: str, X: Any, *, finite: bool) -> Any:
    """Validate a 2-D feature matrix; host data stays on the host, device data moves once."""
    backend = model.backend
    if is_device_array(X) and _library_name(X) == str(backend):
        return as_input(backend, name, X, model.compute_dtype(), ndims=(2,), finite=finite)
    if is_device_array(X):
        X = to_numpy(X)
    X = host_array(name, X)
    check_ndim(name, X.shape, (2,))
    check_not_empty(name, X.shape)
    if finite and X.dtype.kind == "f" and not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or infinity; clean the data or pass check_finite=False")
    return X


def _batch_slices(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


class _Batcher:
    """Gathers batches of (X, y) onto the model's backend in the model's dtype."""

    def __init__(self, backend: Backend, dtype: Any, X: Any, y: Any, y_dtype: Any) -> None:
        self.backend = backend
        self.xp = backend.xp
        self.on_device = is_device_array(X)
        self.dtype = dtype
        self.X = X
        self.y = y
        self.y_dtype = y_dtype
        if self.on_device and y is not None:
            self.y = backend.asarray(y, y_dtype)

    def batches(self, order: np.ndarray | None, batch_size: int) -> Iterator[tuple[Any, Any, int]]:
        n = self.X.shape[0]
        xp = self.xp
        device_order = None
        if self.on_device and order is not None:
            device_order = self.backend.asarray(order)
        for start, stop in _batch_slices(n, batch_size):
            if self.on_device:
                if device_order is None:
                    xb = self.X[start:stop, ...]
                    yb = None if self.y is None else self.y[start:stop, ...]
                else:
                    idx = device_order[start:stop]
                    xb = xp.take(self.X, idx, axis=0)
                    yb = None if self.y is None else xp.take(self.y, idx, axis=0)
            else:
                sel = slice(start, stop) if order is None else order[start:stop]
                xb = self.backend.asarray(self.X[sel], self.dtype)
                yb = None if self.y is None else self.backend.asarray(self.y[sel], self.y_dtype)
            yield xb, yb, stop - start


def _model_dtype(model: Module) -> Any:
    dtype = model.compute_dtype()
    return dtype if dtype is not None else model.xp.float32


# ---------------------------------------------------------------- value_and_grad


def value_and_grad(model: Module, loss: Loss | str, x: Any, y: Any) -> tuple[Any, dict[str, Any]]:
    """Loss of ``model`` on ``(x, y)`` and its gradient for every parameter.

    Runs the forward pass in training mode. Returns ``(loss, grads)``: the loss
    as a 0-d array of the model's backend, and a dict with the keys of
    ``model.parameters()``. The gradients are also kept for ``model.gradients()``.
    """
    loss = get_loss(loss)
    backend = model.backend
    dtype = _model_dtype(model)
    xb = as_input(backend, "x", x, dtype, finite=True)
    y_host = host_array("y", y)
    if xb.ndim == 1:
        xb = xb[None, :]
        y_host = y_host[None, ...]
    target = loss.prepare_target(y_host, _n_outputs(model, xb[:1, ...]), n_samples=xb.shape[0])
    target = backend.asarray(target, loss.target_dtype(backend, dtype, target))
    value, grads = _value_and_grad(model, loss, xb, target)
    model._store_gradients(grads)
    return value, _ordered(model, grads)


def _value_and_grad(model: Module, loss: Loss, xb: Any, yb: Any) -> tuple[Any, dict[str, Any]]:
    pred, backward = model._forward(xb, True)
    value, dpred = loss.value_and_grad(pred, yb, model.xp)
    _, grads = backward(dpred, False)
    return value, grads


def _ordered(model: Module, grads: dict[str, Any]) -> dict[str, Any]:
    return {name: grads[name] for name in model.parameters() if name in grads}


# ---------------------------------------------------------------- fit


def fit(
    model: Module,
    X: Any,
    y: Any,
    loss: Loss | str | None = None,
    optimizer: Optimizer | str | None = None,
    epochs: int = 1,
    batch_size: int | None = None,
    shuffle: bool = True,
    seed: int | None = None,
    verbose: int = 1,
    check_finite: bool = True,
) -> History:
    """Train ``model`` on ``(X, y)`` with mini-batch gradient descent.

    ``loss`` and ``optimizer`` are objects or names; once given they are kept on
    the model (``model.loss``, ``model.optimizer``) and reused by later calls.
    ``batch_size=None`` trains on the full batch. ``seed`` fixes the shuffling.
    ``verbose=1`` prints one line per epoch, ``0`` nothing. Returns a :class:`History`.
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a portnn Module, got {type(model).__name__}")
    loss_obj = get_loss(loss) if loss is not None else getattr(model, "loss", None)
    if loss_obj is None:
        raise ValueError("fit needs a loss, e.g. loss='cross_entropy' or loss=pn.MSELoss()")
    if optimizer is not None:
        opt = get_optimizer(optimizer)
    else:
        opt = getattr(model, "optimizer", None) or SGD(lr=0.01)
    epochs = count("epochs", epochs, minimum=0)
    batch_size = count("batch_size", batch_size, allow_none=True)
    if not model.parameters():
        raise ValueError("model has no parameters to train")

    backend = model.backend
    xp = backend.xp
    dtype = _model_dtype(model)
    X = _features(model, "X", X, finite=check_finite)
    n = X.shape[0]
    first = backend.asarray(X[:1, ...], dtype)
    target = loss_obj.prepare_target(y, _n_outputs(model, first), n_samples=n)
    y_dtype = loss_obj.target_dtype(backend, dtype, target)
    batch_size = n if batch_size is None else min(batch_size, n)

    # everything is valid: from here on the model may change
    model.loss = loss_obj
    if opt is not getattr(model, "optimizer", None) or getattr(model, "optimizer_state", None) is None:
        model.optimizer = opt
        model.optimizer_state = opt.init(model.parameters(), xp)
    history = model.history = History()

    batcher = _Batcher(backend, dtype, X, target, y_dtype)
    slots = model._slots()
    was_training = model.training
    model.train()
    base_seed = seed if seed is not None else int(np.random.SeedSequence().entropy % 2**63)
    try:
        for epoch in range(epochs):
            start_time = time.perf_counter()
            order = host_rng([base_seed, epoch]).permutation(n) if shuffle else None
            total = 0.0
            for xb, yb, nb in batcher.batches(order, batch_size):
                value, grads = _value_and_grad(model, loss_obj, xb, yb)
                params, model.optimizer_state = opt.update(
                    model.parameters(), grads, model.optimizer_state, xp
                )
                model._assign(params, slots)
                total = total + value * nb
            epoch_loss = float(total) / n
            history.record(len(history.epoch), loss=epoch_loss)
            if verbose:
                seconds = time.perf_counter() - start_time
                print(
                    f"epoch {epoch + 1}/{epochs} - loss {epoch_loss:.6g} - {seconds:.2f}s",
                    file=sys.stdout,
                    flush=True,
                )
    finally:
        model.train(was_training)
    return history


# ---------------------------------------------------------------- predict / evaluate


def predict(model: Module, X: Any, batch_size: int | None = None, check_finite: bool = True) -> Any:
    """Outputs of ``model`` for ``X`` (2-D batch, or 1-D single sample) in inference mode.

    Returns an array of the model's backend; host data is moved batch by batch.
    """
    batch_size = count("batch_size", batch_size, allow_none=True)
    backend = model.backend
    dtype = _model_dtype(model)
    single = _ndim(X) == 1
    if single:
        return model._forward(as_input(backend, "X", X, dtype, finite=check_finite)[None, :], False)[0][0, ...]
    X = _features(model, "X", X, finite=check_finite)
    n = X.shape[0]
    batch_size = n if batch_size is None else batch_size
    outputs = [
        model._forward(xb, False)[0]
        for xb, _, _ in _Batcher(backend, dtype, X, None, None).batches(None, batch_size)
    ]
    return outputs[0] if len(outputs) == 1 else backend.xp.concat(outputs, axis=0)


def evaluate(
    model: Module,
    X: Any,
    y: Any,
    loss: Loss | str | None = None,
    batch_size: int | None = None,
    check_finite: bool = True,
) -> float:
    """Mean loss of ``model`` on ``(X, y)`` in inference mode (the model's loss if none given)."""
    loss_obj = get_loss(loss) if loss is not None else getattr(model, "loss", None)
    if loss_obj is None:
        raise ValueError("evaluate needs a loss (or a model that was fitted with one)")
    batch_size = count("batch_size", batch_size, allow_none=True)
    backend = model.backend
    dtype = _model_dtype(model)
    X = _features(model, "X", X, finite=check_finite)
    n = X.shape[0]
    first = backend.asarray(X[:1, ...], dtype)
    target = loss_obj.prepare_target(y, _n_outputs(model, first), n_samples=n)
    y_dtype = loss_obj.target_dtype(backend, dtype, target)
    total = 0.0
    batcher = _Batcher(backend, dtype, X, target, y_dtype)
    for xb, yb, nb in batcher.batches(None, n if batch_size is None else batch_size):
        pred, _ = model._forward(xb, False)
        value, _ = loss_obj.value_and_grad(pred, yb, backend.xp)
        total = total + value * nb
    return float(total) / n


def _ndim(X: Any) -> int:
    shape = getattr(X, "shape", None)
    if shape is None:
        return np.ndim(X)
    return len(shape)


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
    Relative error is ``|a - n| / max(|a|, |n|, 1e-6)``: entries smaller than
    1e-6 in both are compared absolutely, since float64 rounding in the loss
    (about 1e-16 / eps) would swamp their relative error.
    """
    loss = get_loss(loss)
    probe = model.copy()
    try:
        probe.to(dtype="float64")
    except Exception:
        probe.to("numpy", dtype="float64")
    backend = probe.backend
    xp = backend.xp
    xb = as_input(backend, "x", x, xp.float64, finite=True)
    y_host = host_array("y", y)
    if xb.ndim == 1:
        xb, y_host = xb[None, :], y_host[None, ...]
    target = loss.prepare_target(y_host, _n_outputs(probe, xb[:1, ...]), n_samples=xb.shape[0])
    target = backend.asarray(target, loss.target_dtype(backend, xp.float64, target))

    # modules that draw random numbers (Dropout) draw them from a host generator
    # ``_rng``; every evaluation starts from the same generator state, so all see one mask
    generators = [m._rng for m in probe.modules() if isinstance(getattr(m, "_rng", None), np.random.Generator)]
    states = [g.bit_generator.state for g in generators]

    def rewind() -> None:
        for g, state in zip(generators, states):
            g.bit_generator.state = state

    def loss_at() -> float:
        rewind()
        pred, _ = probe._forward(xb, True)
        return float(loss.value_and_grad(pred, target, xp)[0])

    rewind()
    _, grads = _value_and_grad(probe, loss, xb, target)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for full, owner, key in probe._slots():
        original = owner._params[key]
        values = to_numpy(original).astype(np.float64).copy()
        analytic = to_numpy(grads[full]).reshape(-1)
        flat = values.reshape(-1)
        picks = np.arange(flat.size)
        if flat.size > max_checks:
            picks = rng.choice(flat.size, size=max_checks, replace=False)
        for i in picks:
            keep = flat[i]
            flat[i] = keep + eps
            owner._params[key] = backend.asarray(values)
            plus = loss_at()
            flat[i] = keep - eps
            owner._params[key] = backend.asarray(values)
            minus = loss_at()
            flat[i] = keep
            numeric = (plus - minus) / (2 * eps)
            a = float(analytic[i])
            error = abs(a - numeric) / max(abs(a), abs(numeric), 1e-6)
            worst = max(worst, error if math.isfinite(error) else math.inf)
        owner._params[key] = original
    return worst
