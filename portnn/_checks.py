"""Input validation shared by the public entry points.

Every check runs before any parameter or optimizer state changes, and every
error names the argument and what was expected.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np  # host side only: validation of host (NumPy, list) data

from .backend import Backend, _library_name, dtype_name, to_numpy

T = TypeVar("T")


def lookup(kind: str, name: Any, table: Mapping[str, T]) -> T:
    """``table[name]``, or a ValueError that lists close names ("did you mean")."""
    if isinstance(name, str):
        key = name.lower().replace("-", "_")
        if key in table:
            return table[key]
        close = difflib.get_close_matches(key, list(table), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown {kind} {name!r}{hint} (known: {', '.join(table)})")
    raise TypeError(f"{kind} must be a name or an object, got {type(name).__name__}")


def positive_number(name: str, value: Any, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or math.isinf(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return v


def count(name: str, value: Any, *, minimum: int = 1, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def is_device_array(x: Any) -> bool:
    return _library_name(x) not in (None, "numpy")


def host_array(name: str, x: Any) -> np.ndarray:
    """``x`` as NumPy, rejecting what is not numbers (strings, objects, complex, None)."""
    if x is None:
        raise TypeError(f"{name} is None; expected an array")
    try:
        arr = to_numpy(x)
    except Exception as e:  # ragged or mixed nested lists, unsupported objects
        where = ragged(name, x)
        if where is not None:
            raise ValueError(
                f"{name} is ragged ({where}); expected a rectangular array of numbers"
            ) from None
        raise TypeError(f"{name} could not be read as a numeric array: {e}") from None
    if arr.dtype.kind == "O":
        where = ragged(name, x)
        if where is not None:
            raise ValueError(f"{name} is ragged ({where}); expected a rectangular array of numbers")
    check_dtype(name, arr.dtype.kind, arr.dtype)
    return arr


def ragged(name: str, x: Any) -> str | None:
    """Where nested sequences stop being rectangular ('X[1] has length 1, ...'), or None."""
    if not isinstance(x, list | tuple) or not x:
        return None
    shapes = [_nested_shape(item) for item in x]
    for i, shape in enumerate(shapes):
        if shape != shapes[0]:
            return f"{name}[{i}] {_describe(shape)}, {name}[0] {_describe(shapes[0])}"
    for i, item in enumerate(x):
        where = ragged(f"{name}[{i}]", item)
        if where is not None:
            return where
    return None


def _nested_shape(item: Any) -> tuple[int, ...] | None:
    """The length of a sequence (the shape of an array); None for a scalar."""
    if isinstance(item, list | tuple):
        return (len(item),)
    shape = getattr(item, "shape", None)
    return tuple(shape) if shape is not None and len(shape) else None


def _describe(shape: tuple[int, ...] | None) -> str:
    if shape is None:
        return "is a single number"
    return f"has length {shape[0]}" if len(shape) == 1 else f"has shape {shape}"


def check_dtype(name: str, kind: str, dtype: Any) -> None:
    if kind == "b":
        raise TypeError(f"{name} has dtype bool; expected integer or floating numbers")
    if kind not in "iuf":
        raise TypeError(f"{name} has dtype {dtype}; expected integer or floating numbers")


def floating_dtype(backend: Backend, dtype: Any, name: str = "dtype") -> Any:
    """``backend``'s dtype object for ``dtype``, which must be a real floating dtype
    (what the layers' ``dtype=`` takes); a TypeError naming ``name`` otherwise."""
    try:
        resolved = backend.dtype(dtype)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be a floating dtype such as 'float32', got {dtype!r}, "
            f"which backend {str(backend)!r} does not have"
        ) from None
    if not backend.xp.isdtype(resolved, "real floating"):
        raise TypeError(
            f"{name} must be a floating dtype such as 'float32', got {dtype_name(resolved)!r}"
        )
    return resolved


def device_dtype_kind(xp: Any, dtype: Any) -> str:
    if xp.isdtype(dtype, "bool"):
        return "b"
    if xp.isdtype(dtype, "real floating"):
        return "f"
    if xp.isdtype(dtype, "integral"):
        return "i"
    return "c"


_INPUT_NDIM = {1: "1-D (one sample)", 2: "2-D (samples, features)"}


def check_ndim(
    name: str, shape: tuple[int, ...], allowed: tuple[int, ...] | None, what: Mapping[int, str] | None = None
) -> None:
    """``len(shape)`` must be in ``allowed``; ``what`` describes each allowed rank in the message."""
    if allowed is None:  # any rank from 1 up: the first axis is the sample axis
        if len(shape) == 0:
            raise ValueError(f"{name} must be an array (first axis: samples), got a single number")
        return
    if len(shape) not in allowed:
        what = _INPUT_NDIM if what is None else what
        expected = " or ".join(what.get(n, f"{n}-D") for n in allowed)
        raise ValueError(f"{name} must be {expected}; got {len(shape)}-D with shape {tuple(shape)}")


def check_not_empty(name: str, shape: tuple[int, ...]) -> None:
    if any(s == 0 for s in shape):
        raise ValueError(f"{name} is empty (shape {tuple(shape)})")


def check_features(layer_name: str, expected: int, x: Any) -> None:
    """A layer's input must have ``expected`` features (its last axis)."""
    if x.shape[-1] != expected:
        raise ValueError(
            f"{layer_name} expects {expected} input features, got "
            f"{x.shape[-1]} (input shape {tuple(x.shape)})"
        )


def check_finite(name: str, x: Any, xp: Any) -> None:
    """Reject NaN and infinity (one reduction and one host read)."""
    if xp.isdtype(x.dtype, "real floating") and not bool(xp.all(xp.isfinite(x))):
        raise ValueError(
            f"{name} contains NaN or infinity; clean the data or pass check_finite=False"
        )


def as_input(
    backend: Backend,
    name: str,
    x: Any,
    dtype: Any,
    *,
    ndims: tuple[int, ...] | None = (1, 2),
    finite: bool = False,
    what: Mapping[int, str] | None = None,
) -> Any:
    """Validate ``x`` and return it on ``backend`` in ``dtype`` (None: keep its float dtype;
    integers and float16 become float32). ``what`` describes the allowed ranks (see
    :func:`check_ndim`)."""
    xp = backend.xp
    if is_device_array(x):
        check_dtype(name, device_dtype_kind(_ns(x), x.dtype), x.dtype)
        shape = tuple(x.shape)
    else:
        x = host_array(name, x)
        shape = x.shape
    check_ndim(name, shape, ndims, what)
    check_not_empty(name, shape)
    arr = backend.asarray(x)
    if dtype is None and not xp.isdtype(arr.dtype, "real floating"):
        dtype = xp.float32
    elif dtype is None and dtype_name(arr.dtype) == "float16":
        dtype = xp.float32
    if dtype is not None and arr.dtype != dtype:
        arr = xp.astype(arr, dtype)
    if finite:
        check_finite(name, arr, xp)
    return arr


def _ns(x: Any) -> Any:
    from array_api_compat import array_namespace

    return array_namespace(x)


def dtype_kind(name: str, value: Any) -> tuple[str, str]:
    """(``"f"`` for real floating or ``"i"`` for integer, the dtype's name) for ``value`` of any
    array library. Strings, objects, bools and complex numbers are a TypeError naming ``name``.
    """
    if _library_name(value) in (None, "numpy"):
        arr = host_array(name, value)  # numbers only: no strings, objects, bools or complex
        return ("f" if arr.dtype.kind == "f" else "i"), str(arr.dtype)
    kind = device_dtype_kind(_ns(value), value.dtype)
    if kind in "bc":
        what = "bool" if kind == "b" else "complex"
        raise TypeError(f"{name} has a {what} dtype ({value.dtype}); expected real numbers")
    return kind, str(value.dtype)


def check_real(name: str, value: Any, *, floating: bool) -> None:
    """``value`` holds real numbers; with ``floating``, floating-point ones (no integers)."""
    kind, dtype = dtype_kind(name, value)
    if floating and kind != "f":
        raise TypeError(
            f"{name} takes floating-point numbers, got integers (dtype {dtype}); "
            "convert them first, e.g. with .astype('float32')"
        )


def check_same_samples(name: str, items: tuple[Any, ...]) -> None:
    """Every array of a tuple input has the same number of samples (its first axis)."""
    first = int(items[0].shape[0])
    for i, xi in enumerate(items[1:], start=1):
        if int(xi.shape[0]) != first:
            raise ValueError(
                f"{name}[{i}] has {int(xi.shape[0])} samples (shape {tuple(xi.shape)}), but {name}[0] "
                f"has {first}; every input of a tuple needs one row per sample"
            )
