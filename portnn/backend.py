"""Backends: which array library (and device) portnn computes on.

This is the one module that knows concrete array libraries by name. Everything
else receives an Array API namespace (``xp``) and calls only standard functions.

A backend is chosen, in order of precedence, by ``use_backend(...)`` (scoped),
``set_backend(...)`` (process default), the ``PORTNN_BACKEND`` environment
variable, and finally ``"numpy"``.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import importlib
import importlib.util
import numbers
import os
import re
from collections.abc import Iterator
from typing import Any

import array_api_compat
import numpy as np

__all__ = [
    "Backend",
    "BackendError",
    "available_backends",
    "backend_of",
    "get_backend",
    "set_backend",
    "to_numpy",
    "use_backend",
]

# name -> (module that must be importable, pip requirement naming what to install)
_KNOWN: dict[str, tuple[str, str]] = {
    "numpy": ("numpy", "numpy"),
    "cupy": ("cupy", "portnn[cuda13] (or portnn[cuda12]), with an NVIDIA GPU and driver"),
    "torch": ("torch", "torch"),
    "array_api_strict": ("array_api_strict", "array-api-strict"),
    "jax": ("jax", "jax"),
    "dask": ("dask", "dask[array]"),
}


class BackendError(RuntimeError):
    """A backend was asked for that cannot be used here."""


class Backend(str):
    """A backend name together with its Array API namespace and device.

    It *is* the name (``get_backend() == "numpy"``), and carries ``.xp`` (the
    namespace to compute with) and ``.device`` (where new arrays are created).
    """

    xp: Any
    device: Any

    def __new__(cls, name: str, xp: Any, device: Any = None) -> Backend:
        self = super().__new__(cls, name)
        self.xp = xp
        self.device = device
        return self

    @property
    def name(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        dev = "" if self.device is None else f", device={self.device!r}"
        return f"Backend({str(self)!r}{dev})"

    def __reduce__(self):
        return (_make_backend, (str(self), self.device))

    def __copy__(self) -> Backend:
        return self

    def __deepcopy__(self, memo: dict) -> Backend:
        return self

    def dtype(self, dtype: Any) -> Any:
        """This backend's dtype object for a name or another library's dtype."""
        name = dtype_name(dtype)
        try:
            return getattr(self.xp, name)
        except AttributeError:
            raise TypeError(f"backend {str(self)!r} has no dtype {name!r}") from None

    @property
    def index_dtype(self) -> Any:
        """The library's default integer dtype (int64, or int32 where that is all it has, as JAX by default)."""
        return self.xp.__array_namespace_info__().default_dtypes(device=self.device)["integral"]

    def asarray(self, x: Any, dtype: Any = None, *, copy: bool = False) -> Any:
        """Convert ``x`` (any library's array, nested lists, scalars) to this backend.

        The result may share memory with ``x`` unless ``copy=True``.
        """
        arr = _asarray(self, x, dtype)
        if copy and _may_share(arr, x):
            arr = self.xp.asarray(arr, copy=True)
        return arr


def dtype_name(dtype: Any) -> str:
    """'float32' for ``"float32"``, ``numpy.float32``, ``torch.float32``, ``xp.float32``..."""
    if isinstance(dtype, str):
        return dtype
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype).rsplit(".", 1)[-1]


def _cupy_usable() -> bool:
    try:
        import cupy

        return bool(cupy.cuda.is_available())
    except Exception:
        return False


def _installed(name: str) -> bool:
    return importlib.util.find_spec(_KNOWN[name][0]) is not None


def available_backends() -> tuple[str, ...]:
    """Names of the backends that can be used in this process, NumPy first.

    CuPy is listed only where a CUDA device is visible.
    """
    names = []
    for name in _KNOWN:
        if not _installed(name):
            continue
        if name == "cupy" and not _cupy_usable():
            continue
        names.append(name)
    return tuple(names)


def _namespace(name: str) -> Any:
    if name not in _KNOWN:
        close = difflib.get_close_matches(name.lower(), list(_KNOWN), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise BackendError(f"unknown backend {name!r}; {hint}known backends: {', '.join(_KNOWN)}")
    if not _installed(name):
        raise BackendError(
            f"backend {name!r} is not installed; install {_KNOWN[name][1]}"
        )
    if name == "cupy" and not _cupy_usable():
        raise BackendError(
            "backend 'cupy' needs a CUDA device, and none is visible here; "
            "use 'numpy' on this machine, or install portnn[cuda13] (or "
            "portnn[cuda12]) on a machine with an NVIDIA GPU and driver"
        )
    if name == "numpy":
        import array_api_compat.numpy as xp
    elif name == "cupy":
        import array_api_compat.cupy as xp
    elif name == "torch":
        import array_api_compat.torch as xp
    elif name == "dask":
        import array_api_compat.dask.array as xp
    elif name == "jax":
        xp = importlib.import_module("jax.numpy")
    else:
        xp = importlib.import_module(name)
    return xp


_cache: dict[tuple[str, Any], Backend] = {}


def _make_backend(name: str, device: Any = None) -> Backend:
    if isinstance(name, Backend) and device is None:
        return name
    if not isinstance(name, str):
        raise TypeError(f"backend must be a name such as 'numpy', got {type(name).__name__}")
    key = (str(name), _device_key(device))
    backend = _cache.get(key)
    if backend is None:
        xp = _namespace(str(name))
        backend = Backend(str(name), xp, _resolve_device(str(name), device))
        _cache[key] = backend
    return backend


def _device_key(device: Any) -> Any:
    try:
        hash(device)
        return device
    except TypeError:
        return repr(device)


def _resolve_device(name: str, device: Any) -> Any:
    """``device`` as ``name``'s device object, or a BackendError naming it and the devices there.

    Runs once per (backend, device) when the backend is made, so that a device that does
    not exist is refused where it is chosen rather than inside a layer later.
    """
    if device is None:
        return None
    resolve = {"torch": _torch_device, "cupy": _cupy_device, "jax": _jax_device}.get(name)
    if resolve is not None:
        return resolve(device)
    return _listed_device(name, device)


def _no_device(name: str, device: Any, available: list[str], why: str = "") -> BackendError:
    shown = ", ".join(available) if available else "none"
    reason = f" ({why})" if why else ""
    return BackendError(
        f"backend {name!r} has no device {device!r}{reason}; available devices: {shown}"
    )


def _device_label(device: Any) -> str:
    """'device1' for array_api_strict.Device('device1'), 'cpu' for 'cpu', ..."""
    found = re.fullmatch(r".*Device\('(.*)'\)", repr(device))
    return found.group(1) if found else str(device)


def _listed_device(name: str, device: Any) -> Any:
    """A device the namespace lists in ``__array_namespace_info__().devices()`` (object or name)."""
    xp = _namespace(name)
    try:
        devices = list(xp.__array_namespace_info__().devices())
    except Exception:  # noqa: BLE001 -- a library that cannot list them: take the device as given
        return device
    for known in devices:
        try:
            if device == known:
                return known
        except Exception:  # noqa: BLE001 -- objects that cannot be compared are not this one
            continue
    if isinstance(device, str):
        for known in devices:
            if _device_label(known) == device:
                return known
    raise _no_device(name, device, [_device_label(d) for d in devices])


def _torch_devices() -> list[str]:
    import torch

    found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def _torch_device(device: Any) -> Any:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise _no_device("torch", device, _torch_devices()) from None
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if (dev.index or 0) >= count:
            why = "CUDA is not available here" if count == 0 else f"{count} CUDA device(s) here"
            raise _no_device("torch", device, _torch_devices(), why)
    elif dev.type == "meta":
        raise _no_device("torch", device, _torch_devices(), "meta tensors hold no data")
    elif dev.type != "cpu":
        try:
            torch.empty(0, device=dev)
        except Exception as e:  # noqa: BLE001 -- not compiled in, no driver, no such index
            raise _no_device("torch", device, _torch_devices(), str(e).split("\n")[0]) from None
    return dev


def _cupy_device(device: Any) -> Any:
    import cupy

    count = cupy.cuda.runtime.getDeviceCount()
    available = [f"cuda:{i}" for i in range(count)]
    if isinstance(device, cupy.cuda.Device):
        index = device.id
    else:
        text = str(device).strip().lower()
        text = {"cuda": "0", "gpu": "0"}.get(text, re.sub(r"^(cuda|gpu):", "", text))
        if isinstance(device, bool) or not text.isdigit():
            raise _no_device("cupy", device, available)
        index = int(text)
    if index >= count:
        raise _no_device("cupy", device, available)
    return device if isinstance(device, cupy.cuda.Device) else cupy.cuda.Device(index)


def _jax_device(device: Any) -> Any:
    """A JAX device: one of ``jax.devices()`` (or of a platform's), a platform name
    ('cpu', 'gpu', 'cuda:1', ...) or ``str()`` of a device; shardings pass as they are."""
    import jax

    def devices(platform: str | None = None) -> list[Any]:
        try:
            return list(jax.devices(platform))
        except RuntimeError:  # a platform that is not here
            return []

    listed = devices() + [d for d in devices("cpu") if d not in devices()]
    available = [str(d) for d in listed]
    if hasattr(device, "device_set"):  # a Sharding: JAX checks it itself
        return device
    if not isinstance(device, str):
        if device in devices(getattr(device, "platform", None)):
            return device
        raise _no_device("jax", device, available)
    for d in listed:
        if str(d) == device:
            return d
    platform, _, index = device.strip().lower().partition(":")
    found = devices(platform)
    if index.isdigit() or not index:
        i = int(index or 0)
        if i < len(found):
            return found[i]
    raise _no_device("jax", device, available)


_default: Backend | None = None
_scoped: contextvars.ContextVar[Backend | None] = contextvars.ContextVar(
    "portnn_backend", default=None
)


def set_backend(name: str, device: Any = None) -> Backend:
    """Make ``name`` (on ``device``) the process-wide default backend.

    Raises :class:`BackendError` naming what to install if it cannot be used.
    """
    global _default
    _default = _make_backend(name, device)
    return _default


def get_backend() -> Backend:
    """The backend new parameters are created on (a :class:`Backend`, equal to its name)."""
    scoped = _scoped.get()
    if scoped is not None:
        return scoped
    if _default is not None:
        return _default
    return _make_backend(os.environ.get("PORTNN_BACKEND", "").strip() or "numpy")


@contextlib.contextmanager
def use_backend(name: str, device: Any = None) -> Iterator[Backend]:
    """Scope a backend: ``with pn.use_backend("cupy"): model = ...``."""
    token = _scoped.set(_make_backend(name, device))
    try:
        yield _scoped.get()
    finally:
        _scoped.reset(token)


def _library_name(x: Any) -> str | None:
    """The backend name of an array, or None for host data (lists, scalars, numpy)."""
    if isinstance(x, np.ndarray | np.generic):
        return "numpy"
    if array_api_compat.is_cupy_array(x):
        return "cupy"
    if array_api_compat.is_torch_array(x):
        return "torch"
    if array_api_compat.is_jax_array(x):
        return "jax"
    if array_api_compat.is_dask_array(x):
        return "dask"
    if type(x).__module__.startswith("array_api_strict"):
        return "array_api_strict"
    return None


def backend_of(x: Any) -> Backend | None:
    """The backend an array lives on (with its device), or None for host data."""
    name = _library_name(x)
    if name is None:
        return None
    device = None if name in ("numpy", "dask") else array_api_compat.device(x)
    if name == "cupy":
        device = None  # one GPU per process: the current device
    return _make_backend(name, device)


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy copy (or view) of any backend's array, a list, or a Python scalar."""
    if isinstance(x, np.ndarray):
        return x
    name = _library_name(x)
    if name == "numpy":  # a NumPy scalar
        return np.asarray(x)
    if name == "cupy":
        return x.get()
    if name == "torch":
        x = x.detach()
        if x.is_floating_point() and dtype_name(x.dtype) not in _NUMPY_FLOATS:
            x = x.float()  # bfloat16, float8: NumPy lacks them; float32 holds them exactly
        return x.cpu().numpy()
    if name == "dask":
        return np.asarray(x.compute())
    if name in ("jax", None):
        return _widen_extension_floats(np.asarray(x))
    return np.from_dlpack(x)


_NUMPY_FLOATS = ("float16", "float32", "float64")


def _widen_extension_floats(arr: np.ndarray) -> np.ndarray:
    """ml_dtypes floats (JAX's bfloat16, float8) as float32, which NumPy computes with."""
    if arr.dtype.kind == "V" and arr.dtype.name.startswith(("bfloat16", "float8")):
        return arr.astype(np.float32)
    return arr


def _asarray(backend: Backend, x: Any, dtype: Any = None) -> Any:
    xp = backend.xp
    if _library_name(x) == str(backend) and (
        backend.device is None or array_api_compat.device(x) == backend.device
    ):
        return x if dtype is None or x.dtype == dtype else xp.astype(x, dtype)
    handed = _through_dlpack(backend, x)
    if handed is not None:
        return handed if dtype is None or handed.dtype == dtype else xp.astype(handed, dtype)
    source = _library_name(x)
    host = to_numpy(x)
    if not host.flags.writeable and (str(backend) != "numpy" or source not in ("numpy", None)):
        # read-only memory (memmaps, another library's buffers): whoever wraps it may write
        host = np.array(host)
    if dtype is None and host.dtype == np.float64 and not _has_float64(backend):
        dtype = xp.float32
    if host.dtype == np.float16 and not _has_dtype(backend, "float16"):
        # a library without float16 (array_api_strict) cannot even receive it: widen on the host
        host = host.astype(np.float32 if dtype is None else np.dtype(dtype_name(dtype)))
    if backend.device is None:
        arr = xp.asarray(host)
    else:
        arr = xp.asarray(host, device=backend.device)
    return arr if dtype is None or arr.dtype == dtype else xp.astype(arr, dtype)


# libraries that exchange device arrays through DLPack without a trip through host memory
_DLPACK_PEERS = ("cupy", "torch", "jax")


def _through_dlpack(backend: Backend, x: Any) -> Any:
    """``x`` copied to ``backend`` through DLPack, or None to go through the host.

    Used between CuPy, PyTorch and JAX, so that a CUDA array moves from one to
    another on the GPU; any refusal (another device, an unsupported dtype, a
    library that cannot import it) falls back to the host path.
    """
    source = _library_name(x)
    if source == str(backend) or source not in _DLPACK_PEERS or str(backend) not in _DLPACK_PEERS:
        return None
    if not _has_dtype(backend, dtype_name(x.dtype)):
        return None  # e.g. float64 into JAX without x64: the host path narrows it
    try:
        # a copy on the device: the two libraries must not share memory that either
        # one updates in place (or, like JAX, assumes never changes)
        arr = backend.xp.asarray(backend.xp.from_dlpack(x), copy=True)
        if backend.device is not None and array_api_compat.device(arr) != backend.device:
            arr = array_api_compat.to_device(arr, backend.device)
    except Exception:  # noqa: BLE001 -- any refusal means: take the host path
        return None
    return arr


def _may_share(arr: Any, source: Any) -> bool:
    if arr is source:
        return True
    name = _library_name(arr)
    # these wrap host (NumPy) memory without copying it
    return name in ("numpy", "torch", "array_api_strict") and _library_name(source) in (
        "numpy",
        name,
    )


def _has_float64(backend: Backend) -> bool:
    return _has_dtype(backend, "float64")


def _has_dtype(backend: Backend, name: str) -> bool:
    try:
        info = backend.xp.__array_namespace_info__()
        return name in info.dtypes(device=backend.device)
    except Exception:
        return True


def host_rng(seed: int | None) -> np.random.Generator:
    """The host generator initial weights and shuffles are drawn from.

    Drawing on the host and converting once makes the same seed give the same
    numbers on every backend. ``seed`` is None, an integer >= 0, a sequence of
    them, or a NumPy ``SeedSequence``/``BitGenerator``/``Generator``.
    """
    return np.random.default_rng(_check_seed(seed))


def _check_seed(seed: Any) -> Any:
    """``seed`` unchanged, or a TypeError/ValueError that names it."""
    if seed is None or isinstance(seed, np.random.SeedSequence | np.random.BitGenerator | np.random.Generator):
        return seed
    values = list(seed) if isinstance(seed, list | tuple) else [seed]
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"seed must be None or an integer >= 0, got {seed!r}")
        if int(value) < 0:
            raise ValueError(f"seed must be None or an integer >= 0, got {seed!r}")
    return seed

