"""``portnn info`` says which PyTorch build is installed, and how to get the CPU one."""

from __future__ import annotations

import sys
import types

import pytest

import portnn.cli.info as info
from portnn.cli import main


def test_the_torch_row_names_its_build(capsys):
    torch = pytest.importorskip("torch")
    assert main(["info"]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["torch"]]
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
    assert f"({build})" in row and torch.__version__ in row


def test_a_cuda_build_is_told_apart(monkeypatch):
    fake = types.SimpleNamespace(version=types.SimpleNamespace(cuda="12.8"))
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert info._torch_build() == "CUDA 12.8 build"
    fake.version.cuda = None
    assert info._torch_build() == "CPU build"


def test_without_torch_the_hint_is_the_cpu_wheel(monkeypatch, capsys):
    real_find_spec = info.importlib.util.find_spec
    monkeypatch.setattr(info.importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
    from portnn import backend

    monkeypatch.setattr(backend, "available_backends", lambda: ["numpy"])
    rows = {name: (status, devices) for name, status, _, devices in info._backend_rows()}
    status, hint = rows["torch"]
    assert status == "not installed"
    assert "--index-url https://download.pytorch.org/whl/cpu" in hint
