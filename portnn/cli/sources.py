"""Where ``portnn train`` and ``evaluate`` get their samples: a built-in data set, an
.npz file, or a user's CSV table (read with the layout a model file keeps)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import load_data
from .models import class_count
from .parser import CommandError
from .tables import Encoding, class_names, detect_task, label_hint, learn_encoding, read_table, split_rows


@dataclass
class Split:
    """The training and test parts, what they are for, and (for a CSV) how they were read."""

    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    task: str
    n_outputs: int  # classes, or 1 for regression
    encoding: Encoding | None = None
    notes: tuple[str, ...] = ()


def is_table(dataset: str) -> bool:
    return Path(dataset).suffix.lower() == ".csv"


def training_split(args: argparse.Namespace) -> Split:
    """The data of ``train``: a CSV's task detected (or ``--task``), its layout learned
    from the training rows; built-in data sets and .npz files are classifications."""
    if not is_table(args.dataset):
        if args.task == "regression":
            raise CommandError(f"--task regression: {args.dataset} is a classification data set; "
                               "regression needs a CSV file with a numeric target column")
        X_train, X_test, y_train, y_test = load_data(args)
        n_classes = class_count(args.dataset, y_train, y_test)
        return Split(X_train, X_test, y_train, y_test, "classification", n_classes)
    table = _table(args.dataset)
    target = table.index("--target", -1 if args.target is None else args.target)
    values = table.column(target)
    task, why = detect_task(values, table.header[target])
    notes = [f"task: {task} ({why})" if args.task == "auto" else f"task: {args.task} (--task)"]
    if args.task != "auto":
        task = args.task
    hint = label_hint(table, target) if args.target is None else None
    if hint:
        notes.append(hint)
    stratify = None
    if task == "classification":
        names = class_names(values, args.dataset)
        stratify = Encoding(table.header[target], task, [], names).labels(values, args.dataset)
    train, test = split_rows(len(table.rows), stratify, args.test_size, args.seed)
    encoding = learn_encoding(table, target, task, train)
    if task == "classification" and len(encoding.classes or ()) < 2:
        raise CommandError(f"{args.dataset}: needs at least two classes, found only {encoding.classes}")
    X = encoding.features_of(table)
    y = encoding.labels(values, args.dataset)
    n_outputs = len(encoding.classes) if encoding.classes is not None else 1
    return Split(X[train], X[test], y[train], y[test], task, n_outputs, encoding, tuple(notes))


def test_split(args: argparse.Namespace, encoding: Encoding | None) -> tuple[np.ndarray, np.ndarray]:
    """``evaluate``'s test part: the rows ``train`` held out for the same --seed and --test-size."""
    if encoding is None or not is_table(args.dataset):
        _, X_test, _, y_test = load_data(args)
        return X_test, y_test
    table = _table(args.dataset)
    target = table.index("--target", encoding.target if args.target is None else args.target)
    values = table.column(target)
    y = encoding.labels(values, args.dataset)
    stratify = y if encoding.task == "classification" else None
    _, test = split_rows(len(table.rows), stratify, args.test_size, args.seed)
    return encoding.features_of(table, getattr(args, "ignore_unknown", False))[test], y[test]


def _table(path: str):
    if not Path(path).is_file():
        raise CommandError(f"no data file {path!r}")
    try:
        return read_table(path)
    except UnicodeDecodeError as e:
        raise CommandError(f"--dataset {path}: not UTF-8 text (at offset {e.start}); save the file as UTF-8") from None
