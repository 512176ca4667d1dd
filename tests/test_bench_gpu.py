"""bench/gpu.py's CPU smoke run: its code runs without a GPU, prints the table, and the
contenders train the same thing.

The smoke run pins portnn to NumPy itself, so these tests run once, under the numpy
backend, rather than once per backend of the suite.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


@pytest.fixture(autouse=True)
def _once(backend_name):
    if backend_name != "numpy":
        pytest.skip("the GPU benchmark's smoke run pins portnn to NumPy; it is tested under the numpy backend")


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _table_rows(stdout: str, title_start: str) -> dict[str, list[str]]:
    """First cell -> cells of each row of the table under the heading that starts so."""
    rows, inside = {}, False
    for line in stdout.splitlines():
        if line.startswith("## "):
            inside = line[3:].startswith(title_start)
        elif inside and line.startswith("| ") and not line.startswith("| contender"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_smoke_run_prints_a_row_per_contender(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PORTNN_BACKEND"}
    docs = tmp_path / "table.md"
    args = ["--smoke", "--configs", "A", "--repeats", "1", "--write-docs", str(docs)]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.rstrip().splitlines()[-1].startswith("| "), "the report must end with a table"
    written = docs.read_text(encoding="utf-8")
    for part in ("- date: ", "- device: ", "- libraries: portnn ", "--configs A --repeats 1", "## Targets"):
        assert part in written
    rows = _table_rows(done.stdout, "A: MLP 784-64-64-10, batch 4")
    ran = {"portnn on NumPy, portable": True,
           "PyTorch eager": importlib.util.find_spec("torch") is not None,
           "JAX, jax.jit": importlib.util.find_spec("jax") is not None}
    for label, installed in ran.items():
        assert label in rows, f"no row for {label}:\n{done.stdout}"
        cells = rows[label]
        if not installed:
            assert cells[1].startswith("skipped"), cells
            continue
        ms, samples, tflops = (_number(c) for c in cells[1:4])
        assert ms > 0 and samples > 0 and tflops > 0, cells
        assert np.isfinite(_number(cells[-1].split()[0])), cells
    assert rows['portnn on NumPy, fit(engine="fast")'][1].startswith(("not available", "skipped"))
    assert rows["PyTorch, CUDA graph"][1].startswith("skipped")
    if ran["PyTorch eager"]:
        ours, theirs = (_number(rows[k][-1].split()[0]) for k in ("portnn on NumPy, portable", "PyTorch eager"))
        assert ours == pytest.approx(theirs, rel=1e-3)


def test_steps_through_fit_match_the_bare_step():
    """The path a fit-only engine is measured by gives the bare step's losses."""
    bench = _load_bench()
    config = bench.CONFIGS["A"].shrunk()
    weights = bench.initial_weights(config.widths, seed=0)
    data = bench.config_data(config, seed=0)
    bare = bench.Portnn("numpy", weights, "adam")
    through_fit = bench.PortnnThroughFit("numpy", weights, "adam", engine=None)
    losses = []
    for contender in (bare, through_fit):
        batches = [contender.to_device(X, y) for X, y in data]
        losses.append(contender.check_steps(batches, bench.CHECK_STEPS))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert through_fit.run_steps(batches, 2 * len(batches)) == 2 * len(batches)


def test_a_failing_contender_becomes_its_row():
    bench = _load_bench()
    config = bench.CONFIGS["A"].shrunk()

    def out_of_memory():
        raise MemoryError("out of memory allocating 1,024 bytes\nand more detail")

    spec = bench.Spec("broken", "a broken contender", "portnn", out_of_memory)
    row = bench.run_contender(spec, config, bench.config_data(config, 0), bench.Platform(smoke=True), 1, 0)
    assert row.status == "failed: MemoryError: out of memory allocating 1,024 bytes"
    assert row.seconds is None
