"""``portnn train --model cnn``: a convolutional network from the command line, and what
evaluate, predict and export do with it. Run in process on the backend under test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import portnn as pn
from portnn.cli import main
from portnn.datasets import load_dataset

from test_cli import accuracy_of, argv, assert_one_line_error, needs_io, run_main

pytest.importorskip("sklearn")  # the digits

SMALL = "train --dataset digits --model cnn --conv 8:3,pool --hidden 32 --seed 3 --verbose 0"


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory):
    needs_io()
    path = tmp_path_factory.mktemp("cnn") / "cnn.safetensors"
    assert main(argv(SMALL, "--epochs 15 --out", path)) == 0
    return path


def test_train_builds_the_layers_of_the_spec(capsys):
    code, out, _ = run_main(capsys, SMALL, "--epochs 0")
    assert code == 0
    # digits are 8x8 images of one channel: 8 filters of 3x3 give 6x6, the pool 3x3
    assert "model: cnn 1x8x8 -> conv 8:3 -> pool 2 -> dropout 0.25 -> 72 -> 32 -> dropout 0.5 -> 10 (relu)" in out
    assert f"{8 * 9 + 8 + 72 * 32 + 32 + 32 * 10 + 10:,} parameters" in out


def test_spec_items_and_defaults(capsys):
    code, out, _ = run_main(
        capsys, "train --dataset digits --conv 4:3:same,avgpool,6:2,pool:3 --hidden 0 --dropout 0",
        "--epochs 0 --verbose 0",
    )
    assert code == 0  # --conv alone means --model cnn
    # same keeps 8x8, avgpool halves it to 4x4, 6:2 gives 3x3, pool:3 gives 1x1
    assert "cnn 1x8x8 -> conv 4:3:same -> avgpool 2 -> conv 6:2 -> pool 3 -> 6 -> 10 (relu)" in out


def test_the_cnn_learns_and_the_file_serves_evaluate_predict_and_export(capsys, cnn_file, tmp_path):
    X_train, X_test, y_train, y_test = load_dataset("digits", seed=3)
    code, out, _ = run_main(capsys, "evaluate", cnn_file, "--dataset digits --seed 3")
    assert code == 0
    accuracy = accuracy_of(out)
    assert accuracy > 0.8, out  # 15 epochs of a small CNN; chance is 0.1

    model = pn.load(cnn_file, backend="numpy")
    assert isinstance(model.layers[1], pn.Conv2D) and isinstance(model.layers[0], pn.Reshape)
    expected = np.asarray(pn.to_numpy(model.predict_classes(X_test)), dtype=np.int64)
    assert np.mean(expected == y_test) == pytest.approx(accuracy, abs=1e-4)

    # the same classes from flat rows in a CSV and from images in a .npy file
    rows = tmp_path / "rows.csv"
    np.savetxt(rows, X_test, delimiter=",")
    images = tmp_path / "images.npy"
    np.save(images, X_test.reshape(-1, 1, 8, 8))
    for source in (rows, images):
        code, out, err = run_main(capsys, "predict", cnn_file, "--input", source)
        assert code == 0, err
        assert [int(v) for v in out.split()] == expected.tolist()

    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    onnx_file = tmp_path / "cnn.onnx"
    code, out, err = run_main(capsys, "export", cnn_file, onnx_file)
    assert code == 0, err
    assert "input 'input' of shape (N, 64)" in out
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": X_test.astype(np.float32)})[0]
    np.testing.assert_allclose(got, pn.to_numpy(model.predict(X_test)), rtol=1e-4, atol=1e-5)


def test_predict_names_a_wrong_image_size(capsys, cnn_file, tmp_path):
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 1, 7, 7), dtype=np.float32))
    code, _, err = run_main(capsys, "predict", cnn_file, "--input", wrong)
    assert code == 2
    assert_one_line_error(err, "takes 64 features", "has 49")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        ("--conv 8", ["--conv", "'8' is none of them"]),
        ("--conv pool", ["at least one convolution"]),
        ("--conv 8:3:full", ["'8:3:full'"]),
        ("--conv 0:3", ["'0:3'"]),
        ("--model mlp --conv 8:3", ["--conv is for a convolutional network"]),
        ("--model cnn --conv 8:5,pool,8:3", ["after '8:3'", "no pixels left"]),
        ("--model cnn --image-shape 1,8", ["--image-shape", "channels,height,width"]),
        ("--model cnn --image-shape 1,4,4", ["holds 16 values", "64 features"]),
        ("--dropout 1", ["--dropout", "[0, 1)"]),
    ],
)
def test_bad_specs_are_one_line_errors(capsys, args, fragments):
    code, out, err = run_main(capsys, "train --dataset digits --epochs 1 --verbose 0", args)
    assert code == 2
    assert_one_line_error(err, *fragments)
    assert "trained" not in out


def test_a_feature_table_that_is_not_a_square_needs_an_image_shape(capsys, tmp_path):
    data = tmp_path / "wide.npz"
    rng = np.random.default_rng(0)
    np.savez(data, X=rng.random((40, 12), dtype=np.float32), y=np.arange(40) % 2)
    code, _, err = run_main(capsys, "train --dataset", data, "--model cnn --epochs 1 --verbose 0")
    assert code == 2
    assert_one_line_error(err, "12 features", "not a square image", "--image-shape")
    code, out, err = run_main(
        capsys, "train --dataset", data, "--model cnn --image-shape 3,2,2 --conv 4:1 --hidden 0",
        "--epochs 1 --verbose 0",
    )
    assert code == 0, err
    assert "cnn 3x2x2 -> conv 4:1 -> dropout 0.25 -> 16 -> 2" in out


def test_the_readme_cnn_command_reaches_97_percent_on_mnist5k(capsys, backend_name, tmp_path):
    # the command as the README gives it, on the default backend (NumPy): about two minutes
    if backend_name != "numpy":
        pytest.skip("the README's command runs on the default backend, numpy")
    pytest.importorskip("mlxtend")
    needs_io()
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    (line,) = [ln for ln in readme.splitlines() if ln.startswith("portnn train --dataset mnist5k --model cnn")]
    words = line.split()[1:]
    words[words.index("--out") + 1] = str(tmp_path / "cnn.safetensors")
    code, out, err = run_main(capsys, " ".join(words), "--verbose 0")
    assert code == 0, err
    assert accuracy_of(out) >= 0.97, out
    assert (tmp_path / "cnn.safetensors").is_file()
