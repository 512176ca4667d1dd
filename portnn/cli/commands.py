"""The ``portnn`` subcommands train, evaluate, predict and export."""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import io
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from .files import check_output, load_data, load_model, read_samples
from .models import (
    build_cnn,
    build_mlp,
    choose_optimizer,
    class_count,
    describe,
    image_shape,
    model_kind,
    n_inputs,
    n_outputs,
)
from .parser import CommandError


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
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


def _predicted_classes(model: Any, X: Any) -> np.ndarray:
    from ..backend import to_numpy
    from ..training import predict_classes

    return to_numpy(predict_classes(model, X)).astype(np.int64)


def _scores(model: Any, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean loss, accuracy) on ``(X, y)``: the model's loss, else cross-entropy."""
    loss = getattr(model, "loss", None)
    if loss is None:
        loss = "cross_entropy" if n_outputs(model) > 1 else "binary_cross_entropy"
    scores = model.evaluate(X, y, loss=loss, metrics=["accuracy"])
    return float(scores["loss"]), float(scores["accuracy"])



def _check_width(model: Any, X: np.ndarray, where: str, hint: str = "") -> None:
    width = n_inputs(model)
    if width is not None and X.shape[1] != width:
        raise CommandError(f"the model takes {width} features but {where} has {X.shape[1]}{hint}")


def cmd_train(args: argparse.Namespace) -> int:
    from .._checks import lookup
    from ..backend import get_backend
    from .parser import ACTIVATIONS

    # everything that can be checked is checked before the data is loaded and the model trained
    backend = get_backend()
    root = _distributed_root(args.distributed)
    lookup("activation", args.activation, ACTIVATIONS)
    kind = model_kind(args)
    optimizer = choose_optimizer(args.optimizer, args.lr)
    _check_outputs(args)

    X_train, X_test, y_train, y_test = load_data(args)
    n_classes = class_count(args.dataset, y_train, y_test)
    model = _build(args, kind, X_train.shape[1], n_classes)
    print(
        f"data: {args.dataset}: {X_train.shape[0]} train / {X_test.shape[0]} test samples, "
        f"{X_train.shape[1]} features, {n_classes} classes"
    )
    print(
        f"model: {kind} {describe(model)} ({args.activation}), {model.num_parameters():,} "
        f"parameters, {type(optimizer).__name__} lr={optimizer.lr:g}, backend {backend}"
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


def _check_outputs(args: argparse.Namespace) -> None:
    """--plot and --out can be written (and their libraries imported), before any training."""
    if args.plot:
        if args.epochs == 0:
            raise CommandError("--plot needs at least one epoch (--epochs 1 or more)")
        from ..plot import _pyplot

        _pyplot()  # matplotlib is there
    for option, path in (("--out", args.out), ("--plot", args.plot)):
        if path:
            check_output(option, path)
    if args.out:
        try:
            importlib.import_module("portnn.io")
        except ImportError as e:
            raise CommandError(
                f"saving models needs portnn.io, which could not be imported ({e})"
            ) from None


def _build(args: argparse.Namespace, kind: str, n_features: int, n_classes: int) -> Any:
    """The network of ``--model``: dropout 0.5 by default in a cnn, none in an mlp."""
    dropout = args.dropout if args.dropout is not None else (0.5 if kind == "cnn" else 0.0)
    if kind == "mlp":
        return build_mlp(n_features, args.hidden, n_classes, args.activation, args.seed, dropout)
    shape = image_shape(args, n_features)
    return build_cnn(shape, args.conv, args.hidden, n_classes, args.activation, args.seed, dropout)


def _distributed_root(distributed: bool) -> bool:
    """Whether this process reports and saves: with --distributed, only MPI rank 0 does."""
    if not distributed:
        return True
    from ..distributed import _mpi, rank

    try:
        _mpi()
    except ImportError as e:
        raise CommandError(str(e)) from None
    if rank() != 0:
        sys.stdout = io.StringIO()  # the other ranks train silently
        return False
    return True


def _write_plot(path: str, model: Any, history: Any, X: np.ndarray, y: np.ndarray) -> None:
    from ..plot import _curves, _panels, _pyplot, plot_decision_boundary, plot_history

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
    model = load_model(args.model, args.backend)
    _, X_test, _, y_test = load_data(args)
    _check_width(model, X_test, f"data set {args.dataset!r}")
    loss, accuracy = _scores(model, X_test, y_test)
    print(f"test samples: {X_test.shape[0]}")
    print(f"test loss: {loss:.4f}")
    print(f"test accuracy: {accuracy:.4f}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    model = load_model(args.model, args.backend)
    if args.out:
        check_output("--out", args.out)
    X = read_samples(args.input, args.target)
    hint = ""
    width = n_inputs(model)
    if width is not None and X.shape[1] == width + 1 and args.target is None:
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
    from ..backend import dtype_name
    from ..export import _check_batch_dim, export_onnx

    model = load_model(args.model, "numpy")  # exporting reads the arrays on the host anyway
    _check_batch_dim(args.batch_dim)
    shape = _input_shape(args.input_shape) if args.input_shape is not None else model.input_shape()
    if shape is None and n_inputs(model) is not None:  # a cnn built by `portnn train`
        shape = (n_inputs(model),)
    check_output("OUT", args.out)  # as train --out and predict --out
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
