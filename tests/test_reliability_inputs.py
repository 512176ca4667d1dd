"""Arguments that used to fail late, half-way or with another library's message.

Moving a model (``Module.to``) either succeeds or changes nothing; devices are
checked where they are chosen; ragged lists and bfloat16 tensors are handled at
the boundary; optimizer arguments are checked in their constructors.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import portnn as pn
from portnn import backend as backend_module


def _model():
    return pn.Sequential(pn.Dense(3, 4, seed=0), pn.ReLU(), pn.Dense(4, 2, seed=1))


def _trained():
    model = _model()
    X = np.random.default_rng(0).normal(size=(8, 3))
    Y = np.random.default_rng(1).normal(size=(8, 2))
    model.fit(X, Y, loss="mse", optimizer=pn.Adam(lr=0.01), epochs=1, batch_size=4, verbose=0)
    return model, X


def _snapshot(model):
    """What a move must leave alone when it fails: each module's backend and arrays."""
    return [
        (m._backend, dict(m._params), dict(m._buffers)) for m in model.modules()
    ], model.__dict__.get("optimizer_state")


def _assert_unchanged(model, snapshot, X, before):
    modules, state = snapshot
    for m, (b, params, buffers) in zip(model.modules(), modules, strict=True):
        assert m._backend is b
        assert m._params.keys() == params.keys()
        assert all(m._params[k] is v for k, v in params.items())
        assert all(m._buffers[k] is v for k, v in buffers.items())
    assert model.__dict__.get("optimizer_state") is state
    np.testing.assert_array_equal(pn.to_numpy(model.predict(X)), before)


# ---------------------------------------------------------------- Module.to


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool", "float99", "complex64"])
def test_to_refuses_a_dtype_that_is_not_floating_like_dense_and_changes_nothing(dtype):
    with pytest.raises(TypeError, match="dtype"):
        pn.Dense(2, 2, dtype=dtype)
    model, X = _trained()
    before = pn.to_numpy(model.predict(X))
    snapshot = _snapshot(model)
    with pytest.raises(TypeError, match=r"dtype must be a floating dtype.*" + dtype):
        model.to(dtype=dtype)
    _assert_unchanged(model, snapshot, X, before)


def test_to_an_unknown_device_is_a_backend_error_and_changes_nothing(backend_name):
    model, X = _trained()
    before = pn.to_numpy(model.predict(X))
    snapshot = _snapshot(model)
    with pytest.raises(pn.BackendError, match="no device 'bogus'.*available devices"):
        model.to(backend_name, device="bogus")
    _assert_unchanged(model, snapshot, X, before)
    with pytest.raises(pn.BackendError, match="bogus"):
        model.to("numpy", device="bogus", dtype="float32")
    _assert_unchanged(model, snapshot, X, before)


def test_to_that_fails_while_moving_arrays_leaves_every_module_as_it_was(monkeypatch):
    model, X = _trained()
    before = pn.to_numpy(model.predict(X))
    snapshot = _snapshot(model)
    real = backend_module.Backend.asarray
    calls = []

    def failing(self, x, dtype=None, *, copy=False):
        calls.append(1)
        if len(calls) == 3:  # the second module's parameters, after the first module's moved
            raise MemoryError("out of device memory")
        return real(self, x, dtype, copy=copy)

    monkeypatch.setattr(backend_module.Backend, "asarray", failing)
    with pytest.raises(MemoryError):
        model.to("numpy")
    monkeypatch.undo()
    _assert_unchanged(model, snapshot, X, before)


def test_to_casts_the_optimizer_state_with_the_parameters(float64_ok):
    if not float64_ok:
        pytest.skip("no float64 on this backend")
    model, X = _trained()
    model.to(dtype="float64")
    for slots in model.optimizer_state["slots"].values():
        for array in slots.values():
            assert pn.to_numpy(array).dtype == np.float64
    model.fit(X, np.zeros((8, 2)), epochs=1, batch_size=4, verbose=0)  # trains on


# ---------------------------------------------------------------- devices


@pytest.mark.parametrize("name", pn.available_backends())
def test_an_unknown_device_is_refused_where_it_is_chosen(name):
    before = backend_module._default
    with pytest.raises(pn.BackendError, match=rf"backend '{name}' has no device 'bogus'"):
        pn.set_backend(name, device="bogus")
    assert backend_module._default is before
    with pytest.raises(pn.BackendError, match="available devices: "):
        with pn.use_backend(name, device="bogus"):
            pytest.fail("use_backend accepted device='bogus'")
    with pytest.raises(pn.BackendError, match="bogus"):
        backend_module._make_backend(name, "bogus")


def test_the_error_lists_the_devices_there_are():
    with pytest.raises(pn.BackendError, match="available devices: cpu$"):
        pn.use_backend("numpy", device="gpu").__enter__()
    pytest.importorskip("array_api_strict")
    with pytest.raises(pn.BackendError, match="CPU_DEVICE, device1"):
        pn.use_backend("array_api_strict", device="device9").__enter__()


def test_torch_cuda_is_refused_where_there_is_no_such_device():
    torch = pytest.importorskip("torch")
    missing = f"cuda:{torch.cuda.device_count()}"
    before = backend_module._default
    with pytest.raises(pn.BackendError, match=rf"no device '{missing}'.*available devices: cpu"):
        pn.set_backend("torch", device=missing)
    if not torch.cuda.is_available():
        with pytest.raises(pn.BackendError, match="'cuda' \\(CUDA is not available here\\)"):
            pn.set_backend("torch", device="cuda")
    assert backend_module._default is before


def test_device_objects_and_names_keep_working(backend):
    torch = pytest.importorskip("torch")
    b = backend_module._make_backend("torch", torch.device("cpu"))
    assert b.device == torch.device("cpu")
    assert backend_module._make_backend("torch", "cpu").device == torch.device("cpu")
    assert pickle.loads(pickle.dumps(backend)) == backend
    strict = pytest.importorskip("array_api_strict")
    by_object = backend_module._make_backend("array_api_strict", strict.Device("device1"))
    by_name = backend_module._make_backend("array_api_strict", "device1")
    assert by_object.device == by_name.device == strict.Device("device1")
    with pn.use_backend("array_api_strict", device=strict.Device("device1")):
        model = _model()
        assert pickle.loads(pickle.dumps(model.backend)).device == strict.Device("device1")
        model.to(device="device2")
        assert model.backend.device == strict.Device("device2")


# ---------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    "rows, where",
    [
        ([[1, 2, 3], [4, 5]], r"\[1\] has length 2, X\[0\] has length 3"),
        ([[1, 2, 3], 4], r"\[1\] is a single number"),
        ([[[1, 2, 3]], [[1, 2, 3], [4, 5, 6]]], r"\[1\] has length 2"),
    ],
)
def test_ragged_lists_are_a_value_error_saying_where(rows, where):
    model = _model()
    with pytest.raises(ValueError, match=r"X is ragged.*" + where):
        pn.fit(model, rows, [[0.0, 0.0]] * len(rows), loss="mse", epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"x is ragged"):
        model(rows)


def test_predict_of_a_ragged_list_is_a_value_error_naming_x():
    with pytest.raises(ValueError, match=r"X is ragged \(X\[1\] has length 1, X\[0\] has length 3"):
        _model().predict([[1, 2, 3], [3]])


@pytest.mark.parametrize("where", ["model", "numpy"])
def test_torch_bfloat16_inputs_are_cast_to_the_model_dtype(where, backend_name, backend_device):
    torch = pytest.importorskip("torch")
    x = np.array([[1.0, 2.0, 0.5], [-1.0, 0.25, 3.0]], dtype=np.float32)  # exact in bfloat16
    name, device = (backend_name, backend_device) if where == "model" else ("numpy", None)
    with pn.use_backend(name, device=device):
        model = _model()
        expected = pn.to_numpy(model.predict(x))
        got = model.predict(torch.asarray(x, dtype=torch.bfloat16))
        assert pn.to_numpy(got).dtype == np.float32
        np.testing.assert_allclose(pn.to_numpy(got), expected, rtol=1e-6)
        y = torch.zeros((2, 2), dtype=torch.bfloat16)
        model.fit(torch.asarray(x, dtype=torch.bfloat16), y, loss="mse", epochs=1, verbose=0)
    assert pn.to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype == np.float32


# ---------------------------------------------------------------- optimizers


@pytest.mark.parametrize("cls", [pn.Adam, pn.AdamW])
@pytest.mark.parametrize(
    "betas",
    [{"b1": 0.9, "b2": 0.999}, {0.9, 0.999}, "ab", 0.9, None, (0.9,), (0.9, 0.99, 0.999),
     (0.9, 1.0), (-0.1, 0.9), (0.9, float("nan")), ("a", 0.9)],
    ids=repr,
)
def test_bad_betas_are_an_error_naming_betas(cls, betas):
    with pytest.raises((TypeError, ValueError), match=r"^betas"):
        cls(betas=betas)


def test_betas_as_a_tuple_list_or_array_are_accepted_and_round_trip():
    for betas in [(0.8, 0.9), [0.8, 0.9], np.array([0.8, 0.9])]:
        opt = pn.Adam(betas=betas)
        assert opt.betas == (0.8, 0.9)
        assert type(opt)(**opt.config()).betas == (0.8, 0.9)


@pytest.mark.parametrize(
    "make, flag",
    [
        (lambda v: pn.Adam(amsgrad=v), "amsgrad"),
        (lambda v: pn.SGD(momentum=0.9, nesterov=v), "nesterov"),
        (lambda v: pn.RMSProp(centered=v), "centered"),
    ],
)
def test_boolean_options_must_be_true_or_false(make, flag):
    with pytest.raises(TypeError, match=rf"^{flag} must be True or False"):
        make("no")  # a non-empty string, which bool() would read as True
    assert getattr(make(np.bool_(True)), flag) is True
    assert getattr(make(False), flag) is False
