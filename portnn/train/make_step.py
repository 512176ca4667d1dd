"""``make_train_step``: the eager step, or the one ``jax.jit`` compiles."""

from __future__ import annotations

from ..losses import Loss
from ..nn import Module
from ..optim.base import Transform
from .jit import CompiledStep
from .step import TrainStep
from .strategy import Strategy

__all__ = ["make_train_step"]


def make_train_step(
    model: Module, loss: Loss | str, optimizer: Transform | str, *,
    jit: bool = False, check_finite: bool = True, strategy: Strategy | None = None,
) -> TrainStep:
    """The training step of ``model``: a callable ``step(x, y, sample_weight=None)`` that
    trains on one batch and returns ``(loss, predictions, finite)``.

    ``jit=True`` (JAX backend) compiles the whole step with ``jax.jit``; it gives the
    eager step's results within float rounding. See :class:`TrainStep`.
    """
    if not isinstance(jit, bool):
        raise TypeError(f"jit must be True or False, got {jit!r}")
    if jit:
        return CompiledStep(model, loss, optimizer, check_finite=check_finite, strategy=strategy)
    return TrainStep(model, loss, optimizer, check_finite=check_finite, strategy=strategy)
