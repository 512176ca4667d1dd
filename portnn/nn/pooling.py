"""Pooling: MaxPool1D/2D, AvgPool1D/2D and GlobalAvgPool2D, channels first, as PyTorch's.

``MaxPool2D(kernel_size, stride=None, padding=0)`` takes ``(N, C, H, W)`` to
``(N, C, H_out, W_out)`` with ``H_out = (H + 2 * padding - kernel) // stride + 1``
(sizes round down); the stride defaults to the kernel size. Max pooling pads
with ``-inf``, so padding never wins; of several equal maxima in a window the
first in row-major order gets the gradient, as in PyTorch. Average pooling
pads with zeros that count in the average (PyTorch's ``count_include_pad=True``).

Only the Array API standard: a pooling whose kernel equals its stride, without
padding, reshapes ``(N, C, H, W)`` to ``(N, C, H_out, k, W_out, k)`` and reduces
(the rows and columns a window never reaches are cut first); any other one
takes one strided slice of the padded input per kernel offset (the plans of
:mod:`portnn.nn.conv`), and its backward adds them back.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from .conv import WindowPlan, add_windows, check_input, pad, plan_for, sizes, too_small, window_plan
from .module import Backward, Module

__all__ = ["AvgPool1D", "AvgPool2D", "GlobalAvgPool2D", "MaxPool1D", "MaxPool2D"]


class _PoolPlan(NamedTuple):
    window: WindowPlan
    reshape: bool  # kernel == stride, no padding: windows by reshaping
    cut: tuple[slice, ...] | None  # rows/columns no window reaches, cut before reshaping
    blocks: tuple[int, ...]  # (C, out_0, k_0, out_1, k_1, ...) of the reshape
    window_axes: tuple[int, ...]  # the k axes of that reshape


class _Pool(Module):
    """A pooling over ``_nd`` spatial axes; subclasses give the reduction and its backward."""

    _nd = 2
    _fill = 0.0  # what padding holds

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
    ) -> None:
        super().__init__()
        nd = self._nd
        self.kernel_size = sizes("kernel_size", kernel_size, nd)
        self.stride = self.kernel_size if stride is None else sizes("stride", stride, nd)
        self.padding = sizes("padding", padding, nd, minimum=0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(
                f"padding must be at most half of kernel_size (as PyTorch requires), got "
                f"padding={_show(self.padding)} with kernel_size={_show(self.kernel_size)}"
            )
        self.__dict__["_plans"] = {}

    def config(self) -> dict[str, Any]:
        return {
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
        }

    def _repr_args(self) -> str:
        args = f"kernel_size={_show(self.kernel_size)}"
        if self.stride != self.kernel_size:
            args += f", stride={_show(self.stride)}"
        if any(self.padding):
            args += f", padding={_show(self.padding)}"
        return args

    # ------------------------------------------------------------ plans
    def _plan(self, x: Any) -> _PoolPlan:
        nd = self._nd

        def make(shape: tuple[int, ...]) -> _PoolPlan:
            pads = tuple((p, p) for p in self.padding)
            window = window_plan(shape[1:], self.kernel_size, self.stride, pads, (1,) * nd)
            if window is None:
                raise too_small(self, shape, f"the pooling window {self.kernel_size} after padding")
            reshape = self.stride == self.kernel_size and not any(self.padding)
            cut = None
            if reshape and any(o * k != n for o, k, n in zip(window.out, self.kernel_size, window.size)):
                reached = zip(window.out, self.kernel_size)
                cut = (slice(None), slice(None)) + tuple(slice(0, o * k) for o, k in reached)
            blocks = (shape[0],) + tuple(v for o, k in zip(window.out, self.kernel_size) for v in (o, k))
            axes = tuple(3 + 2 * i for i in range(nd))
            return _PoolPlan(window, reshape, cut, blocks, axes)

        check_input(self, x, nd, None)
        return plan_for(self, x, make)

    def _shaped(self, y: Any, plan: _PoolPlan) -> Any:
        """``y`` with its static shape stated (ONNX shape inference loses it in reductions)."""
        return self.xp.reshape(y, (-1, plan.blocks[0], *plan.window.out))

    def _blocks(self, x: Any, plan: _PoolPlan) -> Any:
        """``x`` as ``(N, C, out_0, k_0, out_1, k_1, ...)`` (the reshaping path)."""
        if plan.cut is not None:
            x = x[plan.cut]
        return self.xp.reshape(x, (-1, *plan.blocks))

    def _taps(self, x: Any, plan: _PoolPlan) -> list[Any]:
        """One strided slice of the padded input per kernel offset (the general path)."""
        window = plan.window
        xp_ = pad(self.xp, x, window.pads, self._fill) if window.interior is not None else x
        return [xp_[tap] for tap in window.taps]

    def _unblock(self, d_blocks: Any, plan: _PoolPlan, x: Any) -> Any:
        """A gradient of shape ``(N, C, out_0, k_0, ...)`` as the input's (zeros where no window reached)."""
        xp = self.xp
        covered = tuple(o * k for o, k in zip(plan.window.out, self.kernel_size))
        dx = xp.reshape(d_blocks, (-1, plan.blocks[0], *covered))
        if plan.cut is not None:
            dx = pad(xp, dx, tuple((0, n - c) for n, c in zip(plan.window.size, covered)), 0.0)
        return dx

    def _grid(self, parts: list[Any]) -> Any:
        """Per-offset gradients (row-major over the kernel, each ``(N, C, *out)``) as blocks."""
        xp = self.xp
        nd = self._nd
        # nest the offsets from the last kernel axis outwards: stack each at its k axis
        grid: Any = parts
        for axis in reversed(range(nd)):
            k = self.kernel_size[axis]
            target = 3 + axis  # right after out_axis (the k axes of later axes are in place already)
            grid = [xp.stack(grid[i : i + k], axis=target) for i in range(0, len(grid), k)]
        return grid[0]


def _show(t: tuple[int, ...]) -> Any:
    return t[0] if len(set(t)) == 1 else t


# ---------------------------------------------------------------- max pooling


class _MaxPool(_Pool):
    _fill = -math.inf

    def infer(self, x: Any) -> Any:
        xp = self.xp
        plan = self._plan(x)
        if plan.reshape:
            return self._shaped(xp.max(self._blocks(x, plan), axis=plan.window_axes), plan)
        taps = self._taps(x, plan)
        y = taps[0]
        for t in taps[1:]:
            y = xp.maximum(y, t)
        return self._shaped(y, plan)

    def apply(self, x: Any, training: bool) -> tuple[Any, Backward]:
        xp = self.xp
        plan = self._plan(x)
        if plan.reshape:
            blocks = self._blocks(x, plan)
            y = xp.max(blocks, axis=plan.window_axes)
            index = [slice(None)] * (2 + 2 * self._nd)
            taps = []
            for offsets in _offsets(self.kernel_size):
                for axis, o in zip(plan.window_axes, offsets):
                    index[axis] = o
                taps.append(blocks[tuple(index)])
        else:
            taps = self._taps(x, plan)
            y = taps[0]
            for t in taps[1:]:
                y = xp.maximum(y, t)
        y = self._shaped(y, plan)

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            if not need_dx:
                return None, {}
            # the first maximum of each window, in row-major order, takes the gradient (as PyTorch)
            parts, taken = [], None
            for t in taps:
                hit = t == y
                if taken is None:
                    first, taken = hit, hit
                else:
                    first = hit & ~taken
                    taken = taken | hit
                part = xp.astype(first, dy.dtype)
                part *= dy
                parts.append(part)
            if plan.reshape:
                return self._unblock(self._grid(parts), plan, x), {}
            return add_windows(xp, parts, plan.window, x), {}

        return y, backward


def _offsets(kernel: tuple[int, ...]) -> list[tuple[int, ...]]:
    return list(itertools.product(*(range(k) for k in kernel)))


class MaxPool2D(_MaxPool):
    """Max pooling of ``(N, C, H, W)``, as ``torch.nn.MaxPool2d(kernel_size, stride, padding)``.

    :param kernel_size: the window, an integer or a pair.
    :param stride: the step between windows (default: ``kernel_size``).
    :param padding: ``-inf`` added on each side, at most half the kernel.
    """

    _nd = 2


class MaxPool1D(_MaxPool):
    """Max pooling of ``(N, C, L)``, as ``torch.nn.MaxPool1d(kernel_size, stride, padding)``."""

    _nd = 1


# ---------------------------------------------------------------- average pooling


class _AvgPool(_Pool):
    def infer(self, x: Any) -> Any:
        return self._mean(x, self._plan(x))

    def _mean(self, x: Any, plan: _PoolPlan) -> Any:
        xp = self.xp
        if plan.reshape:
            return self._shaped(xp.mean(self._blocks(x, plan), axis=plan.window_axes), plan)
        taps = self._taps(x, plan)
        y = taps[0]
        for t in taps[1:]:
            y = y + t
        return self._shaped(y * (1.0 / len(taps)), plan)

    def apply(self, x: Any, training: bool) -> tuple[Any, Backward]:
        xp = self.xp
        plan = self._plan(x)
        y = self._mean(x, plan)
        scale = 1.0 / math.prod(self.kernel_size)

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            if not need_dx:
                return None, {}
            share = dy * scale
            if plan.reshape:
                expanded = share[(slice(None), slice(None)) + (slice(None), None) * self._nd]
                blocks = xp.broadcast_to(expanded, (dy.shape[0], *plan.blocks))
                return self._unblock(blocks, plan, x), {}
            return add_windows(xp, [share] * len(plan.window.taps), plan.window, x), {}

        return y, backward


class AvgPool2D(_AvgPool):
    """Average pooling of ``(N, C, H, W)``, as ``torch.nn.AvgPool2d(kernel_size, stride, padding)``.

    Zero padding counts in the average (PyTorch's ``count_include_pad=True``): every
    window is divided by ``kh * kw``.
    """

    _nd = 2


class AvgPool1D(_AvgPool):
    """Average pooling of ``(N, C, L)``, as ``torch.nn.AvgPool1d(kernel_size, stride, padding)``."""

    _nd = 1


class GlobalAvgPool2D(Module):
    """The mean of each channel over its whole map: ``(N, C, H, W)`` -> ``(N, C)``."""

    def infer(self, x: Any) -> Any:
        check_input(self, x, 2, None)
        # the reshape states the static shape (ONNX shape inference loses it in reductions)
        return self.xp.reshape(self.xp.mean(x, axis=(2, 3)), (-1, x.shape[1]))

    def apply(self, x: Any, training: bool) -> tuple[Any, Backward]:
        y = self.infer(x)
        xp = self.xp
        scale = 1.0 / (x.shape[2] * x.shape[3])

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            if not need_dx:
                return None, {}
            return xp.zeros_like(x) + (dy * scale)[:, :, None, None], {}

        return y, backward
