"""Training that cannot hang or poison the model: the prefetch worker, updates that overflow,
failed fits that leave the optimizer as it was, and inference from other threads."""

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import portnn as pn
from portnn._guard import arrays_of
from portnn.optim.optimizers import update_trainable
from portnn.data import PREFETCH_THREAD
from portnn.metrics import Metric


def _data(rng, n=100):
    X = rng.normal(size=(n, 4)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(np.int64)


def _model():
    return pn.Sequential(pn.Dense(4, 8, seed=0), pn.Tanh(), pn.Dense(8, 2, seed=1))


def _weights(model):
    return {k: pn.to_numpy(v).copy() for k, v in {**model.parameters(), **model.buffers()}.items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _state(model):
    state = model.optimizer_state
    slots = {f"{p}/{s}": pn.to_numpy(v).copy() for p, d in state["slots"].items() for s, v in d.items()}
    return state["step"], slots


ARGS = {"loss": "cross_entropy", "batch_size": 10, "shuffle": False, "verbose": 0}


class _Boom(Exception):
    pass


class _RaiseAt(pn.SGD):
    """SGD whose ``at``-th update raises."""

    def __init__(self, at, **kwargs):
        super().__init__(**kwargs)
        self.at, self.calls = at, 0

    def update(self, grads, state, params=None, xp=None):
        self.calls += 1
        if self.calls == self.at:
            raise _Boom()
        return super().update(grads, state, params, xp)


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith(PREFETCH_THREAD)]


# ---------------------------------------------------------------- the prefetch worker


@pytest.mark.parametrize("where", ["fit", "predict", "evaluate"])
def test_the_prefetch_worker_stops_when_the_loop_raises_even_while_its_frames_live_on(rng, where):
    X, y = _data(rng)
    kept = []
    with pn.use_backend("array_api_strict"):  # host data on a non-NumPy backend is prefetched
        model = _model()
        model.fit(X, y, epochs=1, **ARGS)
        flaky = pn.Sequential(_FailsOnFourthBatch(4, 1, seed=0))
        assert not _prefetch_threads()
        gc.disable()  # the failed loop's frames (and its batch generator) stay alive
        try:
            for _ in range(3):
                try:
                    if where == "fit":
                        model.fit(X, y, optimizer=_RaiseAt(4, lr=0.1), epochs=1, **ARGS)
                    elif where == "predict":
                        flaky.predict(X, batch_size=10)
                    else:
                        flaky.evaluate(X, y, loss="mse", batch_size=10)
                except _Boom as e:
                    kept.append(e)  # the traceback holds every frame of the failed loop
                assert not _prefetch_threads(), "the worker outlived the loop that raised"
        finally:
            gc.enable()
    assert len(kept) == 3


class _FailsOnFourthBatch(pn.Dense):
    """A Dense layer whose fourth inference batch raises."""

    calls = 0

    def infer(self, x):
        return self.apply(x, False)[0]

    def apply(self, x, training):
        if not training:
            type(self).calls += 1
            if type(self).calls % 4 == 0:
                raise _Boom()
        return super().apply(x, training)


STRESS = textwrap.dedent(
    """
    import gc, random, sys
    import numpy as np
    import portnn as pn

    random.seed(int(sys.argv[1]))
    gc.set_threshold(int(sys.argv[2]), 2, 2)

    class Boom(Exception):
        pass

    class RaiseAt(pn.SGD):
        def __init__(self, at, **kw):
            super().__init__(**kw)
            self.at, self.calls = at, 0
        def update(self, grads, state, params=None, xp=None):
            self.calls += 1
            if random.random() < 0.3:
                gc.collect()
            if self.calls == self.at:
                raise Boom()
            return super().update(grads, state, params, xp)

    pn.set_backend("array_api_strict")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    kept = []
    for i in range(int(sys.argv[3])):
        model = pn.Sequential(pn.Dense(4, 4, seed=0), pn.Tanh(), pn.Dense(4, 2, seed=1))
        try:
            model.fit(X, y, loss="cross_entropy", optimizer=RaiseAt(random.randint(1, 7), lr=0.1),
                      epochs=1, batch_size=8, verbose=0)
        except Boom as e:
            cycle = [e]
            cycle.append(cycle)  # only the collector frees the failed fit's frames, on any thread
        if random.random() < 0.5:
            gc.collect()
        model.predict(X, batch_size=8)
    print("done", i + 1)
    """
)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("threshold", [700, 10])
def test_hundreds_of_failing_prefetching_fits_with_the_collector_forced_never_hang(tmp_path, threshold):
    script = tmp_path / "stress.py"
    script.write_text(STRESS)
    try:
        run = subprocess.run(
            [sys.executable, str(script), "1", str(threshold), "300"],
            capture_output=True, text=True, timeout=240,
        )
    except subprocess.TimeoutExpired:  # pragma: no cover - the failure this test exists for
        pytest.fail("300 failing fits with the collector forced did not finish in 240 s: a hang")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "done 300" in run.stdout
    # a generator finalized on another thread used to report "cannot join current thread"
    assert "Exception ignored" not in run.stderr, run.stderr[-3000:]


def test_ctrl_c_during_a_prefetching_fit_stops_it(tmp_path):
    script = tmp_path / "interrupt.py"
    script.write_text(textwrap.dedent(
        """
        import os, signal, threading
        import numpy as np
        import portnn as pn

        signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
        pn.set_backend("array_api_strict")
        X = np.random.default_rng(0).normal(size=(2000, 4)).astype(np.float32)
        y = (X[:, 0] > 0).astype(np.int64)
        model = pn.Sequential(pn.Dense(4, 8, seed=0), pn.Tanh(), pn.Dense(8, 2, seed=1))
        threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        try:
            model.fit(X, y, loss="cross_entropy", epochs=10_000, batch_size=8, verbose=0)
        except KeyboardInterrupt:
            alive = [t.name for t in threading.enumerate() if t.name.startswith("portnn-prefetch")]
            print("interrupted", len(model.history.epoch) < 10_000, alive)
        """
    ))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert "interrupted True []" in run.stdout, run.stdout + run.stderr[-2000:]


# ---------------------------------------------------------------- updates that overflow


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy reports the overflow as it happens
@pytest.mark.parametrize("optimizer", [lambda: pn.SGD(lr=1e308), lambda: pn.SGD(lr=1e308, momentum=0.9), lambda: pn.Adam(lr=1e308)])
def test_a_finite_gradient_with_an_overflowing_update_is_not_applied(rng, optimizer):
    X, y = _data(rng)
    model = _model()
    model.fit(X, y, optimizer=pn.SGD(lr=0.1, momentum=0.9), epochs=1, **ARGS)
    before = _weights(model)
    with pytest.raises(pn.TrainingDivergedError, match="epoch 0, step 0"):
        model.fit(X, y, optimizer=optimizer(), epochs=1, **ARGS)
    _assert_same(_weights(model), before)
    assert all(np.isfinite(v).all() for v in _weights(model).values())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the rate overflows float32 on its way in
def test_the_compiled_step_also_refuses_an_update_that_overflows(rng, backend):
    if backend != "jax":
        pytest.skip("fit(jit=True) compiles the step on the jax backend")
    X, y = _data(rng)
    model = _model()
    model.fit(X, y, optimizer=pn.SGD(lr=0.1), epochs=1, jit=True, **ARGS)
    before = _weights(model)
    with pytest.raises(pn.TrainingDivergedError, match="epoch 0, step 0"):
        model.fit(X, y, optimizer=pn.SGD(lr=1e308), epochs=1, jit=True, **ARGS)
    _assert_same(_weights(model), before)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_raise_after_finite_steps_keeps_the_last_finite_step_and_its_optimizer_state(rng):
    X, y = _data(rng)
    model, reference = _model(), _model()

    explodes = pn.SGD(lr=lambda step: 0.1 if step < 3 else 1e308, momentum=0.9)  # finite for three steps, then an update that overflows
    with pytest.raises(pn.TrainingDivergedError, match="step 3"):
        model.fit(X, y, optimizer=explodes, epochs=1, **ARGS)
    reference.fit(X[:30], y[:30], optimizer=pn.SGD(lr=0.1, momentum=0.9), epochs=1, **ARGS)
    _assert_same(_weights(model), _weights(reference))
    step, slots = _state(model)
    ref_step, ref_slots = _state(reference)
    assert step == ref_step == 3
    _assert_same(slots, ref_slots)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_skip_batch_skips_a_step_whose_update_overflows(rng):
    X, y = _data(rng)
    model = _model()

    tried = []

    def one_bad_step(step):  # the fifth update overflows (once), the others are plain SGD
        if step == 4 and not tried:
            tried.append(step)
            return 1e308
        return 0.1

    h = model.fit(X, y, optimizer=pn.SGD(lr=one_bad_step), epochs=1, on_nonfinite="skip_batch", **ARGS)
    reference = _model()
    keep = np.r_[0:40, 50:100]
    reference.fit(X[keep], y[keep], optimizer=pn.SGD(lr=0.1), epochs=1, **ARGS)
    _assert_same(_weights(model), _weights(reference))
    assert h["skipped_batches"] == [1.0]
    assert model.optimizer_state["step"] == 9


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_schedule_that_overflows_is_a_clear_error_before_anything_changes(rng):
    X, y = _data(rng)
    model = _model()
    optimizer = pn.SGD(lr=0.1)
    before = _weights(model)
    with pytest.raises(ValueError, match=r"ExponentialLR gives a learning rate of inf at epoch 2"):
        model.fit(X, y, optimizer=optimizer, epochs=5, callbacks=[pn.ExponentialLR(gamma=1e300)], **ARGS)
    _assert_same(_weights(model), before)
    assert optimizer.lr == 0.1 and not hasattr(optimizer, "initial_lr")
    assert getattr(model, "optimizer", None) is None


def test_a_fit_that_diverges_at_its_first_step_leaves_the_optimizer_as_it_was(rng, tmp_path):
    X, y = _data(rng)
    model = _model()
    optimizer = pn.SGD(lr=0.1)
    model.fit(X, y, optimizer=optimizer, epochs=1, **ARGS)
    state_before = _state(model)
    weights_before = _weights(model)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(pn.TrainingDivergedError, match="epoch 1, step 0"):
        model.fit(bad, y, epochs=4, initial_epoch=1, check_finite=False,
                  callbacks=[pn.ExponentialLR(gamma=0.5)], **ARGS)
    assert optimizer.lr == 0.1 and not hasattr(optimizer, "initial_lr")
    assert model.optimizer is optimizer
    _assert_same(_weights(model), weights_before)
    step, slots = _state(model)
    assert step == state_before[0]
    _assert_same(slots, state_before[1])
    pytest.importorskip("safetensors")
    model.save(tmp_path / "m.safetensors")
    assert pn.load(tmp_path / "m.safetensors").optimizer.lr == 0.1


def test_a_fit_that_raises_in_a_callback_before_any_step_leaves_the_optimizer_as_it_was(rng):
    X, y = _data(rng)
    model = _model()
    optimizer = pn.Adam(1e-2)

    class Fails(pn.Callback):
        def on_epoch_begin(self, epoch, logs):
            raise _Boom()

    with pytest.raises(_Boom):
        model.fit(X, y, optimizer=optimizer, epochs=3, callbacks=[pn.StepLR(1, gamma=0.5), Fails()], **ARGS)
    assert optimizer.lr == 1e-2 and not hasattr(optimizer, "initial_lr")


# ---------------------------------------------------------------- inference in other threads


def _threaded_inference_during_fit(model, X, y, probe, read):
    """Run ``read(probe)`` in a thread over and over while ``model.fit`` runs; return the results."""
    results, done = [], threading.Event()

    def reader():
        while not done.is_set() and len(results) < 300:  # bounded: fit still gets the GIL to end
            results.append(read(probe))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        model.fit(X, y, loss="cross_entropy", optimizer=pn.Adam(1e-3), epochs=4, batch_size=4, verbose=0)
    finally:
        done.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    return results


def test_predict_during_fit_sees_the_weights_of_one_whole_step(rng):
    X = rng.normal(size=(400, 32)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    model = pn.Sequential(*[pn.Dense(32, 32, seed=i) for i in range(6)], pn.Dense(32, 2, seed=9))
    probe = np.repeat(rng.normal(size=(1, 32)).astype(np.float32), 64, axis=0)  # identical rows
    results = _threaded_inference_during_fit(model, X, y, probe, lambda p: pn.to_numpy(model.predict(p, batch_size=8)))
    assert len(results) > 3
    for out in results:
        np.testing.assert_array_equal(out, np.repeat(out[:1], len(out), axis=0))


def test_calling_the_model_in_another_thread_during_fit_runs_in_inference_mode(rng):
    X, y = _data(rng, 400)
    model = pn.Sequential(pn.Dense(4, 8, seed=0), pn.Dropout(0.5, seed=0), pn.Dense(8, 2, seed=1))
    assert model.training is False
    probe = np.ones((2, 4), np.float32)
    modes = _threaded_inference_during_fit(model, X, y, probe, lambda p: (model.training, pn.to_numpy(model(p))))
    assert modes and not any(mode for mode, _ in modes)
    for _, out in modes:  # dropout off: the two identical rows agree
        np.testing.assert_array_equal(out[0], out[1])
    assert model.training is False


# ---------------------------------------------------------------- interrupts and checkpoints


class _InterruptAt(Metric):
    """A metric that sends SIGINT to this process after the ``at``-th training step (from 1)."""

    name = "steps"

    def __init__(self, at):
        self.at, self.calls = at, 0
        super().__init__()

    def update(self, batch):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGINT)

    def result(self):
        return float(self.calls)


def _dropout_model():
    return pn.Sequential(pn.Dense(4, 8, seed=0), pn.Dropout(0.3, seed=5), pn.Tanh(), pn.Dense(8, 2, seed=1))


RUN = {"loss": "cross_entropy", "batch_size": 10, "shuffle": True, "seed": 3, "verbose": 0}


def test_an_interrupt_after_a_resume_names_its_checkpoint_by_the_real_epoch(rng, tmp_path):
    pytest.importorskip("safetensors")
    X, y = _data(rng)
    model = _dropout_model()
    model.fit(X, y, optimizer=pn.Adam(1e-2), epochs=3, **RUN)
    pattern = str(tmp_path / "ck-{epoch}.safetensors")
    model.fit(X, y, epochs=3, **RUN, callbacks=[pn.ModelCheckpoint(pattern, monitor="loss")])  # ck-1..ck-3
    early = {e: (tmp_path / f"ck-{e}.safetensors").read_bytes() for e in (1, 2, 3)}
    with pytest.raises(KeyboardInterrupt):  # at step 5 of the fifth epoch (index 4)
        model.fit(X, y, epochs=8, initial_epoch=3, **RUN, metrics=[_InterruptAt(15)],
                  callbacks=[pn.ModelCheckpoint(pattern, monitor="loss")])
    assert model.history.epoch == [3]
    assert model.resume_point["epoch"] == 4 and model.resume_point["step"] == 5
    for e in (1, 2, 3):  # earlier epochs' files are untouched
        assert (tmp_path / f"ck-{e}.safetensors").read_bytes() == early[e]
    assert (tmp_path / "ck-4.safetensors").exists()  # the end of epoch index 3
    assert (tmp_path / "ck-5.safetensors").exists()  # the interrupted epoch index 4
    assert pn.load(tmp_path / "ck-5.safetensors").resume_point == model.resume_point
    assert pn.load(tmp_path / "ck-4.safetensors").resume_point is None


@pytest.mark.parametrize("interrupt_at", [17, 20, 21])
def test_a_run_resumed_from_a_mid_epoch_checkpoint_ends_bit_identical(rng, tmp_path, interrupt_at):
    pytest.importorskip("safetensors")
    X, y = _data(rng)
    reference = _dropout_model()
    reference.fit(X, y, optimizer=pn.Adam(1e-2), epochs=4, **RUN)

    model = _dropout_model()
    pattern = str(tmp_path / "ck-{epoch}.safetensors")
    with pytest.raises(KeyboardInterrupt):
        model.fit(X, y, optimizer=pn.Adam(1e-2), epochs=4, **RUN, metrics=[_InterruptAt(interrupt_at)],
                  callbacks=[pn.ModelCheckpoint(pattern, monitor="loss")])
    epoch, step = divmod(interrupt_at, 10)
    if step == 0:  # the last step of an epoch: the epoch in progress had all its steps
        epoch, step = epoch - 1, 10
    point = model.resume_point
    assert (point["epoch"], point["step"]) == (epoch, step)
    boundary = pn.load(tmp_path / f"ck-{epoch}.safetensors")  # end of the previous epoch, kept
    assert boundary.resume_point is None
    resumed = pn.load(tmp_path / f"ck-{epoch + 1}.safetensors")
    history = resumed.fit(X, y, epochs=4, initial_epoch=epoch, **RUN)
    _assert_same(_weights(resumed), _weights(reference))
    assert resumed.optimizer_state["step"] == reference.optimizer_state["step"] == 40
    assert history["loss"][0] == reference.history["loss"][epoch]
    assert resumed.resume_point is None
    # from the epoch boundary instead, the same end
    boundary.fit(X, y, epochs=4, initial_epoch=epoch, **RUN)
    _assert_same(_weights(boundary), _weights(reference))


def test_a_resume_with_another_batch_size_restarts_the_epoch_with_a_warning(rng):
    X, y = _data(rng)
    model = _dropout_model()
    with pytest.raises(KeyboardInterrupt):
        model.fit(X, y, optimizer=pn.Adam(1e-2), epochs=3, **RUN, metrics=[_InterruptAt(14)])
    with pytest.warns(RuntimeWarning, match="another batch_size; epoch 1 starts again"):
        model.fit(X, y, epochs=2, initial_epoch=1, **{**RUN, "batch_size": 20})
    assert model.resume_point is None


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize("metrics", [3, [3], {"accuracy": 1}, [None]])
def test_metrics_that_are_not_names_or_metrics_are_refused_before_training(rng, metrics):
    X, y = _data(rng)
    model = _model()
    before = _weights(model)
    with pytest.raises(TypeError, match=r"metrics(\[0\])? must be a metric name"):
        model.fit(X, y, epochs=1, metrics=metrics, **ARGS)
    with pytest.raises(TypeError, match=r"metrics(\[0\])? must be a metric name"):
        model.evaluate(X, y, loss="cross_entropy", metrics=metrics)
    _assert_same(_weights(model), before)
    assert getattr(model, "optimizer", None) is None


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_gradient_check_refuses_a_bad_seed_by_name(rng, seed):
    X, y = _data(rng, 4)
    with pytest.raises((TypeError, ValueError), match="seed"):
        pn.gradient_check(_model(), "cross_entropy", X, y, seed=seed)


def test_theweights_lock_lets_readers_share_and_a_writer_wait_for_them():
    from portnn._rwlock import ReadWriteLock

    lock = ReadWriteLock()
    inside, release, wrote = threading.Event(), threading.Event(), threading.Event()

    def reader():
        with lock.reading():
            inside.set()
            release.wait(10)

    def writer():
        with lock.writing():
            wrote.set()

    r = threading.Thread(target=reader)
    r.start()
    assert inside.wait(10)
    with lock.reading():  # a second reader does not wait for the first
        pass
    w = threading.Thread(target=writer)
    w.start()
    assert not wrote.wait(0.2)  # the writer waits for the reader
    release.set()
    assert wrote.wait(10)
    r.join(10), w.join(10)
    with lock.writing(), lock.reading(), lock.writing():  # nested in one thread: no deadlock
        pass


def test_predict_inside_a_training_step_does_not_deadlock(rng):
    X, y = _data(rng)
    model = _model()
    seen = []

    class Predicts(pn.SGD):
        def update(self, grads, state, params=None, xp=None):
            seen.append(pn.to_numpy(model.predict(X[:2])))
            return super().update(grads, state, params, xp)

    model.fit(X, y, optimizer=Predicts(lr=0.1), epochs=1, **ARGS)
    assert len(seen) == 10


@pytest.mark.parametrize("make", [
    lambda: pn.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
    lambda: pn.AdaGrad(lr=0.1, weight_decay=0.1),
    lambda: pn.RMSProp(lr=0.1, momentum=0.9, centered=True),
    lambda: pn.Adam(lr=0.1, amsgrad=True, weight_decay=0.1),
    lambda: pn.AdamW(lr=0.1),
])
def test_an_optimizer_update_never_writes_into_its_arguments(rng, xp, make):
    model = _model()
    params = model.parameters()
    grads = {k: xp.asarray(rng.normal(size=tuple(v.shape)), dtype=v.dtype, device=v.device) for k, v in params.items()}
    opt = make()
    state = opt.init(params, xp)
    for _ in range(2):  # the second step starts from non-zero slots
        before = [pn.to_numpy(a).copy() for a in [*params.values(), *grads.values(), *arrays_of(state)]]
        updates, new_state = opt.update(grads, state, params, xp)
        new_params = pn.optim.apply_updates(params, updates)
        # and fit's own step, which adds an update into the update's own buffers
        stepped, _ = update_trainable(opt, params, list(params), grads, state, xp)
        for k, p in stepped.items():
            np.testing.assert_allclose(pn.to_numpy(p), pn.to_numpy(new_params[k]), rtol=1e-12, atol=1e-15)
        after = [pn.to_numpy(a) for a in [*params.values(), *grads.values(), *arrays_of(state)]]
        for a, b in zip(before, after):
            np.testing.assert_array_equal(a, b)
        params, state = new_params, new_state
