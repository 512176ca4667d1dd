"""Freezing: ``trainable = False``, ``freeze()``/``unfreeze()``, and what fit, optimizers and files do with it."""

from __future__ import annotations

import json

import numpy as np
import pytest

import portnn as pn

F64 = "float64"

OPTIMIZERS = {
    "adam": lambda: pn.Adam(lr=0.01),
    "adamw": lambda: pn.AdamW(lr=0.01, weight_decay=0.5),
    "sgd_momentum": lambda: pn.SGD(lr=0.1, momentum=0.9, weight_decay=0.1),
    "adam_clipped": lambda: pn.Adam(lr=0.01, clip_norm=0.05),
}
TORCH_OPTIMIZERS = {
    "adam": lambda torch, p: torch.optim.Adam(p, lr=0.01),
    "adamw": lambda torch, p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.5),
    "sgd_momentum": lambda torch, p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
    "adam_clipped": lambda torch, p: torch.optim.Adam(p, lr=0.01),
}
CLIP = {"adam_clipped": 0.05}  # torch clips the gradients of the parameters it trains


@pytest.fixture
def f64(float64_ok):
    if not float64_ok:
        pytest.skip("this check runs in float64, which this backend lacks")
    return F64


def _mlp(dtype=F64, **first):
    return pn.Sequential(
        pn.Dense(4, 8, seed=0, dtype=dtype, **first), pn.ReLU(), pn.Dense(8, 8, seed=1, dtype=dtype), pn.Tanh(),
        pn.Dense(8, 3, seed=2, dtype=dtype),
    )


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)), rng.integers(0, 3, size=n)


def _host(module):
    return {k: pn.to_numpy(v).copy() for k, v in module.parameters().items()}


def _unchanged(module, before):
    after = _host(module)
    return after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before)


def _all_moved(module, before):
    return all(not np.array_equal(pn.to_numpy(v), before[k]) for k, v in module.parameters().items())


# ---------------------------------------------------------------- the flag


def test_trainable_propagates_to_every_module_inside():
    model = pn.Sequential(
        pn.Dense(4, 4, seed=0), pn.Residual(pn.Sequential(pn.Dense(4, 4, seed=1), pn.Tanh())), pn.Dense(4, 2, seed=2)
    )
    assert all(m.trainable for m in model.modules())
    model[1].trainable = False
    assert [m.trainable for m in model[1].modules()] == [False] * 4
    assert model.trainable and model[0].trainable and model[2].trainable
    assert list(model.parameters(trainable_only=True)) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert list(model.parameters()) == ["0.weight", "0.bias", "1.block.0.weight", "1.block.0.bias", "2.weight", "2.bias"]
    assert model.num_parameters(trainable_only=True) == 20 + 10 and model.num_parameters() == 20 + 20 + 10
    assert model.freeze() is model and not any(m.trainable for m in model.modules())
    assert model.parameters(trainable_only=True) == {} and model.num_parameters(trainable_only=True) == 0
    assert model.unfreeze() is model and all(m.trainable for m in model.modules())
    for bad in (0, 1, "no", None):
        with pytest.raises(TypeError, match="trainable must be True or False"):
            model.trainable = bad
    assert all(m.trainable for m in model.modules())


def test_copy_and_to_keep_the_flag(backend_name):
    model = _mlp("float32")
    model[2].freeze()
    twin = model.copy()
    assert [m.trainable for m in twin] == [True, True, False, True, True]
    twin.to("numpy")
    assert [m.trainable for m in twin] == [True, True, False, True, True]
    twin.to(backend_name)
    assert list(twin.parameters(trainable_only=True)) == ["0.weight", "0.bias", "4.weight", "4.bias"]


# ---------------------------------------------------------------- fit leaves frozen weights alone


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_frozen_layer_is_bit_identical_after_fit(name, f64):
    X, y = _data()
    model = _mlp()
    model[0].trainable = False
    frozen, rest = _host(model[0]), {k: _host(model[i]) for k, i in (("2", 2), ("4", 4))}
    model.fit(X, y, loss="cross_entropy", optimizer=OPTIMIZERS[name](), epochs=3, batch_size=8, seed=0, verbose=0)
    assert _unchanged(model[0], frozen)
    assert _all_moved(model[2], rest["2"]) and _all_moved(model[4], rest["4"])
    # and the optimizer left its slots for them untouched
    for key in ("0.weight", "0.bias"):
        for slot in model.optimizer_state["slots"][key].values():
            assert not np.any(pn.to_numpy(slot))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_the_rest_trains_as_torch_with_requires_grad_false(name, f64):
    torch = pytest.importorskip("torch")
    X, y = _data(seed=1)
    model = _mlp()
    model[0].trainable = False
    ref = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).double()
    with torch.no_grad():
        for i in (0, 2, 4):
            ref[i].weight.copy_(torch.tensor(pn.to_numpy(model[i].weight).T))
            ref[i].bias.copy_(torch.tensor(pn.to_numpy(model[i].bias)))
    for p in ref[0].parameters():
        p.requires_grad_(False)
    opt = TORCH_OPTIMIZERS[name](torch, [p for p in ref.parameters() if p.requires_grad])
    model.fit(X, y, loss="cross_entropy", optimizer=OPTIMIZERS[name](), epochs=3, batch_size=8, shuffle=False, verbose=0)
    for _ in range(3):
        for s in range(0, 40, 8):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ref(torch.tensor(X[s : s + 8])), torch.tensor(y[s : s + 8])).backward()
            if name in CLIP:
                torch.nn.utils.clip_grad_norm_([p for p in ref.parameters() if p.requires_grad], CLIP[name])
            opt.step()
    for i in (0, 2, 4):
        np.testing.assert_allclose(pn.to_numpy(model[i].weight), ref[i].weight.detach().numpy().T, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(pn.to_numpy(model[i].bias), ref[i].bias.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_frozen_parameters_get_no_weight_decay_nor_penalty(f64):
    """Weight decay (L2 in SGD, decoupled in AdamW) and a layer's own l1/l2 penalty skip a frozen layer,
    even where its gradient would be zero anyway."""
    X, y = _data()
    for opt in (pn.AdamW(lr=0.1, weight_decay=0.9), pn.SGD(lr=0.1, weight_decay=0.9)):
        model = _mlp(l1=0.1, l2=0.1)
        model[0].freeze()
        frozen = _host(model[0])
        model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=2, batch_size=8, verbose=0)
        assert _unchanged(model[0], frozen)
    # the frozen layer's penalty is not part of the training loss either
    model = _mlp(l2=0.5)
    model[0].freeze()
    value, grads = pn.value_and_grad(model, "cross_entropy", X, y)
    np.testing.assert_allclose(float(value), model.evaluate(X, y, loss="cross_entropy"), rtol=1e-12)
    assert "0.weight" not in grads
    model[0].unfreeze()
    value_trainable, _ = pn.value_and_grad(model, "cross_entropy", X, y)
    assert float(value_trainable) > float(value)


def test_frozen_layers_have_no_gradients(f64):
    X, y = _data()
    model = _mlp()
    model[2].freeze()
    _, grads = pn.value_and_grad(model, "cross_entropy", X, y)
    assert list(grads) == ["0.weight", "0.bias", "4.weight", "4.bias"]
    assert list(model.gradients()) == list(grads)
    out = model.forward(X)
    model.backward(np.ones(tuple(out.shape)))
    assert list(model.gradients()) == list(grads)
    # the gradients of the others are those of the unfrozen model
    _, all_grads = pn.value_and_grad(_mlp(), "cross_entropy", X, y)
    for k, g in grads.items():
        np.testing.assert_allclose(pn.to_numpy(g), pn.to_numpy(all_grads[k]), rtol=1e-12, atol=1e-15)
    assert pn.gradient_check(model, "cross_entropy", X, y) < 1e-6


class Gain(pn.Module):
    """A user layer that knows nothing of freezing: its backward always gives its gradient."""

    def __init__(self, features):
        super().__init__()
        self.features = features
        self.add_parameter("gain", np.full((features,), 3.0))

    def config(self):
        return {"features": self.features}

    def apply(self, x, training):
        gain = self.parameters()["gain"]

        def backward(dy, need_dx=True):
            return (dy * gain if need_dx else None), {"gain": self.xp.sum(dy * x, axis=0)}

        return x * gain, backward


def test_gradients_a_frozen_user_layer_gives_are_left_out(f64):
    """Not trained, not returned by value_and_grad, and not part of the norm gradient clipping takes."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(16, 3)), rng.normal(size=(16, 2))
    model = pn.Sequential(Gain(3), pn.Dense(3, 2, seed=0, dtype=f64))
    model[0].freeze()
    _, grads = pn.value_and_grad(model, "mse", X, y)
    assert list(grads) == ["1.weight", "1.bias"] and list(model.gradients()) == ["1.weight", "1.bias"]
    # the same as a Dense alone on inputs the frozen gain scales
    alone = pn.Sequential(pn.Dense(3, 2, seed=0, dtype=f64))
    for opt in (lambda: pn.SGD(lr=0.1, clip_norm=0.01), lambda: pn.Adam(lr=0.01, clip_norm=0.01)):
        a, b = model.copy(), alone.copy()
        a.fit(X, y, loss="mse", optimizer=opt(), epochs=2, batch_size=4, shuffle=False, verbose=0)
        b.fit(3.0 * X, y, loss="mse", optimizer=opt(), epochs=2, batch_size=4, shuffle=False, verbose=0)
        np.testing.assert_array_equal(pn.to_numpy(a[0].gain), np.full(3, 3.0))
        for key in ("weight", "bias"):
            ours, theirs = pn.to_numpy(a[1].parameters()[key]), pn.to_numpy(b[0].parameters()[key])
            np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)


def test_fit_on_a_fully_frozen_model_is_a_clear_error():
    X, y = _data()
    model = _mlp("float32").freeze()
    before = _host(model)
    with pytest.raises(ValueError, match=r"every parameter of the model is frozen \(trainable=False\); unfreeze a layer"):
        model.fit(X, y, loss="cross_entropy", optimizer="adam", verbose=0)
    assert _unchanged(model, before) and model.optimizer is None
    # a model frozen after training keeps its optimizer, and fit still refuses
    model.unfreeze().fit(X, y, loss="cross_entropy", optimizer="adam", verbose=0)
    state = model.optimizer_state
    model.freeze()
    with pytest.raises(ValueError, match="every parameter of the model is frozen"):
        model.fit(X, y, verbose=0)
    assert model.optimizer_state is state


def test_unfreezing_a_child_of_a_frozen_parent_trains_only_that_child(f64):
    X, y = _data()
    model = _mlp().freeze()
    model[2].unfreeze()
    assert not model.trainable and model[2].trainable
    before = {i: _host(model[i]) for i in (0, 2, 4)}
    model.fit(X, y, loss="cross_entropy", optimizer=pn.AdamW(lr=0.01), epochs=2, batch_size=8, verbose=0)
    assert _unchanged(model[0], before[0]) and _unchanged(model[4], before[4])
    assert _all_moved(model[2], before[2])


def test_freezing_between_fits(f64):
    X, y = _data()
    model = _mlp()
    model.fit(X, y, loss="cross_entropy", optimizer=pn.Adam(lr=0.01), epochs=1, batch_size=8, verbose=0)
    model[0].freeze()
    frozen, rest = _host(model[0]), _host(model[4])
    model.fit(X, y, epochs=2, batch_size=8, verbose=0)
    assert _unchanged(model[0], frozen) and _all_moved(model[4], rest)
    model[0].unfreeze()
    model.fit(X, y, epochs=1, batch_size=8, verbose=0)
    assert _all_moved(model[0], frozen)


def test_freezing_inside_a_tree(f64):
    rng = np.random.default_rng(0)
    xa, xb, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 2)), rng.normal(size=(20, 2))
    model = pn.Sequential(
        pn.Parallel(pn.Sequential(pn.Dense(3, 4, seed=0, dtype=f64), pn.Tanh()), pn.Dense(2, 4, seed=1, dtype=f64)),
        pn.Add(),
        pn.Residual(pn.Sequential(pn.Dense(4, 4, seed=2, dtype=f64), pn.Tanh())),
        pn.Dense(4, 2, seed=3, dtype=f64),
    )
    model[0][0].freeze()
    model[2].block.freeze()
    frozen = {k: v for k, v in _host(model).items() if k.startswith(("0.0.", "2."))}
    moving = {k: v for k, v in _host(model).items() if k not in frozen}
    model.fit((xa, xb), y, loss="mse", optimizer=pn.Adam(lr=0.05), epochs=3, batch_size=5, verbose=0)
    after = _host(model)
    assert all(np.array_equal(after[k], v) for k, v in frozen.items())
    assert all(not np.array_equal(after[k], v) for k, v in moving.items())


# ---------------------------------------------------------------- saved and loaded


def _architecture(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return json.loads(f.metadata()["portnn"])["architecture"]


def test_the_flag_is_saved_and_loaded(tmp_path, f64):
    X, y = _data()
    model = _mlp()
    model[0].freeze()
    model.fit(X, y, loss="cross_entropy", optimizer=pn.Adam(lr=0.01), epochs=1, batch_size=8, verbose=0)
    path = tmp_path / "frozen.safetensors"
    pn.save(model, path)
    nodes = _architecture(path)["layers"]
    assert [n.get("trainable", True) for n in nodes] == [False, True, True, True, True]
    assert "trainable" not in nodes[2] and "trainable" not in _architecture(path)
    loaded = pn.load(path)
    assert [m.trainable for m in loaded] == [False, True, True, True, True] and loaded.trainable
    frozen = _host(loaded[0])
    loaded.fit(X, y, epochs=2, batch_size=8, verbose=0)
    assert _unchanged(loaded[0], frozen)


def test_an_unfrozen_child_of_a_frozen_parent_loads_unfrozen(tmp_path, f64):
    X, y = _data()
    model = _mlp().freeze()
    model[2].unfreeze()
    path = tmp_path / "child.safetensors"
    pn.save(model, path)
    arch = _architecture(path)
    assert arch["trainable"] is False and "trainable" not in arch["layers"][2]
    loaded = pn.load(path)
    assert not loaded.trainable
    assert [m.trainable for m in loaded] == [False, False, True, False, False]
    before = {i: _host(loaded[i]) for i in (0, 2, 4)}
    loaded.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=1, verbose=0)
    assert _unchanged(loaded[0], before[0]) and _unchanged(loaded[4], before[4]) and _all_moved(loaded[2], before[2])


class Block(pn.Module):
    """A user container that builds its own children (from its config)."""

    def __init__(self, width=4):
        super().__init__()
        self.width = width
        self.inner = pn.Dense(width, width, seed=0, dtype=F64)
        self.outer = pn.Sequential(pn.Dense(width, width, seed=1, dtype=F64), pn.Tanh())

    def config(self):
        return {"width": self.width}

    def apply(self, x, training):
        h, back1 = self.inner.apply(x, training)
        y, back2 = self.outer.apply(h, training)

        def backward(dy, need_dx=True):
            dh, g2 = back2(dy)
            dx, g1 = back1(dh, need_dx=need_dx)
            return dx, {"inner": g1, "outer": g2}

        return y, backward


def test_frozen_children_of_a_user_container_load_frozen(tmp_path, f64):
    model = pn.Sequential(Block(), pn.Dense(4, 2, seed=5, dtype=f64))
    model[0].inner.freeze()
    model[0].outer[0].freeze()
    path = tmp_path / "block.safetensors"
    pn.save(model, path)
    loaded = pn.load(path, custom_objects={"Block": Block})
    assert [(name, m.trainable) for name, m in loaded.named_modules()] == [(n, m.trainable) for n, m in model.named_modules()]
    assert list(loaded.parameters(trainable_only=True)) == ["1.weight", "1.bias"]
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(12, 4)), rng.normal(size=(12, 2))
    before = _host(loaded[0])
    loaded.fit(X, y, loss="mse", optimizer="adam", epochs=2, batch_size=4, verbose=0)
    assert _unchanged(loaded[0], before)


def test_a_file_with_a_bad_trainable_flag_is_refused(tmp_path):
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    from portnn._file_checks import checksum

    model = _mlp("float32")
    path = tmp_path / "m.safetensors"
    pn.save(model, path)
    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()["portnn"])
    meta["architecture"]["layers"][0]["trainable"] = "no"
    text = json.dumps(meta)
    tensors = load_file(str(path))
    save_file(tensors, str(path), metadata={"portnn": text, "portnn_sha256": checksum(text, tensors)})
    with pytest.raises(ValueError, match=r"Dense at architecture.layers\[0\] has 'trainable' 'no'; it must be true or false"):
        pn.load(path)
