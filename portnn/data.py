"""Getting data to the model: validation of feature matrices, batching and streaming.

Host data (NumPy arrays, memory-mapped ``.npy`` files, lists) stays on the host
and goes to the model's device one batch at a time; on an accelerator the next
batch is gathered on a worker thread while the current one computes. Data
already on the model's backend is batched on the device with ``take``.

The worker belongs to the :class:`Batcher`, not to a batch generator: the loop
that made the batcher closes it (``with Batcher(...) as batcher:``), so the
worker stops when the loop ends, raises or is interrupted. A generator left
behind by a failed loop owns nothing; the garbage collector may finalize it on
any thread without joining one.

A Dask array (possibly held by the workers of a ``dask.distributed`` cluster)
is never gathered whole: each batch computes only its own rows, one selection
per chunk it touches, and the next batch is computed while the current one
trains.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from ._checks import as_input, check_dtype, check_ndim, check_not_empty, check_same_samples, host_array, is_device_array
from .backend import Backend, _library_name, dtype_name, to_numpy

__all__ = ["Batcher", "DaskBatcher", "feature_matrix", "is_dask", "make_batcher", "map_rows", "n_samples", "samples", "take_rows"]

# the name of the worker threads that gather the next batch
PREFETCH_THREAD = "portnn-prefetch"

# rows per chunk when scanning host data for NaN/inf (bounded memory for memmaps)
_SCAN_ROWS = 1 << 16


def samples(backend: Backend, name: str, X: Any, dtype: Any, *, finite: bool) -> Any:
    """Validate model inputs: an array of samples (:func:`feature_matrix`), or a tuple of
    them for a model with several inputs, each with one row per sample."""
    if not isinstance(X, tuple):
        return feature_matrix(backend, name, X, dtype, finite=finite)
    if not X:
        raise ValueError(f"{name} is an empty tuple; a model with several inputs takes one array per input")
    items = tuple(feature_matrix(backend, f"{name}[{i}]", xi, dtype, finite=finite) for i, xi in enumerate(X))
    if any(is_dask(xi) for xi in items) and str(backend) != "dask":
        raise TypeError(f"{name}: a tuple of Dask arrays is not supported; pass one Dask array, or NumPy arrays")
    check_same_samples(name, items)
    return items


def n_samples(X: Any) -> int:
    """The number of samples of an input (an array or a tuple of arrays)."""
    return int((X[0] if isinstance(X, tuple) else X).shape[0])


def sample_shape(X: Any) -> Any:
    """The shape of one sample (a tuple of them for a tuple input)."""
    if isinstance(X, tuple):
        return tuple(sample_shape(xi) for xi in X)
    return tuple(int(s) for s in X.shape[1:])


_SAMPLES = {2: "2-D (samples, features) or more (samples, ...)"}


def _check_rank(name: str, shape: tuple[int, ...], dask: bool = False) -> None:
    """Samples on the first axis: at least 2-D (a Dask matrix exactly 2-D)."""
    if len(shape) < 2 or (dask and len(shape) != 2):
        check_ndim(name, shape, (2,), None if dask else _SAMPLES)


def feature_matrix(backend: Backend, name: str, X: Any, dtype: Any, *, finite: bool) -> Any:
    """Validate an array of samples: 2-D ``(samples, features)`` or more (``(samples, ...)``).

    Arrays of the model's backend are returned on it; everything else as a host
    NumPy array (a path to a ``.npy`` file is memory-mapped), moved batch by batch.
    """
    if isinstance(X, str | os.PathLike) and os.fspath(X).endswith(".npy"):
        X = np.load(os.fspath(X), mmap_mode="r")
    if is_dask(X) and str(backend) != "dask":
        return _dask_matrix(name, X, dtype, finite=finite)
    if is_device_array(X) and _library_name(X) == str(backend):
        _check_rank(name, tuple(X.shape))
        return as_input(backend, name, X, dtype, ndims=None, finite=finite)
    if is_device_array(X):
        X = to_numpy(X)
    X = host_array(name, X)
    _check_rank(name, X.shape)
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


def is_dask(X: Any) -> bool:
    return _library_name(X) == "dask"


def _dask_matrix(name: str, X: Any, dtype: Any, *, finite: bool) -> Any:
    """Check a Dask feature matrix; its NaN/inf scan runs on the workers (one pass)."""
    import dask
    import dask.array as da

    check_dtype(name, np.dtype(X.dtype).kind, X.dtype)
    check_ndim(name, X.shape, (2,))
    if any(math.isnan(s) for s in X.shape):
        raise ValueError(f"{name} has unknown chunk sizes; call {name}.compute_chunk_sizes() first")
    check_not_empty(name, X.shape)
    if finite and np.dtype(X.dtype).kind == "f":
        checks = [abs(X).max()] if np.dtype(X.dtype).itemsize > np.dtype(dtype_name(dtype)).itemsize else []
        all_finite, *largest = dask.compute(da.isfinite(X).all(), *checks)
        if not all_finite:
            raise ValueError(f"{name} contains NaN or infinity; clean the data or pass check_finite=False")
        if largest and largest[0] > float(np.finfo(dtype_name(dtype)).max):
            raise ValueError(
                f"{name} holds values beyond the range of {dtype_name(dtype)} (the model's "
                f"dtype), which would become infinite; rescale the data"
            )
    return X


def _dask_rows(X: Any, sel: Any) -> np.ndarray:
    """Rows ``sel`` (a slice or host indices in any order) of a Dask matrix, as NumPy.

    Each chunk the rows fall in gives only its selected rows, all chunks in one
    ``compute``; nothing else leaves the workers.
    """
    import dask

    if isinstance(sel, slice):
        return np.asarray(X[sel].compute())
    idx = np.asarray(sel)
    if idx.size == 0:
        return np.empty((0, X.shape[1]), dtype=X.dtype)
    order = np.argsort(idx, kind="stable")
    ordered = idx[order]
    starts = np.cumsum((0, *X.chunks[0]))
    chunk_of = np.searchsorted(starts, ordered, side="right") - 1
    cuts = np.flatnonzero(np.diff(chunk_of)) + 1
    pieces = [
        X.blocks[int(chunk_of[part[0]])][ordered[part[0] : part[-1] + 1] - starts[chunk_of[part[0]]]]
        for part in np.split(np.arange(idx.size), cuts)
    ]
    rows = np.concatenate([np.asarray(p) for p in dask.compute(*pieces)])
    out = np.empty_like(rows)
    out[order] = rows
    return out


def map_rows(X: Any, fn: Any, n_outputs: int | None, dtype: Any) -> Any:
    """A Dask array of ``fn(block)`` for each row block of ``X``, computed on the workers.

    ``fn`` maps a NumPy block of rows to a NumPy result with as many rows (and
    ``n_outputs`` columns, or 1-D results when ``n_outputs`` is None).
    """
    if X.numblocks[1] > 1:
        X = X.rechunk({1: -1})  # a block holds whole rows
    if n_outputs is None:
        return X.map_blocks(fn, dtype=dtype, chunks=(X.chunks[0],), drop_axis=1)
    return X.map_blocks(fn, dtype=dtype, chunks=(X.chunks[0], (n_outputs,)))


def take_rows(data: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of a host or device array, or of each array of a tuple (views where
    the library gives them)."""
    if isinstance(data, tuple):
        return tuple(d[start:stop, ...] for d in data)
    return data[start:stop, ...]


def _take(xp: Any, data: Any, idx: Any) -> Any:
    if isinstance(data, tuple):
        return tuple(xp.take(d, idx, axis=0) for d in data)
    return xp.take(data, idx, axis=0)


def _on_backend(backend: Backend, data: Any, dtype: Any) -> Any:
    """``data`` (an array, or a tuple of arrays with a tuple of dtypes) on ``backend``."""
    if isinstance(data, tuple):
        return tuple(backend.asarray(d, t) for d, t in zip(data, dtype))
    return backend.asarray(data, dtype)


def _host_rows(data: Any, sel: Any) -> Any:
    return tuple(d[sel] for d in data) if isinstance(data, tuple) else data[sel]


class Batcher:
    """Batches of ``(X, y)`` on the model's backend, in the model's dtype.

    Use it as a context manager (or call :meth:`close`): it owns the worker
    thread that gathers the next host batch. ``y`` may be None (prediction), or a
    tuple of arrays (targets and sample weights) with a tuple of dtypes ``y_dtype``:
    each batch then holds a tuple of their rows. Batches follow ``order`` (a host
    permutation) or the data's own order when ``order`` is None.
    """

    def __init__(self, backend: Backend, dtype: Any, X: Any, y: Any = None, y_dtype: Any = None) -> None:
        self.backend = backend
        self.on_device = self._batches_on_device(X)
        self.dtype = dtype
        self.X = X
        self.y_dtype = y_dtype
        self.y = _on_backend(backend, y, y_dtype) if self.on_device and y is not None else y
        # overlap the host gather (and its copy) with compute where there is a device
        self.prefetch = self._prefetches(backend)
        self._pool: ThreadPoolExecutor | None = None

    def _batches_on_device(self, X: Any) -> bool:
        """Whether batches are taken on the device (the data is there already)."""
        return all(is_device_array(xi) for xi in (X if isinstance(X, tuple) else (X,)))

    def _prefetches(self, backend: Backend) -> bool:
        """Whether the next host batch is gathered while the current one trains."""
        return not self.on_device and str(backend) != "numpy"

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the prefetch worker: a gather in progress finishes, queued ones are dropped."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, fn: Any, *args: Any) -> Future:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=PREFETCH_THREAD)
        return self._pool.submit(fn, *args)

    def __len__(self) -> int:
        return n_samples(self.X)

    def _host_batch(self, sel: Any) -> tuple[Any, Any]:
        if isinstance(self.X, tuple):
            xb = tuple(self.backend.asarray(xi[sel], self.dtype) for xi in self.X)
        else:
            xb = self.backend.asarray(self.X[sel], self.dtype)
        yb = None if self.y is None else _on_backend(self.backend, _host_rows(self.y, sel), self.y_dtype)
        return xb, yb

    def batches(self, order: np.ndarray | None, batch_size: int) -> Iterator[tuple[Any, Any, int]]:
        """Batches of ``batch_size`` rows: the rows ``order`` lists (a host array), or all in turn."""
        bounds = self._bounds(order, batch_size)
        if not bounds:  # an epoch resumed after its last step
            return
        if self.on_device:
            yield from self._device_batches(order, bounds)
            return
        selections = [slice(a, b) if order is None else order[a:b] for a, b in bounds]
        if not self.prefetch:
            for sel, (a, b) in zip(selections, bounds):
                yield (*self._host_batch(sel), b - a)
            return
        pending = self._submit(self._host_batch, selections[0])
        for i, (a, b) in enumerate(bounds):
            xb, yb = pending.result()
            if i + 1 < len(bounds):
                pending = self._submit(self._host_batch, selections[i + 1])
            yield xb, yb, b - a

    def _bounds(self, order: np.ndarray | None, batch_size: int) -> list[tuple[int, int]]:
        """``(start, stop)`` of each batch within ``order`` (or the data's own order)."""
        n = len(self) if order is None else len(order)
        return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]

    def select(self, selections: list[Any]) -> Iterator[tuple[Any, Any, int]]:
        """Batches of the given rows: each selection a slice or a host array of row indices."""
        if self.on_device:
            xp = self.backend.xp
            for sel in selections:
                if isinstance(sel, slice):
                    xb = take_rows(self.X, sel.start, sel.stop)
                    yb = None if self.y is None else take_rows(self.y, sel.start, sel.stop)
                else:
                    idx = self.backend.asarray(sel)
                    xb = _take(xp, self.X, idx)
                    yb = None if self.y is None else _take(xp, self.y, idx)
                yield xb, yb, n_samples(xb)
            return
        if not self.prefetch:
            for sel in selections:
                xb, yb = self._host_batch(sel)
                yield xb, yb, n_samples(xb)
            return
        pending = self._submit(self._host_batch, selections[0]) if selections else None
        for i in range(len(selections)):
            xb, yb = pending.result()
            if i + 1 < len(selections):
                pending = self._submit(self._host_batch, selections[i + 1])
            yield xb, yb, n_samples(xb)

    def _device_batches(self, order: np.ndarray | None, bounds: list[tuple[int, int]]) -> Iterator[tuple[Any, Any, int]]:
        xp = self.backend.xp
        device_order = None if order is None else self.backend.asarray(order)
        for a, b in bounds:
            if device_order is None:
                xb = take_rows(self.X, a, b)
                yb = None if self.y is None else take_rows(self.y, a, b)
            else:
                idx = device_order[a:b]
                xb = _take(xp, self.X, idx)
                yb = None if self.y is None else _take(xp, self.y, idx)
            yield xb, yb, b - a


class DaskBatcher(Batcher):
    """The batches of a Dask matrix: the adapter that streams one from its chunks.

    Each batch computes only its own rows (one selection per chunk it touches), a
    window of about one chunk's rows per ``compute``, the next window while the
    current one trains; the matrix is never gathered whole.
    """

    def _batches_on_device(self, X: Any) -> bool:
        return False  # each batch is computed from its chunks, on the host

    def _prefetches(self, backend: Backend) -> bool:
        return True

    def _host_batch(self, sel: Any) -> tuple[Any, Any]:
        xb = self.backend.asarray(_dask_rows(self.X, sel), self.dtype)
        yb = None if self.y is None else _on_backend(self.backend, _host_rows(self.y, sel), self.y_dtype)
        return xb, yb

    def batches(self, order: np.ndarray | None, batch_size: int) -> Iterator[tuple[Any, Any, int]]:
        bounds = self._bounds(order, batch_size)
        if bounds:
            yield from self.select([slice(a, b) if order is None else order[a:b] for a, b in bounds])

    def select(self, selections: list[Any]) -> Iterator[tuple[Any, Any, int]]:
        if selections:
            yield from self._dask_batches(selections)

    def _dask_batches(self, selections: list[Any]) -> Iterator[tuple[Any, Any, int]]:
        """Batches of a Dask matrix, computed a window of about one chunk's rows at a time
        (one ``compute`` per window), the next window while the current one trains."""
        rows = [np.arange(s.start, s.stop) if isinstance(s, slice) else np.asarray(s) for s in selections]
        window_rows = max(self.X.chunks[0])
        windows: list[list[np.ndarray]] = [[]]
        filled = 0
        for r in rows:
            if filled >= window_rows:
                windows.append([])
                filled = 0
            windows[-1].append(r)
            filled += r.size
        pending = self._submit(self._dask_window, windows[0])
        for i in range(len(windows)):
            ready = pending.result()
            if i + 1 < len(windows):
                pending = self._submit(self._dask_window, windows[i + 1])
            yield from ready

    def _dask_window(self, window: list[np.ndarray]) -> list[tuple[Any, Any, int]]:
        host = _dask_rows(self.X, np.concatenate(window))
        out, start = [], 0
        for r in window:
            xb = self.backend.asarray(host[start : start + r.size], self.dtype)
            yb = None if self.y is None else _on_backend(self.backend, _host_rows(self.y, r), self.y_dtype)
            out.append((xb, yb, r.size))
            start += r.size
        return out


def make_batcher(backend: Backend, dtype: Any, X: Any, y: Any = None, y_dtype: Any = None) -> Batcher:
    """The batcher of ``X``: a :class:`DaskBatcher` for a Dask matrix (on any backend but
    Dask's own), else a :class:`Batcher` of host or device arrays."""
    first = X[0] if isinstance(X, tuple) else X
    kind = DaskBatcher if is_dask(first) and str(backend) != "dask" else Batcher
    return kind(backend, dtype, X, y, y_dtype)
