"""Functional math against float64 NumPy references and central differences."""

import math
import warnings

import numpy as np
import pytest

import portnn as pn
import portnn.functional as F


def _np_sigmoid(x):
    return np.array([1 / (1 + math.exp(-v)) if v > -700 else 0.0 for v in x.ravel()]).reshape(x.shape)


def _np_gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


REFERENCES = {
    "identity": lambda x: x,
    "step": lambda x: (x > 0).astype(float),
    "sigmoid": _np_sigmoid,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "gelu": _np_gelu,
    "silu": lambda x: x * _np_sigmoid(x),
    "softplus": lambda x: np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20)))),
}


@pytest.fixture
def sample(rng, backend):
    # away from the kinks of relu/step so central differences are exact enough
    x = rng.normal(scale=3.0, size=(7, 5))
    x[np.abs(x) < 1e-3] = 0.5
    return x, backend.asarray(x, backend.xp.float64)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_activation_matches_float64_reference(name, sample):
    x_host, x = sample
    got = pn.to_numpy(getattr(F, name)(x))
    np.testing.assert_allclose(got, REFERENCES[name](x_host), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_derivative_matches_central_differences(name, sample, backend):
    x_host, x = sample
    f = getattr(F, name)
    h = 1e-6
    numeric = (pn.to_numpy(f(backend.asarray(x_host + h))) - pn.to_numpy(f(backend.asarray(x_host - h)))) / (2 * h)
    got = pn.to_numpy(getattr(F, name + "_derivative")(x))
    np.testing.assert_allclose(got, numeric, rtol=1e-6, atol=1e-8)


def test_softmax_of_large_logits_is_finite_and_right(backend, xp):
    x = backend.asarray(np.array([1010.0, 1000.0, 990.0]))
    got = pn.to_numpy(F.softmax(x))
    e = np.exp(np.array([0.0, -10.0, -20.0]))
    np.testing.assert_allclose(got, e / e.sum(), rtol=1e-12)
    np.testing.assert_allclose(pn.to_numpy(F.log_softmax(x)), np.log(e / e.sum()), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_no_overflow_warnings_at_extreme_logits(backend, dtype):
    x = backend.asarray(np.array([[-1e4, -50.0, 0.0, 50.0, 1e4]]), backend.dtype(dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outs = [F.sigmoid(x), F.softmax(x), F.log_softmax(x), F.softplus(x), F.silu(x), F.elu(x)]
        outs.append(F.binary_cross_entropy_with_logits(x, backend.asarray(np.ones((1, 5)), x.dtype)))
        outs.append(F.cross_entropy(x, backend.asarray(np.array([4]))))
    for out in outs:
        assert np.isfinite(pn.to_numpy(out)).all()
    s = pn.to_numpy(F.sigmoid(x))[0]
    assert s[0] == 0.0 and s[-1] == 1.0 and s[2] == 0.5


def test_cross_entropy_with_indices_equals_one_hot(backend, rng):
    logits = backend.asarray(rng.normal(size=(6, 4)))
    labels = backend.asarray(np.array([0, 3, 1, 1, 2, 0]))
    a = pn.to_numpy(F.cross_entropy(logits, labels))
    b = pn.to_numpy(F.cross_entropy(logits, F.one_hot(labels, 4, logits.dtype)))
    np.testing.assert_allclose(a, b, rtol=1e-12)
    z = pn.to_numpy(logits)
    ref = -np.mean(z[np.arange(6), [0, 3, 1, 1, 2, 0]] - np.log(np.exp(z).sum(axis=1)))
    np.testing.assert_allclose(a, ref, rtol=1e-12)


def test_binary_cross_entropy_forms_agree(backend, rng):
    z = rng.normal(size=(10, 1))
    t = (rng.random(size=(10, 1)) > 0.5).astype(float)
    p = 1 / (1 + np.exp(-z))
    ref = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    got_logits = pn.to_numpy(F.binary_cross_entropy_with_logits(backend.asarray(z), backend.asarray(t)))
    got_probs = pn.to_numpy(F.binary_cross_entropy(backend.asarray(p), backend.asarray(t)))
    np.testing.assert_allclose(got_logits, ref, rtol=1e-12)
    np.testing.assert_allclose(got_probs, ref, rtol=1e-12)


def test_mse(backend, rng):
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    got = pn.to_numpy(F.mse(backend.asarray(a), backend.asarray(b)))
    np.testing.assert_allclose(got, np.mean((a - b) ** 2), rtol=1e-12)


def test_arrays_of_two_libraries_in_one_call_are_a_clear_error(backend):
    if backend == "numpy":
        pytest.skip("needs a second library")
    with pytest.raises(TypeError, match="different libraries"):
        F.mse(np.ones(3), backend.asarray(np.ones(3)))
