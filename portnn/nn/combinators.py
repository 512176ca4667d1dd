"""Combinators: modules made of modules (Sequential, Residual, Add, Concatenate, Parallel).

Each is a few lines because the protocol composes: the parent calls its
children's ``apply``, keeps their backward closures and calls them in reverse,
returning each child's gradients under the child's name. Their children are
their constructor's arguments, so a file rebuilds them from the children it
stores (:meth:`Module.from_config`).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping
from typing import Any

from .module import Backward, Module, call_backward

__all__ = ["Add", "Concatenate", "Parallel", "Residual", "Sequential"]


def _modules(kind: str, given: tuple[Any, ...]) -> tuple[Module, ...]:
    if len(given) == 1 and isinstance(given[0], list | tuple):
        given = tuple(given[0])
    for i, module in enumerate(given):
        if not isinstance(module, Module):
            raise TypeError(f"{kind} takes portnn modules; argument {i} is {type(module).__name__}")
    return given


class _Branches(Module):
    """A module whose children, named ``"0"``, ``"1"``, ..., are its positional arguments."""

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        for i, module in enumerate(_modules(type(self).__name__, modules)):
            self.add_module(str(i), module)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], children: Mapping[str, Module]) -> Module:
        return cls(*children.values(), **config)

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(list(self._modules.values()))


class Sequential(_Branches):
    """Layers applied in order; parameters are named ``"<index>.<name>"``."""

    @property
    def layers(self) -> list[Module]:
        return list(self._modules.values())

    def append(self, layer: Module) -> Sequential:
        """Add ``layer`` at the end; returns the Sequential."""
        self.add_module(str(len(self._modules)), _modules("Sequential", (layer,))[0])
        return self

    def output_layer(self) -> Module:
        return self[-1].output_layer() if self._modules else self

    @property
    def preserves_shape(self) -> bool:  # type: ignore[override]
        return all(layer.preserves_shape for layer in self._modules.values())

    def input_shape(self) -> Any:
        for layer in self._modules.values():
            shape = layer.input_shape()
            if shape is not None or not layer.preserves_shape:
                return shape
        return None

    def infer(self, x: Any) -> Any:
        for layer in self._modules.values():
            x = layer.infer(x)
        return x

    def apply(self, x: Any, training: bool) -> tuple[Any, Backward]:
        names, backwards = [], []
        for name, layer in self._modules.items():
            x, back = layer.apply(x, training)
            names.append(name)
            backwards.append(back)

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            grads: dict[str, Any] = {}
            for i in range(len(backwards) - 1, -1, -1):
                dy, grads[names[i]] = call_backward(backwards[i], dy, need_dx or i > 0)
            return dy, grads

        return x, backward


class Residual(Module):
    """``x + block(x)``: a skip connection around ``block`` (its output has the input's shape)."""

    def __init__(self, block: Module) -> None:
        super().__init__()
        self.block = _modules("Residual", (block,))[0]

    @classmethod
    def from_config(cls, config: Mapping[str, Any], children: Mapping[str, Module]) -> Module:
        return cls(children["block"], **config)

    def input_shape(self) -> Any:
        return self.block.input_shape()

    def infer(self, x: Any) -> Any:
        return x + _same_shape(self, x, self.block.infer(x))

    def apply(self, x: Any, training: bool) -> tuple[Any, Backward]:
        h, back = self.block.apply(x, training)

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            dh, grads = call_backward(back, dy, need_dx)
            return (dy + dh if need_dx else None), {"block": grads}

        return x + _same_shape(self, x, h), backward


def _same_shape(module: Module, x: Any, h: Any) -> Any:
    if tuple(h.shape) != tuple(x.shape):
        raise ValueError(
            f"{module.name}: its block maps shape {tuple(x.shape)} to {tuple(h.shape)}; "
            "a residual block must keep the shape of its input"
        )
    return h


class _Merge(_Branches):
    """Apply every branch to the same input and merge the outputs; without branches,
    merge the tuple received."""

    def _merge(self, parts: list[Any]) -> Any:
        raise NotImplementedError

    def _split(self, dy: Any, parts: list[Any]) -> list[Any]:
        raise NotImplementedError

    def input_shape(self) -> Any:
        for branch in self._modules.values():
            shape = branch.input_shape()
            if shape is not None:
                return shape
        return None

    def infer(self, x: Any) -> Any:
        if not self._modules:
            return self._merge(_parts(self, x))
        return self._merge([branch.infer(x) for branch in self._modules.values()])

    def apply(self, x: Any, training: bool) -> tuple[Any, Backward]:
        if not self._modules:
            parts = _parts(self, x)
            return self._merge(parts), lambda dy, need_dx=True: (tuple(self._split(dy, parts)), {})
        names, outputs, backwards = [], [], []
        for name, branch in self._modules.items():
            y, back = branch.apply(x, training)
            names.append(name)
            outputs.append(y)
            backwards.append(back)

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            grads: dict[str, Any] = {}
            dx = None
            for name, back, d in zip(names, backwards, self._split(dy, outputs)):
                dxi, grads[name] = call_backward(back, d, need_dx)
                if need_dx:
                    dx = dxi if dx is None else dx + dxi
            return dx, grads

        return self._merge(outputs), backward


def _parts(module: Module, x: Any) -> list[Any]:
    if not isinstance(x, tuple | list) or not x:
        raise ValueError(
            f"{module.name} has no branches, so it merges the tuple of arrays it receives "
            f"(from a Parallel, say); it got {type(x).__name__}"
        )
    return list(x)


class Add(_Merge):
    """The sum of every branch's output on the same input (of a tuple received, without branches)."""

    def _merge(self, parts: list[Any]) -> Any:
        shapes = {tuple(p.shape) for p in parts}
        if len(shapes) > 1:
            raise ValueError(f"{self.name} adds arrays of one shape, got shapes {[tuple(p.shape) for p in parts]}")
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        return total

    def _split(self, dy: Any, parts: list[Any]) -> list[Any]:
        return [dy] * len(parts)


class Concatenate(_Merge):
    """Every branch's output on the same input (or the tuple received), joined along ``axis``."""

    def __init__(self, *branches: Module, axis: int = -1) -> None:
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise TypeError(f"axis must be an integer, got {type(axis).__name__}")
        if int(axis) == 0:
            raise ValueError("axis 0 is the sample axis; Concatenate joins along another axis (default -1)")
        super().__init__(*branches)
        self.axis = int(axis)

    def config(self) -> dict[str, Any]:
        return {"axis": self.axis}

    def _merge(self, parts: list[Any]) -> Any:
        ranks = {p.ndim for p in parts}
        if len(ranks) > 1 or not -_rank(parts) <= self.axis < _rank(parts):
            raise ValueError(
                f"{self.name} joins arrays of one rank along axis {self.axis}, "
                f"got shapes {[tuple(p.shape) for p in parts]}"
            )
        axis = self.axis % _rank(parts)
        if len({tuple(p.shape[:axis]) + tuple(p.shape[axis + 1 :]) for p in parts}) > 1:
            # checked here: the libraries raise different errors (torch a RuntimeError)
            raise ValueError(
                f"{self.name} cannot join shapes {[tuple(p.shape) for p in parts]} along axis {self.axis}: "
                "they differ on another axis"
            )
        try:
            return self.xp.concat(parts, axis=self.axis)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{self.name} cannot join shapes {[tuple(p.shape) for p in parts]} along axis {self.axis}: {e}"
            ) from None

    def _split(self, dy: Any, parts: list[Any]) -> list[Any]:
        axis = self.axis % dy.ndim
        out, start = [], 0
        for p in parts:
            stop = start + int(p.shape[axis])
            index = (slice(None),) * axis + (slice(start, stop), ...)  # the standard names every axis
            out.append(dy[index])
            start = stop
        return out

    def _repr_args(self) -> str:
        return f"axis={self.axis}"


def _rank(parts: list[Any]) -> int:
    return int(parts[0].ndim)


class Parallel(_Branches):
    """A tuple of inputs to a tuple of outputs: branch ``i`` on input ``i``.

    A two-input model: ``Sequential(Parallel(net_a, net_b), Concatenate(), head)``.
    """

    def input_shape(self) -> Any:
        shapes = tuple(branch.input_shape() for branch in self._modules.values())
        return None if any(s is None for s in shapes) else shapes

    def _inputs(self, x: Any) -> tuple[Any, ...]:
        if not isinstance(x, tuple | list) or len(x) != len(self._modules):
            got = f"a tuple of {len(x)}" if isinstance(x, tuple | list) else type(x).__name__
            raise ValueError(f"{self.name} has {len(self._modules)} branches and takes a tuple of as many inputs, got {got}")
        return tuple(x)

    def infer(self, x: Any) -> Any:
        return tuple(branch.infer(xi) for branch, xi in zip(self._modules.values(), self._inputs(x)))

    def apply(self, x: Any, training: bool) -> tuple[Any, Backward]:
        names, outputs, backwards = [], [], []
        for (name, branch), xi in zip(self._modules.items(), self._inputs(x)):
            y, back = branch.apply(xi, training)
            names.append(name)
            outputs.append(y)
            backwards.append(back)

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            grads: dict[str, Any] = {}
            dxs = []
            for name, back, d in zip(names, backwards, dy):
                dxi, grads[name] = call_backward(back, d, need_dx)
                dxs.append(dxi)
            return (tuple(dxs) if need_dx else None), grads

        return tuple(outputs), backward
