"""Weight initializers, drawn on the host so a seed gives the same numbers on every backend.

An initializer is a function ``(rng, shape, fan_in, fan_out) -> numpy.ndarray`` of
float64 values; layers convert the result once to their backend and dtype.
``Dense(..., init="he_normal")`` looks the name up here; a callable is used as is.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ._checks import lookup

__all__ = [
    "INITIALIZERS",
    "get_initializer",
    "he_normal",
    "he_uniform",
    "normal",
    "ones",
    "uniform",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
]

Initializer = Callable[[np.random.Generator, tuple[int, ...], int, int], np.ndarray]


def uniform(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    """Uniform on [-1, 1), as in the classic from-scratch tutorials."""
    return rng.uniform(-1.0, 1.0, size=shape)


def normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    """Normal with standard deviation 0.01 (the tutorials' small Gaussian)."""
    return rng.normal(0.0, 0.01, size=shape)


def xavier_uniform(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    """Glorot uniform: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    a = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=shape)


def xavier_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    """Glorot normal: N(0, 2 / (fan_in + fan_out))."""
    return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), size=shape)


def he_uniform(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    """Kaiming uniform for ReLU: U(-a, a) with a = sqrt(6 / fan_in)."""
    a = math.sqrt(6.0 / fan_in)
    return rng.uniform(-a, a, size=shape)


def he_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    """Kaiming normal for ReLU: N(0, 2 / fan_in)."""
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=shape)


def zeros(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    return np.zeros(shape)


def ones(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    return np.ones(shape)


INITIALIZERS: dict[str, Initializer] = {
    "uniform": uniform,
    "normal": normal,
    "xavier_uniform": xavier_uniform,
    "glorot_uniform": xavier_uniform,
    "xavier_normal": xavier_normal,
    "glorot_normal": xavier_normal,
    "he_uniform": he_uniform,
    "kaiming_uniform": he_uniform,
    "he_normal": he_normal,
    "kaiming_normal": he_normal,
    "zeros": zeros,
    "ones": ones,
}


def get_initializer(init: str | Initializer) -> Initializer:
    """Look an initializer up by name, or return a callable unchanged."""
    if callable(init):
        return init
    return lookup("init", init, INITIALIZERS)
