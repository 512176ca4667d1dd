"""A model trained with a chain of transforms saves and loads with its optimizer and state,
resumes bit for bit, and a file's transform tree can only name portnn's own transforms."""

import json

import numpy as np
import pytest

import portnn as pn
from portnn import optim as o

st = pytest.importorskip("safetensors.numpy")


def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64)


def _model():
    return pn.Sequential(pn.Dense(3, 5, seed=0, dtype="float64"), pn.Tanh(), pn.Dense(5, 2, seed=1, dtype="float64"))


def _chain():
    parts = o.partition({"adam": o.scale_by_adam(), "momentum": o.trace(0.9)}, [("0.*", "adam"), ("*", "momentum")])
    return o.chain(o.clip_by_global_norm(1.0), parts, o.add_decayed_weights(1e-3),
                   o.scale_by_learning_rate(o.warmup_cosine(1e-2, warmup_steps=3, total_steps=40)))


def _read(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["portnn"])


def _rewrite(path, tensors, meta):
    from portnn.io import _checksum

    text = json.dumps(meta)
    st.save_file(tensors, str(path), metadata={"portnn": text, "portnn_sha256": _checksum(text, tensors)})


def test_a_chain_saves_loads_and_resumes_bit_for_bit(tmp_path):
    X, y = _data()
    model = _model()
    model.fit(X, y, loss="cross_entropy", optimizer=_chain(), epochs=2, batch_size=7, seed=0, verbose=0)
    path = tmp_path / "chain.safetensors"
    model.save(path)
    loaded = pn.load(path, backend="numpy")
    assert repr(loaded.optimizer) == repr(model.optimizer)
    assert loaded.optimizer_state["step"] == model.optimizer_state["step"] == 10
    for m in (model, loaded):
        m.fit(X, y, epochs=4, initial_epoch=2, batch_size=7, seed=0, verbose=0)
    # bit for bit on NumPy (the loaded copy lives there); the same run within rounding elsewhere
    same = np.testing.assert_array_equal if str(model.backend) == "numpy" else (
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15))
    for k, v in model.parameters().items():
        same(pn.to_numpy(loaded.parameters()[k]), pn.to_numpy(v))
    for k, slots in model.optimizer_state["slots"].items():
        for name, value in slots.items():
            same(pn.to_numpy(loaded.optimizer_state["slots"][k][name]), pn.to_numpy(value))


def test_what_a_file_cannot_describe_warns_and_is_left_out(tmp_path):
    X, y = _data()
    cases = [
        (o.chain(o.scale_by_adam(), o.scale_by_learning_rate(lambda step: 1e-3)), "a learning rate of your own"),
        (o.chain(o.partition({"a": o.scale_by_adam()}, lambda name: "a"), o.scale(-1e-3)), "labels are a function"),
    ]
    for optimizer, reason in cases:
        model = _model()
        model.fit(X, y, loss="cross_entropy", optimizer=optimizer, epochs=1, verbose=0)
        path = tmp_path / "m.safetensors"
        with pytest.warns(UserWarning, match=reason):
            model.save(path)
        loaded = pn.load(path)
        assert loaded.optimizer is None and loaded.optimizer_state is None
        np.testing.assert_array_equal(pn.to_numpy(loaded.predict(X)), pn.to_numpy(model.predict(X)))


@pytest.mark.parametrize(
    "tree, message",
    [
        ({"class": "Popen", "config": {"args": "true"}}, "no optimizer class named 'Popen'|Popen"),
        ({"class": "chain", "transforms": "ScaleByAdam"}, "must list its 'transforms'"),
        ({"class": "ScaleByAdam", "config": {"betas": [0.9, 2.0]}}, "cannot rebuild ScaleByAdam"),
        ({"class": "ScaleByAdam", "config": {"shell": 1}}, "cannot rebuild ScaleByAdam"),
        ({"class": "partition", "labels": [["*", "x"]], "transforms": {"a": {"class": "ScaleByAdam"}}}, r"labels \['x'\] name no transform"),
    ],
)
def test_a_crafted_transform_tree_is_refused_and_builds_nothing_else(tmp_path, tree, message):
    path = _file_with_transform_tree(tmp_path, tree)
    with pytest.raises(ValueError, match=message):
        pn.load(path)


def test_transforms_nest_only_so_deep_in_a_file(tmp_path):
    node = {"class": "ScaleByAdam"}
    for _ in range(40):
        node = {"class": "chain", "transforms": [node]}
    with pytest.raises(ValueError, match="nest deeper than 16"):
        pn.load(_file_with_transform_tree(tmp_path, node))


def _file_with_transform_tree(tmp_path, tree):
    """A model file trained with a chain, its transform tree replaced by ``tree`` (checksum kept right)."""
    X, y = _data()
    model = _model()
    model.fit(X, y, loss="cross_entropy", optimizer=o.chain(o.scale_by_adam(), o.scale_by_learning_rate(1e-3)), epochs=1, verbose=0)
    path = tmp_path / "m.safetensors"
    model.save(path)
    tensors, meta = _read(path)
    meta["transform"] = tree
    _rewrite(path, tensors, meta)
    return path
