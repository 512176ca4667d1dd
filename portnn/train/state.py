"""A model's whole training state in one snapshot, and back.

What a run needs to go on exactly where it stopped: the parameters, the buffers
(running statistics), the optimizer state (slots, step counts, the rate) and the
random state (each Dropout generator's). :func:`capture` gathers them, on the
host or as the model holds them; :func:`restore` puts a snapshot back, checked.
Data-parallel training broadcasts rank 0's snapshot to the other ranks; ``fit``
puts the state before the run back when it fails before its first step.
"""

from __future__ import annotations

from typing import Any

from .._tree import move_tree
from ..backend import to_numpy
from ..nn import Module

__all__ = ["capture", "restore"]


def _host_tree(tree: Any) -> Any:
    """A nested dict/list of arrays with every array on the host (for pickling or MPI)."""
    if isinstance(tree, dict):
        return {k: _host_tree(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_host_tree(v) for v in tree)
    return to_numpy(tree) if hasattr(tree, "shape") else tree


def capture(model: Module, host: bool = False) -> dict[str, Any]:
    """``{"parameters", "buffers", "optimizer_state", "random"}`` of ``model``: its arrays
    as it holds them (no copies: training replaces arrays rather than writing them), or
    host copies with ``host=True``. ``random`` maps module names to generator states."""
    params, buffers = dict(model.parameters()), dict(model.buffers())
    state = model.optimizer_state
    if host:
        params = {k: to_numpy(v) for k, v in params.items()}
        buffers = {k: to_numpy(v) for k, v in buffers.items()}
        state = _host_tree(state)
    return {
        "parameters": params,
        "buffers": buffers,
        "optimizer_state": state,
        "random": {name: m.extra_state() for name, m in model.named_modules() if m.extra_state()},
    }


def restore(model: Module, snapshot: dict[str, Any]) -> None:
    """Put what :func:`capture` returned back into ``model`` (arrays moved to its backend)."""
    model.load_parameters(snapshot["parameters"])
    if snapshot["buffers"]:
        model.load_buffers(snapshot["buffers"])
    state = snapshot["optimizer_state"]
    model.optimizer_state = None if state is None else move_tree(state, model.backend)
    modules = dict(model.named_modules())
    for name, extra in snapshot["random"].items():
        modules[name].load_extra_state(extra)
