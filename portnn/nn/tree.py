"""What every tree of modules needs, written once: names, loading with checks, rebinding, retargeting.

:class:`~portnn.nn.Module` calls these; they read a module's own stores
(``_params``, ``_buffers``, ``_modules``), which only ``portnn.nn`` touches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .._checks import check_finite, check_real
from ..backend import Backend

__all__ = ["assign", "backend_owner", "check_name", "load_checked", "map_arrays", "owners"]


def check_name(kind: str, name: Any, module: Any) -> str:
    """``name`` for a new parameter, buffer or sub-module of ``module``: a ValueError if it cannot be one."""
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"a {kind} name must be a non-empty str without '.', got {name!r}")
    taken = {"parameter": module._params, "buffer": module._buffers, "module": module._modules}
    for other, names in taken.items():
        if other != kind and name in names:
            raise ValueError(f"{type(module).__name__} already has a {other} named {name!r}")
    return name


def owners(model: Any, kind: str) -> dict[str, tuple[Any, str]]:
    """Dotted name -> (owning module, own name) of every parameter (or buffer) of ``model``."""
    store = "_params" if kind == "parameter" else "_buffers"
    return {prefix + key: (module, key) for prefix, module in model.named_modules() for key in getattr(module, store)}


def load_checked(model: Any, kind: str, values: Mapping[str, Any], finite: bool, keep_dtype: bool) -> None:
    """``load_parameters``/``load_buffers``: every entry checked first, then all set at once."""
    verb = "load_parameters" if kind == "parameter" else "load_buffers"
    if not isinstance(values, Mapping):
        raise TypeError(f"{verb} takes a mapping of name -> array, got {type(values).__name__}")
    found = owners(model, kind)
    unknown = [k for k in values if k not in found]
    if unknown:
        raise KeyError(f"unknown {kind} names {unknown}; this model has {list(found)}")
    new = {}
    for full, value in values.items():
        module, key = found[full]
        old = (module._params if kind == "parameter" else module._buffers)[key]
        xp = module._backend.xp
        floating = xp.isdtype(old.dtype, "real floating")
        check_real(f"{kind} {full!r}", value, floating=floating)
        arr = module._backend.asarray(value, None if keep_dtype else old.dtype, copy=True)
        if tuple(arr.shape) != tuple(old.shape):
            raise ValueError(f"{kind} {full!r} has shape {tuple(old.shape)}, got {tuple(arr.shape)}")
        if finite and floating:
            check_finite(f"{kind} {full!r}", arr, xp)
        if kind == "buffer":
            module.check_buffer(key, arr, f"buffer {full!r}")
        new[full] = arr
    assign(model, kind, new)


def assign(model: Any, kind: str, values: Mapping[str, Any]) -> None:
    """Rebind parameters (or buffers) by dotted name, as they are; unknown names are a KeyError."""
    store = "_params" if kind == "parameter" else "_buffers"
    left = len(values)
    for prefix, module in model.named_modules():
        own = getattr(module, store)
        for key in own:
            full = prefix + key
            if full in values:
                own[key] = values[full]
                left -= 1
    if left:
        known = set(owners(model, kind))
        raise KeyError(f"unknown {kind} names {[k for k in values if k not in known]}")


def map_arrays(model: Any, backend: Backend, convert: Callable[[str, Any, Any], Any]) -> None:
    """Put every module of ``model`` on ``backend``, each parameter and buffer replaced by
    ``convert(prefix, module, name_and_array)``; in place (use it on a copy), gradients dropped.

    What tracing (ONNX export) needs: the same tree, computing in another namespace.
    """
    for prefix, module in model.named_modules():
        module.__dict__.update(
            _backend=backend,
            _params={k: convert(prefix, module, (k, v)) for k, v in module._params.items()},
            _buffers={k: convert(prefix, module, (k, v)) for k, v in module._buffers.items()},
            _grads={},
            _backward=None,
        )


def backend_owner(modules: list[Any]) -> Backend | None:
    """The backend of the modules that hold arrays; a ValueError if they are on several."""
    owners = [m._backend for m in modules if m._params or m._buffers]
    names = sorted({str(b) for b in owners})
    if len(names) > 1:
        raise ValueError(f"the modules are on different backends {names}; move them with module.to(name) first")
    return owners[0] if owners else None
