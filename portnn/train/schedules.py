"""Epoch learning-rate schedules, used as callbacks: ``fit(..., callbacks=[CosineAnnealingLR(10)])``.

Each schedule sets the rate in the optimizer state (``model.optimizer_state["lr"]``)
at the start of every epoch from the epoch index and the optimizer's own rate (its
*base* rate, ``optimizer.lr``, which nothing changes), with PyTorch's formulas. The
rate of every epoch of a run is checked when training begins: a schedule whose rate
overflows or is not a finite number >= 0 is a ``ValueError`` before the first step.
``ReduceLROnPlateau`` instead lowers the state's rate when a logged quantity stops
improving. Schedules of the step (per batch) are the optimizer's own ``lr=``: see
:mod:`portnn.optim.schedules`.
"""

from __future__ import annotations

import math
from typing import Any

from .._checks import count, positive_number
from .callbacks import Callback, _Monitor
from ..optim.base import learning_rate, with_learning_rate

__all__ = [
    "CosineAnnealingLR",
    "ExponentialLR",
    "LinearWarmup",
    "ReduceLROnPlateau",
    "Schedule",
    "StepLR",
]


class Schedule(Callback):
    """Base class: ``factor(epoch)`` times the base rate is the rate of that epoch."""

    def factor(self, epoch: int) -> float:
        raise NotImplementedError

    def lr_at(self, epoch: int, base_lr: float) -> float:
        return base_lr * self.factor(epoch)

    def _base_lr(self) -> float:
        return _constant_rate(self, self.model.optimizer)

    def _checked_lr(self, epoch: int, base: float) -> float:
        """The rate of ``epoch``, or a ValueError if it is not a finite number >= 0."""
        try:
            lr = float(self.lr_at(epoch, base))
        except OverflowError:
            lr = math.inf
        if not (math.isfinite(lr) and lr >= 0):
            raise ValueError(
                f"{type(self).__name__} gives a learning rate of {lr!r} at epoch {epoch} (base "
                f"rate {base!r}); a rate must be a finite number >= 0: check the schedule's factors"
            )
        return lr

    def on_train_begin(self, logs: dict[str, float]) -> None:
        """Check the rate of every epoch of this run before the first step."""
        params = getattr(self, "params", None) or {}
        base = self._base_lr()
        for epoch in range(params.get("initial_epoch", 0), params.get("epochs", 0)):
            self._checked_lr(epoch, base)

    def on_epoch_begin(self, epoch: int, logs: dict[str, float]) -> None:
        lr = self._checked_lr(epoch, self._base_lr())
        self.model.optimizer_state = with_learning_rate(self.model.optimizer_state, lr)


def _constant_rate(callback: Callback, optimizer: Any) -> float:
    """The optimizer's own rate, which an epoch schedule scales; a clear error for a per-step schedule."""
    lr = getattr(optimizer, "lr", None)
    if callable(lr) or not isinstance(lr, int | float):
        raise TypeError(
            f"{type(callback).__name__} sets the rate of an optimizer with a constant lr; "
            f"{optimizer!r} has lr={lr!r} (a schedule of the step sets its own rate every step)"
        )
    return float(lr)


class StepLR(Schedule):
    """Multiply the rate by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = count("step_size", step_size)
        self.gamma = positive_number("gamma", gamma)

    def factor(self, epoch: int) -> float:
        return self.gamma ** (epoch // self.step_size)


class ExponentialLR(Schedule):
    """Multiply the rate by ``gamma`` every epoch."""

    def __init__(self, gamma: float) -> None:
        self.gamma = positive_number("gamma", gamma)

    def factor(self, epoch: int) -> float:
        return self.gamma**epoch


class CosineAnnealingLR(Schedule):
    """Cosine from the base rate down to ``eta_min`` over ``T_max`` epochs."""

    def __init__(self, T_max: int, eta_min: float = 0.0) -> None:
        self.T_max = count("T_max", T_max)
        self.eta_min = positive_number("eta_min", eta_min, allow_zero=True)

    def lr_at(self, epoch: int, base_lr: float) -> float:
        cos = (1 + math.cos(math.pi * min(epoch, self.T_max) / self.T_max)) / 2
        return self.eta_min + (base_lr - self.eta_min) * cos


class LinearWarmup(Schedule):
    """Ramp linearly from ``start_factor`` × base to the base rate over ``warmup_epochs``,
    then hand over to ``after`` (another schedule, counted from the end of warm-up) if given.
    """

    def __init__(self, warmup_epochs: int, start_factor: float = 0.1, after: Schedule | None = None) -> None:
        self.warmup_epochs = count("warmup_epochs", warmup_epochs)
        self.start_factor = positive_number("start_factor", start_factor)
        self.after = after

    def lr_at(self, epoch: int, base_lr: float) -> float:
        if epoch < self.warmup_epochs:
            fraction = epoch / self.warmup_epochs
            return base_lr * (self.start_factor + (1 - self.start_factor) * fraction)
        if self.after is not None:
            return self.after.lr_at(epoch - self.warmup_epochs, base_lr)
        return base_lr


class ReduceLROnPlateau(_Monitor):
    """Multiply the rate by ``factor`` when ``monitor`` has not improved for ``patience`` epochs."""

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        min_delta: float = 1e-4,
        min_lr: float = 0.0,
        mode: str = "auto",
    ) -> None:
        super().__init__(monitor, mode, min_delta)
        self.factor = positive_number("factor", factor)
        if self.factor >= 1:
            raise ValueError(f"factor must be < 1, got {factor!r}")
        self.patience = count("patience", patience, minimum=0)
        self.min_lr = positive_number("min_lr", min_lr, allow_zero=True)

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        self.wait = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        value = self._current(logs)
        if self._improved(value):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait > self.patience:
            _constant_rate(self, self.model.optimizer)
            state = self.model.optimizer_state
            self.model.optimizer_state = with_learning_rate(state, max(learning_rate(state) * self.factor, self.min_lr))
            self.wait = 0
