"""A chain of transforms as JSON, and back: how ``portnn.save`` keeps an optimizer that
is not one of the named ones.

A named optimizer (``pn.AdamW(...)``) is saved as its class name and options. A
``chain(...)`` or ``partition(...)`` of portnn's transforms is saved as a tree of
nodes: ``{"class": "chain", "transforms": [...]}``, ``{"class": "partition",
"labels": ..., "transforms": {label: node}}`` and ``{"class": "ScaleByAdam",
"config": {...}}``. Rebuilding one calls only the constructors of portnn's own
transforms (and of the optimizers the caller's resolver names) with the options
the file holds, each checked by its constructor; nothing else in a file runs.
A transform of one's own, a callable learning rate that is not a shipped
schedule, or labels given as a function cannot be described: :func:`describe`
raises TypeError saying which.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from . import transforms as _transforms
from .base import Chain, Partition, Transform, partition
from .optimizers import Optimizer

__all__ = ["describe", "rebuild"]

#: how deep chains may nest in a file (a file cannot make the loader recurse without end)
MAX_DEPTH = 16


def transform_classes() -> dict[str, type]:
    """portnn's own transforms by class name (the only classes a file's transform node means)."""
    return {
        name: cls for name, cls in vars(_transforms).items()
        if isinstance(cls, type) and issubclass(cls, Transform) and cls.__module__ == _transforms.__name__
        and not name.startswith("_")
    }


def describe(transform: Transform) -> dict[str, Any]:
    """The JSON node of ``transform``; TypeError if it holds something a file cannot describe."""
    if isinstance(transform, Optimizer):
        return {"class": type(transform).__name__, "config": _json(type(transform).__name__, transform.config())}
    if isinstance(transform, Chain):
        return {"class": "chain", "transforms": [describe(t) for t in transform.transforms]}
    if isinstance(transform, Partition):
        rules = transform.rules
        if rules is None:
            raise TypeError("a partition whose labels are a function cannot be described; give them as patterns or a dict")
        labels = dict(rules) if isinstance(rules, Mapping) else [[p, label] for p, label in rules]
        keys = list(transform.transforms)
        if not all(isinstance(k, str) for k in keys):
            raise TypeError(f"a partition's labels must be strings to be described, got {keys!r}")
        return {"class": "partition", "labels": labels, "transforms": {k: describe(t) for k, t in transform.transforms.items()}}
    name = type(transform).__name__
    if transform_classes().get(name) is not type(transform):
        raise TypeError(f"{name} is not one of portnn's transforms, and cannot be described")
    return {"class": name, "config": _json(name, transform.config())}


def _json(name: str, config: dict[str, Any]) -> dict[str, Any]:
    try:
        json.dumps(config, allow_nan=False)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name}'s options {config!r} are not all numbers, strings or shipped schedules "
            "(a learning rate of your own, a function, cannot be described)"
        ) from None
    return config


def rebuild(node: Any, optimizer_class: Callable[[str], type], where: str = "transform", depth: int = 0) -> Transform:
    """The transform a :func:`describe` node stands for; ValueError naming ``where`` if the
    node is not one. ``optimizer_class(name)`` resolves a named optimizer's class."""
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: transforms nest deeper than {MAX_DEPTH}")
    if not isinstance(node, dict) or not isinstance(node.get("class"), str):
        raise ValueError(f"{where} must be an object with a 'class' name, got {node!r}")
    name = node["class"]
    if name == "chain":
        items = node.get("transforms")
        if not isinstance(items, list):
            raise ValueError(f"{where} (chain) must list its 'transforms'")
        return Chain(*(rebuild(t, optimizer_class, f"{where}[{i}]", depth + 1) for i, t in enumerate(items)))
    if name == "partition":
        return _partition(node, optimizer_class, where, depth)
    config = node.get("config", {})
    if not isinstance(config, dict):
        raise ValueError(f"{where} ({name}) config must be an object, got {config!r}")
    cls = transform_classes().get(name) or optimizer_class(name)
    try:
        return cls(**config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: cannot rebuild {name} from {config!r}: {e}") from None


def _partition(node: dict[str, Any], optimizer_class: Callable[[str], type], where: str, depth: int) -> Transform:
    labels, parts = node.get("labels"), node.get("transforms")
    if not isinstance(parts, dict) or not parts:
        raise ValueError(f"{where} (partition) must map labels to 'transforms'")
    pairs = labels.items() if isinstance(labels, dict) else labels if isinstance(labels, list) else None
    if pairs is None or not all(
        isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(v, str) for v in pair) for pair in pairs
    ):
        raise ValueError(f"{where} (partition) labels must be [pattern, label] pairs or an object of names, got {labels!r}")
    unknown = sorted({label for _, label in pairs} - set(parts))
    if unknown:
        raise ValueError(f"{where} (partition) labels {unknown} name no transform")
    built = {k: rebuild(t, optimizer_class, f"{where}.{k}", depth + 1) for k, t in parts.items()}
    return partition(built, dict(labels) if isinstance(labels, dict) else [tuple(p) for p in labels])
