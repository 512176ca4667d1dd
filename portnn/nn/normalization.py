"""Normalization and dropout layers: BatchNorm, LayerNorm and Dropout.

They follow the :class:`~portnn.nn.Module` protocol: ``apply(x, training)``
returns ``(y, backward)``, and the math uses only ``self.xp``. Their behaviour
depends on the mode: ``fit`` runs them in training mode, ``predict`` and
``evaluate`` in inference mode.

Dropout draws its masks on the host from a NumPy generator, so the same seed
gives the same masks on every backend. A training loop that needs the draws
elsewhere (a compiled step passes them in as arrays; data-parallel ranks each
keep their rows of the global batch's mask) says so through one channel,
``with dropout_noise(source):``; no layer is patched. BatchNorm keeps its running statistics
as buffers, which ``to()`` moves and ``copy()`` copies.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np  # host side only: Dropout draws its masks from a seeded host generator

from .._checks import check_features, count, positive_number
from ..backend import Backend, dtype_name
from .module import Backward, Module

__all__ = ["BatchNorm", "Dropout", "LayerNorm", "NoiseSource", "dropout_noise", "host_noise"]

#: ``source(layer, shape) -> uniform [0, 1) draws`` for one mask of one Dropout layer
NoiseSource = Callable[["Dropout", tuple[int, ...]], Any]

_noise_source: ContextVar[NoiseSource | None] = ContextVar("portnn_dropout_noise", default=None)


def host_noise(layer: Dropout, shape: tuple[int, ...]) -> Any:
    """The draws of ``layer``'s own host generator: what every mask is made of unless a
    :func:`dropout_noise` block says otherwise."""
    return layer.generator.random(shape)


@contextmanager
def dropout_noise(source: NoiseSource) -> Iterator[None]:
    """Every Dropout mask drawn inside the block comes from ``source(layer, shape)``.

    The one channel through which a training step decides where dropout's
    randomness comes from: ``jit=True`` passes pre-drawn arrays into the compiled
    program, data-parallel training gives each rank its rows of the global batch's
    mask, and the two compose (the compiled step draws through the rank's source).
    The block is local to the thread (a context variable).
    """
    if not callable(source):
        raise TypeError(f"source must be callable as source(layer, shape), got {type(source).__name__}")
    token = _noise_source.set(source)
    try:
        yield
    finally:
        _noise_source.reset(token)


def current_noise() -> NoiseSource:
    """The source masks come from here and now (the layer's own generator outside any block)."""
    return _noise_source.get() or host_noise


def _probability(name: str, value: Any, *, upper_inclusive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    ok = 0.0 <= v <= 1.0 if upper_inclusive else 0.0 <= v < 1.0
    if not ok:  # NaN fails both comparisons
        bound = "[0, 1]" if upper_inclusive else "[0, 1)"
        raise ValueError(f"{name} must be in {bound}, got {value!r}")
    return v


def _seed(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"seed must be None or an integer, got {type(value).__name__}")
    if int(value) < 0:
        raise ValueError(f"seed must be >= 0, got {value!r}")
    return int(value)


def _filled(backend: Backend, value: float, features: int, dtype: Any) -> Any:
    dt = backend.dtype(dtype if dtype is not None else "float32")
    xp = backend.xp
    if not xp.isdtype(dt, "real floating"):
        raise TypeError(f"dtype must be a floating dtype, got {dtype_name(dt)!r}")
    return xp.full((features,), value, dtype=dt, device=backend.device)


class _Affine(Module):
    """A normalization layer's learned scale ``weight`` and shift ``bias``."""

    preserves_shape = True

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]] | None:
        """The shapes ``config`` gives the parameters and buffers (checked against a file first)."""
        features = config.get("features")
        if isinstance(features, bool) or not isinstance(features, int):
            return None
        names = ("weight", "bias", "running_mean", "running_var") if cls is BatchNorm else ("weight", "bias")
        return dict.fromkeys(names, (features,))

    def input_shape(self) -> tuple[int, ...]:
        return (self.features,)

    @property
    def weight(self) -> Any:
        return self._params["weight"]

    @property
    def bias(self) -> Any:
        return self._params["bias"]


# ---------------------------------------------------------------- Dropout


class Dropout(Module):
    """Inverted dropout: in training mode, zero each element with probability ``p``.

    Kept elements are scaled by ``1 / (1 - p)``, so the expected output equals
    the input and inference mode is the identity. Masks are drawn on the host
    from ``numpy.random.default_rng(seed)`` and converted once per call, so the
    same seed gives the same masks on every backend. The generator's state is
    saved with the model (:meth:`extra_state`).

    :param p: probability of zeroing an element, in [0, 1); 0 is the identity.
    :param seed: seed of the host generator (None: fresh entropy).
    """

    preserves_shape = True

    def __init__(self, p: float = 0.5, seed: int | None = None) -> None:
        super().__init__()
        self.p = _probability("p", p, upper_inclusive=False)
        self.seed = _seed(seed)
        #: the host generator every mask is drawn from
        self.generator = np.random.default_rng(self.seed)

    def config(self) -> dict[str, Any]:
        return {"p": self.p, "seed": self.seed}

    def extra_state(self) -> dict[str, Any]:
        """The host generator's ``bit_generator.state`` (JSON-friendly)."""
        return self.generator.bit_generator.state

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore the host generator from what :meth:`extra_state` returned.

        Every entry is checked first (ValueError naming it): the generator's
        name, and each number an integer in its range, so a state from a file
        never overflows inside NumPy or leaves the generator half set.
        """
        if not state:
            return
        _check_generator_state(state, self.generator.bit_generator)
        previous = self.generator.bit_generator.state
        try:
            self.generator.bit_generator.state = dict(state)
        except (TypeError, ValueError, OverflowError) as e:
            self.generator.bit_generator.state = previous
            raise ValueError(f"Dropout generator state is not valid: {e}") from None

    def uniform(self, shape: tuple[int, ...]) -> Any:
        """Uniform [0, 1) draws for one mask: from the generator, or from the source of the
        enclosing :func:`dropout_noise` block."""
        source = _noise_source.get()
        return self.generator.random(shape) if source is None else source(self, shape)

    def apply(self, x: Any, training: bool) -> tuple[Any, Backward]:
        if not training or self.p == 0.0:
            return x, lambda dy, need_dx=True: (dy, {})
        keep = self.uniform(tuple(x.shape)) >= self.p
        mask = self._backend.asarray(keep, x.dtype) * (1.0 / (1.0 - self.p))
        y = x * mask

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            return (dy * mask if need_dx else None), {}

        return y, backward

    def _repr_args(self) -> str:
        return f"p={self.p}"


# the numbers of a PCG64 state (numpy's default generator): entry -> exclusive upper bound
_PCG64_BOUNDS = {"state.state": 2**128, "state.inc": 2**128, "has_uint32": 2, "uinteger": 2**32}


def _check_generator_state(state: Mapping[str, Any], bit_generator: Any) -> None:
    """A generator state (``bit_generator.state``) from outside, checked entry by entry."""
    if not isinstance(state, Mapping):
        raise ValueError(f"Dropout generator state must be a mapping, got {type(state).__name__}")
    expected = type(bit_generator).__name__
    if state.get("bit_generator") != expected:
        raise ValueError(
            f"Dropout generator state entry 'bit_generator' must be {expected!r}, "
            f"got {state.get('bit_generator')!r}"
        )
    if expected != "PCG64":
        return  # numpy itself checks other generators
    inner = state.get("state")
    if not isinstance(inner, Mapping):
        raise ValueError(f"Dropout generator state entry 'state' must be a mapping, got {inner!r}")
    extra = sorted(set(map(str, state)) - {"bit_generator", "state", "has_uint32", "uinteger"})
    extra += sorted(f"state.{k}" for k in set(map(str, inner)) - {"state", "inc"})
    if extra:
        raise ValueError(f"Dropout generator state has unknown entries {extra}")
    for entry, bound in _PCG64_BOUNDS.items():
        value = inner.get(entry[6:]) if entry.startswith("state.") else state.get(entry)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < bound:
            limit = f"2**{bound.bit_length() - 1}" if bound > 2 else str(bound)
            raise ValueError(
                f"Dropout generator state entry {entry!r} must be an integer in [0, {limit}), got {value!r}"
            )


# ---------------------------------------------------------------- BatchNorm


class BatchNorm(_Affine):
    """Batch normalization, like ``torch.nn.BatchNorm1d`` and ``BatchNorm2d``.

    It takes 2-D input ``(samples, features)``, and normalizes the channel axis
    (axis 1) of 3-D ``(N, C, L)`` and 4-D ``(N, C, H, W)`` input, with statistics
    over every other axis (``BatchNorm1d`` on 3-D, ``BatchNorm2d`` on 4-D input).
    In training mode each feature (channel) is normalized with the batch mean and
    (biased) variance, and the running statistics are updated as
    ``running = (1 - momentum) * running + momentum * batch_statistic``, with the
    unbiased batch variance for ``running_var``. In inference mode the running
    statistics are used. The output is ``x_hat * weight + bias``.

    :param features: number of input features (channels of 3-D and 4-D input).
    :param momentum: weight of the new batch statistic in the running statistics, in [0, 1].
    :param eps: added to the variance before the square root.
    :param dtype: dtype name of parameters and running statistics (default ``"float32"``).
    """

    # training needs at least two samples per batch (fit checks its last batch)
    needs_batch_statistics = True

    def __init__(
        self, features: int, momentum: float = 0.1, eps: float = 1e-5, dtype: Any = None
    ) -> None:
        super().__init__()
        self.features = count("features", features)
        self.momentum = _probability("momentum", momentum, upper_inclusive=True)
        self.eps = positive_number("eps", eps)
        backend = self._backend
        self.add_parameter("weight", _filled(backend, 1.0, self.features, dtype))
        self.add_parameter("bias", _filled(backend, 0.0, self.features, dtype))
        self.add_buffer("running_mean", _filled(backend, 0.0, self.features, dtype))
        self.add_buffer("running_var", _filled(backend, 1.0, self.features, dtype))

    def config(self) -> dict[str, Any]:
        return {
            "features": self.features,
            "momentum": self.momentum,
            "eps": self.eps,
            "dtype": dtype_name(self._params["weight"].dtype),
        }

    def check_buffer(self, key: str, value: Any, label: str) -> None:
        """A variance is never negative: a negative ``running_var`` would give NaN outputs."""
        if key == "running_var":
            xp = self.xp
            if bool(xp.any(value < 0)):
                raise ValueError(f"{label} is a variance and must be >= 0; it holds negative values")

    def input_shape(self) -> None:
        # a sample is (C,) or (C, L) or (C, H, W): the features fix no sample shape
        # (export_onnx takes input_shape=; a Dense after it states the width of 2-D input)
        return None

    @property
    def running_mean(self) -> Any:
        return self._buffers["running_mean"]

    @property
    def running_var(self) -> Any:
        return self._buffers["running_var"]

    def apply(self, x: Any, training: bool) -> tuple[Any, Backward]:
        xp = self.xp
        if x.ndim != 2:
            return self._apply_channels(x, training)
        check_features(self.name, self.features, x)
        w = self._params["weight"]
        b = self._params["bias"]
        n = x.shape[0]
        if training:
            if n < 2:
                raise ValueError(
                    f"{self.name} needs more than 1 sample per batch in training mode, "
                    f"got input shape {tuple(x.shape)}"
                )
            mean = xp.mean(x, axis=0)
            xc = x - mean
            var = xp.mean(xc * xc, axis=0)
            self._update_running(mean, var * (n / (n - 1)))
        else:
            mean = self._buffers["running_mean"]
            var = self._buffers["running_var"]
            xc = x - mean
        inv = 1.0 / xp.sqrt(var + self.eps)
        x_hat = xc * inv
        y = x_hat * w + b
        frozen = not self._trainable

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            grads = {} if frozen else {"weight": xp.sum(dy * x_hat, axis=0), "bias": xp.sum(dy, axis=0)}
            if not need_dx:
                return None, grads
            dx_hat = dy * w
            if training:
                # through the batch mean and variance as well
                dx = inv * (
                    dx_hat
                    - xp.mean(dx_hat, axis=0)
                    - x_hat * xp.mean(dx_hat * x_hat, axis=0)
                )
            else:
                dx = dx_hat * inv
            return dx, grads

        return y, backward

    def _apply_channels(self, x: Any, training: bool) -> tuple[Any, Backward]:
        """3-D and 4-D input: one statistic per channel (axis 1), over every other axis."""
        xp = self.xp
        c = self.features
        if x.ndim not in (3, 4) or x.shape[1] != c:
            raise ValueError(
                f"{self.name} expects 2-D input (samples, {c} features), or 3-D (N, C, L) or 4-D "
                f"(N, C, H, W) input with C = {c} channels; got shape {tuple(x.shape)}"
            )
        axes = (0, *range(2, x.ndim))
        per_channel = (c,) + (1,) * (x.ndim - 2)  # broadcasts against (N, C, ...)
        w = xp.reshape(self._params["weight"], per_channel)
        b = xp.reshape(self._params["bias"], per_channel)
        if training:
            n = math.prod(x.shape[i] for i in axes)
            if n < 2:
                raise ValueError(
                    f"{self.name} needs more than 1 value per channel in training mode, "
                    f"got input shape {tuple(x.shape)}"
                )
            mean = xp.mean(x, axis=axes)
            xc = x - xp.reshape(mean, per_channel)
            var = xp.mean(xc * xc, axis=axes)
            self._update_running(mean, var * (n / (n - 1)))
        else:
            var = self._buffers["running_var"]
            xc = x - xp.reshape(self._buffers["running_mean"], per_channel)
        inv = xp.reshape(1.0 / xp.sqrt(var + self.eps), per_channel)
        x_hat = xc * inv
        y = x_hat * w + b
        frozen = not self._trainable

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            grads = {} if frozen else {"weight": xp.sum(dy * x_hat, axis=axes), "bias": xp.sum(dy, axis=axes)}
            if not need_dx:
                return None, grads
            dx_hat = dy * w
            if training:
                # through the batch mean and variance as well
                dx = inv * (
                    dx_hat
                    - xp.mean(dx_hat, axis=axes, keepdims=True)
                    - x_hat * xp.mean(dx_hat * x_hat, axis=axes, keepdims=True)
                )
            else:
                dx = dx_hat * inv
            return dx, grads

        return y, backward

    def _update_running(self, mean: Any, var_unbiased: Any) -> None:
        # rebind, never mutate: a caller may hold the old arrays
        m = self.momentum
        for key, batch in (("running_mean", mean), ("running_var", var_unbiased)):
            old = self._buffers[key]
            new = (1.0 - m) * old + m * batch
            if new.dtype != old.dtype:
                new = self.xp.astype(new, old.dtype)
            self._buffers[key] = new

    def _repr_args(self) -> str:
        return f"{self.features}, momentum={self.momentum}, eps={self.eps}"


# ---------------------------------------------------------------- LayerNorm


class LayerNorm(_Affine):
    """Layer normalization over the last axis, like ``torch.nn.LayerNorm(features)``.

    Each sample is normalized with its own mean and (biased) variance over the
    last axis, then scaled by ``weight`` and shifted by ``bias``. It behaves the
    same in training and inference mode.

    :param features: size of the last axis.
    :param eps: added to the variance before the square root.
    :param dtype: dtype name of the parameters (default ``"float32"``).
    """

    def __init__(self, features: int, eps: float = 1e-5, dtype: Any = None) -> None:
        super().__init__()
        self.features = count("features", features)
        self.eps = positive_number("eps", eps)
        self.add_parameter("weight", _filled(self._backend, 1.0, self.features, dtype))
        self.add_parameter("bias", _filled(self._backend, 0.0, self.features, dtype))

    def config(self) -> dict[str, Any]:
        return {
            "features": self.features,
            "eps": self.eps,
            "dtype": dtype_name(self._params["weight"].dtype),
        }

    def apply(self, x: Any, training: bool) -> tuple[Any, Backward]:
        xp = self.xp
        check_features(self.name, self.features, x)
        w = self._params["weight"]
        b = self._params["bias"]
        mean = xp.mean(x, axis=-1, keepdims=True)
        xc = x - mean
        var = xp.mean(xc * xc, axis=-1, keepdims=True)
        inv = 1.0 / xp.sqrt(var + self.eps)
        x_hat = xc * inv
        y = x_hat * w + b
        frozen = not self._trainable

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            f = self.features
            flat_dy = xp.reshape(dy, (-1, f))
            grads = {} if frozen else {
                "weight": xp.sum(flat_dy * xp.reshape(x_hat, (-1, f)), axis=0),
                "bias": xp.sum(flat_dy, axis=0),
            }
            if not need_dx:
                return None, grads
            dx_hat = dy * w
            dx = inv * (
                dx_hat
                - xp.mean(dx_hat, axis=-1, keepdims=True)
                - x_hat * xp.mean(dx_hat * x_hat, axis=-1, keepdims=True)
            )
            return dx, grads

        return y, backward

    def _repr_args(self) -> str:
        return f"{self.features}, eps={self.eps}"
