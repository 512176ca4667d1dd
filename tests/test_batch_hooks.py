"""Batch, test and predict hooks as Keras has them, and the check that lets a loop skip
per-batch calls when no callback implements them."""

import numpy as np
import pytest

import portnn as pn
from portnn.train.callbacks import Callback, needs_batch_hooks

BATCH = ["on_train_batch_begin", "on_train_batch_end", "on_test_batch_begin", "on_test_batch_end",
         "on_predict_batch_begin", "on_predict_batch_end"]
LOOP = ["on_test_begin", "on_test_end", "on_predict_begin", "on_predict_end"]


def test_every_keras_hook_exists_and_does_nothing_by_default():
    cb = Callback()
    for hook in BATCH:
        assert getattr(cb, hook)(0, {"loss": 1.0}) is None
    for hook in LOOP:
        assert getattr(cb, hook)({}) is None
    assert not any(cb.implements(h) for h in BATCH + LOOP)


class _TrainBatches(Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, batch, logs):
        self.seen.append((batch, logs["loss"]))


class _TestBatches(Callback):
    def on_test_batch_begin(self, batch, logs):
        pass


class _OldStyle(Callback):
    """Keras's older on_batch_end, which on_train_batch_end calls."""

    def __init__(self):
        self.seen = []

    def on_batch_end(self, batch, logs):
        self.seen.append(batch)


def test_needs_batch_hooks_only_for_callbacks_that_implement_them(tmp_path):
    epoch_only = [
        pn.EarlyStopping(), pn.ModelCheckpoint(tmp_path / "m.safetensors"), pn.CSVLogger(tmp_path / "l.csv"),
        pn.JSONLogger(tmp_path / "l.jsonl"), pn.LearningRateScheduler(lambda e, lr: lr),
        pn.LambdaCallback(on_epoch_end=lambda e, logs: None), Callback(),
    ]
    for kind in ("train", "test", "predict"):
        assert not needs_batch_hooks(epoch_only, kind)
        assert not needs_batch_hooks([], kind) and not needs_batch_hooks(None, kind)
    assert needs_batch_hooks([*epoch_only, _TrainBatches()])
    assert needs_batch_hooks(_TrainBatches(), "train") and not needs_batch_hooks([_TrainBatches()], "test")
    assert needs_batch_hooks([_TestBatches()], "test") and not needs_batch_hooks([_TestBatches()], "train")
    assert needs_batch_hooks([_OldStyle()], "train")
    with pytest.raises(ValueError, match="kind must be one of"):
        needs_batch_hooks([], "validation")


def test_a_hook_set_on_the_instance_counts():
    cb = Callback()
    cb.on_predict_batch_end = lambda batch, logs: None
    assert needs_batch_hooks([cb], "predict") and not needs_batch_hooks([cb], "train")
    with pytest.raises(ValueError, match="not a callback hook"):
        cb.implements("on_batch_middle")


def test_on_train_batch_end_calls_the_older_on_batch_end():
    cb = _OldStyle()
    cb.on_train_batch_end(4, {"loss": 0.5})
    assert cb.seen == [4]


def test_lambda_callback_takes_every_hook_and_implements_only_those_given():
    calls = []
    cb = pn.LambdaCallback(
        on_train_batch_begin=lambda b, logs: calls.append(("begin", b)),
        on_train_batch_end=lambda b, logs: calls.append(("end", b, logs["loss"])),
        on_test_begin=lambda logs: calls.append("test"),
        on_predict_batch_end=lambda b, logs: calls.append(("predict", b)),
    )
    cb.on_train_batch_begin(0, {})
    cb.on_train_batch_end(0, {"loss": 2.0})
    cb.on_test_begin({})
    cb.on_predict_batch_end(3, {})
    cb.on_epoch_end(0, {})  # not given: nothing
    assert calls == [("begin", 0), ("end", 0, 2.0), "test", ("predict", 3)]
    assert needs_batch_hooks([cb], "train") and needs_batch_hooks([cb], "predict")
    assert not needs_batch_hooks([cb], "test")  # on_test_begin is no batch hook
    with pytest.raises(TypeError, match="on_train_batch_end must be callable"):
        pn.LambdaCallback(on_train_batch_end=3)
    with pytest.raises(TypeError, match="no hook 'on_train_batch_middle'"):
        pn.LambdaCallback(on_train_batch_middle=print)


def test_fit_calls_train_batch_hooks_with_the_index_within_the_epoch(rng):
    X = rng.normal(size=(20, 3))
    y = (X[:, 0] > 0).astype(np.int64)
    seen = []
    cb = pn.LambdaCallback(
        on_train_batch_begin=lambda b, logs: seen.append(("begin", b)),
        on_train_batch_end=lambda b, logs: seen.append(("end", b, isinstance(logs["loss"], float))),
    )
    pn.Sequential(pn.Dense(3, 2, seed=0)).fit(X, y, loss="cross_entropy", epochs=2, batch_size=8, callbacks=[cb], verbose=0)
    one_epoch = [item for b in range(3) for item in (("begin", b), ("end", b, True))]
    assert seen == one_epoch * 2
