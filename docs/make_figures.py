"""Make the figures of the documentation, under docs/_static/.

    python docs/make_figures.py              # every figure
    python docs/make_figures.py mnist_cnn    # the figures of one function below

It runs the code of the tutorial (docs/tutorial.rst) and the ``--plot``
example of docs/cli.rst, and saves the figures at a low resolution (80 dpi,
then 64 colours), so the PNG files committed to the repository stay small.
Everything is seeded: running it again gives the same pictures. The
convolutional network of the tutorial trains for about two minutes.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's portnn

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402 (comes with matplotlib)
from threadpoolctl import threadpool_limits  # noqa: E402 (comes with scikit-learn)

import portnn as pn  # noqa: E402
from portnn.datasets import load_dataset  # noqa: E402
from portnn.plot import (  # noqa: E402
    plot_decision_boundary,
    plot_filters,
    plot_history,
    plot_misclassified,
)

STATIC = HERE / "_static"
DPI = 80


def shrink(path: Path) -> None:
    """Re-encode a PNG with a 64-colour palette (plots have few colours)."""
    image = Image.open(path).convert("RGB")
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def save(fig, name: str) -> None:
    path = STATIC / name
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    shrink(path)
    print(f"wrote {path.relative_to(HERE.parent)} ({path.stat().st_size // 1024} KiB)")


def seed8_boundary() -> None:
    """The 2-4-1 network of examples/seed8.py and its decision boundary."""
    X = np.array([[3, 1], [2, 5], [1, 8], [6, 4], [5, 2], [3, 5], [4, 7], [4, -1]], dtype=float)
    y = np.array([0, 1, 1, 0, 0, 1, 1, 0])
    model = pn.Sequential(
        pn.Dense(2, 4, seed=0), pn.Sigmoid(), pn.Dense(4, 1, seed=1), pn.Sigmoid()
    )
    model.fit(
        X, y, loss="binary_cross_entropy", optimizer=pn.SGD(lr=0.5, momentum=0.9),
        epochs=2000, seed=0, verbose=0,
    )
    save(plot_decision_boundary(model, X, y), "seed8_boundary.png")


def digits_history() -> None:
    """The digits network of the tutorial and its learning curves."""
    X_train, X_test, y_train, y_test = load_dataset("digits")
    model = pn.Sequential(
        pn.Dense(64, 128, init="he_normal", seed=0), pn.ReLU(), pn.Dropout(0.2, seed=0),
        pn.Dense(128, 10, seed=1),
    )
    stop = pn.EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True)
    history = model.fit(
        X_train, y_train, loss="cross_entropy", optimizer=pn.Adam(lr=1e-3),
        epochs=200, batch_size=64, seed=0, verbose=0, validation_split=0.2,
        metrics=["accuracy"], callbacks=[stop],
    )
    save(plot_history(history), "digits_history.png")


def mnist_cnn() -> None:
    """The convolutional network of the tutorial: its first filters and its mistakes."""
    X_train, X_test, y_train, y_test = load_dataset("mnist5k", images=True)
    model = pn.Sequential(
        pn.Conv2D(1, 32, 5, seed=0), pn.ReLU(), pn.MaxPool2D(2),
        pn.Conv2D(32, 64, 5, seed=1), pn.ReLU(), pn.MaxPool2D(2),
        pn.Flatten(), pn.Dense(64 * 4 * 4, 128, seed=2), pn.ReLU(), pn.Dropout(0.5, seed=3),
        pn.Dense(128, 10, seed=4),
    )
    model.fit(
        X_train, y_train, loss="cross_entropy", optimizer=pn.Adam(lr=1e-3),
        epochs=20, batch_size=64, seed=0, verbose=0,
    )
    accuracy = model.evaluate(X_test, y_test, metrics=["accuracy"])["accuracy"]
    print(f"mnist5k CNN: test accuracy {accuracy:.4f}")
    save(plot_filters(model[0], ncols=8), "mnist_filters.png")
    save(plot_misclassified(model, X_test, y_test, n=16), "mnist_misclassified.png")


def cli_moons() -> None:
    """The figure of ``portnn train --dataset moons ... --plot moons.png``."""
    from portnn.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "moons.png")
        status = main(
            ["train", "--dataset", "moons", "--hidden", "32,32", "--epochs", "60",
             "--plot", path, "--verbose", "0"]
        )
        if status != 0:
            raise SystemExit(status)
        target = STATIC / "cli_moons.png"
        Image.open(path).save(target)
    shrink(target)
    print(f"wrote {target.relative_to(HERE.parent)} ({target.stat().st_size // 1024} KiB)")


FIGURES = {
    "seed8_boundary": seed8_boundary,
    "digits_history": digits_history,
    "cli_moons": cli_moons,
    "mnist_cnn": mnist_cnn,
}

if __name__ == "__main__":
    names = sys.argv[1:] or list(FIGURES)
    unknown = sorted(set(names) - set(FIGURES))
    if unknown:
        raise SystemExit(f"unknown figures {unknown}; the figures are {', '.join(FIGURES)}")
    STATIC.mkdir(exist_ok=True)
    with threadpool_limits(1):
        for name in names:
            FIGURES[name]()
