"""The fit loop's tools: validation, metrics, callbacks, schedules, progress, resume, penalties."""

import json
import math

import numpy as np
import pytest

import portnn as pn
from portnn.backend import backend_of


def _blobs(rng, n=240, classes=3, features=5):
    centers = rng.normal(scale=3.0, size=(classes, features))
    y = rng.integers(0, classes, size=n)
    return (centers[y] + rng.normal(size=(n, features))).astype(np.float32), y


def _model(seed=0, **dense):
    return pn.Sequential(pn.Dense(5, 16, seed=seed, **dense), pn.ReLU(), pn.Dense(16, 3, seed=seed + 1))


def _weights(model):
    return {k: pn.to_numpy(v).copy() for k, v in model.parameters().items()}


def test_validation_data_and_metrics_are_recorded_per_epoch(rng):
    X, y = _blobs(rng)
    model = _model()
    h = model.fit(X[:200], y[:200], loss="cross_entropy", optimizer=pn.SGD(lr=0.05, momentum=0.9), epochs=4, batch_size=32,
                  validation_data=(X[200:], y[200:]), metrics=["accuracy", "f1"], seed=0, verbose=0)
    for key in ("loss", "accuracy", "f1", "val_loss", "val_accuracy", "val_f1", "lr"):
        assert len(h[key]) == 4, key
    assert len(h.times) == 4 and all(t > 0 for t in h.times)
    result = model.evaluate(X[200:], y[200:], metrics=["accuracy", "f1"])
    assert result["loss"] == pytest.approx(h["val_loss"][-1], rel=1e-5)
    assert result["accuracy"] == pytest.approx(h["val_accuracy"][-1])
    assert h["val_accuracy"][-1] > 0.9


def test_validation_split_takes_the_last_fraction_before_shuffling(rng):
    X, y = _blobs(rng, n=100)
    model = _model()
    h = model.fit(X, y, loss="cross_entropy", epochs=1, validation_split=0.2, verbose=0)
    manual = _model()
    manual_loss = manual.evaluate(X[80:], y[80:], loss="cross_entropy")
    # the validation loss after one epoch differs from the untrained one, but the split is the tail
    assert h["val_loss"][0] != manual_loss
    with pytest.raises(ValueError, match="validation_split"):
        _model().fit(X, y, loss="cross_entropy", validation_split=1.5, verbose=0)
    with pytest.raises(ValueError, match="not both"):
        _model().fit(X, y, loss="cross_entropy", validation_split=0.1, validation_data=(X, y), verbose=0)


def test_resume_with_initial_epoch_equals_straight_training(rng):
    X, y = _blobs(rng, n=96)
    straight = _model()
    straight.fit(X, y, loss="cross_entropy", optimizer=pn.SGD(lr=0.1, momentum=0.9), epochs=6, batch_size=16, seed=42, verbose=0)
    resumed = _model()
    resumed.fit(X, y, loss="cross_entropy", optimizer=pn.SGD(lr=0.1, momentum=0.9), epochs=3, batch_size=16, seed=42, verbose=0)
    h = resumed.fit(X, y, epochs=6, initial_epoch=3, batch_size=16, seed=42, verbose=0)
    assert h.epoch == [3, 4, 5]
    a, b = _weights(straight), _weights(resumed)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_early_stopping_restores_the_best_weights(rng):
    X, y = _blobs(rng, n=120)
    best = {}

    def remember(epoch, logs):
        best.setdefault("value", math.inf)
        if logs["val_loss"] < best["value"]:
            best.update(value=logs["val_loss"], weights=_weights(model))

    model = _model()
    stopper = pn.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    # a learning rate this large makes validation loss bounce, so training stops early
    h = model.fit(X, y, loss="cross_entropy", optimizer=pn.SGD(lr=3.0), epochs=40, batch_size=8, validation_split=0.25,
                  callbacks=[pn.LambdaCallback(on_epoch_end=remember), stopper], seed=1, verbose=0)
    assert len(h.epoch) < 40 and stopper.stopped_epoch is not None
    for k, v in _weights(model).items():
        np.testing.assert_array_equal(v, best["weights"][k])


def test_callback_monitoring_a_missing_key_says_what_is_logged(rng):
    X, y = _blobs(rng, n=40)
    with pytest.raises(KeyError, match="val_loss.*logged: accuracy, loss, lr"):
        _model().fit(X, y, loss="cross_entropy", metrics=["accuracy"], callbacks=[pn.EarlyStopping()], verbose=0)


def test_csv_json_and_lambda_callbacks_log_every_epoch(rng, tmp_path):
    X, y = _blobs(rng, n=60)
    seen = []
    csv_path, json_path = tmp_path / "log.csv", tmp_path / "log.jsonl"
    _model().fit(X, y, loss="cross_entropy", epochs=3, metrics=["accuracy"], verbose=0,
                 callbacks=[pn.CSVLogger(csv_path), pn.JSONLogger(json_path), pn.LambdaCallback(on_epoch_end=lambda e, logs: seen.append(e))])
    assert seen == [0, 1, 2]
    rows = csv_path.read_text().strip().splitlines()
    assert rows[0] == "epoch,accuracy,loss,lr" and len(rows) == 4
    records = [json.loads(line) for line in json_path.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2] and "loss" in records[0]


def test_learning_rate_schedules_follow_pytorch_formulas(rng):
    X, y = _blobs(rng, n=40)
    cases = [
        (pn.StepLR(step_size=2, gamma=0.5), lambda e: 0.1 * 0.5 ** (e // 2)),
        (pn.ExponentialLR(gamma=0.9), lambda e: 0.1 * 0.9**e),
        (pn.CosineAnnealingLR(T_max=5, eta_min=0.01), lambda e: 0.01 + 0.09 * (1 + math.cos(math.pi * e / 5)) / 2),
        (pn.LinearWarmup(2, start_factor=0.5), lambda e: 0.1 * (0.5 + 0.5 * e / 2) if e < 2 else 0.1),
        (pn.LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1)), lambda e: 0.1 / (e + 1)),
    ]
    for schedule, expected in cases:
        h = _model().fit(X, y, loss="cross_entropy", optimizer=pn.SGD(lr=0.1), epochs=5, callbacks=[schedule], verbose=0)
        np.testing.assert_allclose(h["lr"], [expected(e) for e in range(5)], rtol=1e-12, err_msg=repr(schedule))


def test_reduce_lr_on_plateau_lowers_the_rate_when_stuck(rng):
    X, y = _blobs(rng, n=40)
    plateau = pn.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0)  # never "improves" after the first
    h = _model().fit(X, y, loss="cross_entropy", optimizer=pn.SGD(lr=0.1), epochs=4, callbacks=[plateau], verbose=0)
    np.testing.assert_allclose(h["lr"], [0.1, 0.1, 0.05, 0.025])


def test_model_checkpoint_writes_files(rng, tmp_path):
    pytest.importorskip("safetensors")
    X, y = _blobs(rng, n=40)
    model = _model()
    ckpt = pn.ModelCheckpoint(tmp_path / "m-{epoch}.safetensors", monitor="loss", save_best_only=False)
    model.fit(X, y, loss="cross_entropy", epochs=2, callbacks=[ckpt], verbose=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-1.safetensors", "m-2.safetensors"]
    loaded = pn.load(tmp_path / "m-2.safetensors")
    np.testing.assert_allclose(pn.to_numpy(loaded.predict(X)), pn.to_numpy(model.predict(X)), rtol=1e-6)


def test_progress_prints_a_line_per_epoch_when_not_a_terminal(rng, capsys):
    X, y = _blobs(rng, n=40)
    _model().fit(X, y, loss="cross_entropy", epochs=2, metrics=["accuracy"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2") and "accuracy" in lines[1] and "samples/s" in lines[1]
    _model().fit(X, y, loss="cross_entropy", epochs=2, verbose=0)
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="verbose"):
        _model().fit(X, y, loss="cross_entropy", verbose=5)


def test_predict_proba_and_classes(rng, backend_name):
    X, y = _blobs(rng, n=60)
    model = _model()
    model.fit(X, y, loss="cross_entropy", optimizer=pn.SGD(lr=0.05, momentum=0.9), epochs=5, seed=0, verbose=0)
    proba = model.predict_proba(X)
    assert backend_of(proba) == backend_name
    p = pn.to_numpy(proba)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    classes = pn.to_numpy(model.predict_classes(X))
    np.testing.assert_array_equal(classes, p.argmax(axis=1))
    assert int(pn.to_numpy(model.predict_classes(X[0]))) == classes[0]
    binary = pn.Sequential(pn.Dense(5, 1, seed=0), pn.Sigmoid())
    prob1 = pn.to_numpy(binary.predict_proba(X))
    np.testing.assert_array_equal(pn.to_numpy(binary.predict_classes(X)), (prob1[:, 0] > 0.5).astype(int))


def test_l1_l2_penalties_enter_loss_and_gradient(rng):
    X, y = _blobs(rng, n=30)
    plain, penalized = _model(), _model(l1=0.01, l2=0.02)
    value_plain, _ = pn.value_and_grad(plain, "cross_entropy", X, y)
    value_pen, _ = pn.value_and_grad(penalized, "cross_entropy", X, y)
    w = pn.to_numpy(penalized[0].weight).astype(np.float64)
    expected = 0.01 * np.abs(w).sum() + 0.02 * (w**2).sum()
    assert float(value_pen) - float(value_plain) == pytest.approx(expected, rel=1e-4)
    assert pn.gradient_check(penalized, "cross_entropy", X[:8], y[:8]) < 1e-5
    with pytest.raises(ValueError, match="l2"):
        pn.Dense(2, 2, l2=-1)


def test_memory_mapped_npy_is_streamed(rng, tmp_path):
    X, y = _blobs(rng, n=64)
    path = tmp_path / "X.npy"
    np.save(path, X)
    mapped = np.load(path, mmap_mode="r")
    a, b = _model(), _model()
    a.fit(mapped, y, loss="cross_entropy", epochs=2, batch_size=16, seed=3, verbose=0)
    b.fit(str(path), y, loss="cross_entropy", epochs=2, batch_size=16, seed=3, verbose=0)
    c = _model()
    c.fit(X, y, loss="cross_entropy", epochs=2, batch_size=16, seed=3, verbose=0)
    for k, v in _weights(c).items():
        np.testing.assert_array_equal(_weights(a)[k], v)
        np.testing.assert_array_equal(_weights(b)[k], v)


def test_data_already_on_the_backend_trains_like_host_data(rng, backend):
    X, y = _blobs(rng, n=64)
    a, b = _model(), _model()
    a.fit(backend.asarray(X), backend.asarray(y), loss="cross_entropy", epochs=2, batch_size=16, seed=3, verbose=0)
    b.fit(X, y, loss="cross_entropy", epochs=2, batch_size=16, seed=3, verbose=0)
    for k, v in _weights(a).items():
        np.testing.assert_allclose(v, _weights(b)[k], rtol=1e-6, atol=1e-7)


def test_bad_callback_and_metric_arguments(rng):
    X, y = _blobs(rng, n=20)
    model = _model()
    before = _weights(model)
    with pytest.raises(TypeError, match=r"callbacks\[0\]"):
        model.fit(X, y, loss="cross_entropy", callbacks=[lambda: None], verbose=0)
    with pytest.raises(ValueError, match="metric"):
        model.fit(X, y, loss="cross_entropy", metrics=["acuracy"], verbose=0)
    with pytest.raises(ValueError, match="initial_epoch"):
        model.fit(X, y, loss="cross_entropy", epochs=2, initial_epoch=3, verbose=0)
    with pytest.raises(ValueError, match="validation y"):
        model.fit(X, y, loss="cross_entropy", validation_data=(X, y[:5]), verbose=0)
    for k, v in _weights(model).items():
        np.testing.assert_array_equal(v, before[k])
