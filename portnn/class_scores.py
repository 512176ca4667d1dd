"""Scores from per-class counts: the confusion matrix, precision, recall and F1
(``average="macro" | "micro" | "weighted"``), for one label per sample and for
multi-label batches, weighted or not, equal to scikit-learn's. See :mod:`portnn.metrics`.
"""

from __future__ import annotations

import numpy as np  # host side only: results are read once per epoch and finished on the host

from . import functional as F
from .backend import to_numpy
from .metric_base import Batch, Metric, _single_label

__all__ = ["AVERAGES", "F1", "ConfusionMatrix", "Precision", "Recall"]


class ConfusionMatrix(Metric):
    """Counts ``C[i, j]`` of samples of true class ``i`` predicted as class ``j``
    (integers; with sample weights, the sums of their weights as floats, as scikit-learn)."""

    name = "confusion_matrix"

    def update(self, batch: Batch) -> None:
        _single_label(self, batch)
        xp = batch.xp
        predicted, true = batch.labels()
        c = batch.n_classes
        dtype = batch.pred.dtype
        hits = F.one_hot(predicted, c, dtype, xp=xp)
        if batch.weight is not None:
            hits = batch.weight[:, None] * hits
            self._weighted = True
        self._add("counts", xp.matrix_transpose(F.one_hot(true, c, dtype, xp=xp)) @ hits)

    def reset(self) -> None:
        super().reset()
        self._weighted = False

    def result(self) -> np.ndarray:
        counts = to_numpy(self._sum("counts")).astype(np.float64)
        return counts if self._weighted else np.rint(counts).astype(np.int64)


AVERAGES = ("macro", "micro", "weighted")


class _ClassScores(Metric):
    """Precision, recall or F1 from per-class sums of true positives, predictions and true
    samples (weighted when the batch is), averaged as scikit-learn's ``average=`` with
    ``zero_division=0``:

    * ``"macro"``: the mean over classes; one label per sample: the classes seen in the
      targets or predictions (scikit-learn's labels); multi-label: every label;
    * ``"micro"``: from the sums over all classes (one label per sample: the accuracy);
    * ``"weighted"``: the mean over classes weighted by their (weighted) support.
    """

    base_name = ""

    def __init__(self, average: str = "macro", name: str | None = None) -> None:
        if average not in AVERAGES:
            raise ValueError(f"average must be one of {', '.join(map(repr, AVERAGES))}; got {average!r}")
        self.average = average
        self.name = name or (self.base_name if average == "macro" else f"{self.base_name}_{average}")
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self._multilabel = False

    def update(self, batch: Batch) -> None:
        if batch.multilabel:
            predicted, true = batch.label_matrices()
            self._multilabel = True
        else:
            predicted_labels_, true_labels_ = batch.labels()
            c, dtype, xp = batch.n_classes, batch.pred.dtype, batch.xp
            predicted = F.one_hot(predicted_labels_, c, dtype, xp=xp)
            true = F.one_hot(true_labels_, c, dtype, xp=xp)
        self._add("true_positives", batch.column_sums(predicted * true))
        self._add("predicted", batch.column_sums(predicted))
        self._add("actual", batch.column_sums(true))

    def _counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tp, predicted, actual = (
            to_numpy(self._sum(k)).astype(np.float64) for k in ("true_positives", "predicted", "actual")
        )
        if not self._multilabel:  # scikit-learn's labels: the classes that occur
            seen = (predicted + actual) > 0
            tp, predicted, actual = tp[seen], predicted[seen], actual[seen]
        return tp, predicted, actual

    @staticmethod
    def _score(tp: np.ndarray, predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def result(self) -> float:
        tp, predicted, actual = self._counts()
        if self.average == "micro":
            return float(self._score(*(np.atleast_1d(a.sum()) for a in (tp, predicted, actual)))[0])
        scores = self._score(tp, predicted, actual)
        if scores.size == 0:
            return 0.0
        if self.average == "weighted":
            return float(np.average(scores, weights=actual)) if actual.sum() > 0 else 0.0
        return float(np.mean(scores))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(average={self.average!r})"


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


class Precision(_ClassScores):
    """Precision, macro-averaged by default (``average="micro"`` or ``"weighted"``)."""

    base_name = "precision"

    @staticmethod
    def _score(tp: np.ndarray, predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
        return _safe_divide(tp, predicted)


class Recall(_ClassScores):
    """Recall, macro-averaged by default (``average="micro"`` or ``"weighted"``)."""

    base_name = "recall"

    @staticmethod
    def _score(tp: np.ndarray, predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
        return _safe_divide(tp, actual)


class F1(_ClassScores):
    """F1 score, macro-averaged by default (``average="micro"`` or ``"weighted"``);
    ``"f1_micro"``, ``"f1_macro"``, ``"f1_weighted"`` by name."""

    base_name = "f1"

    @staticmethod
    def _score(tp: np.ndarray, predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
        return _safe_divide(2 * tp, predicted + actual)  # 2pr / (p + r), 0 where undefined
