"""Conv1D, Conv2D and BatchNorm on channels.

PyTorch parity in float64 (the output and the gradients of the input, the weight
and the bias, to 1e-10) over a grid of shapes, strides, paddings ("same" with
even kernels too), dilations and groups; PyTorch's default initialization;
arguments and inputs that are refused, by name; and a small CNN
(Conv2D-ReLU-MaxPool2D-Flatten-Dense) that trains as PyTorch trains it, learns,
saves and loads, moves across backends, exports to ONNX and compiles with
``fit(jit=True)``. The module contract (``check_module``) covers every class
through ``tests/test_module_contract.py``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import portnn as pn

TOL = {"rtol": 1e-10, "atol": 1e-12}
F64 = "float64"


@pytest.fixture
def torch(float64_ok):
    if not float64_ok:
        pytest.skip("the parity tests run in float64, which this backend lacks")
    return pytest.importorskip("torch")


def _f64(backend, a):
    return backend.asarray(a, backend.dtype(F64))


def _close(ours, theirs, what=""):
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else theirs
    np.testing.assert_allclose(pn.to_numpy(ours), theirs, **TOL, err_msg=what)


def _torch_conv(torch, layer, x, dy):
    """y and the gradients (input, weight, bias) of torch's conv1d/conv2d on ``layer``'s weights."""
    f = torch.nn.functional.conv2d if isinstance(layer, pn.Conv2D) else torch.nn.functional.conv1d
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(pn.to_numpy(layer.weight), requires_grad=True)
    tb = torch.tensor(pn.to_numpy(layer.bias), requires_grad=True) if layer.bias is not None else None
    with warnings.catch_warnings():  # torch warns that "same" with an even kernel copies the input
        warnings.simplefilter("ignore", UserWarning)
        ty = f(tx, tw, tb, stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
    ty.backward(torch.tensor(dy))
    return ty, tx.grad, tw.grad, (tb.grad if tb is not None else None)


def _out_shape(torch, layer, x):
    f = torch.nn.functional.conv2d if isinstance(layer, pn.Conv2D) else torch.nn.functional.conv1d
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return tuple(f(torch.tensor(x), torch.tensor(pn.to_numpy(layer.weight)), stride=layer.stride,
                       padding=layer.padding, dilation=layer.dilation, groups=layer.groups).shape)


def _check_against_torch(torch, backend, layer, x, seed=0):
    rng = np.random.default_rng(seed)
    xb = _f64(backend, x)
    y, backward = layer.apply(xb, True)
    dy = rng.normal(size=tuple(y.shape))
    ty, tdx, tdw, tdb = _torch_conv(torch, layer, x, dy)
    assert tuple(y.shape) == tuple(ty.shape)
    _close(y, ty, "output")
    _close(layer.infer(xb), ty, "infer")
    dx, grads = backward(_f64(backend, dy))
    _close(dx, tdx, "input gradient")
    _close(grads["weight"], tdw, "weight gradient")
    if tdb is None:
        assert set(grads) == {"weight"}
    else:
        _close(grads["bias"], tdb, "bias gradient")
    # without the input gradient (a model's first layer): the same parameter gradients
    no_dx, grads_again = backward(_f64(backend, dy), need_dx=False)
    assert no_dx is None
    assert set(grads_again) == set(grads)
    for k in grads:
        _close(grads_again[k], pn.to_numpy(grads[k]), k)


# (in_channels, out_channels, spatial size, arguments)
CONV2D = [
    (3, 4, (7, 8), {"kernel_size": 3}),
    (2, 5, (6, 5), {"kernel_size": 1}),
    (3, 2, (9, 7), {"kernel_size": (3, 2), "stride": 2}),
    (2, 3, (9, 10), {"kernel_size": 3, "stride": (2, 3), "padding": (1, 2)}),
    (2, 4, (8, 9), {"kernel_size": 3, "padding": 1, "dilation": 2}),
    (2, 3, (7, 8), {"kernel_size": (2, 3), "dilation": (2, 1), "padding": "valid"}),
    (3, 4, (6, 7), {"kernel_size": 3, "padding": "same"}),
    (2, 3, (6, 7), {"kernel_size": 2, "padding": "same"}),  # even kernel: the extra row/column at the end
    (2, 3, (6, 7), {"kernel_size": (4, 3), "padding": "same", "dilation": (1, 2)}),
    (2, 2, (5, 6), {"kernel_size": (2, 4), "padding": "same", "dilation": 3}),
    (4, 6, (7, 7), {"kernel_size": 3, "groups": 2, "padding": 1}),
    (4, 4, (6, 8), {"kernel_size": (3, 1), "groups": 4, "stride": (1, 2)}),  # depthwise
    (6, 9, (8, 8), {"kernel_size": 2, "groups": 3, "stride": 2, "bias": False}),
    (2, 3, (3, 4), {"kernel_size": (3, 4)}),  # a single output position
    (2, 3, (5, 5), {"kernel_size": 5, "padding": 2, "stride": 3, "dilation": 1}),
    (1, 2, (6, 6), {"kernel_size": 3, "stride": 3, "padding": 0, "bias": False}),
]


@pytest.mark.parametrize(("c_in", "c_out", "size", "kwargs"), CONV2D, ids=[str(c[3]) for c in CONV2D])
def test_conv2d_equals_torch(torch, backend, c_in, c_out, size, kwargs):
    layer = pn.Conv2D(c_in, c_out, seed=1, dtype=F64, **kwargs)
    x = np.random.default_rng(2).normal(size=(3, c_in, *size))
    _check_against_torch(torch, backend, layer, x)


CONV1D = [
    (3, 4, 9, {"kernel_size": 3}),
    (2, 3, 10, {"kernel_size": 4, "stride": 2, "padding": 1}),
    (2, 2, 11, {"kernel_size": 3, "dilation": 3, "padding": 2}),
    (3, 2, 8, {"kernel_size": 4, "padding": "same"}),  # even kernel
    (2, 3, 8, {"kernel_size": 2, "padding": "same", "dilation": 3}),
    (6, 4, 9, {"kernel_size": 3, "groups": 2, "stride": 3, "bias": False}),
    (3, 6, 7, {"kernel_size": (5,), "groups": 3, "padding": (2,)}),
    (2, 2, 5, {"kernel_size": 5, "padding": "valid"}),
]


@pytest.mark.parametrize(("c_in", "c_out", "length", "kwargs"), CONV1D, ids=[str(c[3]) for c in CONV1D])
def test_conv1d_equals_torch(torch, backend, c_in, c_out, length, kwargs):
    layer = pn.Conv1D(c_in, c_out, seed=3, dtype=F64, **kwargs)
    x = np.random.default_rng(4).normal(size=(4, c_in, length))
    _check_against_torch(torch, backend, layer, x)


def test_one_layer_takes_inputs_of_several_sizes(torch, backend):
    """Sizes are resolved per input shape: each size gets its own, right, result."""
    layer = pn.Conv2D(2, 3, 3, stride=2, padding=1, seed=0, dtype=F64)
    rng = np.random.default_rng(0)
    for n, size in [(3, (8, 8)), (2, (9, 7)), (1, (8, 8)), (4, (5, 6)), (3, (9, 7))]:
        _check_against_torch(torch, backend, layer, rng.normal(size=(n, 2, *size)), seed=n)
    # more sizes than a layer keeps plans for, and the first ones again
    layer = pn.Conv1D(2, 2, 3, padding=1, seed=0, dtype=F64)
    for length in [*range(3, 24), 3, 4]:
        _check_against_torch(torch, backend, layer, rng.normal(size=(2, 2, length)), seed=length)


def test_a_frozen_convolution_gives_no_parameter_gradients(torch, backend):
    layer = pn.Conv2D(2, 3, 3, seed=0, dtype=F64).freeze()
    x = np.random.default_rng(0).normal(size=(2, 2, 5, 5))
    y, backward = layer.apply(_f64(backend, x), True)
    dy = np.random.default_rng(1).normal(size=tuple(y.shape))
    dx, grads = backward(_f64(backend, dy))
    assert grads == {}
    _close(dx, _torch_conv(torch, layer, x, dy)[1])


# ---------------------------------------------------------------- parameters and initialization


def test_the_default_initialization_is_pytorchs(torch):
    layer = pn.Conv2D(6, 8, (3, 5), groups=2, seed=0)
    w, b = pn.to_numpy(layer.weight), pn.to_numpy(layer.bias)
    assert w.shape == (8, 3, 3, 5) and b.shape == (8,)
    assert w.dtype == np.float32 and b.dtype == np.float32
    bound = 1 / math.sqrt(3 * 3 * 5)  # fan_in = in_channels / groups * kh * kw
    theirs = torch.nn.Conv2d(6, 8, (3, 5), groups=2)  # kaiming_uniform(a=sqrt(5)) and its bias rule
    for ours, their in ((w, theirs.weight), (b, theirs.bias)):
        their = their.detach().numpy()
        assert np.abs(ours).max() <= bound and np.abs(their).max() <= bound
    # uniform on the whole interval: its spread is bound / sqrt(3)
    assert np.abs(w).max() > 0.97 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.1 * bound / math.sqrt(3)
    assert abs(w.mean()) < 0.1 * bound
    assert np.abs(b).max() > 0.3 * bound and len(set(b.tolist())) == 8


def test_the_weights_come_from_the_seed_on_every_backend(backend):
    a = pn.Conv1D(3, 4, 3, seed=5)
    with pn.use_backend("numpy"):
        b = pn.Conv1D(3, 4, 3, seed=5)
    c = pn.Conv1D(3, 4, 3, seed=6)
    for key in ("weight", "bias"):
        np.testing.assert_array_equal(pn.to_numpy(a.parameters()[key]), pn.to_numpy(b.parameters()[key]))
        assert not np.array_equal(pn.to_numpy(a.parameters()[key]), pn.to_numpy(c.parameters()[key]))


def test_an_initializer_by_name_draws_the_weight():
    layer = pn.Conv2D(2, 3, 3, init="zeros", seed=0)
    assert not np.any(pn.to_numpy(layer.weight))
    assert np.all(np.abs(pn.to_numpy(layer.bias)) > 0)  # the bias keeps PyTorch's rule
    normal = pn.to_numpy(pn.Conv2D(16, 32, 3, init="he_normal", seed=0).weight)
    assert abs(normal.std() - math.sqrt(2 / (16 * 9))) < 0.05 * math.sqrt(2 / (16 * 9))


def test_explicit_weights_are_taken_as_given():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(4, 1, 3, 3)), rng.normal(size=4)
    layer = pn.Conv2D(2, 4, 3, groups=2, weight=w, bias=b)
    assert pn.to_numpy(layer.weight).dtype == np.float64  # their dtype, as Dense keeps it
    np.testing.assert_array_equal(pn.to_numpy(layer.weight), w)
    np.testing.assert_array_equal(pn.to_numpy(layer.bias), b)
    w[0, 0, 0, 0] = 100.0  # copied: the caller's array is never trained in place
    assert pn.to_numpy(layer.weight)[0, 0, 0, 0] != 100.0
    as32 = pn.Conv2D(2, 4, 3, groups=2, weight=w, bias=b, dtype="float32")
    assert pn.to_numpy(as32.weight).dtype == np.float32 and pn.to_numpy(as32.bias).dtype == np.float32
    no_bias = pn.Conv1D(3, 2, 2, bias=False)
    assert list(no_bias.parameters()) == ["weight"] and no_bias.bias is None
    assert list(pn.Conv1D(3, 2, 2).parameters()) == ["weight", "bias"]


@pytest.mark.parametrize(
    ("cls", "kwargs", "error", "match"),
    [
        (pn.Conv2D, {"kernel_size": 0}, ValueError, "kernel_size must be >= 1"),
        (pn.Conv2D, {"kernel_size": (3, 3, 3)}, ValueError, "kernel_size must be an integer or 2 integers"),
        (pn.Conv2D, {"kernel_size": 2.5}, TypeError, "kernel_size"),
        (pn.Conv2D, {"kernel_size": (3, True)}, TypeError, "kernel_size must hold integers"),
        (pn.Conv1D, {"kernel_size": (3, 3)}, ValueError, "kernel_size must be an integer"),
        (pn.Conv2D, {"stride": 0}, ValueError, "stride must be >= 1"),
        (pn.Conv2D, {"stride": "2"}, TypeError, "stride"),
        (pn.Conv2D, {"dilation": (1, 0)}, ValueError, "dilation must be >= 1"),
        (pn.Conv2D, {"padding": -1}, ValueError, "padding must be >= 0"),
        (pn.Conv2D, {"padding": "full"}, ValueError, "padding must be an integer, a tuple of them, 'valid' or 'same'"),
        (pn.Conv2D, {"padding": "same", "stride": (1, 2)}, ValueError, "padding='same' needs stride=1"),
        (pn.Conv1D, {"padding": "same", "stride": 2}, ValueError, "padding='same' needs stride=1"),
        (pn.Conv2D, {"groups": 3}, ValueError, "groups=3 must divide in_channels=4 and out_channels=6"),
        (pn.Conv2D, {"groups": 4}, ValueError, "groups=4 must divide"),
        (pn.Conv2D, {"groups": 0}, ValueError, "groups must be >= 1"),
        (pn.Conv2D, {"in_channels": 0}, ValueError, "in_channels must be >= 1"),
        (pn.Conv2D, {"out_channels": 1.5}, TypeError, "out_channels must be an integer"),
        (pn.Conv2D, {"bias": None}, TypeError, "bias must be True, False or an array"),
        (pn.Conv2D, {"bias": np.zeros(5)}, ValueError, r"bias must have shape \(6,\)"),
        (pn.Conv2D, {"weight": np.zeros((6, 4, 3))}, ValueError, r"weight must have shape \(6, 4, 3, 3\)"),
        (pn.Conv2D, {"weight": np.zeros((6, 4, 3, 3), bool)}, TypeError, "weight"),
        (pn.Conv2D, {"init": "nope"}, ValueError, "unknown init 'nope'"),
        (pn.Conv2D, {"dtype": "int32"}, TypeError, "dtype"),
        (pn.Conv2D, {"seed": -1}, ValueError, "seed"),
    ],
)
def test_bad_arguments_are_named(cls, kwargs, error, match):
    args = {"in_channels": 4, "out_channels": 6, "kernel_size": 3, **kwargs}
    with pytest.raises(error, match=match):
        cls(**args)


def test_bad_inputs_name_the_layer(backend):
    rng = np.random.default_rng(0)
    model = pn.Sequential(pn.Conv2D(3, 4, 3, seed=0), pn.ReLU())
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2D\) expects 4-D input \(N, C, H, W\), got shape \(2, 3, 5\)"):
        model(rng.normal(size=(2, 3, 5)))
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2D\) expects 3 input channels \(axis 1\), got 2"):
        model(rng.normal(size=(2, 2, 5, 5)))
    with pytest.raises(ValueError, match=r"smaller than the \(dilated\) kernel \(3, 5\)"):
        pn.Conv2D(3, 4, 3, dilation=(1, 2))(rng.normal(size=(2, 3, 5, 4)))
    with pytest.raises(ValueError, match=r"Conv1D expects 3-D input \(N, C, L\)"):
        pn.Conv1D(3, 4, 3)(rng.normal(size=(2, 3, 5, 5)))
    pn.Conv2D(3, 4, 3, padding=1)(rng.normal(size=(2, 3, 1, 1)))  # padding makes room


# ---------------------------------------------------------------- BatchNorm over channels


def _torch_batch_norm(torch, layer, x, dy, training):
    rm = torch.tensor(pn.to_numpy(layer.running_mean))
    rv = torch.tensor(pn.to_numpy(layer.running_var))
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(pn.to_numpy(layer.weight), requires_grad=True)
    tb = torch.tensor(pn.to_numpy(layer.bias), requires_grad=True)
    ty = torch.nn.functional.batch_norm(tx, rm, rv, tw, tb, training=training, momentum=layer.momentum, eps=layer.eps)
    ty.backward(torch.tensor(dy))
    return ty, tx.grad, tw.grad, tb.grad, rm, rv


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("shape", [(5, 3, 7), (4, 3, 5, 6), (1, 3, 2, 1)])
def test_batch_norm_normalizes_channels_as_torch(torch, backend, shape, training):
    rng = np.random.default_rng(len(shape))
    layer = pn.BatchNorm(3, momentum=0.2, eps=1e-3, dtype=F64)
    layer.load_parameters({"weight": rng.normal(size=3), "bias": rng.normal(size=3)})
    layer.load_buffers({"running_mean": rng.normal(size=3), "running_var": rng.uniform(0.5, 2.0, size=3)})
    x, dy = rng.normal(size=shape) * 2.0 + 0.5, rng.normal(size=shape)
    ty, tdx, tdw, tdb, rm, rv = _torch_batch_norm(torch, layer, x, dy, training)
    y, backward = layer.apply(_f64(backend, x), training)
    _close(y, ty, "output")
    dx, grads = backward(_f64(backend, dy))
    _close(dx, tdx, "input gradient")
    _close(grads["weight"], tdw, "weight gradient")
    _close(grads["bias"], tdb, "bias gradient")
    _close(layer.running_mean, rm, "running_mean")
    _close(layer.running_var, rv, "running_var")


def test_batch_norm_refuses_what_it_cannot_normalize(backend):
    rng = np.random.default_rng(0)
    layer = pn.BatchNorm(3)
    with pytest.raises(ValueError, match=r"3-D \(N, C, L\) or 4-D \(N, C, H, W\) input with C = 3 channels; got shape \(2, 4, 5\)"):
        layer(rng.normal(size=(2, 4, 5)))
    with pytest.raises(ValueError, match=r"got shape \(2, 3, 2, 2, 2\)"):
        layer(rng.normal(size=(2, 3, 2, 2, 2)))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer.train()(rng.normal(size=(1, 3, 1, 1)))
    layer.train()(rng.normal(size=(1, 3, 2, 1)))  # two values per channel: statistics exist


# ---------------------------------------------------------------- a small CNN


def _bars(n, seed):
    """8x8 images of a horizontal (0), vertical (1) or diagonal (2) bar, with noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    X = rng.normal(scale=0.3, size=(n, 1, 8, 8))
    for i, (label, at) in enumerate(zip(y, rng.integers(1, 7, size=n))):
        if label == 0:
            X[i, 0, at, 1:7] += 1.5
        elif label == 1:
            X[i, 0, 1:7, at] += 1.5
        else:
            X[i, 0, np.arange(1, 7), np.arange(1, 7)] += 1.5
    return X.astype(np.float32), y


def _cnn(dtype=None, seed=0):
    return pn.Sequential(
        pn.Conv2D(1, 4, 3, padding=1, seed=seed, dtype=dtype),
        pn.ReLU(),
        pn.MaxPool2D(2),
        pn.Flatten(),
        pn.Dense(64, 3, seed=seed + 1, dtype=dtype),
    )


def test_a_cnn_trains_as_in_torch(torch):
    X, y = _bars(24, seed=1)
    X = X.astype(np.float64)
    model = _cnn(F64)
    conv = torch.nn.Conv2d(1, 4, 3, padding=1).double()
    lin = torch.nn.Linear(64, 3).double()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(pn.to_numpy(model[0].weight)))
        conv.bias.copy_(torch.tensor(pn.to_numpy(model[0].bias)))
        lin.weight.copy_(torch.tensor(pn.to_numpy(model[4].weight).T))
        lin.bias.copy_(torch.tensor(pn.to_numpy(model[4].bias)))
    before = {k: pn.to_numpy(v).copy() for k, v in model.parameters().items()}
    model.fit(X, y, loss="cross_entropy", optimizer=pn.Adam(lr=0.01), epochs=2, batch_size=8, shuffle=False, verbose=0)
    moved = max(float(np.abs(pn.to_numpy(v) - before[k]).max()) for k, v in model.parameters().items())
    assert moved > 1e-3
    opt = torch.optim.Adam([*conv.parameters(), *lin.parameters()], lr=0.01)
    F = torch.nn.functional
    for _ in range(2):
        for s in range(0, 24, 8):
            opt.zero_grad()
            h = F.max_pool2d(F.relu(conv(torch.tensor(X[s : s + 8]))), 2)
            F.cross_entropy(lin(torch.flatten(h, 1)), torch.tensor(y[s : s + 8])).backward()
            opt.step()
    _close(model[0].weight, conv.weight, "conv weight")
    _close(model[0].bias, conv.bias, "conv bias")
    _close(model[4].weight, lin.weight.detach().numpy().T, "dense weight")
    _close(model[4].bias, lin.bias, "dense bias")


@pytest.fixture(scope="module")
def trained():
    """A CNN trained (on NumPy) to tell the bars apart, and its test images."""
    X, y = _bars(240, seed=0)
    X_test, y_test = _bars(120, seed=1)
    with pn.use_backend("numpy"):
        model = _cnn()
        model.fit(X, y, loss="cross_entropy", optimizer=pn.Adam(lr=0.02), epochs=12, batch_size=16, seed=0, verbose=0)
    return model, X_test, y_test


def test_a_cnn_learns_the_bars(trained):
    model, X_test, y_test = trained
    accuracy = float(np.mean(pn.to_numpy(model.predict_classes(X_test)) == y_test))
    assert accuracy > 0.9
    untrained = float(np.mean(pn.to_numpy(_cnn().predict_classes(X_test)) == y_test))
    assert untrained < 0.7


def test_a_cnn_trains_on_the_backend_under_test(backend):
    X, y = _bars(96, seed=2)
    model = _cnn()
    history = model.fit(X, y, loss="cross_entropy", optimizer=pn.Adam(lr=0.02), epochs=6, batch_size=16, seed=0, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.6 * losses[0]
    for p in model.parameters().values():
        assert str(pn.backend.backend_of(p)) == str(backend)


def test_a_cnn_saves_loads_and_moves(trained, tmp_path, backend):
    pytest.importorskip("safetensors")
    model, X_test, _ = trained
    expected = pn.to_numpy(model.predict(X_test))
    path = tmp_path / "cnn.safetensors"
    pn.save(model, path)
    loaded = pn.load(path, str(backend), backend.device)
    assert [type(m).__name__ for m in loaded.modules()] == [type(m).__name__ for m in model.modules()]
    assert loaded[0].config() == model[0].config()
    np.testing.assert_allclose(pn.to_numpy(loaded.predict(X_test)), expected, rtol=1e-5, atol=1e-5)
    for name in pn.available_backends():
        moved = model.copy().to(name)
        np.testing.assert_allclose(pn.to_numpy(moved.predict(X_test)), expected, rtol=1e-5, atol=1e-5, err_msg=name)


def test_a_cnn_exports_to_onnx(trained, tmp_path):
    pytest.importorskip("ndonnx")
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, X_test, _ = trained
    with pytest.raises(ValueError, match="pass input_shape="):
        pn.export_onnx(model, tmp_path / "cnn.onnx")  # a convolution takes any image size
    pn.export_onnx(model, tmp_path / "cnn.onnx", input_shape=(1, 8, 8))
    session = ort.InferenceSession(str(tmp_path / "cnn.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["N", 1, 8, 8]
    for n in (1, 7, len(X_test)):
        (got,) = session.run(None, {"input": X_test[:n]})
        np.testing.assert_allclose(got, pn.to_numpy(model.predict(X_test[:n])), rtol=1e-5, atol=1e-5)


def test_a_cnn_compiles_with_jit_on_jax():
    jax = pytest.importorskip("jax")
    dtype = F64 if jax.config.jax_enable_x64 else "float32"
    tol = TOL if dtype == F64 else {"rtol": 2e-5, "atol": 2e-6}
    X, y = _bars(40, seed=3)
    models = []
    for jit in (False, True):
        with pn.use_backend("jax"):
            model = pn.Sequential(
                pn.Conv2D(1, 3, 3, padding="valid", bias=False, seed=0, dtype=dtype),  # batch norm cancels a bias
                pn.BatchNorm(3, dtype=dtype),
                pn.ReLU(),
                pn.AvgPool2D(3, stride=1, padding=1),
                pn.Conv2D(3, 4, 2, padding="same", seed=2, dtype=dtype),
                pn.MaxPool2D(2),
                pn.Flatten(),
                pn.Dense(36, 3, seed=1, dtype=dtype),
            )
        initial = {k: pn.to_numpy(v).copy() for k, v in model.parameters().items()}
        model.fit(X, y, loss="cross_entropy", optimizer=pn.Adam(lr=0.01), epochs=2, batch_size=8, seed=0, verbose=0, jit=jit)
        assert all(not np.allclose(pn.to_numpy(v), initial[k]) for k, v in model.parameters().items())
        models.append(model)
    eager, compiled = models
    assert eager.optimizer_state["step"] == compiled.optimizer_state["step"] == 10
    for (name, a), b in zip(eager.parameters().items(), compiled.parameters().values()):
        np.testing.assert_allclose(pn.to_numpy(a), pn.to_numpy(b), **tol, err_msg=name)
    for (name, a), b in zip(eager.buffers().items(), compiled.buffers().values()):
        np.testing.assert_allclose(pn.to_numpy(a), pn.to_numpy(b), **tol, err_msg=name)
