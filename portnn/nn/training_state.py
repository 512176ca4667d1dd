"""What training keeps on a model besides its arrays: one declared object.

``fit`` (and :func:`portnn.make_train_step`) keep the loss, the optimizer, its state
(slots, step counts and the learning rate of the next step), the history of the
last run and, after an interruption, where to resume. They live together in
``model.training_state``, a :class:`TrainingState`, and are read and written as
``model.loss``, ``model.optimizer``, ``model.optimizer_state``, ``model.history``
and ``model.resume_point``: a model that was never trained has them all None.
``portnn.save`` writes the loss, the optimizer, its state and the resume point
with the parameters and buffers, and ``portnn.load`` reads them back, so a loaded
model resumes exactly (the history, a record of the past run, is not saved).
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["TRAINING_FIELDS", "TrainingState"]


@dataclasses.dataclass
class TrainingState:
    """The loss, optimizer, optimizer state, history and resume point of one model.

    Parameters, buffers and Dropout's generator states stay in the modules that
    own them; :func:`portnn.train.state.capture` gathers all of it in one snapshot.
    """

    loss: Any = None
    optimizer: Any = None
    optimizer_state: dict[str, Any] | None = None
    history: Any = None
    resume_point: dict[str, Any] | None = None
    #: set by a callback (EarlyStopping) to end ``fit`` after the current epoch
    stop_training: bool = False

    def replace(self, **changes: Any) -> TrainingState:
        """A copy with ``changes`` (the arrays are shared, not copied)."""
        return dataclasses.replace(self, **changes)


TRAINING_FIELDS = tuple(f.name for f in dataclasses.fields(TrainingState))


def training_property(name: str) -> property:
    """``module.<name>``, read from and written to ``module.training_state``."""

    def get(self: Any) -> Any:
        return getattr(self.training_state, name)

    def set_(self: Any, value: Any) -> None:
        setattr(self.training_state, name, value)

    return property(get, set_, doc=f"``training_state.{name}`` (see :class:`TrainingState`).")
