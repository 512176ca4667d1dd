"""Getting data to the model: validation of feature matrices, batching and streaming.

Host data (NumPy arrays, memory-mapped ``.npy`` files, lists) stays on the host
and goes to the model's device one batch at a time; on an accelerator the next
batch is gathered on a worker thread while the current one computes. Data
already on the model's backend is batched on the device with ``take``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ._checks import as_input, check_ndim, check_not_empty, host_array, is_device_array
from .backend import Backend, _library_name, dtype_name, to_numpy

__all__ = ["Batcher", "feature_matrix"]

# rows per chunk when scanning host data for NaN/inf (bounded memory for memmaps)
_SCAN_ROWS = 1 << 16


def feature_matrix(backend: Backend, name: str, X: Any, dtype: Any, *, finite: bool) -> Any:
    """Validate a 2-D feature matrix.

    Arrays of the model's backend are returned on it; everything else as a host
    NumPy array (a path to a ``.npy`` file is memory-mapped), moved batch by batch.
    """
    if isinstance(X, str | os.PathLike) and os.fspath(X).endswith(".npy"):
        X = np.load(os.fspath(X), mmap_mode="r")
    if is_device_array(X) and _library_name(X) == str(backend):
        return as_input(backend, name, X, dtype, ndims=(2,), finite=finite)
    if is_device_array(X):
        X = to_numpy(X)
    X = host_array(name, X)
    check_ndim(name, X.shape, (2,))
    check_not_empty(name, X.shape)
    if finite and X.dtype.kind == "f":
        # values beyond the model's dtype would become infinite in the conversion
        limit = float(np.finfo(dtype_name(dtype)).max) if dtype is not None else math.inf
        for start in range(0, X.shape[0], _SCAN_ROWS):
            chunk = X[start : start + _SCAN_ROWS]
            if not np.isfinite(chunk).all():
                raise ValueError(
                    f"{name} contains NaN or infinity; clean the data or pass check_finite=False"
                )
            if limit < math.inf and chunk.dtype.itemsize > np.dtype(dtype_name(dtype)).itemsize:
                if np.abs(chunk).max() > limit:
                    raise ValueError(
                        f"{name} holds values beyond the range of {dtype_name(dtype)} (the model's "
                        f"dtype), which would become infinite; rescale the data"
                    )
    return X


def take_rows(data: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of a host or device matrix (a view where the library gives one)."""
    return data[start:stop, ...]


class Batcher:
    """Batches of ``(X, y)`` on the model's backend, in the model's dtype.

    ``y`` may be None (prediction). Batches follow ``order`` (a host permutation)
    or the data's own order when ``order`` is None.
    """

    def __init__(self, backend: Backend, dtype: Any, X: Any, y: Any = None, y_dtype: Any = None) -> None:
        self.backend = backend
        self.on_device = is_device_array(X)
        self.dtype = dtype
        self.X = X
        self.y_dtype = y_dtype
        self.y = backend.asarray(y, y_dtype) if self.on_device and y is not None else y
        # overlap the host gather (and its copy) with compute where there is a device
        self.prefetch = not self.on_device and str(backend) != "numpy"

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def _host_batch(self, sel: Any) -> tuple[Any, Any]:
        xb = self.backend.asarray(self.X[sel], self.dtype)
        yb = None if self.y is None else self.backend.asarray(self.y[sel], self.y_dtype)
        return xb, yb

    def batches(self, order: np.ndarray | None, batch_size: int) -> Iterator[tuple[Any, Any, int]]:
        n = len(self)
        bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
        if self.on_device:
            yield from self._device_batches(order, bounds)
            return
        selections = [slice(a, b) if order is None else order[a:b] for a, b in bounds]
        if not self.prefetch:
            for sel, (a, b) in zip(selections, bounds):
                yield (*self._host_batch(sel), b - a)
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._host_batch, selections[0])
            for i, (a, b) in enumerate(bounds):
                xb, yb = pending.result()
                if i + 1 < len(bounds):
                    pending = pool.submit(self._host_batch, selections[i + 1])
                yield xb, yb, b - a

    def _device_batches(self, order: np.ndarray | None, bounds: list[tuple[int, int]]) -> Iterator[tuple[Any, Any, int]]:
        xp = self.backend.xp
        device_order = None if order is None else self.backend.asarray(order)
        for a, b in bounds:
            if device_order is None:
                xb = take_rows(self.X, a, b)
                yb = None if self.y is None else take_rows(self.y, a, b)
            else:
                idx = device_order[a:b]
                xb = xp.take(self.X, idx, axis=0)
                yb = None if self.y is None else xp.take(self.y, idx, axis=0)
            yield xb, yb, b - a
