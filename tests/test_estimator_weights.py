"""Sample and class weights in ``portnn.MLPClassifier`` and ``portnn.MLPRegressor``.

A weight of 0 leaves a sample out and an integer weight repeats it -- exactly so
with one full batch, where no other sample changes places (in mini-batches a
zero-weight sample still takes a slot, so the batches differ). ``class_weight``
is ``sample_weight`` computed from the labels; bad weights fail before the
estimator changes; weighted scores are scikit-learn's weighted metrics. The
estimators train NumPy data on NumPy whatever the backend under test, so these
tests run once, on the numpy session, except the one that trains on the backend
under test.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn", minversion="1.6")

from sklearn import neural_network
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split

import portnn as pn
from portnn.estimators import MLPClassifier, MLPRegressor

N = 40
# one full batch ("auto" is min(200, n_samples)), a penalty that counts, a fixed number of epochs
FULL_BATCH = dict(
    hidden_layer_sizes=(7,),
    activation="tanh",
    alpha=0.5,
    learning_rate_init=0.05,
    max_iter=15,
    shuffle=False,
    random_state=0,
    tol=0.0,
    n_iter_no_change=99,
)


@pytest.fixture
def numpy_only(backend_name):
    if backend_name != "numpy":
        pytest.skip("runs once, on the numpy session")


def quietly(estimator, *args, **kwargs):
    """``estimator.fit(*args, **kwargs)`` with the ConvergenceWarning of a short run silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(*args, **kwargs)


def _noise(rng, *shape):
    return 0.5 * rng.normal(size=shape)


KINDS = {
    "binary": (MLPClassifier, {}, lambda rng, X: (X[:, 0] + _noise(rng, len(X)) > 0).astype(int)),
    "multiclass": (
        MLPClassifier,
        {},
        lambda rng, X: np.argmax(X[:, :3] + _noise(rng, len(X), 3), axis=1),
    ),
    "multilabel": (
        MLPClassifier,
        {},
        lambda rng, X: (X[:, :3] + _noise(rng, len(X), 3) > 0).astype(int),
    ),
    "regression": (MLPRegressor, {}, lambda rng, X: X[:, 0] - 2 * X[:, 1] + _noise(rng, len(X))),
    "two outputs": (MLPRegressor, {}, lambda rng, X: X[:, :2] + _noise(rng, len(X), 2)),
    "poisson": (
        MLPRegressor,
        {"loss": "poisson"},
        lambda rng, X: rng.poisson(np.exp(0.5 * X[:, 0])).astype(float),
    ),
}


def _data(kind, n=N, seed=1):
    cls, params, target = KINDS[kind]
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    return cls, params, X, target(rng, X), rng


def _parameters(est):
    return [pn.to_numpy(p) for p in est.coefs_ + est.intercepts_]


def assert_same_fit(a, b, rtol=1e-10, atol=1e-12):
    """Two fitted estimators with the same weights, biases and loss curve."""
    assert len(a.loss_curve_) == len(b.loss_curve_)
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=rtol, atol=atol)
    for mine, theirs in zip(_parameters(a), _parameters(b), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=rtol, atol=atol)


def assert_different_fit(a, b):
    assert not all(np.allclose(p, q) for p, q in zip(_parameters(a), _parameters(b)))


# ---------------------------------------------------------------- what a weight means


@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_zero_weights_equal_leaving_the_samples_out(kind, solver, numpy_only):
    cls, params, X, y, rng = _data(kind)
    params = {**FULL_BATCH, **params, "solver": solver}
    out = rng.choice(N, size=12, replace=False)
    weights = np.ones(N)
    weights[out] = 0.0
    kept = np.setdiff1d(np.arange(N), out)
    weighted = quietly(cls(**params), X, y, sample_weight=weights)
    dropped = quietly(cls(**params), X[kept], y[kept])
    assert_same_fit(weighted, dropped)
    if cls is MLPClassifier and kind != "multilabel":
        np.testing.assert_array_equal(weighted.classes_, dropped.classes_)
    assert_different_fit(weighted, quietly(cls(**params), X, y))  # the zeros did something


@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_integer_weights_equal_repeated_samples(kind, solver, numpy_only):
    cls, params, X, y, rng = _data(kind)
    params = {**FULL_BATCH, **params, "solver": solver}
    counts = rng.integers(0, 4, size=N)  # 0 leaves out, 3 repeats three times
    assert counts.sum() <= 200  # the repeated data is one full batch too
    weighted = quietly(cls(**params), X, y, sample_weight=counts)
    repeated = quietly(cls(**params), X.repeat(counts, axis=0), y.repeat(counts, axis=0))
    assert_same_fit(weighted, repeated)
    # a scalar weighs every sample alike: 1 is no weights, 2 every sample twice (the
    # penalty's share then halves, as in scikit-learn)
    plain = quietly(cls(**params), X, y)
    assert_same_fit(quietly(cls(**params), X, y, sample_weight=1.0), plain)
    twice = quietly(cls(**params), X.repeat(2, axis=0), y.repeat(2, axis=0))
    assert_same_fit(quietly(cls(**params), X, y, sample_weight=2.0), twice)
    assert_different_fit(twice, plain)


def initial_weights(sizes):
    """The weights the estimators start from: Dense layer i seeded with random_state + i (0)."""
    return [
        pn.to_numpy(pn.Dense(a, b, seed=i, dtype="float64").weight)
        for i, (a, b) in enumerate(zip(sizes, sizes[1:]))
    ]


@pytest.mark.parametrize("solver", ["sgd", "nesterov", "adam"])
@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel", "regression", "poisson"])
def test_same_weighted_steps_as_scikit_learn(kind, solver, numpy_only):
    """From the same weights, scikit-learn's MLP fitted with ``sample_weight`` and ours log
    the same losses and arrive at the same weights (one full batch: scikit-learn divides
    alpha's penalty by each batch's sum of weights, the estimators by the batch size times
    the mean weight, which is the same sum for a full batch)."""
    cls, params, X, y, rng = _data(kind)
    theirs_cls = getattr(neural_network, cls.__name__)
    weights = rng.uniform(0.0, 3.0, size=N)
    params = {
        **FULL_BATCH,
        **params,
        "max_iter": 3,
        "solver": "adam" if solver == "adam" else "sgd",
        "nesterovs_momentum": solver == "nesterov",
        "epsilon": 1e-30,  # added before (scikit-learn) or after (portnn) the bias correction
    }
    ours = quietly(cls(**params), X, y, sample_weight=weights)
    theirs = quietly(theirs_cls(**{**params, "max_iter": 1}), X, y, sample_weight=weights)
    theirs.set_params(warm_start=True, max_iter=3)
    theirs.coefs_ = initial_weights([5, 7, ours.n_outputs_])
    theirs.intercepts_ = [np.zeros(7), np.zeros(ours.n_outputs_)]
    quietly(theirs, X, y, sample_weight=weights)  # three epochs from our initial weights
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_[1:], rtol=1e-12)
    for mine, its in zip(_parameters(ours), theirs.coefs_ + theirs.intercepts_, strict=True):
        np.testing.assert_allclose(mine, its, rtol=1e-10, atol=1e-13)


# ---------------------------------------------------------------- class_weight


@pytest.mark.parametrize("early_stopping", [False, True])
def test_balanced_class_weight_equals_its_sample_weight(early_stopping, numpy_only):
    rng = np.random.default_rng(2)
    y = rng.permutation(np.repeat([0, 1, 2], [60, 25, 15]))  # unbalanced
    X = rng.normal(size=(100, 4)) + 0.7 * np.eye(4)[y]
    params = dict(
        hidden_layer_sizes=(6,),
        max_iter=12,
        batch_size=16,
        learning_rate_init=0.02,
        random_state=0,
        early_stopping=early_stopping,
        n_iter_no_change=99,
    )
    balanced = quietly(MLPClassifier(class_weight="balanced", **params), X, y)
    per_class = len(y) / (3 * np.bincount(y))  # scikit-learn's "balanced"
    as_weights = quietly(MLPClassifier(**params), X, y, sample_weight=per_class[y])
    assert_same_fit(balanced, as_weights, rtol=1e-12, atol=1e-14)
    if early_stopping:
        np.testing.assert_allclose(balanced.validation_scores_, as_weights.validation_scores_)
    assert_different_fit(balanced, quietly(MLPClassifier(**params), X, y))
    # with sample_weight as well, each sample weighs the product
    extra = rng.uniform(0.5, 2.0, size=len(y))
    both = quietly(MLPClassifier(class_weight="balanced", **params), X, y, sample_weight=extra)
    product = quietly(MLPClassifier(**params), X, y, sample_weight=extra * per_class[y])
    assert_same_fit(both, product, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_dict_class_weight_takes_the_labels_of_y(n_classes, numpy_only):
    cls, _, X, y, rng = _data("multiclass" if n_classes == 3 else "binary")
    names = np.array(["cat", "dog", "emu"])[:n_classes]
    labels = names[y]
    chosen = {"cat": 3.0, "dog": 0.25} if n_classes == 2 else {"cat": 3.0, "emu": 0.5}
    params = dict(hidden_layer_sizes=(6,), max_iter=10, batch_size=8, random_state=0)
    weighted = quietly(MLPClassifier(class_weight=chosen, **params), X, labels)
    per_sample = np.array([chosen.get(label, 1.0) for label in labels])  # "dog" left out weighs 1
    as_weights = quietly(MLPClassifier(**params), X, labels, sample_weight=per_sample)
    assert_same_fit(weighted, as_weights, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(weighted.classes_, names)
    assert set(weighted.predict(X)) <= set(names)
    assert_different_fit(weighted, quietly(MLPClassifier(**params), X, labels))
    extra = rng.uniform(0.5, 2.0, size=N)
    assert_same_fit(
        quietly(MLPClassifier(class_weight=chosen, **params), X, labels, sample_weight=extra),
        quietly(MLPClassifier(**params), X, labels, sample_weight=extra * per_sample),
        rtol=1e-12,
        atol=1e-14,
    )
    # integer labels are looked up the same way, NumPy integers included
    by_index = {np.int64(0): 3.0, 1: 0.25} if n_classes == 2 else {0: 3.0, np.int64(2): 0.5}
    assert_same_fit(
        quietly(MLPClassifier(class_weight=by_index, **params), X, y),
        quietly(MLPClassifier(**params), X, y, sample_weight=per_sample),
        rtol=1e-12,
        atol=1e-14,
    )


@pytest.mark.parametrize(
    "class_weight, message",
    [
        ({"cow": 2.0}, r"class_weight has the label 'cow'"),
        ({"cat": -1.0}, r"class_weight\['cat'\] must be a finite number >= 0"),
        ({"cat": float("nan")}, r"class_weight\['cat'\] must be a finite number >= 0"),
        ({"cat": "heavy"}, r"class_weight\['cat'\] must be a finite number >= 0"),
        ({"cat": 0.0, "dog": 0.0, "emu": 0.0}, "every sample a weight of zero"),
        ("unbalanced", "'class_weight' parameter of MLPClassifier"),
        (["cat"], "'class_weight' parameter of MLPClassifier"),
    ],
)
def test_bad_class_weight_fails_naming_it_and_changes_nothing(class_weight, message, numpy_only):
    _, _, X, y, _ = _data("multiclass")
    fitted = quietly(MLPClassifier((6,), max_iter=5, random_state=0), X, y)
    before = copy.deepcopy(fitted)
    labels = np.array(["cat", "dog", "emu"])[y]  # a refit with other labels, which fails
    with pytest.raises(ValueError, match=message):
        fitted.set_params(class_weight=class_weight).fit(X, labels)
    fitted.set_params(class_weight=None)
    np.testing.assert_array_equal(fitted.classes_, [0, 1, 2])
    assert fitted.out_activation_ == before.out_activation_ and fitted.n_iter_ == before.n_iter_
    assert_same_fit(fitted, before, rtol=0, atol=0)
    np.testing.assert_array_equal(fitted.predict_proba(X), before.predict_proba(X))


def test_class_weight_where_it_does_not_apply(numpy_only):
    _, _, X, y, _ = _data("multilabel")
    with pytest.raises(ValueError, match="class_weight is not supported for multi-label"):
        MLPClassifier(class_weight={0: 2.0}).fit(X, y)
    _, _, X, y, _ = _data("multiclass")
    with pytest.raises(ValueError, match="'balanced' is not supported for partial_fit"):
        MLPClassifier(class_weight="balanced").partial_fit(X, y, classes=[0, 1, 2])
    assert "class_weight" in MLPClassifier().get_params()
    assert "class_weight" not in MLPRegressor().get_params()
    assert clone(MLPClassifier(class_weight={"a": 2.0})).class_weight == {"a": 2.0}


# ---------------------------------------------------------------- bad sample_weight


BAD_WEIGHTS = {
    "too short": (lambda w: w[:-1], r"sample_weight\.shape == \(39,\), expected \(40,\)"),
    "too long": (lambda w: np.append(w, 1.0), r"sample_weight\.shape == \(41,\), expected \(40,\)"),
    "negative": (lambda w: np.where(np.arange(N) == 3, -0.5, w), "Negative values .*sample_weight"),
    "nan": (lambda w: np.where(np.arange(N) == 3, np.nan, w), "sample_weight contains NaN"),
    "infinite": (lambda w: np.where(np.arange(N) == 3, np.inf, w), "sample_weight .*infinity"),
    "all zero": (lambda w: 0.0 * w, "Sample weights must contain at least one non-zero"),
    "two-dimensional": (lambda w: w[:, None], "Sample weights must be 1D"),
    "not numbers": (lambda w: np.array(["x"] * N), "could not convert|sample_weight"),
}


@pytest.mark.parametrize("bad", list(BAD_WEIGHTS))
@pytest.mark.parametrize("kind", ["multiclass", "regression"])
def test_bad_sample_weight_fails_before_the_estimator_changes(kind, bad, numpy_only):
    cls, params, X, y, rng = _data(kind)
    weights = rng.uniform(0.5, 2.0, size=N)
    fitted = cls(hidden_layer_sizes=(6,), max_iter=5, random_state=0, **params)
    fitted = quietly(fitted, X, y, sample_weight=weights)
    before = copy.deepcopy(fitted)
    make_bad, message = BAD_WEIGHTS[bad]
    extra = {"classes": [0, 1, 2]} if cls is MLPClassifier else {}
    for call, data in [
        (fitted.fit, X),
        (fitted.fit, X[:, :4]),  # other features too: n_features_in_ must stay
        (lambda *a, **k: fitted.partial_fit(*a, **k, **extra), X),
    ]:
        with pytest.raises(ValueError, match=message):
            call(data, y, sample_weight=make_bad(weights))
    assert fitted.n_features_in_ == 5 and fitted.n_iter_ == before.n_iter_ == 5
    assert fitted.t_ == before.t_ and fitted.loss_curve_ == before.loss_curve_
    assert_same_fit(fitted, before, rtol=0, atol=0)
    # and the optimizer's state is untouched: the next step is the one it would have been
    fitted.partial_fit(X, y, sample_weight=weights)
    before.partial_fit(X, y, sample_weight=weights)
    assert_same_fit(fitted, before, rtol=0, atol=0)


# ---------------------------------------------------------------- score, early stop, partial_fit


SCORED = ["binary", "multiclass", "multilabel", "regression", "two outputs"]


@pytest.mark.parametrize("kind", SCORED)
def test_weighted_score_is_scikit_learns_weighted_metric(kind, numpy_only):
    cls, params, X, y, rng = _data(kind, n=120)
    weights = rng.uniform(0.0, 3.0, size=len(y))
    est = cls(hidden_layer_sizes=(4,), max_iter=8, random_state=0, **params)
    est = quietly(est, X, y, sample_weight=weights)
    metric = accuracy_score if cls is MLPClassifier else r2_score
    expected = metric(y, est.predict(X), sample_weight=weights)
    assert est.score(X, y, sample_weight=weights) == pytest.approx(expected, rel=1e-12)
    assert expected != pytest.approx(est.score(X, y), rel=1e-6)  # the weights count


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_early_stopping_splits_the_weights_and_weighs_the_validation_score(cls, numpy_only):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 5))
    y = np.argmax(X[:, :3] + _noise(rng, 300, 3), axis=1)
    if cls is MLPRegressor:
        y = X[:, 0] - X[:, 1] + _noise(rng, 300)
    weights = rng.uniform(0.2, 3.0, size=300)
    params = dict(
        hidden_layer_sizes=(8,), early_stopping=True, n_iter_no_change=4, max_iter=60,
        learning_rate_init=0.01, random_state=0,
    )  # fmt: skip
    est = quietly(cls(**params), X, y, sample_weight=weights)
    # the held-out tenth: scikit-learn's split, seeded with random_state, stratified for classes
    train, rows = train_test_split(
        np.arange(300), test_size=0.1, random_state=0, stratify=y if cls is MLPClassifier else None
    )
    best = est.score(X[rows], y[rows], sample_weight=weights[rows])
    assert best == pytest.approx(est.best_validation_score_, rel=1e-12)
    assert best != pytest.approx(est.score(X[rows], y[rows]), rel=1e-6)
    # the training rows keep their own weights: other weights there train otherwise ...
    other = weights.copy()
    other[train[:30]] *= 3.0
    assert quietly(cls(**params), X, y, sample_weight=other).loss_curve_[:3] != est.loss_curve_[:3]
    # ... and the validation rows' weights do not train at all
    other = weights.copy()
    other[rows] = rng.uniform(0.2, 3.0, size=len(rows))
    five = {**params, "n_iter_no_change": 99, "max_iter": 5}
    again = quietly(cls(**five), X, y, sample_weight=other)
    first = quietly(cls(**five), X, y, sample_weight=weights)
    np.testing.assert_array_equal(again.loss_curve_, first.loss_curve_)
    assert again.validation_scores_ != first.validation_scores_
    # no weight left on one side of the split: an error naming the weights
    other = weights.copy()
    other[rows] = 0.0
    with pytest.raises(ValueError, match="sample weights for the validation set are all zero"):
        cls(**params).fit(X, y, sample_weight=other)
    other = np.zeros(300)
    other[rows] = 1.0
    with pytest.raises(ValueError, match="sample weights for the training set are all zero"):
        cls(**params).fit(X, y, sample_weight=other)


@pytest.mark.parametrize("kind", ["multiclass", "regression"])
def test_weighted_partial_fit_equals_weighted_fit(kind, numpy_only):
    cls, params, X, y, rng = _data(kind, n=150)
    weights = rng.uniform(0.0, 2.0, size=len(y))
    params = dict(
        hidden_layer_sizes=(8,), random_state=0, batch_size=50, tol=0.0, n_iter_no_change=99,
        **params,
    )  # fmt: skip
    whole = quietly(cls(max_iter=4, **params), X, y, sample_weight=weights)
    steps = cls(**params)
    for _ in range(4):
        if cls is MLPClassifier:
            steps.partial_fit(X, y, weights, classes=[0, 1, 2])  # scikit-learn's argument order
        else:
            steps.partial_fit(X, y, weights)
    np.testing.assert_array_equal(steps.loss_curve_, whole.loss_curve_)
    np.testing.assert_array_equal(steps.predict(X), whole.predict(X))
    assert_same_fit(steps, whole, rtol=0, atol=0)
    assert_different_fit(whole, quietly(cls(max_iter=4, **params), X, y))
    if cls is MLPClassifier:  # a dict class_weight applies to every call
        chosen = {0: 2.0, 2: 0.5}
        by_class = cls(class_weight=chosen, **params)
        for _ in range(2):
            by_class.partial_fit(X, y, classes=[0, 1, 2])
        per_sample = np.array([chosen.get(label, 1.0) for label in y])
        as_weights = quietly(cls(max_iter=2, **params), X, y, sample_weight=per_sample)
        assert_same_fit(by_class, as_weights, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- other backends


def test_weights_on_the_backend_under_test(backend_name, backend_device, float64_ok):
    """Weights are host data: training on any backend weighs as NumPy does."""
    _, _, X, y, rng = _data("multiclass", n=120)
    weights = rng.uniform(0.0, 3.0, size=len(y))
    dtype = "float64" if float64_ok else "float32"
    params = dict(
        hidden_layer_sizes=(8,), max_iter=10, batch_size=32, random_state=0, dtype=dtype,
        class_weight={1: 2.0},
    )  # fmt: skip
    est = quietly(
        MLPClassifier(backend=backend_name, device=backend_device, **params),
        X, y, sample_weight=weights,
    )  # fmt: skip
    assert str(est.model_.backend) == backend_name
    reference = quietly(MLPClassifier(backend="numpy", **params), X, y, sample_weight=weights)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == "float32" else {"rtol": 1e-9, "atol": 1e-11}
    np.testing.assert_allclose(est.loss_curve_, reference.loss_curve_, **tol)
    np.testing.assert_allclose(est.predict_proba(X), reference.predict_proba(X), **tol)
    assert_different_fit(
        reference, quietly(MLPClassifier(backend="numpy", **params), X, y)
    )


@pytest.mark.parametrize("library", ["torch", "array_api_strict"])
def test_weights_of_the_input_library_under_dispatch(library, monkeypatch, numpy_only):
    """Under array API dispatch the weights may be arrays of the input's library."""
    xp = pytest.importorskip(library)
    _, _, X, y, rng = _data("multiclass", n=120)
    weights = rng.uniform(0.0, 3.0, size=len(y))
    kwargs = {"device": xp.Device("device1")} if library == "array_api_strict" else {}
    Xa, ya, wa = (xp.asarray(a, **kwargs) for a in (X, y, weights))
    params = dict(hidden_layer_sizes=(8,), max_iter=10, batch_size=32, random_state=0)
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    with sklearn.config_context(array_api_dispatch=True):
        est = quietly(MLPClassifier(**params), Xa, ya, sample_weight=wa)
        assert str(est.model_.backend) == library
        score = est.score(Xa, ya, sample_weight=wa)
    reference = quietly(MLPClassifier(**params), X, y, sample_weight=weights)
    np.testing.assert_allclose(est.loss_curve_, reference.loss_curve_, rtol=1e-9)
    assert score == pytest.approx(reference.score(X, y, sample_weight=weights), rel=1e-12)
