"""The network the estimators' parameters describe: a :class:`~portnn.Sequential` of
:class:`~portnn.Dense` layers, each hidden one followed by its activation (with
``batch_norm`` a :class:`~portnn.BatchNorm` before it, with ``dropout`` a
:class:`~portnn.Dropout` after it)."""

from __future__ import annotations

import numbers
from typing import Any

from ..backend import Backend, use_backend
from ..nn import BatchNorm, Dense, Dropout, Identity, Module, ReLU, Sequential, Sigmoid, Tanh

_ACTIVATIONS: dict[str, type[Module]] = {
    "identity": Identity,
    "logistic": Sigmoid,
    "tanh": Tanh,
    "relu": ReLU,
}


def _hidden_sizes(value: Any) -> list[int]:
    sizes = [value] if isinstance(value, numbers.Integral) else list(value)
    if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s <= 0 for s in sizes):
        raise ValueError(f"hidden_layer_sizes must hold integers > 0, got {value!r}")
    return [int(s) for s in sizes]


def _network(
    sizes: list[int],
    activation: str,
    batch_norm: bool,
    dropout: float,
    target: Backend,
    dtype: str,
    root: int,
) -> Sequential:
    """Dense layers of ``sizes`` (inputs, hidden..., outputs) on ``target``; layer ``i`` and
    its dropout are seeded with ``root + i``."""
    layers: list[Module] = []
    with use_backend(target):
        for i in range(len(sizes) - 1):
            layers.append(Dense(sizes[i], sizes[i + 1], seed=root + i, dtype=dtype))
            if i < len(sizes) - 2:
                if batch_norm:
                    layers.append(BatchNorm(sizes[i + 1], dtype=dtype))
                layers.append(_ACTIVATIONS[activation]())
                if dropout:
                    layers.append(Dropout(float(dropout), seed=root + i))
        return Sequential(*layers)
