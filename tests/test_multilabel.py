"""Multi-label targets (independent 0/1 labels, a binary cross-entropy over several outputs):
per-label, subset and F1 metrics equal scikit-learn's, weighted or not; ``accuracy`` never
compares argmaxes of independent labels; predictions are 0/1 matrices and per-label sigmoids."""

import numpy as np
import pytest

import portnn as pn
from portnn.metrics import Batch, get_metric, is_multilabel, predicted_labels, predicted_probabilities

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.fixture
def multilabel(rng):
    """Logits and 0/1 targets of 5 labels; the last label is never true and never predicted."""
    target = (rng.uniform(size=(60, 5)) < [0.3, 0.5, 0.7, 0.2, 0.0]).astype(float)
    logits = 2.0 * (target - 0.5) + rng.normal(scale=1.2, size=(60, 5))
    logits[:, 4] = -5.0
    weights = rng.uniform(0.0, 2.0, size=60)
    weights[[0, 7]] = 0.0
    return logits, target, weights


def _run(name, pred, target, backend, weight=None, logits=True, multilabel=True, batch=9):
    metric = get_metric(name)
    for start in range(0, pred.shape[0], batch):
        rows = slice(start, start + batch)
        w = None if weight is None else backend.asarray(weight[rows])
        metric.update(Batch(backend.asarray(pred[rows]), backend.asarray(target[rows]), backend.xp, logits, weight=w, multilabel=multilabel))
    return metric.result()


@pytest.mark.parametrize("weighted", [False, True])
def test_multilabel_metrics_match_sklearn(multilabel, weighted, backend):
    logits, target, weights = multilabel
    w = weights if weighted else None
    predicted = (logits > 0).astype(float)
    per_label = 1.0 - sklearn_metrics.hamming_loss(target, predicted, sample_weight=w)
    assert _run("binary_accuracy", logits, target, backend, w) == pytest.approx(per_label, rel=1e-12)
    assert _run("accuracy", logits, target, backend, w) == pytest.approx(per_label, rel=1e-12)
    subset = sklearn_metrics.accuracy_score(target, predicted, sample_weight=w)
    assert _run("subset_accuracy", logits, target, backend, w) == pytest.approx(subset, rel=1e-12)
    for average in ("micro", "macro", "weighted"):
        for name, fn in [("f1", sklearn_metrics.f1_score), ("precision", sklearn_metrics.precision_score), ("recall", sklearn_metrics.recall_score)]:
            expected = fn(target, predicted, average=average, sample_weight=w, zero_division=0)
            got = _run(f"{name}_{average}", logits, target, backend, w)
            assert got == pytest.approx(expected, rel=1e-10), (name, average)
    assert _run("f1", logits, target, backend, w) == pytest.approx(
        sklearn_metrics.f1_score(target, predicted, average="macro", sample_weight=w, zero_division=0), rel=1e-10
    )


def test_probabilities_threshold_at_one_half_and_logits_at_zero(multilabel, backend):
    logits, target, _ = multilabel
    probabilities = 1.0 / (1.0 + np.exp(-logits))
    for name in ("binary_accuracy", "subset_accuracy", "f1_micro", "f1_macro"):
        assert _run(name, probabilities, target, backend, logits=False) == _run(name, logits, target, backend)


def test_accuracy_never_compares_argmaxes_of_independent_labels(multilabel, backend):
    logits, target, _ = multilabel
    argmax_accuracy = np.mean(logits.argmax(1) == target.argmax(1))
    per_label = _run("accuracy", logits, target, backend)
    assert per_label != pytest.approx(argmax_accuracy)
    # a batch not marked multi-label whose rows hold several labels: an error, not an argmax
    with pytest.raises(ValueError, match="several labels.*binary_accuracy"):
        _run("accuracy", logits, target, backend, multilabel=False)


def test_single_label_metrics_refuse_multilabel_batches(multilabel, backend):
    logits, target, _ = multilabel
    for name in ("confusion_matrix", "top_2_accuracy"):
        with pytest.raises(ValueError, match="one class per sample.*multi-label"):
            _run(name, logits, target, backend)


def test_multilabel_is_a_binary_cross_entropy_over_several_outputs():
    assert is_multilabel(pn.BinaryCrossEntropy(), 3)
    assert is_multilabel(pn.BinaryCrossEntropy(from_logits=True), 2)
    assert is_multilabel(pn.losses.BinaryLogLoss(), 4)
    assert not is_multilabel(pn.BinaryCrossEntropy(), 1)  # one output: a binary problem
    assert not is_multilabel(pn.CrossEntropy(), 3)
    assert not is_multilabel(pn.MSELoss(), 3)


def test_predictions_are_label_matrices_and_per_label_sigmoids(multilabel, backend):
    logits, _, _ = multilabel
    xp = backend.xp
    out = backend.asarray(logits)
    classes = pn.to_numpy(predicted_labels(out, xp, True, multilabel=True))
    np.testing.assert_array_equal(classes, (logits > 0).astype(classes.dtype))
    assert classes.shape == logits.shape and classes.dtype.kind == "i"
    proba = pn.to_numpy(predicted_probabilities(out, xp, True, multilabel=True))
    np.testing.assert_allclose(proba, 1.0 / (1.0 + np.exp(-logits)), rtol=1e-12)
    # probabilities stay as they are; one label per sample keeps argmax and softmax
    np.testing.assert_array_equal(pn.to_numpy(predicted_probabilities(out, xp, False, multilabel=True)), logits)
    softmax = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(pn.to_numpy(predicted_probabilities(out, xp, True)), softmax, rtol=1e-12)
    np.testing.assert_array_equal(pn.to_numpy(predicted_labels(out, xp, True)), logits.argmax(1))


def test_binary_cross_entropy_trains_on_multilabel_targets_with_weights(multilabel, backend):
    logits, target, weights = multilabel
    loss = pn.BinaryCrossEntropy(from_logits=True)
    torch = pytest.importorskip("torch")
    per_sample = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(logits), torch.tensor(target), reduction="none").mean(1).numpy()
    got = float(loss(backend.asarray(logits), target, sample_weight=weights))
    assert got == pytest.approx(np.sum(weights * per_sample) / np.sum(weights), rel=1e-12)


def test_fit_reports_per_label_accuracy_for_multilabel_targets(multilabel, backend):
    logits, target, _ = multilabel
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    model = pn.Sequential(pn.Dense(3, 5, seed=0))
    model.fit(X, target, loss=pn.BinaryCrossEntropy(from_logits=True), epochs=1, metrics=["accuracy", "subset_accuracy"], verbose=0)
    predicted = pn.to_numpy(model.predict_classes(X))
    assert predicted.shape == target.shape
    logs = model.evaluate(X, target, metrics=["accuracy"])
    assert logs["accuracy"] == pytest.approx(1.0 - sklearn_metrics.hamming_loss(target, predicted))
