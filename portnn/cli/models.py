"""The networks ``portnn train`` builds: a multilayer perceptron, or a convolutional network.

Both take a sample as a row of features, as every data file holds it. The
convolutional network starts with a ``Reshape`` to the image (``--image-shape``),
so a saved CNN reads the same CSV, .npz and .npy files as a perceptron does.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .parser import ACTIVATIONS, DEFAULT_CONV, CommandError, ConvItem, _conv_spec

# the images behind the built-in data sets' features
IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist5k": (1, 28, 28)}

OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSProp", "adagrad": "AdaGrad"}


def class_count(dataset: str, y_train: np.ndarray, y_test: np.ndarray) -> int:
    """The number of classes K, from labels that must be 0, 1, ..., K-1 with K at most
    the number of samples (a label such as 1000000000 would otherwise ask for that many
    output units); labels are not renumbered, since predictions are these class numbers."""
    labels = np.concatenate([y_train.reshape(-1), y_test.reshape(-1)])
    n_samples = int(labels.shape[0])
    top = int(labels.max()) if n_samples else 0
    if top + 1 > n_samples:
        raise CommandError(
            f"--dataset {dataset}: the largest label is {top}, which would make {top + 1} "
            f"classes for {n_samples} samples; number the classes 0, 1, ..., K-1 "
            f"(K at most the number of samples), or use text labels"
        )
    if top + 1 < 2:
        raise CommandError(f"{dataset}: needs at least two classes, found only label 0")
    return top + 1


def choose_optimizer(name: str | None, lr: float | None) -> Any:
    """``--optimizer`` and ``--lr``: Adam by default; SGD with momentum 0.9 and lr 0.05."""
    import portnn as pn

    from .._checks import lookup

    cls = getattr(pn, lookup("optimizer", name or "adam", OPTIMIZERS))
    if cls is pn.SGD:
        return pn.SGD(lr=0.05 if lr is None else lr, momentum=0.9)
    return cls() if lr is None else cls(lr=lr)


def model_kind(args: argparse.Namespace) -> str:
    """``--model``, checked against ``--conv`` and ``--image-shape``: "mlp" or "cnn"."""
    if args.model == "mlp" and (args.conv is not None or args.image_shape is not None):
        option = "--conv" if args.conv is not None else "--image-shape"
        raise CommandError(f"{option} is for a convolutional network: use --model cnn (or leave --model out)")
    if args.model is None:
        return "cnn" if args.conv is not None or args.image_shape is not None else "mlp"
    return args.model


def image_shape(args: argparse.Namespace, n_features: int) -> tuple[int, int, int]:
    """The (channels, height, width) a CNN sees in a sample of ``n_features`` features."""
    shape = args.image_shape or IMAGE_SHAPES.get(str(args.dataset))
    if shape is None:
        side = math.isqrt(n_features)
        if side * side != n_features:
            raise CommandError(
                f"--model cnn: the {n_features} features of {args.dataset} are not a square image; "
                "give --image-shape C,H,W (channels, height, width)"
            )
        shape = (1, side, side)
    if math.prod(shape) != n_features:
        raise CommandError(
            f"--image-shape {','.join(map(str, shape))} holds {math.prod(shape)} values, "
            f"but the samples of {args.dataset} have {n_features} features"
        )
    return shape


def _activation(name: str) -> Any:
    import portnn as pn

    from .._checks import lookup

    return getattr(pn, lookup("activation", name, ACTIVATIONS))


def _dense_layers(width: int, hidden: Sequence[int], n_classes: int, activation: str,
                  dropout: float, seeds: Iterator[int]) -> list[Any]:
    import portnn as pn

    layers: list[Any] = []
    for h in hidden:
        layers += [pn.Dense(width, h, seed=next(seeds)), _activation(activation)()]
        if dropout:
            layers.append(pn.Dropout(dropout, seed=next(seeds)))
        width = h
    layers.append(pn.Dense(width, n_classes, seed=next(seeds)))
    return layers


def build_mlp(n_features: int, hidden: Sequence[int], n_classes: int, activation: str,
              seed: int, dropout: float = 0.0, before: Sequence[Any] = (), after: Sequence[Any] = ()) -> Any:
    """Dense, activation, ..., Dense; the layers are seeded ``seed``, ``seed + 1``, ...
    ``before`` and ``after`` are layers put in front and at the end (scaling)."""
    import portnn as pn

    dense = _dense_layers(n_features, hidden, n_classes, activation, dropout, _count(seed))
    return pn.Sequential(*before, *dense, *after)


def build_cnn(shape: tuple[int, int, int], conv: Sequence[ConvItem] | None, hidden: Sequence[int],
              n_classes: int, activation: str, seed: int, dropout: float = 0.0,
              before: Sequence[Any] = (), after: Sequence[Any] = ()) -> Any:
    """Reshape to ``shape``, the ``--conv`` layers (each convolution followed by the
    activation), Dropout at half of ``dropout``, Flatten, then the dense layers as in
    :func:`build_mlp`."""
    import portnn as pn

    seeds = _count(seed)
    channels, height, width = shape
    layers: list[Any] = [*before, pn.Reshape(shape)]
    for item in _conv_spec(DEFAULT_CONV) if conv is None else conv:
        if item.kind == "conv":
            layers += [
                pn.Conv2D(channels, item.channels, item.size, padding=item.padding, seed=next(seeds)),
                _activation(activation)(),
            ]
            channels = item.channels
            if item.padding == "valid":
                height, width = height - item.size + 1, width - item.size + 1
        else:
            pool = pn.MaxPool2D if item.kind == "max" else pn.AvgPool2D
            layers.append(pool(item.size))
            height, width = height // item.size, width // item.size
        if height < 1 or width < 1:
            raise CommandError(
                f"--conv: after {item.text!r} the {shape[1]}x{shape[2]} images would have no pixels "
                "left; use smaller kernels, fewer pools or C:K:same convolutions"
            )
    if dropout:  # half the dense layers' rate after the convolutions: 0.977 instead of 0.970 on mnist5k
        layers.append(pn.Dropout(dropout / 2, seed=next(seeds)))
    layers.append(pn.Flatten())
    layers += _dense_layers(channels * height * width, hidden, n_classes, activation, dropout, seeds)
    return pn.Sequential(*layers, *after)


def _count(start: int) -> Iterator[int]:
    while True:
        yield start
        start += 1


def describe(model: Any) -> str:
    """A one-line picture of a built network: ``1x28x28 -> conv 32:3 -> pool 2 -> 1600 -> 10``."""
    parts: list[str] = []
    width = None  # the width the last dense layer gave
    for layer in model.layers:
        name = type(layer).__name__
        if name == "Standardize":
            parts.append(f"standardize {layer.features}")
            width = layer.features
        elif not layer.trainable and name == "Dense":
            parts.append("target units")
        elif name == "Reshape":
            parts.append("x".join(map(str, layer.shape)))
        elif name == "Conv2D":
            same = ":same" if layer.padding == "same" else ""
            parts.append(f"conv {layer.out_channels}:{layer.kernel_size[0]}{same}")
        elif name in ("MaxPool2D", "AvgPool2D"):
            parts.append(f"{'pool' if name == 'MaxPool2D' else 'avgpool'} {layer.kernel_size[0]}")
        elif name == "Dense":
            if layer.in_features != width:
                parts.append(str(layer.in_features))
            parts.append(str(layer.out_features))
            width = layer.out_features
        elif name == "Dropout":
            parts.append(f"dropout {layer.p:g}")
    return " -> ".join(parts)


def n_inputs(model: Any) -> int | None:
    """The number of features a model built here takes per sample."""
    layers = model.layers if hasattr(model, "layers") and model.layers else [model]
    first = layers[0]
    if type(first).__name__ == "Standardize" and first.features is not None:
        return int(first.features)
    if type(first).__name__ == "Reshape" and -1 not in first.shape:
        return math.prod(first.shape)
    return getattr(first, "in_features", None)


def n_outputs(model: Any) -> int:
    last = None
    for m in model.modules():
        if hasattr(m, "out_features"):
            last = m
    return int(last.out_features) if last is not None else 1
