"""The non-finite step guard: a training step is applied only if everything it produced is finite.

A finite loss and finite gradients can still give a non-finite update (a learning
rate of 1e308, a schedule that overflows), so the guard looks at the loss, the
gradients, the updated parameters and the updated optimizer slots together, in
one host read per step. Updates run in place where the backend's arrays are
writeable; :class:`Rollback` keeps copies of what such an update overwrites, in
buffers allocated once, so a rejected step can be undone exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from array_api_compat import is_writeable_array

__all__ = ["Rollback", "all_finite", "arrays_of", "probe"]


def arrays_of(tree: Any) -> Iterator[Any]:
    """The arrays in a nest of dicts, lists and tuples (numbers and None skipped)."""
    if isinstance(tree, Mapping):
        for value in tree.values():
            yield from arrays_of(value)
    elif isinstance(tree, list | tuple):
        for value in tree:
            yield from arrays_of(value)
    elif hasattr(tree, "shape") and hasattr(tree, "dtype"):
        yield tree


def _floating(arrays: Iterable[Any], xp: Any) -> list[Any]:
    return [a for a in arrays if xp.isdtype(a.dtype, "real floating")]


def probe(value: Any, arrays: Iterable[Any], xp: Any) -> Any:
    """A 0-d array that is finite if ``value`` and every floating array are (a sum: NaN or
    infinity anywhere makes it non-finite; it can also overflow, see :func:`all_finite`)."""
    total = value
    for a in _floating(arrays, xp):
        total = total + xp.sum(a)
    return total


def all_finite(value: Any, arrays: Iterable[Any], xp: Any) -> bool:
    """Whether ``value`` and every floating array hold only finite numbers (one host read
    in the common case; a sum that overflowed although every entry is finite is checked
    entry by entry before the step is called non-finite)."""
    arrays = list(arrays)
    if math.isfinite(float(probe(value, arrays, xp))):
        return True
    if not math.isfinite(float(value)):
        return False
    return all(bool(xp.all(xp.isfinite(a))) for a in _floating(arrays, xp))


class Rollback:
    """Copies of the writeable arrays of a training state, taken before an in-place update.

    ``save(arrays)`` copies each writeable array into a buffer of its own (allocated
    on first use and reused while shapes hold); ``restore()`` writes them back.
    Arrays of an immutable backend (JAX) are never overwritten, so nothing is kept.
    """

    def __init__(self) -> None:
        self._buffers: list[Any] = []
        self._saved: list[Any] = []

    def save(self, arrays: Iterable[Any]) -> None:
        saved = [a for a in arrays if is_writeable_array(a)]
        buffers = self._buffers
        if len(buffers) != len(saved) or any(
            b.shape != a.shape or b.dtype != a.dtype for a, b in zip(saved, buffers)
        ):
            buffers = self._buffers = [_empty_like(a) for a in saved]
        for a, b in zip(saved, buffers):
            b[...] = a
        self._saved = saved

    def restore(self) -> None:
        for a, b in zip(self._saved, self._buffers):
            a[...] = b


def _empty_like(a: Any) -> Any:
    from array_api_compat import array_namespace

    return array_namespace(a).empty_like(a)
