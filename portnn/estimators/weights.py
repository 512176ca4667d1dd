"""The weights of the samples: ``sample_weight`` checked as scikit-learn checks it, the
weights of each side of the early-stopping split, and the classifier's ``class_weight``
folded into per-sample weights."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ..backend import _library_name, to_numpy
from ._sklearn import LabelBinarizer, _check_sample_weight, compute_class_weight


def _host_sample_weight(sample_weight: Any, n_samples: int) -> np.ndarray:
    """``sample_weight`` checked as scikit-learn checks it (a scalar or one finite number >= 0
    per sample, not all zero; the errors name ``sample_weight``), as a float64 NumPy vector.

    The weights stay on the host whatever the library of ``X``: portnn's ``fit`` takes host
    weights and moves their rows with the batches. Only the number of samples of ``X`` is
    needed, so a NumPy stand-in of that length keeps scikit-learn from moving them."""
    if _library_name(sample_weight) not in (None, "numpy"):
        sample_weight = to_numpy(sample_weight)
    rows = np.empty((n_samples, 0))
    return _check_sample_weight(sample_weight, rows, dtype=np.float64, ensure_non_negative=True)


def _weighted_part(weights: np.ndarray | None, rows: np.ndarray, part: str) -> np.ndarray | None:
    """The weights of ``rows`` (one side of the early-stopping split), refused if all zero:
    a weighted loss or score over no weight at all is 0 / 0."""
    if weights is None:
        return None
    part_weights = weights[rows]
    if not part_weights.any():
        raise ValueError(
            f"The sample weights for the {part} set are all zero (sample_weight and "
            "class_weight); consider using a different random_state or validation_fraction."
        )
    return part_weights


def _combined_weights(
    class_weight: dict | str | None,
    y: np.ndarray,
    binarizer: LabelBinarizer,
    sample_weight: np.ndarray | None,
    *,
    incremental: bool,
) -> np.ndarray | None:
    """``sample_weight * class_weight[label]`` per sample (None: neither given, unweighted).

    The class weights are computed here, not by portnn's ``fit``, because the keys of a
    ``class_weight`` dict are the user's labels (strings, say), which only the estimator
    knows; ``fit`` then sees plain per-sample weights."""
    if class_weight is None:
        return sample_weight
    if binarizer.y_type_ == "multilabel-indicator":
        raise ValueError(
            "class_weight is not supported for multi-label targets; pass sample_weight instead"
        )
    labels = binarizer.classes_
    if isinstance(class_weight, str):  # "balanced", from the counts of this y
        if incremental:  # a batch's counts are not the data's: scikit-learn's SGD refuses too
            raise ValueError(
                "class_weight='balanced' is not supported for partial_fit: compute the "
                "weights once, compute_class_weight('balanced', classes=classes, y=y) on "
                "(a large enough sample of) the training targets, and pass them as a dict "
                "{label: weight}"
            )
        per_class = compute_class_weight("balanced", classes=labels, y=y)
    else:
        per_class = _class_weight_vector(class_weight, labels)
    weights = per_class[np.searchsorted(labels, y)]
    if sample_weight is not None:
        weights = weights * sample_weight
    if not weights.any():
        raise ValueError(
            "sample_weight and class_weight give every sample a weight of zero; at least "
            "one sample must weigh more than zero"
        )
    return weights


def _class_weight_vector(class_weight: dict, labels: np.ndarray) -> np.ndarray:
    """One weight per class (the order of ``classes_``) from the dict ``class_weight``;
    classes it leaves out weigh 1, as in scikit-learn."""
    index = {label: i for i, label in enumerate(labels.tolist())}
    weights = np.ones(len(labels))
    for label, value in class_weight.items():
        if label not in index:
            raise ValueError(
                f"class_weight has the label {label!r}, which is not one of the classes "
                f"{labels.tolist()!r}"
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(
                f"class_weight[{label!r}] must be a finite number >= 0, got {value!r}"
            )
        weights[index[label]] = float(value)
    return weights
