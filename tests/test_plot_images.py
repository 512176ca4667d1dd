"""portnn.plot on images: the filters of a Conv2D and the images a classifier gets wrong."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import portnn as pn
from portnn.plot import plot_filters, plot_misclassified

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def pyplot():
    pytest.importorskip("matplotlib")
    from portnn.plot import _pyplot

    plt = _pyplot()
    yield plt
    plt.close("all")


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 500 and data.startswith(PNG_MAGIC)


def _weight(layer) -> np.ndarray:
    return np.asarray(pn.to_numpy(layer.weight), dtype=np.float64)


def _drawn(fig):
    """The axes of a figure that hold an image, and those images' data."""
    axes = [a for a in fig.get_axes() if a.images]
    return axes, [np.asarray(a.images[0].get_array()) for a in axes]


# ---------------------------------------------------------------- plot_filters


def test_filters_one_grey_image_per_output_channel(pyplot, tmp_path):
    conv = pn.Conv2D(1, 7, 3, seed=0)
    fig = plot_filters(conv, path=tmp_path / "filters.png")
    assert _is_png(tmp_path / "filters.png")
    # a 3 x 3 grid for 7 filters: 7 images, the 2 cells left over are blank
    assert len(fig.get_axes()) == 9
    axes, images = _drawn(fig)
    assert len(axes) == 7
    assert not any(a.axison for a in fig.get_axes()[7:])
    w = _weight(conv)
    for o, (a, image) in enumerate(zip(axes, images)):
        np.testing.assert_array_equal(
            image, w[o, 0]
        )  # the weights themselves, not a copy of them scaled
        assert a.images[0].get_clim() == (w[o, 0].min(), w[o, 0].max())  # each on its own scale
        assert a.images[0].get_cmap().name == "gray"
    assert fig._suptitle.get_text() == "7 filters of 3x3"


def test_filters_of_several_input_channels(pyplot):
    conv = pn.Conv2D(3, 4, (3, 2), seed=1)
    w = _weight(conv)
    _, images = _drawn(plot_filters(conv))
    assert len(images) == 4
    for o, image in enumerate(images):
        np.testing.assert_allclose(image, w[o].mean(axis=0), rtol=1e-12)
    fig = plot_filters(conv, in_channel=2, ncols=4, same_scale=True)
    axes, images = _drawn(fig)
    assert len(fig.get_axes()) == 4  # one row of 4
    for o, (a, image) in enumerate(zip(axes, images)):
        np.testing.assert_array_equal(image, w[o, 2])
        assert a.images[0].get_clim() == (w[:, 2].min(), w[:, 2].max())  # one scale for all
    assert "input channel 2" in fig._suptitle.get_text()
    for bad in (3, -1):
        with pytest.raises(ValueError, match=r"in_channel must be in 0\.\.2"):
            plot_filters(conv, in_channel=bad)
    with pytest.raises(ValueError, match="in_channel must be an integer"):
        plot_filters(conv, in_channel=1.0)


def test_filters_of_a_grouped_convolution(pyplot):
    conv = pn.Conv2D(4, 6, 3, groups=2, seed=2)  # weight (6, 2, 3, 3)
    _, images = _drawn(plot_filters(conv, in_channel=1))
    assert len(images) == 6
    np.testing.assert_array_equal(images[5], _weight(conv)[5, 1])


def test_filters_tiled_into_one_axes(pyplot):
    conv = pn.Conv2D(1, 5, (2, 3), seed=3)
    fig, ax = pyplot.subplots()
    assert plot_filters(conv, ax=ax, ncols=3) is fig
    assert len(ax.images) == 1 and ax.get_title() == "5 filters of 2x3"
    mosaic = ax.images[0].get_array()
    assert mosaic.shape == (2 * 3 - 1, 3 * 4 - 1)  # 2 rows, 3 columns, a one-pixel gap
    w = _weight(conv)[:, 0]
    for o in range(5):
        r, c = divmod(o, 3)
        tile = mosaic[r * 3 : r * 3 + 2, c * 4 : c * 4 + 3]
        expected = (w[o] - w[o].min()) / (w[o].max() - w[o].min())
        np.testing.assert_allclose(tile, expected, rtol=1e-12, atol=1e-15)
    assert mosaic.mask[2].all() and mosaic.mask[:, 3].all()  # the gaps
    assert mosaic.mask[3:, 8:].all()  # the cell of a sixth filter stays empty


def test_filters_into_given_axes(pyplot, tmp_path):
    conv = pn.Conv2D(1, 4, 3, seed=4)
    fig, grid = pyplot.subplots(2, 3)
    assert plot_filters(conv, ax=grid, path=tmp_path / "given.png") is fig
    assert [len(a.images) for a in grid.ravel()] == [1, 1, 1, 1, 0, 0]
    assert _is_png(tmp_path / "given.png")
    with pytest.raises(ValueError, match="ax: 4 images to draw, got 3 axes"):
        plot_filters(conv, ax=grid[0])


def test_a_constant_filter_is_drawn_grey(pyplot):
    conv = pn.Conv2D(1, 2, 2, weight=np.zeros((2, 1, 2, 2)), bias=False)
    axes, images = _drawn(plot_filters(conv))
    assert len(images) == 2 and axes[0].images[0].get_clim() == (-0.5, 0.5)


def test_filters_of_anything_else_is_an_error_naming_the_argument(pyplot):
    for layer in (pn.Dense(4, 3, seed=0), pn.Conv1D(1, 2, 3, seed=0), "conv"):
        with pytest.raises(ValueError, match=r"layer must be a Conv2D, got (Dense|Conv1D|str)$"):
            plot_filters(layer)
    model = pn.Sequential(
        pn.Reshape((1, 6, 6)), pn.Sequential(pn.Conv2D(1, 2, 3, seed=0), pn.ReLU())
    )
    with pytest.raises(
        ValueError, match=r"got Sequential \(the first Conv2D inside it is model\[1\]\[0\]"
    ):
        plot_filters(model)
    plot_filters(model[1][0])
    with pytest.raises(ValueError, match="ncols must be a positive integer"):
        plot_filters(model[1][0], ncols=0)


# ---------------------------------------------------------------- plot_misclassified


@pytest.fixture
def digits_like():
    """Random 6x6 "images" of 3 classes and a small untrained CNN: many wrong, some right."""
    rng = np.random.default_rng(0)
    X = rng.random((60, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=60)
    model = pn.Sequential(
        pn.Conv2D(1, 2, 3, seed=0), pn.ReLU(), pn.MaxPool2D(2), pn.Flatten(), pn.Dense(8, 3, seed=1)
    )
    return model, X, y


def _expected_wrong(model, X, y):
    predicted = pn.to_numpy(model.predict_classes(X)).astype(np.int64)
    return np.flatnonzero(predicted != y), predicted


def test_misclassified_are_exactly_the_wrong_predictions(pyplot, digits_like, tmp_path):
    model, X, y = digits_like
    wrong, predicted = _expected_wrong(model, X, y)
    assert 16 < len(wrong) < len(y)  # the test means something: right and wrong ones both
    fig = plot_misclassified(model, pn.get_backend().asarray(X), y, path=tmp_path / "wrong.png")
    assert _is_png(tmp_path / "wrong.png")
    axes, images = _drawn(fig)
    assert len(fig.get_axes()) == 16 and len(axes) == 16  # 2 rows of 8
    for a, i, image in zip(axes, wrong[:16], images):
        assert a.get_title() == f"{y[i]} → {predicted[i]}"
        np.testing.assert_array_equal(image, X[i, 0])
        assert a.images[0].get_cmap().name == "gray_r"
    assert fig._suptitle.get_text() == f"misclassified: {len(wrong)} of 60"


def test_misclassified_from_flat_rows_with_image_shape(pyplot):
    rng = np.random.default_rng(1)
    X = rng.random((40, 12)).astype(np.float32)
    y = rng.integers(0, 4, size=40)
    model = pn.Sequential(pn.Dense(12, 4, seed=0))
    wrong, predicted = _expected_wrong(model, X, y)
    fig = plot_misclassified(
        model, X, y, n=5, image_shape=(3, 4), ncols=5, class_names=["a", "b", "c", "d"]
    )
    axes, images = _drawn(fig)
    assert len(fig.get_axes()) == 5
    assert [a.get_title() for a in axes] == [
        f"{'abcd'[y[i]]} → {'abcd'[predicted[i]]}" for i in wrong[:5]
    ]
    for i, image in zip(wrong[:5], images):
        np.testing.assert_array_equal(image, X[i].reshape(3, 4))
    _, images = _drawn(plot_misclassified(model, X, y, n=2, image_shape=(1, 3, 4)))
    np.testing.assert_array_equal(images[1], X[wrong[1]].reshape(3, 4))
    with pytest.raises(ValueError, match=r"flat rows .* give image_shape=\(H, W\)"):
        plot_misclassified(model, X, y)
    with pytest.raises(
        ValueError, match=r"image_shape \(5, 5\) holds 25 values, but the samples of X"
    ):
        plot_misclassified(model, X, y, image_shape=(5, 5))


def test_misclassified_into_given_axes_draws_at_most_one_each(pyplot, digits_like):
    model, X, y = digits_like
    wrong, predicted = _expected_wrong(model, X, y)
    fig, grid = pyplot.subplots(1, 3)
    assert plot_misclassified(model, X, y, ax=grid) is fig
    assert [a.get_title() for a in grid] == [f"{y[i]} → {predicted[i]}" for i in wrong[:3]]
    fig, ax = pyplot.subplots()
    plot_misclassified(model, X, y, ax=ax)
    assert len(ax.images) == 1 and ax.get_title() == f"{y[wrong[0]]} → {predicted[wrong[0]]}"


def test_a_model_without_mistakes_draws_no_image(pyplot, digits_like):
    model, X, _ = digits_like
    y = pn.to_numpy(model.predict_classes(X))
    fig = plot_misclassified(model, X, y)
    assert _drawn(fig)[0] == []
    assert fig._suptitle.get_text() == "misclassified: 0 of 60"


def test_misclassified_bad_arguments(pyplot, digits_like):
    model, X, y = digits_like
    for n in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            plot_misclassified(model, X, y, n=n)
    with pytest.raises(ValueError, match="y has 59 labels for 60 samples"):
        plot_misclassified(model, X, y[:-1])
    with pytest.raises(ValueError, match=r"X must hold images"):
        plot_misclassified(model, np.zeros((4, 2, 6, 6), np.float32), y[:4])


def test_misclassified_takes_any_model_with_predict(pyplot):
    class Brightest:
        """Class 1 where the image's mean is above 0.5, as one probability column."""

        def predict(self, X):
            return (X.reshape(len(X), -1).mean(axis=1, keepdims=True) > 0.5).astype(np.float32)

    X = np.stack([np.full((1, 2, 2), v, np.float32) for v in (0.1, 0.9, 0.2, 0.8)])
    fig = plot_misclassified(Brightest(), X, [1, 1, 0, 1])
    assert [a.get_title() for a in _drawn(fig)[0]] == ["1 → 0"]


def test_image_plots_without_matplotlib_name_the_extra(monkeypatch, digits_like):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    model, X, y = digits_like
    with pytest.raises(ImportError, match=r'pip install "portnn\[plot\]"'):
        plot_filters(model[0])
    with pytest.raises(ImportError, match=r'pip install "portnn\[plot\]"'):
        plot_misclassified(model, X, y)
