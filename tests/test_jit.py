"""fit(jit=True): the whole step compiled by jax.jit equals the eager loop."""

import numpy as np
import pytest

import portnn as pn
from portnn.backend import backend_of

jax = pytest.importorskip("jax")


def _dtype():
    return "float64" if jax.config.jax_enable_x64 else "float32"


def _tol():
    return {"rtol": 1e-10, "atol": 1e-12} if _dtype() == "float64" else {"rtol": 2e-5, "atol": 2e-6}


def _model(dropout=0.3, batch_norm=True):
    with pn.use_backend("jax"):
        layers = [pn.Dense(4, 8, seed=1, use_bias=not batch_norm)]  # batch norm cancels a bias
        if batch_norm:
            layers.append(pn.BatchNorm(8))
        layers.append(pn.ReLU())
        if dropout:
            layers.append(pn.Dropout(dropout, seed=5))
        layers.append(pn.Dense(8, 3, seed=2))
        return pn.Sequential(*layers).to(dtype=_dtype())


def _data(n=30):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)), rng.integers(0, 3, size=n)


def _train(jit, optimizer, callbacks=None, **kwargs):
    X, y = _data()
    model = _model(**kwargs)
    history = model.fit(X, y, loss="cross_entropy", optimizer=optimizer, epochs=3, batch_size=8, seed=3,
                        verbose=0, callbacks=callbacks, metrics=["accuracy"], jit=jit)
    return model, history


def _assert_same(a, b):
    for (name, p), q in zip(a.parameters().items(), b.parameters().values()):
        np.testing.assert_allclose(pn.to_numpy(p), pn.to_numpy(q), **_tol(), err_msg=name)
    for (name, p), q in zip(a.buffers().items(), b.buffers().values()):
        np.testing.assert_allclose(pn.to_numpy(p), pn.to_numpy(q), **_tol(), err_msg=name)


@pytest.mark.parametrize(
    "make_optimizer",
    [lambda: pn.Adam(1e-2), lambda: pn.SGD(0.1, momentum=0.9, nesterov=True), lambda: pn.AdamW(1e-2, clip_norm=0.5),
     lambda: pn.AdaGrad(0.1, lr_decay=0.01)],
    ids=["adam", "sgd-nesterov", "adamw-clipped", "adagrad"],
)
def test_compiled_step_equals_the_eager_loop(make_optimizer):
    eager, h_eager = _train(False, make_optimizer())
    compiled, h_compiled = _train(True, make_optimizer())
    _assert_same(eager, compiled)
    np.testing.assert_allclose(h_compiled["loss"], h_eager["loss"], **_tol())
    np.testing.assert_allclose(h_compiled["accuracy"], h_eager["accuracy"])
    assert compiled.optimizer_state["step"] == eager.optimizer_state["step"] == 12
    assert isinstance(compiled.optimizer_state["step"], int)
    # the parameters are the jax backend's arrays, and training continues eagerly from there
    assert all(backend_of(p) == "jax" for p in compiled.parameters().values())


def test_learning_rate_changes_between_epochs_reach_the_compiled_step():
    halve = lambda: [pn.StepLR(step_size=1, gamma=0.5)]  # noqa: E731
    eager, _ = _train(False, pn.SGD(0.2), callbacks=halve())
    compiled, h = _train(True, pn.SGD(0.2), callbacks=halve())
    assert h["lr"] == [0.2, 0.1, 0.05]
    _assert_same(eager, compiled)


def test_it_compiles_once_per_batch_shape(monkeypatch):
    from portnn.train.jit import CompiledStep

    traces = []
    original = CompiledStep._pure_step

    def counting(self, *args):
        traces.append(1)
        return original(self, *args)

    monkeypatch.setattr(CompiledStep, "_pure_step", counting)
    X, y = _data()
    model = _model(dropout=0.0)
    model.fit(X, y, loss="cross_entropy", optimizer=pn.Adam(), epochs=1, batch_size=8, verbose=0, jit=True)
    after_one = len(traces)
    model.fit(X, y, epochs=4, batch_size=8, verbose=0, jit=True)
    assert after_one == 2  # a full batch of 8 and the last batch of 6
    assert len(traces) == 2 * after_one  # a second fit compiles its own step, and only per shape


def test_a_non_finite_step_is_not_applied():
    X, y = _data()
    X[9, 0] = np.inf  # in the second batch
    model = _model(dropout=0.0)
    model.fit(X[:8], y[:8], loss="cross_entropy", optimizer=pn.Adam(), epochs=1, batch_size=8, verbose=0, jit=True)
    before = {k: pn.to_numpy(v) for k, v in model.parameters().items()}
    buffers = {k: pn.to_numpy(v) for k, v in model.buffers().items()}
    state_step = model.optimizer_state["step"]
    with pytest.raises(pn.TrainingDivergedError):
        model.fit(X, y, epochs=1, batch_size=8, shuffle=False, verbose=0, jit=True, check_finite=False)
    # the first batch was applied, the second (non-finite) was not
    assert model.optimizer_state["step"] == state_step + 1
    skipped = _model(dropout=0.0)
    skipped.load_parameters(before)
    skipped.load_buffers(buffers)
    history = skipped.fit(X, y, loss="cross_entropy", optimizer=pn.Adam(), epochs=1, batch_size=8,
                          shuffle=False, verbose=0, jit=True, check_finite=False, on_nonfinite="skip_batch")
    assert history["skipped_batches"] == [1.0]
    assert all(np.isfinite(pn.to_numpy(p)).all() for p in skipped.parameters().values())
    assert all(np.isfinite(pn.to_numpy(b)).all() for b in skipped.buffers().values())


def test_jit_argument_is_checked_before_training():
    X, y = _data()
    with pn.use_backend("numpy"):
        model = pn.Sequential(pn.Dense(4, 3, seed=0))
    before = pn.to_numpy(model[0].weight).copy()
    with pytest.raises(ValueError, match="jit=True .* 'jax' backend"):
        model.fit(X, y, loss="cross_entropy", jit=True, verbose=0)
    with pytest.raises(TypeError, match="jit must be True or False"):
        model.fit(X, y, loss="cross_entropy", jit="yes", verbose=0)
    np.testing.assert_array_equal(pn.to_numpy(model[0].weight), before)
