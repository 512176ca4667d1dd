"""Dropout, BatchNorm and LayerNorm: gradients, PyTorch parity, modes, state and errors."""

import json

import numpy as np
import pytest

import portnn as pn
from portnn.backend import backend_of

TOL = {"rtol": 1e-10, "atol": 1e-10}


def _net(layer, middle_features=5, activation=None, seed=0, use_bias=True):
    return pn.Sequential(
        pn.Dense(4, middle_features, seed=seed, dtype="float64", use_bias=use_bias),
        layer,
        activation if activation is not None else pn.Tanh(),
        pn.Dense(middle_features, 3, seed=seed + 1, dtype="float64"),
    )


MODELS = {
    # a bias right before BatchNorm has an exactly zero gradient (the batch mean removes it),
    # which central differences only resolve to rounding (~1e-11): leave it out, as is usual
    "BatchNorm": lambda: _net(pn.BatchNorm(5, dtype="float64"), activation=pn.ReLU(), use_bias=False),
    "LayerNorm": lambda: _net(pn.LayerNorm(5, dtype="float64")),
    "Dropout": lambda: _net(pn.Dropout(0.4, seed=2)),
}


def _randomize(layer, rng):
    """Non-trivial weight/bias (and running statistics), so tests see every term."""
    f = layer.features
    layer.load_parameters({"weight": rng.normal(size=f), "bias": rng.normal(size=f)})
    if isinstance(layer, pn.BatchNorm):
        layer.load_buffers({"running_mean": rng.normal(size=f), "running_var": rng.uniform(0.5, 2.0, size=f)})
    return layer


# ---------------------------------------------------------------- gradient check


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_gradient_check(name, loss, rng):
    model = MODELS[name]()
    if name != "Dropout":
        _randomize(model[1], rng)
    x = rng.normal(size=(7, 4))
    y = rng.integers(0, 3, size=7) if loss == "cross_entropy" else rng.normal(size=(7, 3))
    assert model.training is False  # gradient_check runs the training-mode path anyway
    assert pn.gradient_check(model, loss, x, y, max_checks=64) < 1e-5


def test_value_and_grad_uses_the_training_mode_path(rng, backend):
    """Batch statistics and dropout masks change the gradient: it is not inference mode's."""
    x, y = rng.normal(loc=1.0, size=(7, 4)), rng.normal(size=(7, 3))
    for name in ("BatchNorm", "Dropout"):
        model = MODELS[name]()
        _, train_grads = pn.value_and_grad(model, "mse", x, y)
        pred = pn.to_numpy(model.eval().forward(x))
        model.backward(backend.asarray(2.0 * (pred - y) / y.size))
        eval_grads = model.gradients()
        assert not np.allclose(pn.to_numpy(train_grads["0.weight"]), pn.to_numpy(eval_grads["0.weight"]))


# ---------------------------------------------------------------- PyTorch parity


def _torch_batchnorm(layer, torch):
    bn = torch.nn.BatchNorm1d(layer.features, momentum=layer.momentum, eps=layer.eps, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(pn.to_numpy(layer.weight)))
        bn.bias.copy_(torch.tensor(pn.to_numpy(layer.bias)))
        bn.running_mean.copy_(torch.tensor(pn.to_numpy(layer.running_mean)))
        bn.running_var.copy_(torch.tensor(pn.to_numpy(layer.running_var)))
    return bn


def _torch_layernorm(layer, torch):
    ln = torch.nn.LayerNorm(layer.features, eps=layer.eps, dtype=torch.float64)
    with torch.no_grad():
        ln.weight.copy_(torch.tensor(pn.to_numpy(layer.weight)))
        ln.bias.copy_(torch.tensor(pn.to_numpy(layer.bias)))
    return ln


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ["BatchNorm", "LayerNorm"])
def test_norm_forward_and_backward_match_torch(name, training, rng, backend):
    torch = pytest.importorskip("torch")
    cls = {"BatchNorm": pn.BatchNorm, "LayerNorm": pn.LayerNorm}[name]
    layer = _randomize(cls(6, eps=1e-3, dtype="float64"), rng)
    ref = (_torch_batchnorm if name == "BatchNorm" else _torch_layernorm)(layer, torch)
    layer.train(training)
    ref.train(training)
    x = rng.normal(loc=1.5, scale=2.0, size=(9, 6))
    dy = rng.normal(size=(9, 6))

    y = layer.forward(x)
    dx = layer.backward(backend.asarray(dy, backend.xp.float64))
    tx = torch.tensor(x, requires_grad=True)
    ty = ref(tx)
    ty.backward(torch.tensor(dy))

    assert backend_of(y) == backend and backend_of(dx) == backend
    np.testing.assert_allclose(pn.to_numpy(y), ty.detach().numpy(), **TOL)
    np.testing.assert_allclose(pn.to_numpy(dx), tx.grad.numpy(), **TOL)
    grads = layer.gradients()
    assert list(grads) == ["weight", "bias"]
    np.testing.assert_allclose(pn.to_numpy(grads["weight"]), ref.weight.grad.numpy(), **TOL)
    np.testing.assert_allclose(pn.to_numpy(grads["bias"]), ref.bias.grad.numpy(), **TOL)
    if name == "BatchNorm":
        np.testing.assert_allclose(pn.to_numpy(layer.running_mean), ref.running_mean.numpy(), **TOL)
        np.testing.assert_allclose(pn.to_numpy(layer.running_var), ref.running_var.numpy(), **TOL)


def test_layernorm_normalizes_the_last_axis_of_any_rank(rng, backend):
    torch = pytest.importorskip("torch")
    layer = _randomize(pn.LayerNorm(4, dtype="float64"), rng)
    ref = _torch_layernorm(layer, torch)
    x, dy = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    y, backward = layer.apply(backend.asarray(x, backend.xp.float64), True)
    dx, grads = backward(backend.asarray(dy, backend.xp.float64))
    tx = torch.tensor(x, requires_grad=True)
    ref(tx).backward(torch.tensor(dy))
    np.testing.assert_allclose(pn.to_numpy(y), ref(torch.tensor(x)).detach().numpy(), **TOL)
    np.testing.assert_allclose(pn.to_numpy(dx), tx.grad.numpy(), **TOL)
    np.testing.assert_allclose(pn.to_numpy(grads["weight"]), ref.weight.grad.numpy(), **TOL)
    np.testing.assert_allclose(pn.to_numpy(grads["bias"]), ref.bias.grad.numpy(), **TOL)
    one = layer(x[0, 0])  # a single sample (1-D)
    np.testing.assert_allclose(pn.to_numpy(one), pn.to_numpy(y)[0, 0], **TOL)


def test_batchnorm_running_statistics_after_training_forwards_match_torch(rng, backend):
    torch = pytest.importorskip("torch")
    layer = pn.BatchNorm(3, momentum=0.3, dtype="float64").train()
    ref = torch.nn.BatchNorm1d(3, momentum=0.3, dtype=torch.float64).train()
    for n in (4, 7, 2, 10):
        x = rng.normal(loc=[1.0, -2.0, 5.0], scale=[1.0, 0.5, 3.0], size=(n, 3))
        layer(x)
        ref(torch.tensor(x))
        np.testing.assert_allclose(pn.to_numpy(layer.running_mean), ref.running_mean.numpy(), **TOL)
        np.testing.assert_allclose(pn.to_numpy(layer.running_var), ref.running_var.numpy(), **TOL)


def test_fit_with_batchnorm_and_layernorm_matches_torch(backend):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    X, y = rng.normal(loc=2.0, size=(32, 4)), rng.integers(0, 3, size=32)
    model = pn.Sequential(
        pn.Dense(4, 6, seed=0, dtype="float64"),
        pn.BatchNorm(6, momentum=0.2, dtype="float64"),
        pn.Tanh(),
        pn.Dense(6, 5, seed=1, dtype="float64"),
        pn.LayerNorm(5, dtype="float64"),
        pn.Dense(5, 3, seed=2, dtype="float64"),
    )
    nn = torch.nn
    ref = nn.Sequential(
        nn.Linear(4, 6), nn.BatchNorm1d(6, momentum=0.2), nn.Tanh(), nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3)
    ).double()
    with torch.no_grad():
        for i in (0, 3, 5):
            ref[i].weight.copy_(torch.tensor(pn.to_numpy(model[i].weight).T))
            ref[i].bias.copy_(torch.tensor(pn.to_numpy(model[i].bias)))
    model.fit(X, y, loss="cross_entropy", optimizer=pn.SGD(lr=0.1, momentum=0.9), epochs=3, batch_size=8, shuffle=False, verbose=0)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    ref.train()
    for _ in range(3):
        for s in range(0, 32, 8):
            opt.zero_grad()
            nn.functional.cross_entropy(ref(torch.tensor(X[s : s + 8])), torch.tensor(y[s : s + 8])).backward()
            opt.step()
    for i in (0, 3, 5):
        np.testing.assert_allclose(pn.to_numpy(model[i].weight), ref[i].weight.detach().numpy().T, **TOL)
    for i in (1, 4):
        np.testing.assert_allclose(pn.to_numpy(model[i].weight), ref[i].weight.detach().numpy(), **TOL)
        np.testing.assert_allclose(pn.to_numpy(model[i].bias), ref[i].bias.detach().numpy(), **TOL)
    np.testing.assert_allclose(pn.to_numpy(model[1].running_mean), ref[1].running_mean.numpy(), **TOL)
    np.testing.assert_allclose(pn.to_numpy(model[1].running_var), ref[1].running_var.numpy(), **TOL)
    assert model.training is False
    ref.eval()
    np.testing.assert_allclose(pn.to_numpy(model.predict(X)), ref(torch.tensor(X)).detach().numpy(), **TOL)


@pytest.mark.parametrize("name", ["BatchNorm", "LayerNorm"])
def test_float32_forward_agrees_with_numpy_backend(name, rng):
    cls = {"BatchNorm": pn.BatchNorm, "LayerNorm": pn.LayerNorm}[name]

    def build():
        return pn.Sequential(pn.Dense(4, 5, seed=7), cls(5), pn.Dense(5, 2, seed=8))

    model = build()
    _randomize(model[1], rng)
    with pn.use_backend("numpy"):
        reference = build()
    reference.load_parameters(model.parameters())
    reference.load_buffers(model.buffers())
    x = rng.normal(size=(8, 4)).astype(np.float32)
    for training in (True, False):
        model.train(training)
        reference.train(training)
        np.testing.assert_allclose(pn.to_numpy(model(x)), reference(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        pn.to_numpy(model[1].running_var) if name == "BatchNorm" else 0.0,
        reference[1].running_var if name == "BatchNorm" else 0.0,
        rtol=1e-5,
    )


# ---------------------------------------------------------------- BatchNorm state


def test_batchnorm_defaults_dtype_and_buffers(backend):
    layer = pn.BatchNorm(3)
    assert list(layer.parameters()) == ["weight", "bias"]
    assert list(layer.buffers()) == ["running_mean", "running_var"]
    for name, expected in [("weight", 1.0), ("bias", 0.0)]:
        assert layer.parameters()[name].dtype == backend.xp.float32
        np.testing.assert_array_equal(pn.to_numpy(layer.parameters()[name]), np.full(3, expected))
    np.testing.assert_array_equal(pn.to_numpy(layer.running_mean), np.zeros(3))
    np.testing.assert_array_equal(pn.to_numpy(layer.running_var), np.ones(3))
    assert layer.running_var.dtype == backend.xp.float32
    assert backend_of(layer.running_var) == backend
    double = pn.BatchNorm(3, dtype="float64")
    assert double.weight.dtype == double.running_mean.dtype == backend.xp.float64
    assert pn.LayerNorm(3).weight.dtype == backend.xp.float32
    assert pn.LayerNorm(3, dtype="float64").bias.dtype == backend.xp.float64


def test_batchnorm_rebinds_running_statistics_and_leaves_old_arrays_alone(rng):
    layer = pn.BatchNorm(3).train()
    old_mean, old_var = layer.running_mean, layer.running_var
    layer(rng.normal(loc=3.0, size=(5, 3)))
    assert layer.running_mean is not old_mean and layer.running_var is not old_var
    np.testing.assert_array_equal(pn.to_numpy(old_mean), np.zeros(3))
    np.testing.assert_array_equal(pn.to_numpy(old_var), np.ones(3))
    assert not np.allclose(pn.to_numpy(layer.running_mean), 0.0)
    layer.eval()
    kept = pn.to_numpy(layer.running_mean).copy()
    layer(rng.normal(size=(5, 3)))
    np.testing.assert_array_equal(pn.to_numpy(layer.running_mean), kept)


def test_fit_trains_and_predict_infers(rng):
    X, y = rng.normal(loc=1.0, size=(40, 4)), rng.integers(0, 3, size=40)
    model = pn.Sequential(pn.Dense(4, 6, seed=0), pn.BatchNorm(6), pn.ReLU(), pn.Dropout(0.5, seed=1), pn.Dense(6, 3, seed=2))
    dropout_state = model[3].extra_state()
    model.fit(X, y, loss="cross_entropy", epochs=2, batch_size=10, verbose=0)
    assert model.training is False
    assert model[3].extra_state() != dropout_state  # masks were drawn: training mode
    assert not np.allclose(pn.to_numpy(model[1].running_mean), 0.0)
    stats = {k: pn.to_numpy(v).copy() for k, v in model.buffers().items()}
    dropout_state = model[3].extra_state()
    first, second = pn.to_numpy(model.predict(X)), pn.to_numpy(model.predict(X, batch_size=7))
    model.evaluate(X, y)
    np.testing.assert_allclose(first, second, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(first, pn.to_numpy(model.eval()(X)), rtol=1e-6, atol=1e-6)
    assert model[3].extra_state() == dropout_state  # no masks drawn in inference
    for k, v in model.buffers().items():
        np.testing.assert_array_equal(pn.to_numpy(v), stats[k])
    assert not np.allclose(pn.to_numpy(model.train()(X)), first, atol=1e-3)
    model.eval()


def test_to_numpy_moves_and_casts_buffers_and_copy_is_independent(rng, backend):
    model = pn.Sequential(pn.Dense(3, 4, seed=0), pn.BatchNorm(4))
    model.train()(rng.normal(size=(6, 3)))
    model.eval()
    x = rng.normal(size=(5, 3)).astype(np.float32)
    expected = pn.to_numpy(model(x))
    stats = {k: pn.to_numpy(v).copy() for k, v in model.buffers().items()}
    clone = model.copy()
    clone.train()(rng.normal(size=(6, 3)))
    for k, v in model.buffers().items():
        np.testing.assert_array_equal(pn.to_numpy(v), stats[k])
    model.to("numpy")
    assert list(model.buffers()) == ["1.running_mean", "1.running_var"]
    for k, v in model.buffers().items():
        assert isinstance(v, np.ndarray) and v.dtype == np.float32
        np.testing.assert_array_equal(v, stats[k])
    np.testing.assert_allclose(model(x), expected, rtol=1e-6, atol=1e-6)
    model.to(dtype="float64")
    assert all(v.dtype == np.float64 for v in model.buffers().values())


def test_load_buffers_sets_running_statistics(rng, backend):
    layer = pn.BatchNorm(2, dtype="float64")
    layer.load_buffers({"running_mean": [1.0, -1.0], "running_var": [4.0, 0.25]})
    assert backend_of(layer.running_mean) == backend
    y = layer(np.array([[3.0, 0.0]]))
    np.testing.assert_allclose(pn.to_numpy(y), [[2.0 / np.sqrt(4.0 + 1e-5), 1.0 / np.sqrt(0.25 + 1e-5)]], rtol=1e-12)


# ---------------------------------------------------------------- Dropout


def _drop(layer, x):
    y, backward = layer.apply(x, True)
    return y, backward


def test_dropout_is_the_identity_in_inference_mode_and_for_p_zero(rng, backend):
    x = backend.asarray(rng.normal(size=(20, 30)), backend.xp.float32)
    layer = pn.Dropout(0.5, seed=0)
    assert layer.training is False
    np.testing.assert_array_equal(pn.to_numpy(layer(x)), pn.to_numpy(x))
    dy = backend.asarray(rng.normal(size=(20, 30)), backend.xp.float32)
    y, backward = layer.apply(x, False)
    np.testing.assert_array_equal(pn.to_numpy(backward(dy)[0]), pn.to_numpy(dy))
    zero = pn.Dropout(0.0, seed=0)
    y, backward = zero.apply(x, True)
    np.testing.assert_array_equal(pn.to_numpy(y), pn.to_numpy(x))
    np.testing.assert_array_equal(pn.to_numpy(backward(dy)[0]), pn.to_numpy(dy))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_zeroes_about_p_and_scales_the_rest(p, rng, backend):
    x = backend.asarray(rng.uniform(1.0, 2.0, size=(200, 500)), backend.xp.float64)
    y, _ = _drop(pn.Dropout(p, seed=1), x)
    y_np, x_np = pn.to_numpy(y), pn.to_numpy(x)
    zero = y_np == 0.0
    assert abs(zero.mean() - p) < 0.01
    np.testing.assert_allclose(y_np[~zero], x_np[~zero] / (1.0 - p), rtol=1e-12)


def test_dropout_same_seed_same_mask_on_every_backend(backend):
    ones = np.ones((6, 50), dtype=np.float32)
    with pn.use_backend("numpy"):
        reference = pn.Dropout(0.3, seed=11)
        expected = [pn.to_numpy(_drop(reference, ones)[0]) for _ in range(3)]
    layer = pn.Dropout(0.3, seed=11)
    got = [pn.to_numpy(_drop(layer, backend.asarray(ones))[0]) for _ in range(3)]
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)
    assert not np.array_equal(expected[0], expected[1])  # a fresh mask each call
    other = pn.to_numpy(_drop(pn.Dropout(0.3, seed=12), backend.asarray(ones))[0])
    assert not np.array_equal(other, expected[0])


def test_dropout_backward_uses_the_forward_mask(rng, backend):
    x = backend.asarray(rng.normal(size=(30, 40)), backend.xp.float64)
    dy = rng.normal(size=(30, 40))
    layer = pn.Dropout(0.4, seed=3).train()
    y = pn.to_numpy(layer.forward(x))
    layer(x)  # another forward (a new mask) must not change the pending backward
    dx = pn.to_numpy(layer.backward(backend.asarray(dy)))
    mask = y / pn.to_numpy(x)
    assert set(np.round(np.unique(mask), 12)) == {0.0, round(1 / 0.6, 12)}
    np.testing.assert_allclose(dx, dy * mask, rtol=1e-12, atol=0)


def test_dropout_extra_state_round_trips_through_json(backend):
    layer = pn.Dropout(0.5, seed=4)
    x = backend.asarray(np.ones((4, 8), dtype=np.float32))
    _drop(layer, x)
    state = json.loads(json.dumps(layer.extra_state()))
    expected = pn.to_numpy(_drop(layer, x)[0])
    fresh = pn.Dropout(0.5, seed=99)
    fresh.load_extra_state(state)
    np.testing.assert_array_equal(pn.to_numpy(_drop(fresh, x)[0]), expected)
    copy = layer.copy()
    np.testing.assert_array_equal(pn.to_numpy(_drop(copy, x)[0]), pn.to_numpy(_drop(layer, x)[0]))


# ---------------------------------------------------------------- config and errors


@pytest.mark.parametrize(
    "layer",
    [
        lambda: pn.Dropout(0.25, seed=3),
        lambda: pn.Dropout(),
        lambda: pn.BatchNorm(4, momentum=0.05, eps=1e-3, dtype="float64"),
        lambda: pn.BatchNorm(2),
        lambda: pn.LayerNorm(6, eps=1e-6, dtype="float64"),
        lambda: pn.LayerNorm(1),
    ],
    ids=["Dropout", "Dropout-defaults", "BatchNorm", "BatchNorm-defaults", "LayerNorm", "LayerNorm-defaults"],
)
def test_config_rebuilds_the_layer(layer):
    layer = layer()
    config = json.loads(json.dumps(layer.config()))
    cls = pn.Module.registry[type(layer).__name__]
    assert cls is type(layer)
    rebuilt = cls(**config)
    assert rebuilt.config() == layer.config()
    for name, value in layer.parameters().items():
        assert rebuilt.parameters()[name].dtype == value.dtype
    if "dtype" in config:
        assert config["dtype"] in ("float32", "float64")


def test_bad_arguments_raise_clear_errors():
    for p in (1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
            pn.Dropout(p)
    for p in ("0.5", True, None):
        with pytest.raises(TypeError, match="p must be a number"):
            pn.Dropout(p)
    with pytest.raises(ValueError, match="seed"):
        pn.Dropout(0.5, seed=-1)
    with pytest.raises(TypeError, match="seed"):
        pn.Dropout(0.5, seed=1.5)
    for cls in (pn.BatchNorm, pn.LayerNorm):
        with pytest.raises(ValueError, match="features"):
            cls(0)
        with pytest.raises(TypeError, match="features"):
            cls(2.5)
        with pytest.raises(ValueError, match="eps"):
            cls(3, eps=0.0)
        with pytest.raises(TypeError, match="floating"):
            cls(3, dtype="int32")
        with pytest.raises(TypeError, match="float17"):
            cls(3, dtype="float17")
    for momentum in (-0.1, 1.5):
        with pytest.raises(ValueError, match="momentum"):
            pn.BatchNorm(3, momentum=momentum)
    with pytest.raises(TypeError, match="momentum"):
        pn.BatchNorm(3, momentum=None)


def test_feature_mismatch_names_the_layer(rng):
    model = pn.Sequential(pn.Dense(4, 3, seed=0), pn.BatchNorm(5), pn.LayerNorm(5))
    with pytest.raises(ValueError, match=r"layer 1 \(BatchNorm\) expects 5 input features, got 3"):
        model(rng.normal(size=(2, 4)))
    model = pn.Sequential(pn.Dense(4, 3, seed=0), pn.LayerNorm(2))
    with pytest.raises(ValueError, match=r"layer 1 \(LayerNorm\) expects 2 input features, got 3"):
        model(rng.normal(size=(2, 4)))
    with pytest.raises(ValueError, match=r"BatchNorm expects 3 input features, got 4"):
        pn.BatchNorm(3)(rng.normal(size=(2, 4)))
    with pytest.raises(ValueError, match="2-D"):
        pn.BatchNorm(4).apply(pn.get_backend().asarray(rng.normal(size=(2, 3, 4))), False)


def test_batchnorm_needs_two_samples_to_train(rng):
    layer = pn.BatchNorm(3)
    layer(rng.normal(size=3))  # inference on one sample is fine
    with pytest.raises(ValueError, match="more than 1 sample"):
        layer.train()(rng.normal(size=(1, 3)))
