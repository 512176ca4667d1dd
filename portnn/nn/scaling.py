"""Feature scaling as part of the model: :class:`Standardize`.

``Standardize`` holds a per-feature ``mean`` and ``std`` as buffers (saved,
loaded, moved with ``to()`` and exported to ONNX with the model, never
trained) and computes ``(x - mean) / std`` over the last axis. The statistics
come from :meth:`Standardize.adapt` on training data, computed on the host in
float64 as scikit-learn's ``StandardScaler`` computes them, or are given as
``mean=`` and ``std=``. Like Keras's ``Normalization`` layer, calling it
before either is an error rather than a silent identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np  # host side only: adapt's float64 statistics of the training data

from .._checks import check_features, count, floating_dtype, host_array
from ..backend import _has_float64, dtype_name
from .module import Backward, Module

__all__ = ["NotAdaptedError", "Standardize"]

_CHUNK_ROWS = 1 << 16  # rows converted to float64 at a time: adapt never doubles a large X at once


class NotAdaptedError(RuntimeError, ValueError):
    """A layer that needs statistics of the data was used before ``adapt`` (like
    scikit-learn's ``NotFittedError``, also a ValueError)."""


class Standardize(Module):
    """Standardize the last axis: ``(x - mean) / std``, one ``mean`` and ``std`` per feature.

    ``layer.adapt(X_train)`` fits them as scikit-learn's ``StandardScaler``
    does (population std; a constant feature gets std 1, so it passes through
    centred), and returns the layer::

        model = pn.Sequential(pn.Standardize().adapt(X_train), pn.Dense(4, 3))

    The statistics are buffers, not parameters: ``fit`` never changes them.
    Input of any rank is standardized along its last axis (the features).

    :param features: number of features (last axis); None: taken from ``adapt``
        or from ``mean``/``std``.
    :param mean: per-feature means, given instead of ``adapt`` (with ``std``).
    :param std: per-feature standard deviations, finite and > 0 (with ``mean``).
    :param dtype: dtype name of the statistics; None: that of the data given to
        ``adapt`` (float32 for integers, or where the backend has no float64),
        of ``mean``/``std``, else float32.
    :raises NotAdaptedError: when called before ``adapt`` without ``mean``/``std``.
    """

    preserves_shape = True

    def __init__(
        self, features: int | None = None, mean: Any = None, std: Any = None, dtype: Any = None
    ) -> None:
        super().__init__()
        self.features = count("features", features, allow_none=True)
        #: the dtype asked for (None: chosen from the data)
        self.dtype = None if dtype is None else dtype_name(floating_dtype(self._backend, dtype))
        self.adapted = False
        if (mean is None) != (std is None):
            given, missing = ("mean", "std") if std is None else ("std", "mean")
            raise ValueError(f"Standardize got {given}= without {missing}=; give both, or neither and call adapt(X)")
        if mean is not None:
            host_mean, mean_dtype = self._given_statistic("mean", mean)
            host_std, std_dtype = self._given_statistic("std", std)
            self._set_statistics(host_mean, host_std, self._choose_dtype(np.result_type(mean_dtype, std_dtype)))
        elif self.features is not None:
            # placeholders of the right shape, so a saved model's buffers load into them
            self._set_statistics(np.zeros(self.features), np.ones(self.features), self.dtype or "float32")
            self.adapted = False

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]] | None:
        """The shapes ``config`` gives the buffers (checked against a file first)."""
        features = config.get("features")
        if isinstance(features, bool) or not isinstance(features, int):
            return None
        return {"mean": (features,), "std": (features,)}

    def config(self) -> dict[str, Any]:
        # mean and std are buffers (in the file's tensors), not constructor arguments here
        return {"features": self.features, "dtype": self.dtype}

    def extra_state(self) -> dict[str, Any]:
        """Whether the statistics were fitted or given (placeholders otherwise)."""
        return {"adapted": self.adapted} if self.features is not None else {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        adapted = state.get("adapted", False)
        if not isinstance(adapted, bool):
            raise ValueError(f"Standardize extra state entry 'adapted' must be true or false, got {adapted!r}")
        self.adapted = adapted

    def check_buffer(self, key: str, value: Any, label: str) -> None:
        """A std must be finite and > 0: a zero would divide by zero (adapt gives constants std 1)."""
        if key == "std":
            xp = self.xp
            if not bool(xp.all(xp.isfinite(value) & (value > 0))):
                raise ValueError(f"{label} is a standard deviation and must be finite and > 0")

    def input_shape(self) -> tuple[int, ...] | None:
        # a sample is (..., features): only the last axis is fixed
        return None if self.features is None else (self.features,)

    @property
    def mean(self) -> Any:
        return self._statistic("mean")

    @property
    def std(self) -> Any:
        return self._statistic("std")

    # ------------------------------------------------------------ fitting
    def adapt(self, X: Any) -> Standardize:
        """Fit ``mean`` and ``std`` per feature (the last axis of ``X``, any rank >= 2) and
        return the layer. Accumulates in float64 on the host, as ``StandardScaler``:
        the population std, and std 1 for a feature that is constant up to rounding."""
        label = "Standardize.adapt(X)"
        x = host_array("X", X)
        if x.ndim < 2 or x.size == 0:
            raise ValueError(
                f"{label}: X must hold samples of features (samples, ..., features), got shape {x.shape}; "
                "for one feature use X.reshape(-1, 1)"
            )
        if self.features is not None and x.shape[-1] != self.features:
            raise ValueError(
                f"{label}: X has {x.shape[-1]} features (its last axis, shape {x.shape}), "
                f"but the layer has features={self.features}"
            )
        rows = x.reshape(-1, x.shape[-1])
        mean, var = _mean_and_var(rows, label)
        std = np.sqrt(var)
        std[_is_constant(var, mean, rows.shape[0])] = 1.0
        self._set_statistics(mean, std, self._choose_dtype(x.dtype))
        return self

    # ------------------------------------------------------------ computing
    def apply(self, x: Any, training: bool) -> tuple[Any, Backward]:
        xp = self.xp
        self._check_ready()
        check_features(self.name, self.features, x)
        mean, std = self._buffers["mean"], self._buffers["std"]
        if not xp.isdtype(x.dtype, "real floating"):
            x = xp.astype(x, mean.dtype)
        elif x.dtype != mean.dtype:
            # the input's dtype flows on (the model's compute dtype), whatever the statistics'
            mean, std = xp.astype(mean, x.dtype), xp.astype(std, x.dtype)
        y = (x - mean) / std

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            return (dy / std if need_dx else None), {}

        return y, backward

    def _repr_args(self) -> str:
        state = "" if self.adapted else ", not adapted"
        return f"features={self.features}{state}"

    # ------------------------------------------------------------ helpers
    def _check_ready(self) -> None:
        if not self.adapted:
            raise NotAdaptedError(
                f"{self.name} is not adapted: call layer.adapt(X_train) first "
                "(or create it with mean= and std=)"
            )

    def _statistic(self, key: str) -> Any:
        if key not in self._buffers:
            self._check_ready()
        return self._buffers[key]

    def _given_statistic(self, name: str, value: Any) -> tuple[np.ndarray, np.dtype]:
        """``mean=`` or ``std=`` checked, as float64 (a number: the same for every feature), and its dtype."""
        given = host_array(name, value)
        arr = given.astype(np.float64)
        if arr.ndim == 0 and self.features is not None:
            arr = np.full(self.features, float(arr))
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"Standardize {name} must be 1-D (one value per feature), got shape {arr.shape}")
        if self.features is None:
            self.features = int(arr.size)
        elif arr.size != self.features:
            raise ValueError(f"Standardize {name} has {arr.size} values, but features={self.features}")
        if not np.all(np.isfinite(arr)) or (name == "std" and not np.all(arr > 0)):
            bound = "finite and > 0" if name == "std" else "finite"
            raise ValueError(f"Standardize {name} must be {bound}, got {arr}")
        return arr, given.dtype

    def _choose_dtype(self, data_dtype: Any) -> str:
        if self.dtype is not None:
            return self.dtype
        if np.dtype(data_dtype) == np.float64 and _has_float64(self._backend):
            return "float64"
        return "float32"

    def _set_statistics(self, mean: np.ndarray, std: np.ndarray, dtype: str) -> None:
        backend = self._backend
        dt = backend.dtype(dtype)
        self.features = int(mean.shape[0])
        # rebind, never mutate: a caller (or a copy) may hold the old arrays
        self._buffers["mean"] = backend.asarray(mean, dt, copy=True)
        self._buffers["std"] = backend.asarray(std, dt, copy=True)
        self.adapted = True


def _mean_and_var(rows: np.ndarray, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and population variance in float64, two passes over row chunks
    (the corrected two-pass formula scikit-learn uses); NaN and infinity refused."""
    n = rows.shape[0]
    total = np.zeros(rows.shape[1])
    for start in range(0, n, _CHUNK_ROWS):
        chunk = rows[start:start + _CHUNK_ROWS].astype(np.float64)
        finite = np.isfinite(chunk)
        if not finite.all():
            bad = np.flatnonzero(~finite.all(axis=0))
            raise ValueError(
                f"{label}: X contains NaN or infinity (in feature columns {bad[:10].tolist()}); "
                "clean or impute the data first"
            )
        total += chunk.sum(axis=0)
    mean = total / n
    deviations = np.zeros(rows.shape[1])
    squares = np.zeros(rows.shape[1])
    for start in range(0, n, _CHUNK_ROWS):
        centred = rows[start:start + _CHUNK_ROWS].astype(np.float64) - mean
        deviations += centred.sum(axis=0)
        squares += (centred * centred).sum(axis=0)
    return mean, np.maximum(squares - deviations * deviations / n, 0.0) / n


def _is_constant(var: np.ndarray, mean: np.ndarray, n: int) -> np.ndarray:
    """Features whose variance is within the rounding error of the two-pass formula of a
    constant (scikit-learn's ``_is_constant_feature``): they get std 1."""
    eps = np.finfo(np.float64).eps
    return var <= n * eps * var + (n * mean * eps) ** 2
