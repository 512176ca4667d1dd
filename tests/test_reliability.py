"""Numerical faults and interruptions: nothing trained is lost."""

import os
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import portnn as pn
import portnn.functional as F


def _data(rng, n=100):
    X = rng.normal(size=(n, 4)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(np.int64)


def _model(batch_norm=False):
    layers = [pn.Dense(4, 8, seed=0)]
    if batch_norm:
        layers.append(pn.BatchNorm(8))
    return pn.Sequential(*layers, pn.Tanh(), pn.Dense(8, 2, seed=1))


def _weights(model):
    return {k: pn.to_numpy(v).copy() for k, v in {**model.parameters(), **model.buffers()}.items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


ARGS = {"loss": "cross_entropy", "batch_size": 10, "shuffle": False, "verbose": 0}


@pytest.mark.parametrize("batch_norm", [False, True])
def test_divergence_stops_with_the_last_finite_step_and_the_history(rng, batch_norm):
    X, y = _data(rng)
    X[55, 2] = np.nan  # step 5 of epoch 1 will be non-finite
    # one clean epoch, then the poisoned batch at step 5 of epoch 1
    model = _model(batch_norm)
    clean = X.copy()
    clean[55, 2] = 0.0
    model.fit(clean, y, optimizer=pn.SGD(lr=0.1, momentum=0.9), epochs=1, **ARGS)
    reference = _model(batch_norm)
    reference.fit(clean, y, optimizer=pn.SGD(lr=0.1, momentum=0.9), epochs=1, **ARGS)
    reference.fit(clean[:50], y[:50], epochs=1, **ARGS)  # the five finite steps of epoch 1
    with pytest.raises(pn.TrainingDivergedError, match="epoch 1, step 5") as info:
        model.fit(X, y, epochs=3, initial_epoch=1, check_finite=False, **ARGS)
    assert (info.value.epoch, info.value.step) == (1, 5)
    _assert_same(_weights(model), _weights(reference))
    assert model.history.epoch == []  # epoch 1 never completed


def test_skip_batch_trains_on_the_other_batches(rng):
    X, y = _data(rng)
    X[55, 2] = np.nan
    model = _model()
    h = model.fit(X, y, optimizer=pn.SGD(lr=0.1), epochs=1, check_finite=False, on_nonfinite="skip_batch", **ARGS)
    reference = _model()
    keep = np.r_[0:50, 60:100]
    reference.fit(X[keep], y[keep], optimizer=pn.SGD(lr=0.1), epochs=1, **ARGS)
    _assert_same(_weights(model), _weights(reference))
    assert h["skipped_batches"] == [1.0]
    assert np.isfinite(h["loss"][0])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy reports the overflow as it happens
def test_a_learning_rate_that_explodes_is_caught_before_parameters_overflow(rng):
    X = rng.normal(scale=10.0, size=(100, 4)).astype(np.float32)
    y = X @ rng.normal(size=(4, 2)).astype(np.float32)
    model = pn.Sequential(pn.Dense(4, 2, seed=0))
    with pytest.raises(pn.TrainingDivergedError):
        model.fit(X, y, loss="mse", optimizer=pn.SGD(lr=0.5), epochs=50, batch_size=10, verbose=0)
    assert all(np.isfinite(v).all() for v in _weights(model).values())
    assert np.isfinite(pn.to_numpy(model.predict(X))).all()
    with pytest.raises(ValueError, match="on_nonfinite"):
        model.fit(X, y, epochs=1, on_nonfinite="ignore", verbose=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_losses_and_activations_stay_finite_without_warnings_at_extreme_logits(backend, dtype):
    logits = backend.asarray(np.array([[1e4, -1e4], [-1e4, 1e4], [0.0, 0.0]]), backend.dtype(dtype))
    labels = backend.asarray(np.array([1, 0, 1]))
    binary = backend.asarray(np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]), backend.dtype(dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = [
            F.softmax(logits), F.log_softmax(logits), F.sigmoid(logits),
            F.cross_entropy(logits, labels), F.binary_cross_entropy_with_logits(logits, binary),
            F.binary_cross_entropy(F.sigmoid(logits), binary),
            pn.CrossEntropy(from_logits=False)(F.softmax(logits), np.array([1, 0, 1])),
            pn.BinaryCrossEntropy()(F.sigmoid(logits), np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])),
        ]
    for v in values:
        assert np.isfinite(pn.to_numpy(v)).all()
    # confidently wrong is a large finite loss, clamped like PyTorch's BCELoss (log >= -100)
    assert float(F.binary_cross_entropy(F.sigmoid(logits), binary)) == pytest.approx((4 * 100 + 2 * np.log(2)) / 6, rel=1e-6)


def test_float16_inputs_are_computed_in_float32(backend):
    model = _model()
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float16)
    y = model(x)
    assert y.dtype == backend.xp.float32
    np.testing.assert_allclose(pn.to_numpy(y), pn.to_numpy(model(x.astype(np.float32))), rtol=1e-6)


class SignalAt(pn.SGD):
    """SGD that sends a signal to this process during its ``at``-th step."""

    def __init__(self, at, signum, **kwargs):
        super().__init__(**kwargs)
        self.at, self.signum, self.calls = at, signum, 0

    def update(self, grads, state, params=None, xp=None):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        return super().update(grads, state, params, xp)


def test_ctrl_c_stops_after_the_current_step_and_writes_a_checkpoint(rng, tmp_path):
    pytest.importorskip("safetensors")
    X, y = _data(rng)
    model = _model()
    ckpt = pn.ModelCheckpoint(tmp_path / "last-{epoch}.safetensors", save_best_only=True, monitor="loss")
    with pytest.raises(KeyboardInterrupt):
        model.fit(X, y, optimizer=SignalAt(13, signal.SIGINT, lr=0.1), epochs=3, callbacks=[ckpt], **ARGS)
    reference = _model()
    reference.fit(X, y, optimizer=pn.SGD(lr=0.1), epochs=1, **ARGS)  # 10 steps
    reference.fit(X[:30], y[:30], epochs=1, **ARGS)  # 3 more: the interrupted step completed
    _assert_same(_weights(model), _weights(reference))
    assert model.history.epoch == [0]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    _assert_same(_weights(pn.load(ckpt.last_path, custom_objects={"SignalAt": SignalAt})), _weights(reference))


def test_sigterm_ends_the_process_after_a_final_checkpoint(tmp_path):
    pytest.importorskip("safetensors")
    script = textwrap.dedent(f"""
        import os, signal, sys
        import numpy as np
        import portnn as pn
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_reliability import SignalAt, _data, _model, ARGS
        X, y = _data(np.random.default_rng(1))
        model = _model()
        ckpt = pn.ModelCheckpoint({str(tmp_path / "final.safetensors")!r}, monitor="loss")
        model.fit(X, y, optimizer=SignalAt(4, signal.SIGTERM, lr=0.1), epochs=2, callbacks=[ckpt], **ARGS)
        print("fit returned")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGTERM, proc.stderr
    assert "fit returned" not in proc.stdout
    X, y = _data(np.random.default_rng(1))
    reference = _model()
    reference.fit(X[:40], y[:40], optimizer=pn.SGD(lr=0.1), epochs=1, **ARGS)
    _assert_same(_weights(pn.load(tmp_path / "final.safetensors", custom_objects={"SignalAt": SignalAt})), _weights(reference))


def _trained(rng):
    X, y = _data(rng, n=40)
    model = _model()
    model.fit(X, y, optimizer=pn.Adam(1e-2), epochs=2, **ARGS)
    return model, X, y


def _everything(model):
    state = model.optimizer_state
    slots = {f"{k}/{s}": pn.to_numpy(v).copy() for k, d in state["slots"].items() for s, v in d.items()}
    return _weights(model), slots, state["step"], model.optimizer, list(model.history.epoch)


def _assert_everything_kept(model, before):
    after = _everything(model)
    _assert_same(after[0], before[0])
    _assert_same(after[1], before[1])
    assert after[2:] == before[2:]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"seed": -1}, ValueError, "seed"),
        ({"shuffle": "no"}, TypeError, "shuffle"),
        ({"callbacks": [pn.EarlyStopping(monitor="val_loss")]}, KeyError, "val_loss"),
        ({"batch_size": 3}, None, None),  # no BatchNorm here: a last batch of one is fine
    ],
)
def test_bad_fit_arguments_change_nothing_even_with_a_new_optimizer(rng, kwargs, error, match):
    model, X, y = _trained(rng)
    before = _everything(model)
    if error is None:
        model.fit(X[:31], y[:31], optimizer=pn.SGD(lr=0.1), epochs=1, **{**ARGS, **kwargs})
        return
    with pytest.raises(error, match=match):
        model.fit(X, y, optimizer=pn.SGD(lr=0.1), epochs=1, **{**ARGS, **kwargs})
    _assert_everything_kept(model, before)


def test_divergence_at_the_first_step_keeps_the_previous_optimizer_and_history(rng):
    model, X, y = _trained(rng)
    before = _everything(model)
    X[0, 0] = np.nan
    with pytest.raises(pn.TrainingDivergedError, match="epoch 0, step 0"):
        model.fit(X, y, optimizer=pn.SGD(lr=0.1), epochs=1, check_finite=False, **ARGS)
    _assert_everything_kept(model, before)


def test_batch_norm_with_a_last_batch_of_one_is_refused_before_training(rng):
    X, y = _data(rng, n=21)
    model = _model(batch_norm=True)
    before = _weights(model)
    with pytest.raises(ValueError, match="last batch would hold 1"):
        model.fit(X, y, optimizer=pn.SGD(lr=0.1), epochs=1, **ARGS)
    _assert_same(_weights(model), before)


def test_entry_points_name_a_model_that_is_not_one(rng):
    X, y = _data(rng, n=8)
    for call in (
        lambda: pn.value_and_grad("m", "cross_entropy", X, y),
        lambda: pn.evaluate("m", X, y, loss="cross_entropy"),
        lambda: pn.predict("m", X),
        lambda: pn.gradient_check("m", "cross_entropy", X, y),
        lambda: pn.fit("m", X, y, loss="cross_entropy"),
    ):
        with pytest.raises(TypeError, match="model must be a portnn Module"):
            call()
    model = _model()
    for kwargs, match in (({"eps": 0}, "eps"), ({"eps": float("nan")}, "eps"), ({"max_checks": 0}, "max_checks")):
        with pytest.raises(ValueError, match=match):
            pn.gradient_check(model, "cross_entropy", X, y, **kwargs)


def test_a_single_callback_needs_no_list(rng):
    X, y = _data(rng, n=20)
    seen = []
    _model().fit(X, y, epochs=2, callbacks=pn.LambdaCallback(on_epoch_end=lambda e, logs: seen.append(e)), **ARGS)
    assert seen == [0, 1]


def test_float64_data_beyond_float32_is_refused(rng):
    model = _model()
    X = np.ones((4, 4))
    X[1, 2] = 1e300
    for call in (lambda: model.predict(X), lambda: model.evaluate(X, np.zeros(4, dtype=int), loss="cross_entropy"),
                 lambda: model.fit(X, np.zeros(4, dtype=int), loss="cross_entropy", verbose=0)):
        with pytest.raises(ValueError, match="beyond the range of float32"):
            call()
    with pytest.raises(TypeError, match="parameter '0.weight'"):
        model.load_parameters({"0.weight": np.ones((4, 8), dtype=complex)})
