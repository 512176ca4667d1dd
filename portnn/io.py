"""Saving and loading models: one safetensors file, architecture as JSON.

A file written by :func:`save` holds

* the tensors, as NumPy arrays: ``param/<name>`` for every parameter,
  ``buffer/<name>`` for every buffer and ``optim/<parameter name>/<slot>`` for
  every optimizer slot;
* one metadata entry, ``"portnn"``, a JSON document with the format version,
  the portnn version, the architecture (class names and constructor
  arguments), the loss and optimizer (class names and configs), the
  optimizer's step count and each module's extra state;
* ``"portnn_sha256"``, a SHA-256 over that document and every tensor's name,
  dtype, shape and bytes, verified on load: a damaged file is an error, never a
  silently different model.

:func:`load` rebuilds the model from class names looked up in
:attr:`Module.registry <portnn.layers.Module.registry>` and the loss and
optimizer registries: nothing in a file is evaluated or unpickled, so loading a
file never runs code from it.

The array library is imported lazily; without it, :func:`save` and
:func:`load` raise an :class:`ImportError` that names the extra to install
(``pip install "portnn[io]"``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Mapping
from typing import Any

import numpy as np

from .backend import _make_backend, dtype_name, get_backend, to_numpy, use_backend
from .layers import Module, Sequential
from .losses import LOSSES, Loss
from .optimizers import OPTIMIZERS, Optimizer

__all__ = ["FORMAT_VERSION", "load", "save"]

#: Version of the file layout written by :func:`save`; :func:`load` reads this version.
FORMAT_VERSION = 1

_META_KEY = "portnn"
_CHECKSUM_KEY = "portnn_sha256"
_PARAM = "param/"
_BUFFER = "buffer/"
_OPTIM = "optim/"


# ---------------------------------------------------------------- helpers


def _safetensors() -> Any:
    try:
        import safetensors.numpy
    except ImportError as e:
        raise ImportError(
            'saving and loading models needs safetensors: pip install "portnn[io]"'
        ) from e
    return safetensors


def _classes(registry: Mapping[str, type], base: type) -> dict[str, type]:
    """Class name -> class for the registry's values, their subclasses and ``base``'s.

    Looked up at call time, so classes defined after import (new optimizers,
    a user's own loss) are found. Registry values win over other classes of the
    same name.
    """
    found: dict[str, type] = {}
    queue = list(registry.values()) + list(base.__subclasses__())
    seen: set[type] = set()
    while queue:
        cls = queue.pop(0)
        if cls in seen:
            continue
        seen.add(cls)
        found.setdefault(cls.__name__, cls)
        queue.extend(cls.__subclasses__())
    return found


def _json_config(what: str, config: Any) -> dict[str, Any]:
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise TypeError(f"{what}.config() must return a dict with string keys, got {config!r}")
    try:
        json.dumps(config, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what}.config() is not JSON-serializable ({e}): {config!r}") from None
    return config


def _named_object(kind: str, obj: Any, registry: Mapping[str, type], base: type) -> dict[str, Any] | None:
    if obj is None:
        return None
    name = type(obj).__name__
    if _classes(registry, base).get(name) is not type(obj):
        raise ValueError(
            f"cannot save the model's {kind}: its class {type(obj).__module__}.{name} is not "
            f"found by the name {name!r} among the {kind} classes portnn knows "
            f"(subclasses of {base.__name__}); give it a unique class name"
        )
    return {"class": name, "config": _json_config(f"{kind} {name}", obj.config())}


def _optimizer_node(optimizer: Optimizer | None) -> dict[str, Any] | None:
    node = _named_object("optimizer", optimizer, OPTIMIZERS, Optimizer)
    # a learning-rate schedule keeps the rate it started from on the optimizer;
    # without it a resumed schedule would restart from the already-lowered rate
    initial_lr = getattr(optimizer, "initial_lr", None)
    if node is not None and initial_lr is not None:
        node["initial_lr"] = float(initial_lr)
    return node


def _architecture(module: Module) -> dict[str, Any]:
    cls = type(module)
    name = cls.__name__
    if Module.registry.get(name) is not cls:
        raise ValueError(
            f"cannot save layer class {cls.__module__}.{name}: load() finds layers by class name "
            f"in Module.registry, where {name!r} "
            + ("is missing (names starting with '_' are not registered)" if name not in Module.registry
               else f"is {Module.registry[name].__module__}.{name}")
        )
    config = _json_config(name, module.config())
    if isinstance(module, Sequential):
        node: dict[str, Any] = {"class": name, "layers": [_architecture(m) for m in module.layers]}
        if config:
            node["config"] = config
        return node
    if module.children():
        raise ValueError(
            f"cannot save {name}: it holds other modules but is not a Sequential, so it cannot "
            "be rebuilt from its config alone"
        )
    return {"class": name, "config": config}


def _file_name(path: Any) -> str:
    """``path`` (str, bytes or os.PathLike) as a str, or a TypeError naming the argument."""
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"path must be a file name (str or os.PathLike), got {type(path).__name__}") from None
    return os.fsdecode(path) if isinstance(path, bytes) else path


def _host(x: Any) -> np.ndarray:
    return np.ascontiguousarray(to_numpy(x))


# ---------------------------------------------------------------- save


def save(model: Module, path: str | os.PathLike[str]) -> None:
    """Save ``model`` to ``path`` (a safetensors file), replacing it atomically.

    The file holds the architecture, parameters, buffers, extra state (e.g.
    a dropout generator's state), and, once the model has been trained, its
    loss, optimizer and optimizer state, so that :func:`load` followed by
    ``fit`` continues where training stopped.

    The file is written to a temporary file in the same directory, flushed to
    disk and then renamed onto ``path``: if anything fails, the previous file at
    ``path`` (if any) is left intact and the temporary file is removed.

    :param model: a :class:`~portnn.layers.Module` whose layers are registered
        classes (every class defined as a ``Module`` subclass) and whose
        containers are :class:`~portnn.layers.Sequential`.
    :param path: file name (``str`` or ``os.PathLike``), by convention ending
        in ``.safetensors``.
    :raises ImportError: if safetensors is not installed.
    :raises ValueError: if a layer, the loss or the optimizer cannot be
        rebuilt from its class name.
    """
    from . import __version__

    if not isinstance(model, Module):
        raise TypeError(f"save() takes a portnn Module, got {type(model).__name__}")
    path = _file_name(path)
    st = _safetensors()

    tensors: dict[str, np.ndarray] = {}
    for name, value in model.parameters().items():
        tensors[_PARAM + name] = _host(value)
    for name, value in model.buffers().items():
        tensors[_BUFFER + name] = _host(value)

    optimizer = getattr(model, "optimizer", None)
    state = getattr(model, "optimizer_state", None) if optimizer is not None else None
    step = None
    if state is not None:
        extra = sorted(set(state) - {"step", "slots"})
        if extra:
            raise ValueError(
                f"cannot save the optimizer state: it has entries {extra} besides 'step' and "
                "'slots', which this file format does not store"
            )
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int | np.integer):
            raise TypeError(f"optimizer_state['step'] must be an int, got {step!r}")
        step = int(step)
        for param_name, slots in state["slots"].items():
            for slot_name, value in slots.items():
                if "/" in slot_name:
                    raise ValueError(f"optimizer slot name {slot_name!r} must not contain '/'")
                tensors[f"{_OPTIM}{param_name}/{slot_name}"] = _host(value)

    extra_state = {}
    for prefix, module in model.named_modules():
        module_state = module.extra_state()
        if module_state:
            extra_state[prefix] = module_state

    meta = {
        "format_version": FORMAT_VERSION,
        "portnn_version": __version__,
        "architecture": _architecture(model),
        "loss": _named_object("loss", getattr(model, "loss", None), LOSSES, Loss),
        "optimizer": _optimizer_node(optimizer),
        "optimizer_step": step,
        "extra_state": extra_state,
    }
    try:
        text = json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise TypeError(f"cannot save {path}: the model's extra state is not JSON-serializable ({e})") from None

    metadata = {_META_KEY: text, _CHECKSUM_KEY: _checksum(text, tensors)}
    _atomic_write(path, lambda: st.numpy.save(tensors, metadata=metadata))


def _checksum(meta_text: str, tensors: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the metadata and every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(meta_text.encode())
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        digest.update(f"\0{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _atomic_write(path: str, produce: Any) -> None:
    """Write ``produce()``'s bytes to ``path`` through a temporary file and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, f"cannot save {path!r}: no such directory", directory)
    base = os.path.basename(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)  # the umask applies, as for an ordinary file
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                mode = stat.S_IMODE(os.stat(path).st_mode)
            except OSError:
                mode = None
            if mode is not None and hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)  # replacing a file keeps its permissions
            f.write(produce())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    if os.name == "nt":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


# ---------------------------------------------------------------- load


class _Bad(ValueError):
    """A problem with the file's contents (turned into a ValueError naming the path)."""


def load(
    path: str | os.PathLike[str], backend: str | None = None, device: Any = None
) -> Module:
    """Load a model saved by :func:`save`, on ``backend`` (and ``device``).

    The architecture is rebuilt from class names registered in portnn (no code
    in the file is run), then parameters, buffers and extra state are restored.
    Parameters keep the dtype they were saved with. If the model was trained,
    ``model.loss``, ``model.optimizer`` and ``model.optimizer_state`` are
    restored too (the state's arrays on the model's backend, the step count
    included), so that ``model.fit(...)`` continues where training stopped.

    :param path: the file (``str`` or ``os.PathLike``).
    :param backend: backend name such as ``"numpy"`` or ``"torch"``; None takes
        the current default backend (:func:`~portnn.get_backend`).
    :param device: device on that backend; None takes the backend's default
        (or, with ``backend=None``, the current default backend's device).
    :returns: the model, in inference mode.
    :raises FileNotFoundError: if there is no file at ``path``.
    :raises ValueError: if the file is not a safetensors file, not a portnn
        file, names a class portnn does not know, or holds tensors that do not
        fit the architecture.
    :raises ImportError: if safetensors is not installed.
    """
    path = _file_name(path)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "no such model file", path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "expected a model file, got a directory", path)
    st = _safetensors()
    try:
        with st.safe_open(path, framework="numpy") as f:
            metadata = f.metadata()
            meta = _read_metadata(metadata)  # before reading any tensor
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        expected = metadata.get(_CHECKSUM_KEY)
        if expected != _checksum(metadata[_META_KEY], tensors):
            raise _Bad("its contents do not match the checksum saved with them (the file is damaged)")
    except st.SafetensorError as e:
        raise ValueError(f"{path} is not a valid safetensors file: {e}") from None
    except _Bad as e:
        raise ValueError(f"{path}: {e}") from None
    try:
        if backend is not None:
            target = _make_backend(backend, device)
        elif device is not None:
            target = _make_backend(str(get_backend()), device)
        else:
            target = get_backend()
        with use_backend(target):
            model = _build(meta["architecture"])
        _restore(model, meta, tensors)
    except _Bad as e:
        raise ValueError(f"{path}: {e}") from None
    return model


def _read_metadata(metadata: Mapping[str, str] | None) -> dict[str, Any]:
    if not metadata or _META_KEY not in metadata:
        raise _Bad(
            "not a portnn model file: its safetensors metadata has no 'portnn' entry "
            "(was it written by portnn.save?)"
        )
    try:
        meta = json.loads(metadata[_META_KEY])
    except (ValueError, RecursionError) as e:
        raise _Bad(f"the 'portnn' metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise _Bad(f"the 'portnn' metadata must be a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise _Bad(f"the 'portnn' metadata has no integer format_version (got {version!r})")
    if version != FORMAT_VERSION:
        newer = " (written by a newer portnn; upgrade portnn)" if version > FORMAT_VERSION else ""
        raise _Bad(f"format_version {version} cannot be read; this portnn reads {FORMAT_VERSION}{newer}")
    for key, kind in (("architecture", dict), ("extra_state", dict)):
        if not isinstance(meta.get(key), kind):
            raise _Bad(f"the 'portnn' metadata has no valid {key!r} entry")
    for key in ("loss", "optimizer"):
        if meta.get(key) is not None:
            _check_node(key, meta[key])
    step = meta.get("optimizer_step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise _Bad(f"optimizer_step must be null or an integer >= 0, got {step!r}")
    return meta


def _check_node(what: str, node: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(node, dict) or not isinstance(node.get("class"), str):
        raise _Bad(f"{what} must be an object with a 'class' name, got {node!r}")
    config = node.get("config", {})
    if not isinstance(config, dict):
        raise _Bad(f"{what} {node['class']!r} has a config that is not an object: {config!r}")
    return node["class"], config


def _construct(kind: str, cls: type, config: dict[str, Any], *args: Any) -> Any:
    try:
        return cls(*args, **config)
    except (TypeError, ValueError) as e:
        raise _Bad(f"cannot rebuild {kind} {cls.__name__} from config {config!r}: {e}") from None


def _build(node: Any, where: str = "architecture") -> Module:
    name, config = _check_node(where, node)
    cls = Module.registry.get(name)
    if cls is None:
        raise _Bad(
            f"unknown layer class {name!r} at {where}; portnn knows "
            f"{', '.join(sorted(Module.registry))} (a layer defined outside portnn must be "
            "imported before loading)"
        )
    if issubclass(cls, Sequential):
        layers = node.get("layers")
        if not isinstance(layers, list):
            raise _Bad(f"{name} at {where} must list its 'layers'")
        children = [_build(child, f"{where}.layers[{i}]") for i, child in enumerate(layers)]
        return _construct("layer", cls, config, *children)
    if "layers" in node:
        raise _Bad(f"{name} at {where} is not a container but lists 'layers'")
    return _construct("layer", cls, config)


def _restore(model: Module, meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
    params, buffers, optim = {}, {}, {}
    for key, value in tensors.items():
        if not value.flags.writeable:
            value = np.array(value)  # torch warns on read-only NumPy memory; slots update in place
        if key.startswith(_PARAM):
            params[key[len(_PARAM):]] = value
        elif key.startswith(_BUFFER):
            buffers[key[len(_BUFFER):]] = value
        elif key.startswith(_OPTIM) and "/" in key[len(_OPTIM):]:
            param_name, slot = key[len(_OPTIM):].rsplit("/", 1)
            optim.setdefault(param_name, {})[slot] = value
        else:
            raise _Bad(f"unexpected tensor {key!r} (portnn writes param/, buffer/ and optim/ tensors)")

    # parameters and buffers: same names, same shapes; the saved dtype wins
    param_owners = {full: (owner._params, key) for full, owner, key in model._slots()}
    buffer_owners = {
        prefix + key: (module._buffers, key)
        for prefix, module in model.named_modules()
        for key in module._buffers
    }
    for kind, saved, owners in (("parameter", params, param_owners), ("buffer", buffers, buffer_owners)):
        missing = [k for k in owners if k not in saved]
        unknown = [k for k in saved if k not in owners]
        if missing or unknown:
            raise _Bad(
                f"the {kind}s do not match the architecture: "
                + "; ".join(
                    part
                    for part in (
                        f"missing {missing}" if missing else "",
                        f"not in the model {unknown}" if unknown else "",
                    )
                    if part
                )
            )
        for full, (store, key) in owners.items():
            built, value = store[key], saved[full]
            if tuple(built.shape) != tuple(value.shape):
                raise _Bad(
                    f"{kind} {full!r} has shape {tuple(value.shape)} in the file, but the "
                    f"architecture gives it shape {tuple(built.shape)}"
                )
            if dtype_name(built.dtype) != value.dtype.name:
                xp = model.xp
                try:
                    store[key] = xp.astype(built, model.backend.dtype(value.dtype.name))
                except TypeError as e:
                    raise _Bad(f"{kind} {full!r}: {e}") from None
    try:
        model.load_parameters(params, check_finite=False)  # a diverged model still loads
        model.load_buffers(buffers)
    except (KeyError, ValueError) as e:
        raise _Bad(str(e)) from None

    extra = meta["extra_state"]
    prefixes = dict(model.named_modules())
    unknown = [p for p in extra if p not in prefixes]
    if unknown:
        raise _Bad(f"extra_state names modules {unknown} that the architecture does not have")
    for prefix, state in extra.items():
        if not isinstance(state, dict):
            raise _Bad(f"extra_state for module {prefix!r} must be an object, got {state!r}")
        try:
            prefixes[prefix].load_extra_state(state)
        except (KeyError, TypeError, ValueError) as e:
            raise _Bad(f"cannot restore the extra state of module {prefix!r}: {e}") from None

    if meta.get("loss") is not None:
        name, config = _check_node("loss", meta["loss"])
        cls = _classes(LOSSES, Loss).get(name)
        if cls is None:
            raise _Bad(f"unknown loss class {name!r}")
        model.loss = _construct("loss", cls, config)

    optimizer = None
    if meta.get("optimizer") is not None:
        name, config = _check_node("optimizer", meta["optimizer"])
        cls = _classes(OPTIMIZERS, Optimizer).get(name)
        if cls is None:
            raise _Bad(f"unknown optimizer class {name!r}")
        optimizer = model.optimizer = _construct("optimizer", cls, config)
        initial_lr = meta["optimizer"].get("initial_lr")
        if initial_lr is not None:
            if isinstance(initial_lr, bool) or not isinstance(initial_lr, int | float):
                raise _Bad(f"the optimizer's initial_lr must be a number, got {initial_lr!r}")
            optimizer.initial_lr = float(initial_lr)
    step = meta.get("optimizer_step")
    if optimizer is None or step is None:
        if optim:
            raise _Bad("the file holds optimizer slots but no optimizer and step")
        if optimizer is not None:
            model.optimizer_state = None  # fit starts a fresh state
        return
    model.optimizer_state = _optimizer_state(model, optimizer, step, optim)


def _optimizer_state(
    model: Module, optimizer: Optimizer, step: int, saved: dict[str, dict[str, np.ndarray]]
) -> dict[str, Any]:
    backend = model.backend
    params = model.parameters()
    state = optimizer.init(params, backend.xp)
    slots = state["slots"]
    unknown = [k for k in saved if k not in slots]
    if unknown:
        raise _Bad(f"optimizer slots for parameters the model does not have: {unknown}")
    for param_name, fresh in slots.items():
        got = saved.get(param_name, {})
        if set(got) != set(fresh):
            raise _Bad(
                f"{type(optimizer).__name__} keeps slots {sorted(fresh)} for parameter "
                f"{param_name!r}, the file has {sorted(got)}"
            )
        shape = tuple(params[param_name].shape)
        for slot, value in got.items():
            if tuple(value.shape) != shape:
                raise _Bad(
                    f"optimizer slot {slot!r} of parameter {param_name!r} has shape "
                    f"{tuple(value.shape)}, the parameter has shape {shape}"
                )
            fresh[slot] = backend.asarray(value, copy=True)
    state["step"] = step
    return state
