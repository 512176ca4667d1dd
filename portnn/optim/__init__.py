"""Optimizers as chains of update transforms, in the style of optax.

A transform is ``init(params) -> state`` and ``update(grads, state, params) ->
(updates, state)``; the updates are added to the parameters. ``chain(...)``
composes transforms; ``SGD``, ``Adam``, ``AdamW``, ``RMSProp`` and ``AdaGrad`` are
named chains with PyTorch's rules and defaults. A learning rate is a number or a
schedule, a function of the step; it lives in the state with the step count.
"""

from .base import Chain, Partition, Transform, apply_updates, chain, learning_rate, partition, with_learning_rate
from .transforms import (
    add_decayed_weights, clip_by_global_norm, clip_grads_by_global_norm, global_norm, scale, scale_by_adagrad,
    scale_by_adam, scale_by_learning_rate, scale_by_rms, trace,
)
from .schedules import (
    LearningRateSchedule, exponential_schedule, linear_schedule, one_cycle, piecewise_constant, step_schedule,
    warmup_cosine,
)
from .optimizers import OPTIMIZERS, SGD, AdaGrad, Adam, AdamW, Optimizer, RMSProp, get_optimizer

__all__ = [
    "OPTIMIZERS", "SGD", "AdaGrad", "Adam", "AdamW", "Chain", "LearningRateSchedule", "Optimizer", "Partition",
    "RMSProp", "Transform", "add_decayed_weights", "apply_updates", "chain", "clip_by_global_norm",
    "clip_grads_by_global_norm", "exponential_schedule", "get_optimizer", "global_norm", "learning_rate",
    "linear_schedule", "one_cycle", "partition", "piecewise_constant", "scale", "scale_by_adagrad", "scale_by_adam",
    "scale_by_learning_rate", "scale_by_rms", "step_schedule", "trace", "warmup_cosine", "with_learning_rate",
]
