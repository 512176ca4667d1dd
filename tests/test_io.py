"""save/load: round trips, every backend, optimizer state and resuming, atomic writes, hostile files."""

import inspect
import json
import os
import pathlib

import numpy as np
import pytest

import portnn as pn
from portnn.backend import backend_of, dtype_name

st = pytest.importorskip("safetensors.numpy")
from safetensors import safe_open  # noqa: E402


def _model(dtype="float32"):
    return pn.Sequential(
        pn.Dense(5, 8, seed=0, dtype=dtype),
        pn.ReLU(),
        pn.Dense(8, 8, seed=1, dtype=dtype, init="he_normal"),
        pn.LeakyReLU(alpha=0.2),
        pn.Sequential(pn.Dense(8, 6, seed=2, dtype=dtype, use_bias=False), pn.Tanh()),
        pn.ELU(alpha=0.7),
        pn.Softplus(beta=2.0, threshold=10.0),
        pn.GELU(),
        pn.SiLU(),
        pn.Identity(),
        pn.Dense(6, 3, seed=3, dtype=dtype, bias_init="uniform"),
        pn.Softmax(),
    )


def _numpy_params(model):
    return {k: pn.to_numpy(v).copy() for k, v in model.parameters().items()}


def _architecture(model):
    """(class, config) of every module, depth first."""
    return [(type(m).__name__, m.config()) for m in model.modules()]


def _read(path):
    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _write(path, tensors, metadata):
    st.save_file(tensors, str(path), metadata=metadata)


@pytest.fixture
def data(rng):
    X = rng.normal(size=(48, 5))
    y = rng.integers(0, 3, size=48)
    return X, y


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("as_path", [False, True])
def test_round_trip_is_bit_for_bit(tmp_path, backend, float64_ok, rng, dtype, as_path):
    if dtype == "float64" and not float64_ok:
        pytest.skip("no float64 on this backend")
    model = _model(dtype)
    target = tmp_path / "model.safetensors"
    pn.save(model, target if as_path else str(target))
    loaded = pn.load(target if as_path else str(target))

    assert loaded is not model
    assert _architecture(loaded) == _architecture(model)
    assert loaded.backend == backend and loaded.backend.device == backend.device
    original = _numpy_params(model)
    restored = _numpy_params(loaded)
    assert list(restored) == list(original)
    for name, value in original.items():
        assert restored[name].dtype == value.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(restored[name], value)
        assert backend_of(loaded.parameters()[name]) == backend
    X = rng.normal(size=(7, 5))
    np.testing.assert_array_equal(pn.to_numpy(loaded.predict(X)), pn.to_numpy(model.predict(X)))
    # an untrained model has no loss or optimizer to restore
    assert getattr(loaded, "loss", None) is None
    assert getattr(loaded, "optimizer", None) is None


def test_file_layout(tmp_path, data):
    X, y = data
    model = pn.Sequential(pn.Dense(5, 4, seed=0), pn.Tanh(), pn.Dense(4, 3, seed=1))
    model.fit(X, y, loss="cross_entropy", optimizer=pn.SGD(lr=0.1, momentum=0.9), epochs=1, batch_size=None, verbose=0)
    model.save(tmp_path / "m.safetensors")  # Module.save delegates to portnn.save
    tensors, metadata = _read(tmp_path / "m.safetensors")
    assert set(tensors) == {
        *(f"param/{k}" for k in ("0.weight", "0.bias", "2.weight", "2.bias")),
        *(f"optim/{k}/momentum_buffer" for k in ("0.weight", "0.bias", "2.weight", "2.bias")),
    }
    assert sorted(metadata) == ["portnn", "portnn_sha256"]
    meta = json.loads(metadata["portnn"])
    assert meta["format_version"] == 1
    assert meta["portnn_version"] == pn.__version__
    assert meta["architecture"]["class"] == "Sequential"
    assert [layer["class"] for layer in meta["architecture"]["layers"]] == ["Dense", "Tanh", "Dense"]
    assert meta["architecture"]["layers"][0]["config"]["in_features"] == 5
    assert meta["loss"] == {"class": "CrossEntropy", "config": {"from_logits": True}}
    assert meta["optimizer"]["class"] == "SGD"
    assert meta["optimizer"]["config"]["momentum"] == 0.9
    assert meta["optimizer_step"] == 1  # one epoch of one full batch


def test_load_on_every_backend(tmp_path, backend, rng):
    model = _model()
    path = tmp_path / "model.safetensors"
    pn.save(model, path)
    X = rng.normal(size=(9, 5))
    expected = pn.to_numpy(model.predict(X))
    targets = [(name, None) for name in pn.available_backends()]
    if "array_api_strict" in pn.available_backends():
        targets.append(("array_api_strict", "device1"))
    for name, device in targets:
        loaded = pn.load(path, backend=name, device=device)
        assert loaded.backend == name
        for value in loaded.parameters().values():
            assert backend_of(value) == name
            assert dtype_name(value.dtype) == "float32"
        if device is not None:
            assert "device1" in str(loaded.backend.device)
            assert all(device in str(v.device) for v in loaded.parameters().values())
        got = pn.to_numpy(loaded.predict(X))
        # float32 results differ across libraries in the last bits
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=f"on {name}")
        if loaded.backend is backend:
            np.testing.assert_array_equal(got, expected)


def test_trained_model_carries_loss_optimizer_and_state(tmp_path, backend, data):
    X, y = data
    model = pn.Sequential(pn.Dense(5, 8, seed=0), pn.Tanh(), pn.Dense(8, 3, seed=1))
    optimizer = pn.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)
    model.fit(X, y, loss=pn.CrossEntropy(from_logits=True), optimizer=optimizer, epochs=2, batch_size=16, seed=0, verbose=0)
    path = tmp_path / "trained.safetensors"
    pn.save(model, path)
    loaded = pn.load(path)

    assert type(loaded.loss) is pn.CrossEntropy and loaded.loss.config() == model.loss.config()
    assert type(loaded.optimizer) is pn.SGD and loaded.optimizer is not model.optimizer
    assert loaded.optimizer.config() == optimizer.config()
    state, saved = loaded.optimizer_state, model.optimizer_state
    assert state["step"] == saved["step"] == 6
    assert list(state["slots"]) == list(saved["slots"]) == list(model.parameters())
    for name, slots in saved["slots"].items():
        assert set(state["slots"][name]) == set(slots) == {"momentum_buffer"}
        for slot, value in slots.items():
            restored = state["slots"][name][slot]
            assert backend_of(restored) == loaded.backend
            assert restored.dtype == value.dtype
            np.testing.assert_array_equal(pn.to_numpy(restored), pn.to_numpy(value))
            assert np.any(pn.to_numpy(value) != 0)  # the test compares real state, not zeros
    # loading moves nothing back onto the original arrays
    before = _numpy_params(model)
    loaded.fit(X, y, epochs=1, verbose=0)
    for name, value in _numpy_params(model).items():
        np.testing.assert_array_equal(value, before[name])


@pytest.mark.parametrize(
    "optimizer",
    [
        pytest.param(lambda: pn.SGD(lr=0.1, momentum=0.9), id="sgd-momentum"),
        pytest.param(lambda: pn.Adam(lr=0.01, amsgrad=True), id="adam", marks=pytest.mark.skipif(not hasattr(pn, "Adam"), reason="no Adam yet")),
        pytest.param(lambda: pn.AdaGrad(lr=0.1, initial_accumulator_value=0.1), id="adagrad", marks=pytest.mark.skipif(not hasattr(pn, "AdaGrad"), reason="no AdaGrad yet")),
    ],
)
def test_training_continues_exactly_after_load(tmp_path, data, optimizer):
    """Continuing from the file equals continuing in memory, bit for bit (state and step restored)."""
    X, y = data
    model = pn.Sequential(pn.Dense(5, 8, seed=0), pn.Tanh(), pn.Dense(8, 3, seed=1))
    model.fit(X, y, loss="cross_entropy", optimizer=optimizer(), epochs=2, batch_size=16, seed=1, verbose=0)
    path = tmp_path / "m.safetensors"
    pn.save(model, path)
    loaded = pn.load(path)
    model.fit(X, y, epochs=2, batch_size=16, seed=2, verbose=0)
    loaded.fit(X, y, epochs=2, batch_size=16, seed=2, verbose=0)
    assert loaded.optimizer_state["step"] == model.optimizer_state["step"] == 12
    for name, value in _numpy_params(model).items():
        np.testing.assert_array_equal(_numpy_params(loaded)[name], value, err_msg=name)


@pytest.mark.skipif(
    "initial_epoch" not in inspect.signature(pn.fit).parameters,
    reason="fit has no initial_epoch yet",
)
def test_resume_from_file_equals_uninterrupted_fit(tmp_path, data):
    X, y = data

    def fresh():
        return pn.Sequential(pn.Dense(5, 8, seed=0), pn.Tanh(), pn.Dense(8, 3, seed=1))

    straight = fresh()
    straight.fit(X, y, loss="cross_entropy", optimizer=pn.SGD(lr=0.1, momentum=0.9), epochs=6, batch_size=16, seed=42, verbose=0)

    first = fresh()
    first.fit(X, y, loss="cross_entropy", optimizer=pn.SGD(lr=0.1, momentum=0.9), epochs=3, batch_size=16, seed=42, verbose=0)
    path = tmp_path / "epoch3.safetensors"
    pn.save(first, path)
    resumed = pn.load(path)
    resumed.fit(X, y, epochs=6, initial_epoch=3, batch_size=16, seed=42, verbose=0)

    assert resumed.optimizer_state["step"] == straight.optimizer_state["step"]
    for name, value in _numpy_params(straight).items():
        np.testing.assert_array_equal(_numpy_params(resumed)[name], value, err_msg=name)


@pytest.mark.skipif(
    "initial_epoch" not in inspect.signature(pn.fit).parameters or not hasattr(pn, "StepLR"),
    reason="fit has no initial_epoch or portnn has no schedules yet",
)
def test_resume_keeps_the_learning_rate_schedule(tmp_path, data):
    """A schedule's base rate travels with the optimizer, so the resumed rates are the same."""
    X, y = data

    def run(model, **kwargs):
        return model.fit(X, y, loss="cross_entropy", batch_size=16, seed=5, verbose=0, callbacks=[pn.StepLR(step_size=2, gamma=0.5)], **kwargs)

    straight = pn.Sequential(pn.Dense(5, 3, seed=0))
    history = run(straight, optimizer=pn.SGD(lr=0.2, momentum=0.5), epochs=5)
    first = pn.Sequential(pn.Dense(5, 3, seed=0))
    run(first, optimizer=pn.SGD(lr=0.2, momentum=0.5), epochs=3)
    pn.save(first, tmp_path / "m.safetensors")
    resumed = pn.load(tmp_path / "m.safetensors")
    rest = run(resumed, epochs=5, initial_epoch=3)
    assert rest["lr"] == history["lr"][3:]
    for name, value in _numpy_params(straight).items():
        np.testing.assert_array_equal(_numpy_params(resumed)[name], value, err_msg=name)


@pytest.mark.skipif(not hasattr(pn, "BatchNorm") or not hasattr(pn, "Dropout"), reason="no regularization layers yet")
def test_round_trip_with_batchnorm_dropout_layernorm(tmp_path, data):
    X, y = data
    layers = [pn.Dense(5, 8, seed=0), pn.BatchNorm(8, momentum=0.2), pn.ReLU(), pn.Dropout(0.3, seed=7)]
    if hasattr(pn, "LayerNorm"):
        layers.append(pn.LayerNorm(8, eps=1e-4))
    model = pn.Sequential(*layers, pn.Dense(8, 3, seed=1))
    model.fit(X, y, loss="cross_entropy", optimizer=pn.SGD(lr=0.1, momentum=0.9), epochs=2, batch_size=16, seed=0, verbose=0)
    path = tmp_path / "reg.safetensors"
    pn.save(model, path)
    loaded = pn.load(path)

    assert _architecture(loaded) == _architecture(model)
    for name, value in model.buffers().items():
        np.testing.assert_array_equal(pn.to_numpy(loaded.buffers()[name]), pn.to_numpy(value))
    assert np.any(pn.to_numpy(model.buffers()["1.running_var"]) != 1)  # real statistics were saved
    np.testing.assert_array_equal(pn.to_numpy(loaded.predict(X)), pn.to_numpy(model.predict(X)))
    # the dropout generator continues where it stopped: the next training epoch is identical
    model.fit(X, y, epochs=1, batch_size=16, seed=3, verbose=0)
    loaded.fit(X, y, epochs=1, batch_size=16, seed=3, verbose=0)
    for name, value in _numpy_params(model).items():
        np.testing.assert_array_equal(_numpy_params(loaded)[name], value, err_msg=name)
    for name, value in model.buffers().items():
        np.testing.assert_array_equal(pn.to_numpy(loaded.buffers()[name]), pn.to_numpy(value))


# ---------------------------------------------------------------- atomic save


def _break(monkeypatch, target, attribute):
    calls = []

    def boom(*args, **kwargs):
        calls.append(args)
        raise OSError("disk on fire")

    monkeypatch.setattr(target, attribute, boom)
    return calls


@pytest.mark.parametrize("where", ["serialize", "fsync", "replace"])
def test_failed_save_keeps_previous_file_and_leaves_no_temp_file(tmp_path, monkeypatch, rng, where):
    path = tmp_path / "model.safetensors"
    old = pn.Sequential(pn.Dense(5, 3, seed=0))
    pn.save(old, path)
    new = pn.Sequential(pn.Dense(5, 3, seed=99))
    calls = _break(monkeypatch, *{"serialize": (st, "save"), "fsync": (os, "fsync"), "replace": (os, "replace")}[where])
    with pytest.raises(OSError, match="disk on fire"):
        pn.save(new, path)
    assert calls
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["model.safetensors"]
    kept = pn.load(path)
    for name, value in _numpy_params(old).items():
        np.testing.assert_array_equal(_numpy_params(kept)[name], value)
    # and a failed first save leaves nothing at all
    _break(monkeypatch, os, "replace")
    with pytest.raises(OSError):
        pn.save(new, tmp_path / "other.safetensors")
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "model.safetensors"
    pn.save(pn.Sequential(pn.Dense(5, 3, seed=0)), path)
    second = pn.Sequential(pn.Dense(5, 3, seed=1))
    pn.save(second, path)
    for name, value in _numpy_params(second).items():
        np.testing.assert_array_equal(_numpy_params(pn.load(path))[name], value)
    assert os.listdir(tmp_path) == ["model.safetensors"]


# ---------------------------------------------------------------- errors and hostile files


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere.safetensors"
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        pn.load(path)


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"hello, not a model", None])
def test_not_a_safetensors_file(tmp_path, content):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(4096) if content is None else content)
    with pytest.raises(ValueError, match=r"junk\.safetensors.*safetensors"):
        pn.load(path)


def test_safetensors_file_without_portnn_metadata(tmp_path):
    path = tmp_path / "foreign.safetensors"
    _write(path, {"weight": np.ones((2, 2), np.float32)}, None)
    with pytest.raises(ValueError, match=r"foreign\.safetensors.*not a portnn"):
        pn.load(path)
    _write(path, {"weight": np.ones((2, 2), np.float32)}, {"format": "pt"})
    with pytest.raises(ValueError, match="not a portnn"):
        pn.load(path)


def _saved(tmp_path, trained=False):
    model = pn.Sequential(pn.Dense(5, 4, seed=0), pn.ReLU(), pn.Dense(4, 3, seed=1))
    if trained:
        rng = np.random.default_rng(0)
        model.fit(rng.normal(size=(16, 5)), rng.integers(0, 3, size=16), loss="cross_entropy", optimizer=pn.SGD(momentum=0.9), epochs=1, verbose=0)
    path = tmp_path / "model.safetensors"
    pn.save(model, path)
    tensors, metadata = _read(path)
    return path, tensors, json.loads(metadata["portnn"])


def _rewrite(path, tensors, meta):
    """A crafted file with a correct checksum: what a hostile author could write."""
    from portnn.io import _checksum

    text = meta if isinstance(meta, str) else json.dumps(meta)
    _write(path, tensors, {"portnn": text, "portnn_sha256": _checksum(text, tensors)})


def test_unknown_classes_are_rejected_and_nothing_runs(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(os, "system", lambda *a: ran.append(a))
    path, tensors, meta = _saved(tmp_path, trained=True)
    cases = [
        (["architecture", "layers", 1, "class"], "os.system"),
        (["architecture", "class"], "__import__"),
        (["loss", "class"], "os.system"),
        (["optimizer", "class"], "eval"),
    ]
    for keys, name in cases:
        bad = json.loads(json.dumps(meta))
        node = bad
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = name
        _rewrite(path, tensors, bad)
        with pytest.raises(ValueError, match=rf"model\.safetensors.*{name}") as info:
            pn.load(path)
        assert "unknown" in str(info.value)
    assert ran == []


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: "{not json", "not valid JSON"),
        (lambda m: json.dumps([1, 2]), "JSON object"),
        (lambda m: {**m, "format_version": 2}, "format_version 2"),
        (lambda m: {k: v for k, v in m.items() if k != "format_version"}, "format_version"),
        (lambda m: {**m, "architecture": "Sequential"}, "architecture"),
        (lambda m: {**m, "architecture": {"class": "Dense", "config": {"in_features": 5, "out_features": 4, "evil": 1}}}, "cannot rebuild layer Dense"),
        (lambda m: {**m, "architecture": {"class": "Sequential", "layers": {"0": 1}}}, "layers"),
        (lambda m: {**m, "optimizer_step": -1}, "optimizer_step"),
        (lambda m: {**m, "optimizer": {"class": "SGD", "config": {"lr": -1.0}}}, "cannot rebuild optimizer SGD"),
        (lambda m: {**m, "extra_state": {"7.": {"x": 1}}}, "extra_state"),
    ],
)
def test_corrupt_metadata_raises_value_error(tmp_path, mutate, message):
    path, tensors, meta = _saved(tmp_path, trained=True)
    _rewrite(path, tensors, mutate(meta))
    with pytest.raises(ValueError, match=r"model\.safetensors") as info:
        pn.load(path)
    assert message in str(info.value)


def test_mismatched_tensors_are_named(tmp_path):
    path, tensors, meta = _saved(tmp_path, trained=True)
    cases = [
        ({**tensors, "param/0.weight": np.zeros((4, 5), np.float32)}, "'0.weight' has shape (4, 5)"),
        ({k: v for k, v in tensors.items() if k != "param/2.bias"}, "missing ['2.bias']"),
        ({**tensors, "param/9.weight": np.zeros((1,), np.float32)}, "'9.weight'"),
        ({**tensors, "buffer/0.running_mean": np.zeros((4,), np.float32)}, "'0.running_mean'"),
        ({**tensors, "optim/0.bias/momentum_buffer": np.zeros((3,), np.float32)}, "shape (3,)"),
        ({k: v for k, v in tensors.items() if k != "optim/0.bias/momentum_buffer"}, "'0.bias'"),
        ({**tensors, "optim/0.bias/exp_avg": np.zeros((4,), np.float32)}, "exp_avg"),
        ({**tensors, "surprise": np.zeros((1,), np.float32)}, "unexpected tensor 'surprise'"),
    ]
    for bad, message in cases:
        _rewrite(path, bad, meta)
        with pytest.raises(ValueError, match=r"model\.safetensors") as info:
            pn.load(path)
        assert message in str(info.value), str(info.value)


def test_parameters_keep_their_saved_dtype(tmp_path, float64_ok):
    if not float64_ok:
        pytest.skip("no float64 on this backend")
    path, tensors, meta = _saved(tmp_path)
    # a file whose config says float32 but whose tensors are float64: the tensors win
    wide = {k: v.astype(np.float64) for k, v in tensors.items()}
    _rewrite(path, wide, meta)
    loaded = pn.load(path)
    for name, value in loaded.parameters().items():
        assert dtype_name(value.dtype) == "float64"
        np.testing.assert_array_equal(pn.to_numpy(value), wide["param/" + name])


def test_unsaveable_models_fail_before_writing(tmp_path):
    class _Hidden(pn.ReLU):  # not registered: its name starts with "_"
        pass

    path = tmp_path / "m.safetensors"
    with pytest.raises(ValueError, match="_Hidden"):
        pn.save(pn.Sequential(pn.Dense(5, 3, seed=0), _Hidden()), path)
    with pytest.raises(TypeError, match="Module"):
        pn.save(object(), path)
    assert os.listdir(tmp_path) == []


def test_missing_safetensors_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ImportError, match=r'pip install "portnn\[io\]"'):
        pn.save(pn.Sequential(pn.Dense(5, 3, seed=0)), tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []


def test_load_is_exposed_as_module_function():
    assert pn.load is pn.io.load and pn.save is pn.io.save
    assert pathlib.Path(inspect.getsourcefile(pn.load)).name == "io.py"


def test_a_diverged_model_still_loads(tmp_path):
    model = pn.Sequential(pn.Dense(2, 2, seed=0))
    params = {k: pn.to_numpy(v).copy() for k, v in model.parameters().items()}
    params["0.weight"][0, 0] = np.nan
    model.load_parameters(params, check_finite=False)
    model.save(tmp_path / "nan.safetensors")
    loaded = pn.load(tmp_path / "nan.safetensors")
    assert np.isnan(pn.to_numpy(loaded.parameters()["0.weight"])[0, 0])
    with pytest.raises(ValueError, match="NaN"):
        loaded.load_parameters(params)


def test_a_file_without_its_checksum_is_rejected(tmp_path):
    model = pn.Sequential(pn.Dense(2, 2, seed=0))
    model.save(tmp_path / "m.safetensors")
    tensors, metadata = _read(tmp_path / "m.safetensors")
    st.save_file(tensors, str(tmp_path / "stripped.safetensors"), metadata={"portnn": metadata["portnn"]})
    with pytest.raises(ValueError, match="checksum"):
        pn.load(tmp_path / "stripped.safetensors")


def test_metadata_of_ones_own_is_kept_in_the_file(tmp_path):
    pytest.importorskip("safetensors")
    model = pn.Sequential(pn.Dense(3, 2, seed=0))
    notes = {"classes": ["setosa", "versicolor"], "target": "species", "scale": 1.5, "ok": True, "none": None}
    model.save(tmp_path / "m.safetensors", metadata=notes)
    loaded = pn.load(tmp_path / "m.safetensors")
    assert loaded.metadata == notes
    loaded.save(tmp_path / "again.safetensors")  # a loaded model keeps its notes when saved again
    assert pn.load(tmp_path / "again.safetensors").metadata == notes
    assert pn.load(tmp_path / "m.safetensors").metadata is not notes
    plain = tmp_path / "plain.safetensors"
    pn.Sequential(pn.Dense(3, 2, seed=0)).save(plain)
    assert pn.load(plain).metadata == {}
    with pytest.raises(TypeError, match="metadata must hold JSON values"):
        model.save(tmp_path / "bad.safetensors", metadata={"f": object()})
    with pytest.raises(TypeError, match="metadata must be a dict"):
        model.save(tmp_path / "bad.safetensors", metadata=["a"])
    assert not (tmp_path / "bad.safetensors").exists()
