"""Models beyond a plain Sequential train exactly as PyTorch trains them.

Float64, the same initial weights and the same batches (``shuffle=False``),
several Adam steps; every parameter is compared after training to 1e-10. The
trees: a residual MLP, a two-input model (``Parallel`` then ``Concatenate``),
``Dense`` on ``(N, T, F)`` inputs, and a model with a frozen first layer.
portnn's Dense weight is ``(in, out)``, the transpose of ``torch.nn.Linear``'s.
"""

from __future__ import annotations

import numpy as np
import pytest

import portnn as pn

F64 = "float64"
TOL = {"rtol": 1e-10, "atol": 1e-12}
EPOCHS, BATCH = 3, 8


@pytest.fixture
def torch(float64_ok):
    if not float64_ok:
        pytest.skip("the parity tests run in float64, which this backend lacks")
    return pytest.importorskip("torch")


def _linear(torch, dense):
    """A torch.nn.Linear holding ``dense``'s weights (float64)."""
    lin = torch.nn.Linear(dense.in_features, dense.out_features).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(pn.to_numpy(dense.weight).T))
        lin.bias.copy_(torch.tensor(pn.to_numpy(dense.bias)))
    return lin


def _layer_norm(torch, norm):
    ln = torch.nn.LayerNorm(norm.features, eps=norm.eps).double()
    with torch.no_grad():
        ln.weight.copy_(torch.tensor(pn.to_numpy(norm.weight)))
        ln.bias.copy_(torch.tensor(pn.to_numpy(norm.bias)))
    return ln


def _same_as_torch(model, pairs):
    """Every portnn parameter equals its torch twin: ``pairs`` maps portnn name -> torch parameter."""
    assert set(pairs) == set(model.parameters())
    for name, value in model.parameters().items():
        theirs = pairs[name].detach().numpy()
        ours = pn.to_numpy(value)
        np.testing.assert_allclose(ours, theirs.T if name.endswith("weight") and ours.ndim == 2 else theirs, **TOL, err_msg=name)


def _dense_pairs(prefix, lin):
    return {f"{prefix}weight": lin.weight, f"{prefix}bias": lin.bias}


def _train_torch(torch, forward, params, inputs, y, loss_fn, opt=None, **adam):
    opt = opt if opt is not None else torch.optim.Adam(params, **adam)
    n = len(y)
    for _ in range(EPOCHS):
        for s in range(0, n, BATCH):
            opt.zero_grad()
            batch = [torch.tensor(x[s : s + BATCH]) for x in inputs]
            loss_fn(forward(*batch), torch.tensor(y[s : s + BATCH])).backward()
            opt.step()


def _moved(model, before):
    return max(float(np.abs(pn.to_numpy(v) - before[k]).max()) for k, v in model.parameters().items())


def _host(model):
    return {k: pn.to_numpy(v).copy() for k, v in model.parameters().items()}


# ---------------------------------------------------------------- residual MLP


def test_residual_mlp_trains_as_in_torch(torch):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)), rng.integers(0, 3, size=40)
    model = pn.Sequential(
        pn.Dense(4, 8, seed=0, dtype=F64),
        pn.ReLU(),
        pn.Residual(pn.Sequential(pn.Dense(8, 8, seed=1, dtype=F64), pn.Tanh())),
        pn.Dense(8, 3, seed=2, dtype=F64),
    )
    first, inner, last = _linear(torch, model[0]), _linear(torch, model[2].block[0]), _linear(torch, model[3])

    def forward(x):
        h = torch.relu(first(x))
        return last(h + torch.tanh(inner(h)))

    before = _host(model)
    model.fit(X, y, loss="cross_entropy", optimizer=pn.Adam(lr=0.01), epochs=EPOCHS, batch_size=BATCH, shuffle=False, verbose=0)
    assert model.optimizer_state["step"] == EPOCHS * 5
    assert _moved(model, before) > 1e-3  # it trained
    params = [*first.parameters(), *inner.parameters(), *last.parameters()]
    _train_torch(torch, forward, params, [X], y, torch.nn.functional.cross_entropy, lr=0.01)
    _same_as_torch(model, {**_dense_pairs("0.", first), **_dense_pairs("2.block.0.", inner), **_dense_pairs("3.", last)})


# ---------------------------------------------------------------- two inputs


def _two_input_model():
    net_a = pn.Sequential(pn.Dense(3, 5, seed=0, dtype=F64), pn.Tanh())
    net_b = pn.Sequential(pn.Dense(2, 4, seed=1, dtype=F64), pn.ReLU(), pn.Dense(4, 4, seed=2, dtype=F64))
    head = pn.Sequential(pn.Dense(9, 6, seed=3, dtype=F64), pn.Tanh(), pn.Dense(6, 2, seed=4, dtype=F64))
    return pn.Sequential(pn.Parallel(net_a, net_b), pn.Concatenate(), head)


def test_two_input_model_trains_as_in_torch(torch):
    rng = np.random.default_rng(1)
    Xa, Xb, y = rng.normal(size=(40, 3)), rng.normal(size=(40, 2)), rng.normal(size=(40, 2))
    model = _two_input_model()
    a0 = _linear(torch, model[0][0][0])
    b0, b2 = _linear(torch, model[0][1][0]), _linear(torch, model[0][1][2])
    h0, h2 = _linear(torch, model[2][0]), _linear(torch, model[2][2])

    def forward(xa, xb):
        joined = torch.cat([torch.tanh(a0(xa)), b2(torch.relu(b0(xb)))], dim=-1)
        return h2(torch.tanh(h0(joined)))

    before = _host(model)
    model.fit((Xa, Xb), y, loss="mse", optimizer=pn.Adam(lr=0.02), epochs=EPOCHS, batch_size=BATCH, shuffle=False, verbose=0)
    assert _moved(model, before) > 1e-3
    params = [p for m in (a0, b0, b2, h0, h2) for p in m.parameters()]
    _train_torch(torch, forward, params, [Xa, Xb], y, torch.nn.functional.mse_loss, lr=0.02)
    _same_as_torch(model, {
        **_dense_pairs("0.0.0.", a0), **_dense_pairs("0.1.0.", b0), **_dense_pairs("0.1.2.", b2),
        **_dense_pairs("2.0.", h0), **_dense_pairs("2.2.", h2),
    })
    # and predict/evaluate on the tuple give torch's outputs
    with torch.no_grad():
        theirs = forward(torch.tensor(Xa), torch.tensor(Xb)).numpy()
    np.testing.assert_allclose(pn.to_numpy(model.predict((Xa, Xb))), theirs, **TOL)
    np.testing.assert_allclose(model.evaluate((Xa, Xb), y), float(((theirs - y) ** 2).mean()), **TOL)


# ---------------------------------------------------------------- N-d Dense


def test_dense_on_sequences_trains_as_in_torch(torch):
    """Dense and LayerNorm on the last axis of (N, T, F) inputs, then Flatten before the head
    (the losses take (samples, outputs) targets)."""
    rng = np.random.default_rng(2)
    T = 5
    X, y = rng.normal(size=(32, T, 4)), rng.normal(size=(32, 2))
    model = pn.Sequential(
        pn.Dense(4, 6, seed=0, dtype=F64),
        pn.LayerNorm(6, dtype=F64),
        pn.Tanh(),
        pn.Dense(6, 3, seed=1, dtype=F64),
        pn.Flatten(),
        pn.Dense(T * 3, 2, seed=2, dtype=F64),
    )
    first, norm = _linear(torch, model[0]), _layer_norm(torch, model[1])
    second, head = _linear(torch, model[3]), _linear(torch, model[5])

    def forward(x):
        return head(torch.flatten(second(torch.tanh(norm(first(x)))), 1))

    before = _host(model)
    model.fit(X, y, loss="mse", optimizer=pn.Adam(lr=0.01), epochs=EPOCHS, batch_size=BATCH, shuffle=False, verbose=0)
    assert _moved(model, before) > 1e-3
    params = [p for m in (first, norm, second, head) for p in m.parameters()]
    _train_torch(torch, forward, params, [X], y, torch.nn.functional.mse_loss, lr=0.01)
    _same_as_torch(model, {
        **_dense_pairs("0.", first), "1.weight": norm.weight, "1.bias": norm.bias,
        **_dense_pairs("3.", second), **_dense_pairs("5.", head),
    })
    # the sequence part alone gives torch's (N, T, 3) outputs
    with torch.no_grad():
        theirs = second(torch.tanh(norm(first(torch.tensor(X))))).numpy()
    body = pn.Sequential(*[model[i].copy() for i in range(4)])
    np.testing.assert_allclose(pn.to_numpy(body.predict(X)), theirs, **TOL)


# ---------------------------------------------------------------- a frozen first layer


def _frozen_first_model():
    return pn.Sequential(
        pn.Dense(4, 8, seed=0, dtype=F64), pn.ReLU(), pn.Dense(8, 8, seed=1, dtype=F64), pn.Tanh(),
        pn.Dense(8, 3, seed=2, dtype=F64),
    )


def test_model_with_frozen_first_layer_trains_as_in_torch(torch):
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(40, 4)), rng.integers(0, 3, size=40)
    model = _frozen_first_model()
    model[0].trainable = False
    ref = torch.nn.Sequential(
        _linear(torch, model[0]), torch.nn.ReLU(), _linear(torch, model[2]), torch.nn.Tanh(), _linear(torch, model[4])
    )
    for p in ref[0].parameters():
        p.requires_grad_(False)
    frozen = {k: pn.to_numpy(v).copy() for k, v in model[0].parameters().items()}
    before = _host(model)
    model.fit(X, y, loss="cross_entropy", optimizer=pn.Adam(lr=0.01), epochs=EPOCHS, batch_size=BATCH, shuffle=False, verbose=0)
    assert _moved(model, before) > 1e-3
    opt = torch.optim.Adam([p for p in ref.parameters() if p.requires_grad], lr=0.01)
    _train_torch(torch, ref, None, [X], y, torch.nn.functional.cross_entropy, opt=opt)
    _same_as_torch(model, {**_dense_pairs("0.", ref[0]), **_dense_pairs("2.", ref[2]), **_dense_pairs("4.", ref[4])})
    for k, v in model[0].parameters().items():  # bit-identical, not merely close
        np.testing.assert_array_equal(pn.to_numpy(v), frozen[k])


def test_two_input_model_with_a_frozen_branch_trains_as_in_torch(torch):
    rng = np.random.default_rng(4)
    Xa, Xb, y = rng.normal(size=(40, 3)), rng.normal(size=(40, 2)), rng.normal(size=(40, 2))
    model = _two_input_model()
    model[0][1].freeze()  # the whole second branch
    a0 = _linear(torch, model[0][0][0])
    b0, b2 = _linear(torch, model[0][1][0]), _linear(torch, model[0][1][2])
    h0, h2 = _linear(torch, model[2][0]), _linear(torch, model[2][2])
    for p in [*b0.parameters(), *b2.parameters()]:
        p.requires_grad_(False)

    def forward(xa, xb):
        joined = torch.cat([torch.tanh(a0(xa)), b2(torch.relu(b0(xb)))], dim=-1)
        return h2(torch.tanh(h0(joined)))

    model.fit((Xa, Xb), y, loss="mse", optimizer=pn.Adam(lr=0.02), epochs=EPOCHS, batch_size=BATCH, shuffle=False, verbose=0)
    params = [p for m in (a0, h0, h2) for p in m.parameters()]
    _train_torch(torch, forward, params, [Xa, Xb], y, torch.nn.functional.mse_loss, lr=0.02)
    _same_as_torch(model, {
        **_dense_pairs("0.0.0.", a0), **_dense_pairs("0.1.0.", b0), **_dense_pairs("0.1.2.", b2),
        **_dense_pairs("2.0.", h0), **_dense_pairs("2.2.", h2),
    })
