"""ONNX export: ``portnn.export_onnx`` and ``portnn export``, checked by running the files
with onnxruntime against ``model.predict``.

Models are built on the backend under test; the exported graph is run on NumPy
inputs. Tests that trace need ndonnx and onnxruntime (``portnn[onnx]``) and skip
without them; the tests of what happens without them run everywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tolerance

import portnn as pn
from portnn.nn import Module

BATCH_SIZES = (1, 2, 7, 64, 301)
FEATURES = 5


@pytest.fixture
def ort():
    """onnxruntime, with ndonnx and onnx present (else the test is skipped)."""
    pytest.importorskip("ndonnx")
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


@pytest.fixture
def dtype(request, float64_ok) -> str:
    name = request.param
    if name == "float64" and not float64_ok:
        pytest.skip("this backend has no float64")
    return name


def run_onnx(ort, path, X, input_name: str = "input") -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {input_name: X})
    return y


def samples(n: int, dtype: str, seed: int = 0, features: int = FEATURES) -> np.ndarray:
    """Ordinary values, with a few large ones (saturated sigmoids, softplus past its threshold)."""
    rng = np.random.default_rng(seed + n)
    X = rng.normal(scale=2.0, size=(n, features))
    X[::5] *= 30.0
    return X.astype(dtype)


def randomize(model: Module, seed: int = 0) -> Module:
    """Random parameters and running statistics, so that no weight is a trivial 1 or 0."""
    rng = np.random.default_rng(seed)
    params = model.parameters()
    model.load_parameters({k: rng.normal(size=tuple(v.shape)) for k, v in params.items()})
    buffers = {}
    for name, value in model.buffers().items():
        shape = tuple(value.shape)
        if name.endswith("running_var"):
            buffers[name] = rng.uniform(0.3, 3.0, size=shape)
        elif name.endswith("running_mean"):
            buffers[name] = rng.normal(size=shape)
    model.load_buffers(buffers)
    return model


def assert_matches(ort, path, model: Module, dtype: str, batch_sizes=BATCH_SIZES, **kw) -> None:
    """The one exported file agrees with ``model.predict`` for every batch size."""
    for n in batch_sizes:
        X = samples(n, dtype, features=kw.get("features", FEATURES))
        got = run_onnx(ort, path, X)
        expected = pn.to_numpy(model.predict(X))
        assert got.shape == expected.shape, n
        assert got.dtype == expected.dtype, n
        assert_close(got, expected, dtype, X, err_msg=f"batch of {n}")


def assert_close(got, expected, dtype: str, X=None, **kw) -> None:
    """Within the suite's tolerance, the absolute one scaled by the magnitude of the inputs
    and outputs: an output near zero can come from the cancellation of much larger terms
    (two libraries' matmul and tanh differ in the last bits of those)."""
    tol = tolerance(dtype)
    scale = max(1.0, float(np.max(np.abs(expected))))
    if X is not None:
        scale = max(scale, float(np.max(np.abs(X))))
    np.testing.assert_allclose(got, expected, rtol=tol["rtol"], atol=tol["atol"] * scale, **kw)


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# every layer with an inference mode, placed after a Dense(FEATURES, 6)
LAYERS = {
    "Dense": lambda dt: pn.Dense(6, 4, seed=3, dtype=dt),
    "Identity": lambda dt: pn.Identity(),
    "Step": lambda dt: pn.Step(),
    "Sigmoid": lambda dt: pn.Sigmoid(),
    "Tanh": lambda dt: pn.Tanh(),
    "ReLU": lambda dt: pn.ReLU(),
    "LeakyReLU": lambda dt: pn.LeakyReLU(0.2),
    "ELU": lambda dt: pn.ELU(0.7),
    "GELU": lambda dt: pn.GELU(),
    "SiLU": lambda dt: pn.SiLU(),
    "Softplus": lambda dt: pn.Softplus(beta=2.0, threshold=10.0),
    "Softmax": lambda dt: pn.Softmax(),
    "Dropout": lambda dt: pn.Dropout(0.5, seed=0),
    "BatchNorm": lambda dt: pn.BatchNorm(6, eps=1e-3, dtype=dt),
    "LayerNorm": lambda dt: pn.LayerNorm(6, dtype=dt),
    "Flatten": lambda dt: pn.Flatten(),
    "Reshape": lambda dt: pn.Sequential(pn.Reshape((2, 3)), pn.Dense(3, 2, seed=4, dtype=dt), pn.Flatten()),
}
ACTIVATIONS = [
    name for name in LAYERS if name not in ("Dense", "Dropout", "BatchNorm", "LayerNorm", "Flatten", "Reshape")
]


def test_every_portnn_layer_is_tested():
    ours = {
        name
        for name, cls in Module.registry.items()
        if cls.__module__ in ("portnn.nn.layers", "portnn.nn.normalization")
    }
    assert ours <= set(LAYERS), f"add {sorted(ours - set(LAYERS))} to LAYERS"


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", ["float32", "float64"], indirect=True)
@pytest.mark.parametrize("layer", list(LAYERS))
def test_each_layer_matches_predict(ort, tmp_path, layer, dtype):
    first = pn.Dense(FEATURES, 6, seed=0, dtype=dtype)
    model = randomize(pn.Sequential(first, LAYERS[layer](dtype)))
    path = tmp_path / "model.onnx"
    pn.export_onnx(model, path)
    assert_matches(ort, path, model, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"], indirect=True)
@pytest.mark.parametrize("layer", ACTIVATIONS)
def test_an_activation_alone(ort, tmp_path, layer, dtype):
    """A model without parameters: its width is given; it computes in float32, as predict does."""
    model = LAYERS[layer](dtype)
    path = tmp_path / "act.onnx"
    pn.export_onnx(model, path, in_features=FEATURES, dtype=dtype)
    for n in BATCH_SIZES:
        X = samples(n, dtype)
        got = run_onnx(ort, path, X)
        expected = pn.to_numpy(model.predict(X))
        assert got.dtype == expected.dtype == np.float32
        assert_close(got, expected, "float32", X)


@pytest.mark.parametrize("dtype", ["float32", "float64"], indirect=True)
def test_a_trained_mixed_model(ort, tmp_path, dtype):
    """Trained with dropout and batch statistics; exported in inference mode."""
    model = pn.Sequential(
        pn.Dense(FEATURES, 16, seed=0, dtype=dtype),
        pn.BatchNorm(16, dtype=dtype),
        pn.ReLU(),
        pn.Dropout(0.3, seed=1),
        pn.Dense(16, 12, seed=2, dtype=dtype),
        pn.LayerNorm(12, dtype=dtype),
        pn.Tanh(),
        pn.Sequential(
            pn.Dense(12, 8, seed=3, dtype=dtype), pn.LeakyReLU(0.05), pn.Dropout(0.1, seed=4)
        ),
        pn.Dense(8, 3, seed=5, dtype=dtype),
        pn.Softmax(),
    )
    X = samples(200, dtype, seed=1)
    y = np.random.default_rng(2).integers(0, 3, size=200)
    model.fit(
        X, y, loss="cross_entropy", optimizer=pn.Adam(lr=0.01), epochs=3, batch_size=32, verbose=0
    )
    assert not np.allclose(pn.to_numpy(model[1].running_var), 1.0)  # the statistics moved
    path = tmp_path / "mixed.onnx"
    pn.export_onnx(model, path)
    assert_matches(ort, path, model, dtype)


def test_a_model_in_training_mode_is_exported_in_inference_mode(ort, tmp_path):
    model = randomize(
        pn.Sequential(pn.Dense(FEATURES, 6, seed=0), pn.Dropout(0.5, seed=0), pn.BatchNorm(6))
    )
    model.train()
    path = tmp_path / "m.onnx"
    pn.export_onnx(model, path)
    assert model.training and all(m.training for m in model.modules())  # left as it was
    X = samples(9, "float32")
    model.eval()
    assert_close(run_onnx(ort, path, X), pn.to_numpy(model(X)), "float32", X)


def test_a_single_layer_model(ort, tmp_path):
    model = randomize(pn.Dense(FEATURES, 3, seed=0))
    pn.export_onnx(model, tmp_path / "dense.onnx")
    assert_matches(ort, tmp_path / "dense.onnx", model, "float32")


def test_export_leaves_the_model_unchanged(ort, tmp_path, backend):
    model = pn.Sequential(pn.Dense(FEATURES, 4, seed=0), pn.BatchNorm(4), pn.Dense(4, 2, seed=1))
    X = samples(40, "float32")
    model.fit(X, np.zeros((40, 2), np.float32), loss="mse", optimizer="adam", epochs=1, verbose=0)
    params = {k: pn.to_numpy(v).copy() for k, v in model.parameters().items()}
    buffers = {k: pn.to_numpy(v).copy() for k, v in model.buffers().items()}
    state = model.optimizer_state
    pn.export_onnx(model, tmp_path / "m.onnx")
    assert model.backend == backend
    assert model.optimizer_state is state
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(pn.to_numpy(v), params[k])
    for k, v in model.buffers().items():
        np.testing.assert_array_equal(pn.to_numpy(v), buffers[k])
    model.fit(X, np.zeros((40, 2), np.float32), loss="mse", epochs=1, verbose=0)  # still trainable


@pytest.mark.parametrize("name", pn.available_backends())
def test_export_from_every_backend(ort, tmp_path, name):
    """A model trained on any backend exports the same way (its arrays are read on the host)."""
    device = "device1" if name == "array_api_strict" else None
    with pn.use_backend(name, device=device):
        model = pn.Sequential(
            pn.Dense(FEATURES, 8, seed=0), pn.BatchNorm(8), pn.ReLU(), pn.Dense(8, 2, seed=1)
        )
        X = samples(64, "float32")
        y = (X[:, 0] > 0).astype(np.int64)
        model.fit(X, y, loss="cross_entropy", epochs=2, batch_size=16, verbose=0)
        pn.export_onnx(model, tmp_path / f"{name}.onnx")
        assert_matches(ort, tmp_path / f"{name}.onnx", model, "float32")


def test_input_dtype_is_cast_to_the_models(ort, tmp_path):
    model = randomize(pn.Sequential(pn.Dense(FEATURES, 3, seed=0), pn.Sigmoid()))
    path = tmp_path / "m.onnx"
    pn.export_onnx(model, path, dtype="float64")
    X = samples(11, "float64")
    got = run_onnx(ort, path, X)
    assert got.dtype == np.float32  # the model computes in float32, as calling it does
    assert_close(got, pn.to_numpy(model.predict(X)), "float32", X)


def test_names_of_input_and_output(ort, tmp_path):
    model = pn.Dense(FEATURES, 2, seed=0)
    path = tmp_path / "m.onnx"
    pn.export_onnx(model, path, input_name="features", output_name="scores")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["features"]
    assert [o.name for o in session.get_outputs()] == ["scores"]
    X = samples(3, "float32")
    assert_close(run_onnx(ort, path, X, "features"), pn.to_numpy(model.predict(X)), "float32", X)


# ---------------------------------------------------------------- the file


@pytest.mark.parametrize("dtype", ["float32", "float64"], indirect=True)
@pytest.mark.parametrize("batch_dim", ["N", "batch", "_rows2"])
def test_the_batch_dimension_is_symbolic(ort, tmp_path, batch_dim, dtype):
    import onnx

    model = pn.Sequential(
        pn.Dense(FEATURES, 6, seed=0, dtype=dtype), pn.ReLU(), pn.Dense(6, 3, seed=1, dtype=dtype)
    )
    path = tmp_path / "m.onnx"
    pn.export_onnx(model, path, batch_dim=batch_dim)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    elem = onnx.TensorProto.FLOAT if dtype == "float32" else onnx.TensorProto.DOUBLE
    (inp,) = proto.graph.input
    (out,) = proto.graph.output
    assert inp.name == "input" and out.name == "output"
    assert inp.type.tensor_type.elem_type == elem == out.type.tensor_type.elem_type
    in_dims = inp.type.tensor_type.shape.dim
    out_dims = out.type.tensor_type.shape.dim
    assert [d.dim_param for d in in_dims] == [batch_dim, ""]
    assert in_dims[1].dim_value == FEATURES
    assert out_dims[0].dim_param == batch_dim and out_dims[1].dim_value == 3
    assert proto.producer_name == "portnn" and proto.producer_version == pn.__version__
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [batch_dim, FEATURES]
    assert session.get_outputs()[0].shape == [batch_dim, 3]
    assert_matches(ort, path, model, dtype)


def test_parameters_are_constants_not_inputs(ort, tmp_path):
    import onnx

    model = randomize(pn.Sequential(pn.Dense(FEATURES, 4, seed=0), pn.BatchNorm(4)))
    pn.export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert len(proto.graph.input) == 1


def test_an_existing_file_is_replaced(ort, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    model = pn.Dense(FEATURES, 2, seed=0)
    pn.export_onnx(model, str(path))  # str paths too
    assert files_in(tmp_path) == ["m.onnx"]  # no temporary file left behind
    X = samples(4, "float32")
    assert_close(run_onnx(ort, path, X), pn.to_numpy(model.predict(X)), "float32", X)


# ---------------------------------------------------------------- errors


class _HostRead(Module):
    """Reads an array value on the host: cannot be traced."""

    def apply(self, x, training):
        scale = float(self.xp.max(x))
        return x / scale, lambda dy, need_dx=True: (dy / scale, {})


class _ToNumPy(Module):
    """Leaves the Array API namespace."""

    def apply(self, x, training):
        y = np.asarray(pn.to_numpy(x))
        return y, lambda dy, need_dx=True: (dy, {})


class _DataDependent(Module):
    """Branches on the data."""

    def apply(self, x, training):
        if bool(self.xp.any(x < 0)):
            x = -x
        return x, lambda dy, need_dx=True: (dy, {})


@pytest.mark.parametrize("bad", [_HostRead, _ToNumPy, _DataDependent])
def test_a_layer_that_cannot_be_traced_is_named(ort, tmp_path, bad):
    model = pn.Sequential(pn.Dense(FEATURES, 4, seed=0), pn.Sequential(pn.ReLU(), bad()), pn.Tanh())
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")
    with pytest.raises(pn.ExportError, match=rf"layer 1\.1 \({bad.__name__}\) cannot be exported"):
        pn.export_onnx(model, path)
    assert path.read_bytes() == b"previous"  # left intact
    assert files_in(tmp_path) == ["m.onnx"]
    assert isinstance(pn.ExportError("x"), ValueError)


def test_an_untraceable_model_itself_is_named(ort, tmp_path):
    with pytest.raises(pn.ExportError, match=r"the model \(_HostRead\)"):
        pn.export_onnx(_HostRead(), tmp_path / "m.onnx", in_features=3)
    assert files_in(tmp_path) == []


def _model() -> Module:
    return pn.Sequential(pn.Dense(FEATURES, 3, seed=0), pn.ReLU())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_dim": ""}, ValueError, "batch_dim must be a name"),
        ({"batch_dim": "1N"}, ValueError, "batch_dim must be a name"),
        ({"batch_dim": "N M"}, ValueError, "batch_dim must be a name"),
        ({"batch_dim": "N\n"}, ValueError, "batch_dim must be a name"),
        ({"batch_dim": 3}, TypeError, "batch_dim must be the name"),
        ({"batch_dim": None}, TypeError, "batch_dim must be the name"),
        ({"in_features": 0}, ValueError, "in_features must be >= 1"),
        ({"in_features": True}, TypeError, "in_features must be an integer"),
        ({"in_features": 2.0}, TypeError, "in_features must be an integer"),
        ({"in_features": FEATURES + 1}, ValueError, "model takes 5 input features"),
        ({"dtype": "int32"}, ValueError, "dtype must be one of"),
        ({"dtype": "complex64"}, ValueError, "dtype must be one of"),
        ({"dtype": object()}, ValueError, "dtype must be one of"),
        ({"input_name": ""}, ValueError, "input_name must not be empty"),
        ({"output_name": 1}, TypeError, "output_name must be a str"),
        ({"input_name": "x", "output_name": "x"}, ValueError, "must differ"),
    ],
)
def test_bad_arguments_are_reported_before_anything_is_written(tmp_path, kwargs, error, match):
    # no ndonnx needed: arguments are checked before it is imported
    with pytest.raises(error, match=match):
        pn.export_onnx(_model(), tmp_path / "m.onnx", **kwargs)
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("model", ["model", np.zeros((2, 2)), None, pn.Sequential])
def test_not_a_model(tmp_path, model):
    with pytest.raises(TypeError, match="takes a portnn Module"):
        pn.export_onnx(model, tmp_path / "m.onnx")
    assert files_in(tmp_path) == []


def test_a_model_of_unknown_width_needs_in_features(tmp_path):
    with pytest.raises(ValueError, match="pass in_features="):
        pn.export_onnx(pn.Sequential(pn.ReLU(), pn.Softmax()), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="pass in_features="):
        pn.export_onnx(pn.Sequential(_HostRead(), pn.Dense(3, 2)), tmp_path / "m.onnx")
    assert files_in(tmp_path) == []


def test_width_is_read_past_shape_preserving_layers(ort, tmp_path):
    head = pn.Sequential(pn.Dropout(0.2), pn.BatchNorm(FEATURES))
    model = randomize(pn.Sequential(head, pn.Dense(FEATURES, 2)))
    pn.export_onnx(model, tmp_path / "m.onnx")
    assert_matches(ort, tmp_path / "m.onnx", model, "float32")


def test_unwritable_paths(tmp_path):
    model = _model()
    with pytest.raises(TypeError, match="path must be a file name"):
        pn.export_onnx(model, 3)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        pn.export_onnx(model, tmp_path / "missing" / "m.onnx")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        pn.export_onnx(model, tmp_path / "a_file" / "m.onnx")
    (tmp_path / "a_dir").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        pn.export_onnx(model, tmp_path / "a_dir")
    assert files_in(tmp_path) == ["a_dir", "a_file"]
    assert files_in(tmp_path / "a_dir") == []


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere"
)
def test_a_read_only_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            pn.export_onnx(_model(), locked / "m.onnx")
        assert files_in(locked) == []
    finally:
        locked.chmod(0o755)


def test_without_ndonnx_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ndonnx", None)  # import ndonnx now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "portnn\[onnx\]"'):
        pn.export_onnx(_model(), tmp_path / "m.onnx")
    assert files_in(tmp_path) == []


def test_portnn_imports_without_the_onnx_packages():
    code = (
        "import sys\n"
        "for name in ('ndonnx', 'onnx', 'onnxruntime', 'spox'):\n"
        "    sys.modules[name] = None\n"
        "import portnn, portnn.export, portnn.cli\n"
        "try:\n"
        "    portnn.export_onnx(portnn.Dense(2, 2), 'never.onnx')\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    env = {**os.environ, "PORTNN_BACKEND": "numpy"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert 'pip install "portnn[onnx]"' in result.stdout


# ---------------------------------------------------------------- portnn export


@pytest.fixture
def saved(tmp_path) -> tuple[Path, Module]:
    pytest.importorskip("safetensors")
    model = randomize(
        pn.Sequential(
            pn.Dense(FEATURES, 8, seed=0),
            pn.BatchNorm(8),
            pn.ReLU(),
            pn.Dropout(0.2),
            pn.Dense(8, 3, seed=1),
        )
    )
    path = tmp_path / "model.safetensors"
    pn.save(model, path)
    return path, model


def test_cli_export(ort, tmp_path, saved, capsys):
    from portnn.cli import main

    path, model = saved
    out = tmp_path / "sub" / "model.onnx"  # the directory is made, as for train --out
    code = main(["export", str(path), str(out), "--batch-dim", "B"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert f"wrote {out}" in stdout and "(B, 5)" in stdout
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["B", FEATURES]
    assert_matches(ort, out, model, "float32")


def test_cli_export_of_a_two_input_model_and_of_samples_with_several_axes(ort, tmp_path, capsys):
    from portnn.cli import main

    two = pn.Sequential(pn.Parallel(pn.Dense(3, 2, seed=0), pn.Dense(4, 2, seed=1)), pn.Concatenate(), pn.Dense(4, 2, seed=2))
    pn.save(two, tmp_path / "two.safetensors")
    assert main(["export", str(tmp_path / "two.safetensors"), str(tmp_path / "two.onnx")]) == 0
    out = capsys.readouterr().out
    assert "inputs 'input_0' of shape (N, 3), 'input_1' of shape (N, 4)" in out
    session = ort.InferenceSession(str(tmp_path / "two.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_0", "input_1"]

    flat = pn.Sequential(pn.Flatten(), pn.Dense(12, 2, seed=0))  # its first layer does not tell the shape
    pn.save(flat, tmp_path / "flat.safetensors")
    assert main(["export", str(tmp_path / "flat.safetensors"), str(tmp_path / "flat.onnx")]) == 2
    assert "input_shape" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "flat.safetensors"), str(tmp_path / "flat.onnx"), "--input-shape", "3,4"]) == 0
    assert "input 'input' of shape (N, 3, 4)" in capsys.readouterr().out
    X = np.random.default_rng(0).normal(size=(5, 3, 4)).astype(np.float32)
    assert_close(run_onnx(ort, tmp_path / "flat.onnx", X), pn.to_numpy(flat.predict(X)), "float32", X)
    assert main(["export", str(tmp_path / "flat.safetensors"), str(tmp_path / "x.onnx"), "--input-shape", "3,x"]) == 2
    assert "--input-shape must be sizes" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--batch-dim", "2x"], "batch_dim must be a name"),
        (["--batch-dim", ""], "batch_dim must be a name"),
    ],
)
def test_cli_export_bad_batch_dim(tmp_path, saved, capsys, args, fragment):
    from portnn.cli import main

    path, _ = saved
    out = tmp_path / "sub" / "model.onnx"
    code = main(["export", str(path), str(out), *args])
    _, stderr = capsys.readouterr()
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("portnn export: error:") and fragment in lines[0]
    assert not (tmp_path / "sub").exists()


def test_cli_export_missing_model(tmp_path, capsys):
    from portnn.cli import main

    code = main(["export", str(tmp_path / "nope.safetensors"), str(tmp_path / "m.onnx")])
    _, stderr = capsys.readouterr()
    assert code == 2 and "no model file" in stderr and "Traceback" not in stderr
    assert files_in(tmp_path) == []


def test_cli_export_without_ndonnx(tmp_path, saved, capsys, monkeypatch):
    from portnn.cli import main

    path, _ = saved
    monkeypatch.setitem(sys.modules, "ndonnx", None)
    code = main(["export", str(path), str(tmp_path / "m.onnx")])
    _, stderr = capsys.readouterr()
    assert code == 2 and 'pip install "portnn[onnx]"' in stderr
    assert not (tmp_path / "m.onnx").exists()


def test_python_m_portnn_export(ort, tmp_path, saved):
    path, model = saved
    out = tmp_path / "cli.onnx"
    env = {**os.environ, "PORTNN_BACKEND": "numpy"}
    env.pop("PORTNN_DEBUG", None)
    result = subprocess.run(
        [sys.executable, "-m", "portnn", "export", str(path), str(out)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert_matches(ort, out, model, "float32", batch_sizes=(1, 33))


def test_a_network_that_starts_by_normalizing_image_channels(ort, tmp_path):
    # BatchNorm(3) on (N, 3, 8, 8) normalizes axis 1: it fixes no sample shape of its own
    model = randomize(
        pn.Sequential(
            pn.BatchNorm(3), pn.Conv2D(3, 4, 3, seed=0), pn.ReLU(), pn.GlobalAvgPool2D(), pn.Dense(4, 2, seed=1)
        )
    )
    with pytest.raises(ValueError, match=r"pass input_shape= \(the shape of one sample"):
        pn.export_onnx(model, tmp_path / "m.onnx")
    pn.export_onnx(model, tmp_path / "m.onnx", input_shape=(3, 8, 8))
    X = np.random.default_rng(1).random((5, 3, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(
        run_onnx(ort, tmp_path / "m.onnx", X), pn.to_numpy(model.predict(X)), rtol=1e-5, atol=1e-6
    )
    # in front of a Dense the width is still read past it (2-D input)
    flat = pn.Sequential(pn.Sequential(pn.BatchNorm(6)), pn.Dense(6, 2))
    assert flat.input_shape() == (6,)
