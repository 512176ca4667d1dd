"""The non-finite step guard: a training step is applied only if everything it produced is finite.

A finite loss and finite gradients can still give a non-finite update (a learning
rate of 1e308, a schedule that overflows), so the guard looks at the loss, the
updated parameters and the updated optimizer slots together, in one host read per
step. A non-finite gradient always reaches the updated parameters (any arithmetic
with NaN is NaN; an infinite gradient gives an infinite or NaN update), so the
gradients need no pass of their own. Optimizer updates return new arrays, so a
rejected step is undone by not keeping them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ._tree import arrays_of


__all__ = ["TrainingDivergedError", "all_finite", "arrays_of", "probe"]


def _floating(arrays: Iterable[Any], xp: Any) -> list[Any]:
    return [a for a in arrays if xp.isdtype(a.dtype, "real floating")]


def probe(value: Any, arrays: Iterable[Any], xp: Any) -> Any:
    """A 0-d array that is finite if ``value`` and every floating array are (a sum: NaN or
    infinity anywhere makes it non-finite; it can also overflow, see :func:`all_finite`)."""
    total = value
    for a in _floating(arrays, xp):
        total = total + xp.sum(a)
    return total


def all_finite(value: Any, arrays: Iterable[Any], xp: Any) -> bool:
    """Whether ``value`` and every floating array hold only finite numbers (one host read
    in the common case; a sum that overflowed although every entry is finite is checked
    entry by entry before the step is called non-finite)."""
    arrays = list(arrays)
    if math.isfinite(float(probe(value, arrays, xp))):
        return True
    if not math.isfinite(float(value)):
        return False
    return all(bool(xp.all(xp.isfinite(a))) for a in _floating(arrays, xp))


class TrainingDivergedError(RuntimeError):
    """A training step produced a non-finite loss or gradient; the model is at the last finite step."""

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        self.epoch, self.step, self.loss = epoch, step, loss
        super().__init__(
            f"training diverged at epoch {epoch}, step {step}: the loss or a gradient is not "
            f"finite (loss {loss}); the model keeps the parameters of the last finite step and "
            "model.history the completed epochs. Lower the learning rate, clip gradients "
            "(clip_norm=...), or pass on_nonfinite='skip_batch'"
        )
