"""Metrics accumulated on the device over batches equal scikit-learn's on the whole data."""

import numpy as np
import pytest

import portnn as pn
from portnn.metrics import Batch, get_metric

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _accumulate(name, pred, target, backend, logits=True, batch=7):
    metric = get_metric(name)
    for start in range(0, pred.shape[0], batch):
        p = backend.asarray(pred[start : start + batch])
        t = backend.asarray(target[start : start + batch])
        metric.update(Batch(p, t, backend.xp, logits))
    return metric.result()


@pytest.fixture
def classification(rng):
    scores = rng.normal(size=(50, 4))
    labels = rng.integers(0, 4, size=50)
    scores[np.arange(50)[:25], labels[:25]] += 2.0  # better than chance
    return scores, labels


def test_accuracy_and_macro_scores_match_sklearn(classification, backend):
    scores, labels = classification
    predicted = scores.argmax(axis=1)
    assert _accumulate("accuracy", scores, labels, backend) == pytest.approx(sklearn_metrics.accuracy_score(labels, predicted))
    for name, fn in [("precision", sklearn_metrics.precision_score), ("recall", sklearn_metrics.recall_score), ("f1", sklearn_metrics.f1_score)]:
        expected = fn(labels, predicted, average="macro", zero_division=0)
        assert _accumulate(name, scores, labels, backend) == pytest.approx(expected, rel=1e-6)
    np.testing.assert_array_equal(
        _accumulate("confusion_matrix", scores, labels, backend),
        sklearn_metrics.confusion_matrix(labels, predicted, labels=range(4)),
    )


def test_top_k_accuracy_matches_sklearn(classification, backend):
    scores, labels = classification
    for k in (1, 2, 3):
        expected = sklearn_metrics.top_k_accuracy_score(labels, scores, k=k, labels=range(4))
        assert _accumulate(f"top_{k}_accuracy", scores, labels, backend) == pytest.approx(expected)


def test_one_hot_targets_and_single_column_outputs(backend, rng):
    scores = rng.normal(size=(30, 3))
    labels = rng.integers(0, 3, size=30)
    onehot = np.eye(3)[labels]
    assert _accumulate("accuracy", scores, onehot, backend) == _accumulate("accuracy", scores, labels, backend)
    logits = rng.normal(size=(30, 1))
    binary = rng.integers(0, 2, size=(30, 1)).astype(float)
    expected = np.mean((logits[:, 0] > 0) == (binary[:, 0] > 0.5))
    assert _accumulate("accuracy", logits, binary, backend, logits=True) == pytest.approx(expected)
    probs = 1 / (1 + np.exp(-logits))
    assert _accumulate("accuracy", probs, binary, backend, logits=False) == pytest.approx(expected)


def test_regression_metrics_match_sklearn(backend, rng):
    target = rng.normal(size=(40, 2))
    pred = target + rng.normal(scale=0.3, size=(40, 2))
    assert _accumulate("mse", pred, target, backend) == pytest.approx(sklearn_metrics.mean_squared_error(target, pred))
    assert _accumulate("mae", pred, target, backend) == pytest.approx(sklearn_metrics.mean_absolute_error(target, pred))
    assert _accumulate("r2", pred, target, backend) == pytest.approx(sklearn_metrics.r2_score(target, pred))


def test_unknown_metric_name():
    with pytest.raises(ValueError, match="did you mean 'accuracy'"):
        get_metric("acuracy")


# ---------------------------------------------------------------- sample weights


def _weighted(name, pred, target, weight, backend, logits=True, multilabel=False, batch=7):
    metric = get_metric(name)
    for start in range(0, pred.shape[0], batch):
        rows = slice(start, start + batch)
        w = None if weight is None else backend.asarray(weight[rows])
        p = backend.asarray(pred[rows])
        metric.update(Batch(p, backend.asarray(target[rows]), backend.xp, logits, weight=w, multilabel=multilabel))
    return metric.result()


@pytest.fixture
def weights(rng):
    w = rng.uniform(0.0, 3.0, size=50)
    w[[3, 10, 11]] = 0.0
    return w


def test_weighted_classification_metrics_match_sklearn(classification, weights, backend):
    scores, labels = classification
    predicted = scores.argmax(axis=1)
    got = _weighted("accuracy", scores, labels, weights, backend)
    assert got == pytest.approx(sklearn_metrics.accuracy_score(labels, predicted, sample_weight=weights), rel=1e-12)
    for average in ("macro", "micro", "weighted"):
        for name, fn in [("precision", sklearn_metrics.precision_score), ("recall", sklearn_metrics.recall_score), ("f1", sklearn_metrics.f1_score)]:
            expected = fn(labels, predicted, average=average, sample_weight=weights, zero_division=0)
            assert _weighted(f"{name}_{average}", scores, labels, weights, backend) == pytest.approx(expected, rel=1e-10), (name, average)
    np.testing.assert_allclose(
        _weighted("confusion_matrix", scores, labels, weights, backend),
        sklearn_metrics.confusion_matrix(labels, predicted, labels=range(4), sample_weight=weights), rtol=1e-12,
    )
    for k in (1, 2):
        expected = sklearn_metrics.top_k_accuracy_score(labels, scores, k=k, labels=range(4), sample_weight=weights)
        assert _weighted(f"top_{k}_accuracy", scores, labels, weights, backend) == pytest.approx(expected, rel=1e-12)


def test_weighted_regression_metrics_match_sklearn(weights, backend, rng):
    target = rng.normal(size=(50, 2))
    pred = target + rng.normal(scale=0.3, size=(50, 2))
    for name, fn in [("mse", sklearn_metrics.mean_squared_error), ("mae", sklearn_metrics.mean_absolute_error), ("r2", sklearn_metrics.r2_score)]:
        assert _weighted(name, pred, target, weights, backend) == pytest.approx(fn(target, pred, sample_weight=weights), rel=1e-10), name


@pytest.mark.parametrize("name", ["accuracy", "f1", "f1_micro", "precision", "recall_weighted", "mse", "mae", "r2", "top_2_accuracy"])
def test_weight_zero_is_leaving_the_sample_out(name, classification, weights, backend):
    scores, labels = classification
    keep = weights > 0
    if name in ("mse", "mae", "r2"):
        labels = np.eye(4)[labels]
    full = _weighted(name, scores, labels, weights, backend)
    assert full == pytest.approx(_weighted(name, scores[keep], labels[keep], weights[keep], backend), rel=1e-12)
    assert full != pytest.approx(_weighted(name, scores, labels, None, backend), rel=1e-6)  # the weights matter


def test_macro_scores_average_over_the_classes_that_occur(backend, rng):
    scores = rng.normal(size=(30, 5))
    scores[:, 4] -= 100.0  # class 4: never predicted and never true
    labels = rng.integers(0, 4, size=30)
    predicted = scores.argmax(axis=1)
    for name, fn in [("precision", sklearn_metrics.precision_score), ("recall", sklearn_metrics.recall_score), ("f1", sklearn_metrics.f1_score)]:
        expected = fn(labels, predicted, average="macro", zero_division=0)
        assert _accumulate(name, scores, labels, backend) == pytest.approx(expected, rel=1e-10)


def test_averages_by_name_and_by_argument():
    assert get_metric("f1_micro").name == "f1_micro" and get_metric("f1_micro").average == "micro"
    assert get_metric("f1").name == "f1" and get_metric("f1").average == "macro"
    assert pn.metrics.F1(average="weighted").name == "f1_weighted"
    with pytest.raises(ValueError, match="average must be one of"):
        pn.metrics.F1(average="samples")
