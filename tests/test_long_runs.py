"""Long runs: memory stays flat over many steps; predict is safe from several threads."""

import os
import resource
import threading

import numpy as np
import pytest

import portnn as pn


def _rss_mib() -> float:
    """Current resident set size (Linux /proc), falling back to the peak."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _soak(steps: int, backend) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 8)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    model = pn.Sequential(pn.Dense(8, 16, seed=0), pn.ReLU(), pn.Dropout(0.1, seed=0), pn.Dense(16, 2, seed=1))
    epochs = steps // 8  # 8 steps of 8 samples per epoch
    seen = []
    callback = pn.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch))
    model.fit(X, y, loss="cross_entropy", optimizer=pn.Adam(1e-3), epochs=epochs // 10, batch_size=8, verbose=0)
    before = _rss_mib()
    h = model.fit(X, y, loss="cross_entropy", optimizer=pn.Adam(1e-3), epochs=epochs, batch_size=8, verbose=0,
                  metrics=["accuracy"], callbacks=[callback])
    grown = _rss_mib() - before
    assert len(h.epoch) == epochs and len(seen) == epochs
    assert all(len(v) == epochs for v in h.history.values())
    # per-epoch records are a few floats each; anything per step would be megabytes here
    assert grown < 16, f"resident memory grew by {grown:.1f} MiB over {steps} steps"
    assert np.isfinite(h["loss"][-1])


def test_short_soak_memory_is_flat(backend):
    _soak(8_000, backend)


@pytest.mark.slow
def test_long_soak_memory_is_flat(backend):
    _soak(100_000, backend)


def test_predict_from_several_threads_matches_one_at_a_time(rng):
    model = pn.Sequential(pn.Dense(6, 32, seed=0), pn.Tanh(), pn.BatchNorm(32), pn.Dropout(0.5, seed=1), pn.Dense(32, 3, seed=2))
    inputs = [rng.normal(size=(50, 6)) for _ in range(8)]
    expected = [pn.to_numpy(model.predict(x)) for x in inputs]
    results = [None] * len(inputs)
    errors = []

    def work(i):
        try:
            for _ in range(20):
                results[i] = pn.to_numpy(model.predict(inputs[i]))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)
