"""One suite for every backend.

The backend under test comes from ``--backend`` or ``PORTNN_BACKEND`` (default
``numpy``). If one was asked for explicitly and cannot be used, the run fails
rather than skipping, so a CI session cannot go green by testing nothing.
On array_api_strict the suite runs on its non-default device ``device1``, which
catches array creation that forgets ``device=``.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import portnn as pn
from portnn import backend as backend_module


def pytest_addoption(parser):
    parser.addoption("--backend", default=None, help="backend to test (default: $PORTNN_BACKEND or numpy)")


def _requested(config) -> tuple[str, bool]:
    name = config.getoption("--backend") or os.environ.get("PORTNN_BACKEND", "").strip()
    return (name, True) if name else ("numpy", False)


def pytest_report_header(config):
    name, _ = _requested(config)
    return f"portnn backend under test: {name} (available here: {', '.join(pn.available_backends())})"


@pytest.fixture(scope="session")
def backend_name(pytestconfig) -> str:
    name, explicit = _requested(pytestconfig)
    try:
        backend_module._make_backend(name)
    except pn.BackendError as e:
        if explicit:
            pytest.fail(f"backend {name!r} was requested but cannot be used: {e}", pytrace=False)
        pytest.skip(str(e))
    return name


@pytest.fixture(scope="session")
def backend_device(backend_name):
    return "device1" if backend_name == "array_api_strict" else None


@pytest.fixture(autouse=True)
def backend(backend_name, backend_device):
    """Every test runs with the backend under test as the default."""
    with pn.use_backend(backend_name, device=backend_device) as b:
        yield b


@pytest.fixture
def xp(backend):
    return backend.xp


@pytest.fixture
def float64_ok(backend) -> bool:
    return backend_module._has_float64(backend)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def tolerance(dtype_name: str) -> dict:
    """Tolerances for comparing results across backends (they differ in the last bits)."""
    return {"rtol": 1e-5, "atol": 1e-6} if dtype_name == "float32" else {"rtol": 1e-10, "atol": 1e-12}


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt even when the run was started in the background
    (a shell's background job inherits SIGINT ignored), so the interrupt tests test fit."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
