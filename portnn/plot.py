"""Plots of training: learning curves and 2-D decision boundaries (matplotlib).

matplotlib is imported on first use (``pip install "portnn[plot]"``). Where no
display is available (and no backend was chosen with ``MPLBACKEND``), the
non-interactive "Agg" backend is used, so plots can always be saved to files.

Both functions return the matplotlib :class:`~matplotlib.figure.Figure` and
save it to ``path`` when one is given. Figures made here are pyplot figures:
close them with ``matplotlib.pyplot.close(fig)`` when you are done.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .backend import to_numpy

__all__ = ["plot_decision_boundary", "plot_history"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError('plotting needs matplotlib: pip install "portnn[plot]"') from None
    headless = (
        sys.platform.startswith("linux")
        and not os.environ.get("DISPLAY")
        and not os.environ.get("WAYLAND_DISPLAY")
    )
    if headless and not os.environ.get("MPLBACKEND") and "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig: Any, path: Any) -> Any:
    if path is not None:
        fig.savefig(os.fspath(path), dpi=100, bbox_inches="tight")
    return fig


def _curves(history: Any) -> dict[str, list[float]]:
    curves = getattr(history, "history", history)
    if not isinstance(curves, Mapping):
        raise TypeError(
            "history must be a History (what fit returns) or a dict of lists, "
            f"got {type(history).__name__}"
        )
    return {str(k): [float(v) for v in values] for k, values in curves.items() if len(values)}


def _panels(curves: Mapping[str, list[float]]) -> list[str]:
    """Panel names: "loss" first, then each metric; a ``val_x`` curve joins the panel of ``x``.

    A constant learning rate (``"lr"``, logged by ``fit``) gets no panel; a scheduled one does.
    """
    names = [k for k in curves if not k.startswith("val_")]
    names += [k[4:] for k in curves if k.startswith("val_") and k[4:] not in curves]
    if "lr" in names and len(set(curves.get("lr", []))) <= 1:
        names.remove("lr")
    names.sort(key=lambda k: k != "loss")
    return names


def plot_history(history: Any, path: Any = None, ax: Any = None) -> Any:
    """Learning curves: loss per epoch, and each metric, with their ``val_`` counterparts.

    Args:
        history: a :class:`~portnn.History` (what ``fit`` returns) or a dict of
            per-epoch lists such as ``{"loss": [...], "val_loss": [...]}``.
        path: save the figure to this file (PNG, SVG, PDF... by its suffix).
        ax: draw into these axes instead of a new figure: one Axes (every curve
            on it), or a sequence of Axes, one per panel (loss first, then each
            metric in the order of ``history``; a learning rate ``"lr"`` that
            never changed gets no panel).

    Returns:
        The matplotlib Figure.
    """
    curves = _curves(history)
    if not curves:
        raise ValueError("history has no recorded values to plot (was fit run for 0 epochs?)")
    names = _panels(curves)
    plt = _pyplot()
    if ax is None:
        fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
        axes = list(axes[0])
    elif isinstance(ax, Sequence | np.ndarray):
        axes = list(np.ravel(np.asarray(ax, dtype=object)))
        if len(axes) < len(names):
            raise ValueError(
                f"history has {len(names)} panels ({', '.join(names)}), got {len(axes)} axes"
            )
        fig = axes[0].figure
    else:
        axes = [ax] * len(names)
        fig = ax.figure
    shared = len({id(a) for a in axes}) == 1
    for a, name in zip(axes, names):
        for key, style, label in ((name, "-", "train"), ("val_" + name, "--", "validation")):
            if key in curves:
                values = curves[key]
                epochs = np.arange(1, len(values) + 1)
                marker = "o" if len(values) < 30 else None
                a.plot(epochs, values, style, marker=marker, label=key if shared else label)
        a.set_xlabel("epoch")
        a.set_ylabel("value" if shared else name)
        a.set_title("training history" if shared else name.replace("_", " "))
        a.grid(True, alpha=0.3)
        if shared or "val_" + name in curves:
            a.legend()
    if ax is None:
        fig.tight_layout()
    return _finish(fig, path)


def _predicted_classes(model: Any, X: np.ndarray) -> np.ndarray:
    from .nn import Module

    if isinstance(model, Module):
        from .training import predict_classes

        return to_numpy(predict_classes(model, X)).astype(np.int64)
    outputs = np.asarray(to_numpy(model.predict(X)))
    if outputs.ndim == 1 or outputs.shape[-1] == 1:
        return (outputs.reshape(-1) > 0.5).astype(np.int64)
    return np.argmax(outputs, axis=-1)


def plot_decision_boundary(
    model: Any, X: Any, y: Any, path: Any = None, ax: Any = None, resolution: int = 200
) -> Any:
    """The class a model predicts over the plane, with the labelled points on top.

    The grid covers ``X`` with a margin; each grid point is coloured by the
    model's predicted class: the argmax of its outputs, or for a model with one
    output a threshold of 0.5 on probabilities (after a ``Sigmoid``) and of 0 on
    scores (a model trained with ``from_logits=True``), as in ``predict_classes``.

    Args:
        model: a trained model taking two features (anything with ``predict``).
        X: points of shape ``(n, 2)``, any array library.
        y: their integer class labels, shape ``(n,)``.
        path: save the figure to this file.
        ax: draw into these axes instead of a new figure.
        resolution: grid points along each axis.

    Returns:
        The matplotlib Figure.
    """
    X = np.asarray(to_numpy(X), dtype=np.float64)
    y = np.asarray(to_numpy(y)).reshape(-1)
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"a decision boundary is drawn for 2 features; X has shape {X.shape}")
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"y has {y.shape[0]} labels for {X.shape[0]} points")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        raise ValueError(f"resolution must be an integer >= 2, got {resolution!r}")
    low, high = X.min(axis=0), X.max(axis=0)
    pad = np.maximum((high - low) * 0.1, 0.5)
    xs = np.linspace(low[0] - pad[0], high[0] + pad[0], resolution)
    ys = np.linspace(low[1] - pad[1], high[1] + pad[1], resolution)
    xx, yy = np.meshgrid(xs, ys)
    grid = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float32)
    zz = _predicted_classes(model, grid).reshape(xx.shape)

    plt = _pyplot()
    from matplotlib.colors import ListedColormap

    labels = y.astype(np.int64) if y.size else np.zeros(0, np.int64)
    n_classes = int(max(zz.max(), labels.max() if labels.size else 0)) + 1
    colors = plt.get_cmap("tab10").colors
    cmap = ListedColormap([colors[i % len(colors)] for i in range(n_classes)])
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 4.5))
    else:
        fig = ax.figure
    levels = np.arange(n_classes + 1) - 0.5
    ax.contourf(xx, yy, zz, levels=levels, cmap=cmap, alpha=0.3)
    if n_classes > 1:
        ax.contour(xx, yy, zz, levels=levels[1:-1], colors="k", linewidths=0.8, alpha=0.6)
    ax.scatter(
        X[:, 0],
        X[:, 1],
        c=labels,
        cmap=cmap,
        vmin=-0.5,
        vmax=n_classes - 0.5,
        edgecolors="k",
        linewidths=0.6,
        s=40 if X.shape[0] <= 200 else 15,
    )
    ax.set_xlim(xs[0], xs[-1])
    ax.set_ylim(ys[0], ys[-1])
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.set_title("decision boundary")
    return _finish(fig, path)
