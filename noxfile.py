"""Test, docs and benchmark sessions.

    nox -s tests                      # every backend (the CuPy one skips without a CUDA device)
    nox -s "tests(backend='numpy')"   # one backend
    nox -s docs                       # the documentation, warnings as errors
    nox -s mpi                        # mpiexec -n 2 data-parallel training
    nox -s dask                       # datasets in a Dask LocalCluster
    nox -s bench                      # CPU benchmarks against scikit-learn and PyTorch
    nox -s bench-gpu                  # GPU benchmarks (a CPU smoke run without a GPU)
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "mpi", "dask", "docs"]

# torch==2.13.0 is the CPU build these machines hold on local disk; an unpinned
# "torch" would download a multi-GB CUDA build.
TORCH_CPU = "torch==2.13.0"

BACKEND_REQUIREMENTS = {
    "numpy": [TORCH_CPU],  # torch is the reference in equality tests
    "array_api_strict": [TORCH_CPU],
    "torch": [TORCH_CPU],
    "jax": ["jax", TORCH_CPU],
    "cupy": ["cupy-cuda13x"],
}
# JAX computes in float32 only unless asked; the suite checks float64 results too
BACKEND_ENV = {"jax": {"JAX_ENABLE_X64": "1"}}


def _cuda_visible() -> bool:
    return shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidia0")


@nox.session
@nox.parametrize("backend", list(BACKEND_REQUIREMENTS))
def tests(session: nox.Session, backend: str) -> None:
    """The one test suite, on one backend."""
    if backend == "cupy" and not _cuda_visible():
        session.skip("no CUDA device visible: the CuPy session runs on a GPU machine")
    session.install("-e", ".[test]", *BACKEND_REQUIREMENTS[backend])
    session.run(
        "pytest",
        *session.posargs,
        env={"PORTNN_BACKEND": backend, **BACKEND_ENV.get(backend, {})},
    )


@nox.session
def mpi(session: nox.Session) -> None:
    """Data-parallel training under ``mpiexec -n 2`` (MPICH and mpi4py from their wheels), on NumPy."""
    session.install("-e", ".[test,mpi]")
    session.run("pytest", "tests/test_distributed.py", *session.posargs, env={"PORTNN_BACKEND": "numpy"})


@nox.session
def dask(session: nox.Session) -> None:
    """fit, evaluate and predict on ``dask.array`` data in a Dask LocalCluster, on NumPy.

    Dask is a data source here (batches are computed chunk by chunk and streamed to
    the model's backend), not a backend the whole suite runs on."""
    session.install("-e", ".[test,dask]")
    session.run("pytest", "tests/test_dask.py", *session.posargs, env={"PORTNN_BACKEND": "numpy"})


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation with warnings as errors, and run its examples (doctest)."""
    session.install("-e", ".[docs,strict]", TORCH_CPU)  # examples move models to torch and strict
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")
    session.run("sphinx-build", "-b", "doctest", "-q", "docs", "docs/_build/doctest")


@nox.session
def bench(session: nox.Session) -> None:
    """CPU benchmarks against scikit-learn and PyTorch (ratios in one run; not tests)."""
    session.install("-e", ".[all]", TORCH_CPU)
    session.run("python", "bench/cpu.py", *session.posargs)


@nox.session(name="bench-gpu")
def bench_gpu(session: nox.Session) -> None:
    """GPU benchmarks (bench/gpu.py) of portnn on CuPy against PyTorch eager, PyTorch CUDA
    graphs and JAX jit; without a CUDA device, its CPU smoke run (``--smoke``)."""
    session.install("-e", ".[all]", TORCH_CPU if not _cuda_visible() else "torch", "jax")
    if _cuda_visible():
        session.install("cupy-cuda13x")
    args = session.posargs or ([] if _cuda_visible() else ["--smoke"])
    session.run("python", "bench/gpu.py", *args)
