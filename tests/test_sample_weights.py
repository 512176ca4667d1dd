"""Weighted losses: ``sum(w * l) / sum(w)`` against PyTorch, float64 central differences,
class weights as PyTorch's ``cross_entropy(weight=)``, and the weights built from
``sample_weight`` / ``class_weight`` as scikit-learn builds them."""

import numpy as np
import pytest
from test_losses import CASES, _case

import portnn as pn
from portnn.weights import balanced_class_weight, class_weight_vector, sample_weights


def _weights(rng, n):
    w = rng.uniform(0.1, 3.0, size=n)
    w[1] = 0.0  # a zero weight among them
    return w


def _on_backend(backend, loss, pred, target, weight):
    prepared = loss.prepare_target(target, pred.shape[1], n_samples=pred.shape[0])
    t = backend.asarray(prepared, loss.target_dtype(backend, backend.xp.float64, prepared))
    w = None if weight is None else backend.asarray(weight)
    return backend.asarray(pred), t, backend.xp, w


def _vg(loss, pred, target, xp, weight):
    return loss.value_and_grad(pred, target, xp, weight=weight)


def _torch_per_sample(case, pred, target):
    """Each sample's unweighted loss (mean over its outputs), by PyTorch."""
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    p, t = torch.tensor(pred), torch.tensor(target)
    return {
        "mse": lambda: tf.mse_loss(p, t, reduction="none").mean(1),
        "bce_probs": lambda: tf.binary_cross_entropy(p, t, reduction="none").mean(1),
        "bce_logits": lambda: tf.binary_cross_entropy_with_logits(p, t, reduction="none").mean(1),
        "ce_indices": lambda: tf.cross_entropy(p, t, reduction="none"),
        "ce_onehot": lambda: tf.cross_entropy(p, t, reduction="none"),
        "ce_unnormalized": lambda: tf.cross_entropy(p, t, reduction="none"),
        "ce_probs": lambda: tf.nll_loss(torch.log(p), t, reduction="none"),
    }[case]().numpy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_weighted_value_is_sum_of_weighted_sample_losses_over_sum_of_weights(case, rng, backend):
    make, kind = CASES[case]
    pred, target = _case(kind, rng)
    w = _weights(rng, pred.shape[0])
    expected = float(np.sum(w * _torch_per_sample(case, pred, target)) / np.sum(w))
    got = float(make()(backend.asarray(pred), target, sample_weight=w))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_weighted_gradient_matches_central_differences(case, rng, backend):
    make, kind = CASES[case]
    loss = make()
    pred, target = _case(kind, rng)
    w = _weights(rng, pred.shape[0])
    value, grad = _vg(loss, *_on_backend(backend, loss, pred, target, w))
    np.testing.assert_allclose(float(value), float(loss(backend.asarray(pred), target, sample_weight=w)), rtol=1e-12)
    h = 1e-6
    numeric = np.zeros_like(pred)
    for i in np.ndindex(pred.shape):
        up, down = pred.copy(), pred.copy()
        up[i] += h
        down[i] -= h
        numeric[i] = (float(loss(backend.asarray(up), target, sample_weight=w))
                      - float(loss(backend.asarray(down), target, sample_weight=w))) / (2 * h)
    np.testing.assert_allclose(pn.to_numpy(grad), numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("case", sorted(CASES))
def test_weight_zero_is_leaving_the_sample_out(case, rng, backend):
    make, kind = CASES[case]
    loss = make()
    pred, target = _case(kind, rng)
    w = _weights(rng, pred.shape[0])
    keep = w > 0
    value, grad = _vg(loss, *_on_backend(backend, loss, pred, target, w))
    sub_value, sub_grad = _vg(loss, *_on_backend(backend, loss, pred[keep], target[keep], w[keep]))
    np.testing.assert_allclose(float(value), float(sub_value), rtol=1e-12)
    grad = pn.to_numpy(grad)
    np.testing.assert_allclose(grad[keep], pn.to_numpy(sub_grad), rtol=1e-12, atol=1e-15)
    assert np.all(grad[~keep] == 0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_equal_weights_are_the_unweighted_loss(case, rng, backend):
    make, kind = CASES[case]
    loss = make()
    pred, target = _case(kind, rng)
    value, grad = _vg(loss, *_on_backend(backend, loss, pred, target, None))
    for scale in (1.0, 2.5):
        w = np.full(pred.shape[0], scale)
        v, g = _vg(loss, *_on_backend(backend, loss, pred, target, w))
        np.testing.assert_allclose(float(v), float(value), rtol=1e-12)
        np.testing.assert_allclose(pn.to_numpy(g), pn.to_numpy(grad), rtol=1e-12, atol=1e-15)


def test_a_batch_of_zero_weights_has_loss_and_gradient_zero(rng, backend):
    loss = pn.CrossEntropy()
    pred, target = _case("indices", rng)
    value, grad = _vg(loss, *_on_backend(backend, loss, pred, target, np.zeros(pred.shape[0])))
    assert float(value) == 0.0 and np.all(pn.to_numpy(grad) == 0)


@pytest.mark.parametrize("from_logits", [True, False])
def test_class_weights_are_torch_cross_entropy_weight(from_logits, rng, backend):
    torch = pytest.importorskip("torch")
    scores, labels = rng.normal(size=(9, 4)), rng.integers(0, 4, size=9)
    class_w = rng.uniform(0.2, 4.0, size=4)
    sample_w = rng.uniform(0.5, 2.0, size=9)
    loss = pn.CrossEntropy(from_logits=from_logits)
    z = torch.tensor(scores, requires_grad=True)
    if from_logits:
        pred, inputs = scores, z
        expected = torch.nn.functional.cross_entropy(z, torch.tensor(labels), weight=torch.tensor(class_w))
    else:
        pred = torch.softmax(torch.tensor(scores), 1).numpy()
        inputs = torch.tensor(pred, requires_grad=True)
        expected = torch.nn.functional.nll_loss(torch.log(inputs), torch.tensor(labels), weight=torch.tensor(class_w))
    expected.backward()
    w = loss.sample_weights(labels, 4, class_weight=dict(enumerate(class_w)))
    np.testing.assert_allclose(w, class_w[labels], rtol=0)
    value, grad = _vg(loss, *_on_backend(backend, loss, pred, labels, w))
    np.testing.assert_allclose(float(value), float(expected.detach()), rtol=1e-12)
    np.testing.assert_allclose(pn.to_numpy(grad), inputs.grad.numpy(), rtol=1e-10, atol=1e-14)
    # sample and class weights multiply: PyTorch's per-sample losses weighted by both
    per_sample = torch.nn.functional.cross_entropy(torch.tensor(scores), torch.tensor(labels), reduction="none").numpy()
    both = loss.sample_weights(labels, 4, sample_weight=sample_w, class_weight=dict(enumerate(class_w)))
    if from_logits:
        got = float(loss(backend.asarray(pred), labels, sample_weight=both))
        np.testing.assert_allclose(got, np.sum(both * per_sample) / np.sum(both), rtol=1e-12)


def test_weighted_sklearn_mlp_losses(rng, backend):
    sk_base = pytest.importorskip("sklearn.neural_network._base")
    pred, target, w = rng.normal(size=(8, 3)), rng.normal(size=(8, 3)), rng.uniform(0.1, 2, size=8)
    got = float(pn.losses.HalfSquaredError()(backend.asarray(pred), target, sample_weight=w))
    np.testing.assert_allclose(got, sk_base.squared_loss(target, pred, w), rtol=1e-12)
    labels = rng.integers(0, 2, size=(8, 3)).astype(float)
    got = float(pn.losses.BinaryLogLoss()(backend.asarray(pred), labels, sample_weight=w))
    np.testing.assert_allclose(got, sk_base.binary_log_loss(labels, 1 / (1 + np.exp(-pred)), w), rtol=1e-10)


# ---------------------------------------------------------------- building the weights


def test_balanced_is_sklearn_compute_class_weight(rng):
    utils = pytest.importorskip("sklearn.utils")
    y = rng.choice([0, 1, 1, 3, 3, 3], size=40)  # class 2 never appears
    expected = utils.compute_class_weight("balanced", classes=np.unique(y), y=y)
    got = balanced_class_weight(y, 4)
    np.testing.assert_allclose(got[np.unique(y)], expected, rtol=1e-15)
    np.testing.assert_allclose(sample_weights(40, class_weight="balanced", labels=y, n_classes=4), got[y])
    dict_w = {0: 2.0, 3: 0.5}
    np.testing.assert_allclose(class_weight_vector(dict_w, y, 4), [2.0, 1.0, 1.0, 0.5])
    expected = utils.compute_sample_weight(dict_w, y)
    np.testing.assert_allclose(sample_weights(40, class_weight=dict_w, labels=y, n_classes=4), expected)


def test_losses_read_the_classes_of_their_targets():
    onehot = np.eye(3)[[0, 2, 2, 1]]
    w = pn.CrossEntropy().sample_weights(onehot, 3, class_weight={2: 3.0})
    np.testing.assert_array_equal(w, [1.0, 3.0, 3.0, 1.0])
    binary = np.array([[0.0], [1.0], [1.0]])
    w = pn.BinaryCrossEntropy().sample_weights(binary, 1, sample_weight=[1, 2, 3], class_weight={1: 0.5})
    np.testing.assert_array_equal(w, [1.0, 1.0, 1.5])
    assert pn.MSELoss().sample_weights(np.zeros((3, 1)), 1) is None
    with pytest.raises(ValueError, match="class_weight needs a classification loss"):
        pn.MSELoss().sample_weights(np.zeros((3, 1)), 1, class_weight="balanced")
    with pytest.raises(ValueError, match="class_weight applies to one label.*multi-label"):
        pn.BinaryCrossEntropy().sample_weights(np.ones((3, 2)), 2, class_weight="balanced")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"class_weight": {5: 1.0}}, ValueError, r"class_weight has class 5, but the classes are 0\.\.2"),
        ({"class_weight": {1: -1.0}}, ValueError, r"class_weight\[1\] must be a finite number >= 0"),
        ({"class_weight": {1: float("nan")}}, ValueError, r"class_weight\[1\] must be a finite"),
        ({"class_weight": {1: "x"}}, TypeError, r"class_weight\[1\] must be a number"),
        ({"class_weight": {"a": 1.0}}, TypeError, "class_weight keys must be class indices"),
        ({"class_weight": "balance"}, ValueError, "class_weight must be a dict or 'balanced'"),
        ({"class_weight": [1.0, 2.0]}, TypeError, "class_weight must be a dict"),
        ({"sample_weight": [1.0, 2.0]}, ValueError, r"sample_weight must have shape \(4,\)"),
        ({"sample_weight": [1.0, -2.0, 1.0, 1.0]}, ValueError, "sample_weight must be >= 0"),
        ({"sample_weight": [1.0, np.inf, 1.0, 1.0]}, ValueError, "sample_weight contains NaN or infinity"),
        ({"sample_weight": ["a", "b", "c", "d"]}, TypeError, "sample_weight"),
        ({"sample_weight": np.zeros(4)}, ValueError, "every sample weight 0"),
        ({"class_weight": {0: 0.0, 1: 0.0, 2: 0.0}}, ValueError, "every sample weight 0"),
    ],
)
def test_bad_weights_are_errors_naming_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        pn.CrossEntropy().sample_weights(np.array([0, 1, 2, 1]), 3, **kwargs)


def test_loss_call_checks_sample_weight(backend, rng):
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(6,\)"):
        pn.MSELoss()(backend.asarray(rng.normal(size=(6, 2))), rng.normal(size=(6, 2)), sample_weight=np.ones(5))


# ---------------------------------------------------------------- in fit (wired by the training engine)


def _fit_model(X, y, **kwargs):
    model = pn.Sequential(pn.Dense(X.shape[1], 3, seed=0, dtype="float64"))
    model.fit(X, y, loss="cross_entropy", optimizer=pn.SGD(lr=0.1), epochs=3, batch_size=None, verbose=0, **kwargs)
    return {k: pn.to_numpy(v) for k, v in model.parameters().items()}


def test_fit_with_zero_weights_equals_fit_without_those_samples(rng):
    X, y = rng.normal(size=(30, 4)), rng.integers(0, 3, size=30)
    w = rng.uniform(0.5, 2.0, size=30)
    w[::4] = 0.0
    keep = w > 0
    full, sub = _fit_model(X, y, sample_weight=w), _fit_model(X[keep], y[keep], sample_weight=w[keep])
    for k in full:
        np.testing.assert_allclose(full[k], sub[k], rtol=1e-10, atol=1e-12)


def test_fit_class_weight_balanced_is_the_per_sample_weights(rng):
    X, y = rng.normal(size=(30, 4)), rng.choice([0, 0, 0, 1, 2], size=30)
    w = balanced_class_weight(y, 3)[y]
    by_class = _fit_model(X, y, class_weight="balanced")
    by_sample = _fit_model(X, y, sample_weight=w)
    for k in by_class:
        np.testing.assert_allclose(by_class[k], by_sample[k], rtol=1e-12)
