"""pn.Standardize: feature scaling inside the model, fitted with adapt() as scikit-learn's
StandardScaler, kept in buffers that are saved, moved, exported, and never trained."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import portnn as pn
from portnn.backend import backend_of

sklearn_preprocessing = pytest.importorskip("sklearn.preprocessing")


def _data(rng, n=120, features=5):
    """Features on very different scales, one of them constant."""
    X = rng.normal(size=(n, features)) * np.array([1e-3, 1.0, 50.0, 7.0, 1e4])[:features]
    X += np.array([5.0, -2.0, 300.0, 0.0, -1e5])[:features]
    X[:, 3] = 4.25  # constant: passes through centred, std 1
    return X


def test_adapt_equals_standard_scaler(rng, float64_ok):
    if not float64_ok:
        pytest.skip("the backend has no float64")
    X = _data(rng)
    scaler = sklearn_preprocessing.StandardScaler().fit(X)
    layer = pn.Standardize()
    assert layer.adapt(X) is layer
    np.testing.assert_allclose(pn.to_numpy(layer.mean), scaler.mean_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pn.to_numpy(layer.std), scaler.scale_, rtol=1e-12, atol=1e-12)
    assert pn.to_numpy(layer.std)[3] == 1.0
    X_new = _data(np.random.default_rng(7))
    np.testing.assert_allclose(pn.to_numpy(layer(X_new)), scaler.transform(X_new), rtol=1e-12, atol=1e-12)


def test_any_rank_standardizes_the_last_axis(rng, float64_ok):
    X = rng.normal(2.0, 3.0, size=(10, 6, 4))
    layer = pn.Standardize().adapt(X)
    assert layer.features == 4 and layer.input_shape() == (4,)
    flat = sklearn_preprocessing.StandardScaler().fit_transform(X.reshape(-1, 4)).reshape(X.shape)
    tol = 1e-12 if float64_ok else 1e-5
    y = pn.to_numpy(layer(X))
    assert y.shape == X.shape
    np.testing.assert_allclose(y, flat, rtol=tol, atol=tol)


def test_statistics_are_buffers_and_fit_leaves_them(rng):
    X = _data(rng)
    y = (X[:, 1] > -2.0).astype(np.int64)
    scale = pn.Standardize().adapt(X)
    model = pn.Sequential(scale, pn.Dense(5, 2, seed=0))
    assert list(scale.parameters()) == [] and list(scale.buffers()) == ["mean", "std"]
    assert list(model.parameters()) == ["1.weight", "1.bias"]
    before = {k: pn.to_numpy(v).copy() for k, v in model.buffers().items()}
    model.fit(X, y, loss="cross_entropy", optimizer=pn.Adam(0.01), epochs=3, batch_size=32, verbose=0)
    for key, value in model.buffers().items():
        np.testing.assert_array_equal(pn.to_numpy(value), before[key])
    assert set(model.optimizer_state["slots"]) == {"1.weight", "1.bias"}  # the optimizer sees none of it


def test_float32_input_stays_float32(rng, xp):
    layer = pn.Standardize().adapt(_data(rng))
    x = pn.get_backend().asarray(_data(rng)[:4], xp.float32)
    assert layer(x).dtype == xp.float32
    model = pn.Sequential(layer, pn.Dense(5, 3, seed=0))
    assert model.predict(_data(rng)).dtype == xp.float32


def test_mean_and_std_given_directly(rng):
    mean, std = np.array([1.0, -2.0, 0.5]), np.array([2.0, 0.25, 4.0])
    layer = pn.Standardize(mean=mean, std=std)
    assert layer.features == 3 and layer.adapted
    x = rng.normal(size=(7, 3))
    np.testing.assert_allclose(pn.to_numpy(layer(x)), (x - mean) / std, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="std"):
        pn.Standardize(mean=mean, std=np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="std="):
        pn.Standardize(mean=mean)
    with pytest.raises(ValueError, match="features=4"):
        pn.Standardize(4, mean=mean, std=std)


def test_errors_name_the_argument_and_shape(rng):
    X = _data(rng)
    with pytest.raises(pn.NotAdaptedError, match="adapt"):
        pn.Standardize()(X)
    with pytest.raises(ValueError, match="adapt"):  # also a ValueError, as scikit-learn's NotFittedError
        pn.Standardize(features=5)(X)
    layer = pn.Standardize().adapt(X)
    with pytest.raises(ValueError, match=r"expects 5 input features, got 3 \(input shape \(120, 3\)\)"):
        layer(X[:, :3])
    with pytest.raises(ValueError, match=r"X has 3 features .*shape \(120, 3\).*features=5"):
        pn.Standardize(features=5).adapt(X[:, :3])
    for bad in (np.nan, np.inf):
        dirty = X.copy()
        dirty[4, 2] = bad
        with pytest.raises(ValueError, match=r"X contains NaN or infinity \(in feature columns \[2\]\)"):
            pn.Standardize().adapt(dirty)
    with pytest.raises(ValueError, match=r"shape \(120,\).*reshape\(-1, 1\)"):
        pn.Standardize().adapt(X[:, 0])
    with pytest.raises(ValueError, match="'std' is a standard deviation"):
        layer.load_buffers({"std": -np.ones(5)})


@pytest.mark.skipif(importlib.util.find_spec("safetensors") is None, reason="needs portnn[io]")
def test_save_and_load_keep_the_statistics(rng, tmp_path):
    X = _data(rng)
    model = pn.Sequential(pn.Standardize().adapt(X), pn.Dense(5, 2, seed=0))
    pn.save(model, tmp_path / "m.safetensors")
    loaded = pn.load(tmp_path / "m.safetensors")
    for key, value in model.buffers().items():
        np.testing.assert_array_equal(pn.to_numpy(loaded.buffers()[key]), pn.to_numpy(value))
    np.testing.assert_array_equal(pn.to_numpy(loaded.predict(X)), pn.to_numpy(model.predict(X)))
    pn.save(pn.Standardize(features=5), tmp_path / "fresh.safetensors")
    with pytest.raises(pn.NotAdaptedError):
        pn.load(tmp_path / "fresh.safetensors")(X)


def test_to_moves_the_statistics(rng, backend_name):
    X = _data(rng)
    layer = pn.Standardize().adapt(X).to("numpy")
    assert isinstance(layer.mean, np.ndarray) and isinstance(layer.std, np.ndarray)
    expected = layer(X)
    layer.to(backend_name)
    assert str(backend_of(layer.std)) == backend_name
    np.testing.assert_allclose(pn.to_numpy(layer(X)), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("ndonnx", "onnxruntime")), reason="needs portnn[onnx]"
)
def test_exported_to_onnx_with_the_model(rng, tmp_path):
    import onnxruntime

    X = _data(rng)
    model = pn.Sequential(pn.Standardize().adapt(X), pn.Dense(5, 3, seed=0), pn.Tanh())
    pn.export_onnx(model, tmp_path / "m.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": X.astype(np.float32)})
    np.testing.assert_allclose(got, pn.to_numpy(model.predict(X)), rtol=1e-5, atol=1e-5)
