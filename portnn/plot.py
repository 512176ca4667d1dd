"""Plots of training and of models: learning curves, 2-D decision boundaries, the
filters of a convolution and the images a classifier gets wrong (matplotlib).

matplotlib is imported on first use (``pip install "portnn[plot]"``). Where no
display is available (and no backend was chosen with ``MPLBACKEND``), the
non-interactive "Agg" backend is used, so plots can always be saved to files.

Every function returns the matplotlib :class:`~matplotlib.figure.Figure` and
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

__all__ = ["plot_decision_boundary", "plot_filters", "plot_history", "plot_misclassified"]


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


def _predicted_classes(model: Any, X: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    from .nn import Module

    if isinstance(model, Module):
        from .train.inference import predict_classes

        return to_numpy(predict_classes(model, X, batch_size=batch_size)).astype(np.int64)
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


def _grid(n: int, ncols: int | None, name: str = "ncols") -> tuple[int, int]:
    """(rows, columns) of a grid of ``n`` cells: ``ncols`` columns, or about a square."""
    if ncols is None:
        ncols = max(1, int(np.ceil(np.sqrt(n))))
    elif isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {ncols!r}")
    ncols = min(ncols, max(n, 1))
    return int(np.ceil(max(n, 1) / ncols)), ncols


def _cells(plt: Any, n: int, ncols: int | None, ax: Any, cell: float) -> tuple[Any, list[Any]]:
    """A figure and ``n`` axes: a new grid (``ax`` None) or the given sequence of Axes."""
    if ax is None:
        rows, cols = _grid(n, ncols)
        fig, grid = plt.subplots(
            rows, cols, figsize=(cell * cols, cell * rows + 0.3), squeeze=False
        )
        axes = list(grid.ravel())
        for extra in axes[n:]:
            extra.set_axis_off()
        return fig, axes[:n]
    axes = (
        list(np.ravel(np.asarray(ax, dtype=object)))
        if isinstance(ax, Sequence | np.ndarray)
        else [ax]
    )
    if len(axes) < n:
        raise ValueError(f"ax: {n} images to draw, got {len(axes)} axes")
    return axes[0].figure, axes[:n]


def _image(a: Any, picture: np.ndarray, **kwargs: Any) -> Any:
    a.set_xticks([])
    a.set_yticks([])
    return a.imshow(picture, interpolation="nearest", **kwargs)


def plot_filters(
    layer: Any,
    path: Any = None,
    ax: Any = None,
    in_channel: int | None = None,
    ncols: int | None = None,
    cmap: str = "gray",
    same_scale: bool = False,
) -> Any:
    """The filters of a :class:`~portnn.Conv2D` as small grey images, one per output channel.

    The weight of a convolution has the shape ``(out_channels, in_channels // groups,
    kh, kw)``; filter ``o`` is drawn from ``weight[o, in_channel]``, or with the
    default ``in_channel=None`` from the mean over its input channels (the filter
    itself when there is one input channel, as in the first layer of a network on
    grey images). Each image is scaled from its own smallest weight (black) to its
    largest (white) unless ``same_scale=True``, which gives every filter the range
    of all of them, so that their magnitudes compare.

    Args:
        layer: a ``Conv2D`` (for a model, the layer itself, e.g. ``model[0]``).
        path: save the figure to this file.
        ax: draw into these axes instead of a new figure: a sequence of Axes,
            one per output channel (more are left alone), or one Axes, which
            gets all the filters tiled in one image (each scaled as above).
        in_channel: the input channel whose weights are drawn (None: the mean).
        ncols: filters per row of a new figure (default: about a square grid).
        cmap: the matplotlib colour map.
        same_scale: one colour scale for every filter, instead of one each.

    Returns:
        The matplotlib Figure.
    """
    from .nn import Conv2D

    if not isinstance(layer, Conv2D):
        hint = ""
        if callable(getattr(layer, "named_modules", None)):
            inside = [
                name.rstrip(".") for name, m in layer.named_modules() if isinstance(m, Conv2D)
            ]
            if inside:
                path_ = "".join(
                    f"[{int(p)}]" if p.isdigit() else f".{p}" for p in inside[0].split(".")
                )
                hint = f" (the first Conv2D inside it is model{path_}: pass that layer)"
        raise ValueError(f"layer must be a Conv2D, got {type(layer).__name__}{hint}")
    weight = np.asarray(to_numpy(layer.weight), dtype=np.float64)  # (out, in/groups, kh, kw)
    if in_channel is None:
        filters = weight.mean(axis=1)
    else:
        if isinstance(in_channel, bool) or not isinstance(in_channel, int | np.integer):
            raise ValueError(f"in_channel must be an integer or None, got {in_channel!r}")
        if not 0 <= in_channel < weight.shape[1]:
            raise ValueError(
                f"in_channel must be in 0..{weight.shape[1] - 1} (the weight has "
                f"{weight.shape[1]} input channels per filter), got {in_channel}"
            )
        filters = weight[:, int(in_channel)]
    n, kh, kw = filters.shape
    plt = _pyplot()
    low, high = float(filters.min()), float(filters.max())

    def scale(f: np.ndarray) -> tuple[float, float]:
        lo, hi = (low, high) if same_scale else (float(f.min()), float(f.max()))
        return (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)  # a constant filter shows grey

    if ax is not None and not isinstance(ax, Sequence | np.ndarray):
        # one Axes: the filters tiled in one image, each scaled to [0, 1], a gap between them
        rows, cols = _grid(n, ncols)
        mosaic = np.full((rows * (kh + 1) - 1, cols * (kw + 1) - 1), np.nan)
        for o, f in enumerate(filters):
            lo, hi = scale(f)
            r, c = divmod(o, cols)
            mosaic[r * (kh + 1) : r * (kh + 1) + kh, c * (kw + 1) : c * (kw + 1) + kw] = (
                f - lo
            ) / (hi - lo)
        _image(ax, np.ma.masked_invalid(mosaic), cmap=cmap, vmin=0.0, vmax=1.0)
        ax.set_title(f"{n} filters of {kh}x{kw}")
        return _finish(ax.figure, path)
    fig, axes = _cells(plt, n, ncols, ax, cell=0.8)
    for a, f in zip(axes, filters):
        lo, hi = scale(f)
        _image(a, f, cmap=cmap, vmin=lo, vmax=hi)
    if ax is None:
        what = (
            "mean over input channels"
            if in_channel is None and weight.shape[1] > 1
            else (f"input channel {in_channel}" if in_channel is not None else "")
        )
        fig.suptitle(f"{n} filters of {kh}x{kw}" + (f" ({what})" if what else ""))
        fig.tight_layout()
    return _finish(fig, path)


def _as_images(X: np.ndarray, image_shape: Any) -> np.ndarray:
    """The samples of ``X`` as pictures for imshow: ``(N, H, W)`` or ``(N, H, W, 3)``."""
    if image_shape is not None:
        shape = tuple(int(s) for s in np.atleast_1d(np.asarray(image_shape)))
        if len(shape) not in (2, 3) or any(s < 1 for s in shape):
            raise ValueError(f"image_shape must be (H, W) or (C, H, W), got {image_shape!r}")
        per_sample = int(np.prod(X.shape[1:]))
        if int(np.prod(shape)) != per_sample:
            raise ValueError(
                f"image_shape {shape} holds {int(np.prod(shape))} values, but the samples of X "
                f"(shape {X.shape}) have {per_sample}"
            )
        X = X.reshape((X.shape[0], *shape))
    elif X.ndim == 2:
        raise ValueError(
            f"X holds flat rows (shape {X.shape}): give image_shape=(H, W) or (C, H, W), "
            "e.g. image_shape=(28, 28)"
        )
    if X.ndim == 3:
        return X
    if X.ndim == 4 and X.shape[1] == 1:
        return X[:, 0]
    if X.ndim == 4 and X.shape[1] == 3:
        return np.moveaxis(X, 1, -1)
    raise ValueError(
        f"X must hold images (N, 1, H, W), (N, 3, H, W) or (N, H, W), or flat rows with "
        f"image_shape=; got shape {X.shape}"
    )


def plot_misclassified(
    model: Any,
    X: Any,
    y: Any,
    n: int = 16,
    path: Any = None,
    ax: Any = None,
    image_shape: Any = None,
    ncols: int | None = None,
    class_names: Sequence[Any] | None = None,
    cmap: str = "gray_r",
    batch_size: int | None = 256,
) -> Any:
    """The images a classifier gets wrong, each titled "true → predicted".

    The model predicts the classes of ``X`` as ``predict_classes`` does; the
    first ``n`` samples, in the order of ``X``, whose prediction is not ``y`` are
    drawn. The title of a new figure says how many of all were wrong.

    Args:
        model: a trained classifier (a :class:`~portnn.Module`, or anything with
            ``predict`` returning scores or probabilities per class).
        X: the images, as the model takes them: ``(N, 1, H, W)`` (or
            ``(N, 3, H, W)``, ``(N, H, W)``), or flat rows ``(N, H * W)`` with
            ``image_shape``; any array library.
        y: their integer class labels, shape ``(N,)``.
        n: at most this many images are drawn.
        path: save the figure to this file.
        ax: draw into these axes instead of a new figure: one Axes (one image)
            or a sequence of Axes (at most one image each).
        image_shape: how to show each sample, ``(H, W)`` or ``(C, H, W)``,
            where ``X`` holds flat rows (the model still gets ``X`` as given).
        ncols: images per row of a new figure (default: up to 8).
        class_names: names for the class numbers in the titles.
        cmap: the colour map of one-channel images (default: dark ink on white).
        batch_size: samples per prediction batch (for a Module).

    Returns:
        The matplotlib Figure.
    """
    X = np.asarray(to_numpy(X))
    y = np.asarray(to_numpy(y)).reshape(-1)
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if X.ndim < 2:
        raise ValueError(f"X must hold one sample per row (N, ...), got shape {X.shape}")
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"y has {y.shape[0]} labels for {X.shape[0]} samples of X")
    images = _as_images(X, image_shape)
    predicted = _predicted_classes(model, X, batch_size)
    wrong = np.flatnonzero(predicted != y)
    axes_given = (
        None
        if ax is None
        else (
            list(np.ravel(np.asarray(ax, dtype=object)))
            if isinstance(ax, Sequence | np.ndarray)
            else [ax]
        )
    )
    shown = wrong[: min(int(n), len(axes_given) if axes_given is not None else int(n))]

    def name(label: Any) -> str:
        if class_names is None:
            return str(label)
        return str(class_names[int(label)])

    plt = _pyplot()
    if ax is None:
        fig, axes = _cells(plt, len(shown), 8 if ncols is None else ncols, None, cell=1.1)
    else:
        fig, axes = axes_given[0].figure, axes_given[: len(shown)]
    for a, i in zip(axes, shown):
        _image(a, images[i], cmap=cmap)
        a.set_title(f"{name(y[i])} → {name(predicted[i])}", fontsize=9)
    if ax is None:
        fig.suptitle(f"misclassified: {len(wrong)} of {len(y)}", fontsize=10)
        fig.tight_layout()
    return _finish(fig, path)
