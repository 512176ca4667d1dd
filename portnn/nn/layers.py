"""Layers: Dense, the activations, Flatten and Reshape.

Each follows the :class:`~portnn.nn.Module` protocol: ``apply(x, training)``
returns ``(y, backward)``, and the math uses only ``self.xp``. ``Dense`` acts
on the last axis of inputs of any rank (like ``torch.nn.Linear``); the
activations act elementwise (Softmax on the last axis).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from .. import functional as F
from .._checks import check_features, check_real, count, floating_dtype, positive_number
from ..backend import dtype_name, host_rng
from ..init import get_initializer
from .module import Backward, Module

__all__ = [
    "ELU",
    "GELU",
    "Dense",
    "Flatten",
    "Identity",
    "LeakyReLU",
    "ReLU",
    "Reshape",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "Softplus",
    "Step",
    "Tanh",
]


# ---------------------------------------------------------------- Dense


class Dense(Module):
    """Fully connected layer: ``y = x @ weight + bias``, ``weight`` of shape (in, out).

    It acts on the last axis: an input of shape ``(..., in_features)`` gives
    ``(..., out_features)``. ``weight``/``bias`` array-likes are taken as given,
    dtype included. Otherwise they are drawn by ``init`` (and ``bias_init``)
    from a host generator seeded with ``seed``, so the same seed gives the same
    numbers on every backend. ``dtype`` defaults to float32. ``l1``/``l2`` add
    ``l1 * sum(|weight|) + l2 * sum(weight ** 2)`` to the training loss (Keras's
    kernel regularizers).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        weight: Any = None,
        bias: Any = None,
        init: Any = "xavier_uniform",
        seed: int | None = None,
        dtype: Any = None,
        *,
        bias_init: Any = "zeros",
        use_bias: bool = True,
        l1: float = 0.0,
        l2: float = 0.0,
    ) -> None:
        super().__init__()
        self.l1 = positive_number("l1", l1, allow_zero=True)
        self.l2 = positive_number("l2", l2, allow_zero=True)
        self.in_features = count("in_features", in_features)
        self.out_features = count("out_features", out_features)
        self.use_bias = bool(use_bias) or bias is not None
        self.init = init
        self.bias_init = bias_init
        # the initializer names are checked even when explicit arrays make them unused
        init_w, init_b = get_initializer(init), get_initializer(bias_init)
        for name, value in (("weight", weight), ("bias", bias)):
            if value is not None:
                check_real(name, value, floating=False)  # any library: no bool or complex
        if dtype is not None:
            dtype = floating_dtype(self.backend, dtype)
        shape_w = (self.in_features, self.out_features)
        rng = host_rng(seed)
        if weight is None:
            weight = init_w(rng, shape_w, self.in_features, self.out_features)
            w_dtype = dtype if dtype is not None else "float32"
        else:
            w_dtype = dtype
        w = self.add_parameter("weight", _shaped("weight", weight, shape_w), dtype=w_dtype)
        if self.use_bias:
            if bias is None:
                bias = init_b(rng, (self.out_features,), self.in_features, self.out_features)
                b_dtype = w.dtype
            else:
                b_dtype = dtype
            self.add_parameter("bias", _shaped("bias", bias, (self.out_features,)), dtype=b_dtype)

    def config(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "use_bias": self.use_bias,
            "dtype": dtype_name(self._params["weight"].dtype),
            "init": self.init if isinstance(self.init, str) else "xavier_uniform",
            "bias_init": self.bias_init if isinstance(self.bias_init, str) else "zeros",
            "l1": self.l1,
            "l2": self.l2,
        }

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]] | None:
        """The shapes ``config`` gives the parameters (checked against a file before building)."""
        n_in, n_out = _size(config, "in_features"), _size(config, "out_features")
        if n_in is None or n_out is None:
            return None
        shapes = {"weight": (n_in, n_out)}
        if bool(config.get("use_bias", True)):
            shapes["bias"] = (n_out,)
        return shapes

    def input_shape(self) -> tuple[int, ...]:
        return (self.in_features,)

    def has_penalty(self) -> bool:
        return bool(self.l1 or self.l2) and self.trainable

    def penalty(self) -> tuple[Any, dict[str, Any]]:
        xp = self.xp
        w = self._params["weight"]
        value: Any = 0.0
        grad: Any = 0.0
        if self.l1:
            value = value + self.l1 * xp.sum(xp.abs(w))
            grad = grad + self.l1 * xp.sign(w)
        if self.l2:
            value = value + self.l2 * xp.sum(w * w)
            grad = grad + (2.0 * self.l2) * w
        return value, {"weight": grad}

    @property
    def weight(self) -> Any:
        return self._params["weight"]

    @property
    def bias(self) -> Any:
        return self._params.get("bias")

    def infer(self, x: Any) -> Any:
        if x.shape[-1] != self.in_features:
            check_features(self.name, self.in_features, x)
        lead = None
        if x.ndim > 2:  # one matrix product over every leading axis (the samples first)
            lead = tuple(x.shape[1:-1])
            x = self.xp.reshape(x, (-1, self.in_features))
        y = x @ self._params["weight"]
        b = self._params.get("bias")
        if b is not None:
            if b.dtype == y.dtype:
                y += b  # in place: the product is a fresh array this layer owns
            else:
                y = y + b
        if lead is not None:
            y = self.xp.reshape(y, (-1, *lead, self.out_features))  # -1: the batch may be symbolic (ONNX)
        return y

    def apply(self, x: Any, training: bool) -> tuple[Any, Backward]:
        y = self.infer(x)
        w = self._params["weight"]
        b = self._params.get("bias")
        frozen = not self._trainable
        xp = self.xp

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            grads = {}
            if not frozen:  # a frozen layer's gradients are never used
                if x.ndim == 2:
                    grads["weight"] = x.T @ dy
                    flat_dy = dy
                else:  # every leading axis is a batch axis
                    flat_dy = xp.reshape(dy, (-1, self.out_features))
                    grads["weight"] = xp.matrix_transpose(xp.reshape(x, (-1, self.in_features))) @ flat_dy
                if b is not None:
                    grads["bias"] = xp.sum(flat_dy, axis=0)
            return (dy @ w.T if need_dx else None), grads

        return y, backward

    def _repr_args(self) -> str:
        return f"{self.in_features}, {self.out_features}"


def _shaped(name: str, value: Any, shape: tuple[int, ...]) -> Any:
    """``value`` if it has ``shape``: a ValueError naming the argument before anything is copied."""
    got = getattr(value, "shape", None)
    if got is None:
        import numpy as np  # host side only: the shape of a nested list

        got = np.shape(value)
    if tuple(got) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(got)}")
    return value


def _size(config: dict[str, Any], key: str) -> int | None:
    value = config.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# ---------------------------------------------------------------- changing rank


class Flatten(Module):
    """Flatten every axis but the first (the samples): ``(N, d1, d2, ...)`` -> ``(N, d1 * d2 * ...)``."""

    def apply(self, x: Any, training: bool) -> tuple[Any, Backward]:
        xp = self.xp
        shape = tuple(x.shape)
        y = xp.reshape(x, (-1, math.prod(shape[1:])))  # -1: the batch may be symbolic (ONNX)
        return y, lambda dy, need_dx=True: ((xp.reshape(dy, shape) if need_dx else None), {})


class Reshape(Module):
    """Give each sample the shape ``shape`` (one entry may be -1): ``(N, ...)`` -> ``(N, *shape)``."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
            shape = (int(shape),)
        if not isinstance(shape, Sequence) or isinstance(shape, str) or not shape:
            raise TypeError(f"shape must be a non-empty tuple of integers, got {shape!r}")
        for i, s in enumerate(shape):
            if isinstance(s, bool) or not isinstance(s, numbers.Integral) or (s < 1 and s != -1):
                raise ValueError(f"shape[{i}] must be an integer >= 1 or -1, got {s!r}")
        if sum(1 for s in shape if s == -1) > 1:
            raise ValueError(f"shape may hold one -1 at most, got {tuple(shape)}")
        self.shape = tuple(int(s) for s in shape)

    def config(self) -> dict[str, Any]:
        return {"shape": list(self.shape)}

    def apply(self, x: Any, training: bool) -> tuple[Any, Backward]:
        xp = self.xp
        shape = tuple(x.shape)
        size, known = math.prod(shape[1:]), math.prod(s for s in self.shape if s != -1)
        if (-1 in self.shape and size % known) or (-1 not in self.shape and size != known):
            raise ValueError(
                f"{self.name} cannot reshape samples of shape {shape[1:]} ({size} values) "
                f"to {self.shape} (input shape {shape})"
            )
        per_sample = tuple(size // known if s == -1 else s for s in self.shape)
        y = xp.reshape(x, (-1, *per_sample))  # -1: the batch may be symbolic (ONNX)
        return y, lambda dy, need_dx=True: ((xp.reshape(dy, shape) if need_dx else None), {})

    def _repr_args(self) -> str:
        return repr(self.shape)


# ---------------------------------------------------------------- activations


class _Activation(Module):
    """Elementwise activation; subclasses give ``f`` and the gradient from (x, y)."""

    preserves_shape = True

    def _f(self, x: Any) -> Any:
        raise NotImplementedError

    def _grad(self, x: Any, y: Any) -> Any:
        raise NotImplementedError

    def infer(self, x: Any) -> Any:
        return self._f(x)

    def apply(self, x: Any, training: bool) -> tuple[Any, Backward]:
        y = self._f(x)

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            return (dy * self._grad(x, y) if need_dx else None), {}

        return y, backward


class Identity(_Activation):
    def _f(self, x: Any) -> Any:
        return x

    def apply(self, x: Any, training: bool) -> tuple[Any, Backward]:
        return x, lambda dy, need_dx=True: (dy, {})


class Step(_Activation):
    """Heaviside step (the perceptron's activation); its gradient is zero."""

    def _f(self, x: Any) -> Any:
        return F.step(x, xp=self.xp)

    def _grad(self, x: Any, y: Any) -> Any:
        return self.xp.zeros_like(x)


class Sigmoid(_Activation):
    def _f(self, x: Any) -> Any:
        return F.sigmoid(x, xp=self._backend.xp)

    def _grad(self, x: Any, y: Any) -> Any:
        return y * (1.0 - y)

    def infer(self, x: Any) -> Any:
        return F.sigmoid(x, xp=self._backend.xp)

    def apply(self, x: Any, training: bool) -> tuple[Any, Backward]:
        y = F.sigmoid(x, xp=self._backend.xp)

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            return (dy * (y * (1.0 - y)) if need_dx else None), {}

        return y, backward


class Tanh(_Activation):
    def _f(self, x: Any) -> Any:
        return self.xp.tanh(x)

    def _grad(self, x: Any, y: Any) -> Any:
        return 1.0 - y * y


class ReLU(_Activation):
    def _f(self, x: Any) -> Any:
        return self.xp.maximum(x, 0.0)

    def apply(self, x: Any, training: bool) -> tuple[Any, Backward]:
        xp = self.xp
        y = xp.maximum(x, 0.0)

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            if not need_dx:
                return None, {}
            # a 0/1 mask times dy: branch-free, several times faster on CPUs than where()
            dx = xp.astype(x > 0, dy.dtype)
            dx *= dy
            return dx, {}

        return y, backward


class LeakyReLU(_Activation):
    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__()
        self.alpha = positive_number("alpha", alpha, allow_zero=True)

    def _f(self, x: Any) -> Any:
        return F.leaky_relu(x, self.alpha, xp=self.xp)

    def _grad(self, x: Any, y: Any) -> Any:
        return F.leaky_relu_derivative(x, self.alpha, xp=self.xp)

    def config(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def _repr_args(self) -> str:
        return f"alpha={self.alpha}"


class ELU(_Activation):
    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = positive_number("alpha", alpha, allow_zero=True)

    def _f(self, x: Any) -> Any:
        return F.elu(x, self.alpha, xp=self.xp)

    def _grad(self, x: Any, y: Any) -> Any:
        return F.elu_derivative(x, self.alpha, xp=self.xp)

    def config(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def _repr_args(self) -> str:
        return f"alpha={self.alpha}"


class GELU(_Activation):
    """GELU, tanh approximation (PyTorch's ``GELU(approximate="tanh")``)."""

    def _f(self, x: Any) -> Any:
        return F.gelu(x, xp=self.xp)

    def _grad(self, x: Any, y: Any) -> Any:
        return F.gelu_derivative(x, xp=self.xp)


class SiLU(_Activation):
    def _f(self, x: Any) -> Any:
        return F.silu(x, xp=self.xp)

    def _grad(self, x: Any, y: Any) -> Any:
        return F.silu_derivative(x, xp=self.xp)


class Softplus(_Activation):
    """``log(1 + exp(beta x)) / beta``, linear above ``threshold`` (PyTorch's defaults)."""

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        super().__init__()
        self.beta = positive_number("beta", beta)
        self.threshold = positive_number("threshold", threshold)

    def config(self) -> dict[str, Any]:
        return {"beta": self.beta, "threshold": self.threshold}

    def _f(self, x: Any) -> Any:
        return F.softplus(x, self.beta, self.threshold, xp=self.xp)

    def _grad(self, x: Any, y: Any) -> Any:
        return F.softplus_derivative(x, self.beta, self.threshold, xp=self.xp)


class Softmax(_Activation):
    """Softmax over the last axis (shifted by the row maximum: never overflows)."""

    def _f(self, x: Any) -> Any:
        return F.softmax(x, xp=self.xp)

    def apply(self, x: Any, training: bool) -> tuple[Any, Backward]:
        xp = self.xp
        y = F.softmax(x, xp=xp)

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            if not need_dx:
                return None, {}
            return y * (dy - xp.sum(dy * y, axis=-1, keepdims=True)), {}

        return y, backward


