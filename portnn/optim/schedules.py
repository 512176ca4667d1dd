"""Learning-rate schedules: functions of the optimizer step (counted from 0, as ``LambdaLR``).

Any callable ``step -> lr`` can be an optimizer's ``lr=`` (or
:func:`~portnn.optim.scale_by_learning_rate`'s); it is evaluated on the host
before every step, also under ``fit(jit=True)``. The ones here return
:class:`LearningRateSchedule` objects, which a model file can store and rebuild
by name; their rates equal PyTorch's schedulers step by step (``LinearLR``,
``StepLR``, ``ExponentialLR``, ``MultiStepLR``, ``OneCycleLR``, and warm-up
followed by ``CosineAnnealingLR``).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._checks import count, positive_number

__all__ = [
    "LearningRateSchedule",
    "exponential_schedule",
    "linear_schedule",
    "one_cycle",
    "piecewise_constant",
    "step_schedule",
    "warmup_cosine",
]


class LearningRateSchedule:
    """A named schedule: ``schedule(step)`` is the rate of that step; ``config()`` rebuilds it."""

    def __init__(self, name: str, rate: Callable[..., float], **options: Any) -> None:
        self.name, self._rate, self.options = name, rate, options

    def __call__(self, step: int) -> float:
        return self._rate(step, **self.options)

    def config(self) -> dict[str, Any]:
        return {"schedule": self.name, **{k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items()}}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LearningRateSchedule) and other.config() == self.config()

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.options.items())})"


def _cosine(start: float, end: float, pct: float) -> float:
    """From ``start`` to ``end`` along half a cosine as ``pct`` goes 0 -> 1 (PyTorch's formula)."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _warmup_cosine(step: int, peak_lr: float, warmup_steps: int, decay_steps: int, start_lr: float, end_lr: float) -> float:
    if step < warmup_steps:
        return start_lr + (peak_lr - start_lr) * step / warmup_steps
    return _cosine(peak_lr, end_lr, min(step - warmup_steps, decay_steps) / decay_steps)


def warmup_cosine(peak_lr: float, warmup_steps: int, total_steps: int, start_lr: float = 0.0, end_lr: float = 0.0) -> LearningRateSchedule:
    """Linear warm-up from ``start_lr`` to ``peak_lr`` over ``warmup_steps``, then a cosine down to
    ``end_lr`` at ``total_steps`` (and ``end_lr`` after): PyTorch's ``LinearLR`` then
    ``CosineAnnealingLR(T_max=total_steps - warmup_steps, eta_min=end_lr)``."""
    peak_lr = positive_number("peak_lr", peak_lr)
    warmup_steps = count("warmup_steps", warmup_steps, minimum=0)
    total_steps = count("total_steps", total_steps)
    if total_steps <= warmup_steps:
        raise ValueError(f"total_steps ({total_steps}) must be more than warmup_steps ({warmup_steps})")
    return LearningRateSchedule(
        "warmup_cosine", _warmup_cosine, peak_lr=peak_lr, warmup_steps=warmup_steps,
        decay_steps=total_steps - warmup_steps, start_lr=positive_number("start_lr", start_lr, allow_zero=True),
        end_lr=positive_number("end_lr", end_lr, allow_zero=True),
    )


def _linear(step: int, start_lr: float, end_lr: float, steps: int) -> float:
    return start_lr + (end_lr - start_lr) * min(step, steps) / steps


def linear_schedule(start_lr: float, end_lr: float, steps: int) -> LearningRateSchedule:
    """From ``start_lr`` to ``end_lr`` in a straight line over ``steps``, then ``end_lr``
    (PyTorch's ``LinearLR`` with ``start_factor * lr = start_lr``, ``end_factor * lr = end_lr``)."""
    return LearningRateSchedule(
        "linear_schedule", _linear, start_lr=positive_number("start_lr", start_lr, allow_zero=True),
        end_lr=positive_number("end_lr", end_lr, allow_zero=True), steps=count("steps", steps),
    )


def _step(step: int, lr: float, step_size: int, gamma: float) -> float:
    return lr * gamma ** (step // step_size)


def step_schedule(lr: float, step_size: int, gamma: float = 0.1) -> LearningRateSchedule:
    """``lr`` times ``gamma`` every ``step_size`` steps (PyTorch's ``StepLR``, stepped per batch)."""
    return LearningRateSchedule(
        "step_schedule", _step, lr=positive_number("lr", lr), step_size=count("step_size", step_size),
        gamma=positive_number("gamma", gamma),
    )


def _exponential(step: int, lr: float, gamma: float) -> float:
    return lr * gamma**step


def exponential_schedule(lr: float, gamma: float) -> LearningRateSchedule:
    """``lr * gamma ** step`` (PyTorch's ``ExponentialLR``, stepped per batch)."""
    return LearningRateSchedule("exponential_schedule", _exponential, lr=positive_number("lr", lr), gamma=positive_number("gamma", gamma))


def _piecewise(step: int, boundaries: Sequence[int], values: Sequence[float]) -> float:
    return values[bisect.bisect_right(boundaries, step)]


def piecewise_constant(boundaries: Sequence[int], values: Sequence[float]) -> LearningRateSchedule:
    """``values[0]`` before ``boundaries[0]``, ``values[i]`` from ``boundaries[i - 1]`` on: one
    value more than boundaries, which increase (PyTorch's ``MultiStepLR`` when each value is
    the previous times ``gamma``)."""
    boundaries = [count(f"boundaries[{i}]", b) for i, b in enumerate(boundaries)]
    values = [positive_number(f"values[{i}]", v, allow_zero=True) for i, v in enumerate(values)]
    if len(values) != len(boundaries) + 1:
        raise ValueError(f"piecewise_constant needs one value more than boundaries, got {len(values)} and {len(boundaries)}")
    if any(a >= b for a, b in zip(boundaries, boundaries[1:])):
        raise ValueError(f"boundaries must increase, got {boundaries}")
    return LearningRateSchedule("piecewise_constant", _piecewise, boundaries=boundaries, values=values)


def _one_cycle(step: int, max_lr: float, total_steps: int, pct_start: float, div_factor: float,
               final_div_factor: float, anneal_strategy: str, three_phase: bool) -> float:
    initial = max_lr / div_factor
    minimum = initial / final_div_factor
    if three_phase:
        phases = [(float(pct_start * total_steps) - 1, initial, max_lr),
                  (float(2 * pct_start * total_steps) - 2, max_lr, initial), (total_steps - 1, initial, minimum)]
    else:
        phases = [(float(pct_start * total_steps) - 1, initial, max_lr), (total_steps - 1, max_lr, minimum)]
    step = min(step, total_steps - 1)  # PyTorch raises past the cycle; the last rate stays
    start_step = 0.0
    for i, (end_step, start, end) in enumerate(phases):
        if step <= end_step or i == len(phases) - 1:
            pct = (step - start_step) / (end_step - start_step)
            return _cosine(start, end, pct) if anneal_strategy == "cos" else (end - start) * pct + start
        start_step = end_step
    raise AssertionError("unreachable")


def one_cycle(
    max_lr: float, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
    final_div_factor: float = 1e4, anneal_strategy: str = "cos", three_phase: bool = False,
) -> LearningRateSchedule:
    """PyTorch's ``OneCycleLR`` learning rates (its momentum cycling is not part of it: pass
    ``cycle_momentum=False`` to compare): up from ``max_lr / div_factor`` to ``max_lr`` over
    ``pct_start`` of ``total_steps``, then down to ``max_lr / div_factor / final_div_factor``."""
    pct_start = positive_number("pct_start", pct_start)
    if not 0 < pct_start < 1:
        raise ValueError(f"pct_start must be in (0, 1), got {pct_start!r}")
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
    if not isinstance(three_phase, bool):
        raise TypeError(f"three_phase must be True or False, got {three_phase!r}")
    return LearningRateSchedule(
        "one_cycle", _one_cycle, max_lr=positive_number("max_lr", max_lr), total_steps=count("total_steps", total_steps, minimum=2),
        pct_start=pct_start, div_factor=positive_number("div_factor", div_factor),
        final_div_factor=positive_number("final_div_factor", final_div_factor),
        anneal_strategy=anneal_strategy, three_phase=three_phase,
    )


SCHEDULES: dict[str, Callable[..., LearningRateSchedule]] = {
    f.__name__: f for f in (warmup_cosine, linear_schedule, step_schedule, exponential_schedule, piecewise_constant, one_cycle)
}


def _rebuild(node: Mapping[str, Any]) -> LearningRateSchedule:
    """A shipped schedule from its ``config()``."""
    options = dict(node)
    name = options.pop("schedule")
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; portnn's schedules are {', '.join(sorted(SCHEDULES))}")
    if name == "warmup_cosine":  # stored as the decay length, built from the total
        options["total_steps"] = options["warmup_steps"] + options.pop("decay_steps")
    return SCHEDULES[name](**options)


def as_learning_rate(lr: Any) -> float | Callable[[int], float]:
    """A learning rate option: a number > 0, a callable ``step -> lr``, or a schedule's config."""
    if isinstance(lr, Mapping) and "schedule" in lr:
        return _rebuild(lr)
    if callable(lr):
        return lr
    return positive_number("lr", lr)


def learning_rate_config(lr: float | Callable[[int], float]) -> Any:
    """What a config stores for a rate: the number, a shipped schedule's config, else the callable."""
    return lr.config() if isinstance(lr, LearningRateSchedule) else lr


def checked_rate(schedule: Callable[[int], float], step: int) -> float:
    """``schedule(step)`` as a float, or a ValueError if it is not a finite number >= 0."""
    try:
        lr = float(schedule(step))
    except OverflowError:
        lr = math.inf
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"the learning-rate schedule {schedule!r} gives {lr!r} at step {step}; a rate must be a finite number >= 0")
    return lr
