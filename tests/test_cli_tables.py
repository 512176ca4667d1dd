"""``portnn`` on a user's own CSV tables: the task detected, features standardized and
one-hot encoded inside the model, class names kept, and evaluate/predict with no
repeated flags. Compared with scikit-learn's MLP on the same split."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import portnn as pn

from test_cli import accuracy_of, assert_one_line_error, needs_io, run_main

datasets = pytest.importorskip("sklearn.datasets")


def _score(name: str, out: str) -> float:
    found = re.findall(rf"^test {name}: (-?[0-9.]+)$", out, flags=re.MULTILINE)
    assert len(found) == 1, out
    return float(found[0])


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tables")
    diabetes = datasets.load_diabetes(as_frame=True, scaled=False).frame
    diabetes.to_csv(folder / "diabetes.csv", index=False)
    iris = datasets.load_iris(as_frame=True)
    frame = iris.frame.drop(columns="target")
    frame.insert(0, "species", [iris.target_names[t] for t in iris.target])  # the label comes first
    frame.to_csv(folder / "iris.csv", index=False)
    datasets.load_wine(as_frame=True).frame.to_csv(folder / "wine.csv", index=False)  # unscaled
    return folder


def _sklearn(task: str, split, seed: int = 0) -> float:
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    estimator = MLPRegressor if task == "regression" else MLPClassifier
    model = make_pipeline(StandardScaler(), estimator(hidden_layer_sizes=(128,), max_iter=1000, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(split.X_train, split.y_train)
    return model.score(split.X_test, split.y_test)  # R² or accuracy


def _split(path, target=None):
    import argparse

    from portnn.cli.sources import training_split

    args = argparse.Namespace(dataset=str(path), target=target, task="auto", test_size=0.2, seed=0)
    return training_split(args)


def test_regression_is_detected_and_scored_as_scikit_learn_scores_it(capsys, tables, tmp_path):
    needs_io()
    model = tmp_path / "diabetes.safetensors"
    code, out, err = run_main(capsys, "train --dataset", tables / "diabetes.csv", "--verbose 0 --out", model)
    assert code == 0, err
    assert "task: regression (the target 'target' holds 214 distinct whole numbers)" in out
    r2 = _score("r2", out)
    # within a point of scikit-learn's MLP on the same rows (standardized features)
    assert r2 >= _sklearn("regression", _split(tables / "diabetes.csv")) - 0.01, out

    # the model predicts in the target's units, and its scores are scikit-learn's
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    split = _split(tables / "diabetes.csv")
    net = pn.load(model, backend="numpy")
    predicted = np.asarray(pn.to_numpy(net.predict(split.X_test)))[:, 0]
    assert r2_score(split.y_test, predicted) == pytest.approx(r2, abs=1e-4)
    assert mean_squared_error(split.y_test, predicted) == pytest.approx(_score("mse", out), rel=1e-4)
    assert mean_absolute_error(split.y_test, predicted) == pytest.approx(_score("mae", out), rel=1e-4)

    # evaluate needs no --target, predict reads the same layout and prints values
    code, out2, err = run_main(capsys, "evaluate", model, "--dataset", tables / "diabetes.csv")
    assert code == 0, err
    assert _score("r2", out2) == pytest.approx(r2, abs=1e-4)
    code, out3, err = run_main(capsys, "predict", model, "--input", tables / "diabetes.csv")
    assert code == 0, err
    values = [float(v) for v in out3.split()]
    assert len(values) == 442 and 20 < np.mean(values) < 400  # in the target's units, not standardized


def test_text_labels_are_kept_as_names(capsys, tables, tmp_path):
    needs_io()
    model = tmp_path / "iris.safetensors"
    # the label is the first column: without --target, a hint says so
    code, out, err = run_main(capsys, "train --dataset", tables / "iris.csv", "--epochs 0 --verbose 0")
    assert code == 0, err
    assert "if it is the target, pass --target species" in out
    code, out, err = run_main(
        capsys, "train --dataset", tables / "iris.csv", "--target species --verbose 0 --out", model
    )
    assert code == 0, err
    assert "task: classification (the target 'species' holds 3 text labels)" in out
    accuracy = accuracy_of(out)
    assert accuracy >= _sklearn("classification", _split(tables / "iris.csv", "species")) - 0.01, out
    code, out, err = run_main(capsys, "evaluate", model, "--dataset", tables / "iris.csv")
    assert code == 0 and accuracy_of(out) == accuracy, err
    code, out, err = run_main(capsys, "predict", model, "--input", tables / "iris.csv")
    assert code == 0, err
    names = out.split()
    assert set(names) <= {"setosa", "versicolor", "virginica"} and len(names) == 150
    assert names[:5] == ["setosa"] * 5
    code, out, err = run_main(capsys, "predict", model, "--input", tables / "iris.csv", "--proba")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "setosa,versicolor,virginica"
    rows = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-5)
    assert [["setosa", "versicolor", "virginica"][k] for k in rows.argmax(axis=1)] == names


def test_an_unscaled_table_is_standardized_inside_the_model(capsys, tables, tmp_path):
    needs_io()
    model = tmp_path / "wine.safetensors"
    code, out, err = run_main(capsys, "train --dataset", tables / "wine.csv", "--verbose 0 --out", model)
    assert code == 0, err
    assert "standardize 13 -> 128 -> 3" in out
    scaled = accuracy_of(out)
    assert scaled >= _sklearn("classification", _split(tables / "wine.csv")) - 0.01, out
    net = pn.load(model, backend="numpy")
    assert isinstance(net.layers[0], pn.Standardize)
    split = _split(tables / "wine.csv")
    np.testing.assert_allclose(pn.to_numpy(net.layers[0].mean), split.X_train.mean(axis=0), rtol=1e-5)
    code, out, err = run_main(
        capsys, "train --dataset", tables / "wine.csv", "--no-scale --epochs 20 --verbose 0"
    )
    assert code == 0, err
    assert "standardize" not in out
    assert accuracy_of(out) < scaled  # raw magnesium and proline swamp the rest


def test_categorical_columns_are_one_hot_and_unknown_ones_are_named(capsys, tmp_path, rng):
    needs_io()
    colour = rng.choice(["red", "green", "blue"], size=120)
    size = rng.normal(size=120)
    label = np.where((colour == "red") | (size > 1.0), "yes", "no")
    rows = ["colour,size,label"] + [f"{c},{s:.4f},{t}" for c, s, t in zip(colour, size, label)]
    data = tmp_path / "colours.csv"
    data.write_text("\n".join(rows) + "\n")
    model = tmp_path / "colours.safetensors"
    code, out, err = run_main(capsys, "train --dataset", data, "--verbose 0 --out", model)
    assert code == 0, err
    assert "4 features, 2 classes" in out  # blue, green, red one-hot, and size
    assert accuracy_of(out) > 0.9
    new = tmp_path / "new.csv"
    new.write_text("size,colour\n0.0,red\n0.0,green\n")  # another column order, no label
    code, out, err = run_main(capsys, "predict", model, "--input", new)
    assert code == 0, err
    assert out.split() == ["yes", "no"]
    new.write_text("size,colour\n0.0,purple\n")
    code, out, err = run_main(capsys, "predict", model, "--input", new)
    assert code == 2
    assert_one_line_error(err, "'purple'", "column 'colour'", "--ignore-unknown")
    code, out, err = run_main(capsys, "predict", model, "--input", new, "--ignore-unknown")
    assert code == 0 and out.split() == ["no"], err


@pytest.mark.parametrize(
    ("text", "task"),
    [("a,1\nb,2\na,3\n", "classification"), ("0,1\n1,2\n0,3\n", "classification"), ("0.5,1\n1.25,2\n", "regression")],
)
def test_the_task_is_said_with_its_reason(capsys, tmp_path, text, task):
    data = tmp_path / "t.csv"
    data.write_text("y,x\n" + text * 10)
    code, out, err = run_main(capsys, "train --dataset", data, "--target y --epochs 1 --verbose 0")
    assert code == 0, err
    assert f"task: {task} (the target 'y' holds" in out


def test_task_can_be_chosen(capsys, tmp_path):
    data = tmp_path / "t.csv"
    data.write_text("y,x\n" + "0,1\n1,2\n2,3\n" * 10)
    code, out, err = run_main(capsys, "train --dataset", data, "--target y --task regression --epochs 1 --verbose 0")
    assert code == 0 and "task: regression (--task)" in out, err
    data.write_text("y,x\n" + "a,1\nb,2\n" * 10)
    code, out, err = run_main(capsys, "train --dataset", data, "--target y --task regression --epochs 1 --verbose 0")
    assert code == 2
    assert_one_line_error(err, "target 'y'", "'a'", "not a number")
