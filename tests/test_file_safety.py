"""Files from others: checked before anything is built, allocated or run.

A model file says how large its layers are, which classes build them and what
state they start from. ``pn.load`` checks all of it against the tensors the
file really stores before building a layer; class names resolve to portnn's own
classes and to classes the user chose; ``pn.save`` never replaces what is not a
regular file and cleans up after saves that were killed.
"""

import json
import os
import stat
import threading
import time
import tracemalloc

import numpy as np
import pytest

import portnn as pn
from portnn.nn import Module

try:
    from portnn import _file_checks
except ImportError:  # a portnn without user registration
    _file_checks = None

st = pytest.importorskip("safetensors.numpy")
from safetensors import safe_open  # noqa: E402


@pytest.fixture(autouse=True)
def _own_registries():
    """Classes a test defines or registers do not outlive it."""
    layers = dict(Module.registry)
    registered = {kind: dict(table) for kind, table in getattr(_file_checks, "_REGISTERED", {}).items()}
    yield
    Module.registry.clear()
    Module.registry.update(layers)
    for kind, table in getattr(_file_checks, "_REGISTERED", {}).items():
        table.clear()
        table.update(registered.get(kind, {}))


def _read(path):
    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["portnn"])


def _rewrite(path, tensors, meta):
    """A crafted file with a correct checksum: what a hostile author could write."""
    from portnn.io import _checksum

    text = json.dumps(meta)
    st.save_file(tensors, str(path), metadata={"portnn": text, "portnn_sha256": _checksum(text, tensors)})


def _saved(tmp_path, model=None, trained=False, optimizer=None):
    model = model or pn.Sequential(pn.Dense(5, 4, seed=0), pn.ReLU(), pn.Dense(4, 3, seed=1))
    if trained:
        rng = np.random.default_rng(0)
        model.fit(rng.normal(size=(16, 5)), rng.integers(0, 3, size=16), loss="cross_entropy",
                  optimizer=optimizer or pn.SGD(momentum=0.9), epochs=1, batch_size=8, verbose=0)
    path = tmp_path / "model.safetensors"
    pn.save(model, path)
    tensors, meta = _read(path)
    return path, tensors, meta


def _host(model):
    return {k: pn.to_numpy(v).copy() for k, v in model.parameters().items()}


# ---------------------------------------------------------------- sizes a file claims


@pytest.mark.timeout(60)
@pytest.mark.parametrize("layer", ["dense", "batchnorm", "layernorm"])
def test_a_small_file_claiming_a_huge_layer_fails_without_allocating(tmp_path, layer):
    model = pn.Sequential(pn.Dense(5, 4, seed=0), pn.BatchNorm(4), pn.LayerNorm(4), pn.Dense(4, 3, seed=1))
    path, tensors, meta = _saved(tmp_path, model)
    nodes = meta["architecture"]["layers"]
    if layer == "dense":
        nodes[0]["config"].update(in_features=60000, out_features=60000)  # 26.8 GiB of float64 draws
    else:
        nodes[1 if layer == "batchnorm" else 2]["config"]["features"] = 10**9
    _rewrite(path, tensors, meta)
    assert path.stat().st_size < 4096
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError) as info:
            pn.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 5
    assert peak < 50 * 2**20, f"load allocated {peak / 2**20:.0f} MiB before failing"
    message = str(info.value)
    assert str(path) in message
    assert ("(60000, 60000)" if layer == "dense" else "(1000000000,)") in message
    assert "shape (5, 4)" in message or "shape (4,)" in message


def test_a_claimed_layer_without_tensors_fails_before_building(tmp_path, monkeypatch):
    path, tensors, meta = _saved(tmp_path)
    meta["architecture"]["layers"].append({"class": "Dense", "config": {"in_features": 3, "out_features": 50000}})
    _rewrite(path, tensors, meta)
    built = []
    original = pn.Dense.__init__
    monkeypatch.setattr(pn.Dense, "__init__", lambda self, *a, **k: (built.append(k), original(self, *a, **k))[1])
    with pytest.raises(ValueError, match=r"missing \['3\.weight'\]"):
        pn.load(path)
    assert built == []


def test_loading_a_dense_layer_draws_no_random_initialization(tmp_path, monkeypatch):
    path, _, _ = _saved(tmp_path)
    drawn = []
    monkeypatch.setattr("portnn.nn.layers.get_initializer", lambda name: lambda *a: drawn.append(name))
    loaded = pn.load(path)
    assert drawn == []
    assert [tuple(v.shape) for v in loaded.parameters().values()] == [(5, 4), (4,), (4, 3), (3,)]


# ---------------------------------------------------------------- values a file holds


@pytest.mark.parametrize("value", [float("nan"), -0.1, 0.0, float("inf"), "0.1", True])
def test_bad_initial_learning_rate_in_the_file(tmp_path, value):
    path, tensors, meta = _saved(tmp_path, trained=True)
    meta["optimizer"]["initial_lr"] = value
    _rewrite(path, tensors, meta)
    with pytest.raises(ValueError, match=r"model\.safetensors.*initial_lr"):
        pn.load(path)


@pytest.mark.parametrize("value", [float("nan"), -0.1, float("inf")])
def test_bad_learning_rate_in_the_file(tmp_path, value):
    path, tensors, meta = _saved(tmp_path, trained=True)
    meta["optimizer"]["config"]["lr"] = value
    _rewrite(path, tensors, meta)
    with pytest.raises(ValueError, match=r"model\.safetensors.*lr"):
        pn.load(path)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("optim/0.weight/momentum_buffer", np.full((5, 4), np.nan, np.float32), "NaN"),
        ("optim/0.weight/momentum_buffer", np.zeros((5, 4), np.int32), "int32"),
        ("param/0.weight", np.ones((5, 4), np.int32), "int32"),
        ("param/0.weight", np.ones((5, 4), np.uint8), "uint8"),
        ("param/0.weight", np.ones((5, 4), bool), "bool"),
        ("param/0.bias", np.ones((4,), np.int64), "int64"),
    ],
)
def test_bad_tensor_dtypes_and_values_in_the_file(tmp_path, key, value, message):
    path, tensors, meta = _saved(tmp_path, trained=True)
    _rewrite(path, {**tensors, key: value}, meta)
    with pytest.raises(ValueError) as info:
        pn.load(path)
    text = str(info.value)
    assert str(path) in text and key.split("/")[1] in text and message in text, text


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("buffer/1.running_mean", [np.nan, 0, 0, 0], "NaN"),
        ("buffer/1.running_var", [np.inf, 1, 1, 1], "NaN or infinity"),
        ("buffer/1.running_var", [1, -0.5, 1, 1], "negative"),
    ],
)
def test_bad_running_statistics_in_the_file(tmp_path, key, value, message):
    model = pn.Sequential(pn.Dense(5, 4, seed=0), pn.BatchNorm(4), pn.Dense(4, 3, seed=1))
    path, tensors, meta = _saved(tmp_path, model)
    _rewrite(path, {**tensors, key: np.asarray(value, np.float32)}, meta)
    with pytest.raises(ValueError) as info:
        pn.load(path)
    text = str(info.value)
    assert str(path) in text and key.split("/")[1] in text and message in text, text


@pytest.mark.parametrize(
    "entry, value",
    [("state.state", 2**200), ("state.inc", -1), ("state.state", 1.5), ("uinteger", 2**40),
     ("has_uint32", -1), ("bit_generator", "MT19937"), ("state.state", True)],
)
def test_bad_dropout_generator_state_in_the_file(tmp_path, entry, value):
    model = pn.Sequential(pn.Dense(5, 4, seed=0), pn.Dropout(0.5, seed=3), pn.Dense(4, 3, seed=1))
    path, tensors, meta = _saved(tmp_path, model)
    state = meta["extra_state"]["1."]
    if entry.startswith("state."):
        state["state"][entry[6:]] = value
    else:
        state[entry] = value
    _rewrite(path, tensors, meta)
    with pytest.raises(ValueError) as info:  # not an OverflowError from inside NumPy
        pn.load(path)
    text = str(info.value)
    assert str(path) in text and "'1.'" in text and entry in text, text


def test_dropout_state_is_unchanged_by_a_refused_state():
    layer = pn.Dropout(0.5, seed=3)
    before = layer.extra_state()
    bad = json.loads(json.dumps(before))
    bad["state"]["inc"] = 2**200
    with pytest.raises(ValueError, match="state.inc"):
        layer.load_extra_state(bad)
    assert layer.extra_state() == before


# ---------------------------------------------------------------- the same checks in memory


def _torch_values():
    torch = pytest.importorskip("torch")
    return torch


@pytest.mark.parametrize("make", [
    lambda: np.ones((3, 4), np.int32),
    lambda: np.ones((3, 4), bool),
    lambda: np.ones((3, 4), complex),
    lambda: [[1, 2, 3, 4]] * 3,
])
def test_load_parameters_refuses_non_float_values(make):
    model = pn.Sequential(pn.Dense(3, 4, seed=0))
    before = _host(model)
    with pytest.raises(TypeError, match=r"parameter '0\.weight'"):
        model.load_parameters({"0.bias": np.zeros(4), "0.weight": make()})
    for name, value in _host(model).items():
        np.testing.assert_array_equal(value, before[name])


@pytest.mark.parametrize("dtype", ["bool", "complex64", "int32"])
def test_load_parameters_refuses_non_float_torch_tensors(dtype):
    torch = _torch_values()
    model = pn.Sequential(pn.Dense(3, 4, seed=0))
    value = torch.ones((3, 4), dtype=getattr(torch, dtype))
    if dtype == "complex64":
        value = value * (1 + 2j)
    with pytest.raises(TypeError, match=r"parameter '0\.weight'"):
        model.load_parameters({"0.weight": value})


@pytest.mark.parametrize("dtype", ["bool", "complex64"])
def test_dense_refuses_bool_and_complex_torch_weights(dtype):
    torch = _torch_values()
    value = torch.ones((3, 4), dtype=getattr(torch, dtype))
    with pytest.raises(TypeError, match="weight"):
        pn.Dense(3, 4, weight=value)
    with pytest.raises(TypeError, match="bias"):
        pn.Dense(3, 4, bias=torch.ones((4,), dtype=getattr(torch, dtype)))


@pytest.mark.parametrize("kwargs", [{"init": "bogus"}, {"bias_init": "bogus"}])
def test_dense_checks_initializer_names_even_with_explicit_weights(kwargs):
    with pytest.raises(ValueError, match="bogus"):
        pn.Dense(3, 4, weight=np.zeros((3, 4)), bias=np.zeros(4), **kwargs)


@pytest.mark.parametrize(
    "buffers, error, message",
    [
        ({"running_mean": [np.nan, 0.0]}, ValueError, "NaN"),
        ({"running_var": [np.inf, 1.0]}, ValueError, "infinity"),
        ({"running_var": [1.0, -1.0]}, ValueError, "negative"),
        ({"running_mean": [True, False]}, TypeError, "bool"),
        ({"running_mean": [1, 2]}, TypeError, "integer"),
        ({"running_mean": np.ones(2, complex)}, TypeError, "complex"),
    ],
)
def test_load_buffers_refuses_bad_running_statistics(buffers, error, message):
    layer = pn.BatchNorm(2)
    before = {k: pn.to_numpy(v).copy() for k, v in layer.buffers().items()}
    with pytest.raises(error, match=message) as info:
        layer.load_buffers({"running_mean": [0.5, 0.5], **buffers})
    assert repr(next(iter(buffers))) in str(info.value)
    for name, value in layer.buffers().items():
        np.testing.assert_array_equal(pn.to_numpy(value), before[name])


# ---------------------------------------------------------------- what is not a regular file


def _returns_within(fn, seconds=10.0):
    """``fn()``'s exception, raised within ``seconds`` (the test never hangs)."""
    outcome = []

    def run():
        try:
            fn()
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return thread.is_alive(), outcome


_LOAD = """
import sys
import portnn as pn
try:
    pn.load(sys.argv[1])
except ValueError as e:
    print("ValueError:", e)
"""


def _load_in_a_process(path, seconds=30):
    """``pn.load(path)``'s error, from a child process killed if it blocks (an open() blocked
    inside a C extension holds the GIL, so a thread could not time out)."""
    import subprocess
    import sys

    try:
        done = subprocess.run([sys.executable, "-c", _LOAD, str(path)], capture_output=True,
                              text=True, timeout=seconds, env={**os.environ, "PORTNN_BACKEND": "numpy"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"load({str(path)!r}) blocked for {seconds} s")
    return done.stdout + done.stderr


@pytest.mark.timeout(120)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_loading_a_named_pipe_fails_at_once(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    start = time.perf_counter()
    out = _load_in_a_process(fifo)
    assert out.startswith("ValueError:") and "pipe" in out and str(fifo) in out, out
    assert time.perf_counter() - start < 20


@pytest.mark.timeout(120)
@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero here")
def test_loading_a_device_fails_at_once():
    out = _load_in_a_process("/dev/zero")
    assert out.startswith("ValueError:") and "/dev/zero" in out and "device" in out, out


def test_loading_a_directory(tmp_path):
    with pytest.raises(IsADirectoryError):
        pn.load(tmp_path)


# ---------------------------------------------------------------- class names


def test_a_user_class_named_like_a_portnn_class_is_never_built(tmp_path):
    path, _, _ = _saved(tmp_path)
    ran = []

    class ReLU(pn.Module):  # defined anywhere, named like portnn's
        def __init__(self):
            ran.append(True)
            super().__init__()

    class Dense(pn.Module):
        pass

    loaded = pn.load(path)
    assert type(loaded[1]) is pn.ReLU and ran == []
    assert type(loaded[0]) is pn.Dense
    # portnn's own Dense and ReLU still save and load
    pn.save(loaded, tmp_path / "again.safetensors")
    again = pn.load(tmp_path / "again.safetensors")
    assert [type(m) for m in again] == [pn.Dense, pn.ReLU, pn.Dense]
    # the user's ReLU cannot be saved under portnn's name, nor registered or passed in its place
    with pytest.raises(ValueError, match="portnn's own"):
        pn.save(pn.Sequential(pn.Dense(5, 4, seed=0), ReLU()), tmp_path / "shadow.safetensors")
    with pytest.raises(ValueError, match="portnn's own"):
        pn.register(ReLU)
    with pytest.raises(ValueError, match="portnn's own"):
        pn.load(path, custom_objects={"ReLU": ReLU})
    assert ran == [True]  # only the explicit ReLU() above


class Scale(pn.Module):
    """A user layer: multiplies by ``factor``."""

    def __init__(self, factor=2.0):
        super().__init__()
        self.factor = float(factor)

    def config(self):
        return {"factor": self.factor}

    def apply(self, x, training):
        return x * self.factor, lambda dy, need_dx=True: (dy * self.factor, {})


def test_a_user_layer_loads_only_when_chosen(tmp_path):
    model = pn.Sequential(pn.Dense(5, 4, seed=0), Scale(3.0), pn.Dense(4, 3, seed=1))
    path = tmp_path / "custom.safetensors"
    pn.save(model, path)  # saving works, by name, as in Keras
    with pytest.raises(ValueError) as info:
        pn.load(path)
    text = str(info.value)
    assert str(path) in text and "'Scale'" in text and "custom_objects" in text and "register" in text

    loaded = pn.load(path, custom_objects={"Scale": Scale})
    assert type(loaded[1]) is Scale and loaded[1].factor == 3.0
    X = np.random.default_rng(0).normal(size=(4, 5))
    np.testing.assert_array_equal(pn.to_numpy(loaded.predict(X)), pn.to_numpy(model.predict(X)))

    assert pn.register(Scale) is Scale
    assert type(pn.load(path)[1]) is Scale


def test_register_as_a_decorator_and_bad_arguments(tmp_path):
    @pn.register
    class Doubler(pn.Module):
        def apply(self, x, training):
            return 2 * x, lambda dy, need_dx=True: (2 * dy, {})

    pn.save(pn.Sequential(pn.Dense(2, 2, seed=0), Doubler()), tmp_path / "d.safetensors")
    assert type(pn.load(tmp_path / "d.safetensors")[1]) is Doubler
    for bad in (3, object, np.ndarray):
        with pytest.raises(TypeError, match="Module"):
            pn.register(bad)
    with pytest.raises(TypeError, match="custom_objects"):
        pn.load(tmp_path / "d.safetensors", custom_objects=[Doubler])
    with pytest.raises(TypeError, match=r"custom_objects\['Doubler'\]"):
        pn.load(tmp_path / "d.safetensors", custom_objects={"Doubler": 3})


def test_user_losses_and_optimizers_resolve_only_when_chosen(tmp_path):
    built = []

    class Huberish(pn.MSELoss):
        def __init__(self):
            built.append("loss")
            super().__init__()

    class SlowSGD(pn.SGD):
        def __init__(self, **kwargs):
            built.append("optimizer")
            super().__init__(**kwargs)

    rng = np.random.default_rng(0)
    model = pn.Sequential(pn.Dense(3, 2, seed=0))
    model.fit(rng.normal(size=(8, 3)), rng.normal(size=(8, 2)), loss=Huberish(), optimizer=SlowSGD(lr=0.1), epochs=1, verbose=0)
    path = tmp_path / "m.safetensors"
    pn.save(model, path)
    built.clear()
    with pytest.raises(ValueError, match="'Huberish'.*custom_objects"):
        pn.load(path)
    assert built == []
    loaded = pn.load(path, custom_objects={"Huberish": Huberish, "SlowSGD": SlowSGD})
    assert type(loaded.loss) is Huberish and type(loaded.optimizer) is SlowSGD

    class SGD(pn.Optimizer):  # named like portnn's: a file saying "SGD" means portnn's
        def __init__(self, **kwargs):
            built.append("fake SGD")
            super().__init__(lr=0.1)

    trained, _, _ = _saved(tmp_path, trained=True)
    assert type(pn.load(trained).optimizer) is pn.SGD
    assert "fake SGD" not in built


def test_unregistered_private_class_still_cannot_be_saved(tmp_path):
    class _Hidden(pn.ReLU):
        pass

    with pytest.raises(ValueError, match="_Hidden.*register"):
        pn.save(pn.Sequential(pn.Dense(5, 3, seed=0), _Hidden()), tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- where save writes


def test_save_through_a_symlink_keeps_the_link(tmp_path):
    real = tmp_path / "real.safetensors"
    link = tmp_path / "link.safetensors"
    pn.save(pn.Sequential(pn.Dense(3, 2, seed=0)), real)
    link.symlink_to(real)
    new = pn.Sequential(pn.Dense(3, 2, seed=5))
    pn.save(new, link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    for name, value in _host(new).items():
        np.testing.assert_array_equal(_host(pn.load(real))[name], value)
    assert sorted(os.listdir(tmp_path)) == ["link.safetensors", "real.safetensors"]
    # a dangling link: the file is created where it points
    dangling = tmp_path / "dangling.safetensors"
    dangling.symlink_to(tmp_path / "target.safetensors")
    pn.save(new, dangling)
    assert dangling.is_symlink() and (tmp_path / "target.safetensors").is_file()


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_save_refuses_to_replace_a_pipe_or_a_directory(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    model = pn.Sequential(pn.Dense(3, 2, seed=0))
    hung, outcome = _returns_within(lambda: pn.save(model, fifo))
    assert not hung
    assert isinstance(outcome[0], ValueError) and "pipe" in str(outcome[0])
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "save replaced the pipe by a regular file"
    link = tmp_path / "to-pipe.safetensors"
    link.symlink_to(fifo)
    with pytest.raises(ValueError, match="pipe"):
        pn.save(model, link)
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    with pytest.raises(IsADirectoryError):
        pn.save(model, folder)
    assert folder.is_dir()
    assert sorted(os.listdir(tmp_path)) == ["folder.safetensors", "pipe.safetensors", "to-pipe.safetensors"]


def _dead_pid():
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.skipif(os.name == "nt", reason="process ids are not checked on Windows")
def test_save_removes_stale_temporary_files_of_its_own_target(tmp_path):
    path = tmp_path / "model.safetensors"
    pn.save(pn.Sequential(pn.Dense(3, 2, seed=0)), path)
    dead = _dead_pid()
    stale = [f".model.safetensors.{dead}.0123456789ab.tmp", f".model.safetensors.{dead}.ba9876543210.tmp"]
    legacy = ".model.safetensors.00112233aabb.tmp"  # no pid: written before temporaries named one
    keep = [
        f".model.safetensors.{os.getpid()}.0123456789ab.tmp",  # this process: may be in progress
        f".other.safetensors.{dead}.0123456789ab.tmp",  # another target
        f".model.safetensors.{dead}.0123456789ab.tmp.bak",
        f"model.safetensors.{dead}.0123456789ab.tmp",
        "notes.txt",
    ]
    for name in [*stale, legacy, *keep]:
        (tmp_path / name).write_bytes(b"partial")
    old = time.time() - 2 * 3600
    os.utime(tmp_path / legacy, (old, old))
    pn.save(pn.Sequential(pn.Dense(3, 2, seed=1)), path)
    assert sorted(os.listdir(tmp_path)) == sorted(["model.safetensors", *keep])
    assert np.asarray(_host(pn.load(path))["0.weight"]).shape == (3, 2)
