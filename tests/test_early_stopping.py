"""EarlyStopping follows Keras's rule (keras/src/callbacks/early_stopping.py), checked on a
table of monitored sequences with the epoch Keras stops at.

Keras's algorithm, per epoch ``e`` (from 0) at or after ``start_from_epoch``:
``wait += 1``; if the value beats the best by more than ``min_delta``, it becomes the
best and ``wait`` returns to 0 only if it also beats ``baseline`` (when one is given);
otherwise, if ``wait >= patience`` and ``e > 0``, training stops at ``e``.
The derivation of each expected epoch is written beside it.
"""

import math

import numpy as np
import pytest

import portnn as pn

NAN = math.nan

# (values, EarlyStopping keywords, the epoch Keras stops at (None: never), why)
TABLE = [
    ([1, 2, 2, 2, 2, 2], {"patience": 3}, 3, "best at 0; waits 1, 2, 3 at epochs 1-3: 3 >= 3 (the issue's case)"),
    ([1, 2, 2, 2], {"patience": 0}, 1, "epoch 1 is no improvement: wait 1 >= 0"),
    ([1, 2, 2, 2], {"patience": 1}, 1, "epoch 1: wait 1 >= 1 (patience 0 and 1 agree in Keras)"),
    ([1, 2, 2, 2], {"patience": 2}, 2, "waits 1, 2 at epochs 1, 2"),
    ([5, 4, 3, 2, 1], {"patience": 1}, None, "always improving"),
    ([3, 2, 1, 1.5, 0.5, 0.7, 0.8, 0.9], {"patience": 2}, 6, "0.5 at epoch 4 resets; waits 1, 2 at epochs 5, 6"),
    ([1, 1, 1, 1], {"patience": 2}, 2, "equal is no improvement: waits 1, 2"),
    ([1.0, 0.95, 0.8, 0.75, 0.72], {"patience": 1, "min_delta": 0.1}, 1, "0.95 is not below 1.0 - 0.1"),
    ([1.0, 0.95, 0.8, 0.75, 0.72], {"patience": 2, "min_delta": 0.1}, 4, "0.8 resets at 2; 0.75, 0.72 wait 1, 2"),
    ([0.5, 0.6, 0.6, 0.55], {"monitor": "val_accuracy", "patience": 2}, 3, "auto mode maximizes accuracy: waits 1, 2 at 2, 3"),
    ([0.5, 0.4, 0.3], {"monitor": "val_accuracy", "mode": "min", "patience": 1}, None, "mode='min' overrides the name"),
    ([0.9, 0.8, 0.7, 0.6, 0.55], {"patience": 2, "baseline": 0.5}, None, "each epoch improves (returns early) though none beats 0.5"),
    ([0.9, 0.95, 0.97, 0.99], {"patience": 2, "baseline": 0.5}, 1, "epoch 0 improves but misses 0.5 (wait 1); epoch 1: wait 2 >= 2"),
    ([0.9, 0.4, 0.45, 0.46, 0.47], {"patience": 2, "baseline": 0.5}, 3, "0.4 beats the baseline: wait 0; waits 1, 2 at epochs 2, 3"),
    ([1, 2, 3, 3.5, 3.6], {"patience": 1}, 1, "without warm-up: epoch 1 is no improvement"),
    ([1, 2, 3, 3.5, 3.6], {"patience": 1, "start_from_epoch": 2}, 3, "epochs 0, 1 unmonitored; best 3 at 2; epoch 3 waits 1"),
    ([9, 9, 9, 9, 9, 9], {"patience": 0, "start_from_epoch": 3}, 4, "monitoring begins at 3 (an improvement on inf); 4 waits 1"),
    ([NAN, NAN, NAN], {"patience": 1}, 1, "NaN never improves; epoch 0 never stops (wait 1 there), epoch 1 does"),
]


class _Model:
    """What EarlyStopping touches of a model: stop_training, and weights to snapshot."""

    def __init__(self, backend):
        self.inner = pn.Sequential(pn.Dense(2, 1, seed=0))
        self.xp = backend.xp
        self.stop_training = False

    def parameters(self):
        return self.inner.parameters()

    def buffers(self):
        return self.inner.buffers()

    def load_parameters(self, params):
        self.inner.load_parameters(params)

    def load_buffers(self, buffers):
        self.inner.load_buffers(buffers)

    def mark(self, epoch):
        """Make the weights tell which epoch they are from."""
        self.inner.load_parameters({k: v * 0 + epoch for k, v in self.inner.parameters().items()})

    def epoch_of_weights(self):
        return float(pn.to_numpy(next(iter(self.inner.parameters().values()))).ravel()[0])


def _drive(stopper, values, backend, monitor=None):
    """The calls fit makes, epoch by epoch, until the callback stops training."""
    model = _Model(backend)
    stopper.set_model(model)
    stopper.on_train_begin({})
    ran = 0
    for epoch, value in enumerate(values):
        model.mark(epoch)
        stopper.on_epoch_begin(epoch, {})
        stopper.on_epoch_end(epoch, {monitor or stopper.monitor: float(value)})
        ran += 1
        if model.stop_training:
            break
    stopper.on_train_end({})
    return model, ran


@pytest.mark.parametrize(("values", "kwargs", "expected", "why"), TABLE, ids=[row[3][:40] for row in TABLE])
def test_stops_at_the_epoch_keras_stops_at(values, kwargs, expected, why, backend):
    stopper = pn.EarlyStopping(**kwargs)
    _, ran = _drive(stopper, values, backend)
    assert stopper.stopped_epoch == expected, why
    assert ran == (len(values) if expected is None else expected + 1)


def test_restores_the_weights_of_the_best_epoch(backend):
    stopper = pn.EarlyStopping(patience=2, restore_best_weights=True)
    model, _ = _drive(stopper, [3, 1, 2, 2, 2, 0], backend)
    assert stopper.stopped_epoch == 3 and stopper.best_epoch == 1
    assert model.epoch_of_weights() == 1.0
    # training that never stops early ends with its best weights too (as Keras)
    stopper = pn.EarlyStopping(patience=5, restore_best_weights=True)
    model, _ = _drive(stopper, [3, 1, 2], backend)
    assert stopper.stopped_epoch is None and model.epoch_of_weights() == 1.0


def test_restores_the_best_weights_when_none_beats_the_baseline(backend):
    stopper = pn.EarlyStopping(patience=3, baseline=0.1, restore_best_weights=True)
    model, ran = _drive(stopper, [0.9, 0.5, 0.7, 0.8, 0.6], backend)
    assert ran == 3 and stopper.stopped_epoch == 2  # runs `patience` epochs
    assert model.epoch_of_weights() == 1.0


def test_restores_the_first_monitored_epoch_when_nothing_improves(backend):
    stopper = pn.EarlyStopping(patience=1, start_from_epoch=1, restore_best_weights=True)
    model, _ = _drive(stopper, [NAN, NAN, NAN], backend)
    assert stopper.stopped_epoch == 1 and model.epoch_of_weights() == 1.0  # epoch 1: wait 1 >= 1


def test_a_callback_is_reused_afresh(backend):
    stopper = pn.EarlyStopping(patience=1)
    _drive(stopper, [1, 2, 2], backend)
    assert stopper.stopped_epoch == 1
    _drive(stopper, [5, 4, 3], backend)
    assert stopper.stopped_epoch is None and stopper.best == 3


def test_verbose_says_when_it_stops_and_restores(backend, capsys):
    _drive(pn.EarlyStopping(patience=1, verbose=1, restore_best_weights=True), [1, 2, 2], backend)
    out = capsys.readouterr().out
    assert "Epoch 2: early stopping" in out and "best epoch: 1" in out
    _drive(pn.EarlyStopping(patience=1), [1, 2, 2], backend)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"baseline": "1"}, TypeError, "baseline must be a number or None"),
        ({"baseline": math.inf}, ValueError, "baseline must be a finite number"),
        ({"start_from_epoch": -1}, ValueError, "start_from_epoch must be >= 0"),
        ({"start_from_epoch": 1.5}, TypeError, "start_from_epoch must be an integer"),
        ({"verbose": -1}, ValueError, "verbose must be >= 0"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        pn.EarlyStopping(**kwargs)


def test_fit_stops_at_the_keras_epoch(rng):
    """In fit: a callback before it replaces the logged loss with [1, 2, 2, ...]."""
    X = rng.normal(size=(32, 3))
    y = (X[:, 0] > 0).astype(np.int64)
    scripted = [1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    script = pn.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.update(loss=scripted[epoch]))
    stopper = pn.EarlyStopping(monitor="loss", patience=3)
    model = pn.Sequential(pn.Dense(3, 2, seed=0))
    history = model.fit(X, y, loss="cross_entropy", epochs=8, batch_size=8, callbacks=[script, stopper], verbose=0)
    assert stopper.stopped_epoch == 3 and history.epoch == [0, 1, 2, 3]
