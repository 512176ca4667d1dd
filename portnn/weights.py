"""Per-sample weights from ``sample_weight`` and ``class_weight``, validated on the host.

A batch's weighted loss is ``sum(w * l) / sum(w)`` and weighted metrics are
scikit-learn's, with ``w = sample_weight * class_weight[label]``. This module
turns what a user passes into that one host vector ``w`` (float64, shape
``(n,)``), once per ``fit``/``evaluate``; the loss and metrics then take its rows.

``class_weight`` is a dict ``{class: weight}`` (classes it leaves out weigh 1,
as in Keras and scikit-learn) or ``"balanced"``: scikit-learn's
``compute_class_weight("balanced")``, ``n_samples / (n_classes * bincount(y))``
over the classes present in ``y``.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np  # host side only: weights are validated once, before training

from ._checks import host_array

__all__ = ["balanced_class_weight", "class_weight_vector", "sample_weights"]


def balanced_class_weight(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """scikit-learn's ``"balanced"`` weights, one per class 0..n_classes-1.

    Classes absent from ``labels`` get weight 1 (they weigh no sample anyway).
    """
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(n_classes)
    weights[present] = labels.shape[0] / (np.count_nonzero(present) * counts[present])
    return weights


def class_weight_vector(class_weight: Any, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """One weight per class (index 0..n_classes-1) from a dict or ``"balanced"``.

    Raises ValueError/TypeError naming ``class_weight`` for an unknown class,
    a negative or non-finite weight, or something that is neither.
    """
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be a dict or 'balanced', got {class_weight!r}")
        return balanced_class_weight(labels, n_classes)
    if not isinstance(class_weight, Mapping):
        raise TypeError(
            f"class_weight must be a dict {{class: weight}} or 'balanced', got {type(class_weight).__name__}"
        )
    weights = np.ones(n_classes)
    for key, value in class_weight.items():
        cls = _class_index(key, n_classes)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"class_weight[{key!r}] must be a number, got {type(value).__name__}")
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"class_weight[{key!r}] must be a finite number >= 0, got {value!r}")
        weights[cls] = float(value)
    return weights


def _class_index(key: Any, n_classes: int) -> int:
    integral = isinstance(key, numbers.Integral) or (isinstance(key, numbers.Real) and float(key).is_integer())
    if isinstance(key, bool) or not integral:
        raise TypeError(f"class_weight keys must be class indices (integers), got {key!r}")
    if not 0 <= int(key) < n_classes:
        raise ValueError(
            f"class_weight has class {key!r}, but the classes are 0..{n_classes - 1}"
        )
    return int(key)


def _sample_weight_vector(sample_weight: Any, n_samples: int) -> np.ndarray:
    if isinstance(sample_weight, numbers.Real) and not isinstance(sample_weight, bool):
        sample_weight = np.full(n_samples, float(sample_weight))  # one number for all, as scikit-learn
    w = host_array("sample_weight", sample_weight)
    if w.dtype.kind not in "iuf":
        raise TypeError(f"sample_weight must hold numbers, got dtype {w.dtype}")
    if w.ndim == 2 and w.shape[1] == 1:
        w = w[:, 0]
    if w.ndim != 1 or w.shape[0] != n_samples:
        raise ValueError(
            f"sample_weight must have shape ({n_samples},), one weight per sample; got {w.shape}"
        )
    w = w.astype(np.float64)
    if not np.isfinite(w).all():
        raise ValueError("sample_weight contains NaN or infinity")
    if (w < 0).any():
        raise ValueError(f"sample_weight must be >= 0; found {w.min()}")
    return w


def sample_weights(
    n_samples: int,
    sample_weight: Any = None,
    class_weight: Any = None,
    labels: np.ndarray | None = None,
    n_classes: int | None = None,
) -> np.ndarray | None:
    """``sample_weight * class_weight[labels]`` as float64 of shape ``(n_samples,)``, or None
    when neither is given (then losses and metrics take their unweighted paths).

    ``labels`` (1-D integer class indices) and ``n_classes`` are needed only with
    ``class_weight``. Raises ValueError when every weight is zero (nothing to learn from).
    """
    if sample_weight is None and class_weight is None:
        return None
    w = np.ones(n_samples) if sample_weight is None else _sample_weight_vector(sample_weight, n_samples)
    if class_weight is not None:
        if labels is None or n_classes is None:
            raise ValueError("class_weight needs class labels: use it with a classification loss")
        w = w * class_weight_vector(class_weight, labels, n_classes)[labels]
    if n_samples and not (w > 0).any():
        raise ValueError("sample_weight and class_weight give every sample weight 0; nothing to learn from")
    return w
