"""How modules are called: backward closures, inputs, and the workflows above nn/.

``call_backward`` runs a backward closure, asking it to skip the input gradient
where it can; ``one_input``/``first_sample`` turn what a user passes into a
batch and back; ``provide_workflows`` is how ``portnn.train`` and
``portnn.io`` hand ``fit``, ``predict``, ``save``... to :class:`~portnn.nn.Module`,
so that nn/ never imports them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .._checks import as_input
from ..backend import Backend, _library_name

__all__ = ["Backward", "call_backward", "first_sample", "one_input", "provide_workflows", "workflow"]

Backward = Callable[..., tuple[Any, dict[str, Any]]]

# fit, predict, evaluate and save live above this package (portnn.train, portnn.io);
# they hand their functions in here when portnn is imported, so nn/ never imports them
_WORKFLOWS: dict[str, Callable[..., Any]] = {}


def provide_workflows(**functions: Callable[..., Any]) -> None:
    """Make ``Module.fit``/``predict``/... call these functions (done once by portnn's own modules)."""
    _WORKFLOWS.update(functions)


def workflow(name: str) -> Callable[..., Any]:
    try:
        return _WORKFLOWS[name]
    except KeyError:
        raise RuntimeError(f"Module.{name} needs portnn's training functions: import portnn first") from None


_TAKES_NEED_DX: dict[Any, bool] = {}


class _Stdout:
    """``summary``'s default ``file``: whatever ``sys.stdout`` is when it prints."""

    def __repr__(self) -> str:
        return "sys.stdout"


_STDOUT = _Stdout()


def call_backward(backward: Backward, dy: Any, need_dx: bool) -> tuple[Any, dict[str, Any]]:
    """``backward(dy)``, asking it to skip the input gradient when it takes ``need_dx``."""
    if need_dx:
        return backward(dy)
    code = getattr(backward, "__code__", None)
    takes = _TAKES_NEED_DX.get(code)
    if takes is None:
        try:
            parameters = inspect.signature(backward).parameters
        except (TypeError, ValueError):
            parameters = {}
        takes = "need_dx" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        if code is not None:
            _TAKES_NEED_DX[code] = takes
    return backward(dy, need_dx=False) if takes else backward(dy)


def first_sample(y: Any) -> Any:
    """The one sample of a batch of one (of each array, for a tuple)."""
    return tuple(first_sample(v) for v in y) if isinstance(y, tuple) else y[0, ...]


def _ready(backend: Backend, x: Any, dtype: Any) -> bool:
    """Whether ``x`` is already a usable input: the backend's array, dtype, not 0-D, not empty.

    The common case of calling a model on its own arrays skips the full checks.
    """
    return (
        dtype is not None
        and _library_name(x) == backend
        and x.dtype == dtype
        and x.ndim >= 1
        and all(x.shape)
        and (backend.device is None or x.device == backend.device)
    )


def one_input(backend: Backend, name: str, x: Any, dtype: Any) -> Any:
    if _ready(backend, x, dtype):
        return x
    return as_input(backend, name, x, dtype, ndims=None)
