"""Every layer: gradient check, agreement across backends and with PyTorch, and its errors."""

import numpy as np
import pytest

import portnn as pn
from portnn.backend import backend_of

ACTIVATIONS = {
    "Identity": lambda: pn.Identity(),
    "Step": lambda: pn.Step(),
    "Sigmoid": lambda: pn.Sigmoid(),
    "Tanh": lambda: pn.Tanh(),
    "ReLU": lambda: pn.ReLU(),
    "LeakyReLU": lambda: pn.LeakyReLU(alpha=0.1),
    "ELU": lambda: pn.ELU(),
    "GELU": lambda: pn.GELU(),
    "SiLU": lambda: pn.SiLU(),
    "Softplus": lambda: pn.Softplus(),
    "Softmax": lambda: pn.Softmax(),
}


def _torch_activation(name):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    return {
        "Identity": nn.Identity(),
        "Step": lambda x: (x > 0).to(x.dtype),
        "Sigmoid": nn.Sigmoid(),
        "Tanh": nn.Tanh(),
        "ReLU": nn.ReLU(),
        "LeakyReLU": nn.LeakyReLU(0.1),
        "ELU": nn.ELU(),
        "GELU": nn.GELU(approximate="tanh"),
        "SiLU": nn.SiLU(),
        "Softplus": nn.Softplus(),
        "Softmax": nn.Softmax(dim=-1),
    }[name]


def _net(activation, seed=0):
    return pn.Sequential(
        pn.Dense(4, 5, seed=seed, dtype="float64"),
        activation,
        pn.Dense(5, 3, seed=seed + 1, dtype="float64"),
    )


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_gradient_check_each_activation(name, loss, rng):
    model = _net(ACTIVATIONS[name]())
    x = rng.normal(size=(6, 4))
    y = rng.integers(0, 3, size=6) if loss == "cross_entropy" else rng.normal(size=(6, 3))
    assert pn.gradient_check(model, loss, x, y, max_checks=64) < 1e-5


def test_gradient_check_detects_a_wrong_backward(rng, monkeypatch):
    model = _net(pn.Tanh())
    x, y = rng.normal(size=(6, 4)), rng.integers(0, 3, size=6)
    monkeypatch.setattr(pn.Tanh, "_grad", lambda self, x, y: 1.0 - y)  # wrong derivative
    assert pn.gradient_check(model, "cross_entropy", x, y) > 1e-2


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_forward_and_backward_match_torch(name, rng, backend):
    torch = pytest.importorskip("torch")
    x = rng.normal(scale=2.0, size=(5, 4))
    dy = rng.normal(size=(5, 4))
    layer = ACTIVATIONS[name]()
    y = layer.forward(backend.asarray(x, backend.xp.float64))
    dx = layer.backward(backend.asarray(dy, backend.xp.float64))

    tx = torch.tensor(x, requires_grad=True)
    ty = _torch_activation(name)(tx)
    if ty.requires_grad:
        ty.backward(torch.tensor(dy))
        expected_dx = tx.grad.numpy()
    else:
        expected_dx = np.zeros_like(x)
    np.testing.assert_allclose(pn.to_numpy(y), ty.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(pn.to_numpy(dx), expected_dx, rtol=1e-10, atol=1e-12)


def test_dense_matches_torch_linear(rng, backend):
    torch = pytest.importorskip("torch")
    layer = pn.Dense(4, 3, seed=3, dtype="float64")
    x, dy = rng.normal(size=(6, 4)), rng.normal(size=(6, 3))
    y = layer.forward(x)
    dx = layer.backward(backend.asarray(dy))
    lin = torch.nn.Linear(4, 3, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(pn.to_numpy(layer.weight).T))
        lin.bias.copy_(torch.tensor(pn.to_numpy(layer.bias)))
    tx = torch.tensor(x, requires_grad=True)
    ty = lin(tx)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(pn.to_numpy(y), ty.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(pn.to_numpy(dx), tx.grad.numpy(), rtol=1e-12)
    grads = layer.gradients()
    assert list(grads) == ["weight", "bias"]
    np.testing.assert_allclose(pn.to_numpy(grads["weight"]), lin.weight.grad.numpy().T, rtol=1e-12)
    np.testing.assert_allclose(pn.to_numpy(grads["bias"]), lin.bias.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_forward_agrees_with_numpy_backend(name, rng, backend):
    x = rng.normal(size=(8, 4)).astype(np.float32)
    model = _net(ACTIVATIONS[name](), seed=7).to(dtype="float32")
    here = pn.to_numpy(model(x))
    reference = pn.to_numpy(model.copy().to("numpy")(x))
    np.testing.assert_allclose(here, reference, rtol=1e-5, atol=1e-6)


EVAL_LAYERS = {**ACTIVATIONS, "BatchNorm": lambda: pn.BatchNorm(6), "Dropout": lambda: pn.Dropout(0.5),
               "LayerNorm": lambda: pn.LayerNorm(6)}


@pytest.mark.parametrize("name", sorted(EVAL_LAYERS))
def test_calling_a_model_in_eval_mode_equals_its_inference_forward(name, rng, backend):
    # model(x) in eval mode takes each layer's lean inference path; it must be the same math
    model = pn.Sequential(pn.Dense(4, 6, seed=1), EVAL_LAYERS[name](), pn.Dense(6, 3, seed=2))
    model = model.to(dtype="float64")
    x = rng.normal(size=(8, 4))
    model.fit(x, rng.normal(size=(8, 3)), loss="mse", epochs=2, batch_size=4, verbose=0)
    model.eval()
    traced, _ = model.apply(model._input(x)[0], False)
    np.testing.assert_array_equal(pn.to_numpy(model(x)), pn.to_numpy(traced))
    # one sample goes through a matrix-vector product: rounding may differ from the batch's
    np.testing.assert_allclose(pn.to_numpy(model(x[0])), pn.to_numpy(traced)[0], rtol=1e-12)


def test_layer_accepts_one_sample_and_a_batch(rng, backend_name):
    layer = pn.Dense(3, 2, seed=0)
    x = rng.normal(size=(4, 3))
    batch = pn.to_numpy(layer(x))
    single = layer(x[1])
    assert tuple(single.shape) == (2,)
    assert backend_of(single) == backend_name
    np.testing.assert_allclose(pn.to_numpy(single), batch[1], rtol=1e-6)
    dx = layer.backward(np.ones(2)) if layer.forward(x[1]) is not None else None
    assert tuple(dx.shape) == (3,)
    relu = pn.ReLU()
    np.testing.assert_array_equal(pn.to_numpy(relu(np.array([-1.0, 2.0]))), [0.0, 2.0])


def test_parameters_are_named_by_position():
    inner = pn.Sequential(pn.Dense(3, 3, seed=0), pn.Tanh())
    model = pn.Sequential(pn.Dense(2, 3, seed=1), pn.ReLU(), inner, pn.Dense(3, 1, seed=2, use_bias=False))
    assert list(model.parameters()) == ["0.weight", "0.bias", "2.0.weight", "2.0.bias", "3.weight"]
    assert list(pn.Dense(2, 2).parameters()) == ["weight", "bias"]


def test_gradients_after_backward_have_parameter_keys(rng, backend):
    model = pn.Sequential(pn.Dense(3, 4, seed=0), pn.Sigmoid(), pn.Dense(4, 2, seed=1))
    model.forward(rng.normal(size=(5, 3)))
    model.backward(backend.asarray(np.ones((5, 2)), backend.xp.float32))
    assert list(model.gradients()) == list(model.parameters())
    for name, g in model.gradients().items():
        assert tuple(g.shape) == tuple(model.parameters()[name].shape)


def test_load_parameters_sets_values_and_checks_shapes(backend):
    model = pn.Sequential(pn.Dense(2, 2, seed=0), pn.ReLU(), pn.Dense(2, 1, seed=1))
    new = {"0.weight": np.eye(2), "2.bias": np.array([5.0])}
    model.load_parameters(new)
    np.testing.assert_array_equal(pn.to_numpy(model.parameters()["0.weight"]), np.eye(2))
    np.testing.assert_array_equal(pn.to_numpy(model.parameters()["2.bias"]), [5.0])
    assert model.parameters()["0.weight"].dtype == backend.xp.float32
    before = {k: pn.to_numpy(v).copy() for k, v in model.parameters().items()}
    with pytest.raises(ValueError, match=r"2\.weight.*\(2, 1\)"):
        model.load_parameters({"0.bias": np.zeros(2), "2.weight": np.zeros((3, 1))})
    with pytest.raises(KeyError, match="nope"):
        model.load_parameters({"nope": np.zeros(1)})
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(pn.to_numpy(v), before[k])


def test_explicit_weights_keep_their_dtype_and_are_not_mutated(backend):
    w = np.array([[0.1, 0.3, 0.5], [0.2, 0.4, 0.6]])
    layer = pn.Dense(2, 3, weight=w, bias=[0.1, 0.2, 0.3])
    assert layer.weight.dtype == backend.xp.float64
    model = pn.Sequential(layer)
    model.fit(np.ones((4, 2)), np.zeros((4, 3)), loss="mse", optimizer=pn.SGD(lr=0.1), epochs=2, verbose=0)
    np.testing.assert_array_equal(w, [[0.1, 0.3, 0.5], [0.2, 0.4, 0.6]])
    assert pn.Dense(2, 3, weight=w.astype(np.float32)).weight.dtype == backend.xp.float32
    assert pn.Dense(2, 3, seed=0).weight.dtype == backend.xp.float32
    assert pn.Dense(2, 3, seed=0, dtype="float64").weight.dtype == backend.xp.float64


def test_dense_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"weight must have shape \(2, 3\)"):
        pn.Dense(2, 3, weight=np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        pn.Dense(2, 3, bias=np.zeros(2))
    with pytest.raises(ValueError, match="in_features"):
        pn.Dense(0, 3)
    with pytest.raises(TypeError, match="out_features"):
        pn.Dense(2, 2.5)
    with pytest.raises(ValueError, match="did you mean 'he_normal'"):
        pn.Dense(2, 2, init="he_nromal")


def test_shape_errors_name_the_layer(rng):
    model = pn.Sequential(pn.Dense(4, 3, seed=0), pn.ReLU(), pn.Dense(2, 1, seed=0))
    with pytest.raises(ValueError, match=r"layer 0 \(Dense\) expects 4 input features, got 5"):
        model(rng.normal(size=(2, 5)))
    with pytest.raises(ValueError, match=r"layer 2 \(Dense\) expects 2 input features, got 3"):
        model(rng.normal(size=(2, 4)))
    # any rank: Dense acts on the last axis, the checks still name the layer
    x3 = rng.normal(size=(2, 3, 4))
    ok = pn.Sequential(pn.Dense(4, 3, seed=0), pn.ReLU(), pn.Dense(3, 1, seed=0))
    np.testing.assert_allclose(pn.to_numpy(ok(x3))[:, 1], pn.to_numpy(ok(x3[:, 1])), rtol=1e-5)
    with pytest.raises(ValueError, match=r"layer 0 \(Dense\) expects 4 input features, got 2 \(input shape \(2, 4, 2\)\)"):
        model(rng.normal(size=(2, 4, 2)))
    with pytest.raises(TypeError, match="bool"):
        model(np.ones((2, 4), dtype=bool))
    with pytest.raises(TypeError, match="dtype"):
        model(np.array([["a", "b", "c", "d"]]))
    with pytest.raises(ValueError, match="empty"):
        model(np.zeros((0, 4)))


def test_sequential_rejects_non_layers_and_mixed_backends(backend_name):
    with pytest.raises(TypeError, match="argument 1"):
        pn.Sequential(pn.Dense(2, 2), "relu")
    others = [b for b in pn.available_backends() if b != backend_name]
    if others:
        with pn.use_backend(others[0]):
            foreign = pn.Dense(2, 2)
        with pytest.raises(ValueError, match="different backends"):
            pn.Sequential(pn.Dense(2, 2), foreign)


def test_train_and_eval_switch_every_layer():
    model = pn.Sequential(pn.Dense(2, 2), pn.ReLU())
    assert model.training is False
    model.train()
    assert all(m.training for m in model.modules())
    model.eval()
    assert not any(m.training for m in model.modules())


def test_layer_arguments_are_checked():
    with pytest.raises(TypeError, match="floating dtype"):
        pn.Dense(2, 2, dtype="int32")
    for bad in (np.ones((2, 2), dtype=bool), np.ones((2, 2), dtype=complex), np.array([["a", "b"], ["c", "d"]])):
        with pytest.raises(TypeError, match="weight"):
            pn.Dense(2, 2, weight=bad)
    with pytest.raises(ValueError, match="weight contains NaN"):
        pn.Dense(2, 2, weight=np.array([[1.0, np.nan], [0.0, 0.0]]))
    with pytest.raises(TypeError, match="mapping"):
        pn.Dense(2, 2).load_parameters(3)
    with pytest.raises(TypeError, match="alpha"):
        pn.LeakyReLU("a")
    with pytest.raises(ValueError, match="alpha"):
        pn.ELU(-1.0)
    with pytest.raises(ValueError, match="beta"):
        pn.Softplus(beta=0)
