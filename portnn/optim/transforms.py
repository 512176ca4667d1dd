"""The update transforms: clipping, weight decay, momentum, Adam, RMSProp, AdaGrad, scaling.

Each follows ``torch.optim``'s formulas for its part of the rule, so that the
named optimizers (:mod:`portnn.optim.optimizers`), chains of these, equal
PyTorch's trajectories. Slot names are PyTorch's (``exp_avg``,
``momentum_buffer``, ...), which are also the names files store them under.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np  # host side only: checking arguments

from .._checks import positive_number
from .base import Transform, namespace, scaled_all
from .schedules import as_learning_rate, checked_rate, learning_rate_config

__all__ = [
    "add_decayed_weights",
    "clip_by_global_norm",
    "clip_grads_by_global_norm",
    "global_norm",
    "scale",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_rms",
    "trace",
]


def fraction(name: str, value: Any) -> float:
    """A number in [0, 1)."""
    try:
        v = positive_number(name, value, allow_zero=True)  # a TypeError for what is not a number
    except ValueError:
        v = -1.0
    if not 0 <= v < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return v


def fraction_pair(name: str, value: Any) -> tuple[float, float]:
    """Two numbers in [0, 1), given as a tuple or list (or a NumPy array of two)."""
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    if not isinstance(value, tuple | list):
        raise TypeError(
            f"{name} must be a tuple of two numbers in [0, 1) such as (0.9, 0.999), "
            f"got {type(value).__name__} {value!r}"
        )
    if len(value) != 2:
        raise ValueError(
            f"{name} must be a pair of numbers in [0, 1) such as (0.9, 0.999), "
            f"got {value!r} (length {len(value)})"
        )
    return fraction(f"{name}[0]", value[0]), fraction(f"{name}[1]", value[1])


def flag(name: str, value: Any) -> bool:
    """A boolean option: True or False (not a string, whose truth is not what it says)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def _ema(avg: Any, x: Any, decay: float) -> Any:
    """``decay * avg + (1 - decay) * x``, a new array (``avg`` is not changed)."""
    new = avg * decay
    new += (1 - decay) * x
    return new


def _zero_slots(params: Mapping[str, Any], xp: Any, **starts: float) -> dict[str, Any]:
    return {"slots": {k: {slot: xp.full_like(p, v) for slot, v in starts.items()} for k, p in params.items()}}


# ---------------------------------------------------------------- clipping


def global_norm(grads: Mapping[str, Any], xp: Any = None) -> Any:
    """The L2 norm of all gradients together, a 0-d array on their device."""
    xp = namespace(grads) if xp is None else xp
    return xp.sqrt(sum(xp.sum(g * g) for g in grads.values()))


def clip_grads_by_global_norm(grads: Mapping[str, Any], max_norm: float, xp: Any = None) -> tuple[dict[str, Any], Any]:
    """``(clipped gradients, total norm before clipping)``, as ``torch.nn.utils.clip_grad_norm_``:
    every gradient times ``min(max_norm / (total_norm + 1e-6), 1)``; new arrays, on the device."""
    max_norm = positive_number("max_norm", max_norm)
    if not grads:
        raise ValueError("clip_by_global_norm needs at least one gradient")
    xp = namespace(grads) if xp is None else xp
    total = global_norm(grads, xp)
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0)
    clipped = {k: g * (coef if coef.dtype == g.dtype else xp.astype(coef, g.dtype)) for k, g in grads.items()}
    return clipped, total


class ClipByGlobalNorm(Transform):
    def __init__(self, max_norm: float) -> None:
        self.max_norm = positive_number("max_norm", max_norm)

    def _update(self, updates, state, params, xp, owned):
        return clip_grads_by_global_norm(updates, self.max_norm, xp)[0], True

    def config(self):
        return {"max_norm": self.max_norm}


def clip_by_global_norm(max_norm: Any, *args: Any) -> Any:
    """The transform that scales the updates so that their joint L2 norm is at most ``max_norm``,
    exactly as ``torch.nn.utils.clip_grad_norm_`` (its ``1e-6`` included).

    Called with gradients first, ``clip_by_global_norm(grads, max_norm, xp)``, it clips them
    at once and returns ``(clipped, total norm)``, as :func:`clip_grads_by_global_norm`."""
    if isinstance(max_norm, Mapping):
        return clip_grads_by_global_norm(max_norm, *args)
    if args:
        raise TypeError("clip_by_global_norm(max_norm) takes one argument (or grads, max_norm, xp)")
    return ClipByGlobalNorm(max_norm)


# ---------------------------------------------------------------- scaling and decay


class Scale(Transform):
    def __init__(self, factor: float) -> None:
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not math.isfinite(factor):
            raise ValueError(f"factor must be a finite number, got {factor!r}")
        self.factor = float(factor)

    def scalar_factor(self, state):
        return self.factor

    def _update(self, updates, state, params, xp, owned):
        if self.factor == 1.0:
            return updates, owned
        return scaled_all(updates, self.factor, owned), True

    def is_identity(self):
        return self.factor == 1.0

    def config(self):
        return {"factor": self.factor}


def scale(factor: float) -> Scale:
    """Multiply the updates by a constant ``factor``."""
    return Scale(factor)


class ScaleByLearningRate(Transform):
    def __init__(self, lr: float | Callable[[int], float] | Mapping[str, Any]) -> None:
        self.lr = as_learning_rate(lr)

    def _init(self, params, xp):
        return {"lr": checked_rate(self.lr, 0) if callable(self.lr) else self.lr}

    def _prepare(self, state):
        if callable(self.lr):
            state["lr"] = checked_rate(self.lr, int(state["step"]))

    def scalar_factor(self, state):
        return -state["lr"]

    def _update(self, updates, state, params, xp, owned):
        return scaled_all(updates, -state["lr"], owned), True

    def config(self):
        return {"lr": learning_rate_config(self.lr)}


def scale_by_learning_rate(lr: float | Callable[[int], float]) -> ScaleByLearningRate:
    """Multiply the updates by ``-lr`` (a descent step). ``lr`` is a number or a schedule,
    any callable ``step -> lr`` with the step counted from 0 (as ``LambdaLR``), evaluated
    before every step; the rate lives in the state (``state["lr"]``)."""
    return ScaleByLearningRate(lr)


class AddDecayedWeights(Transform):
    def __init__(self, weight_decay: float) -> None:
        self.weight_decay = positive_number("weight_decay", weight_decay, allow_zero=True)

    def _update(self, updates, state, params, xp, owned):
        if not self.weight_decay:
            return updates, owned
        if params is None:
            raise ValueError("add_decayed_weights needs the parameters: update(grads, state, params)")
        out = {}
        for k, u in updates.items():
            decay = self.weight_decay * params[k]  # this step's own temporary: add into it
            decay += u
            out[k] = decay
        return out, True

    def is_identity(self):
        return not self.weight_decay

    def config(self):
        return {"weight_decay": self.weight_decay}


def add_decayed_weights(weight_decay: float) -> AddDecayedWeights:
    """Add ``weight_decay * param`` to the updates: before a scaling rule it is L2 decay
    (PyTorch's ``weight_decay`` of SGD and Adam), after it decoupled decay (AdamW)."""
    return AddDecayedWeights(weight_decay)


# ---------------------------------------------------------------- momentum


def _is_first(count: Any) -> Any:
    return count == 0


class Trace(Transform):
    def __init__(self, momentum: float, dampening: float = 0.0, nesterov: bool = False) -> None:
        self.momentum = positive_number("momentum", momentum, allow_zero=True)
        self.dampening = positive_number("dampening", dampening, allow_zero=True)
        self.nesterov = flag("nesterov", nesterov)
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening 0")

    def _init(self, params, xp):
        return _zero_slots(params, xp, momentum_buffer=0.0) if self.momentum else {}

    def _update(self, updates, state, params, xp, owned):
        if not self.momentum:
            return updates, owned
        slots, counts, out = state["slots"], state["counts"], {}
        for k, d in updates.items():
            buf = slots[k]["momentum_buffer"] * self.momentum
            if self.dampening:
                buf += (1 - self.dampening) * d
                first = _is_first(counts[k])  # torch starts the buffer at the first gradient, undamped
                if isinstance(first, bool):
                    buf = d * 1 if first else buf
                else:
                    buf = xp.where(first, d, buf)
            else:
                buf += d
            slots[k] = {**slots[k], "momentum_buffer": buf}
            out[k] = d + self.momentum * buf if self.nesterov else buf
        return out, self.nesterov  # without Nesterov the update is the state's own buffer

    def is_identity(self):
        return not self.momentum

    def config(self):
        return {"momentum": self.momentum, "dampening": self.dampening, "nesterov": self.nesterov}


def trace(momentum: float, dampening: float = 0.0, nesterov: bool = False) -> Trace:
    """Momentum as ``torch.optim.SGD``: ``b = momentum * b + (1 - dampening) * u`` (the first
    update starts ``b`` at ``u``); the update becomes ``b``, or ``u + momentum * b`` (Nesterov)."""
    return Trace(momentum, dampening, nesterov)


# ---------------------------------------------------------------- adaptive rules


class ScaleByAdam(Transform):
    def __init__(self, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, amsgrad: bool = False) -> None:
        self.betas = fraction_pair("betas", betas)
        self.eps = positive_number("eps", eps)
        self.amsgrad = flag("amsgrad", amsgrad)

    def _init(self, params, xp):
        more = {"max_exp_avg_sq": 0.0} if self.amsgrad else {}
        return _zero_slots(params, xp, exp_avg=0.0, exp_avg_sq=0.0, **more)

    takes_factor = True

    def _update(self, updates, state, params, xp, owned, factor=1.0):
        beta1, beta2 = self.betas
        slots, counts, out = state["slots"], state["counts"], {}
        corrections: dict[Any, tuple[Any, Any]] = {}
        for k, g in updates.items():
            own = slots[k]
            m = own["exp_avg"] * beta1
            scaled_g = g * (1 - beta1)
            m += scaled_g
            # reuse that temporary for (1 - beta2) * g * g: one large allocation fewer per step
            scaled_g *= g
            scaled_g *= (1 - beta2) / (1 - beta1)
            v = own["exp_avg_sq"] * beta2
            v += scaled_g
            new_own = {**own, "exp_avg": m, "exp_avg_sq": v}
            if self.amsgrad:
                v = new_own["max_exp_avg_sq"] = xp.maximum(own["max_exp_avg_sq"], v)
            slots[k] = new_own
            count = counts[k]
            key = count if isinstance(count, int) else id(count)
            if key not in corrections:  # torch's per-parameter step, the bias corrections of step + 1
                t = count + 1
                root_bc2 = (1 - beta2**t) ** 0.5
                corrections[key] = (root_bc2, root_bc2 / (1 - beta1**t) * factor)
            root_bc2, scalar = corrections[key]
            # torch's m / bc1 / (sqrt(v / bc2) + eps), with the corrections folded into two
            # scalars so that no pass over the arrays divides by sqrt(bc2)
            denom = xp.sqrt(v)
            denom += self.eps * root_bc2
            u = m / denom
            u *= scalar  # the bias corrections and any scalings after this transform
            out[k] = u
        return out, True

    def config(self):
        return {"betas": list(self.betas), "eps": self.eps, "amsgrad": self.amsgrad}


def scale_by_adam(betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, amsgrad: bool = False) -> ScaleByAdam:
    """Adam's direction ``m_hat / (sqrt(v_hat) + eps)`` with ``torch.optim.Adam``'s moments and
    per-parameter bias corrections (``amsgrad``: the running maximum of ``v``)."""
    return ScaleByAdam(betas, eps, amsgrad)


class ScaleByRms(Transform):
    def __init__(self, alpha: float = 0.99, eps: float = 1e-8, centered: bool = False) -> None:
        self.alpha = fraction("alpha", alpha)
        self.eps = positive_number("eps", eps)
        self.centered = flag("centered", centered)

    def _init(self, params, xp):
        return _zero_slots(params, xp, square_avg=0.0, **({"grad_avg": 0.0} if self.centered else {}))

    def _update(self, updates, state, params, xp, owned):
        slots, out = state["slots"], {}
        for k, g in updates.items():
            own = dict(slots[k])
            sq = own["square_avg"] = _ema(own["square_avg"], g * g, self.alpha)
            if self.centered:
                ga = own["grad_avg"] = _ema(own["grad_avg"], g, self.alpha)
                avg = xp.sqrt(sq - ga * ga)
            else:
                avg = xp.sqrt(sq)
            avg += self.eps
            slots[k] = own
            out[k] = g / avg
        return out, True

    def config(self):
        return {"alpha": self.alpha, "eps": self.eps, "centered": self.centered}


def scale_by_rms(alpha: float = 0.99, eps: float = 1e-8, centered: bool = False) -> ScaleByRms:
    """RMSProp's ``u / (sqrt(square_avg) + eps)`` as ``torch.optim.RMSprop`` (``centered``:
    ``sqrt(square_avg - grad_avg ** 2)``)."""
    return ScaleByRms(alpha, eps, centered)


class ScaleByAdagrad(Transform):
    def __init__(self, eps: float = 1e-10, initial_accumulator_value: float = 0.0, lr_decay: float = 0.0) -> None:
        self.eps = positive_number("eps", eps)
        self.initial_accumulator_value = positive_number(
            "initial_accumulator_value", initial_accumulator_value, allow_zero=True
        )
        self.lr_decay = positive_number("lr_decay", lr_decay, allow_zero=True)

    def _init(self, params, xp):
        return _zero_slots(params, xp, sum=self.initial_accumulator_value)

    def _update(self, updates, state, params, xp, owned):
        slots, counts, out = state["slots"], state["counts"], {}
        for k, g in updates.items():
            total = slots[k]["sum"] + g * g
            slots[k] = {**slots[k], "sum": total}
            std = xp.sqrt(total)
            std += self.eps
            u = g / std
            if self.lr_decay:  # torch's lr / (1 + (step - 1) * lr_decay), per parameter
                u *= 1 / (1 + counts[k] * self.lr_decay)
            out[k] = u
        return out, True

    def config(self):
        return {"eps": self.eps, "initial_accumulator_value": self.initial_accumulator_value, "lr_decay": self.lr_decay}


def scale_by_adagrad(eps: float = 1e-10, initial_accumulator_value: float = 0.0, lr_decay: float = 0.0) -> ScaleByAdagrad:
    """AdaGrad's ``u / (sqrt(sum) + eps)``, ``sum`` of squared updates starting at
    ``initial_accumulator_value``, as ``torch.optim.Adagrad`` (with its ``lr_decay``)."""
    return ScaleByAdagrad(eps, initial_accumulator_value, lr_decay)
