"""Training: the step, the epoch loop, inference loops, callbacks, schedules and strategies.

- :mod:`~portnn.train.step` and :mod:`~portnn.train.make_step`: :class:`TrainStep` / :func:`make_train_step`, one
  optimizer step on a batch (:mod:`~portnn.train.jit` compiles it with ``jax.jit``);
- :mod:`~portnn.train.loop`: :func:`fit`, the epoch loop over the step;
- :mod:`~portnn.train.arguments`: everything ``fit`` checks, in one place;
- :mod:`~portnn.train.inference`: :func:`evaluate`, :func:`predict`,
  :func:`predict_proba`, :func:`predict_classes`;
- :mod:`~portnn.train.strategy` and :mod:`~portnn.train.distributed`: how a step's
  work is shared out (one process, or :class:`DataParallel` over MPI ranks);
- :mod:`~portnn.train.state`: a model's whole training state in one snapshot;
- :mod:`~portnn.train.callbacks`, :mod:`~portnn.train.schedules`,
  :mod:`~portnn.train.progress`, :mod:`~portnn.train.history`,
  :mod:`~portnn.train.gradcheck`.
"""

from .history import History
from .step import StepResult, TrainStep, value_and_grad
from .make_step import make_train_step
from .inference import evaluate, predict, predict_classes, predict_proba
from .loop import fit
from .gradcheck import gradient_check
from .strategy import Strategy
from .distributed import DataParallel, DistributedError
from . import callbacks, schedules

__all__ = [
    "DataParallel", "DistributedError", "History", "StepResult", "Strategy", "TrainStep", "callbacks",
    "evaluate", "fit", "gradient_check", "make_train_step", "predict", "predict_classes",
    "predict_proba", "schedules", "value_and_grad",
]
