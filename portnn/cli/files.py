"""The ``portnn`` command's files: the data sets, saved models, sample files and outputs it reads and writes."""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .parser import CommandError


def check_output(option: str, path: str) -> None:
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


def unreadable(option: str, path: Any, e: Exception) -> CommandError | None:
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


def load_data(args: argparse.Namespace) -> Any:
    """``load_dataset`` for the command's --dataset, --test-size, --seed and --target."""
    from ..datasets import load_dataset

    try:
        return load_dataset(
            args.dataset, test_size=args.test_size, seed=args.seed, target=args.target
        )
    except ValueError as e:  # UnicodeDecodeError included
        found = unreadable("--dataset", args.dataset, e)
        if found is None:
            raise
        raise found from None


def load_model(path: str, backend: str | None) -> Any:
    if not Path(path).is_file():
        raise CommandError(f"no model file {path!r}")
    try:
        from ..io import load
    except ImportError as e:
        raise CommandError(
            f"loading models needs portnn.io, which could not be imported ({e})"
        ) from None
    return load(path, backend=backend)


def read_samples(path: str, column: str | int | None) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise CommandError(f"no input file {path!r}")
    suffix = p.suffix.lower()
    if column is not None and suffix != ".csv":
        raise CommandError("--target applies to CSV input only")
    try:
        X = read_sample_file(p, suffix, column)
    except (ValueError, OSError) as e:  # UnicodeDecodeError included
        found = unreadable("--input", path, e)
        if found is None:  # a truncated or corrupt .npy/.npz, an unreadable file
            found = CommandError(f"--input {path}: cannot be read ({' '.join(str(e).split())})")
        raise found from None
    X = np.asarray(X)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim > 2 and X.shape[0]:  # images, (N, C, H, W): a row of features each, as the model takes
        X = X.reshape(X.shape[0], -1)
    if X.ndim != 2 or X.shape[0] == 0:
        raise CommandError(f"{path}: expected a 2-D array of samples, got shape {X.shape}")
    if X.dtype.kind not in "iufb":
        raise CommandError(f"{path}: samples must be numbers, got dtype {X.dtype}")
    return X.astype(np.float32)


def read_sample_file(p: Path, suffix: str, column: str | int | None) -> Any:
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
        X = read_csv_samples(p, column)
    else:
        raise CommandError(
            f"{path}: unsupported input type {suffix or '(none)'!r}; use .csv, .npz or .npy"
        )
    return X


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_csv_samples(path: Path, column: str | int | None) -> np.ndarray:
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
            i = next(i for i in keep if not is_number(row[i]))
            name = f"column {header[i]!r}" if header is not None else f"column {i}"
            hint = "; leave out a label column with --target COL" if column is None else ""
            raise CommandError(
                f"{path}, row {line}, {name}: {row[i].strip()!r} is not a number{hint}"
            ) from None
    if not samples:
        raise CommandError(f"{path}: no data rows")
    return np.array(samples, dtype=np.float64)
