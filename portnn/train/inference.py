"""Inference loops: evaluate, predict, predict_proba and predict_classes.

They run the model in inference mode batch by batch (host data moves to the
model's device one batch at a time) under the model's ``weights_lock``, so a
training step in another thread never lands half-way through their outputs.
A 2-D Dask array gives a Dask array, computed block by block on the workers.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np  # host side only: a probe row for Dask outputs

from .._checks import count, host_array
from .. import functional as F
from ..backend import dtype_name, to_numpy
from ..data import Batcher, feature_matrix, make_batcher, is_dask, map_rows, n_samples, samples
from ..losses import Loss
from ..metrics import Batch, Metric, is_multilabel, predicted_labels
from ..nn import Module
from .arguments import (
    Targets, batch_input, callback_list, check_model, ends_in_probabilities, loss_of, metric_list, model_dtype,
    outputs_are_logits,
)
from .callbacks import Callback, needs_batch_hooks

__all__ = ["evaluate", "predict", "predict_classes", "predict_proba"]


def batcher_for(model: Module, X: Any, targets: Targets) -> Batcher:
    """Batches of ``(X, y)``; each ``y`` a pair (targets, sample weights) when there are weights."""
    dtype = model_dtype(model)
    if targets.weights is None:
        return make_batcher(model.backend, dtype, X, targets.values, targets.dtype)
    return make_batcher(model.backend, dtype, X, (targets.values, targets.weights), (targets.dtype, dtype))


def evaluate_batches(
    model: Module,
    loss: Loss,
    X: Any,
    targets: Targets,
    metrics: list[Metric],
    batch_size: int,
    logits: bool,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Mean loss (penalties excluded) and metrics over ``(X, targets)`` in inference mode,
    weighted by the targets' sample weights when they have them; calls the test hooks."""
    xp = model.xp
    weighted = targets.weights is not None
    total: Any = 0.0
    mass: Any = 0
    fresh = [copy.copy(m) for m in metrics]  # the training metrics keep their sums
    for m in fresh:
        m.reset()
    hooks = needs_batch_hooks(callbacks, "test")
    for cb in callbacks:
        cb.on_test_begin({})
    with batcher_for(model, X, targets) as batcher:
        for i, (xb, yb, nb) in enumerate(batcher.batches(None, batch_size)):
            yb, wb = yb if weighted else (yb, None)
            if hooks:
                for cb in callbacks:
                    cb.on_test_batch_begin(i, {"size": nb})
            pred = model.infer(xb)
            value, _ = loss.value_and_grad(pred, yb, xp, weight=wb)
            weight = nb if wb is None else xp.sum(wb)
            total, mass = total + value * weight, mass + weight
            if fresh:
                batch = Batch(pred, yb, xp, logits, weight=wb, multilabel=targets.multilabel)
                for m in fresh:
                    m.update(batch)
            if hooks:
                for cb in callbacks:
                    cb.on_test_batch_end(i, {"loss": float(value), "size": nb})
    results = {"loss": float(total) / float(mass) if float(mass) > 0 else math.nan}
    results.update({m.name: m.result() for m in fresh})
    for cb in callbacks:
        cb.on_test_end(dict(results))
    return results


def evaluate(
    model: Module,
    X: Any,
    y: Any,
    loss: Loss | str | None = None,
    metrics: Sequence[str | Metric] | None = None,
    batch_size: int | None = None,
    check_finite: bool = True,
    sample_weight: Any = None,
    class_weight: Any = None,
    callbacks: Sequence[Callback] | None = None,
) -> float | dict[str, Any]:
    """Mean loss of ``model`` on ``(X, y)`` in inference mode (the model's loss if none given).

    With ``metrics`` it returns a dict ``{"loss": ..., "accuracy": ...}`` instead
    of the loss alone. ``sample_weight``/``class_weight`` weigh the loss and the
    metrics as in ``fit`` (the metrics equal scikit-learn's weighted ones).
    ``callbacks`` get ``on_test_begin/end`` and the test batch hooks.
    """
    check_model(model)
    if loss is None and model.loss is None:
        raise ValueError("evaluate needs a loss (or a model that was fitted with one)")
    loss_obj = loss_of(model, loss, "evaluate")
    metric_objs = metric_list(metrics)
    callback_objs = callback_list(callbacks)
    batch_size = count("batch_size", batch_size, allow_none=True)
    model.check_input_kind(X, "X")
    X = samples(model.backend, "X", X, model_dtype(model), finite=check_finite)
    targets = Targets(model, loss_obj, X, y, sample_weight=sample_weight, class_weight=class_weight)
    for cb in callback_objs:
        cb.set_model(model)
    with model.weights_lock.reading():  # a step in another thread never lands half-way
        size = n_samples(X) if batch_size is None else batch_size
        logits = outputs_are_logits(model, loss_obj)
        results = evaluate_batches(model, loss_obj, X, targets, metric_objs, size, logits, callback_objs)
    return results if metrics is not None else results["loss"]


def predict(
    model: Module,
    X: Any,
    batch_size: int | None = None,
    check_finite: bool = True,
    callbacks: Sequence[Callback] | None = None,
) -> Any:
    """Outputs of ``model`` for ``X`` (2-D batch, or 1-D single sample) in inference mode.

    Returns an array of the model's backend; host data is moved batch by batch.
    A 2-D Dask array gives a Dask array, computed block by block on the workers.
    ``callbacks`` get ``on_predict_begin/end`` and the predict batch hooks (their
    logs hold the batch's ``outputs``).
    """
    check_model(model)
    batch_size = count("batch_size", batch_size, allow_none=True)
    callback_objs = callback_list(callbacks)
    backend = model.backend
    dtype = model_dtype(model)
    if is_dask(X) and _ndim(X) == 2 and backend != "dask":
        return _over_dask(model, X, lambda m, b: predict(m, b, batch_size, check_finite))
    if _single(X):
        model.check_input_kind(X, "X")
        x, _ = batch_input(backend, "X", X, dtype, finite=check_finite)
        with model.weights_lock.reading():
            return _first(model.infer(x))
    model.check_input_kind(X, "X")
    X = samples(backend, "X", X, dtype, finite=check_finite)
    n = n_samples(X)
    for cb in callback_objs:
        cb.set_model(model)
        cb.on_predict_begin({})
    hooks = needs_batch_hooks(callback_objs, "predict")
    outputs = []
    # the lock: a training step in another thread never lands half-way through these outputs
    with make_batcher(backend, dtype, X) as batcher, model.weights_lock.reading():
        for i, (xb, _, nb) in enumerate(batcher.batches(None, n if batch_size is None else batch_size)):
            if hooks:
                for cb in callback_objs:
                    cb.on_predict_batch_begin(i, {"size": nb})
            outputs.append(model.infer(xb))
            if hooks:
                for cb in callback_objs:
                    cb.on_predict_batch_end(i, {"outputs": outputs[-1], "size": nb})
    for cb in callback_objs:
        cb.on_predict_end({})
    return outputs[0] if len(outputs) == 1 else _concat(backend.xp, outputs)


def _single(X: Any) -> bool:
    """Whether ``X`` is one sample: a 1-D array (or a tuple of them)."""
    if isinstance(X, tuple):
        return bool(X) and all(_ndim(xi) == 1 for xi in X)
    return _ndim(X) == 1


def _first(y: Any) -> Any:
    return tuple(_first(v) for v in y) if isinstance(y, tuple) else y[0, ...]


def _concat(xp: Any, outputs: list[Any]) -> Any:
    if isinstance(outputs[0], tuple):
        return tuple(_concat(xp, [o[i] for o in outputs]) for i in range(len(outputs[0])))
    return xp.concat(outputs, axis=0)


def predict_proba(model: Module, X: Any, batch_size: int | None = None) -> Any:
    """Class probabilities: the outputs if the model ends in Softmax/Sigmoid, else softmax
    (several outputs) or sigmoid (one output, or each of several independent labels when
    the model was trained with binary cross-entropy on them) of its scores."""
    if is_dask(X) and _ndim(X) == 2 and model.backend != "dask":
        return _over_dask(model, X, lambda m, b: predict_proba(m, b, batch_size))
    out = predict(model, X, batch_size=batch_size)
    if ends_in_probabilities(model):
        return out
    xp = model.xp
    if out.shape[-1] == 1 or is_multilabel(model.loss, out.shape[-1]):
        return F.sigmoid(out, xp=xp)
    return F.softmax(out, xp=xp)


def predict_classes(model: Module, X: Any, batch_size: int | None = None) -> Any:
    """Predicted class labels (integers of the model's backend): one per sample, or the 0/1
    matrix of independent labels for a model trained with binary cross-entropy on several."""
    if is_dask(X) and _ndim(X) == 2 and model.backend != "dask":
        return _over_dask(model, X, lambda m, b: predict_classes(m, b, batch_size))
    out = predict(model, X, batch_size=batch_size)
    single = out.ndim == 1
    loss = model.loss
    multilabel = is_multilabel(loss, out.shape[-1])
    labels = predicted_labels(out[None, :] if single else out, model.xp, outputs_are_logits(model, loss), multilabel)
    return labels[0] if single else labels


def _over_dask(model: Module, X: Any, fn: Any) -> Any:
    """``fn(model, block)`` for every row block of a Dask ``X``, on the workers: a Dask array (NumPy blocks)."""
    check_model(model)
    dtype = model_dtype(model)
    X = feature_matrix(model.backend, "X", X, dtype, finite=False)  # values are checked block by block
    probe = to_numpy(fn(model, np.zeros((1, int(X.shape[1])), dtype_name(dtype))))  # output width and dtype
    return map_rows(X, lambda block: to_numpy(fn(model, block)), probe.shape[1] if probe.ndim == 2 else None, probe.dtype)


def _ndim(X: Any) -> int:
    shape = getattr(X, "shape", None)
    if shape is None and isinstance(X, list | tuple):
        return host_array("X", X).ndim  # a ragged list is a ValueError saying where
    return np.ndim(X) if shape is None else len(shape)
