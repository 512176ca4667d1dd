"""MaxPool1D/2D, AvgPool1D/2D and GlobalAvgPool2D.

PyTorch parity in float64 (the output and the input gradient, to 1e-10) over a grid
of kernels, strides, paddings and sizes that do and do not divide, by both paths
(kernel == stride without padding reshapes; any other one slides strided slices);
ties in max pooling resolved as PyTorch resolves them (the first maximum of a window
in row-major order takes the gradient); arguments and inputs that are refused, by
name. The module contract covers every class through ``tests/test_module_contract.py``.
"""

from __future__ import annotations

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


def _torch_pool(torch, kind, nd, x, dy, kernel, stride, padding):
    f = getattr(torch.nn.functional, f"{kind}_pool{nd}d")
    tx = torch.tensor(x, requires_grad=True)
    ty = f(tx, kernel, stride, padding)
    ty.backward(torch.tensor(dy))
    return ty.detach().numpy(), tx.grad.numpy()


def _check(torch, backend, kind, nd, x, kernel, stride=None, padding=0, seed=0):
    cls = {("max", 2): pn.MaxPool2D, ("max", 1): pn.MaxPool1D, ("avg", 2): pn.AvgPool2D, ("avg", 1): pn.AvgPool1D}
    layer = cls[kind, nd](kernel, stride, padding)
    xb = _f64(backend, x)
    y, backward = layer.apply(xb, True)
    dy = np.random.default_rng(seed).normal(size=tuple(y.shape))
    ty, tdx = _torch_pool(torch, kind, nd, x, dy, kernel, stride, padding)
    assert tuple(y.shape) == ty.shape
    np.testing.assert_allclose(pn.to_numpy(y), ty, **TOL)
    np.testing.assert_allclose(pn.to_numpy(layer.infer(xb)), ty, **TOL)
    dx, grads = backward(_f64(backend, dy))
    assert grads == {}
    np.testing.assert_allclose(pn.to_numpy(dx), tdx, **TOL)
    assert backward(_f64(backend, dy), need_dx=False) == (None, {})
    return pn.to_numpy(dx)


# (spatial size, kernel, stride, padding)
POOL2D = [
    ((8, 8), 2, None, 0),  # reshaped
    ((9, 7), 2, None, 0),  # reshaped, the last row and column no window reaches
    ((6, 9), (2, 3), None, 0),  # reshaped, a rectangular window
    ((7, 8), 3, 3, 0),
    ((9, 7), 3, 2, 1),
    ((9, 7), (3, 2), (2, 1), (1, 1)),
    ((6, 6), 2, 1, 0),  # overlapping windows
    ((5, 8), 4, (1, 3), 2),
    ((3, 3), 3, None, 1),
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize(("size", "kernel", "stride", "padding"), POOL2D, ids=[str(c) for c in POOL2D])
def test_pool2d_equals_torch(torch, backend, kind, size, kernel, stride, padding):
    x = np.random.default_rng(0).normal(size=(3, 2, *size))
    _check(torch, backend, kind, 2, x, kernel, stride, padding)


POOL1D = [(8, 2, None, 0), (9, 2, None, 0), (9, 3, 2, 1), (10, 4, 1, 2), (7, 3, 3, 0), (5, 5, None, 0)]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize(("length", "kernel", "stride", "padding"), POOL1D, ids=[str(c) for c in POOL1D])
def test_pool1d_equals_torch(torch, backend, kind, length, kernel, stride, padding):
    x = np.random.default_rng(1).normal(size=(4, 3, length))
    _check(torch, backend, kind, 1, x, kernel, stride, padding)


@pytest.mark.parametrize(("size", "kernel", "stride", "padding"), POOL2D, ids=[str(c) for c in POOL2D])
def test_max_pool2d_ties_go_where_torch_puts_them(torch, backend, size, kernel, stride, padding):
    # three values only: most windows hold several maxima
    x = np.random.default_rng(2).integers(0, 3, size=(3, 2, *size)).astype(np.float64)
    _check(torch, backend, "max", 2, x, kernel, stride, padding)


@pytest.mark.parametrize(("length", "kernel", "stride", "padding"), POOL1D, ids=[str(c) for c in POOL1D])
def test_max_pool1d_ties_go_where_torch_puts_them(torch, backend, length, kernel, stride, padding):
    x = np.random.default_rng(3).integers(0, 2, size=(4, 3, length)).astype(np.float64)
    _check(torch, backend, "max", 1, x, kernel, stride, padding)


def test_the_first_maximum_in_row_major_order_takes_the_gradient(backend):
    x = np.array([[[[1.0, 5.0, 2.0, 2.0], [5.0, 5.0, 2.0, 2.0], [0.0, 0.0, 7.0, 1.0], [0.0, 7.0, 7.0, 7.0]]]])
    for layer in (pn.MaxPool2D(2), pn.MaxPool2D(2, stride=2, padding=1)):
        y, backward = layer.apply(backend.asarray(x, backend.dtype("float32")), True)
        dx = pn.to_numpy(backward(backend.xp.ones_like(y))[0])
        if layer.padding == (0, 0):
            np.testing.assert_array_equal(pn.to_numpy(y), [[[[5.0, 2.0], [7.0, 7.0]]]])
            expected = np.zeros((4, 4))
            expected[0, 1] = expected[0, 2] = expected[2, 2] = expected[3, 1] = 1.0
        else:  # windows of rows (-1, 0), (1, 2), (3, 4) and the same columns
            np.testing.assert_array_equal(pn.to_numpy(y), [[[[1.0, 5.0, 2.0], [5.0, 7.0, 2.0], [0.0, 7.0, 7.0]]]])
            expected = np.zeros((4, 4))
            for r, c in [(0, 0), (0, 1), (0, 3), (1, 0), (2, 2), (1, 3), (3, 0), (3, 1), (3, 3)]:
                expected[r, c] = 1.0
        np.testing.assert_array_equal(dx[0, 0], expected)


def test_global_average_pooling(backend, float64_ok):
    dtype = F64 if float64_ok else "float32"
    x = np.random.default_rng(0).normal(size=(3, 4, 5, 6))
    layer = pn.GlobalAvgPool2D()
    xb = backend.asarray(x, backend.dtype(dtype))
    y, backward = layer.apply(xb, True)
    assert tuple(y.shape) == (3, 4)
    tol = TOL if dtype == F64 else {"rtol": 1e-5, "atol": 1e-6}
    np.testing.assert_allclose(pn.to_numpy(y), x.mean(axis=(2, 3)), **tol)
    dy = np.random.default_rng(1).normal(size=(3, 4))
    dx, _ = backward(backend.asarray(dy, backend.dtype(dtype)))
    np.testing.assert_allclose(pn.to_numpy(dx), np.broadcast_to(dy[:, :, None, None] / 30, x.shape), **tol)
    with pytest.raises(ValueError, match=r"GlobalAvgPool2D expects 4-D input \(N, C, H, W\), got shape \(3, 4, 5\)"):
        layer(x[..., 0])


@pytest.mark.parametrize(
    ("cls", "args", "error", "match"),
    [
        (pn.MaxPool2D, (0,), ValueError, "kernel_size must be >= 1"),
        (pn.AvgPool2D, ((2, 2, 2),), ValueError, "kernel_size must be an integer or 2 integers"),
        (pn.MaxPool1D, ((2, 2),), ValueError, "kernel_size must be an integer"),
        (pn.AvgPool1D, (2.0,), TypeError, "kernel_size"),
        (pn.MaxPool2D, (2, 0), ValueError, "stride must be >= 1"),
        (pn.AvgPool2D, (2, (1, -1)), ValueError, "stride must be >= 1"),
        (pn.MaxPool2D, (2, None, -1), ValueError, "padding must be >= 0"),
        (pn.MaxPool2D, (2, None, 2), ValueError, "padding must be at most half of kernel_size"),
        (pn.AvgPool2D, ((3, 2), 1, (1, 2)), ValueError, "padding must be at most half of kernel_size"),
        (pn.MaxPool1D, (3, 1, "same"), TypeError, "padding"),
    ],
)
def test_bad_arguments_are_named(cls, args, error, match):
    with pytest.raises(error, match=match):
        cls(*args)


def test_bad_inputs_name_the_layer(backend):
    rng = np.random.default_rng(0)
    model = pn.Sequential(pn.ReLU(), pn.MaxPool2D(2))
    with pytest.raises(ValueError, match=r"layer 1 \(MaxPool2D\) expects 4-D input \(N, C, H, W\), got shape \(2, 3, 4\)"):
        model(rng.normal(size=(2, 3, 4)))
    with pytest.raises(ValueError, match=r"AvgPool1D expects 3-D input \(N, C, L\)"):
        pn.AvgPool1D(2)(rng.normal(size=(2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"smaller than the pooling window \(3, 3\)"):
        pn.MaxPool2D(3)(rng.normal(size=(2, 3, 2, 5)))
    assert tuple(pn.MaxPool2D(3, padding=1)(rng.normal(size=(2, 3, 1, 5))).shape) == (2, 3, 1, 2)
