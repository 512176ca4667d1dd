"""Optimizers: update rules as ``(params, grads, state) -> (params, state)``.

The update is a function of its arguments, so an immutable backend (JAX) can
run it as is; where arrays are writeable, the in-place operators update them
without temporaries (``p -= ...`` mutates a NumPy/CuPy/torch array and rebinds
a JAX one). The rules and defaults follow PyTorch's ``torch.optim``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._checks import lookup, positive_number

__all__ = ["SGD", "Optimizer", "get_optimizer"]


class Optimizer:
    """Base class: subclasses name their per-parameter slots and give ``_update_one``."""

    name = "optimizer"
    slots: tuple[str, ...] = ()

    def __init__(self, lr: float) -> None:
        self.lr = positive_number("lr", lr)

    def init(self, params: Mapping[str, Any], xp: Any) -> dict[str, Any]:
        """Fresh state: a step count and zeroed slots shaped like each parameter."""
        return {
            "step": 0,
            "slots": {
                name: {slot: xp.zeros_like(p) for slot in self.slots} for name, p in params.items()
            },
        }

    def update(
        self, params: Mapping[str, Any], grads: Mapping[str, Any], state: dict[str, Any], xp: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """One step for every parameter; returns the new parameters and state."""
        step = state["step"] + 1
        new_params = {}
        new_slots = {}
        for name, p in params.items():
            new_params[name], new_slots[name] = self._update_one(
                p, grads[name], state["slots"][name], step, xp
            )
        return new_params, {"step": step, "slots": new_slots}

    def _update_one(
        self, p: Any, g: Any, slots: dict[str, Any], step: int, xp: Any
    ) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {"lr": self.lr}

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
        lr: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(lr)
        self.momentum = positive_number("momentum", momentum, allow_zero=True)
        self.nesterov = bool(nesterov)
        self.weight_decay = positive_number("weight_decay", weight_decay, allow_zero=True)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.slots = ("momentum_buffer",) if self.momentum else ()

    def config(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
        }

    def _update_one(
        self, p: Any, g: Any, slots: dict[str, Any], step: int, xp: Any
    ) -> tuple[Any, dict[str, Any]]:
        d = g + self.weight_decay * p if self.weight_decay else g
        if self.momentum:
            buf = slots["momentum_buffer"]
            buf *= self.momentum
            buf += d
            d = d + self.momentum * buf if self.nesterov else buf
            slots = {"momentum_buffer": buf}
        p -= self.lr * d
        return p, slots


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD}


def get_optimizer(optimizer: str | Optimizer) -> Optimizer:
    """An optimizer object from a name (default settings) or an instance."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    return lookup("optimizer", optimizer, OPTIMIZERS)()
