"""The estimators' per-epoch bookkeeping, as scikit-learn's MLPs keep it."""

from __future__ import annotations

from typing import Any

from ..optim.base import learning_rate, with_learning_rate
from ..optim.optimizers import Optimizer
from ..train.callbacks import Callback, snapshot


class _Monitor(Callback):
    """scikit-learn's bookkeeping after every epoch: the loss curve, the stopping rule
    (``tol`` / ``n_iter_no_change``, on the training loss or the validation score) and the
    SGD learning-rate schedules."""

    def __init__(
        self,
        estimator: Any,  # the _BaseMLP being fitted
        optimizer: Optimizer,
        n_train: int,
        validation: Any,
        schedule: bool,
    ) -> None:
        self.estimator = estimator
        self.optimizer = optimizer
        self.n_train = n_train
        self.validation = validation
        self.schedule = schedule
        self.stopped = False
        self.best: Any = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        est = self.estimator
        est.n_iter_ += 1
        est.t_ += self.n_train
        est.loss_ = float(logs["loss"])
        est.loss_curve_.append(est.loss_)
        if est.verbose:
            print(f"Iteration {est.n_iter_}, loss = {est.loss_:.8f}")
        if self.validation is not None:
            score = est._validation_score(self.model, *self.validation)
            est.validation_scores_.append(score)
            if est.verbose:
                print(f"Validation score: {score:f}")
            if score < est.best_validation_score_ + est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                self.best = snapshot(self.model)
        else:
            if est.loss_ > est.best_loss_ - est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            est.best_loss_ = min(est.best_loss_, est.loss_)
        if self.schedule and est.learning_rate == "invscaling":
            self._set_rate(float(est.learning_rate_init) / (est.t_ + 1) ** est.power_t)
        if est._no_improvement_count > est.n_iter_no_change:
            what = "Validation score" if self.validation is not None else "Training loss"
            message = (
                f"{what} did not improve more than tol={est.tol:f} for "
                f"{est.n_iter_no_change} consecutive epochs."
            )
            if self.schedule and est.learning_rate == "adaptive" and self._rate() > 1e-6:
                self._set_rate(self._rate() / 5.0)
                est._no_improvement_count = 0
                if est.verbose:
                    print(f"{message} Setting learning rate to {self._rate():f}")
            else:
                if est.verbose:
                    print(f"{message} Stopping.")
                self.stopped = True
                self.model.stop_training = True

    def _rate(self) -> float:
        return learning_rate(self.model.optimizer_state)

    def _set_rate(self, lr: float) -> None:
        """The rate of the next steps, in the optimizer state (saved and resumed with it)."""
        self.model.optimizer_state = with_learning_rate(self.model.optimizer_state, lr)
