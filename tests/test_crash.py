"""Crashes: a process killed with SIGKILL (no handler, no cleanup) loses nothing it had saved.

* Killed while saving: the file at the path is always one complete save (the old or the
  new one), never a torn mix; leftover temporary files never make loading fail.
* Killed while training with ``ModelCheckpoint``: loading the last checkpoint and calling
  ``fit(..., initial_epoch=k)`` ends exactly where an uninterrupted run ends.

The killed children always run on NumPy (``PORTNN_BACKEND=numpy``). The parent compares on
NumPy bit for bit, whatever backend the suite runs on; on another backend it also loads
the files there and resumes there, compared with the NumPy run within float32 tolerance.
"""

from __future__ import annotations

import glob
import os
import queue
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import portnn as pn

pytest.importorskip("safetensors")
if not hasattr(signal, "SIGKILL"):
    pytest.skip("SIGKILL is POSIX only", allow_module_level=True)

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD_ENV = {**os.environ, "PORTNN_BACKEND": "numpy", "PYTHONUNBUFFERED": "1"}


# ---------------------------------------------------------------- a child process and its output


class Child:
    """A Python child whose stdout lines arrive on a queue (so reads can time out)."""

    def __init__(self, script: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CHILD_ENV,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def wait_for(self, predicate, timeout: float = 60.0) -> str:
        """The first line (from now on) that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"child printed nothing matching in {timeout} s; saw {self.seen}") from None
            if line is None:
                self.proc.wait(timeout=10)
                raise AssertionError(f"child exited ({self.proc.returncode}) early: {self.proc.stderr.read()}")
            self.seen.append(line)
            if predicate(line):
                return line

    def kill(self) -> None:
        """SIGKILL: no handler runs, no file is closed, no temporary file removed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        while (line := self.lines.get(timeout=30)) is not None:  # what it printed before dying
            self.seen.append(line)
        self.proc.stdout.close()
        self.proc.stderr.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.returncode is None:
            self.kill()


def _numpy_state(model) -> dict[str, np.ndarray]:
    out = {f"param/{k}": np.array(pn.to_numpy(v)) for k, v in model.parameters().items()}
    out.update({f"buffer/{k}": np.array(pn.to_numpy(v)) for k, v in model.buffers().items()})
    state = getattr(model, "optimizer_state", None)
    if state is not None:
        out["optim/step"] = np.asarray(state["step"])
        for name, slots in state["slots"].items():
            out.update({f"optim/{name}/{s}": np.array(pn.to_numpy(v)) for s, v in slots.items()})
    return out


def _assert_bitwise(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), f"{k} differs"


def _assert_close(a, b):
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-5, err_msg=k)


# ---------------------------------------------------------------- killed while saving


def weight_sets():
    """Two models of one architecture with different weights (~1.3 MB per file)."""
    return [
        pn.Sequential(pn.Dense(512, 512, seed=s), pn.ReLU(), pn.Dense(512, 128, seed=s + 1), pn.BatchNorm(128))
        for s in (0, 10)
    ]


SAVER = f"""
    import sys
    sys.path.insert(0, {HERE!r})
    import portnn as pn
    from test_crash import weight_sets
    path = sys.argv[1]
    models = weight_sets()
    pn.save(models[1], path)
    print("ready", flush=True)
    i = 0
    while True:
        pn.save(models[i % 2], path)
        i += 1
"""


def test_a_save_killed_at_any_moment_leaves_one_complete_file(tmp_path, backend):
    with pn.use_backend("numpy"):
        expected = [_numpy_state(m) for m in weight_sets()]
    path = tmp_path / "model.safetensors"
    rng = random.Random(os.getpid())
    found = [0, 0]
    for _ in range(15):
        with Child(SAVER, str(path)) as child:
            child.wait_for(lambda line: line == "ready", timeout=60)
            time.sleep(rng.uniform(0.0, 0.3))
            child.kill()
            assert child.proc.returncode == -signal.SIGKILL
        loaded = _numpy_state(pn.load(path))  # on the backend under test
        matches = [i for i, state in enumerate(expected) if all(
            loaded[k].tobytes() == state[k].tobytes() for k in state)]
        assert len(matches) == 1 and list(loaded) == list(expected[0]), "the file is not one complete save"
        found[matches[0]] += 1
    # temporary files left by the kills lie beside the model, never in its place
    leftovers = glob.glob(str(tmp_path / ".model.safetensors.*.tmp"))
    assert sorted(os.listdir(tmp_path)) == sorted(["model.safetensors", *map(os.path.basename, leftovers)])
    assert sum(found) == 15


# ---------------------------------------------------------------- killed while training

N_EPOCHS = 12
FIT = {"batch_size": 16, "seed": 7, "verbose": 0}
STEPS_PER_EPOCH = 6  # 96 samples in batches of 16


def data():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(96, 6)).astype(np.float32)
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)


def fresh_model():
    """Parameters, BatchNorm buffers, a Dropout generator and Adam state: everything that resumes."""
    return pn.Sequential(
        # no bias before BatchNorm: its gradient is zero up to rounding, which Adam would amplify
        # into steps of size lr that differ between backends
        pn.Dense(6, 16, seed=0, use_bias=False), pn.BatchNorm(16), pn.ReLU(), pn.Dropout(0.2, seed=3),
        pn.Dense(16, 3, seed=1),
    )


def first_fit(model, epochs, **kwargs):
    X, y = data()
    return model.fit(X, y, loss="cross_entropy", optimizer=pn.Adam(0.01), epochs=epochs, **FIT, **kwargs)


TRAINER = f"""
    import sys, time
    sys.path.insert(0, {HERE!r})
    import portnn as pn
    from test_crash import N_EPOCHS, first_fit, fresh_model
    checkpoint = pn.ModelCheckpoint(sys.argv[1], monitor="loss")
    # after the checkpoint of each epoch: say so, then give the parent time to kill
    tell = pn.LambdaCallback(on_epoch_end=lambda epoch, logs: (print("epoch", epoch + 1, flush=True), time.sleep(0.1)))
    first_fit(fresh_model(), N_EPOCHS, callbacks=[checkpoint, tell])
    print("finished", flush=True)
"""


def test_training_killed_resumes_from_its_checkpoint_bit_for_bit(tmp_path, backend):
    with pn.use_backend("numpy"):
        reference = fresh_model()
        first_fit(reference, N_EPOCHS)
        expected = _numpy_state(reference)
    X, y = data()
    rng = random.Random(os.getpid())
    for round_ in range(2):
        ckpt = tmp_path / f"ckpt{round_}.safetensors"
        with Child(TRAINER, str(ckpt)) as child:
            child.wait_for(lambda line: line == "epoch 3", timeout=60)
            time.sleep(rng.uniform(0.0, 0.25))
            child.kill()
        printed = max(int(line.split()[1]) for line in child.seen)
        assert "finished" not in child.seen and printed < N_EPOCHS

        with pn.use_backend("numpy"):
            model = pn.load(ckpt)
            step = model.optimizer_state["step"]
            assert step % STEPS_PER_EPOCH == 0, "a checkpoint holds whole epochs"
            k = step // STEPS_PER_EPOCH  # epochs completed in the checkpoint
            # saved before the line was printed; the kill may come after the next save
            assert printed <= k <= printed + 1 and k < N_EPOCHS
            model.fit(X, y, epochs=N_EPOCHS, initial_epoch=k, **FIT)
            _assert_bitwise(_numpy_state(model), expected)

        if str(backend) != "numpy":  # the same checkpoint resumed on the backend under test
            model = pn.load(ckpt)
            assert model.backend == backend
            model.fit(X, y, epochs=N_EPOCHS, initial_epoch=k, **FIT)
            _assert_close(_numpy_state(model), expected)
