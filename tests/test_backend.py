import os
import subprocess
import sys

import numpy as np
import pytest

import portnn as pn
from portnn import backend as backend_module

from conftest import tolerance


def test_available_backends_lists_numpy_first_and_only_usable_ones():
    names = pn.available_backends()
    assert names[0] == "numpy"
    assert len(set(names)) == len(names)
    for name in names:
        backend_module._make_backend(name)  # each listed backend really loads


def test_get_backend_is_the_scoped_one(backend_name):
    assert pn.get_backend() == backend_name
    assert pn.get_backend().name == backend_name
    assert hasattr(pn.get_backend().xp, "matmul")


def test_use_backend_scopes_and_restores(backend_name):
    with pn.use_backend("numpy"):
        assert pn.get_backend() == "numpy"
        layer = pn.Dense(3, 2, seed=0)
    assert layer.backend == "numpy"
    assert pn.get_backend() == backend_name


def test_set_backend_sets_the_process_default():
    before = backend_module._default
    try:
        pn.set_backend("numpy")
        assert backend_module._default == "numpy"
    finally:
        backend_module._default = before


@pytest.mark.parametrize("name", ["nonsense", "numpyy"])
def test_unknown_backend_is_a_clear_error(name):
    with pytest.raises(pn.BackendError, match="unknown backend"):
        pn.set_backend(name)


def test_missing_or_unusable_backend_says_what_to_install():
    if "cupy" in pn.available_backends():
        pytest.skip("CuPy with a CUDA device is usable here")
    before = backend_module._default
    with pytest.raises(pn.BackendError, match=r"cupy|cuda|CUDA"):
        pn.set_backend("cupy")
    assert backend_module._default is before


def test_environment_variable_selects_the_default(tmp_path):
    code = "import portnn as pn; print(pn.get_backend())"
    env = {**os.environ, "PORTNN_BACKEND": "array_api_strict"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if "array_api_strict" not in pn.available_backends():
        assert out.returncode != 0
        return
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "array_api_strict"


def test_to_numpy_accepts_arrays_lists_and_scalars(xp, backend):
    a = backend.asarray(np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(pn.to_numpy(a), np.arange(6.0).reshape(2, 3))
    assert pn.to_numpy(3.5) == 3.5
    np.testing.assert_array_equal(pn.to_numpy([1, 2]), [1, 2])
    assert isinstance(pn.to_numpy(a), np.ndarray)


def test_dense_seed_gives_the_same_numbers_on_every_backend(backend_name, backend):
    here = pn.to_numpy(pn.Dense(3, 4, seed=0).weight)
    with pn.use_backend("numpy"):
        reference = pn.to_numpy(pn.Dense(3, 4, seed=0).weight)
    np.testing.assert_array_equal(here, reference)
    assert here.dtype == np.float32


def test_model_to_moves_every_parameter_and_keeps_values(backend_name):
    model = pn.Sequential(pn.Dense(4, 3, seed=1), pn.ReLU(), pn.Dense(3, 2, seed=2))
    before = {k: pn.to_numpy(v).copy() for k, v in model.parameters().items()}
    for target in pn.available_backends():
        assert model.to(target) is model
        assert model.backend == target
        for name, value in model.parameters().items():
            assert backend_module.backend_of(value) == target
            np.testing.assert_array_equal(pn.to_numpy(value), before[name])
    x = np.random.default_rng(0).normal(size=(5, 4))
    model.to("numpy")
    reference = pn.to_numpy(model(x))
    model.to(backend_name)
    np.testing.assert_allclose(pn.to_numpy(model(x)), reference, **tolerance("float32"))


@pytest.mark.parametrize("source, target", [("torch", "jax"), ("jax", "torch")])
def test_arrays_move_between_device_libraries_through_dlpack_not_the_host(source, target, monkeypatch):
    for name in (source, target):
        pytest.importorskip(name)
    src, dst = backend_module._make_backend(source), backend_module._make_backend(target)
    x = src.asarray(np.arange(6.0).reshape(2, 3), src.xp.float32)

    def no_host_trip(array):
        raise AssertionError(f"{type(array)} went through host memory")

    monkeypatch.setattr(backend_module, "to_numpy", no_host_trip)
    moved = dst.asarray(x)
    monkeypatch.undo()
    assert backend_module.backend_of(moved) == target
    np.testing.assert_array_equal(pn.to_numpy(moved), np.arange(6.0).reshape(2, 3))
    # a copy, not shared memory: updating one in place cannot change the other
    if target == "torch":
        moved += 1
        np.testing.assert_array_equal(pn.to_numpy(x), np.arange(6.0).reshape(2, 3))


def test_model_to_moves_optimizer_state(backend_name):
    model = pn.Sequential(pn.Dense(2, 2, seed=0))
    X = np.random.default_rng(0).normal(size=(8, 2))
    model.fit(X, X, loss="mse", optimizer=pn.SGD(lr=0.1, momentum=0.9), epochs=1, verbose=0)
    model.to("numpy")
    buffers = model.optimizer_state["slots"]["0.weight"]
    assert isinstance(buffers["momentum_buffer"], np.ndarray)
    model.to(backend_name)
    assert backend_module.backend_of(model.optimizer_state["slots"]["0.weight"]["momentum_buffer"]) == backend_name


def test_inputs_of_another_library_are_converted(backend_name):
    model = pn.Dense(3, 2, seed=0)
    x = np.ones((4, 3))
    y = model(x)  # NumPy input into a model of the backend under test
    assert backend_module.backend_of(y) == backend_name
    for other in pn.available_backends():
        x_other = backend_module._make_backend(other).asarray(x)
        np.testing.assert_allclose(pn.to_numpy(model(x_other)), pn.to_numpy(y), rtol=1e-6)
