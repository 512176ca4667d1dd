"""portnn.optim: chains of transforms, parameter groups and schedules of the step, against PyTorch."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import portnn as pn
from portnn import optim

X_SHAPE, CLASSES = (32, 4), 3


def _data():
    rng = np.random.default_rng(3)
    return rng.normal(size=X_SHAPE), rng.integers(0, CLASSES, size=X_SHAPE[0])


def _model():
    return pn.Sequential(pn.Dense(4, 8, seed=0, dtype="float64"), pn.Tanh(), pn.Dense(8, 3, seed=1, dtype="float64"))


def _torch_twin(torch, model):
    ref = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    with torch.no_grad():
        for i in (0, 2):
            ref[i].weight.copy_(torch.tensor(pn.to_numpy(model[i].weight).T))
            ref[i].bias.copy_(torch.tensor(pn.to_numpy(model[i].bias)))
    return ref


def _train_torch(torch, ref, opt, X, y, scheduler=None, clip_norm=None, epochs=3, before_epoch=None):
    for epoch in range(epochs):
        if before_epoch is not None:
            before_epoch(epoch)
        for s in range(0, 32, 8):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ref(torch.tensor(X[s : s + 8])), torch.tensor(y[s : s + 8])).backward()
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(ref.parameters(), clip_norm)
            opt.step()
            if scheduler is not None:
                scheduler.step()


def _assert_same_weights(model, ref):
    for i in (0, 2):
        np.testing.assert_allclose(pn.to_numpy(model[i].weight), ref[i].weight.detach().numpy().T, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(pn.to_numpy(model[i].bias), ref[i].bias.detach().numpy(), rtol=1e-10, atol=1e-12)


def _fit(model, optimizer, epochs=3, **kwargs):
    X, y = _data()
    return model.fit(X, y, loss="cross_entropy", optimizer=optimizer, epochs=epochs, batch_size=8, shuffle=False, verbose=0, **kwargs)


# ---------------------------------------------------------------- chains


def test_a_chain_trains_as_torch_adamw_with_clipping(backend):
    torch = pytest.importorskip("torch")
    model = _model()
    ref = _torch_twin(torch, model)
    adamw = optim.chain(
        optim.clip_by_global_norm(0.5), optim.scale_by_adam(), optim.add_decayed_weights(0.05), optim.scale_by_learning_rate(0.01)
    )
    _fit(model, adamw)
    assert model.optimizer is adamw and model.optimizer_state["step"] == 12
    X, y = _data()
    _train_torch(torch, ref, torch.optim.AdamW(ref.parameters(), lr=0.01, weight_decay=0.05), X, y, clip_norm=0.5)
    _assert_same_weights(model, ref)


def test_a_chain_follows_the_transform_protocol(backend, rng):
    xp = backend.xp
    params = {"w": backend.asarray(rng.normal(size=(3, 2))), "b": backend.asarray(rng.normal(size=2))}
    grads = {k: backend.asarray(rng.normal(size=tuple(v.shape))) for k, v in params.items()}
    sgd = optim.chain(optim.trace(0.9), optim.scale_by_learning_rate(0.1))
    state = sgd.init(params)
    assert state["step"] == 0 and set(state["slots"]["w"]) == {"momentum_buffer"}
    updates, state = sgd.update(grads, state, params)
    np.testing.assert_allclose(pn.to_numpy(updates["w"]), -0.1 * pn.to_numpy(grads["w"]), rtol=1e-12)
    new = optim.apply_updates(params, updates)
    np.testing.assert_allclose(pn.to_numpy(new["b"]), pn.to_numpy(params["b"]) - 0.1 * pn.to_numpy(grads["b"]), rtol=1e-12)
    assert state["step"] == 1 and state["counts"] == {"w": 1, "b": 1} and state["lr"] == 0.1
    assert xp.all(state["slots"]["w"]["momentum_buffer"] == grads["w"])
    with pytest.raises(ValueError, match="momentum_buffer"):
        optim.chain(optim.trace(0.9), optim.trace(0.5)).init(params)


def test_clip_by_global_norm_is_a_transform_with_torchs_epsilon(backend, rng):
    torch = pytest.importorskip("torch")
    host = {"a": rng.normal(size=(4, 3)), "b": rng.normal(size=5)}
    grads = {k: backend.asarray(v) for k, v in host.items()}
    clip = optim.clip_by_global_norm(0.3)
    updates, _ = clip.update(grads, clip.init(grads))
    tensors = [torch.nn.Parameter(torch.zeros_like(torch.tensor(v))) for v in host.values()]
    for t, v in zip(tensors, host.values()):
        t.grad = torch.tensor(v)
    torch.nn.utils.clip_grad_norm_(tensors, 0.3)
    for (k, u), t in zip(updates.items(), tensors):
        np.testing.assert_allclose(pn.to_numpy(u), t.grad.numpy(), rtol=1e-13, atol=0)


@pytest.mark.parametrize(
    ("name", "kwargs", "torch_name"),
    [("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.3}, "SGD"), ("SGD", {"lr": 0.1, "momentum": 0.8, "dampening": 0.5, "weight_decay": 0.01}, "SGD")],
)
def test_sgd_dampening_matches_torch(backend, name, kwargs, torch_name):
    torch = pytest.importorskip("torch")
    model = _model()
    ref = _torch_twin(torch, model)
    _fit(model, getattr(pn, name)(**kwargs))
    X, y = _data()
    _train_torch(torch, ref, getattr(torch.optim, torch_name)(ref.parameters(), **kwargs), X, y)
    _assert_same_weights(model, ref)


# ---------------------------------------------------------------- parameter groups

GROUP_CASES = [
    ("AdamW", {"lr": 0.01, "weight_decay": 0.1}, [{"match": "*.bias", "weight_decay": 0.0}, {"match": "0.*", "lr_scale": 0.1}]),
    ("SGD", {"lr": 0.1, "momentum": 0.9}, [{"match": "2.*", "momentum": 0.5, "nesterov": True}, {"match": "*.bias", "lr_scale": 2.0}]),
    ("Adam", {"lr": 0.01}, [{"match": "0.weight", "betas": (0.8, 0.9), "weight_decay": 0.01}]),
    ("RMSProp", {"lr": 0.01}, [{"match": "*.weight", "momentum": 0.9, "centered": True}]),
    ("AdaGrad", {"lr": 0.1}, [{"match": "2.*", "lr_decay": 0.05, "lr_scale": 0.5}]),
]
TORCH_NAMES = {"SGD": "SGD", "AdaGrad": "Adagrad", "RMSProp": "RMSprop", "Adam": "Adam", "AdamW": "AdamW"}


def _torch_groups(ref, options, groups):
    """PyTorch's param groups for the same split: each parameter in the first group that matches."""
    import fnmatch

    names = {"0.weight": ref[0].weight, "0.bias": ref[0].bias, "2.weight": ref[2].weight, "2.bias": ref[2].bias}
    split: dict[int, list] = {}
    for name, p in names.items():
        index = next((i for i, g in enumerate(groups) if fnmatch.fnmatchcase(name, g["match"])), -1)
        split.setdefault(index, []).append(p)
    torch_groups = []
    for index, params in split.items():
        group = {} if index < 0 else {k: v for k, v in groups[index].items() if k not in ("match", "lr_scale")}
        group["lr"] = options["lr"] * (1.0 if index < 0 else groups[index].get("lr_scale", 1.0))
        torch_groups.append({"params": params, **group})
    return torch_groups


@pytest.mark.parametrize(("name", "options", "groups"), GROUP_CASES, ids=[c[0] for c in GROUP_CASES])
def test_parameter_groups_equal_torch_param_groups(backend, name, options, groups):
    torch = pytest.importorskip("torch")
    model = _model()
    ref = _torch_twin(torch, model)
    opt = getattr(pn, name)(**options, groups=groups)
    _fit(model, opt)
    X, y = _data()
    torch_opt = getattr(torch.optim, TORCH_NAMES[name])(_torch_groups(ref, options, groups), **{k: v for k, v in options.items() if k != "lr"})
    _train_torch(torch, ref, torch_opt, X, y)
    _assert_same_weights(model, ref)


def test_the_first_matching_group_wins_and_unmatched_take_the_optimizers_options():
    opt = pn.AdamW(1e-3, weight_decay=0.01, groups=[{"match": "*.bias", "weight_decay": 0.0}, {"match": "0.*", "lr_scale": 0.1}])
    assert [opt.group_of(n) for n in ("0.bias", "0.weight", "1.bias", "block.0.weight", "2.weight")] == [0, 1, 0, None, None]
    config = json.loads(json.dumps(opt.config()))
    assert config["groups"] == [{"match": "*.bias", "weight_decay": 0.0}, {"match": "0.*", "lr_scale": 0.1}]
    assert pn.AdamW(**config).config() == opt.config()


@pytest.mark.parametrize(
    ("groups", "error", "match"),
    [
        ([{"match": "*.bias", "lr": 0.1}], ValueError, "lr_scale"),
        ([{"match": "*.bias", "momentum": 0.9}], ValueError, "momentum"),
        ([{"weight_decay": 0.0}], TypeError, "match"),
        ({"match": "*"}, TypeError, "list of dicts"),
        ([{"match": "*", "weight_decay": -1.0}], ValueError, "weight_decay"),
        ([{"match": "*", "lr_scale": 0}], ValueError, "lr_scale"),
    ],
)
def test_bad_groups_are_clear_errors(groups, error, match):
    with pytest.raises(error, match=match):
        pn.AdamW(groups=groups)


def test_groups_save_and_resume_exactly(tmp_path):
    pytest.importorskip("safetensors")
    groups = [{"match": "*.bias", "weight_decay": 0.0}, {"match": "0.*", "lr_scale": 0.1}]
    straight, first = _model(), _model()
    _fit(straight, pn.AdamW(0.01, groups=groups), epochs=4)
    _fit(first, pn.AdamW(0.01, groups=groups), epochs=2)
    first.save(tmp_path / "m.safetensors")
    resumed = pn.load(tmp_path / "m.safetensors")
    assert resumed.optimizer.config() == first.optimizer.config()
    _fit(resumed, None, epochs=4, initial_epoch=2)
    for name, value in straight.parameters().items():
        np.testing.assert_array_equal(pn.to_numpy(resumed.parameters()[name]), pn.to_numpy(value), err_msg=name)


# ---------------------------------------------------------------- schedules of the step


def _torch_rates(torch, make_scheduler, steps, lr=1.0):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    scheduler = make_scheduler(opt)
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return rates


SCHEDULE_CASES = [
    ("step", lambda: optim.step_schedule(0.5, step_size=3, gamma=0.5), lambda t, o: t.optim.lr_scheduler.StepLR(o, 3, 0.5), 0.5),
    ("exponential", lambda: optim.exponential_schedule(0.5, gamma=0.9), lambda t, o: t.optim.lr_scheduler.ExponentialLR(o, 0.9), 0.5),
    ("linear", lambda: optim.linear_schedule(0.05, 0.5, steps=7), lambda t, o: t.optim.lr_scheduler.LinearLR(o, 0.1, 1.0, total_iters=7), 0.5),
    ("piecewise", lambda: optim.piecewise_constant([4, 9], [0.5, 0.05, 0.005]), lambda t, o: t.optim.lr_scheduler.MultiStepLR(o, [4, 9], 0.1), 0.5),
    ("one_cycle", lambda: optim.one_cycle(0.5, total_steps=20), lambda t, o: t.optim.lr_scheduler.OneCycleLR(o, 0.5, total_steps=20, cycle_momentum=False), 0.5),
    ("one_cycle-3-linear", lambda: optim.one_cycle(0.5, 20, pct_start=0.25, anneal_strategy="linear", three_phase=True),
     lambda t, o: t.optim.lr_scheduler.OneCycleLR(o, 0.5, total_steps=20, pct_start=0.25, anneal_strategy="linear", three_phase=True, cycle_momentum=False), 0.5),
    ("warmup_cosine", lambda: optim.warmup_cosine(0.5, warmup_steps=4, total_steps=16, start_lr=0.05, end_lr=0.01),
     lambda t, o: t.optim.lr_scheduler.SequentialLR(o, [t.optim.lr_scheduler.LinearLR(o, 0.1, 1.0, total_iters=4),
                                                        t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=12, eta_min=0.01)], milestones=[4]), 0.5),
]


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's SequentialLR warns about its own epoch argument
@pytest.mark.parametrize(("name", "ours", "theirs", "lr"), SCHEDULE_CASES, ids=[c[0] for c in SCHEDULE_CASES])
def test_schedules_equal_torch_schedulers_step_by_step(name, ours, theirs, lr):
    torch = pytest.importorskip("torch")
    # within the schedule's length (past it PyTorch's cosine rises again, portnn's rate stays)
    steps = {"one_cycle": 20, "one_cycle-3-linear": 20, "warmup_cosine": 17}.get(name, 24)
    expected = _torch_rates(torch, lambda o: theirs(torch, o), steps, lr)
    schedule = ours()
    np.testing.assert_allclose([schedule(s) for s in range(steps)], expected, rtol=1e-10, atol=1e-15)
    rebuilt = optim.scale_by_learning_rate(json.loads(json.dumps(schedule.config()))).lr
    assert rebuilt == schedule and rebuilt(5) == schedule(5)


def test_warmup_cosine_equals_its_lambda_lr_formula():
    torch = pytest.importorskip("torch")

    def factor(step):  # the usual transformer recipe, as a LambdaLR
        if step < 5:
            return step / 5
        return 0.5 * (1 + math.cos(math.pi * min(step - 5, 15) / 15))

    expected = _torch_rates(torch, lambda o: torch.optim.lr_scheduler.LambdaLR(o, factor), 25, lr=0.3)
    schedule = optim.warmup_cosine(0.3, 5, 20)
    np.testing.assert_allclose([schedule(s) for s in range(25)], expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_a_per_step_schedule_trains_as_torch_lambda_lr(backend, name):
    torch = pytest.importorskip("torch")
    model = _model()
    ref = _torch_twin(torch, model)
    base = 0.05

    def rate(step):  # any callable step -> lr
        return base * (0.5 if step % 3 == 2 else 1.0) / (1 + step)

    history = _fit(model, getattr(pn, name)(lr=rate))
    assert model.optimizer_state["step"] == 12 and model.optimizer_state["lr"] == rate(11)
    assert history["lr"] == [rate(3), rate(7), rate(11)]  # the rate of each epoch's last step
    X, y = _data()
    opt = getattr(torch.optim, name)(ref.parameters(), lr=base)
    _train_torch(torch, ref, opt, X, y, scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: rate(s) / base))
    _assert_same_weights(model, ref)


def test_the_rate_lives_in_the_state_not_on_the_optimizer():
    opt = pn.SGD(lr=optim.exponential_schedule(0.1, 0.5))
    model = _model()
    _fit(model, opt, epochs=1)
    assert model.optimizer_state["lr"] == pytest.approx(0.1 * 0.5**3) and opt.lr(0) == 0.1
    assert not hasattr(opt, "initial_lr")
    constant = pn.SGD(lr=0.1)
    _fit(model, constant, epochs=3, callbacks=[pn.StepLR(step_size=1, gamma=0.5)])
    assert constant.lr == 0.1 and model.optimizer_state["lr"] == pytest.approx(0.025)
    with pytest.raises(TypeError, match="constant lr"):
        _fit(_model(), opt, callbacks=[pn.StepLR(step_size=1)])


def test_a_schedule_resumes_exactly_from_a_file(tmp_path):
    pytest.importorskip("safetensors")
    schedule = optim.warmup_cosine(0.05, warmup_steps=3, total_steps=20)
    straight, first = _model(), _model()
    h_straight = _fit(straight, pn.AdamW(schedule), epochs=5)
    _fit(first, pn.AdamW(schedule), epochs=2)
    first.save(tmp_path / "m.safetensors")
    resumed = pn.load(tmp_path / "m.safetensors")
    assert resumed.optimizer.lr == schedule and resumed.optimizer_state["step"] == 8
    h_rest = _fit(resumed, None, epochs=5, initial_epoch=2)
    assert h_rest["lr"] == h_straight["lr"][2:]
    for name, value in straight.parameters().items():
        np.testing.assert_array_equal(pn.to_numpy(resumed.parameters()[name]), pn.to_numpy(value), err_msg=name)


def test_a_reduced_rate_is_saved_with_the_state(tmp_path):
    pytest.importorskip("safetensors")
    model = _model()
    plateau = pn.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0)
    _fit(model, pn.SGD(lr=0.1), epochs=3, callbacks=[plateau])
    assert model.optimizer_state["lr"] == 0.025 and model.optimizer.lr == 0.1
    model.save(tmp_path / "m.safetensors")
    assert pn.load(tmp_path / "m.safetensors").optimizer_state["lr"] == 0.025


def test_a_schedule_is_checked_every_step():
    with pytest.raises(ValueError, match="at step 0"):
        _fit(_model(), pn.SGD(lr=lambda step: float("nan")))
    with pytest.raises(ValueError, match="at step 2"):
        _fit(_model(), pn.SGD(lr=lambda step: -1.0 if step == 2 else 0.1))


# ---------------------------------------------------------------- per-parameter steps


def test_unfreezing_mid_training_gives_torchs_per_parameter_steps(backend):
    torch = pytest.importorskip("torch")
    model = _model()
    ref = _torch_twin(torch, model)
    model[0].freeze()
    _fit(model, pn.Adam(0.01), epochs=2)
    model[0].unfreeze()
    _fit(model, None, epochs=2, initial_epoch=0)
    counts = model.optimizer_state["counts"]
    assert counts == {"0.weight": 8, "0.bias": 8, "2.weight": 16, "2.bias": 16} and model.optimizer_state["step"] == 16

    def freeze_first_two(epoch):
        for p in ref[0].parameters():
            p.requires_grad_(epoch >= 2)

    X, y = _data()
    _train_torch(torch, ref, torch.optim.Adam(ref.parameters(), lr=0.01), X, y, epochs=4, before_epoch=freeze_first_two)
    _assert_same_weights(model, ref)


def test_files_of_models_never_frozen_store_no_counts_and_old_files_load(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    from portnn.io import _checksum

    model = _model()
    _fit(model, pn.Adam(0.01), epochs=1, callbacks=[pn.StepLR(step_size=1, gamma=0.5)])
    path = tmp_path / "m.safetensors"
    model.save(path)
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["portnn"])
    assert "optimizer_counts" not in meta and meta["optimizer_lr"] == 0.01
    # a file as portnn wrote it before the rate lived in the state: no rate, no counts, and an
    # epoch schedule's lowered rate in the config beside the optimizer's own as initial_lr
    del meta["optimizer_lr"]
    meta["optimizer"]["config"]["lr"] = 0.005
    meta["optimizer"]["initial_lr"] = 0.01
    text = json.dumps(meta)
    st.save_file(tensors, str(path), metadata={"portnn": text, "portnn_sha256": _checksum(text, tensors)})
    old = pn.load(path)
    assert old.optimizer.lr == 0.01 and old.optimizer_state["lr"] == 0.005
    assert old.optimizer_state["counts"] == dict.fromkeys(old.parameters(), 4)
    _fit(old, None, epochs=1)  # and it trains on
    assert old.optimizer_state["step"] == 8


def test_saving_a_model_trained_with_a_chain_keeps_the_chain_and_the_weights(tmp_path):
    pytest.importorskip("safetensors")
    model = _model()
    _fit(model, optim.chain(optim.scale_by_adam(), optim.scale_by_learning_rate(0.01)), epochs=1)
    model.save(tmp_path / "m.safetensors")  # no warning: a chain of portnn's transforms is described
    loaded = pn.load(tmp_path / "m.safetensors")
    assert repr(loaded.optimizer) == repr(model.optimizer)  # (tests/test_io_chains.py: and resumes exactly)
    for name, value in model.parameters().items():
        np.testing.assert_array_equal(pn.to_numpy(loaded.parameters()[name]), pn.to_numpy(value))


def test_the_public_names():
    assert pn.optim.SGD is pn.SGD and pn.optim.clip_by_global_norm is pn.clip_by_global_norm
    for name in ("chain", "partition", "scale_by_adam", "add_decayed_weights", "scale_by_learning_rate", "trace",
                 "warmup_cosine", "linear_schedule", "step_schedule", "exponential_schedule", "one_cycle", "piecewise_constant"):
        assert callable(getattr(pn.optim, name))


# ---------------------------------------------------------------- under jax.jit


@pytest.mark.parametrize(
    "make",
    [lambda: pn.SGD(optim.one_cycle(0.2, total_steps=12), momentum=0.9),
     lambda: pn.AdamW(optim.warmup_cosine(0.02, 3, 12), groups=[{"match": "*.bias", "weight_decay": 0.0, "lr_scale": 0.5}]),
     lambda: pn.SGD(0.1, momentum=0.9, dampening=0.5)],
    ids=["sgd-one-cycle", "adamw-groups-warmup-cosine", "sgd-dampening"],
)
def test_schedules_and_groups_under_jit_equal_the_eager_loop(make):
    jax = pytest.importorskip("jax")
    dtype = "float64" if jax.config.jax_enable_x64 else "float32"
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == "float64" else {"rtol": 2e-5, "atol": 2e-6}
    runs = []
    for jit in (False, True):
        with pn.use_backend("jax"):
            model = pn.Sequential(pn.Dense(4, 8, seed=0), pn.Tanh(), pn.Dense(8, 3, seed=1)).to(dtype=dtype)
        history = _fit(model, make(), jit=jit)
        runs.append((model, history))
    (eager, h_eager), (compiled, h_compiled) = runs
    np.testing.assert_allclose(h_compiled["lr"], h_eager["lr"], rtol=1e-6)
    for name, value in eager.parameters().items():
        np.testing.assert_allclose(pn.to_numpy(compiled.parameters()[name]), pn.to_numpy(value), **tol, err_msg=name)
    state = compiled.optimizer_state
    assert state["step"] == 12 and isinstance(state["step"], int) and isinstance(state["lr"], float)
    assert all(isinstance(c, int) for c in state["counts"].values())
