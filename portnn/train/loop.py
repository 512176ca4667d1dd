"""``fit``: the epoch loop of mini-batch training.

``fit`` checks its arguments in one place (:func:`~portnn.train.arguments.plan_fit`),
then a :class:`_Run` goes through the epochs: each epoch's batches come from the
strategy (all of them, or this rank's shares), each batch is one call of the
:class:`~portnn.train.step.TrainStep`, and callbacks hear of every epoch (and of
every batch when they ask). Losses and metrics are summed on the device and read
once per epoch (or when the progress bar redraws), so a step never waits for the host.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np  # host side only: shuffling orders and seeds

from .._guard import TrainingDivergedError
from .._signals import deferred_signals, redeliver
from ..backend import host_rng
from ..data import sample_shape
from ..losses import Loss
from ..metrics import Batch, Metric
from ..nn import Module
from ..nn.calling import provide_workflows
from ..optim.base import Transform, learning_rate
from .arguments import DEFAULT_BATCH_SIZE, FitPlan, plan_fit
from .callbacks import Callback, needs_batch_hooks
from .history import History
from .inference import batcher_for, evaluate, evaluate_batches, predict, predict_classes, predict_proba
from .progress import Progress
from .make_step import make_train_step

__all__ = ["fit"]


def fit(
    model: Module,
    X: Any,
    y: Any,
    loss: Loss | str | None = None,
    optimizer: Transform | str | None = None,
    epochs: int = 1,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    shuffle: bool = True,
    seed: int | None = None,
    verbose: int | str = "auto",
    validation_data: tuple[Any, ...] | None = None,
    validation_split: float = 0.0,
    metrics: Sequence[str | Metric] | None = None,
    callbacks: Sequence[Callback] | None = None,
    initial_epoch: int = 0,
    check_finite: bool = True,
    on_nonfinite: str | None = "raise",
    jit: bool = False,
    distributed: Any = False,
    sample_weight: Any = None,
    class_weight: Any = None,
) -> History:
    """Train ``model`` on ``(X, y)`` with mini-batch gradient descent.

    ``loss`` and ``optimizer`` are objects or names (an optimizer may be any
    transform or ``chain(...)`` of :mod:`portnn.optim`); once given they are kept on
    the model (``model.loss``, ``model.optimizer``, ``model.optimizer_state``) and
    reused by later calls, so a second ``fit`` continues where the first stopped;
    with none given or kept, the optimizer is ``Adam(1e-3)``. Batches hold
    ``batch_size`` samples (32 unless given; ``None`` trains on the full batch);
    the last batch may be smaller.

    ``sample_weight`` (one number >= 0 per sample) and ``class_weight`` (a dict
    ``{class: weight}`` or ``"balanced"``, scikit-learn's rule) weigh every batch's
    loss as ``sum(w * l) / sum(w)`` and the metrics as scikit-learn does; a weight
    of 0 is the same as leaving the sample out. ``validation_data=(Xv, yv)`` (or
    ``(Xv, yv, sample_weight_v)``) or ``validation_split`` (the last fraction of
    ``X``, taken before shuffling) adds ``val_`` entries to the history.

    The shuffling order of epoch ``k`` depends only on ``seed`` and ``k``, so
    ``initial_epoch`` resumes a run exactly. ``verbose``: ``"auto"``/``1`` a
    progress bar on a terminal (a line per epoch otherwise), ``2`` a line per
    epoch, ``0`` silent. Every argument is checked before the model changes.

    A step whose loss or gradient is NaN or infinite is never applied: with
    ``on_nonfinite="raise"`` (default) ``fit`` raises :class:`TrainingDivergedError`
    with the model at its last finite step and ``model.history`` holding the
    completed epochs; ``"skip_batch"`` skips such batches and goes on; ``None``
    turns the check (one host read per step) off. ``jit=True`` (JAX backend)
    compiles the whole step -- forward, backward and update -- with ``jax.jit``
    (see :mod:`portnn.train.jit`); the results equal the eager loop's within float
    rounding. Ctrl-C or SIGTERM stops training at the end of the current step;
    callbacks get ``on_interrupt`` (a :class:`ModelCheckpoint` writes a final
    checkpoint), then the signal is handed back (Ctrl-C raises ``KeyboardInterrupt``).

    Callbacks that define ``on_train_batch_begin/end`` get them with the batch
    index within the epoch (from 0) and logs holding ``loss``, the epoch's mean loss
    so far, as Keras reports it (one host read per batch, paid only when a callback
    has these hooks); validation calls the test hooks. ``distributed=True`` (or a :class:`~portnn.DataParallel`) trains
    data-parallel over MPI under ``mpiexec``, each rank computing its share of
    every batch (see :mod:`portnn.train.distributed`); it combines with ``jit=True``.
    Returns a :class:`History`.
    """
    plan = plan_fit(
        model, X, y, loss=loss, optimizer=optimizer, epochs=epochs, batch_size=batch_size, shuffle=shuffle,
        seed=seed, verbose=verbose, validation_data=validation_data, validation_split=validation_split,
        metrics=metrics, callbacks=callbacks, initial_epoch=initial_epoch, check_finite=check_finite,
        on_nonfinite=on_nonfinite, jit=jit, distributed=distributed, sample_weight=sample_weight,
        class_weight=class_weight,
    )
    return _Run(model, plan).train()


class _Run:
    """One call of ``fit``: the model, its checked plan, and the counters of the run."""

    def __init__(self, model: Module, plan: FitPlan) -> None:
        self.model, self.plan = model, plan
        self.strategy = plan.strategy
        self.n = plan.n
        self.weighted = plan.targets.weights is not None
        self.progress = Progress(self.strategy.verbose(plan.verbose), plan.epochs, self.n)
        self.strategy.agree(
            model, n_samples=self.n, n_features=str(sample_shape(plan.X)), batch_size=plan.batch_size,
            epochs=plan.epochs, initial_epoch=plan.initial_epoch, shuffle=plan.shuffle, seed=plan.seed,
            validation=plan.validation is not None,
        )
        self.applied = 0

    def train(self) -> History:
        model, plan = self.model, self.plan
        # everything is valid: from here on the model may change; if fit fails before its
        # first step, the training state and the optimizer are put back as they were
        before = model.training_state.replace()
        optimizer_before = dict(vars(plan.optimizer))
        step = make_train_step(model, plan.loss, plan.optimizer, jit=plan.jit,
                               check_finite=plan.on_nonfinite is not None, strategy=self.strategy)
        self.history = model.history = History()
        model.stop_training = False
        skip_steps, seed = _resume_from(model, plan, self.n)
        base_seed = seed if seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        callbacks = plan.callbacks
        for cb in callbacks:
            cb.set_model(model)
            cb.set_params({"epochs": plan.epochs, "initial_epoch": plan.initial_epoch,
                           "steps": -(-self.n // plan.batch_size), "batch_size": plan.batch_size})
        logs: dict[str, Any] = {}
        batcher = batcher_for(model, plan.X, plan.targets)
        with deferred_signals() as interrupt:
            try:
                base_seed, callbacks = self.strategy.start(model, base_seed, callbacks, interrupt)
                self.callbacks, self.batch_hooks = callbacks, needs_batch_hooks(callbacks, "train")
                for cb in callbacks:
                    cb.on_train_begin(logs)
                for epoch in range(plan.initial_epoch, plan.epochs):
                    for cb in callbacks:
                        cb.on_epoch_begin(epoch, logs)
                    epoch_logs = self._epoch(epoch, step, batcher, base_seed, skip_steps, interrupt)
                    skip_steps = 0
                    if epoch_logs is None:  # interrupted half-way: the last whole epoch's logs stay
                        break
                    logs = epoch_logs
                    if model.stop_training:
                        break
            except BaseException:
                if not self.applied:  # nothing was trained: the model and the optimizer are as they were
                    model.training_state = before
                    vars(plan.optimizer).clear()
                    vars(plan.optimizer).update(optimizer_before)
                raise
            finally:
                batcher.close()  # the prefetch worker stops here, whatever ended the loop
                self.progress.close()
                step.finish()
                self.strategy.finish()
            if interrupt.received:
                for cb in callbacks:
                    cb.on_interrupt(logs)
        if interrupt.received:
            redeliver(interrupt.received)  # the model is at the last completed step
            return self.history  # reached only if the previous handler does not raise or exit
        for cb in callbacks:
            cb.on_train_end(logs)
        return self.history

    def _epoch(self, epoch: int, step: Any, batcher: Any, base_seed: int, skip_steps: int, interrupt: Any) -> dict[str, Any] | None:
        """Train one epoch; its logs, or None when a signal stopped it half-way."""
        model, plan, xp = self.model, self.plan, self.model.xp
        for m in plan.metrics:
            m.reset()
        self.progress.start_epoch(epoch)
        order = host_rng([base_seed, epoch]).permutation(self.n) if plan.shuffle else None
        total: Any = 0.0
        seen = skipped = first = 0
        mass: Any = 0  # the weight seen: the number of samples when unweighted
        if skip_steps:  # an interrupted epoch resumes at the step it stopped before
            first, total, seen, skipped, *rest = skip_steps, *model.resume_point["sums"]
            mass = rest[0] if rest else seen
            order = (np.arange(self.n) if order is None else order)[first * plan.batch_size :]
        model.resume_point = None
        for index, (xb, yb, nb) in enumerate(self.strategy.batches(batcher, order, plan.batch_size), start=first):
            yb, wb = yb if self.weighted else (yb, None)
            if self.batch_hooks:
                for cb in self.callbacks:
                    cb.on_train_batch_begin(index, {"size": nb})
            value, pred, finite = step.run(xb, yb, wb)  # applied unless not finite
            if finite is False:
                if plan.on_nonfinite == "raise":
                    raise TrainingDivergedError(epoch, index, float(value))
                skipped += 1
            else:
                self.applied += 1
                weight = nb if wb is None else self.strategy.batch_weight(wb, xp)
                total, seen, mass = total + value * weight, seen + nb, mass + weight
                if plan.metrics:
                    batch = Batch(pred, yb, xp, plan.logits, weight=wb, multilabel=plan.targets.multilabel)
                    for m in plan.metrics:
                        m.update(batch)
            if self.batch_hooks:  # the epoch's mean loss so far, as Keras reports it
                mean = float(total) / float(mass) if seen and float(mass) > 0 else math.nan
                for cb in self.callbacks:
                    cb.on_train_batch_end(index, {"loss": mean, "size": nb})
            if interrupt.received:
                sums = [float(total), seen, skipped] + ([float(mass)] if self.weighted else [])
                model.resume_point = {
                    "epoch": epoch, "step": index + 1, "n_samples": self.n, "batch_size": plan.batch_size,
                    "seed": base_seed, "shuffle": plan.shuffle, "sums": sums,
                }
                return None
            self.progress.advance(nb, lambda: {"loss": float(total) / max(float(mass), 1e-300)})
        self.strategy.end_epoch(model, plan.metrics)
        return self._end_epoch(epoch, float(total), seen, float(mass), skipped)

    def _end_epoch(self, epoch: int, total: float, seen: int, mass: float, skipped: int) -> dict[str, Any]:
        """The epoch's logs (validation included), recorded and handed to the callbacks."""
        model, plan = self.model, self.plan
        logs: dict[str, Any] = {"loss": total / mass if seen and mass > 0 else math.nan}
        logs.update({m.name: m.result() for m in plan.metrics} if seen else {})
        if plan.validation is not None:
            Xv, targets = plan.validation
            val = evaluate_batches(model, plan.loss, Xv, targets, plan.metrics, plan.batch_size, plan.logits, self.callbacks)
            logs.update({f"val_{k}": v for k, v in val.items()})
        logs["lr"] = learning_rate(model.optimizer_state)
        if plan.on_nonfinite == "skip_batch":
            logs["skipped_batches"] = float(skipped)
        seconds = self.progress.end_epoch(epoch, logs)
        self.history.record(epoch, seconds, **{k: v for k, v in logs.items() if isinstance(v, float)})
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, logs)
        return logs


def _resume_from(model: Module, plan: FitPlan, n: int) -> tuple[int, int | None]:
    """(steps of the first epoch already trained, the shuffling seed) from the record an
    interrupted run left on the model (``model.resume_point``), when this call continues it."""
    point, seed = model.resume_point, plan.seed
    if not point or point["epoch"] != plan.initial_epoch:
        return 0, seed
    asked = {"n_samples": n, "batch_size": plan.batch_size, "shuffle": plan.shuffle}
    if seed is not None:
        asked["seed"] = seed
    differ = [k for k, v in asked.items() if point[k] != v]
    if differ:
        warnings.warn(
            f"the model was interrupted at epoch {plan.initial_epoch}, step {point['step']} of a run with "
            f"another {', '.join(differ)}; epoch {plan.initial_epoch} starts again from its first step",
            RuntimeWarning,
            stacklevel=4,
        )
        return 0, seed
    return point["step"], point["seed"]


provide_workflows(
    fit=fit, predict=predict, evaluate=evaluate, predict_proba=predict_proba, predict_classes=predict_classes
)
