"""Optimizers: trajectories equal to torch.optim, gradient clipping, state, names, validation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import portnn as pn
from portnn import backend as backend_module
from portnn.optim import OPTIMIZERS, clip_by_global_norm

TORCH_NAMES = {"SGD": "SGD", "AdaGrad": "Adagrad", "RMSProp": "RMSprop", "Adam": "Adam", "AdamW": "AdamW"}

CASES = [
    ("AdaGrad", {"lr": 0.1}),
    ("AdaGrad", {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.01, "initial_accumulator_value": 0.1, "eps": 1e-6}),
    ("RMSProp", {}),
    ("RMSProp", {"lr": 0.01, "centered": True, "momentum": 0.9}),
    ("RMSProp", {"lr": 0.005, "alpha": 0.9, "eps": 1e-6, "weight_decay": 0.01, "momentum": 0.5}),
    ("RMSProp", {"lr": 0.005, "alpha": 0.8, "centered": True}),
    ("Adam", {}),
    ("Adam", {"lr": 0.01, "weight_decay": 0.05, "amsgrad": True}),
    ("Adam", {"lr": 0.02, "betas": (0.8, 0.9), "eps": 1e-6}),
    ("AdamW", {"lr": 0.01}),
    ("AdamW", {"lr": 0.01, "betas": (0.5, 0.95), "weight_decay": 0.1, "amsgrad": True}),
    ("SGD", {"lr": 0.1, "momentum": 0.9}),
]


def _data():
    rng = np.random.default_rng(3)
    return rng.normal(size=(32, 4)), rng.integers(0, 3, size=32)


def _model():
    return pn.Sequential(pn.Dense(4, 8, seed=0, dtype="float64"), pn.Tanh(), pn.Dense(8, 3, seed=1, dtype="float64"))


def _torch_twin(torch, model):
    ref = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    with torch.no_grad():
        for i in (0, 2):
            ref[i].weight.copy_(torch.tensor(pn.to_numpy(model[i].weight).T))
            ref[i].bias.copy_(torch.tensor(pn.to_numpy(model[i].bias)))
    return ref


def _train_torch(torch, ref, opt, X, y, clip_norm=None):
    for _ in range(3):
        for s in range(0, 32, 8):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ref(torch.tensor(X[s : s + 8])), torch.tensor(y[s : s + 8])).backward()
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(ref.parameters(), clip_norm)
            opt.step()


def _assert_same_weights(model, ref):
    for i in (0, 2):
        np.testing.assert_allclose(pn.to_numpy(model[i].weight), ref[i].weight.detach().numpy().T, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(pn.to_numpy(model[i].bias), ref[i].bias.detach().numpy(), rtol=1e-10, atol=1e-12)


def _check_against_torch(name, kwargs, clip_norm=None):
    torch = pytest.importorskip("torch")
    X, y = _data()
    model = _model()
    ref = _torch_twin(torch, model)
    start = pn.to_numpy(model[0].weight).copy()
    opt = getattr(pn, name)(**kwargs, clip_norm=clip_norm)
    model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=3, batch_size=8, shuffle=False, verbose=0)
    assert model.optimizer_state["step"] == 12
    assert np.abs(pn.to_numpy(model[0].weight) - start).max() > 1e-3  # it trained
    _train_torch(torch, ref, getattr(torch.optim, TORCH_NAMES[name])(ref.parameters(), **kwargs), X, y, clip_norm)
    _assert_same_weights(model, ref)


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_trajectory_matches_torch(backend, name, kwargs):
    _check_against_torch(name, kwargs)


@pytest.mark.parametrize(("name", "kwargs"), [("Adam", {"lr": 0.01}), ("SGD", {"lr": 0.1, "momentum": 0.9}), ("RMSProp", {})])
def test_clip_norm_matches_torch_clipping_before_the_step(backend, name, kwargs):
    _check_against_torch(name, kwargs, clip_norm=0.1)


def test_defaults_match_torch():
    torch = pytest.importorskip("torch")
    p = [torch.nn.Parameter(torch.zeros(1))]
    for name, torch_name in TORCH_NAMES.items():
        ours = getattr(pn, name)().config()
        theirs = getattr(torch.optim, torch_name)(p).defaults
        for key, value in ours.items():
            if key != "clip_norm":
                assert (list(theirs[key]) if key == "betas" else theirs[key]) == value, (name, key)


def _random_grads(backend, rng, scale):
    shapes = {"0.weight": (4, 8), "0.bias": (8,), "2.weight": (8, 3)}
    host = {k: rng.normal(scale=scale, size=s) for k, s in shapes.items()}
    return host, {k: backend.asarray(v.copy(), backend.xp.float64) for k, v in host.items()}


@pytest.mark.parametrize(("scale", "max_norm"), [(1.0, 0.5), (1.0, 100.0), (1e-3, 1.0)])
def test_clip_by_global_norm_matches_torch(backend, rng, scale, max_norm):
    torch = pytest.importorskip("torch")
    host, grads = _random_grads(backend, rng, scale)
    clipped, norm = clip_by_global_norm(grads, max_norm, backend.xp)
    tensors = {k: torch.tensor(v) for k, v in host.items()}
    params = []
    for t in tensors.values():
        params.append(torch.nn.Parameter(torch.zeros_like(t)))
        params[-1].grad = t.clone()
    expected_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    assert backend_module.backend_of(norm) == backend
    np.testing.assert_allclose(float(norm), float(expected_norm), rtol=1e-12)
    for (k, g), p in zip(clipped.items(), params):
        assert backend_module.backend_of(g) == backend and g.dtype == backend.xp.float64
        np.testing.assert_allclose(pn.to_numpy(g), p.grad.numpy(), rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(pn.to_numpy(grads[k]), host[k])  # the caller's gradients are untouched
    total = np.sqrt(sum((v**2).sum() for v in host.values()))
    assert (total > max_norm) == (np.sqrt(sum((pn.to_numpy(g) ** 2).sum() for g in clipped.values())) < total - 1e-9)


@pytest.mark.parametrize("clip_norm", [None, 0.5])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_update_does_not_change_the_callers_gradients(backend, rng, name, clip_norm):
    host, grads = _random_grads(backend, rng, 1.0)
    params = {k: backend.asarray(rng.normal(size=v.shape)) for k, v in host.items()}
    opt = OPTIMIZERS[name](clip_norm=clip_norm, weight_decay=0.1, **({"momentum": 0.9} if name == "sgd" else {}))
    state = opt.init(params, backend.xp)
    for _ in range(2):
        updates, state = opt.update(grads, state, params, backend.xp)
        params = pn.optim.apply_updates(params, updates)
    for k in grads:
        np.testing.assert_array_equal(pn.to_numpy(grads[k]), host[k])
        assert backend_module.backend_of(params[k]) == backend


class _Immutable(np.ndarray):
    """NumPy arrays whose in-place operators return new arrays, as JAX's do."""

    def __iadd__(self, other):
        return np.add(self, other)

    def __isub__(self, other):
        return np.subtract(self, other)

    def __imul__(self, other):
        return np.multiply(self, other)


def _frozen(tree):
    if isinstance(tree, dict):
        return {k: _frozen(v) for k, v in tree.items()}
    if isinstance(tree, np.ndarray):
        tree = tree.copy().view(_Immutable)
        tree.flags.writeable = False
        return tree
    return tree


@pytest.mark.parametrize(("name", "kwargs"), CASES + [("SGD", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1})])
def test_the_same_rule_runs_functionally_on_immutable_arrays(rng, name, kwargs):
    import array_api_compat.numpy as xp

    grads = [{"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4)} for _ in range(3)]
    start = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
    opt = getattr(pn, name)(**kwargs, clip_norm=1.0)
    params, state = {k: v.copy() for k, v in start.items()}, opt.init(start, xp)
    frozen_params, frozen_state = _frozen(start), _frozen(opt.init(start, xp))
    for g in grads:
        updates, state = opt.update(g, state, params, xp)
        params = pn.optim.apply_updates(params, updates)
        # read-only inputs: a write would raise, so the update can only rebind
        old_state = _frozen(frozen_state)
        frozen_updates, frozen_state = opt.update(_frozen(g), old_state, _frozen(frozen_params), xp)
        frozen_params = pn.optim.apply_updates(_frozen(frozen_params), frozen_updates)
        for k in start:
            np.testing.assert_allclose(frozen_params[k], params[k], rtol=1e-14, atol=1e-15)
            for slot, array in state["slots"][k].items():
                np.testing.assert_allclose(frozen_state["slots"][k][slot], array, rtol=1e-14, atol=1e-15)
    assert frozen_state["step"] == len(grads) and old_state["step"] == len(grads) - 1


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("Adam", {"amsgrad": True}), ("RMSProp", {"centered": True, "momentum": 0.9}), ("AdaGrad", {"initial_accumulator_value": 0.5})],
)
def test_state_lives_on_the_model_backend_and_moves_with_it(backend_name, name, kwargs):
    X, y = _data()
    model = _model()
    opt = getattr(pn, name)(**kwargs)
    model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=1, batch_size=8, verbose=0)
    slots = model.optimizer_state["slots"]
    assert set(slots) == set(model.parameters()) and set(slots["0.weight"]) == set(opt.slots)
    for per_param in slots.values():
        for array in per_param.values():
            assert backend_module.backend_of(array) == backend_name
            assert pn.to_numpy(array).dtype == np.float64
    before = {k: {s: pn.to_numpy(a).copy() for s, a in v.items()} for k, v in slots.items()}
    model.to("numpy")
    assert model.optimizer_state["step"] == 4
    for k, per_param in model.optimizer_state["slots"].items():
        for s, array in per_param.items():
            assert backend_module.backend_of(array) == "numpy"
            np.testing.assert_array_equal(array, before[k][s])
    model.fit(X, y, epochs=1, batch_size=8, verbose=0)  # keeps training with the moved state
    assert model.optimizer_state["step"] == 8
    assert all(backend_module.backend_of(a) == "numpy" for v in model.optimizer_state["slots"].values() for a in v.values())


def test_adagrad_state_starts_at_the_initial_accumulator_value(backend):
    params = {"w": backend.asarray(np.ones((2, 3)))}
    state = pn.AdaGrad(initial_accumulator_value=0.25).init(params, backend.xp)
    np.testing.assert_array_equal(pn.to_numpy(state["slots"]["w"]["sum"]), np.full((2, 3), 0.25))


@pytest.mark.parametrize("name", ["adam", "AdamW", "adagrad", "rmsprop", "sgd"])
def test_names_work_in_fit(name):
    X, y = _data()
    model = _model()
    model.fit(X, y, loss="cross_entropy", optimizer=name, epochs=1, batch_size=8, verbose=0)
    cls = OPTIMIZERS[name.lower()]
    assert type(model.optimizer) is cls and model.optimizer.config() == cls().config()


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError, match="did you mean 'adam'"):
        pn.optim.get_optimizer("adma")


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_config_is_json_and_rebuilds_the_optimizer(name):
    cls = OPTIMIZERS[name]
    opt = cls(lr=0.05, clip_norm=2.0)
    config = json.loads(json.dumps(opt.config()))
    assert set(config) == set(cls.__init__.__code__.co_varnames[1 : cls.__init__.__code__.co_argcount])
    assert config["clip_norm"] == 2.0 and config["lr"] == 0.05
    assert cls(**config).config() == opt.config()
    assert repr(opt).startswith(cls.__name__ + "(")


BAD = [
    (pn.Adam, {"lr": 0}, "lr"),
    (pn.Adam, {"lr": -1e-3}, "lr"),
    (pn.AdamW, {"lr": float("inf")}, "lr"),
    (pn.RMSProp, {"lr": float("nan")}, "lr"),
    (pn.Adam, {"betas": (1.0, 0.999)}, "betas[0]"),
    (pn.AdamW, {"betas": (0.9, -0.1)}, "betas[1]"),
    (pn.Adam, {"betas": (0.9,)}, "betas"),
    (pn.Adam, {"eps": 0.0}, "eps"),
    (pn.AdaGrad, {"eps": -1e-10}, "eps"),
    (pn.RMSProp, {"eps": 0}, "eps"),
    (pn.Adam, {"weight_decay": -0.1}, "weight_decay"),
    (pn.AdamW, {"weight_decay": -0.1}, "weight_decay"),
    (pn.AdaGrad, {"weight_decay": -1}, "weight_decay"),
    (pn.RMSProp, {"weight_decay": -1}, "weight_decay"),
    (pn.RMSProp, {"alpha": 1.0}, "alpha"),
    (pn.RMSProp, {"alpha": -0.5}, "alpha"),
    (pn.RMSProp, {"momentum": -0.5}, "momentum"),
    (pn.AdaGrad, {"lr_decay": -1}, "lr_decay"),
    (pn.AdaGrad, {"initial_accumulator_value": -1}, "initial_accumulator_value"),
    (pn.Adam, {"clip_norm": 0}, "clip_norm"),
    (pn.SGD, {"clip_norm": -1.0}, "clip_norm"),
    (pn.AdaGrad, {"clip_norm": float("nan")}, "clip_norm"),
]


@pytest.mark.parametrize(("cls", "kwargs", "name"), BAD, ids=[f"{c.__name__}-{n}-{i}" for i, (c, _, n) in enumerate(BAD)])
def test_bad_hyperparameters_raise_naming_them(cls, kwargs, name):
    with pytest.raises(ValueError, match=re.escape(name)):
        cls(**kwargs)


def test_clip_by_global_norm_rejects_bad_max_norm(backend):
    grads = {"w": backend.asarray(np.ones(3))}
    for bad in (0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="max_norm"):
            clip_by_global_norm(grads, bad, backend.xp)
