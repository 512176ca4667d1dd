"""scikit-learn estimators: ``portnn.MLPClassifier`` and ``portnn.MLPRegressor``.

scikit-learn's own estimator checks run on NumPy; the rest checks behaviour
against scikit-learn's MLP (the same loss, penalty and step from the same
weights), against ``portnn.fit`` called directly, inside scikit-learn's
tools, through pickling, and with array API inputs. Tests that name a backend
train on it whatever the backend under test; the backend under test is the one
``test_trains_on_the_backend_under_test`` trains on.
"""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn", minversion="1.6")

from sklearn import neural_network
from sklearn.base import clone
from sklearn.datasets import load_digits, load_iris
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import portnn as pn
from portnn.backend import _library_name
from portnn.estimators import MLPClassifier, MLPRegressor
from portnn.losses import HalfSquaredError

not_converged = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def quietly(estimator, *args, **kwargs):
    """``estimator.fit(*args)`` with the ConvergenceWarning of a short run silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(*args, **kwargs)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return StandardScaler().fit_transform(X), y


@pytest.fixture
def numpy_only(backend_name):
    if backend_name != "numpy":
        pytest.skip("runs once, on the numpy session")


@pytest.fixture
def dispatch(monkeypatch):
    """scikit-learn's array_api_dispatch. scikit-learn refuses it unless SCIPY_ARRAY_API=1;
    SciPy was imported before this sets it, which is fine here: the estimators' array API
    path calls no SciPy function on the arrays."""
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    with sklearn.config_context(array_api_dispatch=True):
        yield


# ---------------------------------------------------------------- scikit-learn's checks


@parametrize_with_checks([MLPClassifier(), MLPRegressor()])
@not_converged
def test_sklearn_estimator_checks(estimator, check, numpy_only, monkeypatch):
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")  # for the array API checks (see `dispatch`)
    check(estimator)


# ---------------------------------------------------------------- import


def test_portnn_imports_without_scikit_learn():
    code = (
        "import sys\n"
        "import portnn as pn\n"
        "assert 'sklearn' not in sys.modules, 'import portnn imported scikit-learn'\n"
        "sys.modules['sklearn'] = None  # as if it were not installed\n"
        "pn.Sequential(pn.Dense(2, 2, seed=0))\n"
        "try:\n"
        "    pn.MLPClassifier\n"
        "except ImportError as e:\n"
        "    assert 'portnn[sklearn]' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no ImportError')\n"
        "assert 'MLPClassifier' not in pn.__all__\n"
    )
    env = {**os.environ, "PORTNN_BACKEND": "numpy"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert pn.MLPClassifier is MLPClassifier and pn.MLPRegressor is MLPRegressor


@pytest.mark.parametrize(
    "make, y",
    [
        (lambda: MLPRegressor(hidden_layer_sizes=(4,), max_iter=3), lambda rng: rng.normal(size=30)),
        (lambda: MLPRegressor(loss="poisson", hidden_layer_sizes=(4,), max_iter=3),
         lambda rng: rng.poisson(2.0, size=30).astype(float)),
        (lambda: MLPClassifier(hidden_layer_sizes=(4,), max_iter=3),
         lambda rng: rng.integers(0, 2, size=(30, 3))),
    ],
    ids=["squared_error", "poisson", "multilabel"],
)
def test_saved_model_loads_without_scikit_learn(make, y, tmp_path, numpy_only):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = make().fit(X, y(rng))
    path = tmp_path / "model.safetensors"
    est.model_.save(path)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "expected.npy", pn.to_numpy(est.model_.predict(X)))
    code = (
        "import sys, numpy as np\n"
        "sys.modules['sklearn'] = None  # as if it were not installed\n"
        "import portnn as pn\n"
        f"model = pn.load({str(path)!r})\n"
        f"got = pn.to_numpy(model.predict(np.load({str(tmp_path / 'X.npy')!r})))\n"
        f"np.testing.assert_array_equal(got, np.load({str(tmp_path / 'expected.npy')!r}))\n"
        "print(type(model.loss).__name__)\n"
    )
    env = {**os.environ, "PORTNN_BACKEND": "numpy"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == type(est.model_.loss).__name__


# ---------------------------------------------------------------- the same model as scikit-learn's


def initial_weights(sizes):
    """The weights the estimators start from: Dense layer i seeded with random_state + i (0 here)."""
    return [
        pn.to_numpy(pn.Dense(a, b, seed=i, dtype="float64").weight)
        for i, (a, b) in enumerate(zip(sizes, sizes[1:]))
    ]


TARGETS = {
    "binary": (MLPClassifier, neural_network.MLPClassifier, lambda rng: rng.integers(0, 2, 40)),
    "multiclass": (MLPClassifier, neural_network.MLPClassifier, lambda rng: rng.integers(0, 3, 40)),
    "multilabel": (
        MLPClassifier,
        neural_network.MLPClassifier,
        lambda rng: rng.integers(0, 2, (40, 3)),
    ),
    "regression": (MLPRegressor, neural_network.MLPRegressor, lambda rng: rng.normal(size=40)),
    "two outputs": (
        MLPRegressor,
        neural_network.MLPRegressor,
        lambda rng: rng.normal(size=(40, 2)),
    ),
    "poisson": (
        MLPRegressor,
        neural_network.MLPRegressor,
        lambda rng: rng.poisson(2.0, 40).astype(float),
    ),
}


@pytest.mark.parametrize("solver", ["sgd", "nesterov", "adam"])
@pytest.mark.parametrize("kind", list(TARGETS))
@not_converged
def test_same_losses_and_steps_as_scikit_learn(kind, solver, numpy_only):
    """From the same weights, scikit-learn's MLP and ours log the same losses (alpha's
    penalty included) and take the same steps, for every kind of target."""
    ours_cls, theirs_cls, targets = TARGETS[kind]
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(40, 5)), targets(rng)
    params = dict(
        hidden_layer_sizes=(7,),
        activation="tanh",
        alpha=0.5,
        learning_rate_init=0.05,
        batch_size=10,
        max_iter=3,
        shuffle=False,
        random_state=0,
        tol=0.0,
        n_iter_no_change=99,
        solver="adam" if solver == "adam" else "sgd",
        momentum=0.9,
        nesterovs_momentum=solver == "nesterov",
        epsilon=1e-30,  # Adam adds epsilon before (scikit-learn) or after (torch, portnn) the bias correction
    )
    if kind == "poisson":
        params["loss"] = "poisson"
    ours = ours_cls(**params).fit(X, y)
    theirs = theirs_cls(**{**params, "max_iter": 1}).fit(X, y)  # sets up its attributes
    theirs.set_params(warm_start=True, max_iter=3)
    theirs.coefs_ = initial_weights([5, 7, ours.n_outputs_])
    theirs.intercepts_ = [np.zeros(7), np.zeros(ours.n_outputs_)]
    theirs.fit(X, y)  # three epochs from our initial weights

    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_[1:], rtol=1e-12)
    for mine, its in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(pn.to_numpy(mine), its, rtol=1e-10, atol=1e-13)
    assert ours.out_activation_ == theirs.out_activation_ and ours.n_outputs_ == theirs.n_outputs_
    ours_p = (
        ours.predict_proba(X) if kind in ("binary", "multiclass", "multilabel") else ours.predict(X)
    )
    theirs.coefs_, theirs.intercepts_ = (
        [pn.to_numpy(w) for w in ours.coefs_],
        [pn.to_numpy(b) for b in ours.intercepts_],
    )
    theirs_p = (
        theirs.predict_proba(X)
        if kind in ("binary", "multiclass", "multilabel")
        else theirs.predict(X)
    )
    np.testing.assert_allclose(ours_p, theirs_p, rtol=1e-10, atol=1e-12)
    if ours_cls is MLPClassifier:
        np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))


def test_same_model_as_portnn_fit(iris):
    """The estimator is portnn's fit on a Sequential of Dense layers seeded from random_state."""
    X, y = iris
    est = quietly(
        MLPClassifier((8, 6), alpha=0.01, max_iter=6, batch_size=32, random_state=3, tol=0.0), X, y
    )
    with pn.use_backend("numpy"):  # NumPy data: the estimator trains on NumPy
        model = pn.Sequential(
            pn.Dense(4, 8, seed=3, dtype="float64", l2=0.01 / 64),
            pn.ReLU(),
            pn.Dense(8, 6, seed=4, dtype="float64", l2=0.01 / 64),
            pn.ReLU(),
            pn.Dense(6, 3, seed=5, dtype="float64", l2=0.01 / 64),
        )
        history = model.fit(
            X,
            y,
            loss="cross_entropy",
            optimizer=pn.Adam(0.001),
            epochs=6,
            batch_size=32,
            seed=3,
            verbose=0,
        )
    np.testing.assert_array_equal(est.loss_curve_, history["loss"])
    np.testing.assert_array_equal(est.predict_proba(X), pn.to_numpy(pn.predict_proba(model, X)))
    assert isinstance(est.model_, pn.Sequential) and est.model_.backend == "numpy"
    assert est.n_iter_ == 6 and est.t_ == 6 * 150 and est.n_layers_ == 4 and est.n_features_in_ == 4


# ---------------------------------------------------------------- learning


@not_converged
def test_digits_accuracy_and_fitted_attributes(digits):
    X_train, X_test, y_train, y_test = digits
    est = MLPClassifier((64,), max_iter=25, random_state=0).fit(X_train, y_train)
    assert est.score(X_test, y_test) > 0.9
    np.testing.assert_array_equal(est.classes_, np.arange(10))
    proba = est.predict_proba(X_test)
    assert proba.shape == (len(X_test), 10) and np.allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_allclose(est.predict_log_proba(X_test), np.log(proba), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(est.predict(X_test), est.classes_[proba.argmax(axis=1)])
    assert len(est.loss_curve_) == est.n_iter_ == 25 and est.loss_ == est.loss_curve_[-1]
    assert est.best_loss_ == min(est.loss_curve_) and est.validation_scores_ is None
    assert est.loss_curve_[-1] < est.loss_curve_[0] / 5


def test_string_labels_binary_and_regression(iris):
    X, y = iris
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    est = quietly(
        MLPClassifier((16,), max_iter=100, random_state=0, learning_rate_init=0.01), X, names
    )
    assert est.classes_.tolist() == ["setosa", "versicolor", "virginica"]
    assert est.predict(X).dtype == names.dtype and est.score(X, names) > 0.9
    binary = quietly(
        MLPClassifier((16,), max_iter=100, random_state=0, learning_rate_init=0.01),
        X,
        names == "setosa",
    )
    assert binary.n_outputs_ == 1 and binary.out_activation_ == "logistic"
    assert binary.predict_proba(X).shape == (150, 2) and binary.score(X, names == "setosa") > 0.95
    target = X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.3
    reg = quietly(
        MLPRegressor(
            hidden_layer_sizes=(32,), max_iter=300, random_state=0, learning_rate_init=0.01
        ),
        X,
        target,
    )
    assert reg.score(X, target) > 0.95 and reg.predict(X).shape == (150,)


def test_multilabel_and_multioutput(iris):
    X, y = iris
    labels = np.stack([y == 0, y == 2, X[:, 0] > 0], axis=1).astype(np.int64)
    est = quietly(
        MLPClassifier((32,), max_iter=200, random_state=0, learning_rate_init=0.01), X, labels
    )
    assert est.predict(X).shape == (150, 3) and est.predict_proba(X).shape == (150, 3)
    assert est.score(X, labels) > 0.9  # subset accuracy
    targets = np.stack([X[:, 0] - X[:, 1], 2 * X[:, 2]], axis=1)
    reg = quietly(
        MLPRegressor(
            hidden_layer_sizes=(32,), max_iter=300, random_state=0, learning_rate_init=0.01
        ),
        X,
        targets,
    )
    assert reg.predict(X).shape == (150, 2) and reg.score(X, targets) > 0.95


def test_poisson_predictions_are_positive(iris):
    X, _ = iris
    counts = np.random.default_rng(0).poisson(np.exp(0.5 * X[:, 0] + 0.5))
    est = quietly(
        MLPRegressor(
            "poisson",
            hidden_layer_sizes=(16,),
            max_iter=200,
            random_state=0,
            learning_rate_init=0.01,
        ),
        X,
        counts,
    )
    pred = est.predict(X)
    assert est.out_activation_ == "exp" and (pred > 0).all()
    assert np.corrcoef(pred, np.exp(0.5 * X[:, 0] + 0.5))[0, 1] > 0.9
    with pytest.raises(ValueError, match="negative"):
        MLPRegressor("poisson").fit(X, -counts)


# ---------------------------------------------------------------- scikit-learn's tools


@not_converged
def test_pipeline_cross_val_score_and_grid_search(iris):
    X, y = load_iris(return_X_y=True)
    pipeline = make_pipeline(
        StandardScaler(), MLPClassifier((16,), max_iter=60, random_state=0, learning_rate_init=0.01)
    )
    scores = cross_val_score(pipeline, X, y, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.85
    search = GridSearchCV(
        MLPClassifier((16,), max_iter=30, random_state=0),
        {"learning_rate_init": [1e-6, 0.03]},  # the first barely moves in 30 epochs
        cv=3,
    ).fit(iris[0], y)
    assert search.best_params_ == {"learning_rate_init": 0.03} and search.best_score_ > 0.85
    assert search.best_estimator_.score(iris[0], y) > 0.9


def test_clone_and_parameters():
    est = MLPClassifier((5, 3), alpha=0.1, dropout=0.2, optimizer=pn.SGD(lr=0.05), backend="numpy")
    twin = clone(est)
    assert twin.get_params()["hidden_layer_sizes"] == (5, 3) and twin.dropout == 0.2
    assert twin.optimizer is not est.optimizer and twin.optimizer.lr == 0.05
    assert twin.set_params(alpha=1.0).alpha == 1.0 and est.alpha == 0.1
    assert "loss" in MLPRegressor().get_params() and "loss" not in MLPClassifier().get_params()


# ---------------------------------------------------------------- training rules


def test_partial_fit_equals_fit(iris):
    X, y = iris
    params = dict(
        hidden_layer_sizes=(8,), random_state=0, batch_size=50, tol=0.0, n_iter_no_change=99
    )
    whole = quietly(MLPClassifier(max_iter=4, **params), X, y)
    steps = MLPClassifier(**params)
    with pytest.raises(ValueError, match="classes must be passed"):
        steps.partial_fit(X, y)
    for _ in range(4):
        steps.partial_fit(X, y, classes=[0, 1, 2])
    np.testing.assert_array_equal(steps.loss_curve_, whole.loss_curve_)
    np.testing.assert_array_equal(steps.predict_proba(X), whole.predict_proba(X))
    assert steps.n_iter_ == 1 and steps.t_ == 4 * 150  # as scikit-learn: n_iter_ counts this call
    steps.partial_fit(X[y < 2], y[y < 2])  # a batch need not hold every class
    with pytest.raises(ValueError, match="not in `self.classes_`"):
        steps.partial_fit(X, y + 1)
    with pytest.raises(ValueError, match="not the same as on last call"):
        steps.partial_fit(X, y, classes=[0, 1])
    reg = MLPRegressor(hidden_layer_sizes=(4,), random_state=0).partial_fit(X, X[:, 0])
    assert reg.n_iter_ == 1 and len(reg.loss_curve_) == 1
    with pytest.raises(ValueError, match="early_stopping"):
        MLPRegressor(early_stopping=True).partial_fit(X, X[:, 0])


def test_warm_start_continues(iris):
    X, y = iris
    est = quietly(MLPClassifier((8,), max_iter=5, random_state=0), X, y)
    first = list(est.loss_curve_)
    weights = pn.to_numpy(est.coefs_[0]).copy()
    quietly(est, X, y)  # no warm start: the same fit again
    assert est.loss_curve_ == first
    quietly(est.set_params(warm_start=True), X, y)
    assert est.loss_curve_[:5] == first and len(est.loss_curve_) == 10 and est.n_iter_ == 5
    assert est.loss_curve_[5] < first[0] and not np.array_equal(pn.to_numpy(est.coefs_[0]), weights)
    with pytest.raises(ValueError, match="same classes"):
        est.fit(X[y < 2], y[y < 2])


def test_stops_when_the_loss_stops_improving(iris):
    X, y = iris
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # it stopped: no warning
        est = MLPClassifier((8,), max_iter=100, tol=10.0, n_iter_no_change=3, random_state=0).fit(
            X, y
        )
        theirs = neural_network.MLPClassifier(
            (8,), max_iter=100, tol=10.0, n_iter_no_change=3, random_state=0
        ).fit(X, y)
    # the first epoch sets the best loss; four more without improving by tol make more than 3: stop
    assert est.n_iter_ == theirs.n_iter_ == 5
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        MLPClassifier((8,), max_iter=3, random_state=0).fit(X, y)


def test_early_stopping_keeps_the_best_epoch(digits):
    X, _, y, _ = digits
    common = dict(early_stopping=True, n_iter_no_change=5, random_state=0, learning_rate_init=0.01)
    clf = MLPClassifier((32,), max_iter=40, **common).fit(X, y)
    reg = MLPRegressor(hidden_layer_sizes=(32,), max_iter=200, **common).fit(X, y.astype(float))
    for est, stratify in ((clf, y), (reg, None)):
        scores = est.validation_scores_
        assert len(scores) == est.n_iter_ < est.max_iter and est.best_loss_ is None
        assert est.best_validation_score_ == max(scores) > scores[-1]  # the last epoch was not the best
        # the held-out tenth: scikit-learn's split, seeded with random_state, stratified for classes
        _, rows = train_test_split(
            np.arange(len(y)), test_size=0.1, random_state=0, stratify=stratify
        )
        assert est.score(X[rows], y[rows]) == pytest.approx(est.best_validation_score_, rel=1e-12)
    assert clf.best_validation_score_ > 0.9 and reg.best_validation_score_ > 0.7


def test_sgd_learning_rate_schedules(iris):
    X, y = iris
    est = quietly(
        MLPClassifier(
            (8,), solver="sgd", learning_rate="invscaling", power_t=0.5, max_iter=3, random_state=0
        ),
        X,
        y,
    )
    assert pn.optim.learning_rate(est.model_.optimizer_state) == pytest.approx(0.001 / (3 * 150 + 1) ** 0.5)
    est = quietly(
        MLPClassifier(
            (8,),
            solver="sgd",
            learning_rate="adaptive",
            tol=10.0,
            n_iter_no_change=2,
            max_iter=7,
            random_state=0,
        ),
        X,
        y,
    )
    assert pn.optim.learning_rate(est.model_.optimizer_state) == pytest.approx(0.001 / 25)  # divided by 5 after epochs 4 and 7


def test_optimizer_dropout_and_batch_norm(iris):
    X, y = iris
    given = pn.SGD(lr=0.05, momentum=0.5)
    est = quietly(
        MLPClassifier(
            (16, 8), optimizer=given, dropout=0.1, batch_norm=True, max_iter=40, random_state=0
        ),
        X,
        y,
    )
    kinds = [type(m).__name__ for m in est.model_]
    assert kinds == [
        "Dense",
        "BatchNorm",
        "ReLU",
        "Dropout",
        "Dense",
        "BatchNorm",
        "ReLU",
        "Dropout",
        "Dense",
    ]
    assert (
        est.model_.optimizer is not given
        and est.model_.optimizer.lr == 0.05
        and est.score(X, y) > 0.9
    )
    est = quietly(
        MLPClassifier((4,), optimizer="rmsprop", learning_rate_init=0.02, max_iter=2), X, y
    )
    assert isinstance(est.model_.optimizer, pn.RMSProp) and est.model_.optimizer.lr == 0.02


def test_verbose_prints_like_scikit_learn(iris, capsys):
    quietly(MLPClassifier((4,), max_iter=2, verbose=True, random_state=0), *iris)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Iteration 1, loss = ") and lines[1].startswith(
        "Iteration 2, loss = "
    )


@pytest.mark.parametrize(
    "params, name",
    [
        ({"alpha": -1.0}, "alpha"),
        ({"activation": "softmax"}, "activation"),
        ({"solver": "lbfgs"}, "solver"),
        ({"hidden_layer_sizes": (10, 0)}, "hidden_layer_sizes"),
        ({"max_iter": 0}, "max_iter"),
        ({"batch_size": "all"}, "batch_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"optimizer": "nope"}, "optimizer"),
        ({"dtype": "int32"}, "dtype"),
        ({"backend": "nope"}, "backend"),
        ({"validation_fraction": 1.5, "early_stopping": True}, "validation_fraction"),
    ],
)
def test_bad_parameters_fail_at_fit_naming_them(params, name, iris):
    est = MLPClassifier(**params)  # __init__ only stores
    with pytest.raises(ValueError, match=name):
        est.fit(*iris)
    with pytest.raises(NotFittedError):
        MLPClassifier().predict(iris[0])


# ---------------------------------------------------------------- pickling


def arrays_in(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from arrays_in(value)
    elif isinstance(tree, list | tuple):
        for value in tree:
            yield from arrays_in(value)
    elif (
        hasattr(tree, "__dict__")
        and not isinstance(tree, type)
        and type(tree).__module__.startswith("portnn")
    ):
        yield from arrays_in(vars(tree))
    elif hasattr(tree, "shape"):
        yield tree


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_pickle_keeps_predictions_and_training_state(library, iris):
    if library == "torch":
        pytest.importorskip("torch")
    X, y = iris
    est = quietly(
        MLPClassifier(
            (16,), dropout=0.2, batch_norm=True, max_iter=5, random_state=0, backend=library
        ),
        X,
        y,
    )
    state = est.__getstate__()
    assert all(_library_name(a) in (None, "numpy") for a in arrays_in(state)), (
        "weights pickled as NumPy"
    )
    again = pickle.loads(pickle.dumps(est))
    assert again.model_.backend == library and type(again.model_.parameters()["0.weight"]) is type(
        est.model_.parameters()["0.weight"]
    )
    np.testing.assert_array_equal(again.predict_proba(X), est.predict_proba(X))
    np.testing.assert_array_equal(again.predict(X), est.predict(X))
    # the optimizer state, running statistics and dropout generator came along: training goes on identically
    est.partial_fit(X, y)
    again.partial_fit(X, y)
    np.testing.assert_array_equal(again.predict_proba(X), est.predict_proba(X))
    twin = copy.deepcopy(est)
    np.testing.assert_array_equal(twin.predict_proba(X), est.predict_proba(X))


def test_trains_on_the_backend_under_test(backend, backend_name, backend_device, iris, float64_ok):
    """backend= trains there; NumPy data in, NumPy answers out; pickling restores it there."""
    X, y = iris
    dtype = "float64" if float64_ok else "float32"
    est = quietly(
        MLPClassifier(
            (16,),
            max_iter=60,
            random_state=0,
            learning_rate_init=0.01,
            backend=backend_name,
            device=backend_device,
            dtype=dtype,
        ),
        X,
        y,
    )
    assert str(est.model_.backend) == backend_name and est.model_.backend.device == backend.device
    assert _library_name(est.coefs_[0]) == backend_name
    proba = est.predict_proba(X)
    assert isinstance(proba, np.ndarray) and isinstance(est.predict(X), np.ndarray)
    assert est.score(X, y) > 0.9
    reference = quietly(clone(est).set_params(backend="numpy", device=None), X, y)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == "float32" else {"rtol": 1e-9, "atol": 1e-11}
    np.testing.assert_allclose(proba, reference.predict_proba(X), **tol)
    again = pickle.loads(pickle.dumps(est))
    assert str(again.model_.backend) == backend_name and again.model_.backend.device == backend.device
    np.testing.assert_array_equal(again.predict_proba(X), proba)


def test_input_library_decides_the_backend_whatever_the_default(backend_name, iris):
    """backend=None: NumPy data trains on NumPy even when the default backend is another."""
    est = quietly(
        MLPRegressor(hidden_layer_sizes=(4,), max_iter=3, random_state=0),
        iris[0],
        iris[1].astype(float),
    )
    assert pn.get_backend() == backend_name and est.model_.backend == "numpy"
    assert isinstance(est.predict(iris[0]), np.ndarray)


# ---------------------------------------------------------------- array API inputs


@pytest.mark.parametrize("library", ["torch", "array_api_strict"])
def test_array_api_dispatch_trains_on_the_input_library(library, iris, dispatch):
    xp = pytest.importorskip(library)
    X, y = iris
    if library == "torch":
        Xa, ya = xp.asarray(X, dtype=xp.float32), xp.asarray(y)
    else:
        device = xp.Device("device1")
        Xa, ya = xp.asarray(X.astype(np.float32), device=device), xp.asarray(y, device=device)
    est = MLPClassifier((16,), max_iter=60, random_state=0, learning_rate_init=0.01)
    quietly(est, Xa, ya)
    assert str(est.model_.backend) == library and _library_name(est.classes_) == library
    labels, proba = est.predict(Xa), est.predict_proba(Xa)
    assert _library_name(labels) == library and _library_name(proba) == library
    assert proba.dtype == xp.float32 and labels.dtype == xp.int64
    if library == "array_api_strict":
        assert labels.device == Xa.device and proba.device == Xa.device
    assert isinstance(est.score(Xa, ya), float) and est.score(Xa, ya) > 0.9
    with pytest.raises(ValueError, match="same namespace"):
        est.predict(X)
    reference = quietly(clone(est), X.astype(np.float32), y)  # the same seeds on NumPy
    np.testing.assert_allclose(
        pn.to_numpy(proba), reference.predict_proba(X.astype(np.float32)), rtol=1e-4, atol=1e-5
    )
    again = pickle.loads(pickle.dumps(est))
    assert _library_name(again.classes_) == library and str(again.model_.backend) == library
    np.testing.assert_array_equal(pn.to_numpy(again.predict_proba(Xa)), pn.to_numpy(proba))


def test_torch_regression_under_dispatch_and_without(iris, monkeypatch):
    torch = pytest.importorskip("torch")
    X, _ = iris
    target = torch.asarray(X[:, 0] - X[:, 1])
    Xt = torch.asarray(X)
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    with sklearn.config_context(array_api_dispatch=True):
        est = quietly(MLPRegressor(hidden_layer_sizes=(8,), max_iter=5, random_state=0), Xt, target)
        pred = est.predict(Xt)
        assert (
            isinstance(pred, torch.Tensor) and pred.dtype == torch.float64 and pred.shape == (150,)
        )
    plain = quietly(
        MLPRegressor(hidden_layer_sizes=(8,), max_iter=5, random_state=0), Xt, target
    )  # no dispatch: NumPy
    assert plain.model_.backend == "numpy" and isinstance(plain.predict(Xt), np.ndarray)
    np.testing.assert_allclose(plain.predict(Xt), pred.numpy(), rtol=1e-9, atol=1e-12)


def test_half_squared_error_is_half_the_mse():
    pred = np.array([[1.0, 2.0], [3.0, 5.0]])
    target = np.zeros((2, 2))
    value, grad = HalfSquaredError().value_and_grad(pred, target, np)
    assert float(value) == pytest.approx(float(pn.MSELoss()(pred, target)) / 2)
    np.testing.assert_array_equal(
        grad, pred / 2
    )  # scikit-learn's gradient: (pred - target) / n_samples
