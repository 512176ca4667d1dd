"""One rank of the distributed tests: ``mpiexec -n 2 python tests/mpi_worker.py SCENARIO OUT``.

tests/test_distributed.py launches it and checks what each rank writes to
``OUT/<scenario>-rank<r>.json`` (and the files the scenario leaves in OUT).
Scenarios:

``ok``         equivalence with single-process training, broadcast, sharding,
               rank-0 checkpointing, metrics, mismatched arguments, BatchNorm
``fail``       rank 1 raises in the middle of epoch 2 (uncaught)
``fail_caught`` the same, and every rank catches its error
``stall``      rank 1 stops answering (timeout 1 s)
``interrupt``  rank 1 gets Ctrl-C in the middle of a step
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import time

import numpy as np

import portnn as pn

SCENARIO, OUT = sys.argv[1], sys.argv[2]
NAME = os.environ.get("PORTNN_BACKEND", "").strip() or "numpy"
pn.set_backend(NAME, device="device1" if NAME == "array_api_strict" else None)
RANK, SIZE = pn.train.distributed.rank(), pn.train.distributed.world_size()
results: dict = {"rank": RANK, "size": SIZE}


def host(params):
    return {k: pn.to_numpy(v).tolist() for k, v in params.items()}


def data(n=101, features=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, features))
    y = rng.integers(0, classes, n)
    return X, y


def mlp(seed, dropout=0.0, l2=0.0, batchnorm=False):
    layers = [pn.Dense(6, 12, seed=seed, dtype="float64", l2=l2)]
    if batchnorm:
        layers.append(pn.BatchNorm(12, dtype="float64"))
    layers += [pn.Tanh()]
    if dropout:
        layers.append(pn.Dropout(dropout, seed=seed + 1))
    layers.append(pn.Dense(12, 3, seed=seed + 2, dtype="float64"))
    return pn.Sequential(*layers)


def max_difference(a, b):
    return max(float(np.max(np.abs(pn.to_numpy(a[k]) - pn.to_numpy(b[k])))) for k in a)


def compared(model, history, reference, expected):
    """What a data-parallel run gave, beside the one-process run it must equal."""
    return {
        "max_difference": max_difference(model.parameters(), reference.parameters()),
        "parameters": host(model.parameters()),
        "history": history.history,
        "expected_history": expected.history,
        "steps": model.optimizer_state["step"],
        "expected_steps": reference.optimizer_state["step"],
    }


def scenario_ok():
    X, y = data()
    Xv, yv = data(30, seed=1)
    # (batch size, optimizer, dropout, l2): divisible and not by 2 ranks, a batch of 3
    # split 1 + 2, a last batch of one row (nothing for rank 0 to compute), the full
    # batch; each rank starts from other weights (broadcast)
    configs = {
        "sgd16": (16, lambda: pn.SGD(lr=0.1, momentum=0.9), 0.0, 0.0),
        "adam17_dropout_l2": (17, lambda: pn.Adam(lr=0.01), 0.3, 1e-3),
        "adam3": (3, lambda: pn.Adam(lr=0.01), 0.0, 0.0),
        "sgd4_dropout_empty_share": (4, lambda: pn.SGD(lr=0.1), 0.2, 0.0),  # last batch: 1 row, rank 0 none
        "full": (None, lambda: pn.RMSProp(lr=0.01), 0.0, 0.0),
    }
    results["equal"] = {}
    for name, (batch_size, make_opt, dropout, l2) in configs.items():
        kwargs = dict(loss="cross_entropy", epochs=3, batch_size=batch_size, seed=7, verbose=0,
                      metrics=["accuracy"], validation_data=(Xv, yv))
        model = mlp(10 + 100 * RANK, dropout, l2)
        history = model.fit(X, y, optimizer=make_opt(), distributed=True, **kwargs)
        reference = mlp(10, dropout, l2)
        expected = reference.fit(X, y, optimizer=make_opt(), **kwargs)
        results["equal"][name] = compared(model, history, reference, expected)

    # sample and class weights: each rank weighs its share of a batch by its weights' sum
    w = np.random.default_rng(2).uniform(0.0, 2.0, size=len(X))
    w[::5] = 0.0
    kwargs = dict(loss="cross_entropy", epochs=3, batch_size=17, seed=7, verbose=0, metrics=["accuracy"],
                  sample_weight=w, class_weight={0: 2.0}, validation_data=(Xv, yv, np.linspace(0.5, 1.5, len(yv))))
    model = mlp(10 + 100 * RANK)
    history = model.fit(X, y, optimizer=pn.Adam(lr=0.01), distributed=True, **kwargs)
    reference = mlp(10)
    expected = reference.fit(X, y, optimizer=pn.Adam(lr=0.01), **kwargs)
    results["equal"]["adam17_weighted"] = compared(model, history, reference, expected)

    # jit=True with distributed=True: the compiled step, its dropout masks drawn per rank
    if importlib.util.find_spec("jax") is not None:
        import jax

        jax.config.update("jax_enable_x64", True)
        kwargs = dict(loss="cross_entropy", epochs=2, batch_size=16, seed=7, verbose=0, jit=True)
        model = mlp(10 + 100 * RANK, dropout=0.3).to("jax")
        history = model.fit(X, y, optimizer=pn.Adam(lr=0.01), distributed=True, **kwargs)
        reference = mlp(10, dropout=0.3).to("jax")
        expected = reference.fit(X, y, optimizer=pn.Adam(lr=0.01), **kwargs)
        results["equal"]["jit_dropout"] = compared(model, history, reference, expected)

    # a tree: two inputs, a frozen branch and a residual block train as in one process
    def tree(seed):
        frozen = pn.Dense(4, 8, seed=seed + 1, dtype="float64").freeze()
        block = pn.Sequential(pn.Dense(8, 8, seed=seed + 2, dtype="float64"), pn.Tanh())
        branches = pn.Parallel(pn.Sequential(pn.Dense(6, 8, seed=seed, dtype="float64"), pn.Tanh()), frozen)
        return pn.Sequential(branches, pn.Add(), pn.Residual(block), pn.Dense(8, 3, seed=seed + 3, dtype="float64"))

    Xb = np.random.default_rng(4).normal(size=(len(X), 4))
    kwargs = dict(loss="cross_entropy", epochs=3, batch_size=17, seed=7, verbose=0)
    model = tree(10 + 100 * RANK)
    history = model.fit((X, Xb), y, optimizer=pn.AdamW(lr=0.01), distributed=True, **kwargs)
    reference = tree(10)
    expected = reference.fit((X, Xb), y, optimizer=pn.AdamW(lr=0.01), **kwargs)
    results["equal"]["tree_two_inputs_frozen_branch"] = compared(model, history, reference, expected)
    results["frozen_unchanged"] = host({"w": model[0][1].weight}) == host({"w": tree(10)[0][1].weight})

    # broadcast alone: no epochs, rank 1's own weights replaced by rank 0's
    model = mlp(10 + 100 * RANK)
    before = host(model.parameters())
    model.fit(X, np.eye(3)[y], loss="mse", epochs=0, distributed=True, verbose=0)
    results["broadcast"] = {"before": before, "after": host(model.parameters())}

    # sharding: the first layer records the rows (column 0 holds the row index) it trains on
    class Record(pn.Identity):
        def apply(self, x, training):
            if training:
                seen.append([int(v) for v in np.rint(pn.to_numpy(x[:, 0]))])
            return super().apply(x, training)

    seen: list = []
    Xs = np.concatenate([np.arange(40.0)[:, None], np.random.default_rng(3).normal(size=(40, 5))], axis=1)
    model = pn.Sequential(Record(), pn.Dense(6, 3, seed=1, dtype="float64"))
    model.fit(Xs, np.arange(40) % 3, loss="cross_entropy", epochs=2, batch_size=7, seed=5, distributed=True, verbose=0)
    results["shards"] = seen

    # checkpoints and logs: each rank names its own files; only rank 0's may exist
    model = mlp(10)
    callbacks = [
        pn.ModelCheckpoint(os.path.join(OUT, f"ckpt-rank{RANK}-{{epoch}}.safetensors"), monitor="loss"),
        pn.CSVLogger(os.path.join(OUT, f"log-rank{RANK}.csv")),
    ]
    model.fit(X, y, loss="cross_entropy", epochs=2, batch_size=16, seed=1, distributed=True, verbose=0, callbacks=callbacks)
    results["checkpoint"] = host(model.parameters())

    # BatchNorm: local statistics, running statistics averaged so that ranks agree
    model = mlp(10, batchnorm=True)
    model.fit(X, y, loss="cross_entropy", epochs=2, batch_size=16, seed=1, distributed=True, verbose=0)
    results["batchnorm"] = {"parameters": host(model.parameters()), "buffers": host(model.buffers())}

    # ranks that disagree on the arguments all fail before training, the model unchanged
    model = mlp(10)
    before = host(model.parameters())
    try:
        model.fit(X, y, loss="cross_entropy", batch_size=16 + RANK, distributed=True, verbose=0)
        results["mismatch"] = "no error"
    except ValueError as e:
        results["mismatch"] = str(e)
    results["mismatch_unchanged"] = host(model.parameters()) == before


def failing_loss(rank, at_call, action):
    """Cross-entropy that runs ``action`` on ``rank`` at its ``at_call``-th batch."""
    loss = pn.CrossEntropy()
    calls = [0]
    original = loss.value_and_grad

    def value_and_grad(*args, **kwargs):
        calls[0] += 1
        if RANK == rank and calls[0] == at_call:
            action()
        return original(*args, **kwargs)

    loss.value_and_grad = value_and_grad
    return loss


def record_epoch(epoch, logs, model):
    if RANK == 0:
        with open(os.path.join(OUT, f"epoch{epoch}.json"), "w") as f:
            json.dump(host(model.parameters()), f)


def scenario_failure(action, timeout=300.0):
    X, y = data(160)
    model = mlp(10)
    callbacks = [
        pn.ModelCheckpoint(os.path.join(OUT, "last.safetensors"), monitor="loss"),
        pn.LambdaCallback(on_epoch_end=lambda epoch, logs: record_epoch(epoch, logs, model)),
    ]
    loss = failing_loss(1, 14, action)  # 10 steps per epoch: the 4th step of the 2nd epoch
    model.fit(X, y, loss=loss, epochs=5, batch_size=16, seed=1, verbose=0, callbacks=callbacks,
              distributed=pn.DataParallel(timeout=timeout))


def boom():
    raise ValueError("boom: rank 1 failed on purpose")


def scenario_interrupt():
    X, y = data(160)
    model = mlp(10)
    callbacks = [pn.ModelCheckpoint(os.path.join(OUT, "interrupted.safetensors"), monitor="loss", save_best_only=True)]
    loss = failing_loss(1, 14, lambda: os.kill(os.getpid(), signal.SIGINT))
    try:
        model.fit(X, y, loss=loss, epochs=5, batch_size=16, seed=1, verbose=0, callbacks=callbacks, distributed=True)
        results["interrupted"] = False
    except KeyboardInterrupt:
        results["interrupted"] = True
    results["steps"] = model.optimizer_state["step"]
    results["parameters"] = host(model.parameters())


if SCENARIO == "ok":
    scenario_ok()
elif SCENARIO == "fail":
    scenario_failure(boom)
elif SCENARIO == "fail_caught":  # every rank catches its error: the others learn of rank 1's
    try:
        scenario_failure(boom)
    except Exception as e:  # noqa: BLE001
        results["error"] = f"{type(e).__name__}: {e}"
elif SCENARIO == "stall":
    scenario_failure(lambda: time.sleep(120), timeout=1.0)
elif SCENARIO == "interrupt":
    scenario_interrupt()
else:
    raise SystemExit(f"unknown scenario {SCENARIO!r}")

with open(os.path.join(OUT, f"{SCENARIO}-rank{RANK}.json"), "w") as f:
    json.dump(results, f)
