"""Stateless math on Array API arrays: activations, their derivatives, softmax, losses.

Every function takes arrays of any Array API library and returns arrays of the
same library. ``xp`` may be passed to skip the namespace lookup in hot loops.
Derivatives (``*_derivative``) are taken with respect to the input, elementwise.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import array_namespace, device

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_terms",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_terms",
    "cross_entropy",
    "elu",
    "elu_derivative",
    "gelu",
    "gelu_derivative",
    "identity",
    "identity_derivative",
    "leaky_relu",
    "leaky_relu_derivative",
    "log_softmax",
    "mse",
    "one_hot",
    "relu",
    "relu_derivative",
    "sigmoid",
    "sigmoid_derivative",
    "silu",
    "silu_derivative",
    "softmax",
    "softplus",
    "softplus_derivative",
    "step",
    "step_derivative",
    "tanh",
    "tanh_derivative",
]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


def _ns(x: Any, xp: Any, *others: Any) -> Any:
    """The namespace of the arrays; arrays of two libraries are a TypeError naming them."""
    if xp is not None:
        return xp
    try:
        return array_namespace(x, *others)
    except TypeError as e:
        kinds = sorted({type(a).__module__.split(".")[0] + "." + type(a).__name__ for a in (x, *others)})
        raise TypeError(f"arrays of different libraries in one call ({', '.join(kinds)}): {e}") from None


def identity(x: Any, *, xp: Any = None) -> Any:
    return x


def identity_derivative(x: Any, *, xp: Any = None) -> Any:
    return _ns(x, xp).ones_like(x)


def step(x: Any, *, xp: Any = None) -> Any:
    """Heaviside step: 1 where ``x > 0``, else 0 (in ``x``'s dtype)."""
    xp = _ns(x, xp)
    return xp.astype(x > 0, x.dtype)


def step_derivative(x: Any, *, xp: Any = None) -> Any:
    return _ns(x, xp).zeros_like(x)


def sigmoid(x: Any, *, xp: Any = None) -> Any:
    """Logistic sigmoid, ``exp(min(x, 0)) / (1 + exp(-|x|))``: no exponent is ever positive.

    For ``x >= 0`` that is ``1 / (1 + exp(-x))``, for ``x < 0`` it is
    ``exp(x) / (1 + exp(x))``: both exact to a couple of ulps, never
    overflowing, and without a branch (``where``) per element.
    """
    xp = _ns(x, xp)
    denom = xp.exp(-xp.abs(x))
    denom += 1.0
    y = xp.exp(xp.minimum(x, 0.0))
    y /= denom
    return y


def sigmoid_derivative(x: Any, *, xp: Any = None) -> Any:
    s = sigmoid(x, xp=xp)
    return s * (1.0 - s)


def tanh(x: Any, *, xp: Any = None) -> Any:
    return _ns(x, xp).tanh(x)


def tanh_derivative(x: Any, *, xp: Any = None) -> Any:
    t = _ns(x, xp).tanh(x)
    return 1.0 - t * t


def relu(x: Any, *, xp: Any = None) -> Any:
    return _ns(x, xp).maximum(x, 0.0)


def relu_derivative(x: Any, *, xp: Any = None) -> Any:
    xp = _ns(x, xp)
    return xp.astype(x > 0, x.dtype)


def leaky_relu(x: Any, alpha: float = 0.01, *, xp: Any = None) -> Any:
    xp = _ns(x, xp)
    return xp.where(x > 0, x, alpha * x)


def leaky_relu_derivative(x: Any, alpha: float = 0.01, *, xp: Any = None) -> Any:
    xp = _ns(x, xp)
    return xp.where(x > 0, xp.ones_like(x), xp.full_like(x, alpha))


def elu(x: Any, alpha: float = 1.0, *, xp: Any = None) -> Any:
    xp = _ns(x, xp)
    return xp.where(x > 0, x, alpha * xp.expm1(xp.minimum(x, 0.0)))


def elu_derivative(x: Any, alpha: float = 1.0, *, xp: Any = None) -> Any:
    xp = _ns(x, xp)
    return xp.where(x > 0, xp.ones_like(x), alpha * xp.exp(xp.minimum(x, 0.0)))


def gelu(x: Any, *, xp: Any = None) -> Any:
    """GELU, tanh approximation (PyTorch's ``GELU(approximate="tanh")``)."""
    xp = _ns(x, xp)
    return 0.5 * x * (1.0 + xp.tanh(_SQRT_2_OVER_PI * (x + _GELU_C * x * x * x)))


def gelu_derivative(x: Any, *, xp: Any = None) -> Any:
    xp = _ns(x, xp)
    t = xp.tanh(_SQRT_2_OVER_PI * (x + _GELU_C * x * x * x))
    inner = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_C * x * x)
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * inner


def silu(x: Any, *, xp: Any = None) -> Any:
    """SiLU (swish): ``x * sigmoid(x)``."""
    return x * sigmoid(x, xp=xp)


def silu_derivative(x: Any, *, xp: Any = None) -> Any:
    s = sigmoid(x, xp=xp)
    return s * (1.0 + x * (1.0 - s))


def softplus(x: Any, beta: float = 1.0, threshold: float = 20.0, *, xp: Any = None) -> Any:
    """``log(1 + exp(beta x)) / beta``, linear above ``threshold`` (PyTorch's defaults)."""
    xp = _ns(x, xp)
    bx = beta * x
    soft = xp.log1p(xp.exp(xp.minimum(bx, threshold))) / beta
    return xp.where(bx > threshold, x, soft)


def softplus_derivative(
    x: Any, beta: float = 1.0, threshold: float = 20.0, *, xp: Any = None
) -> Any:
    xp = _ns(x, xp)
    bx = beta * x
    return xp.where(bx > threshold, xp.ones_like(x), sigmoid(bx, xp=xp))


def softmax(x: Any, axis: int = -1, *, xp: Any = None) -> Any:
    """Softmax along ``axis``; the row maximum is subtracted first, so it never overflows."""
    xp = _ns(x, xp)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def log_softmax(x: Any, axis: int = -1, *, xp: Any = None) -> Any:
    """``log(softmax(x))`` without forming the softmax: finite for any finite input."""
    xp = _ns(x, xp)
    shifted = x - xp.max(x, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def one_hot(labels: Any, num_classes: int, dtype: Any = None, *, xp: Any = None) -> Any:
    """Rows of zeros with a one at each integer label (built by comparison, no fancy indexing)."""
    xp = _ns(labels, xp)
    classes = xp.arange(num_classes, dtype=labels.dtype, device=device(labels))  # device(): traced arrays too
    hot = labels[:, None] == classes
    return xp.astype(hot, dtype if dtype is not None else xp.float32)


def mse(pred: Any, target: Any, *, xp: Any = None) -> Any:
    """Mean squared error over all elements."""
    xp = _ns(pred, xp, target)
    d = pred - target
    return xp.mean(d * d)


def cross_entropy(logits: Any, target: Any, *, xp: Any = None) -> Any:
    """Softmax cross-entropy, mean over samples.

    ``target``: integer class indices of shape ``(n,)``, or probability rows
    (one-hot or soft) shaped like ``logits``.
    """
    xp = _ns(logits, xp, target)
    if target.ndim == logits.ndim - 1:
        target = one_hot(target, logits.shape[-1], logits.dtype, xp=xp)
    return -xp.sum(target * log_softmax(logits, xp=xp)) / logits.shape[0]


def binary_cross_entropy(prob: Any, target: Any, *, xp: Any = None) -> Any:
    """Binary cross-entropy of probabilities, mean over all elements.

    Each log is clamped at -100, as PyTorch's ``BCELoss`` does, so a probability
    of exactly 0 or 1 gives a large finite loss instead of infinity.
    """
    xp = _ns(prob, xp, target)
    return xp.mean(binary_cross_entropy_terms(prob, target, xp=xp))


def binary_cross_entropy_terms(prob: Any, target: Any, *, xp: Any = None) -> Any:
    """Binary cross-entropy of each element (unreduced; weighted losses sum these)."""
    xp = _ns(prob, xp, target)
    return -(target * _clamped_log(prob, xp) + (1.0 - target) * _clamped_log(1.0 - prob, xp))


def _clamped_log(p: Any, xp: Any) -> Any:
    """``max(log(p), -100)``, without evaluating ``log(0)`` (no divide-by-zero warning)."""
    safe = xp.where(p > 0, p, 1.0)
    return xp.where(p > 0, xp.maximum(xp.log(safe), -100.0), -100.0)


def binary_cross_entropy_with_logits(logits: Any, target: Any, *, xp: Any = None) -> Any:
    """Binary cross-entropy of logits (sigmoid fused in), stable for any finite logits."""
    xp = _ns(logits, xp, target)
    return xp.mean(binary_cross_entropy_with_logits_terms(logits, target, xp=xp))


def binary_cross_entropy_with_logits_terms(logits: Any, target: Any, *, xp: Any = None) -> Any:
    """Binary cross-entropy of each element's logit (unreduced; weighted losses sum these)."""
    xp = _ns(logits, xp, target)
    return xp.maximum(logits, 0.0) - logits * target + xp.log1p(xp.exp(-xp.abs(logits)))
