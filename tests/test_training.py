"""value_and_grad, fit, predict, evaluate: the tutorials' numbers, PyTorch parity, bad input."""

import importlib.util
import pathlib

import numpy as np
import pytest

import portnn as pn
from portnn.backend import backend_of

from conftest import tolerance

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _snapshot(model):
    return {k: pn.to_numpy(v).copy() for k, v in model.parameters().items()}


def _assert_unchanged(model, snapshot):
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(pn.to_numpy(v), snapshot[k])


def test_tutorial_three_layer_forward(backend_name):
    network = _example("three_layer_forward").tutorial_network()
    y = network([1.0, 0.5])
    assert backend_of(y) == backend_name
    np.testing.assert_allclose(pn.to_numpy(y), [0.31682708, 0.69627909], rtol=1e-7)


@pytest.mark.parametrize("loss", ["mse", "binary_cross_entropy"])
def test_seed8_points_are_separated(loss):
    seed8 = _example("seed8")
    model = seed8.train(loss)
    p = pn.to_numpy(model.predict(seed8.X))[:, 0]
    np.testing.assert_array_equal((p > 0.5).astype(int), seed8.y)


def test_value_and_grad_returns_loss_and_gradients_by_parameter_name(rng, backend):
    model = pn.Sequential(pn.Dense(3, 4, seed=0), pn.Tanh(), pn.Dense(4, 2, seed=1))
    x, y = rng.normal(size=(5, 3)), rng.integers(0, 2, size=5)
    value, grads = pn.value_and_grad(model, pn.CrossEntropy(), x, y)
    assert list(grads) == list(model.parameters())
    assert backend_of(value) == backend.name or isinstance(value, np.generic)
    np.testing.assert_allclose(float(value), pn.evaluate(model, x, y, loss="cross_entropy"), rtol=1e-6)
    assert list(model.gradients()) == list(grads)
    value_single, _ = pn.value_and_grad(model, "cross_entropy", x[0], y[0])
    assert np.isfinite(float(value_single))


def test_sgd_trajectory_matches_torch(backend):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(32, 4)), rng.integers(0, 3, size=32)
    for kwargs in [{}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True}, {"momentum": 0.5, "weight_decay": 0.01}]:
        model = pn.Sequential(pn.Dense(4, 8, seed=0, dtype="float64"), pn.Tanh(), pn.Dense(8, 3, seed=1, dtype="float64"))
        ref = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
        with torch.no_grad():
            for i in (0, 2):
                ref[i].weight.copy_(torch.tensor(pn.to_numpy(model[i].weight).T))
                ref[i].bias.copy_(torch.tensor(pn.to_numpy(model[i].bias)))
        model.fit(X, y, loss="cross_entropy", optimizer=pn.SGD(lr=0.1, **kwargs), epochs=3, batch_size=8, shuffle=False, verbose=0)
        opt = torch.optim.SGD(ref.parameters(), lr=0.1, **kwargs)
        for _ in range(3):
            for s in range(0, 32, 8):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(ref(torch.tensor(X[s : s + 8])), torch.tensor(y[s : s + 8])).backward()
                opt.step()
        for i in (0, 2):
            np.testing.assert_allclose(pn.to_numpy(model[i].weight), ref[i].weight.detach().numpy().T, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(pn.to_numpy(model[i].bias), ref[i].bias.detach().numpy(), rtol=1e-10, atol=1e-12)


def _blobs(rng, n=300, classes=3, features=5):
    centers = rng.normal(scale=4.0, size=(classes, features))
    y = rng.integers(0, classes, size=n)
    return centers[y] + rng.normal(size=(n, features)), y


def test_fit_learns_records_history_and_handles_the_last_partial_batch(rng):
    X, y = _blobs(rng)
    model = pn.Sequential(pn.Dense(5, 16, seed=0), pn.ReLU(), pn.Dense(16, 3, seed=1))
    history = model.fit(X, y, loss="cross_entropy", optimizer=pn.SGD(lr=0.05, momentum=0.9), epochs=5, batch_size=64, seed=0, verbose=0)
    assert len(history["loss"]) == 5 and history.epoch == [0, 1, 2, 3, 4]
    assert history["loss"][-1] < history["loss"][0] * 0.5
    predicted = np.argmax(pn.to_numpy(model.predict(X)), axis=1)
    assert np.mean(predicted == y) > 0.95
    assert model.training is False


def test_fit_with_the_same_seed_is_reproducible_and_shuffles_differently_per_seed(rng):
    X, y = _blobs(rng, n=100)

    def run(seed):
        model = pn.Sequential(pn.Dense(5, 8, seed=0), pn.ReLU(), pn.Dense(8, 3, seed=1))
        model.fit(X, y, loss="cross_entropy", optimizer=pn.SGD(lr=0.1), epochs=2, batch_size=10, seed=seed, verbose=0)
        return _snapshot(model)

    a, b, c = run(1), run(1), run(2)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_full_batch_gradient_descent_step_is_exact(rng, backend):
    X, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
    model = pn.Dense(3, 2, seed=0, dtype="float64")
    w, b = pn.to_numpy(model.weight).copy(), pn.to_numpy(model.bias).copy()
    model_seq = pn.Sequential(model)
    model_seq.fit(X, y, loss="mse", optimizer=pn.SGD(lr=0.1), epochs=1, verbose=0)
    d = 2 * (X @ w + b - y) / y.size
    np.testing.assert_allclose(pn.to_numpy(model.weight), w - 0.1 * X.T @ d, rtol=1e-12)
    np.testing.assert_allclose(pn.to_numpy(model.bias), b - 0.1 * d.sum(axis=0), rtol=1e-12)


def test_fit_accepts_data_from_every_available_library(rng, backend_name):
    X, y = _blobs(rng, n=64)
    reference = None
    for source in pn.available_backends():
        src = pn.backend._make_backend(source)
        model = pn.Sequential(pn.Dense(5, 8, seed=0), pn.ReLU(), pn.Dense(8, 3, seed=1))
        model.fit(src.asarray(X), src.asarray(y), loss="cross_entropy", optimizer=pn.SGD(lr=0.1), epochs=2, batch_size=16, seed=0, verbose=0)
        assert model.backend == backend_name
        weights = pn.to_numpy(model[2].weight)
        if reference is None:
            reference = weights
        np.testing.assert_allclose(weights, reference, rtol=1e-5, atol=1e-6)


def test_predict_in_batches_equals_one_batch_and_returns_backend_arrays(rng, backend_name):
    model = pn.Sequential(pn.Dense(4, 6, seed=0), pn.Tanh(), pn.Dense(6, 2, seed=1))
    X = rng.normal(size=(50, 4))
    whole = model.predict(X)
    assert backend_of(whole) == backend_name
    # batches of another size may take another matrix kernel: equal within float32 rounding
    np.testing.assert_allclose(pn.to_numpy(model.predict(X, batch_size=7)), pn.to_numpy(whole), **tolerance("float32"))
    single = model.predict(X[3])
    np.testing.assert_allclose(pn.to_numpy(single), pn.to_numpy(whole)[3], rtol=1e-6)


def test_same_seed_trains_the_same_weights_on_every_backend(rng, backend_name):
    X, y = _blobs(rng, n=80)

    def run():
        model = pn.Sequential(pn.Dense(5, 8, seed=0, dtype="float64"), pn.Sigmoid(), pn.Dense(8, 3, seed=1, dtype="float64"))
        model.fit(X, y, loss="cross_entropy", optimizer=pn.SGD(lr=0.2, momentum=0.9), epochs=3, batch_size=16, seed=5, verbose=0)
        return _snapshot(model)

    here = run()
    with pn.use_backend("numpy"):
        reference = run()
    for k in here:
        np.testing.assert_allclose(here[k], reference[k], rtol=1e-10, atol=1e-12)


BAD_FIT_ARGS = [
    ({"X": np.zeros((4, 2, 1))}, ValueError, r"layer 0 \(Dense\) expects 2 input features, got 1"),
    ({"X": np.zeros(4)}, ValueError, r"X must be 2-D \(samples, features\) or more"),
    ({"X": np.zeros((0, 2)), "y": np.zeros(0, dtype=int)}, ValueError, "empty"),
    ({"X": np.array([[1.0, np.nan], [0, 0], [0, 0], [0, 0]])}, ValueError, "NaN"),
    ({"X": np.ones((4, 2), dtype=complex)}, TypeError, "complex"),
    ({"X": np.array([["a", "b"]] * 4)}, TypeError, "dtype"),
    ({"X": np.ones((4, 3))}, ValueError, r"expects 2 input features, got 3"),
    ({"y": np.array([0, 1, 2])}, ValueError, "3 rows but there are 4 samples"),
    ({"y": np.array([0, 1, 5, 1])}, ValueError, "labels"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"batch_size": 2.5}, TypeError, "batch_size"),
    ({"epochs": -1}, ValueError, "epochs"),
    ({"loss": "crossentropy"}, ValueError, "did you mean"),
    ({"optimizer": "sgdd"}, ValueError, "did you mean 'sgd'"),
]


@pytest.mark.parametrize(("override", "error", "match"), BAD_FIT_ARGS)
def test_bad_fit_input_is_a_clear_error_and_changes_nothing(override, error, match):
    model = pn.Sequential(pn.Dense(2, 3, seed=0), pn.ReLU(), pn.Dense(3, 3, seed=1))
    args = {"X": np.ones((4, 2)), "y": np.array([0, 1, 2, 1]), "loss": "cross_entropy", "optimizer": pn.SGD(lr=0.1), "epochs": 2}
    args.update(override)
    before = _snapshot(model)
    with pytest.raises(error, match=match):
        model.fit(args.pop("X"), args.pop("y"), verbose=0, **args)
    _assert_unchanged(model, before)
    assert getattr(model, "optimizer_state", None) is None


@pytest.mark.parametrize("lr", [0, -0.1, float("nan"), float("inf")])
def test_learning_rate_must_be_positive_and_finite(lr):
    with pytest.raises(ValueError, match="lr"):
        pn.SGD(lr=lr)


def test_fit_without_a_loss_is_an_error():
    with pytest.raises(ValueError, match="loss"):
        pn.Sequential(pn.Dense(2, 1)).fit(np.ones((3, 2)), np.ones(3), verbose=0)


def test_fit_prints_one_line_per_epoch(capsys, rng):
    X, y = _blobs(rng, n=20)
    pn.Sequential(pn.Dense(5, 3, seed=0)).fit(X, y, loss="cross_entropy", epochs=3, verbose=1)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch 1/3") and "loss" in lines[0]


def test_predict_rejects_bad_input(rng):
    model = pn.Sequential(pn.Dense(3, 2, seed=0))
    with pytest.raises(ValueError, match="NaN"):
        model.predict(np.array([[1.0, np.inf, 0.0]]))
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(rng.normal(size=(4, 3)), batch_size=0)
    with pytest.raises(ValueError, match=r"expects 3 input features, got 1 \(input shape \(4, 3, 1\)\)"):
        model.predict(rng.normal(size=(4, 3, 1)))


def test_binary_and_multiclass_labels_share_argmaxs_dtype(backend, rng):
    X = rng.normal(size=(6, 3))
    binary = pn.Sequential(pn.Dense(3, 1, seed=0), pn.Sigmoid())
    multi = pn.Sequential(pn.Dense(3, 4, seed=0))
    b, m = binary.predict_classes(X), multi.predict_classes(X)
    assert b.dtype == m.dtype == backend.xp.argmax(backend.asarray(X), axis=-1).dtype
    np.testing.assert_array_equal(pn.to_numpy(b), (pn.to_numpy(binary.predict(X))[:, 0] > 0.5).astype(int))
