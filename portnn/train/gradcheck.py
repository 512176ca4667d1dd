"""``gradient_check``: backpropagation against central differences, in float64."""

from __future__ import annotations

import math
from typing import Any

import numpy as np  # host side only: the perturbations and the sample of entries checked

from .._checks import count, host_array, positive_number
from ..backend import to_numpy
from ..data import n_samples, take_rows
from ..losses import Loss, get_loss
from ..nn import Module
from .arguments import batch_input, check_model, n_outputs
from .step import batch_value_and_grad, penalized_modules

__all__ = ["gradient_check"]


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
    check_model(model)
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
    xb, single = batch_input(backend, "x", x, xp.float64)
    y_host = host_array("y", y)
    if single:
        y_host = y_host[None, ...]
    target = loss.prepare_target(y_host, n_outputs(probe, take_rows(xb, 0, 1)), n_samples=n_samples(xb))
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
    penalized = penalized_modules(probe)
    _, grads, _ = batch_value_and_grad(probe, loss, xb, target, penalized)
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
