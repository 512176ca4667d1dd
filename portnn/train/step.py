"""One training step: loss, gradients and the optimizer's update of one batch.

:class:`TrainStep` is the step every path trains with: ``fit``'s loop, ``jit=True``
(:class:`~portnn.train.jit.CompiledStep`, the same step compiled by ``jax.jit``),
data-parallel training (the step's strategy averages the gradients over the ranks)
and a loop of your own::

    step = pn.make_train_step(model, "cross_entropy", pn.Adam(1e-3))  # see portnn.train.make_step
    for xb, yb in batches:
        loss, predictions, finite = step(xb, yb)

A step that is not finite (loss, gradients, updated parameters or optimizer
slots) is never applied when ``check_finite`` is set: the model keeps its arrays.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np  # host side only: NumPy's overflow warnings, which the finite check replaces

from .._checks import host_array
from .._guard import all_finite, arrays_of
from .._tree import flatten
from ..losses import Loss, get_loss
from ..nn import Module
from ..nn.module import call_backward
from ..nn.normalization import dropout_noise
from ..optim.base import Transform
from ..optim.optimizers import get_optimizer, update_trainable
from .arguments import Targets, batch_input, check_model, model_dtype
from .strategy import Strategy

__all__ = ["StepResult", "TrainStep", "value_and_grad"]


def penalized_modules(model: Module) -> list[tuple[str, Module]]:
    return [(prefix, m) for prefix, m in model.named_modules() if m.has_penalty()]


def batch_value_and_grad(
    model: Module, loss: Loss, xb: Any, yb: Any, penalized: list[tuple[str, Module]], wb: Any = None
) -> tuple[Any, dict[str, Any], Any]:
    """(loss value, gradients by full parameter name, predictions) for one prepared batch
    (``wb``: its sample weights, or None); layer penalties (L1/L2) included."""
    pred, backward = model.apply(xb, True)
    value, dpred = loss.value_and_grad(pred, yb, model.xp, weight=wb)
    grads = flatten(call_backward(backward, dpred, False)[1])
    for prefix, module in penalized:
        penalty, penalty_grads = module.penalty()
        value = value + penalty
        for key, g in penalty_grads.items():
            grads[prefix + key] = grads[prefix + key] + g
    return value, grads, pred


def value_and_grad(model: Module, loss: Loss | str, x: Any, y: Any) -> tuple[Any, dict[str, Any]]:
    """Loss of ``model`` on ``(x, y)`` and its gradient for every parameter.

    Runs the forward pass in training mode. Returns ``(loss, grads)``: the loss
    as a 0-d array of the model's backend (layer penalties included), and a dict
    with the keys of ``model.parameters(trainable_only=True)`` (frozen parameters
    have none). The gradients are also kept for ``model.gradients()``.
    """
    check_model(model)
    loss = get_loss(loss)
    xb, target, _, _ = _prepared_batch(model, loss, x, y, None)
    value, grads, _ = batch_value_and_grad(model, loss, xb, target, penalized_modules(model))
    grads = {name: grads[name] for name in model.parameters(trainable_only=True) if name in grads}
    model.store_gradients(grads)
    return value, grads


def _prepared_batch(
    model: Module, loss: Loss, x: Any, y: Any, sample_weight: Any, width: int | None = None
) -> tuple[Any, Any, Any, int]:
    """``(x, y, weights, output width)`` of one batch, checked and on the model's backend
    (``width``: the model's output width when already known, which spares a forward pass)."""
    backend = model.backend
    model.check_input_kind(x, "x")
    xb, single = batch_input(backend, "x", x, model_dtype(model))
    y_host = host_array("y", y)
    if single:
        y_host = y_host[None, ...]
    targets = Targets(model, loss, xb, y_host, sample_weight=sample_weight, width=width)
    wb = None if targets.weights is None else backend.asarray(targets.weights, model_dtype(model))
    return xb, backend.asarray(targets.values, targets.dtype), wb, targets.n_outputs


class StepResult(NamedTuple):
    """What a step returns: the batch's loss (a 0-d array), the predictions, and whether
    the step was finite (a bool; None when the check is off)."""

    loss: Any
    predictions: Any
    finite: bool | None


class TrainStep:
    """One optimizer step of ``model`` on a batch, op by op on the portable path.

    Building it sets ``model.loss`` and ``model.optimizer`` and starts the optimizer
    state (unless the model already keeps this optimizer's). ``step(x, y,
    sample_weight=None)`` takes a batch of any array library, checks it and trains
    on it; :meth:`run` takes a batch already prepared on the model's backend (what
    ``fit`` passes). With ``check_finite`` a step whose loss, updated parameters or
    updated optimizer slots are not all finite is not applied (one host read per
    step), and the running statistics of that batch are undone. ``strategy`` shares
    out the work (see :mod:`portnn.train.strategy`); Dropout's draws come from its
    ``noise``.
    """

    def __init__(
        self, model: Module, loss: Loss | str, optimizer: Transform | str, *,
        check_finite: bool = True, strategy: Strategy | None = None,
    ) -> None:
        check_model(model)
        if not isinstance(check_finite, bool):
            raise TypeError(f"check_finite must be True or False, got {check_finite!r}")
        self.model, self.loss, self.optimizer = model, get_loss(loss), get_optimizer(optimizer)
        self.check = check_finite
        self.strategy = strategy if strategy is not None else Strategy()
        self.penalized = penalized_modules(model)
        self.has_buffers = bool(model.buffers())
        self._width: int | None = None  # the output width, learnt on the first call
        model.loss = self.loss
        if self.optimizer is not model.optimizer or model.optimizer_state is None:
            model.optimizer = self.optimizer
            model.optimizer_state = self.optimizer.init(model.parameters(), model.xp)

    def __call__(self, x: Any, y: Any, sample_weight: Any = None) -> StepResult:
        xb, yb, wb, self._width = _prepared_batch(self.model, self.loss, x, y, sample_weight, self._width)
        return self.run(xb, yb, wb)

    def gradients(self, xb: Any, yb: Any, wb: Any = None) -> tuple[Any, dict[str, Any], Any]:
        """The batch's ``(loss, gradients, predictions)``, shared out by the strategy."""
        model, strategy = self.model, self.strategy
        compute = lambda: batch_value_and_grad(model, self.loss, xb, yb, self.penalized, wb)  # noqa: E731
        if strategy.noise is None:
            return strategy.value_and_grad(compute, model, xb)
        with dropout_noise(strategy.noise):
            return strategy.value_and_grad(compute, model, xb)

    def run(self, xb: Any, yb: Any, wb: Any = None) -> StepResult:
        """Train on one batch already on the model's backend (targets prepared by the loss)."""
        model, xp = self.model, self.model.xp
        buffers = model.buffers() if self.has_buffers and self.check else None
        trainable = list(model.parameters(trainable_only=True))
        # an overflow is what the check below catches (NumPy would also warn of it)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            value, grads, pred = self.gradients(xb, yb, wb)
            new_params, new_state = update_trainable(
                self.optimizer, model.parameters(), trainable, grads, model.optimizer_state, xp
            )
            finite = all_finite(value, [*new_params.values(), *arrays_of(new_state)], xp) if self.check else None
        if finite is False:
            if buffers:
                model.load_buffers(buffers, check_finite=False)  # undo this batch's running statistics
            return StepResult(value, pred, finite)
        with model.weights_lock.writing():
            model.assign_parameters(new_params)
            model.optimizer_state = new_state
        return StepResult(value, pred, finite)

    def finish(self) -> None:
        """After the last step of a run (a compiled step gives the state its host numbers back)."""

