"""Datasets in a Dask cluster: fit, evaluate and predict on dask.array, batch by batch.

Runs against a small ``dask.distributed.LocalCluster`` (one worker, threads),
so every ``compute`` goes through the distributed scheduler as it would on a
real cluster. Skipped where dask or distributed is missing (the ``dask`` nox
session installs both: ``portnn[dask]``).
"""

from __future__ import annotations

import numpy as np
import pytest

import portnn as pn

da = pytest.importorskip("dask.array", reason="needs dask (pip install portnn[dask])")
distributed = pytest.importorskip("dask.distributed", reason="needs distributed (pip install portnn[dask])")
import dask  # noqa: E402

CHUNK = 50


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as c:
        yield c


def data(n=230, features=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, features))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)
    return X, y


def mlp():
    return pn.Sequential(pn.Dense(5, 8, seed=1, dtype="float64"), pn.Tanh(), pn.Dense(8, 2, seed=2, dtype="float64"))


@pytest.fixture
def rows_per_compute(monkeypatch):
    """Rows of every Dask array computed; fails if one holds more than a chunk and a batch."""
    seen: list[int] = []
    original = dask.compute

    def compute(*args, **kwargs):
        rows = sum(int(a.shape[0]) for a in args if isinstance(a, da.Array) and a.ndim)
        seen.append(rows)
        return original(*args, **kwargs)

    def whole(self, **kwargs):
        seen.append(int(self.shape[0]) if self.ndim else 0)
        return original(self, **kwargs)[0]

    monkeypatch.setattr(dask, "compute", compute)
    monkeypatch.setattr(da.Array, "compute", whole)
    return seen


def test_fit_on_a_dask_array_equals_fit_on_numpy(client, rows_per_compute, backend):
    X, y = data()
    Xd = da.from_array(X, chunks=(CHUNK, 5))
    Xv, yv = data(60, seed=1)
    kwargs = dict(loss="cross_entropy", optimizer=pn.Adam(lr=0.01), epochs=2, batch_size=16, seed=3, verbose=0, metrics=["accuracy"])
    streamed, local = mlp(), mlp()
    h1 = streamed.fit(Xd, y, validation_data=(da.from_array(Xv, chunks=(25, 5)), yv), **kwargs)
    h2 = local.fit(X, y, validation_data=(Xv, yv), **kwargs)
    for key, value in streamed.parameters().items():
        np.testing.assert_allclose(pn.to_numpy(value), pn.to_numpy(local.parameters()[key]), rtol=1e-12, atol=1e-12)
        assert pn.backend.backend_of(value) == backend  # the batches went to the model's backend
    for key in h2.history:
        np.testing.assert_allclose(h1.history[key], h2.history[key], rtol=1e-12)
    # never the whole array at once: at most a chunk's worth of rows (plus a batch) per compute
    assert max(rows_per_compute) <= CHUNK + 16
    assert sum(rows_per_compute) >= 2 * len(X)  # both epochs' rows came from the workers


def test_evaluate_on_a_dask_array(client, backend):
    X, y = data()
    model = mlp()
    model.fit(X, y, loss="cross_entropy", epochs=1, batch_size=32, seed=0, verbose=0)
    expected = model.evaluate(X, y, metrics=["accuracy"], batch_size=40)
    got = model.evaluate(da.from_array(X, chunks=(CHUNK, 5)), y, metrics=["accuracy"], batch_size=40)
    assert got == pytest.approx(expected, rel=1e-12)


def test_predict_on_a_dask_array_is_a_dask_array(client, backend):
    X, _ = data()
    Xd = da.from_array(X, chunks=(CHUNK, 2))  # split across features too: rechunked to whole rows
    model = mlp()
    out = pn.predict(model, Xd, batch_size=7)
    assert isinstance(out, da.Array)
    assert out.chunks == (Xd.chunks[0], (2,))
    np.testing.assert_allclose(out.compute(), pn.to_numpy(pn.predict(model, X)), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        pn.predict_proba(model, Xd).compute(), pn.to_numpy(pn.predict_proba(model, X)), rtol=1e-12, atol=1e-14
    )
    classes = pn.predict_classes(model, Xd)
    assert isinstance(classes, da.Array) and classes.ndim == 1
    np.testing.assert_array_equal(classes.compute(), pn.to_numpy(pn.predict_classes(model, X)))


def test_predict_checks_each_block_on_the_workers(client):
    X, _ = data()
    X[123, 2] = np.nan
    out = pn.predict(mlp(), da.from_array(X, chunks=(CHUNK, 5)))  # lazy: nothing computed yet
    with pytest.raises(ValueError, match="X contains NaN or infinity"):
        out.compute()


def test_bad_dask_input_is_refused_before_training(client):
    X, y = data()
    model = mlp()
    before = {k: pn.to_numpy(v).copy() for k, v in model.parameters().items()}
    bad = X.copy()
    bad[200, 0] = np.inf
    with pytest.raises(ValueError, match="X contains NaN or infinity"):
        model.fit(da.from_array(bad, chunks=(CHUNK, 5)), y, loss="cross_entropy", verbose=0)
    unknown = da.from_array(X, chunks=(CHUNK, 5))
    unknown = unknown[unknown[:, 0] > -100]  # boolean mask: row count unknown until computed
    with pytest.raises(ValueError, match="unknown chunk sizes; call X.compute_chunk_sizes"):
        model.fit(unknown, y, loss="cross_entropy", verbose=0)
    with pytest.raises(ValueError, match="X must be 2-D"):
        model.fit(da.zeros((4, 5, 2), chunks=2), y[:4], loss="cross_entropy", verbose=0)
    with pytest.raises(TypeError, match="X has dtype bool"):
        model.fit(da.from_array(X > 0, chunks=(CHUNK, 5)), y, loss="cross_entropy", verbose=0)
    assert getattr(model, "optimizer_state", None) is None
    for key, value in model.parameters().items():
        np.testing.assert_array_equal(pn.to_numpy(value), before[key])
