"""Metrics accumulated on the device over an epoch and read once at its end.

A metric is updated batch by batch with the model's outputs and targets and
keeps running sums as arrays of the model's backend; ``result()`` is the only
place that reads them to the host. ``fit(..., metrics=["accuracy"])`` and
``evaluate`` take names or metric objects.

Classification metrics see predicted and true class labels: the argmax of a
multi-column output, or a threshold on a single column (0.5 for probabilities,
0 for logits).
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np  # host side only: results are read once per epoch and finished on the host

from . import functional as F
from ._checks import count, lookup
from .backend import to_numpy

__all__ = [
    "MAE",
    "MSE",
    "R2",
    "Accuracy",
    "ConfusionMatrix",
    "F1",
    "Metric",
    "Precision",
    "Recall",
    "TopKAccuracy",
    "get_metric",
]


class Metric:
    """Base class: ``reset()``, ``update(batch)`` per batch, ``result()`` once."""

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

    def update(self, batch: Batch) -> None:
        raise NotImplementedError

    def result(self) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Batch:
    """One batch's outputs and targets, with class labels derived once for every metric."""

    def __init__(self, pred: Any, target: Any, xp: Any, logits: bool) -> None:
        self.pred = pred
        self.target = target
        self.xp = xp
        self.logits = logits
        self._labels: tuple[Any, Any] | None = None

    @property
    def n_classes(self) -> int:
        return max(2, int(self.pred.shape[-1]))

    def labels(self) -> tuple[Any, Any]:
        """(predicted, true) integer class labels."""
        if self._labels is None:
            self._labels = (
                predicted_labels(self.pred, self.xp, self.logits),
                true_labels(self.target, self.xp),
            )
        return self._labels

    def target_like_pred(self) -> Any:
        t = self.target
        if t.ndim == 1:
            t = F.one_hot(t, self.pred.shape[-1], self.pred.dtype, xp=self.xp)
        return t if t.dtype == self.pred.dtype else self.xp.astype(t, self.pred.dtype)


def predicted_labels(pred: Any, xp: Any, logits: bool) -> Any:
    """Argmax of a multi-column output; a threshold on one column (0 for logits, 0.5 else)."""
    if pred.shape[-1] == 1:
        return xp.astype(pred[:, 0] > (0.0 if logits else 0.5), _index_dtype(xp, pred))
    return xp.argmax(pred, axis=-1)


def _index_dtype(xp: Any, x: Any) -> Any:
    """The integer dtype ``argmax`` returns, so binary and multi-class labels share a dtype."""
    return xp.__array_namespace_info__().default_dtypes(device=array_api_compat.device(x))["indexing"]


def true_labels(target: Any, xp: Any) -> Any:
    if target.ndim == 1:
        return target
    if target.shape[-1] == 1:
        return xp.astype(target[:, 0] > 0.5, _index_dtype(xp, target))
    return xp.argmax(target, axis=-1)


class Accuracy(Metric):
    """Fraction of samples whose predicted class is the true class."""

    name = "accuracy"

    def update(self, batch: Batch) -> None:
        xp = batch.xp
        predicted, true = batch.labels()
        self._add("correct", xp.sum(xp.astype(predicted == true, batch.pred.dtype)))
        self._add("n", true.shape[0])

    def result(self) -> float:
        return float(self._sum("correct")) / self._sum("n")


class TopKAccuracy(Metric):
    """Fraction of samples whose true class is among the ``k`` highest scores."""

    def __init__(self, k: int = 5) -> None:
        self.k = count("k", k)
        self.name = f"top_{self.k}_accuracy"
        super().__init__()

    def update(self, batch: Batch) -> None:
        xp = batch.xp
        scores = batch.pred
        _, true = batch.labels()
        # the true class is in the top k when fewer than k classes score strictly higher
        onehot = F.one_hot(true, scores.shape[-1], scores.dtype, xp=xp)
        true_score = xp.sum(scores * onehot, axis=-1, keepdims=True)
        higher = xp.sum(xp.astype(scores > true_score, scores.dtype), axis=-1)
        self._add("correct", xp.sum(xp.astype(higher < self.k, scores.dtype)))
        self._add("n", true.shape[0])

    def result(self) -> float:
        return float(self._sum("correct")) / self._sum("n")

    def __repr__(self) -> str:
        return f"TopKAccuracy(k={self.k})"


class MSE(Metric):
    """Mean squared error over all output elements."""

    name = "mse"

    def update(self, batch: Batch) -> None:
        d = batch.pred - batch.target_like_pred()
        self._add("sse", batch.xp.sum(d * d))
        self._add("n", int(np.prod(d.shape)))

    def result(self) -> float:
        return float(self._sum("sse")) / self._sum("n")


class MAE(Metric):
    """Mean absolute error over all output elements."""

    name = "mae"

    def update(self, batch: Batch) -> None:
        d = batch.pred - batch.target_like_pred()
        self._add("sae", batch.xp.sum(batch.xp.abs(d)))
        self._add("n", int(np.prod(d.shape)))

    def result(self) -> float:
        return float(self._sum("sae")) / self._sum("n")


class R2(Metric):
    """Coefficient of determination, averaged uniformly over outputs (scikit-learn's default)."""

    name = "r2"

    def update(self, batch: Batch) -> None:
        xp = batch.xp
        t = batch.target_like_pred()
        d = batch.pred - t
        self._add("sse", xp.sum(d * d, axis=0))
        self._add("sum", xp.sum(t, axis=0))
        self._add("sum_sq", xp.sum(t * t, axis=0))
        self._add("n", t.shape[0])

    def result(self) -> float:
        n = self._sum("n")
        sse = to_numpy(self._sum("sse")).astype(np.float64)
        total = to_numpy(self._sum("sum")).astype(np.float64)
        sst = to_numpy(self._sum("sum_sq")).astype(np.float64) - total * total / n
        scores = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.where(sse > 0, 0.0, 1.0))
        return float(np.mean(scores))


class ConfusionMatrix(Metric):
    """Counts ``C[i, j]`` of samples of true class ``i`` predicted as class ``j``."""

    name = "confusion_matrix"

    def update(self, batch: Batch) -> None:
        xp = batch.xp
        predicted, true = batch.labels()
        c = batch.n_classes
        dtype = batch.pred.dtype
        counts = xp.matrix_transpose(F.one_hot(true, c, dtype, xp=xp)) @ F.one_hot(
            predicted, c, dtype, xp=xp
        )
        self._add("counts", counts)

    def result(self) -> np.ndarray:
        return np.rint(to_numpy(self._sum("counts"))).astype(np.int64)


class _FromConfusion(ConfusionMatrix):
    """Macro-averaged scores from a confusion matrix (classes never seen score 0)."""

    def _scores(self) -> tuple[np.ndarray, np.ndarray]:
        counts = ConfusionMatrix.result(self).astype(np.float64)
        tp = np.diag(counts)
        predicted = counts.sum(axis=0)
        actual = counts.sum(axis=1)
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
        return precision, recall


class Precision(_FromConfusion):
    """Macro-averaged precision."""

    name = "precision"

    def result(self) -> float:
        return float(np.mean(self._scores()[0]))


class Recall(_FromConfusion):
    """Macro-averaged recall."""

    name = "recall"

    def result(self) -> float:
        return float(np.mean(self._scores()[1]))


class F1(_FromConfusion):
    """Macro-averaged F1 score."""

    name = "f1"

    def result(self) -> float:
        p, r = self._scores()
        f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
        return float(np.mean(f1))


METRICS: dict[str, type[Metric]] = {
    "accuracy": Accuracy,
    "acc": Accuracy,
    "top_k_accuracy": TopKAccuracy,
    "mse": MSE,
    "mae": MAE,
    "r2": R2,
    "precision": Precision,
    "recall": Recall,
    "f1": F1,
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
