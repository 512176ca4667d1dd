"""Where the estimators' arrays live: the namespace scikit-learn validates the input in,
and moving arrays between libraries and devices (answers go back to the input's library)."""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from ..backend import Backend, _library_name, backend_of, to_numpy
from ._sklearn import sklearn


def _input_namespace(X: Any) -> Any:
    """The namespace scikit-learn validates ``X`` in: its own under array API dispatch, else NumPy."""
    if sklearn.get_config()["array_api_dispatch"] and _library_name(X) not in (None, "numpy"):
        return array_api_compat.array_namespace(X)
    return np


def _float_dtypes(X: Any) -> tuple[Any, Any]:
    xp = _input_namespace(X)
    return (xp.float64, xp.float32)


def _same_place(a: Backend | None, b: Backend | None) -> bool:
    """Whether two backends (None: NumPy) are one library on one device."""
    a_name = "numpy" if a is None else str(a)
    b_name = "numpy" if b is None else str(b)
    if a_name != b_name:
        return False
    return a_name == "numpy" or getattr(a, "device", None) == getattr(b, "device", None)


def _to_place(x: Any, place: Backend | None) -> Any:
    """``x`` (an array of any backend) in the library and on the device of ``place`` (None: NumPy)."""
    if place is None or str(place) == "numpy":
        return to_numpy(x)
    if _same_place(backend_of(x), place):
        return x
    return place.asarray(x)


def _take_rows(X: Any, rows: np.ndarray) -> Any:
    """Rows of ``X`` in its own library (NumPy: fancy indexing; others: ``take``)."""
    if isinstance(X, np.ndarray):
        return X[rows]
    xp = array_api_compat.array_namespace(X)
    return xp.take(X, xp.asarray(rows, device=array_api_compat.device(X)), axis=0)
