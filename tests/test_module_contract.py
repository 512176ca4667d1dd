"""The module contract: ``pn.testing.check_module`` over every registered class, the faults
it catches in layers of one's own, and ONNX export of trees (several inputs, N-d inputs).

Every class of ``pn.Module.registry`` needs an entry in ``EXAMPLES``, so a new layer is
covered by being registered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import portnn as pn

N = 6  # samples per example batch


def _x(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + sum(shape)).normal(size=(N, *shape))


def _randomized(model: pn.Module, seed: int = 0) -> pn.Module:
    """Random parameters and running statistics, so no weight is a trivial 1 or 0."""
    rng = np.random.default_rng(seed)
    model.load_parameters(
        {k: rng.normal(scale=0.7, size=tuple(v.shape)) for k, v in model.parameters().items()}
    )
    buffers = {}
    for name, value in model.buffers().items():
        low_high = (0.5, 2.0) if name.endswith("running_var") else (-1.0, 1.0)
        buffers[name] = rng.uniform(*low_high, size=tuple(value.shape))
    model.load_buffers(buffers)
    return model


def _mlp(n_in: int, n_out: int, seed: int = 0) -> pn.Module:
    return pn.Sequential(pn.Dense(n_in, 5, seed=seed), pn.Tanh(), pn.Dense(5, n_out, seed=seed + 1))


def _deep_concatenate() -> tuple[pn.Module, Any]:
    """A Residual inside a Sequential inside a Concatenate."""
    deep = pn.Sequential(
        pn.Dense(4, 5, seed=0), pn.Residual(pn.Sequential(pn.Dense(5, 5, seed=1), pn.Tanh()))
    )
    return pn.Concatenate(deep, pn.Dense(4, 2, seed=2)), _x(4)


Example = Callable[[], tuple[pn.Module, Any]]

# one example per registered class (3-D inputs wherever the layer takes them)
EXAMPLES: dict[str, Example] = {
    "Dense": lambda: (pn.Dense(4, 3, seed=0), _x(3, 4)),
    "Identity": lambda: (pn.Identity(), _x(3, 4)),
    "Step": lambda: (pn.Step(), _x(3, 4)),
    "Sigmoid": lambda: (pn.Sigmoid(), _x(3, 4)),
    "Tanh": lambda: (pn.Tanh(), _x(3, 4)),
    "ReLU": lambda: (pn.ReLU(), _x(3, 4)),
    "LeakyReLU": lambda: (pn.LeakyReLU(0.2), _x(3, 4)),
    "ELU": lambda: (pn.ELU(0.7), _x(3, 4)),
    "GELU": lambda: (pn.GELU(), _x(3, 4)),
    "SiLU": lambda: (pn.SiLU(), _x(3, 4)),
    "Softplus": lambda: (pn.Softplus(beta=2.0, threshold=10.0), _x(3, 4)),
    "Softmax": lambda: (pn.Softmax(), _x(3, 4)),
    "Flatten": lambda: (pn.Flatten(), _x(2, 3)),
    "Reshape": lambda: (pn.Reshape((3, -1)), _x(2, 3)),
    "BatchNorm": lambda: (_randomized(pn.BatchNorm(4, eps=1e-3)), _x(4)),
    "LayerNorm": lambda: (_randomized(pn.LayerNorm(4)), _x(3, 4)),
    "Dropout": lambda: (pn.Dropout(0.4, seed=3), _x(3, 4)),
    "Standardize": lambda: (pn.Standardize().adapt(_x(3, 4, seed=1) * 3.0 + 2.0), _x(3, 4)),
    "Conv2D": lambda: (
        pn.Conv2D(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, seed=0),
        _x(4, 7, 6),
    ),
    "Conv1D": lambda: (pn.Conv1D(3, 4, 4, padding="same", dilation=2, seed=0), _x(3, 9)),
    "MaxPool2D": lambda: (pn.MaxPool2D(3, stride=2, padding=1), _x(2, 7, 6)),
    "AvgPool2D": lambda: (pn.AvgPool2D((3, 2), stride=(2, 1), padding=1), _x(2, 7, 6)),
    "GlobalAvgPool2D": lambda: (pn.GlobalAvgPool2D(), _x(3, 4, 5)),
    "MaxPool1D": lambda: (pn.MaxPool1D(2), _x(3, 9)),
    "AvgPool1D": lambda: (pn.AvgPool1D(3, stride=2, padding=1), _x(3, 8)),
    "Sequential": lambda: (
        _randomized(
            pn.Sequential(pn.Dense(4, 5, seed=0), pn.ReLU(), pn.LayerNorm(5), pn.Dense(5, 2))
        ),
        _x(4),
    ),
    "Residual": lambda: (pn.Residual(pn.Sequential(pn.Dense(4, 4, seed=0), pn.Tanh())), _x(3, 4)),
    "Add": lambda: (pn.Add(pn.Dense(4, 3, seed=0), _mlp(4, 3, seed=1)), _x(4)),
    "Concatenate": _deep_concatenate,
    "Parallel": lambda: (pn.Parallel(_mlp(3, 2), pn.Dense(2, 3, seed=5)), (_x(3), _x(2))),
}

# the same classes in other roles: without branches, on 2-D input, frozen, in models
MORE_EXAMPLES: dict[str, Example] = {
    "Dense on 2-D input": lambda: (pn.Dense(4, 3, seed=0, init="he_normal"), _x(4)),
    "Add without branches": lambda: (pn.Add(), (_x(3), _x(3, seed=1))),
    "Concatenate without branches": lambda: (pn.Concatenate(), (_x(3), _x(2))),
    "Concatenate along axis 1": lambda: (
        pn.Concatenate(pn.Dense(4, 4, seed=0), pn.Tanh(), axis=1),
        _x(2, 4),
    ),
    "two-input model": lambda: (
        pn.Sequential(
            pn.Parallel(_mlp(3, 4), pn.Dense(2, 3, seed=7)),
            pn.Concatenate(),
            pn.Dense(7, 2, seed=8),
        ),
        (_x(3), _x(2)),
    ),
    "Sequential with a frozen layer and dropout": lambda: (
        _randomized(
            pn.Sequential(
                pn.Dense(4, 5, seed=0).freeze(),
                pn.BatchNorm(5),
                pn.Dropout(0.3, seed=1),
                pn.Dense(5, 2),
            )
        ),
        _x(4),
    ),
    "Sequential on (N, T, F)": lambda: (
        pn.Sequential(pn.Dense(4, 5, seed=0), pn.GELU(), pn.Flatten(), pn.Dense(15, 2)),
        _x(3, 4),
    ),
    "Conv2D without bias, 'same' with an even kernel": lambda: (
        pn.Conv2D(2, 3, (2, 4), padding="same", bias=False, seed=0),
        _x(2, 5, 6),
    ),
    "Conv1D depthwise, strided": lambda: (pn.Conv1D(3, 6, 3, stride=2, groups=3, seed=0), _x(3, 10)),
    "MaxPool2D and AvgPool2D by reshaping": lambda: (
        pn.Sequential(pn.MaxPool2D(2), pn.Tanh(), pn.AvgPool2D((1, 2))),
        _x(2, 9, 8),
    ),
    "a CNN with BatchNorm over channels": lambda: (
        _randomized(
            pn.Sequential(
                pn.Conv2D(2, 4, 3, padding=1, seed=0),
                pn.BatchNorm(4),
                pn.ReLU(),
                pn.MaxPool2D(2),
                pn.Conv2D(4, 3, 2, seed=1),
                pn.GlobalAvgPool2D(),
                pn.Dense(3, 2, seed=2),
            )
        ),
        _x(2, 6, 6),
    ),
    "a 1-D CNN with BatchNorm over channels": lambda: (
        _randomized(
            pn.Sequential(
                pn.Conv1D(3, 4, 3, seed=0),
                pn.BatchNorm(4),
                pn.ReLU(),
                pn.AvgPool1D(2),
                pn.Flatten(),
                pn.Dense(12, 2, seed=1),
            )
        ),
        _x(3, 8),
    ),
}


def test_every_registered_class_has_an_example():
    missing = sorted(set(pn.Module.registry) - set(EXAMPLES))
    assert not missing, f"add an example of {missing} to EXAMPLES"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_registered_class_passes_the_contract(name):
    module, x = EXAMPLES[name]()
    assert type(module) is pn.Module.registry[name]
    pn.testing.check_module(module, x)


@pytest.mark.parametrize("name", list(MORE_EXAMPLES))
def test_trees_pass_the_contract(name):
    module, x = MORE_EXAMPLES[name]()
    pn.testing.check_module(module, x)


def _state(module: pn.Module) -> tuple:
    arrays = {
        k: pn.to_numpy(v).copy()
        for k, v in [*module.parameters().items(), *module.buffers().items()]
    }
    return (
        arrays,
        [m.trainable for m in module.modules()],
        [m.training for m in module.modules()],
        [repr(m.extra_state()) for m in module.modules()],
    )


def test_the_module_checked_is_not_changed():
    module, x = MORE_EXAMPLES["Sequential with a frozen layer and dropout"]()
    module.train()
    before = _state(module)
    x_before = x.copy()
    pn.testing.check_module(module, x)
    after = _state(module)
    assert before[1:] == after[1:]
    assert before[0].keys() == after[0].keys()
    for k in before[0]:
        np.testing.assert_array_equal(before[0][k], after[0][k], err_msg=k)
    np.testing.assert_array_equal(x, x_before)
    assert module.backend == pn.get_backend()


def test_what_it_takes():
    with pytest.raises(TypeError, match="takes a portnn Module"):
        pn.testing.check_module(pn.Dense, _x(4))
    with pytest.raises(ValueError, match="batch of real floats"):
        pn.testing.check_module(pn.ReLU(), np.ones(4))
    pn.testing.check_module(
        pn.Dense(4, 2, seed=0), _x(4), backends=[pn.get_backend().name], onnx=False
    )


# ---------------------------------------------------------------- layers of one's own


class LearnedScale(pn.Module):
    """``x * scale`` on the last axis: a correct layer written with public names only."""

    def __init__(self, features: int, seed: int = 0) -> None:
        super().__init__()
        self.features = features
        self.seed = seed
        self.add_parameter(
            "scale", np.random.default_rng(seed).uniform(0.5, 2.0, size=features).astype(np.float32)
        )

    def config(self) -> dict[str, Any]:
        return {"features": self.features, "seed": self.seed}

    def input_shape(self) -> tuple[int, ...]:
        return (self.features,)

    def apply(self, x: Any, training: bool) -> tuple[Any, Any]:
        xp, s = self.xp, self.parameters()["scale"]

        def backward(dy: Any) -> tuple[Any, dict[str, Any]]:
            return dy * s, {"scale": xp.sum(xp.reshape(dy * x, (-1, self.features)), axis=0)}

        return x * s, backward


class WrongScale(LearnedScale):
    """Its parameter gradient is twice the true one."""

    def apply(self, x: Any, training: bool) -> tuple[Any, Any]:
        y, backward = super().apply(x, training)

        def wrong(dy: Any) -> tuple[Any, dict[str, Any]]:
            dx, grads = backward(dy)
            return dx, {"scale": 2.0 * grads["scale"]}

        return y, wrong


class WrongInputScale(LearnedScale):
    """Its input gradient forgets the scale."""

    def apply(self, x: Any, training: bool) -> tuple[Any, Any]:
        y, backward = super().apply(x, training)
        return y, lambda dy: (dy, backward(dy)[1])


class RenamedScale(LearnedScale):
    """Its backward names the gradient otherwise than the parameter."""

    def apply(self, x: Any, training: bool) -> tuple[Any, Any]:
        y, backward = super().apply(x, training)
        return y, lambda dy: (backward(dy)[0], {"weight": backward(dy)[1]["scale"]})


class Shift(LearnedScale):
    """``x * scale + offset``: ``offset`` is a constructor argument its config forgets."""

    def __init__(self, features: int, seed: int = 0, offset: float = 0.0) -> None:
        super().__init__(features, seed)
        self.offset = offset

    def apply(self, x: Any, training: bool) -> tuple[Any, Any]:
        y, backward = super().apply(x, training)
        return y + self.offset, backward


class FastScale(LearnedScale):
    """Its inference path computes something else than its training path in inference mode."""

    def infer(self, x: Any) -> Any:
        return x * self.parameters()["scale"] + 1e-3


class HostScale(LearnedScale):
    """Its config holds a NumPy array, which JSON cannot hold."""

    def config(self) -> dict[str, Any]:
        return {"features": np.int64(self.features), "seed": self.seed}


def test_a_correct_layer_of_ones_own_passes():
    pn.testing.check_module(LearnedScale(4, seed=1), _x(3, 4))


def test_a_layer_of_ones_own_inside_a_tree_passes():
    model = pn.Sequential(
        pn.Dense(3, 4, seed=0), pn.Residual(LearnedScale(4, seed=2)), pn.Dense(4, 2, seed=1)
    )
    pn.testing.check_module(model, _x(3))


def test_a_wrong_parameter_gradient_is_caught():
    with pytest.raises(
        AssertionError,
        match=r"check_module\(WrongScale\): gradient check of parameter 'scale' failed",
    ):
        pn.testing.check_module(WrongScale(4), _x(4))


def test_a_wrong_input_gradient_is_caught():
    with pytest.raises(
        AssertionError, match=r"check_module\(WrongInputScale\): gradient check of the input failed"
    ):
        pn.testing.check_module(WrongInputScale(4), _x(4))


def test_a_wrong_gradient_deep_in_a_tree_is_named_by_its_path():
    model = pn.Sequential(pn.Dense(3, 4, seed=0), pn.Residual(WrongScale(4)))
    with pytest.raises(
        AssertionError,
        match=r"check_module\(Sequential\): gradient check of parameter '1.block.scale'",
    ):
        pn.testing.check_module(model, _x(3))


def test_gradients_under_other_names_are_caught():
    with pytest.raises(
        AssertionError, match=r"no gradient for parameters \['scale'\].*unknown names \['weight'\]"
    ):
        pn.testing.check_module(RenamedScale(4), _x(4))


def test_a_config_that_does_not_rebuild_the_layer_is_caught():
    pn.testing.check_module(Shift(4, offset=0.0), _x(4))  # the default: the file rebuilds it
    with pytest.raises(
        AssertionError,
        match=r"check_module\(Shift\): save/load round trip changed the inference output",
    ):
        pn.testing.check_module(Shift(4, offset=0.5), _x(4))


def test_a_config_that_is_not_json_is_caught():
    with pytest.raises(
        AssertionError, match=r"config\(\) of the module \(HostScale\) is not JSON-serializable"
    ):
        pn.testing.check_module(HostScale(4), _x(4))


def test_an_inference_path_that_differs_is_caught():
    with pytest.raises(
        AssertionError,
        match=r"check_module\(FastScale\): infer\(x\) differs from apply\(x, False\)\[0\]",
    ):
        pn.testing.check_module(FastScale(4), _x(4), onnx=False)


def test_tolerances_can_be_widened():
    pn.testing.check_module(FastScale(4), _x(4), atol=1e-2, onnx=False)


# ---------------------------------------------------------------- ONNX export of trees


@pytest.fixture
def ort():
    """onnxruntime, with ndonnx and onnx present (else the test is skipped)."""
    pytest.importorskip("ndonnx")
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def _session(ort, path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _close(got, expected, dtype="float32"):
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == "float32" else {"rtol": 1e-10, "atol": 1e-12}
    np.testing.assert_allclose(got, pn.to_numpy(expected), **tol)


def test_export_of_a_two_input_model(ort, tmp_path):
    model, _ = MORE_EXAMPLES["two-input model"]()
    path = tmp_path / "two.onnx"
    pn.export_onnx(model, path)  # the input shapes come from the Parallel: ((3,), (2,))
    session = _session(ort, path)
    assert [(i.name, i.shape) for i in session.get_inputs()] == [
        ("input_0", ["N", 3]),
        ("input_1", ["N", 2]),
    ]
    assert [o.name for o in session.get_outputs()] == ["output"]
    for n in (1, 7):
        a, b = (np.random.default_rng(n).normal(size=(n, k)).astype("float32") for k in (3, 2))
        (y,) = session.run(None, {"input_0": a, "input_1": b})
        _close(y, model.predict((a, b)))


def test_export_of_a_model_that_merges_a_tuple_needs_the_shapes(ort, tmp_path):
    model = pn.Sequential(pn.Concatenate(), pn.Dense(5, 2, seed=0))
    with pytest.raises(ValueError, match="pass input_shape="):
        pn.export_onnx(model, tmp_path / "m.onnx")
    pn.export_onnx(model, tmp_path / "m.onnx", input_shape=((3,), (2,)), input_name="x")
    session = _session(ort, tmp_path / "m.onnx")
    a, b = np.ones((4, 3), "float32"), np.full((4, 2), 2.0, "float32")
    (y,) = session.run(None, {"x_0": a, "x_1": b})
    _close(y, model.predict((a, b)))


def test_export_of_several_outputs(ort, tmp_path):
    model = pn.Parallel(pn.Dense(3, 2, seed=0), pn.Tanh())
    pn.export_onnx(model, tmp_path / "p.onnx", input_shape=((3,), (2, 5)))
    session = _session(ort, tmp_path / "p.onnx")
    assert [(o.name, o.shape) for o in session.get_outputs()] == [
        ("output_0", ["N", 2]),
        ("output_1", ["N", 2, 5]),
    ]
    a, b = _x(3).astype("float32"), _x(2, 5).astype("float32")
    got = session.run(None, {"input_0": a, "input_1": b})
    for g, e in zip(got, model.predict((a, b))):
        _close(g, e)


def test_export_of_n_d_input_through_dense(ort, tmp_path):
    model = _randomized(
        pn.Sequential(pn.Dense(4, 6, seed=0), pn.LayerNorm(6), pn.GELU(), pn.Dense(6, 2, seed=1))
    )
    path = tmp_path / "seq.onnx"
    pn.export_onnx(model, path, input_shape=(7, 4))
    session = _session(ort, path)
    assert session.get_inputs()[0].shape == ["N", 7, 4]
    assert session.get_outputs()[0].shape == ["N", 7, 2]  # static shapes kept through the matmuls
    for n in (1, 5):
        x = np.random.default_rng(n).normal(size=(n, 7, 4)).astype("float32")
        (y,) = session.run(None, {"input": x})
        assert y.shape == (n, 7, 2)
        _close(y, model.predict(x))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"input_shape": (7, 5)}, ValueError, r"takes samples of shape \(4,\)"),
        (
            {"input_shape": ((4,), (4,))},
            ValueError,
            r"gives 2 inputs, but Dense takes one input \(4,\)",
        ),
        ({"input_shape": ()}, ValueError, "must be the shape of one sample"),
        ({"input_shape": "4"}, TypeError, "must be the shape of one sample"),
        ({"input_shape": (0, 4)}, ValueError, "sizes >= 1"),
        ({"input_shape": (2.0, 4)}, TypeError, "either integers"),
        ({"input_shape": (4, (4,))}, TypeError, "either integers"),
        ({"input_shape": (3,), "in_features": 4}, ValueError, "disagree"),
    ],
)
def test_bad_input_shapes_are_reported_before_anything_is_written(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        pn.export_onnx(pn.Dense(4, 2, seed=0), tmp_path / "m.onnx", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_a_two_input_model_checks_each_shape(tmp_path):
    model, _ = MORE_EXAMPLES["two-input model"]()
    with pytest.raises(ValueError, match=r"takes samples of shape \(2,\) for input 1"):
        pn.export_onnx(model, tmp_path / "m.onnx", input_shape=((3,), (3,)))
    with pytest.raises(
        ValueError, match=r"gives one input, but Sequential takes 2 inputs \(\(3,\), \(2,\)\)"
    ):
        pn.export_onnx(model, tmp_path / "m.onnx", input_shape=(3,))
    assert list(tmp_path.iterdir()) == []


def test_in_features_and_the_same_input_shape_agree(ort, tmp_path):
    model = pn.Sequential(pn.ReLU(), pn.Softmax())
    pn.export_onnx(model, tmp_path / "m.onnx", input_shape=(3,), in_features=3)
    assert _session(ort, tmp_path / "m.onnx").get_inputs()[0].shape == ["N", 3]
