"""Which class a name in a model file means.

Files store class names only. A name resolves to portnn's own class of that
name (layers: :attr:`Module.registry <portnn.Module.registry>`, filled
with the classes of portnn's modules only), else to a class the caller passed
as ``load(..., custom_objects=...)``, else to one registered with
:func:`portnn.register`. A class defined elsewhere never shadows portnn's, and
its constructor runs only if the user chose it.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from ._file_checks import Bad


def is_portnn(cls: type) -> bool:
    module = getattr(cls, "__module__", "") or ""
    return module == "portnn" or module.startswith("portnn.")


def _bases() -> dict[str, type]:
    from .nn.module import Module
    from .losses import Loss
    from .optim.optimizers import Optimizer

    return {"layer": Module, "loss": Loss, "optimizer": Optimizer}


# classes of the user's own, registered with portnn.register: kind -> name -> class
_REGISTERED: dict[str, dict[str, type]] = {"layer": {}, "loss": {}, "optimizer": {}}


def builtin_classes(kind: str) -> dict[str, type]:
    """portnn's own classes of ``kind`` (``"layer"``, ``"loss"``, ``"optimizer"``) by name."""
    base = _bases()[kind]
    if kind == "layer":
        return dict(base.registry)
    found: dict[str, type] = {}
    queue, seen = list(base.__subclasses__()), set()
    while queue:
        cls = queue.pop(0)
        if cls in seen:
            continue
        seen.add(cls)
        if is_portnn(cls) and not cls.__name__.startswith("_"):
            found.setdefault(cls.__name__, cls)
        queue.extend(cls.__subclasses__())
    return found


def kind_of_class(cls: Any, what: str) -> str:
    """``"layer"``, ``"loss"`` or ``"optimizer"`` for a class; a TypeError naming ``what`` otherwise."""
    if isinstance(cls, type):
        for kind, base in _bases().items():
            if issubclass(cls, base) and cls is not base:
                return kind
    shown = cls.__name__ if isinstance(cls, type) else type(cls).__name__
    raise TypeError(
        f"{what} must be a subclass of portnn's Module, Loss or Optimizer, got {shown}"
    )


def register_class(cls: Any) -> None:
    kind = kind_of_class(cls, "register() argument")
    name = cls.__name__
    builtin = builtin_classes(kind).get(name)
    if builtin is cls:
        return
    if builtin is not None:
        raise ValueError(
            f"cannot register {cls.__module__}.{cls.__qualname__}: {name!r} is the name of portnn's "
            f"own {kind} class {builtin.__module__}.{name}, which files always mean; rename your class"
        )
    _REGISTERED[kind][name] = cls


def check_custom_objects(custom_objects: Any) -> dict[str, dict[str, type]]:
    """``load``'s ``custom_objects`` (name -> class) as kind -> name -> class, checked."""
    found: dict[str, dict[str, type]] = {"layer": {}, "loss": {}, "optimizer": {}}
    if custom_objects is None:
        return found
    if not isinstance(custom_objects, Mapping):
        raise TypeError(
            f"custom_objects must be a mapping of class name -> class, got {type(custom_objects).__name__}"
        )
    for name, cls in custom_objects.items():
        if not isinstance(name, str):
            raise TypeError(f"custom_objects keys must be class names (str), got {name!r}")
        kind = kind_of_class(cls, f"custom_objects[{name!r}]")
        builtin = builtin_classes(kind).get(name)
        if builtin is not None and builtin is not cls:
            raise ValueError(
                f"custom_objects[{name!r}]: {name!r} is portnn's own {kind} class "
                f"{builtin.__module__}.{name}, which a file always means; it cannot be replaced"
            )
        if builtin is None:
            found[kind][name] = cls
    return found


def resolve(kind: str, name: str, custom: Mapping[str, Mapping[str, type]], where: str) -> type:
    """The class a file's ``name`` means: portnn's own, then ``custom_objects``, then registered."""
    builtin = builtin_classes(kind)
    for table in (builtin, custom[kind], _REGISTERED[kind]):
        if name in table:
            return table[name]
    close = difflib.get_close_matches(name, list(builtin), n=2, cutoff=0.8)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    raise Bad(
        f"unknown {kind} class {name!r} at {where}; {hint}portnn's own {kind} classes are "
        f"{', '.join(sorted(builtin))}. A {kind} class of your own is found only when passed as "
        f"load(path, custom_objects={{{name!r}: {name}}}) or registered with @portnn.register"
    )


def saved_name(kind: str, cls: type) -> str:
    """The name a file stores for ``cls``; a ValueError if ``load`` would find another class by it."""
    name = cls.__name__
    builtin = builtin_classes(kind).get(name)
    registered = _REGISTERED[kind].get(name)
    shown = f"{cls.__module__}.{cls.__qualname__}"
    if builtin is cls or registered is cls:
        return name
    if builtin is not None:
        raise ValueError(
            f"cannot save {kind} class {shown}: files store class names, and {name!r} is portnn's "
            f"own {builtin.__module__}.{name}, which load() would build instead; rename your class"
        )
    if registered is not None:
        raise ValueError(
            f"cannot save {kind} class {shown}: the name {name!r} is registered to another class, "
            f"{registered.__module__}.{registered.__qualname__}"
        )
    if name.startswith("_"):
        raise ValueError(
            f"cannot save {kind} class {shown}: its name starts with '_', so it is private and "
            "never found by name; rename it or register it with @portnn.register"
        )
    return name  # load() needs custom_objects or portnn.register for it
