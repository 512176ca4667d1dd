"""Optimizers: update rules as ``(params, grads, state) -> (params, state)``.

The update is a pure function: it never writes into the parameters, gradients
or state it is given, and returns new arrays. So an immutable backend (JAX) runs
it as is, ``jax.jit`` can compile it, and ``fit`` can refuse a step whose result
is not finite by simply not keeping it (nothing to undo). In-place operators are
used only on the temporaries an update creates itself, so it allocates no more
than an in-place rule would. The rules and defaults follow PyTorch's ``torch.optim``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np  # host side only: checking arguments

from ._checks import lookup, positive_number

__all__ = [
    "SGD",
    "AdaGrad",
    "Adam",
    "AdamW",
    "Optimizer",
    "RMSProp",
    "clip_by_global_norm",
    "get_optimizer",
]


def clip_by_global_norm(
    grads: Mapping[str, Any], max_norm: float, xp: Any
) -> tuple[dict[str, Any], Any]:
    """Scale ``grads`` so that their joint L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: the total norm is taken over all
    gradients together, and every gradient is multiplied by
    ``min(max_norm / (total_norm + 1e-6), 1)``. Everything stays on the device
    (no host synchronization), and the caller's arrays are not changed.

    Returns the clipped gradients (a new dict of new arrays) and the total norm
    before clipping (a 0-d array on the gradients' device).
    """
    max_norm = positive_number("max_norm", max_norm)
    if not grads:
        raise ValueError("clip_by_global_norm needs at least one gradient")
    total = xp.sqrt(sum(xp.sum(g * g) for g in grads.values()))
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0)
    clipped = {
        k: g * (coef if coef.dtype == g.dtype else xp.astype(coef, g.dtype))
        for k, g in grads.items()
    }
    return clipped, total


def _fraction(name: str, value: Any) -> float:
    """A number in [0, 1)."""
    try:
        v = positive_number(name, value, allow_zero=True)  # a TypeError for what is not a number
    except ValueError:
        v = -1.0
    if not 0 <= v < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return v


def _fraction_pair(name: str, value: Any) -> tuple[float, float]:
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
    return _fraction(f"{name}[0]", value[0]), _fraction(f"{name}[1]", value[1])


def _flag(name: str, value: Any) -> bool:
    """A boolean option: True or False (not a string, whose truth is not what it says)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def _ema(avg: Any, x: Any, decay: float) -> Any:
    """``decay * avg + (1 - decay) * x``, a new array (``avg`` is not changed)."""
    new = avg * decay
    new += (1 - decay) * x
    return new


class Optimizer:
    """Base class: subclasses name their per-parameter slots and give ``_update_one``.

    ``slots`` maps each slot name to the value it starts at (a tuple of names
    starts them at zero); ``init`` creates one array per slot and parameter,
    like the parameter (so on its backend, device and dtype). ``clip_norm`` (if
    given) clips the gradients by their global norm (:func:`clip_by_global_norm`)
    before every step. ``config()`` returns the constructor's arguments, so
    ``type(opt)(**opt.config())`` rebuilds the optimizer.
    """

    name = "optimizer"
    slots: Mapping[str, float] = {}

    def __init__(self, lr: float, clip_norm: float | None = None) -> None:
        self.lr = positive_number("lr", lr)
        self.clip_norm = None if clip_norm is None else positive_number("clip_norm", clip_norm)

    def init(self, params: Mapping[str, Any], xp: Any) -> dict[str, Any]:
        """Fresh state: a step count and slots shaped like each parameter."""
        slots = self.slots if isinstance(self.slots, Mapping) else dict.fromkeys(self.slots, 0.0)
        return {
            "step": 0,
            "slots": {
                name: {slot: xp.full_like(p, value) for slot, value in slots.items()}
                for name, p in params.items()
            },
        }

    def update(
        self, params: Mapping[str, Any], grads: Mapping[str, Any], state: dict[str, Any], xp: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """One step for every parameter; returns the new parameters and state."""
        if self.clip_norm is not None:
            grads, _ = clip_by_global_norm(grads, self.clip_norm, xp)
        step = state["step"] + 1
        new_params = {}
        new_slots = {}
        for name, p in params.items():
            new_params[name], new_slots[name] = self._update_one(
                p, grads[name], dict(state["slots"][name]), step, xp
            )
        return new_params, {"step": step, "slots": new_slots}

    def _update_one(
        self, p: Any, g: Any, slots: dict[str, Any], step: int, xp: Any
    ) -> tuple[Any, dict[str, Any]]:
        """Update one parameter; ``slots`` is this call's own dict, to fill with the new slots.

        Return new arrays: ``p``, ``g`` and the arrays in ``slots`` must not be written to."""
        raise NotImplementedError

    def _l2(self, g: Any, p: Any) -> Any:
        """The gradient with L2 weight decay added (a new array; ``g`` is not changed)."""
        return g + self.weight_decay * p if self.weight_decay else g

    def config(self) -> dict[str, Any]:
        """The constructor's arguments (JSON-friendly: tuples as lists)."""
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        params = inspect.signature(type(self).__init__).parameters.values()
        names = [q.name for q in params if q.kind in kinds and q.name != "self"]
        values = {n: getattr(self, n) for n in names}
        return {n: list(v) if isinstance(v, tuple) else v for n, v in values.items()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov and L2 weight decay.

    As ``torch.optim.SGD`` (dampening 0): ``d = g + weight_decay * p``; with
    momentum ``b = momentum * b + d`` and ``d = b`` (or ``d + momentum * b``
    with Nesterov); then ``p -= lr * d``.
    """

    name = "sgd"

    def __init__(
        self,
        lr: float = 0.001,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(lr, clip_norm)
        self.momentum = positive_number("momentum", momentum, allow_zero=True)
        self.nesterov = _flag("nesterov", nesterov)
        self.weight_decay = positive_number("weight_decay", weight_decay, allow_zero=True)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.slots = {"momentum_buffer": 0.0} if self.momentum else {}

    def _update_one(
        self, p: Any, g: Any, slots: dict[str, Any], step: int, xp: Any
    ) -> tuple[Any, dict[str, Any]]:
        d = self._l2(g, p)
        if self.momentum:
            buf = slots["momentum_buffer"] * self.momentum
            buf += d
            d = d + self.momentum * buf if self.nesterov else buf
            slots["momentum_buffer"] = buf
        return p - self.lr * d, slots


class AdaGrad(Optimizer):
    """AdaGrad, as ``torch.optim.Adagrad``.

    ``g += weight_decay * p``; ``sum += g * g``; then
    ``p -= lr / (1 + (step - 1) * lr_decay) * g / (sqrt(sum) + eps)``, with
    ``sum`` starting at ``initial_accumulator_value``.
    """

    name = "adagrad"

    def __init__(
        self,
        lr: float = 0.01,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(lr, clip_norm)
        self.lr_decay = positive_number("lr_decay", lr_decay, allow_zero=True)
        self.weight_decay = positive_number("weight_decay", weight_decay, allow_zero=True)
        self.initial_accumulator_value = positive_number(
            "initial_accumulator_value", initial_accumulator_value, allow_zero=True
        )
        self.eps = positive_number("eps", eps)
        self.slots = {"sum": self.initial_accumulator_value}

    def _update_one(
        self, p: Any, g: Any, slots: dict[str, Any], step: int, xp: Any
    ) -> tuple[Any, dict[str, Any]]:
        g = self._l2(g, p)
        total = slots["sum"] + g * g
        slots["sum"] = total
        std = xp.sqrt(total)
        std += self.eps
        return p - self.lr / (1 + (step - 1) * self.lr_decay) * (g / std), slots


class RMSProp(Optimizer):
    """RMSProp, as ``torch.optim.RMSprop``.

    ``g += weight_decay * p``; ``square_avg = alpha * square_avg + (1 - alpha) * g * g``;
    ``avg = sqrt(square_avg) + eps`` (``centered``: ``sqrt(square_avg - grad_avg ** 2) + eps``
    with ``grad_avg`` the same running average of ``g``); then ``p -= lr * g / avg``,
    or with momentum ``b = momentum * b + g / avg`` and ``p -= lr * b``.
    """

    name = "rmsprop"

    def __init__(
        self,
        lr: float = 0.01,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(lr, clip_norm)
        self.alpha = _fraction("alpha", alpha)
        self.eps = positive_number("eps", eps)
        self.weight_decay = positive_number("weight_decay", weight_decay, allow_zero=True)
        self.momentum = positive_number("momentum", momentum, allow_zero=True)
        self.centered = _flag("centered", centered)
        self.slots = {
            "square_avg": 0.0,
            **({"momentum_buffer": 0.0} if self.momentum else {}),
            **({"grad_avg": 0.0} if self.centered else {}),
        }

    def _update_one(
        self, p: Any, g: Any, slots: dict[str, Any], step: int, xp: Any
    ) -> tuple[Any, dict[str, Any]]:
        g = self._l2(g, p)
        sq = slots["square_avg"] = _ema(slots["square_avg"], g * g, self.alpha)
        if self.centered:
            ga = slots["grad_avg"] = _ema(slots["grad_avg"], g, self.alpha)
            avg = xp.sqrt(sq - ga * ga)
        else:
            avg = xp.sqrt(sq)
        avg += self.eps
        if self.momentum:
            buf = slots["momentum_buffer"] * self.momentum
            buf += g / avg
            slots["momentum_buffer"] = buf
            return p - self.lr * buf, slots
        return p - self.lr * (g / avg), slots


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam`` (``weight_decay`` is L2: added to the gradient).

    ``m = beta1 * m + (1 - beta1) * g``; ``v = beta2 * v + (1 - beta2) * g * g``
    (``amsgrad``: the running maximum of ``v`` is used in its place); then
    ``p -= lr / (1 - beta1 ** step) * m / (sqrt(v / (1 - beta2 ** step)) + eps)``.
    """

    name = "adam"
    decoupled = False

    def __init__(
        self,
        lr: float = 0.001,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(lr, clip_norm)
        self.betas = _fraction_pair("betas", betas)
        self.eps = positive_number("eps", eps)
        self.weight_decay = positive_number("weight_decay", weight_decay, allow_zero=True)
        self.amsgrad = _flag("amsgrad", amsgrad)
        self.slots = {"exp_avg": 0.0, "exp_avg_sq": 0.0}
        if self.amsgrad:
            self.slots["max_exp_avg_sq"] = 0.0

    def _update_one(
        self, p: Any, g: Any, slots: dict[str, Any], step: int, xp: Any
    ) -> tuple[Any, dict[str, Any]]:
        beta1, beta2 = self.betas
        if not self.decoupled:
            g = self._l2(g, p)
        elif self.weight_decay:
            p = p * (1 - self.lr * self.weight_decay)
        m = slots["exp_avg"] * beta1
        scaled = g * (1 - beta1)
        m += scaled
        # reuse that temporary for (1 - beta2) * g * g: one large allocation fewer per step
        scaled *= g
        scaled *= (1 - beta2) / (1 - beta1)
        v = slots["exp_avg_sq"] * beta2
        v += scaled
        slots["exp_avg"], slots["exp_avg_sq"] = m, v
        if self.amsgrad:
            v = slots["max_exp_avg_sq"] = xp.maximum(slots["max_exp_avg_sq"], v)
        # torch's lr / bc1 * m / (sqrt(v / bc2) + eps), with the bias corrections
        # folded into two scalars so that no pass over the arrays divides by sqrt(bc2)
        root_bc2 = (1 - beta2**step) ** 0.5
        denom = xp.sqrt(v)
        denom += self.eps * root_bc2
        # p - k * (m / denom), built in the quotient's own buffer (the same bits)
        new_p = m / denom
        new_p *= -(self.lr * root_bc2 / (1 - beta1**step))
        new_p += p
        return new_p, slots


class AdamW(Adam):
    """AdamW, as ``torch.optim.AdamW``: Adam with decoupled weight decay.

    Before the Adam step, ``p *= 1 - lr * weight_decay``; the gradient itself is
    not changed.
    """

    name = "adamw"
    decoupled = True

    def __init__(
        self,
        lr: float = 0.001,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        amsgrad: bool = False,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(lr, betas, eps, weight_decay, amsgrad, clip_norm)


OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.name: cls for cls in (SGD, AdaGrad, RMSProp, Adam, AdamW)
}


def get_optimizer(optimizer: str | Optimizer) -> Optimizer:
    """An optimizer object from a name (default settings) or an instance."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    return lookup("optimizer", optimizer, OPTIMIZERS)()


def update_trainable(
    opt: Optimizer, params: dict[str, Any], trainable: Sequence[str], grads: dict[str, Any], state: dict[str, Any], xp: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The optimizer's update of the trainable parameters (``trainable``, names); frozen ones,
    and their optimizer slots, are left out and kept as they are, and so are any gradients
    a layer gave for them (they never reach gradient clipping's norm).

    Returns the new trainable parameters and the whole new state.
    """
    if len(trainable) == len(params):
        return opt.update(params, grads, state, xp)
    slots = state["slots"]
    part = {"step": state["step"], "slots": {k: slots[k] for k in trainable}}
    new_params, new_part = opt.update(
        {k: params[k] for k in trainable}, {k: grads[k] for k in trainable}, part, xp
    )
    return new_params, {**new_part, "slots": {**slots, **new_part["slots"]}}
