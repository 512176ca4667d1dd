"""Checks on model files and on the state they carry, made before anything is built.

:func:`portnn.load` reads a file in this order: the kind of file (a regular
file, never a pipe or a device), its metadata, the class names (portnn's own
classes, and classes the user registered or passed as ``custom_objects``), the
shapes the architecture claims against the shapes of the tensors stored, the
tensors' dtypes and values, and only then builds layers. A file therefore never
makes portnn allocate more than its own tensors, and never runs a constructor
the user did not choose.

The value checks (:func:`check_real`) are shared with
:meth:`Module.load_parameters <portnn.Module.load_parameters>`,
:meth:`~portnn.Module.load_buffers` and ``Dense(weight=...)``.
"""

from __future__ import annotations

import errno
import hashlib
import inspect
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Mapping
from typing import Any



FORMAT_VERSION = 1
_META_KEY = "portnn"
_MAX_STEP = 2**63 - 1


class Bad(ValueError):
    """A problem with a file's contents (turned into a ValueError naming the path)."""


# ---------------------------------------------------------------- values


# ---------------------------------------------------------------- files


def _kind_of(mode: int) -> str:
    for test, what in (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return what
    return "not a regular file"


def check_model_file(path: str) -> None:
    """``path`` must be an existing regular file (after symlinks); checked without opening it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such model file", path) from None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "expected a model file, got a directory", path)
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path} is {_kind_of(mode)}, not a model file; portnn reads regular files only")


def save_target(path: str) -> str:
    """The file :func:`portnn.save` replaces for ``path``: the target of a symlink, else ``path``.

    An existing directory, pipe, device or socket there is refused: it is never
    replaced by a regular file.
    """
    target = os.path.realpath(path) if os.path.islink(path) else path
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "cannot save a model over a directory", path)
    if not stat.S_ISREG(mode):
        raise ValueError(f"cannot save to {path}: it is {_kind_of(mode)}; portnn saves to regular files only")
    return target


def temp_name(base: str, token: str) -> str:
    """The temporary file a save of ``base`` writes first: ``.<base>.<pid>.<token>.tmp``."""
    return f".{base}.{os.getpid()}.{token}.tmp"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process may be saving
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


_LEGACY_AGE_S = 3600.0


def remove_stale_temps(directory: str, base: str) -> None:
    """Remove temporary files of earlier saves of ``base`` whose process is gone.

    Only names of the exact form :func:`temp_name` writes are touched: those of
    a process id that is no longer alive, and (from portnn versions that wrote
    no process id) ``.<base>.<12 hex digits>.tmp`` untouched for an hour.
    """
    if os.name == "nt":  # os.kill(pid, 0) would end the process there
        return
    pattern = re.compile(rf"\.{re.escape(base)}\.(?:(\d+)\.)?[0-9a-f]{{12}}\.tmp")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        full = os.path.join(directory, name)
        try:
            info = os.lstat(full)
            if not stat.S_ISREG(info.st_mode):
                continue
            pid = match.group(1)
            stale = (not _pid_alive(int(pid))) if pid is not None else (
                time.time() - info.st_mtime > _LEGACY_AGE_S
            )
            if stale:
                os.unlink(full)
        except OSError:
            continue


def checksum(meta_text: str, tensors: Mapping[str, Any]) -> str:
    """SHA-256 over the metadata and every tensor's name, dtype, shape and bytes."""
    import numpy as np  # host side only: the tensors being written or read are NumPy arrays

    digest = hashlib.sha256(meta_text.encode())
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        digest.update(f"\0{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def atomic_write(path: str, produce: Any) -> None:
    """Write ``produce()``'s bytes to ``path`` through a temporary file and a rename.

    A symlink at ``path`` stays: its target gets the new content. A directory,
    pipe or device at ``path`` is refused. Temporary files of earlier saves to
    the same file whose process died (SIGKILL) are removed first.
    """
    target = save_target(path)
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, f"cannot save {path!r}: no such directory", directory)
    base = os.path.basename(target)
    remove_stale_temps(directory, base)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(directory, temp_name(base, secrets.token_hex(6)))
        try:
            fd = os.open(tmp, flags, 0o666)  # the umask applies, as for an ordinary file
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                mode = stat.S_IMODE(os.stat(target).st_mode)
            except OSError:
                mode = None
            if mode is not None and hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)  # replacing a file keeps its permissions
            f.write(produce())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_directory(directory)


def fsync_directory(directory: str) -> None:
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


# ---------------------------------------------------------------- metadata


def read_metadata(metadata: Mapping[str, str] | None) -> dict[str, Any]:
    """The ``"portnn"`` JSON document, its structure checked."""
    if not metadata or _META_KEY not in metadata:
        raise Bad(
            "not a portnn model file: its safetensors metadata has no 'portnn' entry "
            "(was it written by portnn.save?)"
        )
    try:
        meta = json.loads(metadata[_META_KEY])
    except (ValueError, RecursionError) as e:
        raise Bad(f"the 'portnn' metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise Bad(f"the 'portnn' metadata must be a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise Bad(f"the 'portnn' metadata has no integer format_version (got {version!r})")
    if version != FORMAT_VERSION:
        newer = " (written by a newer portnn; upgrade portnn)" if version > FORMAT_VERSION else ""
        raise Bad(f"format_version {version} cannot be read; this portnn reads {FORMAT_VERSION}{newer}")
    for key in ("architecture", "extra_state"):
        if not isinstance(meta.get(key), dict):
            raise Bad(f"the 'portnn' metadata has no valid {key!r} entry")
    for key in ("loss", "optimizer"):
        if meta.get(key) is not None:
            check_node(key, meta[key])
    step = meta.get("optimizer_step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= _MAX_STEP):
        raise Bad(f"optimizer_step must be null or an integer in [0, 2**63), got {step!r}")
    if meta.get("optimizer") is not None:
        initial_lr = meta["optimizer"].get("initial_lr")
        if initial_lr is not None and not _positive_finite(initial_lr):
            raise Bad(f"the optimizer's initial_lr must be a finite number > 0, got {initial_lr!r}")
    lr = meta.get("optimizer_lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 <= lr < float("inf")):
        raise Bad(f"optimizer_lr must be null or a finite number >= 0, got {lr!r}")
    counts = meta.get("optimizer_counts")
    if counts is not None and (
        not isinstance(counts, dict)
        or any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= _MAX_STEP for c in counts.values())
    ):
        raise Bad(f"optimizer_counts must be null or an object of integers in [0, 2**63), got {counts!r}")
    return meta


def _positive_finite(value: Any) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and 0 < float(value) < float("inf")
    )


def check_node(what: str, node: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(node, dict) or not isinstance(node.get("class"), str):
        raise Bad(f"{what} must be an object with a 'class' name, got {node!r}")
    config = node.get("config", {})
    if not isinstance(config, dict):
        raise Bad(f"{what} {node['class']!r} has a config that is not an object: {config!r}")
    return node["class"], config


# ---------------------------------------------------------------- architecture and tensors


def child_nodes(name: str, node: Mapping[str, Any], where: str) -> list[tuple[str, Any]]:
    """(child name, child node) for the sub-modules a node lists under ``"layers"``; a
    child's name is its index unless it says otherwise (``"name"``)."""
    if "layers" not in node:
        return []
    layers = node["layers"]
    if not isinstance(layers, list):
        raise Bad(f"{name} at {where} must list its 'layers', got {type(layers).__name__}")
    found = []
    for i, child in enumerate(layers):
        child_name = child.get("name", str(i)) if isinstance(child, dict) else str(i)
        if not isinstance(child_name, str) or not child_name or "." in child_name:
            raise Bad(f"{name} at {where}.layers[{i}] has a name that is not a module name: {child_name!r}")
        found.append((child_name, child))
    names = [n for n, _ in found]
    if len(set(names)) != len(names):
        raise Bad(f"{name} at {where} lists sub-modules with the same name: {names}")
    return found


def takes_children(cls: type) -> bool:
    """Whether a module class is rebuilt from its children (it overrides ``from_config``)."""
    from .nn.module import Module

    return getattr(cls.from_config, "__func__", None) is not Module.from_config.__func__


def _claimed(cls: type, config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Shapes a layer's config claims for its parameters and buffers (``state_shapes``).

    Sizes that are not integers are left to the constructor, which refuses them
    before allocating anything.
    """
    state_shapes = getattr(cls, "state_shapes", None)
    if state_shapes is None:
        return {}
    try:
        claimed = state_shapes(dict(config))
    except Exception as e:  # noqa: BLE001 -- a class of the user's own may fail on a bad config
        raise Bad(f"{cls.__name__}.state_shapes cannot read config {dict(config)!r}: {e}") from None
    return dict(claimed or {})


def check_arguments(kind: str, cls: type, config: Mapping[str, Any], n_args: int = 0) -> None:
    """The config's names must be arguments of ``cls``'s constructor (checked without calling it)."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*[None] * n_args, **config)
    except TypeError as e:
        raise Bad(f"cannot rebuild {kind} {cls.__name__} from config {dict(config)!r}: {e}") from None


def check_architecture(
    node: Any,
    resolve: Callable[[str, str], type],
    shapes: Mapping[str, tuple[int, ...]],
    where: str = "architecture",
    prefix: str = "",
) -> None:
    """Resolve every class of the architecture and check each size it claims against ``shapes``.

    ``resolve(name, where)`` gives the layer class a name means (see
    :mod:`portnn._registry`). ``shapes`` are the stored tensors' shapes, from the
    file's header: a config claiming a layer larger than its tensors fails here,
    before any layer exists.
    """
    name, config = check_node(where, node)
    cls = resolve(name, where)
    if not isinstance(node.get("trainable", True), bool):
        raise Bad(f"{name} at {where} has 'trainable' {node['trainable']!r}; it must be true or false")
    children = child_nodes(name, node, where)
    if takes_children(cls):
        if (cls.__module__ or "").startswith("portnn"):  # a user's from_config may take anything
            check_arguments("layer", cls, config, len(children))
    else:
        check_arguments("layer", cls, config)
    for i, (child_name, child) in enumerate(children):
        check_architecture(child, resolve, shapes, f"{where}.layers[{i}]", f"{prefix}{child_name}.")
    for own, shape in _claimed(cls, config).items():
        kinds = [k for k in ("param", "buffer") if f"{k}/{prefix}{own}" in shapes]
        label = "parameter" if not kinds or kinds[0] == "param" else "buffer"
        if not kinds:
            raise Bad(
                f"the {label}s do not match the architecture: missing {[prefix + own]} "
                f"({name} at {where} has config {config!r})"
            )
        stored = shapes[f"{kinds[0]}/{prefix}{own}"]
        if tuple(stored) != tuple(shape):
            raise Bad(
                f"{label} {prefix + own!r} has shape {tuple(stored)} in the file, but the "
                f"architecture gives it shape {tuple(shape)} ({name} at {where} has config {config!r})"
            )


def check_tensor_values(tensors: Mapping[str, Any], np: Any) -> None:
    """Dtypes and values of the stored tensors: floating parameters, finite buffers and slots."""
    for key, value in tensors.items():
        kind, _, name = key.partition("/")
        label = {"param": "parameter", "buffer": "buffer", "optim": "optimizer slot"}.get(kind)
        if label is None:
            continue  # named as unexpected by the restore
        dtype = value.dtype
        if dtype.kind == "b" or dtype.kind not in "fiu" or (kind != "buffer" and dtype.kind != "f"):
            raise Bad(
                f"{label} {name!r} has dtype {dtype} in the file; "
                + ("buffers hold real numbers" if kind == "buffer" else f"{label}s are floating point")
            )
        if kind != "param" and dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise Bad(f"{label} {name!r} contains NaN or infinity in the file")


def optimizer_state(
    model: Any, optimizer: Any, step: int, saved: dict[str, dict[str, Any]],
    counts: dict[str, int] | None = None, lr: float | None = None,
) -> dict[str, Any]:
    """The optimizer state for ``model`` from the file's slots: the slots ``optimizer`` keeps,
    for the model's parameters, of their shapes (dtypes and values were checked already),
    the per-parameter step counts (a file without them: every parameter at ``step``) and the
    learning rate (a file without it: the optimizer's own)."""
    backend = model.backend
    params = model.parameters()
    state = optimizer.init(params, backend.xp)
    slots = state["slots"]
    unknown = [k for k in saved if k not in slots]
    if unknown:
        raise Bad(f"optimizer slots for parameters the model does not have: {unknown}")
    for param_name, fresh in slots.items():
        got = saved.get(param_name, {})
        if set(got) != set(fresh):
            raise Bad(
                f"{type(optimizer).__name__} keeps slots {sorted(fresh)} for parameter "
                f"{param_name!r}, the file has {sorted(got)}"
            )
        shape = tuple(params[param_name].shape)
        for slot, value in got.items():
            if tuple(value.shape) != shape:
                raise Bad(
                    f"optimizer slot {slot!r} of parameter {param_name!r} has shape "
                    f"{tuple(value.shape)}, the parameter has shape {shape}"
                )
            fresh[slot] = backend.asarray(value, copy=True)
    state["step"] = step
    unknown = sorted(set(counts or {}) - set(params))
    if unknown:
        raise Bad(f"optimizer_counts names parameters the model does not have: {unknown}")
    state["counts"] = {k: (counts or {}).get(k, step) for k in params}
    if "lr" in state and lr is not None:
        state["lr"] = float(lr)
    return state
