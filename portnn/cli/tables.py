"""A user's own CSV table: which column is the target, what task it asks for, and how
every other column becomes numbers.

:class:`Encoding` is what ``portnn train`` learns from the training rows and keeps in
the model file: the target column, the task, the class names, and per feature column
either "a number" or the categories seen in training (one-hot encoded). ``evaluate``
and ``predict`` read the same layout of CSV with it and need no repeated flags.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .parser import CommandError

TASKS = ("classification", "regression")
# at most this many distinct whole numbers in the target still read as classes
MAX_NUMBERED_CLASSES = 20


@dataclass
class Table:
    """A CSV file's header and rows of text cells (blank lines left out)."""

    path: str
    header: list[str]
    rows: list[list[str]]

    def column(self, index: int) -> list[str]:
        return [row[index].strip() for row in self.rows]

    def index(self, option: str, column: str | int) -> int:
        """The position of ``column`` (a name, or an index that may be negative)."""
        width = len(self.header)
        if isinstance(column, int):
            if not -width <= column < width:
                raise CommandError(f"{option} {column}: out of range for the {width} columns of {self.path}")
            return column % width
        if column not in self.header:
            raise CommandError(
                f"{option} {column!r}: {self.path} has no such column; the columns are {', '.join(self.header)}"
            )
        return self.header.index(column)


def read_table(path: str | Path, option: str = "--dataset") -> Table:
    """The header and rows of a CSV file with a header row; each row as wide as the header."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise CommandError(f"{option} {path}: a CSV file needs a header row and at least one data row")
    header = [name.strip() for name in rows[0]]
    if all(_is_number(name) for name in header):
        raise CommandError(f"{option} {path}: the first row holds numbers; give the file a header row of column names")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise CommandError(f"{path}, row {line}: {len(row)} values, but the header names {len(header)} columns")
    return Table(str(path), header, rows[1:])


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def detect_task(values: list[str], name: str) -> tuple[str, str]:
    """("classification" or "regression", why): text labels and a few whole numbers are
    classes; other numbers are a quantity to predict."""
    distinct = sorted(set(values))
    if not all(_is_number(v) for v in distinct):
        return "classification", f"the target {name!r} holds {len(distinct)} text labels"
    numbers = {float(v) for v in distinct}
    whole = all(v == round(v) for v in numbers)
    if whole and len(numbers) <= MAX_NUMBERED_CLASSES:
        return "classification", f"the target {name!r} holds {len(numbers)} distinct whole numbers"
    kind = "whole numbers" if whole else "numbers with fractions"
    return "regression", f"the target {name!r} holds {len(numbers)} distinct {kind}"


@dataclass
class Encoding:
    """How a table's rows become ``(X, y)``, learned from the training rows."""

    target: str
    task: str
    # per feature column: [name, None] for a number, [name, [categories...]] for text
    features: list[tuple[str, list[str] | None]]
    classes: list[str] | None = None  # the class names, in the order of the outputs
    ignored: list[str] = field(default_factory=list)

    @property
    def n_inputs(self) -> int:
        return sum(1 if cats is None else len(cats) for _, cats in self.features)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "task": self.task,
            "features": [[name, cats] for name, cats in self.features],
            "classes": self.classes,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Encoding:
        """Read back :meth:`to_json`, checking every field (the file may be anyone's)."""
        def bad(what: str) -> CommandError:
            return CommandError(f"{where}: the stored table layout is not valid ({what})")

        if not isinstance(data, dict) or not isinstance(data.get("target"), str):
            raise bad("no target column")
        if data.get("task") not in TASKS:
            raise bad(f"task {data.get('task')!r}")
        features = data.get("features")
        if not isinstance(features, list) or not features:
            raise bad("no feature columns")
        checked = []
        for item in features:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                raise bad(f"feature {item!r}")
            cats = item[1]
            if cats is not None and not (isinstance(cats, list) and cats and all(isinstance(c, str) for c in cats)):
                raise bad(f"categories of {item[0]!r}")
            checked.append((item[0], cats))
        classes = data.get("classes")
        if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
            raise bad("class names")
        return cls(data["target"], data["task"], checked, classes)

    def labels(self, values: list[str], where: str) -> np.ndarray:
        """Targets as the model's loss takes them: class indices, or float values."""
        if self.task == "regression":
            bad = next((v for v in values if not _is_number(v)), None)
            if bad is not None:
                raise CommandError(f"{where}: the target {self.target!r} holds {bad!r}, not a number")
            return np.array([float(v) for v in values], dtype=np.float32)
        assert self.classes is not None
        index = {name: i for i, name in enumerate(self.classes)}
        values = [_class_number(v) if v not in index else v for v in values]  # "3.0" is class "3"
        unknown = sorted({v for v in values if v not in index})
        if unknown:
            raise CommandError(
                f"{where}: the target {self.target!r} holds {unknown[0]!r}, not one of the "
                f"classes the model knows ({', '.join(self.classes)})"
            )
        return np.array([index[v] for v in values], dtype=np.int64)

    def features_of(self, table: Table, ignore_unknown: bool = False) -> np.ndarray:
        """The rows of ``table`` as float32 features, columns found by name."""
        blocks = []
        for name, cats in self.features:
            if name not in table.header:
                raise CommandError(
                    f"{table.path}: no column {name!r}, which the model takes; "
                    f"the columns are {', '.join(table.header)}"
                )
            values = table.column(table.header.index(name))
            blocks.append(_numbers(table.path, name, values) if cats is None
                          else _one_hot(table.path, name, values, cats, ignore_unknown))
        return np.concatenate(blocks, axis=1).astype(np.float32)


def _class_number(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if math.isfinite(number) and number == round(number) else value


def _numbers(path: str, name: str, values: list[str]) -> np.ndarray:
    bad = next((i for i, v in enumerate(values) if not _is_number(v)), None)
    if bad is not None:
        raise CommandError(
            f"{path}, row {bad + 2}, column {name!r}: {values[bad]!r} is not a number "
            "(the model was trained with numbers in this column)"
        )
    return np.array([float(v) for v in values], dtype=np.float64)[:, None]


def _one_hot(path: str, name: str, values: list[str], cats: list[str], ignore_unknown: bool) -> np.ndarray:
    index = {c: i for i, c in enumerate(cats)}
    unknown = next((i for i, v in enumerate(values) if v not in index), None)
    if unknown is not None and not ignore_unknown:
        raise CommandError(
            f"{path}, row {unknown + 2}, column {name!r}: {values[unknown]!r} is a category the model "
            f"did not see in training ({', '.join(cats)}); pass --ignore-unknown to encode it as none of them"
        )
    out = np.zeros((len(values), len(cats)))
    for row, v in enumerate(values):
        if v in index:
            out[row, index[v]] = 1.0
    return out


def learn_encoding(table: Table, target: int, task: str, train_rows: np.ndarray) -> Encoding:
    """The encoding of ``table`` with ``target`` the label column, from the training rows only."""
    features = []
    for i, name in enumerate(table.header):
        if i == target:
            continue
        values = [table.rows[r][i].strip() for r in train_rows]
        if all(_is_number(v) for v in values):
            features.append((name, None))
        else:
            features.append((name, sorted(set(values))))
    classes = class_names(table.column(target), table.path) if task == "classification" else None
    if not features:
        raise CommandError(f"{table.path}: needs at least one feature column besides the target")
    return Encoding(table.header[target], task, features, classes)


def class_names(values: list[str], where: str) -> list[str]:
    """The class names in the order of the model's outputs: text labels sorted; whole
    numbers are class numbers kept as they are, "0", "1", ..., "K-1" for the largest K-1
    (K at most the number of rows: a label such as 1000000000 would otherwise ask for that
    many outputs)."""
    distinct = sorted(set(values))
    if not all(_is_number(v) for v in distinct):
        return distinct
    numbers = [float(v) for v in distinct]
    if any(v != round(v) or v < 0 for v in numbers):
        raise CommandError(f"--dataset {where}: class numbers must be whole numbers >= 0; use text labels otherwise")
    top = int(max(numbers))
    if top + 1 > len(values):
        raise CommandError(
            f"--dataset {where}: the largest label is {top}, which would make {top + 1} classes for "
            f"{len(values)} samples; number the classes 0, 1, ..., K-1 (K at most the number of "
            "samples), or use text labels"
        )
    return [str(k) for k in range(top + 1)]


def label_hint(table: Table, target: int) -> str | None:
    """A note when the first column looks like the labels and the target is another one."""
    if target == 0:
        return None
    first = table.column(0)
    distinct = set(first)
    if not all(_is_number(v) for v in distinct) and len(distinct) <= max(2, len(first) // 5):
        return (
            f"note: the first column {table.header[0]!r} holds {len(distinct)} text values, like labels; "
            f"if it is the target, pass --target {table.header[0]}"
        )
    return None


def split_rows(n: int, y: np.ndarray | None, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the training and test parts: stratified by class when ``y`` is given
    (the split ``load_dataset`` makes of the same file), shuffled otherwise."""
    from ..datasets import train_test_split

    if y is not None:
        train, test, _, _ = train_test_split(np.arange(n)[:, None], y, test_size=test_size, seed=seed)
        return train[:, 0], test[:, 0]
    order = np.random.default_rng([seed, 1]).permutation(n)
    n_test = min(max(round(test_size * n), 1), n - 1)
    return order[n_test:], order[:n_test]
