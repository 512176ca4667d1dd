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

from .files import check_output, load_model, read_samples
from .models import (
    build_cnn,
    build_mlp,
    choose_optimizer,
    describe,
    image_shape,
    model_kind,
    n_inputs,
    n_outputs,
)
from .parser import CommandError
from .sources import Split, test_split, training_split
from .tables import Encoding, read_table


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
    from ..train.inference import predict_classes

    return to_numpy(predict_classes(model, X)).astype(np.int64)


def _scores(model: Any, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean loss, accuracy) on ``(X, y)``: the model's loss, else cross-entropy."""
    loss = model.loss
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

    data = training_split(args)
    model = _build(args, kind, data)
    regression = data.task == "regression"
    outputs = "a value to predict" if regression else f"{data.n_outputs} classes"
    print(
        f"data: {args.dataset}: {data.X_train.shape[0]} train / {data.X_test.shape[0]} test samples, "
        f"{data.X_train.shape[1]} features, {outputs}"
    )
    for note in data.notes:
        print(note)
    epochs = args.epochs if args.epochs is not None else _default_epochs(data, args.batch_size)
    print(
        f"model: {kind} {describe(model)} ({args.activation}), {model.num_parameters():,} "
        f"parameters, {type(optimizer).__name__} lr={optimizer.lr:g}, backend {backend}"
    )
    start = time.perf_counter()
    history = model.fit(
        data.X_train,
        data.y_train,
        loss="mse" if regression else "cross_entropy",
        optimizer=optimizer,
        epochs=epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        verbose=args.verbose,
        validation_data=(data.X_test, data.y_test),
        metrics=["mae", "r2"] if regression else ["accuracy"],
        distributed=args.distributed,
    )
    seconds = time.perf_counter() - start
    print(f"trained {epochs} epochs in {seconds:.2f}s")
    _print_scores(model, data.task, data.X_test, data.y_test)
    if args.out and root:
        model.save(args.out, metadata={"cli": _file_notes(args, data)})
        print(f"saved model to {args.out}")
    if args.plot and root:
        _write_plot(args.plot, model, history, data.X_train, data.y_train)
        print(f"saved plot to {args.plot}")
    return 0


def _default_epochs(data: Split, batch_size: int) -> int:
    """20 epochs; for a CSV table, as many as 300 steps take where that is more (a small
    table has few steps an epoch), said in a line."""
    if data.encoding is None:
        return 20
    steps = -(-data.X_train.shape[0] // batch_size)
    epochs = max(20, -(-300 // steps))
    if epochs > 20:
        print(f"epochs: {epochs} (300 steps of {batch_size} rows for a table of "
              f"{data.X_train.shape[0]}; --epochs to choose)")
    return epochs


def _file_notes(args: argparse.Namespace, data: Split) -> dict[str, Any]:
    """What the model file keeps for ``evaluate`` and ``predict``: the task, and a CSV's layout."""
    notes: dict[str, Any] = {"task": data.task}
    if data.encoding is not None:
        notes["table"] = data.encoding.to_json()
    return notes


def _print_scores(model: Any, task: str, X: np.ndarray, y: np.ndarray) -> None:
    if task == "regression":
        scores = model.evaluate(X, y, loss="mse", metrics=["mae", "r2"])
        print(f"test mse: {float(scores['loss']):.4f}")
        print(f"test mae: {float(scores['mae']):.4f}")
        print(f"test r2: {float(scores['r2']):.4f}")
        return
    loss, accuracy = _scores(model, X, y)
    print(f"test loss: {loss:.4f}")
    print(f"test accuracy: {accuracy:.4f}")


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


def _build(args: argparse.Namespace, kind: str, data: Split) -> Any:
    """The network of ``--model``: dropout 0.5 by default in a cnn, none in an mlp; a CSV's
    features standardized first (unless --no-scale); a regression's output put back in the
    target's units by a frozen last layer (so the layers before it learn a standardized target)."""
    import portnn as pn

    dropout = args.dropout if args.dropout is not None else (0.5 if kind == "cnn" else 0.0)
    before, after = [], []
    if data.encoding is not None and not args.no_scale:
        before.append(pn.Standardize().adapt(data.X_train))
    if data.task == "regression":
        mean, std = float(np.mean(data.y_train)), float(np.std(data.y_train)) or 1.0
        # float32 as the rest of the network (explicit weights keep the dtype they are given in)
        unscale = pn.Dense(1, 1, weight=np.array([[std]], dtype=np.float32), bias=np.array([mean], dtype=np.float32))
        unscale.trainable = False
        after.append(unscale)
    n_features = data.X_train.shape[1]
    if kind == "mlp":
        return build_mlp(n_features, args.hidden, data.n_outputs, args.activation, args.seed, dropout,
                         before=before, after=after)
    shape = image_shape(args, n_features)
    return build_cnn(shape, args.conv, args.hidden, data.n_outputs, args.activation, args.seed, dropout,
                     before=before, after=after)


def _distributed_root(distributed: bool) -> bool:
    """Whether this process reports and saves: with --distributed, only MPI rank 0 does."""
    if not distributed:
        return True
    from ..train.distributed import _mpi, rank

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


def _file_notes_of(model: Any, where: str) -> tuple[str, Encoding | None]:
    """The task and the CSV layout ``train`` kept in the model file (classification and
    none for a file from elsewhere)."""
    notes = (getattr(model, "metadata", None) or {}).get("cli") or {}
    task = notes.get("task", "classification")
    if task not in ("classification", "regression"):
        raise CommandError(f"{where}: the stored task {task!r} is neither classification nor regression")
    table = notes.get("table")
    return task, (Encoding.from_json(table, where) if table is not None else None)


def cmd_evaluate(args: argparse.Namespace) -> int:
    model = load_model(args.model, args.backend)
    task, encoding = _file_notes_of(model, args.model)
    X_test, y_test = test_split(args, encoding)
    _check_width(model, X_test, f"data set {args.dataset!r}")
    print(f"test samples: {X_test.shape[0]}")
    _print_scores(model, task, X_test, y_test)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    model = load_model(args.model, args.backend)
    task, encoding = _file_notes_of(model, args.model)
    if args.proba and task == "regression":
        raise CommandError("--proba: the model predicts values (a regression), not classes")
    if args.out:
        check_output("--out", args.out)
    X = _samples_for(args, encoding)
    hint = ""
    width = n_inputs(model)
    if width is not None and X.shape[1] == width + 1 and args.target is None:
        hint = "; leave out a label column with --target COL"
    _check_width(model, X, f"{args.input}", hint)
    classes = encoding.classes if encoding is not None else None
    header, rows = _predictions(model, task, X, classes, args.proba)
    if args.out:
        with open(args.out, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
        print(f"wrote {len(rows)} predictions to {args.out}")
    else:
        lines = ([",".join(header)] if args.proba else []) + [",".join(row) for row in rows]
        sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


def _samples_for(args: argparse.Namespace, encoding: Encoding | None) -> np.ndarray:
    """The rows to predict: a CSV with a header read by the model's column names, when it
    was trained on a CSV; anything else as numbers in the order given."""
    if encoding is not None and args.input.lower().endswith(".csv") and args.target is None:
        try:
            table = read_table(args.input, "--input")
        except CommandError:
            table = None  # no header row: the columns are taken in order
        except (OSError, UnicodeDecodeError):
            table = None  # read_samples names the problem
        if table is not None:
            return encoding.features_of(table, args.ignore_unknown)
    return read_samples(args.input, args.target)


def _predictions(model: Any, task: str, X: np.ndarray, classes: list[str] | None,
                 proba: bool) -> tuple[list[str], list[list[str]]]:
    from ..backend import to_numpy

    if task == "regression":
        values = np.asarray(to_numpy(model.predict(X)), dtype=np.float64).reshape(len(X), -1)[:, 0]
        return ["prediction"], [[f"{v:.6g}"] for v in values]
    if proba:
        p = np.asarray(to_numpy(model.predict_proba(X)), dtype=np.float64)
        names = classes or [str(k) for k in range(p.shape[1])]
        return names, [[f"{v:.6g}" for v in row] for row in p]
    predicted = _predicted_classes(model, X)
    names = classes or [str(k) for k in range(int(predicted.max(initial=0)) + 1)]
    return ["prediction"], [[names[int(c)]] for c in predicted]


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
