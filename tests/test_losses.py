"""Loss values and gradients: against PyTorch, central differences, and their target checks."""

import numpy as np
import pytest

import portnn as pn


def _numeric_grad(loss, pred, target, backend, h=1e-6):
    grad = np.zeros_like(pred)
    for i in np.ndindex(pred.shape):
        up, down = pred.copy(), pred.copy()
        up[i] += h
        down[i] -= h
        grad[i] = (float(loss(backend.asarray(up), target)) - float(loss(backend.asarray(down), target))) / (2 * h)
    return grad


CASES = {
    "mse": (lambda: pn.MSELoss(), "regression"),
    "bce_probs": (lambda: pn.BinaryCrossEntropy(), "binary"),
    "bce_logits": (lambda: pn.BinaryCrossEntropy(from_logits=True), "binary_logits"),
    "ce_indices": (lambda: pn.CrossEntropy(), "indices"),
    "ce_onehot": (lambda: pn.CrossEntropy(), "soft"),
    "ce_unnormalized": (lambda: pn.CrossEntropy(), "unnormalized"),
    "ce_probs": (lambda: pn.CrossEntropy(from_logits=False), "probs"),
}


def _case(kind, rng):
    if kind == "regression":
        return rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    if kind == "binary":
        return rng.uniform(0.05, 0.95, size=(6, 1)), rng.integers(0, 2, size=(6, 1)).astype(float)
    if kind == "binary_logits":
        return rng.normal(size=(6, 2)), rng.uniform(0, 1, size=(6, 2))
    if kind == "indices":
        return rng.normal(size=(6, 4)), rng.integers(0, 4, size=6)
    if kind == "unnormalized":  # target rows summing to anything, a zero row among them
        t = rng.uniform(size=(6, 4)) * rng.uniform(0.2, 3.0, size=(6, 1))
        t[2] = 0.0
        return rng.normal(size=(6, 4)), t
    if kind == "soft":
        t = rng.uniform(size=(6, 4))
        return rng.normal(size=(6, 4)), t / t.sum(axis=1, keepdims=True)
    p = rng.uniform(0.1, 1, size=(6, 4))
    return p / p.sum(axis=1, keepdims=True), rng.integers(0, 4, size=6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient_matches_central_differences(case, rng, backend):
    make, kind = CASES[case]
    loss = make()
    pred, target = _case(kind, rng)
    prepared = loss.prepare_target(target, pred.shape[1], n_samples=pred.shape[0])
    t = backend.asarray(prepared, loss.target_dtype(backend, backend.xp.float64, prepared))
    value, grad = loss.value_and_grad(backend.asarray(pred), t)
    np.testing.assert_allclose(float(value), float(loss(backend.asarray(pred), target)), rtol=1e-12)
    numeric = _numeric_grad(loss, pred, target, backend)
    np.testing.assert_allclose(pn.to_numpy(grad), numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("case", sorted(CASES))
def test_value_matches_torch(case, rng, backend):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    make, kind = CASES[case]
    pred, target = _case(kind, rng)
    got = float(make()(backend.asarray(pred), target))
    p, t = torch.tensor(pred), torch.tensor(target)
    expected = {
        "mse": lambda: tf.mse_loss(p, t),
        "bce_probs": lambda: tf.binary_cross_entropy(p, t),
        "bce_logits": lambda: tf.binary_cross_entropy_with_logits(p, t),
        "ce_indices": lambda: tf.cross_entropy(p, t),
        "ce_onehot": lambda: tf.cross_entropy(p, t),
        "ce_unnormalized": lambda: tf.cross_entropy(p, t),
        "ce_probs": lambda: tf.nll_loss(torch.log(p), t),
    }[case]()
    np.testing.assert_allclose(got, float(expected), rtol=1e-12)


def test_losses_by_name():
    from portnn.losses import get_loss

    assert isinstance(get_loss("mse"), pn.MSELoss)
    assert isinstance(get_loss("binary_cross_entropy"), pn.BinaryCrossEntropy)
    assert isinstance(get_loss("cross_entropy"), pn.CrossEntropy)
    with pytest.raises(ValueError, match="did you mean 'cross_entropy'"):
        get_loss("cross_entropyy")


def test_cross_entropy_rejects_bad_labels():
    loss = pn.CrossEntropy()
    with pytest.raises(ValueError, match=r"labels in \[0, 4\].*3 outputs"):
        loss.prepare_target(np.array([0, 1, 4]), 3)
    with pytest.raises(ValueError, match=r"labels in \[-1, 1\]"):
        loss.prepare_target(np.array([0, 1, -1]), 3)
    with pytest.raises(ValueError, match="non-integer"):
        loss.prepare_target(np.array([0.5, 1.0]), 3)
    with pytest.raises(ValueError, match="3 rows but there are 2 samples"):
        loss.prepare_target(np.array([0, 1, 2]), 3, n_samples=2)
    with pytest.raises(TypeError, match="dtype"):
        loss.prepare_target(np.array(["a", "b"]), 3)
    np.testing.assert_array_equal(loss.prepare_target(np.array([0.0, 2.0]), 3), [0, 2])


def test_binary_cross_entropy_rejects_targets_outside_unit_interval():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pn.BinaryCrossEntropy().prepare_target(np.array([0.0, 2.0]), 1)


def test_regression_target_shapes():
    loss = pn.MSELoss()
    assert loss.prepare_target(np.arange(4.0), 1).shape == (4, 1)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        loss.prepare_target(np.zeros((4, 3)), 2)
    with pytest.raises(ValueError, match="NaN"):
        loss.prepare_target(np.array([1.0, np.nan]), 1)
