"""The ``portnn`` command refuses bad outputs, labels, seeds and files up front, in one line.

Run in process (``portnn.cli.main``) on the backend under test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import portnn.cli as cli
from portnn.cli import main


def run(capsys, *parts: str | Path) -> tuple[int, str, str]:
    """``main`` on words (split on spaces) and paths (kept whole): (status, stdout, stderr)."""
    code = main([w for p in parts for w in ([str(p)] if isinstance(p, Path) else p.split())])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("portnn"), err
    for fragment in fragments:
        assert fragment in lines[0], err


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a model gets built (the check had to come first)."""

    def built(*args, **kwargs):
        raise AssertionError("a model was built before the arguments were checked")

    monkeypatch.setattr(cli.commands, "_build", built)


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("a regular file\n")
    return path


@pytest.fixture
def model_file(tmp_path, capsys) -> Path:
    pytest.importorskip("safetensors")
    path = tmp_path / "m.safetensors"
    code, _, err = run(
        capsys, "train --dataset seed8 --hidden 4 --epochs 1 --verbose 0 --out", path
    )
    assert code == 0, err
    return path


# ---------------------------------------------------------------- outputs


def test_out_that_is_a_folder_is_refused_before_training(capsys, tmp_path, no_training):
    code, out, err = run(capsys, "train --dataset seed8 --epochs 1 --out", tmp_path)
    assert_refused(code, err, "--out", str(tmp_path), "is a folder")
    assert out == ""


@pytest.mark.parametrize("option", ["--out", "--plot"])
def test_out_under_a_file_is_refused_before_training(capsys, a_file, option, no_training):
    target = a_file / "sub" / "model.safetensors"
    code, out, err = run(capsys, f"train --dataset seed8 --epochs 1 {option}", target)
    assert_refused(code, err, option, str(a_file), "is a file, not a folder")
    assert out == "" and a_file.read_text() == "a regular file\n"


def test_out_in_a_folder_that_cannot_be_written_is_refused(
    capsys, tmp_path, monkeypatch, no_training
):
    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cli.files.tempfile, "mkstemp", refused)
    code, _, err = run(capsys, "train --dataset seed8 --out", tmp_path / "model.safetensors")
    assert_refused(code, err, "--out", "cannot write in", "Permission denied")


def test_out_that_can_be_written_leaves_no_probe_behind(capsys, tmp_path):
    pytest.importorskip("safetensors")
    target = tmp_path / "new" / "model.safetensors"
    code, _, err = run(
        capsys, "train --dataset seed8 --hidden 4 --epochs 1 --verbose 0 --out", target
    )
    assert code == 0, err
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.safetensors"]


def test_predict_and_export_outputs_are_checked_first(
    capsys, model_file, a_file, tmp_path, monkeypatch
):
    def predicted(*args, **kwargs):
        raise AssertionError("predicted before --out was checked")

    monkeypatch.setattr(cli.commands, "_predicted_classes", predicted)
    np.save(tmp_path / "x.npy", np.zeros((3, 2)))
    x = tmp_path / "x.npy"
    code, _, err = run(capsys, "predict", model_file, "--input", x, "--out", tmp_path)
    assert_refused(code, err, "--out", "is a folder")
    code, _, err = run(
        capsys, "predict", model_file, "--input", tmp_path / "x.npy", "--out", a_file / "p.csv"
    )
    assert_refused(code, err, "--out", "is a file, not a folder")
    code, _, err = run(capsys, "export", model_file, a_file / "m.onnx")
    assert_refused(code, err, "OUT", "is a file, not a folder")


# ---------------------------------------------------------------- labels and seeds


def _csv(path: Path, labels: list[int]) -> Path:
    rows = "".join(f"{i * 0.1:.1f},{1 - i * 0.1:.1f},{label}\n" for i, label in enumerate(labels))
    path.write_text("a,b,label\n" + rows)
    return path


def test_a_huge_class_label_is_refused_not_allocated(capsys, tmp_path, no_training):
    data = _csv(tmp_path / "d.csv", [0, 1, 0, 1, 1000000000, 0])
    code, out, err = run(capsys, "train --dataset", data, "--epochs 1")
    assert_refused(code, err, "--dataset", "1000000000", "6 samples", "0, 1, ..., K-1")


def test_labels_with_gaps_up_to_the_number_of_samples_still_train(capsys, tmp_path):
    data = _csv(tmp_path / "d.csv", [0, 3, 0, 3, 0, 3])  # 4 classes (two unused) for 6 samples
    code, out, err = run(capsys, "train --dataset", data, "--hidden 4 --epochs 1 --verbose 0")
    assert code == 0, err
    assert "4 classes" in out


@pytest.mark.parametrize("command", ["train --dataset seed8", "evaluate m --dataset seed8"])
def test_a_negative_seed_is_refused_naming_seed(capsys, command, no_training):
    code, _, err = run(capsys, command, "--seed -1")
    assert_refused(code, err, "--seed", "-1")


# ---------------------------------------------------------------- unreadable files


def test_a_csv_that_is_not_utf8_names_the_file(capsys, tmp_path, model_file, no_training):
    data = tmp_path / "latin.csv"
    data.write_bytes(b"a,b,label\n0.1,0.2,0\n0.3,\xff\xfe,1\n")
    code, _, err = run(capsys, "train --dataset", data)
    assert_refused(code, err, "--dataset", str(data), "not UTF-8")
    samples = tmp_path / "x.csv"
    samples.write_bytes(b"0.1,0.2\n\xe9,0.3\n")
    code, _, err = run(capsys, "predict", model_file, "--input", samples)
    assert_refused(code, err, "--input", str(samples), "not UTF-8")


def test_object_arrays_are_refused_never_unpickled(capsys, tmp_path, model_file, no_training):
    samples = tmp_path / "objects.npy"
    np.save(samples, np.array([[1.0, "a"], [None, 2]], dtype=object), allow_pickle=True)
    code, _, err = run(capsys, "predict", model_file, "--input", samples)
    assert_refused(code, err, "--input", str(samples), "Python objects")
    data = tmp_path / "objects.npz"
    np.savez(data, X=np.array([[1.0, "a"], [None, 2]], dtype=object), y=np.array([0, 1]))
    code, _, err = run(capsys, "train --dataset", data)
    assert_refused(code, err, "--dataset", str(data), "Python objects")


def test_a_truncated_npy_names_the_input(capsys, tmp_path, model_file):
    samples = tmp_path / "cut.npy"
    np.save(samples, np.zeros((4, 2)))
    samples.write_bytes(samples.read_bytes()[:100])
    code, _, err = run(capsys, "predict", model_file, "--input", samples)
    assert_refused(code, err, "--input", str(samples), "cannot be read")
