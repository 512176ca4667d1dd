"""fit's defaults, weights through fit/evaluate, the test and predict hooks, and multi-label
predictions, on every backend."""

import numpy as np
import pytest

import portnn as pn

sklearn_metrics = pytest.importorskip("sklearn.metrics")


class _BatchCounter(pn.Callback):
    def __init__(self):
        self.batches = []

    def on_epoch_begin(self, epoch, logs):
        self.batches.append(0)

    def on_train_batch_end(self, batch, logs):
        self.batches[-1] += 1


def _classifier(n_in=4, n_out=3, dtype="float64"):
    return pn.Sequential(pn.Dense(n_in, 8, seed=0, dtype=dtype), pn.Tanh(), pn.Dense(8, n_out, seed=1, dtype=dtype))


def test_fit_without_batch_size_takes_batches_of_32_and_none_is_the_full_batch(rng):
    X, y = rng.normal(size=(100, 4)), rng.integers(0, 3, size=100)
    counter = _BatchCounter()
    _classifier().fit(X, y, loss="cross_entropy", epochs=2, callbacks=[counter], verbose=0)
    assert counter.batches == [4, 4]  # 32 + 32 + 32 + 4
    counter = _BatchCounter()
    _classifier().fit(X, y, loss="cross_entropy", epochs=1, batch_size=None, callbacks=[counter], verbose=0)
    assert counter.batches == [1]


def test_fit_without_an_optimizer_uses_adam_1e_3_and_then_keeps_it(rng):
    X, y = rng.normal(size=(40, 4)), rng.integers(0, 3, size=40)
    model = _classifier()
    model.fit(X, y, loss="cross_entropy", epochs=1, verbose=0)
    assert isinstance(model.optimizer, pn.Adam) and model.optimizer.lr == 1e-3
    reference = _classifier()
    reference.fit(X, y, loss="cross_entropy", optimizer=pn.Adam(1e-3), epochs=1, verbose=0, seed=None, shuffle=False)
    again = _classifier()
    again.fit(X, y, loss="cross_entropy", epochs=1, verbose=0, shuffle=False)
    for k, v in reference.parameters().items():
        np.testing.assert_allclose(pn.to_numpy(again.parameters()[k]), pn.to_numpy(v), rtol=1e-12)
    kept = model.optimizer
    model.fit(X, y, epochs=1, verbose=0)
    assert model.optimizer is kept and int(model.optimizer_state["step"]) == 4


def test_fit_with_the_defaults_learns_the_digits():
    from portnn.datasets import load_dataset

    X, X_test, y, y_test = load_dataset("digits")
    model = pn.Sequential(pn.Dense(64, 256, seed=0), pn.ReLU(), pn.Dense(256, 10, seed=1))
    model.fit(X, y, loss="cross_entropy", epochs=10, verbose=0, seed=0)
    accuracy = float(np.mean(pn.to_numpy(model.predict_classes(X_test)) == y_test))
    assert accuracy >= 0.95


def test_evaluate_weighs_the_loss_and_equals_scikit_learns_weighted_metrics(rng):
    X, y = rng.normal(size=(50, 4)), rng.integers(0, 3, size=50)
    w = rng.uniform(0.0, 3.0, size=50)
    model = _classifier()
    model.fit(X, y, loss="cross_entropy", epochs=2, verbose=0, seed=0)
    got = model.evaluate(X, y, metrics=["accuracy", "f1_weighted", "precision_macro"], sample_weight=w)
    predicted = pn.to_numpy(model.predict_classes(X))
    assert got["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y, predicted, sample_weight=w), rel=1e-12)
    assert got["f1_weighted"] == pytest.approx(
        sklearn_metrics.f1_score(y, predicted, average="weighted", sample_weight=w), rel=1e-12)
    assert got["precision_macro"] == pytest.approx(
        sklearn_metrics.precision_score(y, predicted, average="macro", sample_weight=w, zero_division=0), rel=1e-12)
    p = pn.to_numpy(model.predict_proba(X))
    per_sample = -np.log(p[np.arange(50), y])
    assert got["loss"] == pytest.approx(np.sum(w * per_sample) / np.sum(w), rel=1e-10)
    assert model.evaluate(X, y, class_weight={0: 2.0}) == pytest.approx(
        model.evaluate(X, y, sample_weight=np.where(y == 0, 2.0, 1.0)), rel=1e-12)


def test_zero_weights_in_evaluate_equal_leaving_the_samples_out(rng):
    X, y = rng.normal(size=(30, 4)), rng.integers(0, 3, size=30)
    w = np.where(np.arange(30) % 3 == 0, 0.0, 1.0)
    model = _classifier()
    model.fit(X, y, loss="cross_entropy", epochs=1, verbose=0, seed=0)
    keep = w > 0
    full = model.evaluate(X, y, metrics=["accuracy"], sample_weight=w, batch_size=7)
    part = model.evaluate(X[keep], y[keep], metrics=["accuracy"])
    assert full["loss"] == pytest.approx(part["loss"], rel=1e-12)
    assert full["accuracy"] == pytest.approx(part["accuracy"], rel=1e-12)


def test_weighted_validation_data_and_validation_split_carry_their_weights(rng):
    X, y = rng.normal(size=(40, 4)), rng.integers(0, 3, size=40)
    wv = rng.uniform(0.5, 2.0, size=10)
    model = _classifier()
    history = model.fit(X[:30], y[:30], loss="cross_entropy", epochs=1, verbose=0, seed=0,
                        validation_data=(X[30:], y[30:], wv))
    assert history["val_loss"][-1] == pytest.approx(model.evaluate(X[30:], y[30:], sample_weight=wv), rel=1e-12)
    w = np.ones(40)
    w[30:] = wv
    model = _classifier()
    history = model.fit(X, y, loss="cross_entropy", epochs=1, verbose=0, seed=0, validation_split=0.25, sample_weight=w)
    assert history["val_loss"][-1] == pytest.approx(model.evaluate(X[30:], y[30:], sample_weight=wv), rel=1e-12)
    with pytest.raises(ValueError, match=r"validation_data's sample_weight must have shape \(10,\)"):
        model.fit(X[:30], y[:30], epochs=1, verbose=0, validation_data=(X[30:], y[30:], np.ones(3)))


def test_bad_weights_are_refused_before_the_model_changes(rng):
    X, y = rng.normal(size=(20, 4)), rng.integers(0, 3, size=20)
    model = _classifier()
    before = {k: pn.to_numpy(v).copy() for k, v in model.parameters().items()}
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(20,\)"):
        model.fit(X, y, loss="cross_entropy", sample_weight=np.ones(19), verbose=0)
    with pytest.raises(ValueError, match="sample_weight must be >= 0"):
        model.fit(X, y, loss="cross_entropy", sample_weight=-np.ones(20), verbose=0)
    with pytest.raises(ValueError, match="class 7"):
        model.fit(X, y, loss="cross_entropy", class_weight={7: 1.0}, verbose=0)
    with pytest.raises(ValueError, match="class_weight needs a classification loss"):
        model.fit(X, rng.normal(size=(20, 3)), loss="mse", class_weight="balanced", verbose=0)
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(pn.to_numpy(v), before[k])
    assert getattr(model, "optimizer", None) is None


def test_evaluate_and_predict_call_the_test_and_predict_hooks(rng):
    X, y = rng.normal(size=(10, 4)), rng.integers(0, 3, size=10)
    calls = []
    cb = pn.LambdaCallback(
        on_test_begin=lambda logs: calls.append("test_begin"),
        on_test_batch_end=lambda b, logs: calls.append(("test_batch", b, isinstance(logs["loss"], float))),
        on_test_end=lambda logs: calls.append(("test_end", round(logs["loss"], 12))),
        on_predict_batch_end=lambda b, logs: calls.append(("predict_batch", b, tuple(logs["outputs"].shape))),
        on_predict_end=lambda logs: calls.append("predict_end"),
    )
    model = _classifier()
    model.fit(X, y, loss="cross_entropy", epochs=1, verbose=0)
    loss = model.evaluate(X, y, batch_size=4, callbacks=[cb])
    assert calls == ["test_begin", *[("test_batch", b, True) for b in range(3)], ("test_end", round(loss, 12))]
    calls.clear()
    model.predict(X, batch_size=6, callbacks=[cb])
    assert calls == [("predict_batch", 0, (6, 3)), ("predict_batch", 1, (4, 3)), "predict_end"]
    calls.clear()
    model.fit(X, y, epochs=2, verbose=0, validation_data=(X, y), callbacks=[cb])
    assert calls.count("test_begin") == 2  # the validation of each epoch


def test_multilabel_models_predict_a_sigmoid_per_label_and_the_0_1_matrix(rng):
    X = rng.normal(size=(30, 3))
    Y = (X @ rng.normal(size=(3, 4)) > 0).astype(np.int64)
    model = pn.Sequential(pn.Dense(3, 4, seed=0, dtype="float64"))
    model.fit(X, Y, loss=pn.BinaryCrossEntropy(from_logits=True), epochs=2, verbose=0)
    scores = pn.to_numpy(model.predict(X))
    np.testing.assert_allclose(pn.to_numpy(model.predict_proba(X)), 1.0 / (1.0 + np.exp(-scores)), rtol=1e-12)
    np.testing.assert_array_equal(pn.to_numpy(model.predict_classes(X)), (scores > 0).astype(np.int64))
    logs = model.evaluate(X, Y, metrics=["accuracy", "subset_accuracy", "f1_micro"])
    predicted = (scores > 0).astype(np.int64)
    assert logs["accuracy"] == pytest.approx(1.0 - sklearn_metrics.hamming_loss(Y, predicted), rel=1e-12)
    assert logs["subset_accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(Y, predicted), rel=1e-12)
    assert logs["f1_micro"] == pytest.approx(sklearn_metrics.f1_score(Y, predicted, average="micro"), rel=1e-12)


def test_class_weights_train_as_pytorch_cross_entropy_weight():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(24, 4)), rng.integers(0, 3, size=24)
    class_weight = {0: 0.5, 1: 2.0, 2: 1.5}
    model = pn.Sequential(pn.Dense(4, 3, seed=0, dtype="float64"))
    start = {k: pn.to_numpy(v).copy() for k, v in model.parameters().items()}
    model.fit(X, y, loss="cross_entropy", optimizer=pn.SGD(lr=0.3), epochs=3, batch_size=8, shuffle=False,
              class_weight=class_weight, verbose=0)
    layer = torch.nn.Linear(4, 3).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(start["0.weight"]).T if start["0.weight"].shape == (4, 3) else torch.tensor(start["0.weight"]))
        layer.bias.copy_(torch.tensor(start["0.bias"]).reshape(-1))
    opt = torch.optim.SGD(layer.parameters(), lr=0.3)
    weight = torch.tensor([class_weight[c] for c in range(3)], dtype=torch.float64)
    for _ in range(3):
        for a in range(0, 24, 8):
            opt.zero_grad()
            out = layer(torch.tensor(X[a : a + 8]))
            torch.nn.functional.cross_entropy(out, torch.tensor(y[a : a + 8]), weight=weight).backward()
            opt.step()
    got = pn.to_numpy(model.parameters()["0.weight"])
    want = layer.weight.detach().numpy()
    np.testing.assert_allclose(got if got.shape == want.shape else got.T, want, rtol=1e-10, atol=1e-12)


def test_a_last_batch_of_one_is_refused_only_where_batch_norm_would_see_one_value(rng):
    y = rng.integers(0, 2, size=33)
    images = rng.normal(size=(33, 1, 6, 6))
    cnn = pn.Sequential(pn.Conv2D(1, 3, 3, seed=0), pn.BatchNorm(3), pn.ReLU(), pn.Flatten(), pn.Dense(48, 2, seed=1))
    history = cnn.fit(images, y, loss="cross_entropy", epochs=1, verbose=0)  # 32 + 1: 16 values per channel
    assert np.isfinite(history["loss"][0])
    mlp = pn.Sequential(pn.Dense(5, 4, seed=0), pn.BatchNorm(4), pn.Dense(4, 2, seed=1))
    with pytest.raises(ValueError, match="the last batch would hold 1 of the 33 samples"):
        mlp.fit(rng.normal(size=(33, 5)), y, loss="cross_entropy", epochs=1, verbose=0)
    assert mlp.optimizer is None
