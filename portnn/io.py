"""Saving and loading models: one safetensors file, architecture as JSON.

A file written by :func:`save` holds

* the tensors, as NumPy arrays: ``param/<name>`` for every parameter,
  ``buffer/<name>`` for every buffer and ``optim/<parameter name>/<slot>`` for
  every optimizer slot;
* one metadata entry, ``"portnn"``, a JSON document with the format version,
  the portnn version, the architecture (class names and constructor
  arguments), the loss and optimizer (class names and configs), the
  optimizer's step count, learning rate and per-parameter step counts (where
  they differ from the step count) and each module's extra state;
* ``"portnn_sha256"``, a SHA-256 over that document and every tensor's name,
  dtype, shape and bytes, verified on load: a damaged file is an error, never a
  silently different model.

:func:`load` rebuilds the model from class names: portnn's own classes
(:attr:`Module.registry <portnn.Module.registry>` and the loss and
optimizer classes of portnn), and classes of the user's own passed as
``custom_objects`` or registered with :func:`register`. Nothing in a file is
evaluated or unpickled, and everything it says (class names, the sizes its
architecture claims against the tensors it stores, dtypes and values) is
checked before any layer is built (see ``portnn._file_checks``).

The array library is imported lazily; without it, :func:`save` and
:func:`load` raise an :class:`ImportError` that names the extra to install
(``pip install "portnn[io]"``).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import warnings
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np

from . import _file_checks as checks
from . import _registry as names
from ._file_checks import FORMAT_VERSION, Bad as _Bad, check_node as _check_node
from ._file_checks import atomic_write as _atomic_write, checksum as _checksum  # export.py writes with it
from .backend import _make_backend, get_backend, to_numpy, use_backend
from .nn import Module
from .nn.module import provide_workflows
from .optim.describe import describe as describe_transform
from .optim.describe import rebuild as rebuild_transform
from .optim.optimizers import Optimizer

__all__ = ["FORMAT_VERSION", "load", "register", "save"]

#: Version of the file layout written by :func:`save`; :func:`load` reads this version.
FORMAT_VERSION = FORMAT_VERSION

_META_KEY = checks._META_KEY
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


def _json_config(what: str, config: Any) -> dict[str, Any]:
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise TypeError(f"{what}.config() must return a dict with string keys, got {config!r}")
    try:
        json.dumps(config, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what}.config() is not JSON-serializable ({e}): {config!r}") from None
    return config


def _named_object(kind: str, obj: Any) -> dict[str, Any] | None:
    if obj is None:
        return None
    name = names.saved_name(kind, type(obj))
    return {"class": name, "config": _json_config(f"{kind} {name}", obj.config())}


def _optimizer_node(optimizer: Optimizer | None) -> dict[str, Any] | None:
    return _named_object("optimizer", optimizer)


def _optimizer_numbers(state: dict[str, Any]) -> dict[str, Any]:
    """The state's numbers for the metadata: the step, the rate, the per-parameter counts
    (only where one differs from the step: a file of a model never frozen stays as before)."""
    extra = sorted(set(state) - {"step", "slots", "counts", "lr"})
    if extra:
        raise ValueError(
            f"cannot save the optimizer state: it has entries {extra} besides 'step', 'counts', "
            "'lr' and 'slots', which this file format does not store"
        )
    numbers: dict[str, Any] = {"optimizer_step": _count("optimizer_state['step']", state["step"])}
    counts = {k: _count(f"optimizer_state['counts'][{k!r}]", c) for k, c in state.get("counts", {}).items()}
    if any(c != numbers["optimizer_step"] for c in counts.values()):
        numbers["optimizer_counts"] = counts
    if "lr" in state:
        numbers["optimizer_lr"] = float(state["lr"])
    return numbers


def _count(what: str, value: Any) -> int:
    if hasattr(value, "dtype") and getattr(value, "shape", None) == ():
        value = int(value)  # a compiled step's count, as an array
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{what} must be an int, got {value!r}")
    return int(value)


def _architecture(module: Module, name: str | None = None) -> dict[str, Any]:
    """The JSON node of ``module``: class name, config, its sub-modules under ``"layers"``
    (each with its ``"name"`` where that is not its index) and ``"trainable": false`` if frozen."""
    class_name = names.saved_name("layer", type(module))
    node: dict[str, Any] = {"class": class_name}
    if name is not None:
        node["name"] = name
    config = _json_config(class_name, module.config())
    if config or not module.children():
        node["config"] = config
    if not module.trainable:
        node["trainable"] = False
    children = module.children()
    if children:
        node["layers"] = [
            _architecture(child, None if child_name == str(i) else child_name)
            for i, (child_name, child) in enumerate(children)
        ]
    return node


C = TypeVar("C", bound=type)


def register(cls: C) -> C:
    """Let :func:`load` find a layer, loss or optimizer class of your own by its name.

    Use it as a decorator (``@portnn.register``) or call it (``portnn.register(cls)``);
    it returns the class. Files store class names only, so a file names your
    class and :func:`load` builds it only if it is registered or passed as
    ``load(path, custom_objects={"Name": cls})``, like Keras's
    ``register_keras_serializable`` and ``custom_objects``. Registering again
    under the same name replaces the earlier class (a class redefined in a
    notebook). portnn's own class names cannot be taken.

    :raises TypeError: if ``cls`` is not a subclass of :class:`~portnn.Module`,
        :class:`~portnn.Loss` or :class:`~portnn.Optimizer`.
    :raises ValueError: if its name is that of one of portnn's own classes.
    """
    names.register_class(cls)
    return cls


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


def save(model: Module, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None) -> None:
    """Save ``model`` to ``path`` (a safetensors file), replacing it atomically.

    The file holds the architecture, parameters, buffers, extra state (e.g.
    a dropout generator's state), and, once the model has been trained, its
    loss, optimizer and optimizer state, so that :func:`load` followed by
    ``fit`` continues where training stopped.

    The file is written to a temporary file in the same directory, flushed to
    disk and then renamed onto ``path``: if anything fails, the previous file at
    ``path`` (if any) is left intact and the temporary file is removed. A
    symlink at ``path`` stays and its target gets the new file; temporary files
    left by earlier saves to it whose process died are removed.

    :param model: a :class:`~portnn.Module`: any tree of portnn's modules
        and modules of your own. Classes of your own are saved by name; :func:`load` then needs them as ``custom_objects`` or registered
        with :func:`register`.
    :param path: file name (``str`` or ``os.PathLike``), by convention ending
        in ``.safetensors``: a new file, a regular file or a symlink to one.
    :param metadata: notes of your own kept in the file, a dict of JSON values
        (strings, numbers, booleans, None, lists and dicts), e.g. class names;
        :func:`load` gives them back as ``model.metadata``. None keeps the
        model's own ``model.metadata`` (that of the file it was loaded from), if any.
    :raises ImportError: if safetensors is not installed.
    :raises IsADirectoryError: if ``path`` is a directory.
    :raises ValueError: if ``path`` is a pipe, device or socket, or a class of
        your own has the name of one of portnn's classes (a file would mean
        portnn's) or a private name (``_...``) and is not registered.
    """
    from ._version import __version__

    if not isinstance(model, Module):
        raise TypeError(f"save() takes a portnn Module, got {type(model).__name__}")
    path = _file_name(path)
    notes = _user_metadata(metadata if metadata is not None else getattr(model, "metadata", None))
    st = _safetensors()

    tensors: dict[str, np.ndarray] = {}
    for name, value in model.parameters().items():
        tensors[_PARAM + name] = _host(value)
    for name, value in model.buffers().items():
        tensors[_BUFFER + name] = _host(value)

    optimizer, transform_node = model.optimizer, None
    if optimizer is not None and not isinstance(optimizer, Optimizer):
        try:
            transform_node = describe_transform(optimizer)  # a chain of portnn's transforms
        except TypeError as e:
            warnings.warn(
                f"{path}: the model was trained with {optimizer!r}, which this file format cannot "
                f"describe ({e}); the file holds the model without its optimizer and state",
                UserWarning,
                stacklevel=2,
            )
            optimizer = None
    state = model.optimizer_state if optimizer is not None else None
    numbers: dict[str, Any] = {"optimizer_step": None}
    if state is not None:
        numbers = _optimizer_numbers(state)
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
        "loss": _named_object("loss", model.loss),
        "optimizer": _optimizer_node(optimizer) if transform_node is None else None,
        **({"transform": transform_node} if transform_node is not None else {}),
        **numbers,
        "extra_state": extra_state,
        "resume_point": model.resume_point,
    }
    if notes:
        meta["metadata"] = notes
    try:
        text = json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise TypeError(f"cannot save {path}: the model's extra state is not JSON-serializable ({e})") from None

    metadata = {_META_KEY: text, _CHECKSUM_KEY: _checksum(text, tensors)}
    checks.atomic_write(path, lambda: st.numpy.save(tensors, metadata=metadata))


# ---------------------------------------------------------------- load


def load(
    path: str | os.PathLike[str],
    backend: str | None = None,
    device: Any = None,
    *,
    custom_objects: Mapping[str, type] | None = None,
) -> Module:
    """Load a model saved by :func:`save`, on ``backend`` (and ``device``).

    The architecture is rebuilt from class names (no code in the file is run):
    portnn's own classes, and classes of your own given in ``custom_objects`` or
    registered with :func:`register`. Everything the file says is checked before
    any layer is built: every class name, every size the architecture claims
    against the tensors stored (so a small file never allocates a large model),
    the dtypes and values of parameters, buffers and optimizer slots, the
    optimizer's learning rates and each module's extra state. Then parameters,
    buffers and extra state are restored. Parameters keep the dtype they were
    saved with. If the model was trained, ``model.loss``, ``model.optimizer`` and
    ``model.optimizer_state`` are restored too (the state's arrays on the
    model's backend, the step count included), so that ``model.fit(...)``
    continues where training stopped.

    :param path: the file (``str`` or ``os.PathLike``): a regular file, or a
        symlink to one; a pipe or device is refused without being opened.
    :param backend: backend name such as ``"numpy"`` or ``"torch"``; None takes
        the current default backend (:func:`~portnn.get_backend`).
    :param device: device on that backend; None takes the backend's default
        (or, with ``backend=None``, the current default backend's device).
    :param custom_objects: class name -> class, for layer, loss and optimizer
        classes of your own (as Keras's ``load_model(custom_objects=...)``);
        portnn's own class names cannot be given another class.
    :returns: the model, in inference mode.
    :raises FileNotFoundError: if there is no file at ``path``.
    :raises IsADirectoryError: if ``path`` is a directory.
    :raises ValueError: if ``path`` is not a regular file, the file is not a
        safetensors file, not a portnn file, names a class that is neither
        portnn's nor given or registered, or holds tensors or values that do
        not fit the architecture.
    :raises ImportError: if safetensors is not installed.
    """
    path = _file_name(path)
    custom = names.check_custom_objects(custom_objects)
    checks.check_model_file(path)
    st = _safetensors()
    try:
        with st.safe_open(path, framework="numpy") as f:
            metadata = f.metadata()
            meta = checks.read_metadata(metadata)  # before reading any tensor
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
            checks.check_architecture(
                meta["architecture"], lambda name, where: names.resolve("layer", name, custom, where), shapes
            )
            for kind in ("loss", "optimizer"):
                if meta.get(kind) is not None:
                    cls = names.resolve(kind, meta[kind]["class"], custom, kind)
                    checks.check_arguments(kind, cls, meta[kind].get("config", {}))
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        expected = metadata.get(_CHECKSUM_KEY)
        if expected != _checksum(metadata[_META_KEY], tensors):
            raise _Bad("its contents do not match the checksum saved with them (the file is damaged)")
        checks.check_tensor_values(tensors, np)
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
            model = _build(meta["architecture"], custom, tensors)
        _set_trainable(model, meta["architecture"])
        _restore(model, meta, tensors, custom)
    except _Bad as e:
        raise ValueError(f"{path}: {e}") from None
    notes = meta.get("metadata")
    if notes is not None and not isinstance(notes, dict):
        raise ValueError(f"{path}: the file's metadata entry is not an object of notes")
    model.metadata = notes or {}
    return model


def _user_metadata(value: Any) -> dict[str, Any] | None:
    """``save(metadata=...)``: a dict of JSON values, copied (later changes to it do not reach the file)."""
    if value is None or (isinstance(value, Mapping) and not value):
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"metadata must be a dict of JSON values, got {type(value).__name__}")
    try:
        text = json.dumps(dict(value), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"metadata must hold JSON values only (strings, numbers, booleans, None, lists, dicts): {e}"
        ) from None
    return json.loads(text)


def _construct(kind: str, cls: type, config: dict[str, Any], *args: Any, arrays: Any = None) -> Any:
    try:
        return cls(*args, **config, **(arrays or {}))
    except (TypeError, ValueError) as e:
        raise _Bad(f"cannot rebuild {kind} {cls.__name__} from config {config!r}: {e}") from None


def _build(
    node: dict[str, Any],
    custom: Mapping[str, Mapping[str, type]],
    tensors: Mapping[str, np.ndarray],
    where: str = "architecture",
    prefix: str = "",
) -> Module:
    """The modules of an architecture :func:`~portnn._file_checks.check_architecture` accepted.

    A container whose children are its arguments (:meth:`Module.from_config`)
    gets them built from the file; any other module builds its own from its config,
    and they must be the ones the file names.
    """
    name, config = _check_node(where, node)
    cls = names.resolve("layer", name, custom, where)
    nodes = checks.child_nodes(name, node, where)
    if checks.takes_children(cls):
        children = {
            child_name: _build(child, custom, tensors, f"{where}.layers[{i}]", f"{prefix}{child_name}.")
            for i, (child_name, child) in enumerate(nodes)
        }
        try:
            module = cls.from_config(config, children)
        except (TypeError, ValueError) as e:
            raise _Bad(f"cannot rebuild layer {cls.__name__} from config {config!r}: {e}") from None
    else:
        module = _construct("layer", cls, config, arrays=_stored_arguments(cls, config, tensors, prefix))
        made = [(n, type(m).__name__) for n, m in module.children()]
        named = [(n, child.get("class")) for n, child in nodes]
        if made != named:
            raise _Bad(f"{name} at {where} builds the sub-modules {made}, but the file names {named}")
    if not isinstance(module, cls):
        raise _Bad(f"{cls.__name__}.from_config at {where} returned a {type(module).__name__}")
    return module


def _set_trainable(module: Module, node: dict[str, Any], where: str = "architecture") -> None:
    """Each module's ``trainable`` flag as the file has it, parents first: freezing a module
    freezes everything inside, and a sub-module the file keeps trainable under a frozen
    parent, or one a container built itself, then gets its own flag."""
    module.trainable = node.get("trainable", True) is not False
    children = dict(module.children())
    for i, (child_name, child) in enumerate(checks.child_nodes(str(node.get("class")), node, where)):
        if child_name in children:
            _set_trainable(children[child_name], child, f"{where}.layers[{i}]")


def _stored_arguments(cls: type, config: dict[str, Any], tensors: Mapping[str, np.ndarray], prefix: str) -> dict[str, Any]:
    """Zeros of the stored tensors' (checked) shapes for the constructor arguments of portnn's
    own layers that take their parameters (``Dense(weight=..., bias=...)``): no random
    initialization to overwrite, and no finiteness check on values ``load_parameters`` sets next."""
    if not names.is_portnn(cls):
        return {}
    try:
        arguments = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return {}
    shapes = cls.state_shapes(config) if hasattr(cls, "state_shapes") else None
    found = {}
    for key in shapes or {}:
        stored = tensors.get(f"{_PARAM}{prefix}{key}")
        if key in arguments and key not in config and stored is not None:
            found[key] = np.zeros(stored.shape, stored.dtype)
    return found


def _split(tensors: Mapping[str, np.ndarray]) -> tuple[dict, dict, dict[str, dict[str, np.ndarray]]]:
    """(parameters, buffers, optimizer slots by parameter) from the file's tensor names."""
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
    return params, buffers, optim


def _load_arrays(model: Module, params: dict[str, Any], buffers: dict[str, Any]) -> None:
    """Parameters and buffers: the same names and shapes as the architecture; the saved dtype wins."""
    for kind, saved, built_arrays in (("parameter", params, model.parameters()), ("buffer", buffers, model.buffers())):
        missing = [k for k in built_arrays if k not in saved]
        unknown = [k for k in saved if k not in built_arrays]
        if missing or unknown:
            parts = [f"missing {missing}" if missing else "", f"not in the model {unknown}" if unknown else ""]
            raise _Bad(f"the {kind}s do not match the architecture: " + "; ".join(p for p in parts if p))
        for full, built in built_arrays.items():
            value = saved[full]
            if tuple(built.shape) != tuple(value.shape):
                raise _Bad(
                    f"{kind} {full!r} has shape {tuple(value.shape)} in the file, but the "
                    f"architecture gives it shape {tuple(built.shape)}"
                )
            try:
                model.backend.dtype(value.dtype.name)
            except (TypeError, ValueError) as e:
                raise _Bad(f"{kind} {full!r}: {e}") from None
    try:
        model.load_parameters(params, check_finite=False, keep_dtype=True)  # a diverged model still loads
        model.load_buffers(buffers, keep_dtype=True)
    except (KeyError, TypeError, ValueError) as e:
        raise _Bad(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)) from None


def _restore(
    model: Module,
    meta: dict[str, Any],
    tensors: dict[str, np.ndarray],
    custom: Mapping[str, Mapping[str, type]],
) -> None:
    params, buffers, optim = _split(tensors)
    _load_arrays(model, params, buffers)

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
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise _Bad(f"cannot restore the extra state of module {prefix!r}: {e}") from None

    model.resume_point = _resume_point(meta.get("resume_point"))
    if meta.get("loss") is not None:
        name, config = _check_node("loss", meta["loss"])
        model.loss = _construct("loss", names.resolve("loss", name, custom, "loss"), config)

    optimizer = None
    if meta.get("optimizer") is not None:
        name, config = _check_node("optimizer", meta["optimizer"])
        cls = names.resolve("optimizer", name, custom, "optimizer")
        initial_lr = meta["optimizer"].get("initial_lr")
        if initial_lr is not None and isinstance(config.get("lr"), int | float):
            # a file of portnn <= 0.1's epoch schedules: config lr is the lowered rate of the
            # latest epoch, initial_lr the optimizer's own (checked by read_metadata)
            config, old_rate = {**config, "lr": float(initial_lr)}, config["lr"]
            meta = {**meta, "optimizer_lr": meta.get("optimizer_lr", old_rate)}
        optimizer = model.optimizer = _construct("optimizer", cls, config)
    elif meta.get("transform") is not None:  # a chain of transforms
        try:
            optimizer = rebuild_transform(
                meta["transform"], lambda name: names.resolve("optimizer", name, custom, "optimizer")
            )
        except (TypeError, ValueError) as e:
            raise _Bad(f"cannot rebuild the optimizer: {e}") from None
        model.optimizer = optimizer
    step = meta.get("optimizer_step")
    if optimizer is None or step is None:
        if optim:
            raise _Bad("the file holds optimizer slots but no optimizer and step")
        if optimizer is not None:
            model.optimizer_state = None  # fit starts a fresh state
        return
    model.optimizer_state = checks.optimizer_state(
        model, optimizer, step, optim, meta.get("optimizer_counts"), meta.get("optimizer_lr")
    )


def _resume_point(point: Any) -> dict[str, Any] | None:
    """Where an interrupted ``fit`` stopped (see :func:`portnn.fit`), checked entry by entry."""
    if point is None:
        return None
    counts = {"epoch": 0, "step": 1, "n_samples": 1, "batch_size": 1}
    if not isinstance(point, dict) or set(point) != {*counts, "seed", "shuffle", "sums"}:
        raise _Bad(f"resume_point must be null or an object with {sorted({*counts, 'seed', 'shuffle', 'sums'})}")
    for key, least in {**counts, "seed": 0}.items():
        value = point[key]
        if isinstance(value, bool) or not isinstance(value, int) or not least <= value < 2**63:
            raise _Bad(f"resume_point {key} must be an integer in [{least}, 2**63), got {value!r}")
    if not isinstance(point["shuffle"], bool):
        raise _Bad(f"resume_point shuffle must be true or false, got {point['shuffle']!r}")
    sums = point["sums"]
    if (
        not isinstance(sums, list) or len(sums) not in (3, 4)
        or any(isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) for v in sums[::3])
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in sums[1:3])
        or (len(sums) == 4 and sums[3] < 0)
    ):
        raise _Bad(
            "resume_point sums must be [finite loss sum, samples seen, batches skipped] and, for a "
            f"weighted run, the weight seen (finite, >= 0); got {sums!r}"
        )
    return dict(point)


provide_workflows(save=save)
