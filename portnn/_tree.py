"""Nests of dicts, lists and tuples holding arrays (optimizer state, gradients, inputs).

Foundation code: it knows arrays and backends, nothing about models.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .backend import Backend

__all__ = ["arrays_of", "flatten", "move_tree"]


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


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nest of dicts as one dict with dotted keys: ``{"0": {"weight": w}}`` -> ``{"0.weight": w}``."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def move_array(target: Backend, value: Any, cast: Any = None) -> Any:
    """``value`` on ``target``; floating arrays take ``cast`` (None: keep), integer ones never do."""
    arr = target.asarray(value)
    if cast is not None and target.xp.isdtype(arr.dtype, "real floating"):
        arr = target.xp.astype(arr, cast)
    return arr


def move_tree(tree: Any, target: Backend, cast: Any = None) -> Any:
    """A nest with every array moved to ``target`` (floating ones cast); other leaves as they are."""
    if isinstance(tree, dict):
        return {k: move_tree(v, target, cast) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(move_tree(v, target, cast) for v in tree)
    if isinstance(tree, int | float | str | bool) or tree is None:
        return tree
    return move_array(target, tree, cast)
