"""The ``portnn`` command: ``python -m portnn`` in a subprocess, ``portnn.cli.main`` in process.

The subprocesses run on the backend under test (``PORTNN_BACKEND``), on its default device.
Arguments are written as strings of words (split on spaces) and paths (kept whole).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import portnn as pn
from portnn.cli import ACTIVATIONS, build_parser, main
from portnn.datasets import load_dataset


def argv(*parts: str | Path) -> list[str]:
    """``"train --dataset", path`` -> ``["train", "--dataset", str(path)]``."""
    return [w for p in parts for w in ([str(p)] if isinstance(p, Path) else p.split())]


def portnn(*parts: str | Path, backend: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PORTNN_BACKEND": backend}
    env.pop("PORTNN_DEBUG", None)
    command = [sys.executable, "-m", "portnn", *argv(*parts)]
    return subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=cwd, timeout=300, check=False
    )


def run_main(capsys, *parts: str | Path) -> tuple[int, str, str]:
    code = main(argv(*parts))
    out, err = capsys.readouterr()
    return code, out, err


def accuracy_of(output: str) -> float:
    found = re.findall(r"^test accuracy: ([0-9.]+)$", output, flags=re.MULTILINE)
    assert len(found) == 1, output
    return float(found[0])


def assert_one_line_error(result_or_text, *fragments: str) -> None:
    err = result_or_text if isinstance(result_or_text, str) else result_or_text.stderr
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("portnn"), err
    for fragment in fragments:
        assert fragment in lines[0], err


def needs_io() -> None:
    pytest.importorskip("safetensors")
    pytest.importorskip("portnn.io")


# ---------------------------------------------------------------- subprocess


def test_info(backend_name):
    result = portnn("info", backend=backend_name)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"portnn {pn.__version__} ")
    assert f"default backend: {backend_name}" in out
    for name in pn.available_backends():
        assert re.search(rf"^  {name} +available", out, flags=re.MULTILINE), out
    assert re.search(r"^  numpy +available +\S+ +cpu$", out, flags=re.MULTILINE), out
    assert re.search(r"^  cupy +(not installed|unusable|available)", out, flags=re.MULTILINE), out


def test_train_seed8(backend_name, tmp_path):
    result = portnn(
        "train --dataset seed8 --hidden 8 --lr 0.05 --batch-size 8 --epochs 200 --verbose 0",
        backend=backend_name,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert f"backend {backend_name}" in result.stdout
    assert "8 train / 8 test samples, 2 features, 2 classes" in result.stdout
    assert accuracy_of(result.stdout) == 1.0
    assert not list(tmp_path.iterdir())  # nothing written without --out / --plot


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory, backend_name):
    """``portnn train --dataset digits`` with the defaults, saved: (path, stdout)."""
    pytest.importorskip("sklearn")
    needs_io()
    path = tmp_path_factory.mktemp("cli") / "digits.safetensors"
    result = portnn("train --dataset digits --verbose 0 --out", path, backend=backend_name)
    assert result.returncode == 0, result.stderr
    return path, result.stdout


def test_train_digits_defaults_reach_95_percent(digits_model):
    path, out = digits_model
    assert accuracy_of(out) >= 0.95
    assert "1438 train / 359 test samples, 64 features, 10 classes" in out
    assert f"saved model to {path}" in out
    assert path.is_file() and path.stat().st_size > 0


def test_evaluate_and_predict_the_saved_model(digits_model, backend_name, tmp_path):
    path, train_out = digits_model
    result = portnn("evaluate", path, "--dataset digits", backend=backend_name)
    assert result.returncode == 0, result.stderr
    assert "test samples: 359" in result.stdout
    # the same held-out split, the same model: the same numbers as training printed
    assert accuracy_of(result.stdout) == accuracy_of(train_out)
    loss = re.search(r"^test loss: (\S+)$", result.stdout, flags=re.MULTILINE)
    assert loss and loss.group(0) in train_out

    _, X_test, _, y_test = load_dataset("digits")
    np.save(tmp_path / "x.npy", X_test[:50])
    out_csv = tmp_path / "p.csv"
    result = portnn(
        "predict", path, "--input", tmp_path / "x.npy", "--out", out_csv, backend=backend_name
    )
    assert result.returncode == 0, result.stderr
    lines = out_csv.read_text().split()
    assert lines[0] == "prediction" and len(lines) == 51
    predicted = np.array(lines[1:], dtype=np.int64)
    assert np.mean(predicted == y_test[:50]) >= 0.9


def test_bad_arguments_exit_2_with_one_line(tmp_path):
    # the error paths do not depend on the backend: numpy spares importing torch three times
    result = portnn("train --dataset digitz", backend="numpy")
    assert result.returncode == 2
    assert_one_line_error(result, "unknown data set 'digitz'", "did you mean 'digits'")
    assert result.stdout == ""
    result = portnn("train --dataset seed8 --epochs -3", backend="numpy")
    assert result.returncode == 2
    assert_one_line_error(result, "--epochs", ">= 0")
    result = portnn(
        "evaluate", tmp_path / "missing.safetensors", "--dataset seed8", backend="numpy"
    )
    assert result.returncode == 2
    assert_one_line_error(result, "no model file")


def test_plot_option_writes_a_png(backend_name, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "plots" / "xor.png"
    result = portnn("train --dataset xor --epochs 3 --verbose 0 --plot", png, backend=backend_name)
    assert result.returncode == 0, result.stderr
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


# ---------------------------------------------------------------- in process


def test_main_runs_on_the_current_backend(capsys, backend):
    code, out, err = run_main(capsys, "train --dataset moons --hidden 16 --epochs 2 --verbose 2")
    assert code == 0, err
    assert f"backend {backend}" in out
    assert out.count("epoch ") >= 2  # one line per epoch
    assert 0.0 <= accuracy_of(out) <= 1.0


def test_every_activation_and_optimizer_name_trains(capsys):
    from portnn.optim import OPTIMIZERS

    tiny = "train --dataset xor --hidden 4 --epochs 1 --verbose 0"
    for activation in ACTIVATIONS:
        code, _, err = run_main(capsys, tiny, "--activation", activation)
        assert code == 0, (activation, err)
    for name in OPTIMIZERS:
        code, out, err = run_main(capsys, tiny, "--lr 0.01 --optimizer", name)
        assert code == 0, (name, err)
        assert "lr=0.01," in out


@pytest.mark.parametrize(
    "args, fragments",
    [
        ("--activation relux", ["unknown activation 'relux'", "'relu'"]),
        ("--optimizer adamm", ["unknown optimizer 'adamm'", "'adam'"]),
        ("--hidden 12,x", ["--hidden", "256,128"]),
        ("--hidden 0,4", ["--hidden", ">= 1"]),
        ("--lr -1", ["--lr", "> 0"]),
        ("--batch-size 0", ["--batch-size"]),
        ("--test-size 1.5", ["--test-size", "between 0 and 1"]),
        ("--verbose 7", ["--verbose", "invalid choice"]),
        ("--threads x", ["--threads"]),
        ("--backend nope", ["unknown backend 'nope'"]),
        ("--target label", ["built-in"]),
        ("--epochs 0 --plot x.png", ["--plot needs at least one epoch"]),
    ],
)
def test_train_errors_are_one_line_and_status_2(capsys, tmp_path, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(capsys, "train --dataset seed8", args)
    assert code == 2
    assert_one_line_error(err, *fragments)
    assert out == ""
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args, fragments",
    [
        ("train --dataset missing/file.csv", ["no data file 'missing/file.csv'"]),
        ("train", ["required: --dataset"]),
        ("predict model.safetensors", ["required: --input"]),
        ("evaluate model.safetensors --dataset seed8", ["no model file 'model.safetensors'"]),
        ("fly", ["invalid choice: 'fly'"]),
        ("", ["required: COMMAND"]),
    ],
)
def test_errors_are_one_line_and_status_2(capsys, tmp_path, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(capsys, args)
    assert code == 2
    assert_one_line_error(err, *fragments)


def test_help_and_version(capsys):
    code, out, _ = run_main(capsys, "--version")
    assert code == 0 and out.strip() == f"portnn {pn.__version__}"
    code, out, _ = run_main(capsys, "train --help")
    assert code == 0
    options = "--dataset --target --hidden --activation --optimizer --lr --epochs --batch-size"
    for option in (options + " --backend --seed --out --plot --verbose --threads").split():
        assert option in out
    assert build_parser().parse_args(["info"]).command == "info"


def test_train_on_a_csv_then_predict_csv_rows(capsys, tmp_path, rng):
    needs_io()
    # two well separated blobs with text labels in the first column
    X = np.concatenate([rng.normal(-2, 0.5, (30, 2)), rng.normal(2, 0.5, (30, 2))])
    labels = ["no"] * 30 + ["yes"] * 30
    rows = ["label,x1,x2"] + [f"{t},{a:.5f},{b:.5f}" for t, (a, b) in zip(labels, X)]
    data = tmp_path / "blobs.csv"
    data.write_text("\n".join(rows) + "\n")
    model = tmp_path / "blobs.safetensors"
    code, out, err = run_main(
        capsys,
        "train --dataset", data,
        "--target label --hidden 8 --epochs 30 --batch-size 8 --lr 0.01 --verbose 0 --out", model,
    )  # fmt: skip
    assert code == 0, err
    assert accuracy_of(out) == 1.0
    code, out, err = run_main(capsys, "evaluate", model, "--dataset", data, "--target label")
    assert code == 0 and accuracy_of(out) == 1.0, err
    # the labelled file itself, leaving out its label column; the classes print by name
    code, out, err = run_main(capsys, "predict", model, "--input", data, "--target label")
    assert code == 0, err
    assert out.split() == ["no"] * 30 + ["yes"] * 30
    # without --target: the model knows its feature columns by name and leaves the label out
    code, out, err = run_main(capsys, "predict", model, "--input", data)
    assert code == 0 and out.split() == ["no"] * 30 + ["yes"] * 30, err
    # a header-less file is taken column by column: an extra label column is named
    (tmp_path / "numeric.csv").write_text("-2,-2,0\n")
    code, out, err = run_main(capsys, "predict", model, "--input", tmp_path / "numeric.csv")
    assert code == 2
    assert_one_line_error(err, "takes 2 features", "has 3", "--target")
    # a header-less CSV, an NPZ and an NPY of features
    (tmp_path / "new.csv").write_text("-2,-2\n2.5,1.5\n")
    code, out, err = run_main(capsys, "predict", model, "--input", tmp_path / "new.csv")
    assert code == 0 and out.split() == ["no", "yes"], err
    np.savez(tmp_path / "new.npz", X=np.array([[2.0, 2.0], [-2.0, -1.0]]))
    code, out, err = run_main(capsys, "predict", model, "--input", tmp_path / "new.npz")
    assert code == 0 and out.split() == ["yes", "no"], err
    np.save(tmp_path / "one.npy", np.array([3.0, 2.0]))  # one sample
    code, out, err = run_main(capsys, "predict", model, "--input", tmp_path / "one.npy")
    assert code == 0 and out.split() == ["yes"], err
    code, out, err = run_main(capsys, "predict", model, "--input", tmp_path / "new.txt")
    assert code == 2
    assert_one_line_error(err, "no input file")
