"""The metric protocol: :class:`Metric`, the :class:`Batch` it is updated with, and the
class labels and probabilities derived from a model's outputs (what ``predict_classes``
and ``predict_proba`` return, multi-label included). See :mod:`portnn.metrics`.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat

from . import functional as F

__all__ = ["Batch", "Metric", "is_multilabel", "predicted_labels", "predicted_probabilities", "true_labels"]


class Metric:
    """Base class: ``reset()``, ``update(batch)`` per batch, ``result()`` once.

    Running state lives in ``self._sums`` and is additive (data-parallel training
    sums it over the ranks), so a metric keeps sums, never ratios.
    """

    name = "metric"

    def reset(self) -> None:
        self._sums: dict[str, Any] = {}

    def __init__(self) -> None:
        self.reset()

    def _add(self, key: str, value: Any) -> None:
        previous = self._sums.get(key)
        self._sums[key] = value if previous is None else previous + value

    def _sum(self, key: str) -> Any:
        """A running sum, or a ValueError when no batch has been seen since ``reset()``."""
        if key not in self._sums:
            raise ValueError(f"{self.name}: no batches seen yet; call update(batch) before result()")
        return self._sums[key]

    def _ratio(self, numerator: str, denominator: str) -> float:
        den = float(self._sum(denominator))
        return float(self._sum(numerator)) / den if den > 0 else math.nan  # every weight 0

    def update(self, batch: Batch) -> None:
        raise NotImplementedError

    def result(self) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def is_multilabel(loss: Any, n_outputs: int) -> bool:
    """Whether outputs are independent labels: a loss of independent sigmoid outputs
    (binary cross-entropy, ``loss.independent_outputs``) over more than one column.

    ``fit``/``evaluate`` decide this once and pass it as ``Batch(..., multilabel=)``.
    """
    return bool(getattr(loss, "independent_outputs", False)) and int(n_outputs) > 1


class Batch:
    """One batch's outputs and targets, with class labels derived once for every metric."""

    def __init__(
        self, pred: Any, target: Any, xp: Any, logits: bool, weight: Any = None, multilabel: bool = False
    ) -> None:
        self.pred = pred
        self.target = target
        self.xp = xp
        self.logits = logits
        self.multilabel = bool(multilabel)
        if weight is not None and weight.dtype != pred.dtype:
            weight = xp.astype(weight, pred.dtype)
        self.weight = weight
        self._labels: tuple[Any, Any] | None = None
        self._matrices: tuple[Any, Any] | None = None

    @property
    def n_classes(self) -> int:
        return max(2, int(self.pred.shape[-1]))

    def labels(self) -> tuple[Any, Any]:
        """(predicted, true) integer class labels; 0/1 matrices when multi-label."""
        if self._labels is None:
            self._labels = (
                predicted_labels(self.pred, self.xp, self.logits, self.multilabel),
                true_labels(self.target, self.xp, self.multilabel),
            )
        return self._labels

    def label_matrices(self) -> tuple[Any, Any]:
        """(predicted, true) 0/1 per output in ``pred``'s dtype: each column thresholded."""
        if self._matrices is None:
            xp, dtype = self.xp, self.pred.dtype
            predicted = xp.astype(self.pred > _threshold(self.logits), dtype)
            self._matrices = (predicted, xp.astype(self.target_like_pred() > 0.5, dtype))
        return self._matrices

    def target_like_pred(self) -> Any:
        t = self.target
        if t.ndim == 1:
            t = F.one_hot(t, self.pred.shape[-1], self.pred.dtype, xp=self.xp)
        return t if t.dtype == self.pred.dtype else self.xp.astype(t, self.pred.dtype)

    def count(self) -> Any:
        """How much the batch weighs: its rows, or the sum of its weights."""
        return self.pred.shape[0] if self.weight is None else self.xp.sum(self.weight)

    def weighted_sum(self, per_sample: Any) -> Any:
        """``sum(w * v)`` over the samples of a 1-D ``v`` (``sum(v)`` unweighted)."""
        if self.weight is None:
            return self.xp.sum(per_sample)
        return self.xp.sum(self.weight * per_sample)

    def column_sums(self, values: Any) -> Any:
        """Weighted sums over the samples (axis 0) of a 2-D ``values``."""
        if self.weight is None:
            return self.xp.sum(values, axis=0)
        return self.xp.sum(self.weight[:, None] * values, axis=0)


def _threshold(logits: bool) -> float:
    return 0.0 if logits else 0.5


def predicted_labels(pred: Any, xp: Any, logits: bool, multilabel: bool = False) -> Any:
    """Argmax of a multi-column output; a threshold on one column (0 for logits, 0.5 else).

    Multi-label: every column thresholded, a 0/1 integer matrix shaped like ``pred``.
    """
    if multilabel:
        return xp.astype(pred > _threshold(logits), _index_dtype(xp, pred))
    if pred.shape[-1] == 1:
        return xp.astype(pred[:, 0] > _threshold(logits), _index_dtype(xp, pred))
    return xp.argmax(pred, axis=-1)


def predicted_probabilities(pred: Any, xp: Any, logits: bool, multilabel: bool = False) -> Any:
    """Probabilities from outputs: as they are, or from logits a sigmoid per output
    (one column, or multi-label) or a softmax across the classes."""
    if not logits:
        return pred
    if multilabel or pred.shape[-1] == 1:
        return F.sigmoid(pred, xp=xp)
    return F.softmax(pred, xp=xp)


def _index_dtype(xp: Any, x: Any) -> Any:
    """The integer dtype ``argmax`` returns, so binary and multi-class labels share a dtype."""
    return xp.__array_namespace_info__().default_dtypes(device=array_api_compat.device(x))["indexing"]


def true_labels(target: Any, xp: Any, multilabel: bool = False) -> Any:
    if multilabel:
        return xp.astype(target > 0.5, _index_dtype(xp, target))
    if target.ndim == 1:
        return target
    if target.shape[-1] == 1:
        return xp.astype(target[:, 0] > 0.5, _index_dtype(xp, target))
    return xp.argmax(target, axis=-1)



def _single_label(metric: Metric, batch: Batch) -> None:
    if batch.multilabel:
        raise ValueError(
            f"{metric.name} takes one class per sample; for multi-label targets use "
            "'binary_accuracy', 'subset_accuracy', 'f1_micro' or 'f1_macro'"
        )
