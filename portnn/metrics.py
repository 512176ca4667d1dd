"""Metrics accumulated on the device over an epoch and read once at its end.

A metric is updated batch by batch with the model's outputs and targets and
keeps running sums as arrays of the model's backend; ``result()`` is the only
place that reads them to the host. ``fit(..., metrics=["accuracy"])`` and
``evaluate`` take names or metric objects.

Classification metrics see predicted and true class labels: the argmax of a
multi-column output, or a threshold on a single column (0.5 for probabilities,
0 for logits).

What the training loop passes, once per batch, is a :class:`Batch`:
``Batch(pred, target, xp, logits, weight=None, multilabel=False)``.

* ``weight``: per-sample weights (shape ``(n,)``, ``pred``'s dtype, e.g. the rows
  of :func:`portnn.weights.sample_weights`). Every metric then equals
  scikit-learn's with ``sample_weight=``, and a weight of 0 leaves the sample out.
* ``multilabel``: the columns are independent 0/1 labels (a binary
  cross-entropy over several outputs; compute it once with :func:`is_multilabel`).
  Labels are then 0/1 matrices (threshold 0 on logits, 0.5 on probabilities),
  ``accuracy`` is the per-label accuracy (``binary_accuracy``, what Keras's
  ``"accuracy"`` means with a binary cross-entropy), ``subset_accuracy`` counts
  rows with every label right, and precision/recall/F1 are scikit-learn's
  multi-label scores. Without the flag, ``accuracy`` refuses (at ``result()``)
  targets with several labels in a row rather than compare their argmaxes.

:func:`predicted_labels` and :func:`predicted_probabilities` give what
``predict_classes`` and ``predict_proba`` return, multi-label included.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np  # host side only: results are read once per epoch and finished on the host

from . import functional as F
from ._checks import count, lookup
from .backend import to_numpy
from .class_scores import AVERAGES, F1, ConfusionMatrix, Precision, Recall
from .metric_base import (
    Batch,
    Metric,
    _single_label,
    is_multilabel,
    predicted_labels,
    predicted_probabilities,
    true_labels,
)

__all__ = [
    "F1",
    "MAE",
    "MSE",
    "R2",
    "Accuracy",
    "BinaryAccuracy",
    "ConfusionMatrix",
    "Metric",
    "Precision",
    "Recall",
    "SubsetAccuracy",
    "TopKAccuracy",
    "get_metric",
    "is_multilabel",
    "predicted_labels",
    "predicted_probabilities",
    "true_labels",
]


class Accuracy(Metric):
    """Fraction of samples whose predicted class is the true class.

    On a multi-label batch it is the fraction of labels predicted right
    (:class:`BinaryAccuracy`). Targets with several labels in a row on a batch
    not marked multi-label make ``result()`` a ValueError: their argmax means nothing.
    """

    name = "accuracy"

    def update(self, batch: Batch) -> None:
        if batch.multilabel:
            _add_per_label_accuracy(self, batch)
        else:
            self._update_classes(batch)

    def _update_classes(self, batch: Batch) -> None:
        xp, dtype = batch.xp, batch.pred.dtype
        predicted, true = batch.labels()
        self._add("correct", batch.weighted_sum(xp.astype(predicted == true, dtype)))
        self._add("n", batch.count())
        if batch.target.ndim == 2 and batch.target.shape[-1] > 1:
            several = xp.sum(xp.astype(batch.target > 0.5, dtype), axis=-1) > 1
            self._add("rows_with_several_labels", xp.sum(xp.astype(several, dtype)))

    def result(self) -> float:
        several = self._sums.get("rows_with_several_labels")
        if several is not None and float(several) > 0:
            raise ValueError(
                f"{self.name}: {int(float(several))} target rows hold several labels (multi-label), "
                "whose argmax means nothing; use 'binary_accuracy' (per label) or 'subset_accuracy', "
                "or a binary cross-entropy loss, with which 'accuracy' is the per-label accuracy"
            )
        return self._ratio("correct", "n")


class BinaryAccuracy(Metric):
    """Fraction of labels predicted right, each output thresholded (0 on logits, 0.5 on
    probabilities) against ``target > 0.5``: ``1 - hamming_loss`` in scikit-learn's terms."""

    name = "binary_accuracy"

    def update(self, batch: Batch) -> None:
        _add_per_label_accuracy(self, batch)

    def result(self) -> float:
        return self._ratio("correct", "n")


def _add_per_label_accuracy(metric: Metric, batch: Batch) -> None:
    xp = batch.xp
    predicted, true = batch.label_matrices()
    right = xp.mean(xp.astype(predicted == true, batch.pred.dtype), axis=-1)  # a sample's share right
    metric._add("correct", batch.weighted_sum(right))
    metric._add("n", batch.count())


class SubsetAccuracy(Accuracy):
    """Fraction of samples with every label right (scikit-learn's ``accuracy_score`` on
    multi-label targets); with one label per sample, the accuracy."""

    name = "subset_accuracy"

    def update(self, batch: Batch) -> None:
        if not batch.multilabel:
            self._update_classes(batch)
            return
        xp = batch.xp
        predicted, true = batch.label_matrices()
        right = xp.all(predicted == true, axis=-1)
        self._add("correct", batch.weighted_sum(xp.astype(right, batch.pred.dtype)))
        self._add("n", batch.count())


class TopKAccuracy(Metric):
    """Fraction of samples whose true class is among the ``k`` highest scores."""

    def __init__(self, k: int = 5) -> None:
        self.k = count("k", k)
        self.name = f"top_{self.k}_accuracy"
        super().__init__()

    def update(self, batch: Batch) -> None:
        _single_label(self, batch)
        xp = batch.xp
        scores = batch.pred
        _, true = batch.labels()
        # the true class is in the top k when fewer than k classes score strictly higher
        onehot = F.one_hot(true, scores.shape[-1], scores.dtype, xp=xp)
        true_score = xp.sum(scores * onehot, axis=-1, keepdims=True)
        higher = xp.sum(xp.astype(scores > true_score, scores.dtype), axis=-1)
        self._add("correct", batch.weighted_sum(xp.astype(higher < self.k, scores.dtype)))
        self._add("n", batch.count())

    def result(self) -> float:
        return self._ratio("correct", "n")

    def __repr__(self) -> str:
        return f"TopKAccuracy(k={self.k})"


class MSE(Metric):
    """Mean squared error over all output elements (weighted: scikit-learn's, per sample)."""

    name = "mse"

    def update(self, batch: Batch) -> None:
        d = batch.pred - batch.target_like_pred()
        self._add("sse", batch.weighted_sum(batch.xp.sum(d * d, axis=-1)))
        self._add("n", batch.count())
        self._outputs = int(d.shape[-1])

    def result(self) -> float:
        return self._ratio("sse", "n") / self._outputs


class MAE(Metric):
    """Mean absolute error over all output elements (weighted: scikit-learn's, per sample)."""

    name = "mae"

    def update(self, batch: Batch) -> None:
        d = batch.pred - batch.target_like_pred()
        self._add("sae", batch.weighted_sum(batch.xp.sum(batch.xp.abs(d), axis=-1)))
        self._add("n", batch.count())
        self._outputs = int(d.shape[-1])

    def result(self) -> float:
        return self._ratio("sae", "n") / self._outputs


class R2(Metric):
    """Coefficient of determination, averaged uniformly over outputs (scikit-learn's default)."""

    name = "r2"

    def update(self, batch: Batch) -> None:
        t = batch.target_like_pred()
        d = batch.pred - t
        self._add("sse", batch.column_sums(d * d))
        self._add("sum", batch.column_sums(t))
        self._add("sum_sq", batch.column_sums(t * t))
        self._add("n", batch.count())

    def result(self) -> float:
        n = float(self._sum("n"))
        sse = to_numpy(self._sum("sse")).astype(np.float64)
        total = to_numpy(self._sum("sum")).astype(np.float64)
        sst = to_numpy(self._sum("sum_sq")).astype(np.float64) - total * total / n
        scores = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.where(sse > 0, 0.0, 1.0))
        return float(np.mean(scores))


METRICS: dict[str, Any] = {
    "accuracy": Accuracy,
    "acc": Accuracy,
    "binary_accuracy": BinaryAccuracy,
    "subset_accuracy": SubsetAccuracy,
    "top_k_accuracy": TopKAccuracy,
    "mse": MSE,
    "mae": MAE,
    "r2": R2,
    "precision": Precision,
    "recall": Recall,
    "f1": F1,
    **{
        f"{cls.base_name}_{average}": functools.partial(cls, average, name=f"{cls.base_name}_{average}")
        for cls in (Precision, Recall, F1)
        for average in AVERAGES
    },
    "confusion_matrix": ConfusionMatrix,
}


def get_metric(metric: str | Metric) -> Metric:
    """A fresh metric object from a name (``"top_3_accuracy"`` sets k) or an instance."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        key = metric.lower()
        if key.startswith("top_") and key.endswith("_accuracy") and key[4:-9].isdigit():
            if int(key[4:-9]) < 1:
                raise ValueError(f"unknown metric {metric!r}: top-k accuracy needs k >= 1")
            return TopKAccuracy(int(key[4:-9]))
    return lookup("metric", metric, METRICS)()
