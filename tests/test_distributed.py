"""Data-parallel training over MPI: ``mpiexec -n 2`` runs of tests/mpi_worker.py.

Each scenario is one ``mpiexec`` launch; the ranks write what they saw to JSON
files, checked here. Skipped where mpi4py or mpiexec is missing (the ``mpi``
nox session installs both).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import portnn as pn
from portnn.backend import host_rng

MPI = pytest.importorskip("mpi4py.MPI", reason="distributed training needs mpi4py (pip install portnn[mpi])")
WORKER = Path(__file__).with_name("mpi_worker.py")


def _mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def launch(scenario: str, out: Path, backend_name: str, ranks: int = 2) -> tuple[subprocess.CompletedProcess, float]:
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec not found (pip install portnn[mpi] brings MPICH)")
    env = dict(os.environ, PORTNN_BACKEND=backend_name, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [mpiexec, "-n", str(ranks), sys.executable, "-W", "error", str(WORKER), scenario, str(out)]
    start = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=90)
    return done, time.monotonic() - start


def ranks(out: Path, scenario: str, n: int = 2) -> list[dict]:
    return [json.loads((out / f"{scenario}-rank{r}.json").read_text()) for r in range(n)]


@pytest.fixture(scope="module")
def ok_run(tmp_path_factory, backend_name):
    out = tmp_path_factory.mktemp("mpi_ok")
    done, _ = launch("ok", out, backend_name)
    assert done.returncode == 0, done.stdout + done.stderr
    return out, ranks(out, "ok")


def arrays(params: dict) -> dict:
    return {k: np.asarray(v) for k, v in params.items()}


def test_two_ranks_train_the_weights_of_one_process(ok_run):
    _, (r0, r1) = ok_run
    assert r0["size"] == r1["size"] == 2
    for name, one in r0["equal"].items():
        other = r1["equal"][name]
        # float64: equal to training on the whole batch in one process
        assert one["max_difference"] <= 1e-10, name
        assert other["max_difference"] <= 1e-10, name
        assert one["steps"] == one["expected_steps"] > 0
        # the replicas are identical, not merely close
        for key, value in arrays(one["parameters"]).items():
            np.testing.assert_array_equal(value, arrays(other["parameters"])[key])
        # losses and metrics are those of the whole batch and the same on every rank
        assert one["history"] == other["history"]
        for key, values in one["expected_history"].items():
            np.testing.assert_allclose(one["history"][key], values, rtol=1e-10, atol=1e-12, err_msg=f"{name} {key}")


def test_a_tree_with_two_inputs_and_a_frozen_branch_trains_data_parallel(ok_run):
    _, (r0, r1) = ok_run
    assert "tree_two_inputs_frozen_branch" in r0["equal"]  # compared with one process above
    # the frozen branch keeps rank 0's initial weights on every rank
    assert r0["frozen_unchanged"] and r1["frozen_unchanged"]


def test_parameters_are_broadcast_from_rank_0(ok_run):
    _, (r0, r1) = ok_run
    before0, before1 = arrays(r0["broadcast"]["before"]), arrays(r1["broadcast"]["before"])
    assert any(not np.array_equal(before0[k], before1[k]) for k in before0)
    for result in (r0, r1):
        after = arrays(result["broadcast"]["after"])
        for key in before0:
            np.testing.assert_array_equal(after[key], before0[key])


def test_each_rank_trains_its_share_of_every_batch(ok_run):
    _, (r0, r1) = ok_run
    n, batch_size, seed = 40, 7, 5
    expected = []
    for epoch in range(2):
        order = host_rng([seed, epoch]).permutation(n)
        expected += [order[a : a + batch_size].tolist() for a in range(0, n, batch_size)]
    assert len(r0["shards"]) == len(r1["shards"]) == len(expected)
    for first, second, batch in zip(r0["shards"], r1["shards"], expected):
        assert first + second == batch  # rank 0 the first part, rank 1 the rest: the union is the batch
        assert abs(len(first) - len(second)) <= 1


def test_only_rank_0_writes_checkpoints_and_logs(ok_run):
    out, (r0, _) = ok_run
    written = sorted(p.name for p in out.iterdir() if not p.name.endswith(".json"))
    assert written == ["ckpt-rank0-1.safetensors", "ckpt-rank0-2.safetensors", "log-rank0.csv"]
    assert len((out / "log-rank0.csv").read_text().splitlines()) == 3
    saved = pn.load(out / "ckpt-rank0-2.safetensors")
    for key, value in arrays(r0["checkpoint"]).items():
        np.testing.assert_array_equal(pn.to_numpy(saved.parameters()[key]), value)


def test_batchnorm_replicas_agree(ok_run):
    _, (r0, r1) = ok_run
    for part in ("parameters", "buffers"):
        a, b = arrays(r0["batchnorm"][part]), arrays(r1["batchnorm"][part])
        assert a
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_ranks_with_different_arguments_fail_before_training(ok_run):
    _, (r0, r1) = ok_run
    for result in (r0, r1):
        assert "ranks disagree on batch_size" in result["mismatch"]
        assert "rank 1 has 17" in result["mismatch"]
        assert result["mismatch_unchanged"]


def test_a_failing_rank_stops_the_others(tmp_path, backend_name):
    done, seconds = launch("fail", tmp_path, backend_name)
    assert done.returncode != 0
    assert seconds < 30
    assert "boom: rank 1 failed on purpose" in done.stderr
    # the checkpoint of the last completed epoch is intact
    saved = pn.load(tmp_path / "last.safetensors")
    epoch0 = arrays(json.loads((tmp_path / "epoch0.json").read_text()))
    assert not (tmp_path / "epoch1.json").exists()
    for key, value in epoch0.items():
        np.testing.assert_array_equal(pn.to_numpy(saved.parameters()[key]), value)


def test_the_others_learn_which_rank_failed_and_why(tmp_path, backend_name):
    done, seconds = launch("fail_caught", tmp_path, backend_name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert seconds < 30
    r0, r1 = ranks(tmp_path, "fail_caught")
    assert r1["error"] == "ValueError: boom: rank 1 failed on purpose"
    assert r0["error"].startswith("DistributedError: rank 1 of 2 failed (ValueError: boom: rank 1 failed on purpose)")


def test_a_stalled_rank_times_out(tmp_path, backend_name):
    done, seconds = launch("stall", tmp_path, backend_name)
    assert done.returncode != 0
    assert seconds < 30
    assert "did not answer within 1 s while averaging gradients" in done.stderr
    assert (tmp_path / "last.safetensors").exists()


def test_ctrl_c_on_one_rank_stops_all_at_the_same_step(tmp_path, backend_name):
    done, _ = launch("interrupt", tmp_path, backend_name)
    assert done.returncode == 0, done.stdout + done.stderr
    r0, r1 = ranks(tmp_path, "interrupt")
    assert r0["interrupted"] and r1["interrupted"]
    assert r0["steps"] == r1["steps"] == 14  # the step rank 1 was in when the signal came
    for key, value in arrays(r0["parameters"]).items():
        np.testing.assert_array_equal(value, arrays(r1["parameters"])[key])
    saved = pn.load(tmp_path / "interrupted.safetensors")  # rank 0's final checkpoint
    for key, value in arrays(r0["parameters"]).items():
        np.testing.assert_array_equal(pn.to_numpy(saved.parameters()[key]), value)


# ---------------------------------------------------------------- in this process (one rank)


def test_one_process_trains_as_without_distributed(backend):
    X = np.random.default_rng(0).normal(size=(50, 4))
    y = (X[:, 0] > 0).astype(int)
    make = lambda: pn.Sequential(pn.Dense(4, 8, seed=1, dtype="float64"), pn.ReLU(), pn.Dense(8, 2, seed=2, dtype="float64"))  # noqa: E731
    a, b = make(), make()
    a.fit(X, y, loss="cross_entropy", epochs=2, batch_size=8, seed=3, verbose=0, distributed=True)
    b.fit(X, y, loss="cross_entropy", epochs=2, batch_size=8, seed=3, verbose=0)
    for key, value in a.parameters().items():
        np.testing.assert_allclose(pn.to_numpy(value), pn.to_numpy(b.parameters()[key]), rtol=0, atol=1e-12)


def test_bad_arguments_are_refused_before_training():
    model = pn.Sequential(pn.Dense(4, 2, seed=1))
    before = {k: pn.to_numpy(v).copy() for k, v in model.parameters().items()}
    X, y = np.ones((6, 4)), np.zeros(6, dtype=int)
    with pytest.raises(TypeError, match="distributed must be True, False or a portnn.DataParallel"):
        model.fit(X, y, loss="cross_entropy", distributed="yes")
    with pytest.raises(ValueError, match="timeout must be a finite number > 0"):
        pn.DataParallel(timeout=0)
    with pytest.raises(TypeError, match="comm must be an mpi4py intracommunicator"):
        pn.DataParallel(comm="world")
    assert isinstance(pn.train.distributed.strategy_for(True), pn.DataParallel)  # jit=True combines with it
    assert getattr(model, "optimizer_state", None) is None
    for key, value in model.parameters().items():
        np.testing.assert_array_equal(pn.to_numpy(value), before[key])


def test_shares_of_each_batch_cover_it_in_order():
    from portnn.data import Batcher

    X = np.arange(10.0)[:, None]
    order = np.arange(10)[::-1]
    dp = pn.DataParallel()
    shares = []
    for r in range(3):  # as ranks 0, 1, 2 of 3 would take them
        dp.rank, dp.size = r, 3
        shares.append([(pn.to_numpy(xb)[:, 0].astype(int).tolist(), nb) for xb, _, nb in dp.batches(Batcher(pn.get_backend(), None, X), order, 4)])
    assert shares[0] == [([9], 4), ([5], 4), ([], 2)]
    assert shares[1] == [([8], 4), ([4], 4), ([1], 2)]
    assert shares[2] == [([7, 6], 4), ([3, 2], 4), ([0], 2)]
