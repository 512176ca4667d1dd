"""The ``portnn`` command's arguments: the parser, the argument types and the layer specs."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import NoReturn

ACTIVATIONS = {
    "relu": "ReLU",
    "tanh": "Tanh",
    "sigmoid": "Sigmoid",
    "leaky_relu": "LeakyReLU",
    "elu": "ELU",
    "gelu": "GELU",
    "silu": "SiLU",
    "softplus": "Softplus",
}

# what `--model cnn` builds when no --conv is given: two 5x5 convolutions, each followed
# by a 2x2 max pooling, before the --hidden layers
DEFAULT_CONV = "32:5,pool,64:5,pool"


class CommandError(Exception):
    """A problem with what the user asked for, reported without a traceback."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line (usage stays in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# ---------------------------------------------------------------- argument types


def _hidden(text: str) -> list[int]:
    text = text.strip()
    if text in ("", "0", "none"):
        return []
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected layer widths separated by commas such as 256,128; got {text!r}"
        ) from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer widths must be >= 1; got {text!r}")
    return sizes


def _parsed(text: str, cast: type, expected: str):
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _whole_number_at_least(minimum: int):
    """An argument type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        value = _parsed(text, int, "a whole number")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {text!r}")
        return value

    return parse


_positive_int = _whole_number_at_least(1)
_non_negative_int = _whole_number_at_least(0)


def _positive_float(text: str) -> float:
    value = _parsed(text, float, "a number")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


def _dropout_rate(text: str) -> float:
    value = _parsed(text, float, "a number")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a rate in [0, 1), got {text!r}")
    return value


def _column(text: str) -> str | int:
    """A CSV column by name, or by index when the text is a whole number."""
    try:
        return int(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class ConvItem:
    """One entry of ``--conv``: a convolution (``32:3``, ``32:3:same``) or a pooling (``pool``, ``avgpool:3``)."""

    text: str
    kind: str  # "conv", "max" (pool) or "avg" (avgpool)
    size: int  # the kernel size
    channels: int = 0  # output channels of a convolution
    padding: str = "valid"


def _conv_item(text: str) -> ConvItem:
    name, *rest = text.split(":")
    if name in ("pool", "avgpool"):
        if len(rest) > 1:
            raise ValueError
        size = int(rest[0]) if rest else 2
        if size < 1:
            raise ValueError
        return ConvItem(text, "max" if name == "pool" else "avg", size)
    if len(rest) not in (1, 2) or (len(rest) == 2 and rest[1] not in ("same", "valid")):
        raise ValueError
    channels, size = int(name), int(rest[0])
    if channels < 1 or size < 1:
        raise ValueError
    return ConvItem(text, "conv", size, channels, rest[1] if len(rest) == 2 else "valid")


def _conv_spec(text: str) -> list[ConvItem]:
    """``--conv``: ``"32:3,32:3,pool,64:3,pool"`` -> the layers, in order."""
    items = []
    for part in text.split(","):
        try:
            items.append(_conv_item(part.strip()))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected items such as 32:3 (32 channels, 3x3 kernel), 32:3:same, pool, "
                f"pool:3 or avgpool, separated by commas; {part.strip()!r} is none of them"
            ) from None
    if not any(item.kind == "conv" for item in items):
        raise argparse.ArgumentTypeError(f"--conv needs at least one convolution such as 32:3; got {text!r}")
    return items


def _image_shape(text: str) -> tuple[int, int, int]:
    """``--image-shape``: ``"1,28,28"`` -> (1, 28, 28)."""
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(
            f"expected channels,height,width such as 1,28,28; got {text!r}"
        )
    return shape  # type: ignore[return-value]


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``portnn`` argument parser: subcommands info, train, evaluate, predict and export."""
    from .._version import __version__

    parser = _Parser(
        prog="portnn",
        description="Train and use small neural networks on any Array API backend.",
        epilog="Set PORTNN_BACKEND to change the default backend, "
        "PORTNN_DEBUG=1 to see tracebacks.",
    )
    parser.add_argument("--version", action="version", version=f"portnn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    commands.add_parser("info", help="version, backends and their devices")

    def data_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--dataset",
            required=True,
            metavar="NAME|PATH",
            help="digits, mnist5k, moons, spirals, xor, seed8, or a .csv/.npz file",
        )
        p.add_argument(
            "--target",
            type=_column,
            metavar="COL",
            help="label column of a CSV file, by name or index (default: the last; for a model "
            "trained on a CSV, the column it was trained with)",
        )
        p.add_argument(
            "--test-size",
            type=_fraction,
            default=0.2,
            metavar="FRACTION",
            help="share of the data held out for testing (default: 0.2)",
        )
        p.add_argument(
            "--seed",
            type=_non_negative_int,
            default=0,
            help="seeds the data, the split, the initial weights and the shuffling (default: 0)",
        )

    def threads_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--threads",
            type=_non_negative_int,
            default=1,
            metavar="N",
            help="CPU threads for the math (default: 1, fastest for small networks and never "
            "slowed by a busy machine; 0: the array library's own default)",
        )

    train = commands.add_parser(
        "train",
        help="train a classifier and report its test accuracy",
        description="Train a classifier with softmax cross-entropy and report its accuracy "
        "on the held-out test split: a multilayer perceptron, or with --model cnn a "
        "convolutional network on images.",
    )
    data_options(train)
    train.add_argument(
        "--task",
        choices=("auto", "classification", "regression"),
        default="auto",
        help="what a CSV's target asks for; auto: text labels and up to 20 distinct whole "
        "numbers are classes, other numbers a regression (default: auto, and it says why)",
    )
    train.add_argument(
        "--no-scale",
        action="store_true",
        help="feed a CSV's features as they are (default: standardized by a first "
        "pn.Standardize layer fitted on the training rows, saved with the model)",
    )
    train.add_argument(
        "--model",
        choices=("mlp", "cnn"),
        default=None,
        help="mlp: dense layers on the features (default); cnn: convolutions and pooling on "
        "images, then the dense layers (default with --conv)",
    )
    train.add_argument(
        "--conv",
        type=_conv_spec,
        default=None,
        metavar="SPEC",
        help="the cnn's layers before the dense ones, comma separated: C:K is a convolution "
        "with C output channels and a KxK kernel (C:K:same keeps the size), pool (pool:K) a "
        f"max pooling, avgpool (avgpool:K) an average pooling (default: {DEFAULT_CONV})",
    )
    train.add_argument(
        "--image-shape",
        type=_image_shape,
        default=None,
        metavar="C,H,W",
        help="the cnn's view of a sample's features, e.g. 1,28,28 (default: the data set's "
        "images; one channel of a square for other data)",
    )
    train.add_argument(
        "--hidden",
        type=_hidden,
        default=[128],
        metavar="WIDTHS",
        help="hidden layer widths, comma separated (default: 128)",
    )
    train.add_argument(
        "--activation",
        default="relu",
        help=f"hidden activation: {', '.join(ACTIVATIONS)} (default: relu)",
    )
    train.add_argument(
        "--dropout",
        type=_dropout_rate,
        default=None,
        metavar="P",
        help="dropout rate after each hidden dense layer, and half of it after a cnn's "
        "convolutions (default: 0.5 in a cnn, none in an mlp)",
    )
    train.add_argument(
        "--optimizer",
        default=None,
        help="sgd, adam, adamw, rmsprop or adagrad (default: adam; sgd here uses momentum 0.9)",
    )
    train.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help="learning rate (default: the optimizer's; 0.05 for sgd)",
    )
    train.add_argument(
        "--epochs",
        type=_non_negative_int,
        default=None,
        help="(default: 20; for a CSV table, more where 20 would be fewer than 300 steps)",
    )
    train.add_argument("--batch-size", type=_positive_int, default=64, help="(default: 64)")
    train.add_argument(
        "--backend",
        default=None,
        help="numpy, torch, cupy, array_api_strict, ... (default: $PORTNN_BACKEND or numpy)",
    )
    train.add_argument("--out", metavar="PATH", help="save the trained model here (.safetensors)")
    train.add_argument(
        "--plot",
        metavar="PATH",
        help="save learning curves (and, for 2-D data, the decision boundary) as an image",
    )
    train.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="1: a progress bar on a terminal, else a line per epoch (default); "
        "2: a line per epoch; 0: only the results",
    )
    train.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel training over MPI, launched as `mpiexec -n 4 portnn train "
        "--distributed ...` (needs portnn[mpi]); only rank 0 prints and saves",
    )
    threads_option(train)

    evaluate = commands.add_parser(
        "evaluate",
        help="loss and accuracy of a saved model on a data set's test split",
        description="Print the loss and accuracy of a saved model on the test split of a "
        "data set (the same split `portnn train` held out for the same --seed and --test-size).",
    )
    evaluate.add_argument("model", metavar="MODEL", help="a model saved by `portnn train --out`")
    data_options(evaluate)
    evaluate.add_argument("--backend", default=None, help="backend to load the model on")
    threads_option(evaluate)

    predict = commands.add_parser(
        "predict",
        help="predicted classes for new samples",
        description="Print (or write with --out) the class (or value) a saved model predicts "
        "for each row of the input. A model trained on a CSV table reads the feature columns "
        "it was trained with, by name, and scales and encodes them itself; other input is "
        "used as it is.",
    )
    predict.add_argument("model", metavar="MODEL", help="a model saved by `portnn train --out`")
    predict.add_argument(
        "--input",
        required=True,
        metavar="PATH",
        help=".csv (header row optional), .npz (array 'X') or .npy file of samples",
    )
    predict.add_argument(
        "--target",
        type=_column,
        metavar="COL",
        help="a CSV column to leave out (e.g. the labels), by name or index",
    )
    predict.add_argument(
        "--proba",
        action="store_true",
        help="print a probability per class (a column per class name) instead of the class",
    )
    predict.add_argument(
        "--ignore-unknown",
        action="store_true",
        help="encode a category the model did not see in training as none of them "
        "(default: an error naming it)",
    )
    predict.add_argument("--out", metavar="PATH", help="write the predictions to this CSV file")
    predict.add_argument("--backend", default=None, help="backend to load the model on")
    threads_option(predict)

    export = commands.add_parser(
        "export",
        help="export a saved model to ONNX",
        description="Write a saved model's inference forward pass (dropout off, batch "
        "normalization with its running statistics) as an ONNX file whose batch dimension "
        "is symbolic. Needs the onnx extra: pip install \"portnn[onnx]\".",
    )
    export.add_argument("model", metavar="MODEL", help="a model saved by `portnn train --out`")
    export.add_argument("out", metavar="OUT", help="the ONNX file to write (e.g. model.onnx)")
    export.add_argument(
        "--batch-dim",
        default="N",
        metavar="NAME",
        help="name of the symbolic batch dimension (default: N)",
    )
    export.add_argument(
        "--input-shape",
        default=None,
        metavar="SHAPE",
        help="the shape of one sample, e.g. 1,28,28; several inputs separated by ';', e.g. '3;4' "
        "(default: what the model's first layer takes)",
    )
    export.set_defaults(backend=None, threads=1)
    return parser


