"""Convolutions: Conv1D and Conv2D, channels first, weights laid out as PyTorch's.

``Conv2D`` takes ``(N, C, H, W)`` and ``Conv1D`` ``(N, C, L)``; the weight has
shape ``(out_channels, in_channels // groups, *kernel_size)``, as
``torch.nn.Conv2d``'s, so weights and results compare one to one.

Only the Array API standard is used. The input is unrolled into columns
(im2col) from one strided slice per kernel offset,
``x[:, :, i:i + s*H_out:s, j:j + s*W_out:s]``, stacked; the convolution is then
one matrix product (a batch of them over the samples and the groups). The
backward adds the slices of the column gradient back (col2im), in place where
the arrays are writeable (``array_api_compat.is_writeable_array``) and with
``array_api_extra.at(...).add`` where they are not (JAX). The weight gradient
unrolls the columns again from the input rather than keep them (K times the
input) alive through the step. Sizes and slices are resolved once per input
shape and kept (:class:`WindowPlan`).

The pooling layers (:mod:`portnn.nn.pooling`) use the same plans.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import array_api_compat
import array_api_extra as xpx

from .._checks import check_real, count, floating_dtype
from ..backend import dtype_name, host_rng
from ..init import get_initializer
from .layers import _shaped
from .module import Backward, Module

__all__ = ["Conv1D", "Conv2D", "WindowPlan"]

_PLANS_KEPT = 16  # per-sample input shapes a layer keeps the plans of (then it starts afresh)
_SPATIAL = {1: "(N, C, L)", 2: "(N, C, H, W)"}


# ---------------------------------------------------------------- arguments


def sizes(name: str, value: Any, nd: int, minimum: int = 1) -> tuple[int, ...]:
    """An int or a sequence of ``nd`` ints, each ``>= minimum``, as a tuple (errors name ``name``)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        values: tuple[Any, ...] = (value,) * nd
    elif isinstance(value, Sequence) and not isinstance(value, str):
        values = tuple(value)
        if len(values) != nd:
            what = "an integer" if nd == 1 else f"an integer or {nd} integers"
            raise ValueError(f"{name} must be {what}, got {value!r} ({len(values)} values)")
    else:
        what = "an integer" if nd == 1 else "an integer or a pair of integers"
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must hold integers, got {value!r}")
        if int(v) < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return tuple(int(v) for v in values)


def conv_padding(
    value: Any, nd: int, kernel: tuple[int, ...], dilation: tuple[int, ...], stride: tuple[int, ...]
) -> tuple[str | tuple[int, ...], tuple[tuple[int, int], ...]]:
    """(padding as given, for the config; ``(before, after)`` per spatial axis).

    ``"same"`` pads ``dilation * (kernel - 1)`` in all, the odd one at the end, as PyTorch does.
    """
    if isinstance(value, str):
        mode = value.lower()
        if mode == "valid":
            return "valid", ((0, 0),) * nd
        if mode == "same":
            if any(s != 1 for s in stride):
                raise ValueError(
                    f"padding='same' needs stride=1 (as in PyTorch), got stride={_show(stride)}; "
                    "pass the padding as numbers"
                )
            totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
            return "same", tuple((t // 2, t - t // 2) for t in totals)
        raise ValueError(f"padding must be an integer, a tuple of them, 'valid' or 'same'; got {value!r}")
    pad = sizes("padding", value, nd, minimum=0)
    return pad, tuple((p, p) for p in pad)


def _show(t: tuple[int, ...]) -> Any:
    return t[0] if len(set(t)) == 1 else t


# ---------------------------------------------------------------- plans


class WindowPlan(NamedTuple):
    """Everything about sliding a window over one input shape, resolved once.

    ``taps`` holds one index per kernel offset, in row-major order: the strided
    slice of the padded input that the offset meets at every output position.
    """

    size: tuple[int, ...]  # the input's spatial size
    pads: tuple[tuple[int, int], ...]  # (before, after) per spatial axis
    padded: tuple[int, ...]
    out: tuple[int, ...]  # the output's spatial size
    taps: tuple[tuple[slice, ...], ...]
    interior: tuple[slice, ...] | None  # the input inside the padded array (None: no padding)


def window_plan(
    size: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    pads: tuple[tuple[int, int], ...],
    dilation: tuple[int, ...],
) -> WindowPlan | None:
    """The plan of one spatial input size, or None where the window does not fit (no output)."""
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(size, pads))
    reach = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    if any(p < r for p, r in zip(padded, reach)):
        return None
    out = tuple((p - r) // s + 1 for p, r, s in zip(padded, reach, stride))
    lead = (slice(None), slice(None))
    taps = tuple(
        lead
        + tuple(
            slice(o * d, o * d + s * (n - 1) + 1, s)
            for o, d, s, n in zip(offsets, dilation, stride, out)
        )
        for offsets in itertools.product(*(range(k) for k in kernel))
    )
    interior = None
    if any(lo or hi for lo, hi in pads):
        interior = lead + tuple(slice(lo, lo + n) for n, (lo, _) in zip(size, pads))
    return WindowPlan(size, pads, padded, out, taps, interior)


def plan_for(layer: Module, x: Any, make: Any) -> Any:
    """``layer``'s plan for the input ``x``, made by ``make(per_sample_shape)`` on first sight."""
    key = tuple(x.shape[1:])
    plans = layer.__dict__.setdefault("_plans", {})
    plan = plans.get(key)
    if plan is None:
        plan = make(key)
        if len(plans) >= _PLANS_KEPT:
            plans.clear()  # one step, safe while another thread (predict during fit) reads
        plans[key] = plan
    return plan


def check_input(layer: Module, x: Any, nd: int, channels: int | None) -> None:
    """``x`` is ``(N, C, *spatial)`` with ``channels`` channels (ValueError naming the layer)."""
    if x.ndim != nd + 2:
        raise ValueError(f"{layer.name} expects {nd + 2}-D input {_SPATIAL[nd]}, got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{layer.name} expects {channels} input channels (axis 1), got {x.shape[1]} "
            f"(input shape {tuple(x.shape)})"
        )


def too_small(layer: Module, shape: tuple[int, ...], what: str) -> ValueError:
    return ValueError(f"{layer.name}: the input (samples of shape {shape}) is smaller than {what}")


# ---------------------------------------------------------------- the window operations


def pad(xp: Any, x: Any, pads: tuple[tuple[int, int], ...], value: float) -> Any:
    """``x`` with ``value`` added before and after each spatial axis (axes 2, 3, ...)."""
    for axis, (lo, hi) in enumerate(pads, start=2):
        if lo or hi:
            # a one-wide slice of x as the filler: the batch size may be symbolic (ONNX)
            fill = xp.full_like(x[(slice(None),) * axis + (slice(0, 1), ...)], value)
            x = xp.concat([fill] * lo + [x] + [fill] * hi, axis=axis)
    return x


def add_windows(xp: Any, parts: Sequence[Any], plan: WindowPlan) -> Any:
    """The sum of each part (``(N, C, *out)``) placed at its tap of the padded input (col2im),
    unpadded."""
    first = parts[0]
    shape = (first.shape[0], first.shape[1], *plan.padded)
    out = xp.zeros(shape, dtype=first.dtype, device=array_api_compat.device(first))
    if array_api_compat.is_writeable_array(out):
        for tap, part in zip(plan.taps, parts):
            out[tap] += part
    else:
        for tap, part in zip(plan.taps, parts):
            out = xpx.at(out, tap).add(part, xp=xp)
    return out if plan.interior is None else out[plan.interior]


# ---------------------------------------------------------------- convolutions


class _ConvPlan(NamedTuple):
    window: WindowPlan
    k: int  # kernel offsets
    length: int  # output positions


class _Conv(Module):
    """A convolution over ``_nd`` spatial axes (Conv1D, Conv2D)."""

    _nd = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: Any = True,
        weight: Any = None,
        init: Any = None,
        seed: int | None = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        nd = self._nd
        self.in_channels = count("in_channels", in_channels)
        self.out_channels = count("out_channels", out_channels)
        self.kernel_size = sizes("kernel_size", kernel_size, nd)
        self.stride = sizes("stride", stride, nd)
        self.dilation = sizes("dilation", dilation, nd)
        self.groups = count("groups", groups)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"groups={self.groups} must divide in_channels={self.in_channels} "
                f"and out_channels={self.out_channels}"
            )
        self.padding, self._pads = conv_padding(padding, nd, self.kernel_size, self.dilation, self.stride)
        if isinstance(bias, bool):
            self.use_bias, bias = bias, None
        elif bias is None:
            raise TypeError("bias must be True, False or an array of the bias values, got None")
        else:
            self.use_bias = True
        self.init = init
        init_w = None if init is None else get_initializer(init)
        for name, value in (("weight", weight), ("bias", bias)):
            if value is not None:
                check_real(name, value, floating=False)
        if dtype is not None:
            dtype = floating_dtype(self.backend, dtype)
        per_group = self.in_channels // self.groups
        shape_w = (self.out_channels, per_group, *self.kernel_size)
        receptive = math.prod(self.kernel_size)
        fan_in, fan_out = per_group * receptive, self.out_channels * receptive
        bound = 1.0 / math.sqrt(fan_in)  # PyTorch's default: kaiming_uniform(a=sqrt(5)) and its bias rule
        rng = host_rng(seed)
        if weight is None:
            if init_w is None:
                weight = rng.uniform(-bound, bound, size=shape_w)
            else:
                weight = init_w(rng, shape_w, fan_in, fan_out)
            w_dtype = dtype if dtype is not None else "float32"
        else:
            w_dtype = dtype
        w = self.add_parameter("weight", _shaped("weight", weight, shape_w), dtype=w_dtype)
        if self.use_bias:
            if bias is None:
                bias = rng.uniform(-bound, bound, size=(self.out_channels,))
                b_dtype = w.dtype
            else:
                b_dtype = dtype
            self.add_parameter("bias", _shaped("bias", bias, (self.out_channels,)), dtype=b_dtype)
        self.__dict__["_plans"] = {}

    # ------------------------------------------------------------ description
    def config(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
            "dilation": list(self.dilation),
            "groups": self.groups,
            "bias": self.use_bias,
            "dtype": dtype_name(self._params["weight"].dtype),
            "init": self.init if isinstance(self.init, str) else None,
        }

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]] | None:
        """The shapes ``config`` gives the parameters (checked against a file before building)."""
        try:
            n_in = count("in_channels", config.get("in_channels"))
            n_out = count("out_channels", config.get("out_channels"))
            groups = count("groups", config.get("groups", 1))
            kernel = sizes("kernel_size", config.get("kernel_size"), cls._nd)
        except (TypeError, ValueError):
            return None  # the constructor names what is wrong
        if n_in % groups:
            return None
        shapes = {"weight": (n_out, n_in // groups, *kernel)}
        if config.get("bias", True) is not False:
            shapes["bias"] = (n_out,)
        return shapes

    def input_shape(self) -> None:
        # the channels only: the spatial size is free (export_onnx takes input_shape=)
        return None

    @property
    def weight(self) -> Any:
        return self._params["weight"]

    @property
    def bias(self) -> Any:
        return self._params.get("bias")

    def _repr_args(self) -> str:
        args = f"{self.in_channels}, {self.out_channels}, kernel_size={_show(self.kernel_size)}"
        for name, default in (("stride", 1), ("dilation", 1)):
            value = _show(getattr(self, name))
            if value != default:
                args += f", {name}={value}"
        padding = self.padding if isinstance(self.padding, str) else _show(self.padding)
        if padding not in (0, "valid"):
            args += f", padding={padding!r}"
        if self.groups != 1:
            args += f", groups={self.groups}"
        if not self.use_bias:
            args += ", bias=False"
        return args

    # ------------------------------------------------------------ computing
    def _plan(self, x: Any) -> _ConvPlan:
        def make(shape: tuple[int, ...]) -> _ConvPlan:
            window = window_plan(shape[1:], self.kernel_size, self.stride, self._pads, self.dilation)
            if window is None:
                reach = tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))
                raise too_small(self, shape, f"the (dilated) kernel {reach} after padding")
            return _ConvPlan(window, len(window.taps), math.prod(window.out))

        check_input(self, x, self._nd, self.in_channels)
        return plan_for(self, x, make)

    def _columns(self, x: Any, plan: _ConvPlan) -> Any:
        """im2col: ``(N, groups, C/groups * K, L)`` (K kernel offsets, L output positions)."""
        xp = self.xp
        window = plan.window
        xp_ = pad(xp, x, window.pads, 0.0) if window.interior is not None else x
        cols = xp.stack([xp_[tap] for tap in window.taps], axis=2)  # (N, C, K, *out)
        g = self.groups
        # the channels split into groups, then merged with the offsets: two reshapes, since a
        # chunked library (Dask) cannot split one axis and merge it with another in one
        cols = xp.reshape(cols, (-1, g, self.in_channels // g, plan.k, plan.length))
        return xp.reshape(cols, (-1, g, self.in_channels // g * plan.k, plan.length))

    def _forward(self, x: Any) -> tuple[Any, Any, _ConvPlan]:
        xp = self.xp
        plan = self._plan(x)
        cols = self._columns(x, plan)
        g = self.groups
        w = xp.reshape(self._params["weight"], (g, self.out_channels // g, -1))
        y = w @ cols  # (N, g, O/g, L): one matrix product per sample and group
        y = xp.reshape(y, (-1, self.out_channels, *plan.window.out))
        b = self._params.get("bias")
        if b is not None:
            b = xp.reshape(b, (self.out_channels,) + (1,) * self._nd)
            if b.dtype == y.dtype:
                y += b  # in place: the product is a fresh array this layer owns
            else:
                y = y + b
        return y, cols, plan

    def infer(self, x: Any) -> Any:
        return self._forward(x)[0]

    def apply(self, x: Any, training: bool) -> tuple[Any, Backward]:
        y, cols, plan = self._forward(x)
        w = self._params["weight"]
        has_bias = "bias" in self._params
        frozen = not self._trainable
        xp = self.xp
        g, o = self.groups, self.out_channels

        # the columns are K times the input: the backward unrolls them again rather than keep
        # them alive through the rest of the step (a lower peak, fewer fresh pages on the host)
        del cols

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            dyg = xp.reshape(dy, (-1, g, o // g, plan.length))
            grads = {}
            if not frozen:
                cols = self._columns(x, plan)
                dw = xp.sum(dyg @ xp.matrix_transpose(cols), axis=0)  # (g, O/g, C/g * K)
                del cols
                grads["weight"] = xp.reshape(dw, w.shape)
                if has_bias:
                    grads["bias"] = xp.sum(dy, axis=(0, *range(2, 2 + self._nd)))
            if not need_dx:
                return None, grads
            wg = xp.reshape(w, (g, o // g, -1))
            dcols = xp.matrix_transpose(wg) @ dyg  # (N, g, C/g * K, L)
            dcols = xp.reshape(dcols, (-1, self.in_channels, plan.k, *plan.window.out))
            parts = [dcols[:, :, k, ...] for k in range(plan.k)]
            return add_windows(xp, parts, plan.window), grads

        return y, backward


class Conv2D(_Conv):
    """2-D convolution of ``(N, C_in, H, W)`` into ``(N, C_out, H_out, W_out)``, as ``torch.nn.Conv2d``.

    ``H_out = (H + pad_top + pad_bottom - dilation * (kh - 1) - 1) // stride + 1`` (likewise ``W_out``).

    :param in_channels: channels of the input (axis 1).
    :param out_channels: channels of the output.
    :param kernel_size: ``kh`` and ``kw``: an integer or a pair.
    :param stride: step between windows, an integer or a pair.
    :param padding: zeros added on each side: an integer, a pair (rows, columns), ``"valid"``
        (none) or ``"same"`` (output as large as the input; only with ``stride=1``; with an
        even kernel the extra row and column go at the end, as in PyTorch).
    :param dilation: spacing between kernel elements, an integer or a pair.
    :param groups: input and output channels split into ``groups`` independent convolutions;
        it divides both.
    :param bias: True (a learned bias per output channel), False (none), or the bias values.
    :param weight: the weight values, shape ``(out_channels, in_channels // groups, kh, kw)``,
        taken as given (dtype included unless ``dtype`` is given).
    :param init: None (PyTorch's default: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, with
        ``fan_in = in_channels // groups * kh * kw``), or an initializer of
        :mod:`portnn.init` (by name or a callable) for the weight. The bias is drawn by
        PyTorch's rule in both cases. Drawn on the host, so a seed gives the same numbers
        on every backend.
    :param seed: seed of the host generator the weights are drawn from.
    :param dtype: the parameters' dtype (default float32).
    """

    _nd = 2


class Conv1D(_Conv):
    """1-D convolution of ``(N, C_in, L)`` into ``(N, C_out, L_out)``, as ``torch.nn.Conv1d``.

    The arguments are those of :class:`Conv2D` with one spatial axis: ``kernel_size``,
    ``stride``, ``padding`` and ``dilation`` are integers (or one-element tuples);
    the weight has shape ``(out_channels, in_channels // groups, k)``.
    """

    _nd = 1
