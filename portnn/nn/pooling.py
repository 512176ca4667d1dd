"""Pooling: MaxPool1D/2D, AvgPool1D/2D and GlobalAvgPool2D, channels first, as PyTorch's.

``MaxPool2D(kernel_size, stride=None, padding=0)`` takes ``(N, C, H, W)`` to
``(N, C, H_out, W_out)`` with ``H_out = (H + 2 * padding - kernel) // stride + 1``
(sizes round down); the stride defaults to the kernel size. Max pooling pads
with ``-inf``, so padding never wins; of several equal maxima in a window the
first in row-major order gets the gradient, as in PyTorch. Average pooling
pads with zeros that count in the average (PyTorch's ``count_include_pad=True``).

Only the Array API standard: a pooling whose kernel equals its stride, without
padding, reshapes ``(N, C, H, W)`` to ``(N, C, H_out, k, W_out, k)`` (the rows and
columns a window never reaches are cut first) and reduces the views of its kernel
offsets elementwise, one window axis at a time. Max pooling in training keeps, per
axis, where the first maximum was (small bool masks); its backward takes the
gradient back one axis at a time, a 0/1 factor times the gradient per offset,
stacked into that shape: a few passes over contiguous arrays, no scatter.
Any other one takes one strided slice of the padded input per kernel offset (the
plans of :mod:`portnn.nn.conv`), and its backward adds them back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import array_api_compat

from .conv import WindowPlan, add_windows, check_input, pad, plan_for, sizes, too_small, window_plan
from .module import Backward, Module

__all__ = ["AvgPool1D", "AvgPool2D", "GlobalAvgPool2D", "MaxPool1D", "MaxPool2D"]


class _PoolPlan(NamedTuple):
    window: WindowPlan
    reshape: bool  # kernel == stride, no padding: windows by reshaping
    cut: tuple[slice, ...] | None  # rows/columns no window reaches, cut before reshaping
    blocks: tuple[int, ...]  # (C, out_0, k_0, out_1, k_1, ...) of the reshape


class _Pool(Module):
    """A pooling over ``_nd`` spatial axes; subclasses reduce the windows and give the backward."""

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
            return _PoolPlan(window, reshape, cut, blocks)

        check_input(self, x, nd, None)
        return plan_for(self, x, make)

    def _shaped(self, y: Any, plan: _PoolPlan) -> Any:
        """``y`` with its static shape stated (ONNX shape inference loses it on the way)."""
        return self.xp.reshape(y, (-1, plan.blocks[0], *plan.window.out))

    def _blocks(self, x: Any, plan: _PoolPlan) -> Any:
        """The reshaping path: ``x`` as ``(N, C, out_0, k_0, out_1, k_1, ...)``."""
        if plan.cut is not None:
            x = x[plan.cut]
        return self.xp.reshape(x, (-1, *plan.blocks))

    def _reduce_blocks(self, blocks: Any, op: Any, masks: list[Any] | None = None) -> Any:
        """``op`` over each window of the blocks, one window axis at a time from the last
        (elementwise over views: NumPy's reductions over small strided axes are far slower).

        With ``masks`` (a list, max pooling in training) it also appends, per window axis in
        that order, where each offset of the axis holds the first maximum (:func:`_first_maxima`).
        The last axis first is what makes those the first maxima in row-major order: the first
        of the rows whose maximum is the window's, and in it the first column that holds it.
        """
        y = blocks
        for axis in reversed(range(self._nd)):
            at = 3 + 2 * axis
            views = [y[(slice(None),) * at + (j, ...)] for j in range(self.kernel_size[axis])]
            y = views[0]
            for v in views[1:]:
                y = op(y, v)
            if masks is not None:
                masks.append(_first_maxima(views, y))
        return y

    def _unreduce(self, d: Any, spread: Any, plan: _PoolPlan) -> Any:
        """The input gradient from the output's: back through each window axis (the first one
        first), ``spread(axis, d)`` giving the shares of that axis's offsets, stacked into the
        blocks' shape; then the input's shape (zeros where no window reached)."""
        xp = self.xp
        for axis in range(self._nd):
            d = xp.stack(spread(axis, d), axis=3 + 2 * axis)
        n = d.shape[0]
        covered = tuple(o * k for o, k in zip(plan.window.out, self.kernel_size))
        dx = xp.reshape(d, (n, plan.blocks[0], *covered))
        if plan.cut is not None:
            dx = pad(xp, dx, tuple((0, s - c) for s, c in zip(plan.window.size, covered)), 0.0)
        return dx

    def _windows(self, x: Any, plan: _PoolPlan) -> list[Any]:
        """The general path: one strided slice of the padded input per kernel offset, each
        ``(N, C, *out)``: what that offset meets in every window."""
        window = plan.window
        padded = pad(self.xp, x, window.pads, self._fill) if window.interior is not None else x
        return [padded[tap] for tap in window.taps]


def _show(t: tuple[int, ...]) -> Any:
    return t[0] if len(set(t)) == 1 else t


def _first_maxima(views: list[Any], m: Any) -> list[Any]:
    """Where each view holds the first maximum ``m`` of its window: bool, one per view (the
    last one takes what no other took); None for a single view (it takes everything)."""
    wins, taken = [], None
    for v in views[:-1]:
        hit = v == m
        if taken is None:
            taken = hit
        else:
            hit = hit & ~taken
            taken = taken | hit
        wins.append(hit)
    return wins + [None if taken is None else ~taken]


def _masked(xp: Any, mask: Any, d: Any) -> Any:
    """``d`` where ``mask`` is True, 0 elsewhere: a 0/1 factor times ``d`` (NumPy's where()
    branches and is several times slower on masks like these)."""
    if mask is None:
        return d
    f = xp.astype(mask, d.dtype)
    if array_api_compat.is_writeable_array(f):
        f *= d
        return f
    return f * d


# ---------------------------------------------------------------- max pooling


class _MaxPool(_Pool):
    _fill = -math.inf

    def _max(self, x: Any, plan: _PoolPlan, masks: list[Any] | None = None) -> Any:
        """The output; with ``masks`` (a list) also where the first maxima were: per window
        axis (the reshaping path) or one list for the windows (the general path)."""
        xp = self.xp
        if plan.reshape:
            return self._shaped(self._reduce_blocks(self._blocks(x, plan), xp.maximum, masks), plan)
        windows = self._windows(x, plan)
        y = windows[0]
        for w in windows[1:]:
            y = xp.maximum(y, w)
        if masks is not None:
            masks.append(_first_maxima(windows, y))
        return self._shaped(y, plan)

    def infer(self, x: Any) -> Any:
        return self._max(x, self._plan(x))

    def apply(self, x: Any, training: bool) -> tuple[Any, Backward]:
        xp = self.xp
        plan = self._plan(x)
        # the first maximum of each window, in row-major order, takes the gradient (as PyTorch)
        masks: list[Any] = []
        y = self._max(x, plan, masks)
        masks.reverse()  # the first window axis first

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            if not need_dx:
                return None, {}
            if plan.reshape:
                shares = lambda axis, d: [_masked(xp, m, d) for m in masks[axis]]
                return self._unreduce(dy, shares, plan), {}
            parts = [_masked(xp, m, dy) for m in masks[0]]
            return add_windows(xp, parts, plan.window), {}

        return y, backward


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
    def _mean(self, x: Any, plan: _PoolPlan) -> Any:
        xp = self.xp
        if plan.reshape:
            y = self._reduce_blocks(self._blocks(x, plan), xp.add)
        else:
            windows = self._windows(x, plan)
            y = windows[0]
            for w in windows[1:]:
                y = y + w
        return self._shaped(y * (1.0 / math.prod(self.kernel_size)), plan)

    def infer(self, x: Any) -> Any:
        return self._mean(x, self._plan(x))

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
                return self._unreduce(share, lambda axis, d: [d] * self.kernel_size[axis], plan), {}
            return add_windows(xp, [share] * len(plan.window.taps), plan.window), {}

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
        shape = tuple(x.shape)  # not x: the backward keeps no input alive
        scale = 1.0 / (shape[2] * shape[3])

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            if not need_dx:
                return None, {}
            dx = xp.zeros(shape, dtype=dy.dtype, device=array_api_compat.device(dy))
            return dx + (dy * scale)[:, :, None, None], {}

        return y, backward
