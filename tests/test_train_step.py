"""The public training step (pn.TrainStep, pn.make_train_step), the strategy plugged into
fit, Dropout's one noise channel, and the model's training state as one object."""

import numpy as np
import pytest

import portnn as pn
from portnn.nn.normalization import dropout_noise
from portnn.train.state import capture, restore
from portnn.train.strategy import Strategy


def _model(dropout=0.0):
    layers = [pn.Dense(4, 6, seed=0, dtype="float64"), pn.Tanh()]
    if dropout:
        layers.append(pn.Dropout(dropout, seed=3))
    return pn.Sequential(*layers, pn.Dense(6, 3, seed=1, dtype="float64"))


def _host(params):
    return {k: pn.to_numpy(v).copy() for k, v in params.items()}


def _data(rng, n=24):
    return rng.normal(size=(n, 4)), rng.integers(0, 3, size=n)


def test_a_step_of_your_own_equals_fits_step(rng):
    X, y = _data(rng)
    by_fit = _model(dropout=0.2)
    by_fit.fit(X, y, loss="cross_entropy", optimizer=pn.Adam(1e-2), epochs=3, batch_size=None, shuffle=False, verbose=0)
    by_hand = _model(dropout=0.2)
    step = pn.make_train_step(by_hand, "cross_entropy", pn.Adam(1e-2))
    for _ in range(3):
        result = step(X, y)
    assert isinstance(result, pn.StepResult) and result.finite is True
    assert tuple(result.predictions.shape) == (24, 3)
    for k, v in _host(by_fit.parameters()).items():
        np.testing.assert_array_equal(pn.to_numpy(by_hand.parameters()[k]), v)
    assert by_hand.optimizer_state["step"] == by_fit.optimizer_state["step"] == 3
    # the step keeps what fit keeps, so fit continues from it
    assert isinstance(by_hand.loss, pn.CrossEntropy) and isinstance(by_hand.optimizer, pn.Adam)
    by_hand.fit(X, y, epochs=1, batch_size=None, shuffle=False, verbose=0)
    assert by_hand.optimizer_state["step"] == 4


def test_a_step_takes_sample_weights_as_fit_does(rng):
    X, y = _data(rng)
    w = rng.uniform(0.0, 2.0, size=24)
    by_fit = _model()
    by_fit.fit(X, y, loss="cross_entropy", optimizer=pn.SGD(0.1), batch_size=None, shuffle=False, sample_weight=w, verbose=0)
    by_hand = _model()
    loss, _, _ = pn.TrainStep(by_hand, "cross_entropy", pn.SGD(0.1))(X, y, sample_weight=w)
    p = pn.to_numpy(pn.functional.softmax(_model().predict(X)))
    assert float(loss) == pytest.approx(np.sum(w * -np.log(p[np.arange(24), y])) / np.sum(w), rel=1e-12)
    for k, v in _host(by_fit.parameters()).items():
        np.testing.assert_array_equal(pn.to_numpy(by_hand.parameters()[k]), v)


def test_a_step_that_is_not_finite_changes_nothing(rng):
    X, y = _data(rng)
    model = pn.Sequential(pn.Dense(4, 3, seed=0, dtype="float64"))
    step = pn.make_train_step(model, "cross_entropy", pn.SGD(1e308))
    before = _host(model.parameters())
    result = step(X * 1e300, y)
    assert result.finite is False
    for k, v in before.items():
        np.testing.assert_array_equal(pn.to_numpy(model.parameters()[k]), v)
    unchecked = pn.make_train_step(_model(), "cross_entropy", pn.SGD(0.1), check_finite=False)
    assert unchecked(X, y).finite is None


def test_make_train_step_checks_its_arguments_first(rng):
    model = _model()
    with pytest.raises(TypeError, match="jit must be True or False"):
        pn.make_train_step(model, "cross_entropy", "adam", jit="yes")
    with pytest.raises(TypeError, match="check_finite must be True or False"):
        pn.make_train_step(model, "cross_entropy", "adam", check_finite=1)
    if str(model.backend) != "jax":
        with pytest.raises(ValueError, match="needs the model on the 'jax' backend"):
            pn.make_train_step(model, "cross_entropy", "adam", jit=True)
    with pytest.raises(TypeError, match="model must be a portnn Module"):
        pn.make_train_step("model", "cross_entropy", "adam")
    assert model.optimizer is None and model.loss is None


def test_the_compiled_step_equals_the_eager_one(rng):
    if str(pn.get_backend()) != "jax":
        pytest.skip("jit=True compiles with jax.jit")
    X, y = _data(rng)
    eager, compiled = _model(dropout=0.3), _model(dropout=0.3)
    steps = [pn.make_train_step(m, "cross_entropy", pn.AdamW(1e-2), jit=j) for m, j in ((eager, False), (compiled, True))]
    for _ in range(3):
        for step in steps:
            step(X, y)
    steps[1].finish()
    for k, v in _host(eager.parameters()).items():
        np.testing.assert_allclose(pn.to_numpy(compiled.parameters()[k]), v, rtol=1e-12, atol=1e-14)


class _Counting(Strategy):
    """One process, counting what the loop asks of its strategy."""

    def __init__(self):
        self.calls = {"start": 0, "value_and_grad": 0, "end_epoch": 0, "finish": 0}

    def start(self, model, base_seed, callbacks, interrupt):
        self.calls["start"] += 1
        return super().start(model, base_seed, callbacks, interrupt)

    def value_and_grad(self, compute, model, xb):
        self.calls["value_and_grad"] += 1
        return super().value_and_grad(compute, model, xb)

    def end_epoch(self, model, metrics):
        self.calls["end_epoch"] += 1

    def finish(self):
        self.calls["finish"] += 1


def test_fit_runs_every_step_through_the_strategy_it_is_given(rng):
    X, y = _data(rng)
    strategy = _Counting()
    plain = _model()
    plain.fit(X, y, loss="cross_entropy", epochs=2, batch_size=10, seed=1, verbose=0)
    model = _model()
    model.fit(X, y, loss="cross_entropy", epochs=2, batch_size=10, seed=1, verbose=0, distributed=strategy)
    assert strategy.calls == {"start": 1, "value_and_grad": 6, "end_epoch": 2, "finish": 1}
    for k, v in _host(plain.parameters()).items():
        np.testing.assert_array_equal(pn.to_numpy(model.parameters()[k]), v)


def test_dropout_draws_come_through_the_one_noise_channel(backend):
    layer = pn.Dropout(0.5, seed=0)
    x = backend.asarray(np.ones((4, 6)))
    asked = []

    def half_kept(dropout, shape):
        asked.append((dropout, shape))
        return np.tile([0.0, 1.0], (shape[0], shape[1] // 2))

    with dropout_noise(half_kept):
        y, _ = layer.apply(x, True)
    assert asked == [(layer, (4, 6))]
    np.testing.assert_array_equal(pn.to_numpy(y), np.tile([0.0, 2.0], (4, 3)))
    # outside the block: the layer's own generator, untouched by the block
    expected = np.random.default_rng(0).random((4, 6)) >= 0.5
    np.testing.assert_array_equal(pn.to_numpy(layer.apply(x, True)[0]) > 0, expected)
    with pytest.raises(TypeError, match="source must be callable"):
        with dropout_noise(3):
            pass


def test_the_training_state_is_one_declared_object(rng):
    X, y = _data(rng)
    model = _model()
    state = model.training_state
    assert (state.loss, state.optimizer, state.optimizer_state, state.history) == (None, None, None, None)
    model.fit(X, y, loss="cross_entropy", epochs=1, verbose=0)
    assert model.training_state is state and state.loss is model.loss and state.history is model.history
    assert state.optimizer_state["step"] == 1
    # a fit that fails before its first step leaves the training state as it was
    kept = state.optimizer_state
    with pytest.raises(ZeroDivisionError):
        model.fit(X, y, optimizer=pn.SGD(0.1), epochs=1, verbose=0,
                  callbacks=[pn.LambdaCallback(on_train_begin=lambda logs: 1 / 0)])
    assert model.optimizer_state is kept and isinstance(model.optimizer, pn.Adam)


def test_capture_and_restore_bring_back_the_whole_state(rng, tmp_path):
    X, y = _data(rng)
    model = _model(dropout=0.3)
    model.fit(X, y, loss="cross_entropy", epochs=1, batch_size=8, seed=0, verbose=0)
    snapshot = capture(model, host=True)
    params, generator = _host(model.parameters()), model[2].extra_state()
    first = model.fit(X, y, epochs=2, batch_size=8, seed=0, verbose=0)
    restore(model, snapshot)
    for k, v in params.items():
        np.testing.assert_array_equal(pn.to_numpy(model.parameters()[k]), v)
    assert model[2].extra_state() == generator and model.optimizer_state["step"] == 3
    again = model.fit(X, y, epochs=2, batch_size=8, seed=0, verbose=0)
    assert again["loss"] == first["loss"]  # the same run again, dropout masks included


def test_a_data_parallel_strategy_shares_out_fits_steps_only(rng):
    pytest.importorskip("mpi4py")
    X, y = _data(rng)
    model = _model()
    step = pn.make_train_step(model, "cross_entropy", pn.SGD(0.1), strategy=pn.DataParallel())
    before = _host(model.parameters())
    with pytest.raises(RuntimeError, match="it was not started"):
        step(X, y)
    for k, v in before.items():
        np.testing.assert_array_equal(pn.to_numpy(model.parameters()[k]), v)


def test_batch_logs_hold_the_epochs_mean_loss_so_far(rng):
    X, y = _data(rng, n=20)
    losses = []
    cb = pn.LambdaCallback(on_train_batch_end=lambda batch, logs: losses.append(logs["loss"]))
    history = _model().fit(X, y, loss="cross_entropy", epochs=2, batch_size=8, callbacks=[cb], verbose=0)
    assert len(losses) == 6
    assert losses[2] == pytest.approx(history["loss"][0], rel=1e-12)
    assert losses[5] == pytest.approx(history["loss"][1], rel=1e-12)
