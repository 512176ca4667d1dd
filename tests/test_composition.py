"""Models as trees: the combinators, tuple inputs, N-d inputs, user layers, counting and summaries."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

import portnn as pn

F64 = "float64"


@pytest.fixture
def f64(float64_ok):
    """The dtype the exact checks use: float64 where the backend has it."""
    if not float64_ok:
        pytest.skip("this check runs in float64, which this backend lacks")
    return F64


def _np(x):
    return pn.to_numpy(x)


def _host(model):
    return {k: _np(v).copy() for k, v in model.parameters().items()}


def _close(a, b, **kw):
    np.testing.assert_allclose(_np(a), _np(b), **({"rtol": 1e-10, "atol": 1e-12} | kw))


def _deep_tree(dtype=F64):
    """A Residual inside a Sequential inside a Concatenate, under a Sequential with a head."""
    deep = pn.Sequential(
        pn.Dense(4, 6, seed=0, dtype=dtype),
        pn.Residual(pn.Sequential(pn.Dense(6, 6, seed=1, dtype=dtype), pn.Tanh())),
    )
    return pn.Sequential(
        pn.Concatenate(deep, pn.Dense(4, 3, seed=2, dtype=dtype)),
        pn.ReLU(),
        pn.Dense(9, 3, seed=3, dtype=dtype),
    )


DEEP_NAMES = [
    "0.0.0.weight", "0.0.0.bias", "0.0.1.block.0.weight", "0.0.1.block.0.bias",
    "0.1.weight", "0.1.bias", "2.weight", "2.bias",
]


def _two_inputs(dtype=F64):
    net_a = pn.Sequential(pn.Dense(3, 4, seed=0, dtype=dtype), pn.Tanh())
    net_b = pn.Sequential(pn.Dense(2, 5, seed=1, dtype=dtype), pn.ReLU())
    return pn.Sequential(pn.Parallel(net_a, net_b), pn.Concatenate(), pn.Dense(9, 2, seed=2, dtype=dtype))


def _pair_data(rng, n=24):
    return rng.normal(size=(n, 3)), rng.normal(size=(n, 2)), rng.normal(size=(n, 2))


# ---------------------------------------------------------------- the combinators


def test_residual_adds_its_block_to_the_input(rng, f64):
    block = pn.Sequential(pn.Dense(5, 5, seed=0, dtype=f64), pn.Tanh())
    res = pn.Residual(block)
    x = rng.normal(size=(7, 5))
    _close(res(x), x + _np(block(x)))
    assert list(res.parameters()) == ["block.0.weight", "block.0.bias"]
    assert res.input_shape() == (5,)
    assert pn.gradient_check(pn.Sequential(res, pn.Dense(5, 2, seed=1, dtype=f64)), "mse", x, rng.normal(size=(7, 2))) < 1e-6


def test_residual_names_its_block_parameters_with_dots():
    res = pn.Residual(pn.Sequential(pn.Dense(3, 3, seed=0), pn.ReLU(), pn.Dense(3, 3, seed=1)))
    assert list(res.parameters()) == ["block.0.weight", "block.0.bias", "block.2.weight", "block.2.bias"]
    assert "block.2.bias" in res.parameters() and res.block[2] is res.block.layers[2]


def test_residual_refuses_a_block_that_changes_the_shape():
    res = pn.Residual(pn.Dense(4, 3, seed=0))
    with pytest.raises(ValueError, match=r"Residual.*\(2, 4\) to \(2, 3\).*keep the shape"):
        res(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\(2, 4\) to \(2, 3\)"):
        pn.Sequential(res).forward(np.zeros((2, 4)))
    with pytest.raises(TypeError, match="portnn modules"):
        pn.Residual(np.zeros(3))


def test_add_and_concatenate_apply_every_branch_to_the_same_input(rng, f64):
    a, b = pn.Dense(4, 3, seed=0, dtype=f64), pn.Dense(4, 3, seed=1, dtype=f64)
    x = rng.normal(size=(6, 4))
    add = pn.Add(a, b)
    _close(add(x), _np(a(x)) + _np(b(x)))
    assert list(add.parameters()) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    cat = pn.Concatenate(a.copy(), pn.Tanh(), b.copy())
    _close(cat(x), np.concatenate([_np(a(x)), np.tanh(x), _np(b(x))], axis=-1))
    y = rng.normal(size=(6, 2))
    for merge in (pn.Sequential(add, pn.Dense(3, 2, seed=2, dtype=f64)), pn.Sequential(cat, pn.Dense(10, 2, seed=2, dtype=f64))):
        assert pn.gradient_check(merge, "mse", x, y) < 1e-6


def test_add_and_concatenate_without_branches_merge_the_tuple_they_receive(rng, f64):
    p, q = rng.normal(size=(3, 4)), rng.normal(size=(3, 2))
    _close(pn.Add()((p, p[:, ::-1].copy())), p + p[:, ::-1])
    _close(pn.Concatenate()((p, q)), np.concatenate([p, q], axis=1))
    # along another axis of 3-D arrays
    u, v = rng.normal(size=(3, 2, 4)), rng.normal(size=(3, 5, 4))
    _close(pn.Concatenate(axis=1)((u, v)), np.concatenate([u, v], axis=1))
    _close(pn.Concatenate(axis=-2)((u, v)), np.concatenate([u, v], axis=1))
    # the backward splits the gradient back into the parts
    merge = pn.Concatenate(axis=1)
    y, backward = merge.apply((merge.backend.asarray(u), merge.backend.asarray(v)), True)
    dy = rng.normal(size=(3, 7, 4))
    (du, dv), grads = backward(merge.backend.asarray(dy))
    _close(du, dy[:, :2])
    _close(dv, dy[:, 2:])
    assert grads == {}
    (da, db), _ = pn.Add().apply((merge.backend.asarray(p), merge.backend.asarray(p)), True)[1](merge.backend.asarray(p))
    _close(da, p)
    _close(db, p)


def test_merges_name_what_does_not_fit():
    with pytest.raises(ValueError, match=r"Add has no branches.*tuple.*it got (ndarray|Tensor|ArrayImpl|Array)$"):
        pn.Add()(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"Concatenate has no branches"):
        pn.Concatenate()(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"Add adds arrays of one shape, got shapes \[\(2, 4\), \(2, 3\)\]"):
        pn.Add()((np.ones((2, 4)), np.ones((2, 3))))
    one_rank = r"Concatenate joins arrays of one rank along axis -1, got shapes \[\(2, 4\), \(2, 3, 1\)\]"
    with pytest.raises(ValueError, match=one_rank):
        pn.Concatenate()((np.ones((2, 4)), np.ones((2, 3, 1))))
    with pytest.raises(ValueError, match=r"axis 2.*\[\(2, 4\), \(2, 3\)\]"):
        pn.Concatenate(axis=2)((np.ones((2, 4)), np.ones((2, 3))))
    with pytest.raises(ValueError, match=r"cannot join shapes \[\(2, 4, 1\), \(2, 3, 2\)\] along axis 1"):
        pn.Concatenate(axis=1)((np.ones((2, 4, 1)), np.ones((2, 3, 2))))
    with pytest.raises(ValueError, match="axis 0 is the sample axis"):
        pn.Concatenate(axis=0)
    with pytest.raises(TypeError, match="axis must be an integer"):
        pn.Concatenate(axis=1.0)
    with pytest.raises(TypeError, match="argument 1 is str"):
        pn.Add(pn.ReLU(), "relu")
    # inside a model the layer is named by its place
    model = pn.Sequential(pn.Dense(4, 3, seed=0), pn.Add(pn.Dense(3, 2, seed=1), pn.Dense(3, 3, seed=2)))
    with pytest.raises(ValueError, match=r"layer 1 \(Add\) adds arrays of one shape"):
        model(np.zeros((2, 4)))


def test_parallel_maps_a_tuple_of_inputs_to_a_tuple_of_outputs(rng, f64):
    a, b = pn.Dense(3, 2, seed=0, dtype=f64), pn.Sequential(pn.Dense(2, 4, seed=1, dtype=f64), pn.ReLU())
    par = pn.Parallel(a, b)
    xa, xb = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    ya, yb = par((xa, xb))
    _close(ya, a(xa))
    _close(yb, b(xb))
    assert par.input_shape() == ((3,), (2,))
    # one sample: a tuple of 1-D arrays gives a tuple of 1-D outputs
    one = par((xa[0], xb[0]))
    assert isinstance(one, tuple) and [tuple(o.shape) for o in one] == [(2,), (4,)]
    _close(one[0], _np(ya)[0])
    assert list(par.parameters()) == ["0.weight", "0.bias", "1.0.weight", "1.0.bias"]
    # predict in batches joins each output on its own
    batched = par.predict((xa, xb), batch_size=2)
    assert isinstance(batched, tuple) and len(batched) == 2
    _close(batched[0], ya)
    _close(batched[1], yb)


def test_parallel_names_a_wrong_number_of_inputs(rng):
    model = _two_inputs("float32")
    xa, xb, _ = _pair_data(rng)
    for bad, got in (((xa,), "a tuple of 1"), ((xa, xb, xb), "a tuple of 3"), (xa, "(ndarray|Tensor|ArrayImpl|Array)")):
        text = rf"layer 0 \(Parallel\) has 2 branches and takes a tuple of as many inputs, got {got}"
        with pytest.raises(ValueError, match=text):
            model.predict(bad)
    with pytest.raises(ValueError, match=r"Parallel\) has 2 branches.*a tuple of 3"):
        model.fit((xa, xb, xb), np.zeros((24, 2)), loss="mse", verbose=0)
    with pytest.raises(ValueError, match="a tuple of 1"):
        pn.value_and_grad(model, "mse", (xa,), np.zeros((24, 2)))


def test_a_model_ending_in_several_outputs_is_refused_by_fit(rng):
    par = pn.Parallel(pn.Dense(3, 2, seed=0), pn.Dense(2, 2, seed=1))
    xa, xb, y = _pair_data(rng)
    before = _host(par)
    with pytest.raises(ValueError, match=r"gives 2 outputs \(a tuple\).*Concatenate or Add"):
        par.fit((xa, xb), y, loss="mse", verbose=0)
    assert all(np.array_equal(v, before[k]) for k, v in _host(par).items())


# ---------------------------------------------------------------- nesting to depth


def test_a_deep_tree_has_dotted_names_and_trains(rng, f64):
    model = _deep_tree(f64)
    assert list(model.parameters()) == DEEP_NAMES
    assert model[0][0][1].block[0] is model[0][0][1].block.layers[0]
    X, y = rng.normal(size=(40, 4)), rng.integers(0, 3, size=40)
    assert pn.gradient_check(model, "cross_entropy", X, y) < 1e-6
    before = model.evaluate(X, y, loss="cross_entropy")
    start = _host(model)
    model.fit(X, y, loss="cross_entropy", optimizer=pn.Adam(lr=0.02), epochs=20, batch_size=10, seed=0, verbose=0)
    assert model.evaluate(X, y) < 0.7 * before
    assert all(np.abs(_np(v) - start[k]).max() > 0 for k, v in model.parameters().items())  # every parameter moved


def test_a_deep_tree_saves_and_loads(rng, f64, tmp_path):
    model = _deep_tree(f64)
    X, y = rng.normal(size=(40, 4)), rng.integers(0, 3, size=40)
    model.fit(X, y, loss="cross_entropy", optimizer=pn.Adam(lr=0.02), epochs=2, batch_size=10, seed=0, verbose=0)
    path = tmp_path / "deep.safetensors"
    pn.save(model, path)
    loaded = pn.load(path)
    assert [type(m).__name__ for m in loaded.modules()] == [type(m).__name__ for m in model.modules()]
    assert list(loaded.parameters()) == DEEP_NAMES
    np.testing.assert_array_equal(_np(loaded.predict(X)), _np(model.predict(X)))
    # training continues where it stopped, exactly
    model.fit(X, y, epochs=4, initial_epoch=2, batch_size=10, seed=0, verbose=0)
    loaded.fit(X, y, epochs=4, initial_epoch=2, batch_size=10, seed=0, verbose=0)
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(_np(loaded.parameters()[k]), _np(v))


def test_a_deep_tree_copies_and_moves(rng, f64, backend_name):
    model = _deep_tree(f64)
    X, y = rng.normal(size=(20, 4)), rng.integers(0, 3, size=20)
    expected = _np(model.predict(X))
    twin = model.copy()
    assert list(twin.parameters()) == DEEP_NAMES
    twin.fit(X, y, loss="cross_entropy", optimizer=pn.SGD(lr=0.5), epochs=2, verbose=0)
    np.testing.assert_array_equal(_np(model.predict(X)), expected)  # the original did not move
    assert not np.array_equal(_np(twin.predict(X)), expected)
    for name in pn.available_backends():
        if name in ("cupy", "dask"):
            continue
        moved = model.copy().to(name)
        assert moved.backend == name and all(m.backend == name for m in moved.modules())
        assert list(moved.parameters()) == DEEP_NAMES
        np.testing.assert_allclose(_np(moved.predict(X)), expected, rtol=1e-6, atol=1e-6)
        back = moved.to(backend_name, device=model.backend.device)
        np.testing.assert_allclose(_np(back.predict(X)), expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- tuple inputs


def test_tuple_inputs_for_fit_predict_evaluate_and_value_and_grad(rng, f64):
    model = _two_inputs(f64)
    xa, xb, y = _pair_data(rng)
    pred = _np(model.predict((xa, xb)))
    assert pred.shape == (24, 2)
    _close(model.predict((xa, xb), batch_size=5), pred)
    _close(model.predict((xa[3], xb[3])), pred[3])
    _close(model((xa, xb)), pred)
    mse = float(((pred - y) ** 2).mean())
    _close(model.evaluate((xa, xb), y, loss="mse"), mse)
    _close(model.evaluate((xa, xb), y, loss="mse", batch_size=7), mse)
    value, grads = pn.value_and_grad(model, "mse", (xa, xb), y)
    _close(value, mse)
    assert list(grads) == list(model.parameters())
    assert pn.gradient_check(model, "mse", (xa, xb), y) < 1e-6
    history = model.fit((xa, xb), y, loss="mse", optimizer=pn.Adam(lr=0.05), epochs=15, batch_size=6, seed=1, verbose=0,
                        validation_data=((xa[:8], xb[:8]), y[:8]))
    assert history["loss"][-1] < 0.8 * history["loss"][0]
    _close(history["val_loss"][-1], model.evaluate((xa[:8], xb[:8]), y[:8]))
    history = model.fit((xa, xb), y, epochs=1, validation_split=0.25, verbose=0)
    _close(history["val_loss"][0], model.evaluate((xa[18:], xb[18:]), y[18:]))


@pytest.mark.parametrize("on_device", [False, True])
def test_tuple_batches_keep_the_rows_of_every_input_together(rng, f64, on_device, backend):
    """Shuffled batches of (Xa, Xb) are the shuffled batches of hstack(Xa, Xb): the rows stay aligned."""
    xa, xb, y = _pair_data(rng, n=30)
    head = pn.Dense(5, 2, seed=4, dtype=f64)
    split = pn.Sequential(pn.Parallel(pn.Identity(), pn.Identity()), pn.Concatenate(), head.copy())
    joined = pn.Sequential(head.copy())
    inputs, whole = (xa, xb), np.concatenate([xa, xb], axis=1)
    if on_device:
        inputs, whole = tuple(backend.asarray(v, backend.dtype(f64)) for v in inputs), backend.asarray(whole, backend.dtype(f64))
    for model, X in ((split, inputs), (joined, whole)):
        model.fit(X, y, loss="mse", optimizer=pn.SGD(lr=0.1, momentum=0.9), epochs=3, batch_size=4, seed=7, verbose=0)
    _close(split[2].weight, joined[0].weight)
    _close(split[2].bias, joined[0].bias)


def test_tuple_inputs_name_the_input_with_the_wrong_number_of_rows(rng):
    model = _two_inputs("float32")
    xa, xb, y = _pair_data(rng)
    short = xb[:10]
    message = r"X\[1\] has 10 samples \(shape \(10, 2\)\), but X\[0\] has 24; every input of a tuple needs one row per sample"
    with pytest.raises(ValueError, match=message):
        model.fit((xa, short), y, loss="mse", verbose=0)
    with pytest.raises(ValueError, match=message):
        model.predict((xa, short))
    with pytest.raises(ValueError, match=message):
        model.evaluate((xa, short), y, loss="mse")
    with pytest.raises(ValueError, match=message.replace("X", "x")):
        pn.value_and_grad(model, "mse", (xa, short), y)
    with pytest.raises(ValueError, match=message.replace("X", "x")):
        model((xa, short))
    with pytest.raises(ValueError, match=r"validation X\[1\] has 10 samples"):
        model.fit((xa, xb), y, loss="mse", validation_data=((xa, short), y), verbose=0)
    with pytest.raises(ValueError, match=r"y has 10 rows but there are 24 samples"):
        model.fit((xa, xb), y[:10], loss="mse", verbose=0)
    with pytest.raises(ValueError, match=r"X is an empty tuple"):
        model.fit((), y, loss="mse", verbose=0)
    with pytest.raises(ValueError, match=r"X\[1\] contains NaN"):
        model.predict((xa, np.full_like(xb, np.nan)))
    assert model.optimizer is None  # nothing was trained


# ---------------------------------------------------------------- forward / backward


def test_forward_backward_on_a_tree_matches_value_and_grad(rng, f64):
    model = _two_inputs(f64)
    xa, xb, y = _pair_data(rng, n=10)
    model.train()
    out = model.forward((xa, xb))
    value, dpred = pn.MSELoss().value_and_grad(out, model.backend.asarray(y, out.dtype), model.xp)
    dx = model.backward(dpred)
    assert isinstance(dx, tuple) and [tuple(d.shape) for d in dx] == [(10, 3), (10, 2)]
    stored = {k: _np(v).copy() for k, v in model.gradients().items()}
    assert list(stored) == list(model.parameters())
    ref_value, ref_grads = pn.value_and_grad(model, "mse", (xa, xb), y)
    _close(value, ref_value)
    for k, g in ref_grads.items():
        _close(stored[k], g)
    # the input gradient, against central differences
    loss = pn.MSELoss()
    eps = 1e-6
    for which, i, j in ((0, 3, 1), (1, 7, 0)):
        plus, minus = [xa.copy(), xb.copy()], [xa.copy(), xb.copy()]
        plus[which][i, j] += eps
        minus[which][i, j] -= eps
        numeric = (float(loss(model.predict(tuple(plus)), y)) - float(loss(model.predict(tuple(minus)), y))) / (2 * eps)
        assert abs(float(_np(dx[which])[i, j]) - numeric) < 1e-6


def test_forward_backward_on_a_residual_tree_gives_the_input_gradient(rng, f64):
    model = _deep_tree(f64)
    x = rng.normal(size=(5, 4))
    out = model.forward(x)
    dy = rng.normal(size=tuple(out.shape))
    dx = _np(model.backward(dy))
    assert dx.shape == (5, 4)
    eps = 1e-6
    for i, j in ((0, 0), (4, 3)):
        plus, minus = x.copy(), x.copy()
        plus[i, j] += eps
        minus[i, j] -= eps
        numeric = float(np.sum((_np(model.predict(plus)) - _np(model.predict(minus))) * dy)) / (2 * eps)
        assert abs(dx[i, j] - numeric) < 1e-6
    assert list(model.gradients()) == DEEP_NAMES
    # one sample (1-D) in, one sample's input gradient out
    one = model.forward(x[0])
    assert tuple(one.shape) == (3,)
    _close(model.backward(dy[0]), dx[0])
    with pytest.raises(RuntimeError, match="before forward"):
        _deep_tree(f64).backward(dy)


# ---------------------------------------------------------------- N-d inputs


def test_flatten_and_reshape_shapes(rng):
    x = rng.normal(size=(3, 2, 3, 4))
    assert tuple(pn.Flatten()(x).shape) == (3, 24)
    assert tuple(pn.Flatten()(x[:, 0, 0]).shape) == (3, 4)
    _close(pn.Flatten()(x), x.reshape(3, 24), rtol=1e-6)
    assert tuple(pn.Reshape((4, 6))(x).shape) == (3, 4, 6)
    assert tuple(pn.Reshape((-1, 2))(x).shape) == (3, 12, 2)
    assert tuple(pn.Reshape(24)(x).shape) == (3, 24)
    assert tuple(pn.Reshape([2, -1, 3])(x).shape) == (3, 2, 4, 3)
    assert pn.Reshape((-1, 2)).config() == {"shape": [-1, 2]}
    # one sample keeps its own shape
    assert tuple(pn.Reshape((2, 2))(x[0, 0, 0]).shape) == (2, 2)
    flat, back = pn.Flatten().apply(pn.get_backend().asarray(x), True)
    dx, grads = back(flat)
    assert tuple(dx.shape) == x.shape and grads == {}


def test_flatten_and_reshape_backward_through_a_model(rng, f64):
    model = pn.Sequential(
        pn.Reshape((3, 4)), pn.Dense(4, 2, seed=0, dtype=f64), pn.Tanh(), pn.Flatten(), pn.Dense(6, 2, seed=1, dtype=f64)
    )
    x, y = rng.normal(size=(5, 12)), rng.normal(size=(5, 2))
    assert tuple(model.predict(x).shape) == (5, 2)
    assert pn.gradient_check(model, "mse", x, y) < 1e-6
    out = model.forward(x)
    assert tuple(model.backward(np.ones(tuple(out.shape))).shape) == (5, 12)


def test_reshape_errors_name_the_layer_and_the_shapes():
    text = r"Reshape cannot reshape samples of shape \(12,\) \(12 values\) to \(5,\) \(input shape \(3, 12\)\)"
    with pytest.raises(ValueError, match=text):
        pn.Reshape((5,))(np.zeros((3, 12)))
    with pytest.raises(ValueError, match=r"to \(7, -1\)"):
        pn.Reshape((7, -1))(np.zeros((3, 12)))
    with pytest.raises(ValueError, match=r"layer 1 \(Reshape\) cannot reshape"):
        pn.Sequential(pn.Dense(4, 6, seed=0), pn.Reshape((4, 2))).predict(np.zeros((2, 4)))
    for bad, error, text in (
        ((), TypeError, "non-empty tuple"), ("ab", TypeError, "non-empty tuple"), (None, TypeError, "non-empty tuple"),
        ((0,), ValueError, r"shape\[0\] must be an integer >= 1 or -1"), ((2, -2), ValueError, r"shape\[1\]"),
        ((2.5,), ValueError, r"shape\[0\]"), ((True,), ValueError, r"shape\[0\]"), ((-1, -1), ValueError, "one -1 at most"),
    ):
        with pytest.raises(error, match=text):
            pn.Reshape(bad)


def test_dense_activations_layernorm_and_dropout_on_3d_inputs(rng, f64):
    x = rng.normal(size=(4, 5, 3))
    dense = pn.Dense(3, 2, seed=0, dtype=f64)
    y = _np(dense(x))
    assert y.shape == (4, 5, 2)
    _close(y, x @ _np(dense.weight) + _np(dense.bias))
    _close(y.reshape(20, 2), dense(x.reshape(20, 3)))
    for act, f in ((pn.Tanh(), np.tanh), (pn.ReLU(), lambda v: np.maximum(v, 0)), (pn.Sigmoid(), lambda v: 1 / (1 + np.exp(-v)))):
        _close(act(x), f(x), rtol=1e-6)
    soft = _np(pn.Softmax()(x))
    _close(soft.sum(axis=-1), np.ones((4, 5)), rtol=1e-6)
    norm = pn.LayerNorm(3, dtype=f64)
    expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    _close(norm(x), expected)
    drop = pn.Dropout(0.5, seed=0)
    _close(drop(x), x)  # inference: the identity
    mask_out, _ = drop.apply(drop.backend.asarray(x), True)
    kept = _np(mask_out) != 0
    assert kept.shape == x.shape and 0 < kept.mean() < 1
    _close(_np(mask_out)[kept], 2 * x[kept], rtol=1e-6)
    model = pn.Sequential(pn.Dense(3, 4, seed=1, dtype=f64), pn.LayerNorm(4, dtype=f64), pn.GELU(), pn.Dropout(0.3, seed=2),
                          pn.Softmax(), pn.Flatten(), pn.Dense(20, 2, seed=3, dtype=f64))
    assert pn.gradient_check(model, "mse", x, rng.normal(size=(4, 2))) < 1e-6


def test_dense_shape_errors_on_nd_inputs_name_the_layer(rng):
    model = pn.Sequential(pn.Dense(3, 4, seed=0), pn.ReLU(), pn.Dense(4, 2, seed=1))
    with pytest.raises(ValueError, match=r"layer 0 \(Dense\) expects 3 input features, got 5 \(input shape \(2, 7, 5\)\)"):
        model.predict(np.zeros((2, 7, 5)))
    with pytest.raises(ValueError, match=r"layer 0 \(Dense\) expects 3 input features, got 5"):
        model.fit(np.zeros((2, 7, 5)), np.zeros((2, 2)), loss="mse", verbose=0)
    with pytest.raises(ValueError, match=r"LayerNorm expects 3 input features, got 4"):
        pn.LayerNorm(3)(np.zeros((2, 5, 4)))
    assert model.optimizer is None


# ---------------------------------------------------------------- a user's own layers


class Scale(pn.Module):
    """A user layer: a learned gain per feature, written with public names only."""

    def __init__(self, features, init=1.0):
        super().__init__()
        self.features, self.init = features, init
        self.add_parameter("gain", np.full((features,), float(init)))
        self.need_dx_seen = []

    def config(self):
        return {"features": self.features, "init": self.init}

    def apply(self, x, training):
        xp = self.xp
        gain = self.parameters()["gain"]

        def backward(dy, need_dx=True):
            self.need_dx_seen.append(need_dx)
            grads = {"gain": xp.sum(xp.reshape(dy * x, (-1, self.features)), axis=0)}
            return (dy * gain if need_dx else None), grads

        return x * gain, backward


class TwoLayer(pn.Module):
    """A user container: Dense children as attributes, built again from its config."""

    def __init__(self, n_in, hidden, n_out, seed=0):
        super().__init__()
        self.n_in, self.hidden, self.n_out, self.seed = n_in, hidden, n_out, seed
        self.first = pn.Dense(n_in, hidden, seed=seed, dtype=F64)
        self.act = pn.Tanh()
        self.second = pn.Dense(hidden, n_out, seed=seed + 1, dtype=F64)

    def config(self):
        return {"n_in": self.n_in, "hidden": self.hidden, "n_out": self.n_out, "seed": self.seed}

    def apply(self, x, training):
        h, back1 = self.first.apply(x, training)
        a, back2 = self.act.apply(h, training)
        y, back3 = self.second.apply(a, training)

        def backward(dy, need_dx=True):
            da, g3 = back3(dy)
            dh, g2 = back2(da)
            dx, g1 = back1(dh, need_dx=need_dx)
            return dx, {"first": g1, "act": g2, "second": g3}

        return y, backward


CUSTOM = {"Scale": Scale, "TwoLayer": TwoLayer}


def _user_model():
    return pn.Sequential(TwoLayer(4, 6, 5), Scale(5, 0.5), pn.ReLU(), pn.Dense(5, 2, seed=3, dtype=F64))


def test_a_user_layer_and_container_train(rng, f64):
    model = _user_model()
    assert list(model.parameters()) == [
        "0.first.weight", "0.first.bias", "0.second.weight", "0.second.bias", "1.gain", "3.weight", "3.bias"
    ]
    assert model[1].gain is model[1].parameters()["gain"] and str(model[1].gain.dtype).endswith("float64")
    assert model[0].first.name == "layer 0.first (Dense)"
    X, y = rng.normal(size=(32, 4)), rng.normal(size=(32, 2))
    assert pn.gradient_check(model, "mse", X, y) < 1e-6
    before, start = model.evaluate(X, y, loss="mse"), _host(model)
    model.fit(X, y, loss="mse", optimizer=pn.Adam(lr=0.02), epochs=20, batch_size=8, seed=0, verbose=0)
    assert model.evaluate(X, y) < 0.8 * before
    assert all(np.abs(_np(v) - start[k]).max() > 0 for k, v in model.parameters().items())
    assert set(model[1].need_dx_seen) == {True}  # not the first layer: it is asked for its input gradient


def test_the_first_layer_is_asked_not_to_compute_its_input_gradient(rng, f64):
    model = pn.Sequential(Scale(4), pn.Dense(4, 2, seed=0, dtype=f64))
    X, y = rng.normal(size=(8, 4)), rng.normal(size=(8, 2))
    model.fit(X, y, loss="mse", epochs=1, batch_size=4, verbose=0)
    pn.value_and_grad(model, "mse", X, y)
    assert model[0].need_dx_seen == [False, False, False]
    model.forward(X)
    model.backward(np.ones((8, 2)))  # the stateful pair returns the input gradient
    assert model[0].need_dx_seen[-1] is True


def test_a_user_layer_and_container_save_and_load(rng, tmp_path, f64):
    model = _user_model()
    X, y = rng.normal(size=(16, 4)), rng.normal(size=(16, 2))
    model.fit(X, y, loss="mse", optimizer="adam", epochs=2, batch_size=4, seed=0, verbose=0)
    path = tmp_path / "user.safetensors"
    pn.save(model, path)
    architecture = json.loads(_metadata(path)["portnn"])["architecture"]
    assert architecture["layers"][0] == {
        "class": "TwoLayer", "config": {"n_in": 4, "hidden": 6, "n_out": 5, "seed": 0},
        "layers": [{"class": "Dense", "name": "first", "config": architecture["layers"][0]["layers"][0]["config"]},
                   {"class": "Tanh", "name": "act", "config": {}},
                   {"class": "Dense", "name": "second", "config": architecture["layers"][0]["layers"][2]["config"]}],
    }
    with pytest.raises(ValueError, match=r"unknown layer class 'TwoLayer'.*custom_objects"):
        pn.load(path)
    with pytest.raises(ValueError, match=r"unknown layer class 'Scale'"):
        pn.load(path, custom_objects={"TwoLayer": TwoLayer})
    loaded = pn.load(path, custom_objects=CUSTOM)
    assert type(loaded[0]) is TwoLayer and type(loaded[1]) is Scale and loaded[1].init == 0.5
    np.testing.assert_array_equal(_np(loaded.predict(X)), _np(model.predict(X)))
    model.fit(X, y, epochs=3, initial_epoch=2, batch_size=4, seed=0, verbose=0)
    loaded.fit(X, y, epochs=3, initial_epoch=2, batch_size=4, seed=0, verbose=0)
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(_np(loaded.parameters()[k]), _np(v))


def test_a_user_container_copies_and_moves(rng, f64):
    model = _user_model()
    X = rng.normal(size=(6, 4))
    expected = _np(model.predict(X))
    twin = model.copy()
    twin[0].first.load_parameters({"weight": np.zeros((4, 6))})
    np.testing.assert_array_equal(_np(model.predict(X)), expected)
    for name in pn.available_backends():
        if name in ("cupy", "dask"):
            continue
        moved = model.copy().to(name)
        assert moved[0].first.backend == name and moved[1].backend == name
        np.testing.assert_allclose(_np(moved.predict(X)), expected, rtol=1e-6, atol=1e-6)


class AttrScale(pn.Module):
    """A user layer in PyTorch's style: the parameter kept as an attribute and read back from it."""

    def __init__(self, features):
        super().__init__()
        self.features = features
        self.gain = self.add_parameter("gain", np.ones(features))

    def config(self):
        return {"features": self.features}

    def apply(self, x, training):
        gain = self.gain

        def backward(dy, need_dx=True):
            return (dy * gain if need_dx else None), {"gain": self.xp.sum(dy * x, axis=0)}

        return x * gain, backward


def test_a_parameter_kept_as_an_attribute_follows_training(rng, f64):
    model = pn.Sequential(AttrScale(3))
    X = rng.normal(size=(16, 3))
    y = X * np.array([2.0, -1.0, 0.5])
    model.fit(X, y, loss="mse", optimizer=pn.SGD(lr=0.2), epochs=200, verbose=0)
    np.testing.assert_array_equal(_np(model[0].gain), _np(model.parameters()["0.gain"]))
    np.testing.assert_allclose(_np(model[0].gain), [2.0, -1.0, 0.5], atol=1e-6)
    assert model.evaluate(X, y) < 1e-10
    # assigning a new value sets the parameter, with load_parameters' checks
    model[0].gain = np.zeros(3)
    np.testing.assert_array_equal(_np(model.parameters()["0.gain"]), np.zeros(3))
    assert "gain" not in vars(model[0])
    with pytest.raises(ValueError, match=r"parameter 'gain' has shape \(3,\), got \(4,\)"):
        model[0].gain = np.zeros(4)
    with pytest.raises(AttributeError):
        pn.Dense(2, 2).weight = np.zeros((2, 2))  # a read-only property stays one


class Gated(pn.Module):
    """A user combinator: its children are its arguments, so a file rebuilds it from them."""

    def __init__(self, body, gate):
        super().__init__()
        self.body, self.gate = body, gate

    @classmethod
    def from_config(cls, config, children):
        return cls(children["body"], children["gate"], **config)

    def apply(self, x, training):
        h, back_body = self.body.apply(x, training)
        g, back_gate = self.gate.apply(x, training)

        def backward(dy, need_dx=True):
            dh, grads_body = back_body(dy * g, need_dx=need_dx)
            dg, grads_gate = back_gate(dy * h, need_dx=need_dx)
            return (dh + dg if need_dx else None), {"body": grads_body, "gate": grads_gate}

        return h * g, backward


def test_a_user_combinator_trains_saves_and_loads(rng, tmp_path, f64):
    gate = pn.Sequential(pn.Dense(4, 3, seed=1, dtype=f64), pn.Sigmoid())
    model = pn.Sequential(Gated(pn.Dense(4, 3, seed=0, dtype=f64), gate), pn.Dense(3, 2, seed=2, dtype=f64))
    assert list(model.parameters()) == ["0.body.weight", "0.body.bias", "0.gate.0.weight", "0.gate.0.bias", "1.weight", "1.bias"]
    X, y = rng.normal(size=(12, 4)), rng.normal(size=(12, 2))
    assert pn.gradient_check(model, "mse", X, y) < 1e-6
    model.fit(X, y, loss="mse", optimizer="adam", epochs=2, batch_size=4, seed=0, verbose=0)
    path = tmp_path / "gated.safetensors"
    pn.save(model, path)
    loaded = pn.load(path, custom_objects={"Gated": Gated})
    assert type(loaded[0]) is Gated and type(loaded[0].gate) is pn.Sequential
    np.testing.assert_array_equal(_np(loaded.predict(X)), _np(model.predict(X)))
    rows = {r["name"]: r["output_shape"] for r in loaded.summary(input_shape=(4,), file=None).rows}
    assert rows["0"] == rows["0.body"] == rows["0.gate"] == (None, 3)


def _metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return f.metadata()


# ---------------------------------------------------------------- counting and summaries


def test_num_parameters_equals_torch_count(float64_ok):
    torch = pytest.importorskip("torch")
    model = pn.Sequential(
        pn.Dense(4, 8, seed=0), pn.ReLU(), pn.Residual(pn.Sequential(pn.Dense(8, 8, seed=1), pn.Tanh())),
        pn.LayerNorm(8), pn.Dense(8, 3, seed=2, use_bias=False),
    )
    ref = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3, bias=False)
    )
    assert model.num_parameters() == sum(p.numel() for p in ref.parameters()) == 4 * 8 + 8 + 72 + 16 + 24
    model[0].freeze()
    for p in ref[0].parameters():
        p.requires_grad_(False)
    assert model.num_parameters(trainable_only=True) == sum(p.numel() for p in ref.parameters() if p.requires_grad)
    assert model.num_parameters() == sum(p.numel() for p in ref.parameters())
    two = _two_inputs("float32")
    ref_two = [torch.nn.Linear(3, 4), torch.nn.Linear(2, 5), torch.nn.Linear(9, 2)]
    assert two.num_parameters() == sum(p.numel() for m in ref_two for p in m.parameters())
    assert isinstance(two.num_parameters(), int) and pn.ReLU().num_parameters() == 0


def test_summary_rows_totals_and_output_shapes(capsys):
    model = _deep_tree("float32")
    model[0][1].freeze()
    summary = model.summary(file=None)
    assert capsys.readouterr().out == ""  # file=None prints nothing
    rows = [(r["name"], r["type"], r["output_shape"], r["parameters"]) for r in summary.rows]
    expected = [
        ("", "Sequential", (None, 3), 117),
        ("0", "Concatenate", (None, 9), 87),
        ("0.0", "Sequential", (None, 6), 72),
        ("0.0.0", "Dense", (None, 6), 30),
        ("0.0.1", "Residual", (None, 6), 42),
        ("0.0.1.block", "Sequential", (None, 6), 42),
        ("0.0.1.block.0", "Dense", (None, 6), 42),
        ("0.0.1.block.1", "Tanh", (None, 6), 0),
        ("0.1", "Dense", (None, 3), 15),
        ("1", "ReLU", (None, 9), 0),
        ("2", "Dense", (None, 3), 30),
    ]
    assert rows == expected
    assert (summary.total, summary.trainable, summary.frozen) == (117, 102, 15)
    assert summary.total == model.num_parameters()
    text = str(summary)
    assert "Total parameters: 117 (trainable 102, frozen 15)" in text
    assert "Residual" in text and "(N, 9)" in text
    printed = model.summary()
    assert capsys.readouterr().out.strip() == str(printed).strip()
    out = io.StringIO()
    model.summary(file=out)
    assert out.getvalue().strip() == text.strip()


def test_summary_of_a_two_input_model_and_of_nd_inputs():
    summary = _two_inputs("float32").summary(file=None)
    shapes = {r["name"]: r["output_shape"] for r in summary.rows}
    assert shapes["0"] == ((None, 4), (None, 5)) and shapes["1"] == (None, 9) and shapes[""] == (None, 2)
    assert "(N, 4), (N, 5)" in str(summary)
    nd = pn.Sequential(pn.Dense(4, 6, seed=0), pn.Tanh(), pn.Flatten(), pn.Dense(30, 2, seed=1))
    # the first Dense tells only the last axis: without an input shape the shapes are unknown
    unknown = nd.summary(file=None)
    assert [r["output_shape"] for r in unknown.rows] == [None] * 5 and "?" in str(unknown)
    assert unknown.total == 4 * 6 + 6 + 30 * 2 + 2
    known = nd.summary(input_shape=(5, 4), file=None)
    assert [r["output_shape"] for r in known.rows] == [(None, 2), (None, 5, 6), (None, 5, 6), (None, 30), (None, 2)]
    with pytest.raises(ValueError, match=r"layer 3 \(Dense\) expects 30 input features, got 42"):
        nd.summary(input_shape=(7, 4), file=None)
    with pytest.raises(ValueError, match="input_shape must be a per-sample shape"):
        nd.summary(input_shape="5x4", file=None)


def test_summary_shows_the_children_of_a_user_container(f64):
    summary = _user_model().summary(input_shape=(4,), file=None)
    shapes = {r["name"]: r["output_shape"] for r in summary.rows}
    assert shapes == {"": (None, 2), "0": (None, 5), "0.first": (None, 6), "0.act": (None, 6), "0.second": (None, 5),
                      "1": (None, 5), "2": (None, 5), "3": (None, 2)}


# ---------------------------------------------------------------- the kind of input a model takes


def test_a_tuple_for_a_one_input_model_is_a_clear_error(rng):
    one = pn.Sequential(pn.Dense(3, 2, seed=0))
    pair = (rng.normal(size=(4, 3)), rng.normal(size=(4, 3)))
    for call in (lambda: one(pair), lambda: one.predict(pair), lambda: one.evaluate(pair, np.zeros(4, int), loss="cross_entropy"),
                 lambda: one.fit(pair, np.zeros(4, int), loss="cross_entropy", verbose=0)):
        with pytest.raises(ValueError, match="takes one input .* starts with a Parallel"):
            call()
    assert getattr(one, "optimizer_state", None) is None


def test_outputs_with_more_axes_than_a_loss_takes_are_refused_before_training(rng):
    model = pn.Sequential(pn.Dense(3, 4, seed=0), pn.Reshape((2, 2)))
    before = pn.to_numpy(model[0].weight).copy()
    with pytest.raises(ValueError, match=r"outputs have shape \(2, 2\) per sample.*Flatten"):
        model.fit(rng.normal(size=(4, 3)), rng.normal(size=(4, 2)), loss="mse", verbose=0)
    with pytest.raises(ValueError, match="Flatten"):
        pn.value_and_grad(model, "mse", rng.normal(size=(4, 3)), rng.normal(size=(4, 2)))
    np.testing.assert_array_equal(pn.to_numpy(model[0].weight), before)


def test_summary_prints_the_table_once_and_returns_it(capsys):
    model = pn.Sequential(pn.Dense(3, 4, seed=0), pn.ReLU(), pn.Dense(4, 2, seed=1))
    summary = model.summary()
    printed = capsys.readouterr().out
    assert printed.strip() == str(summary) and "Total parameters: 26" in printed
    assert repr(summary) == "<Summary of 4 modules: 26 parameters (26 trainable, 0 frozen)>"


def test_a_module_sits_in_one_place_of_a_tree(rng):
    dense = pn.Dense(3, 3, seed=0)
    for build in (lambda: pn.Parallel(dense, dense), lambda: pn.Sequential(dense, pn.Residual(dense)),
                  lambda: pn.Add(pn.Sequential(dense), dense)):
        with pytest.raises(ValueError, match="is in the model already.*copy"):
            build()
    model = pn.Parallel(dense, dense.copy())  # a copy is a module of its own
    assert model.num_parameters() == 2 * dense.num_parameters()
    assert len(list(model.parameters())) == 4
    relu = pn.ReLU()  # a layer without arrays may serve twice
    twice = pn.Sequential(pn.Dense(3, 4, seed=0), relu, pn.Dense(4, 2, seed=1), relu)
    assert twice(rng.normal(size=(2, 3))).shape == (2, 2)
