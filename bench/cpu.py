"""CPU benchmarks: portnn on NumPy against scikit-learn's MLPClassifier and PyTorch.

    python bench/cpu.py                 # the whole suite; prints Markdown tables
    python bench/cpu.py --quick         # one repeat, fewer epochs (a smoke run)
    python bench/cpu.py --against DIR   # also portnn from another checkout (before/after)

Every contender trains the same architecture with Adam(1e-3) on the same data
and batch size. Each fit runs in a child process of its own (after a warm-up
fit there), so that its peak RSS is its own; the contenders take turns, round
after round, in this one run, and the times are medians over the rounds.
Ratios are what the targets are about, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import timeit
import warnings

import numpy as np

CONFIGS = {
    # name: (title, architecture, epochs, quick epochs)
    "wide": ("20,000 x 784 samples, 10 classes, MLP 784-256-256-10", [784, 256, 256, 10], 3, 1),
    "digits": ("scikit-learn's digits (1,797 x 64, scaled to [0, 1]), MLP 64-128-10", [64, 128, 10], 40, 5),
}
CONTENDERS = ("portnn", "sklearn", "torch", "numpy_loop")
LABELS = {"portnn": "portnn (NumPy)", "sklearn": "scikit-learn MLPClassifier", "torch": "PyTorch (CPU)",
          "numpy_loop": "hand-written NumPy loop (the floor)", "portnn_against": "portnn (NumPy), --against"}
BATCH = 200


def _data(config: str) -> tuple[np.ndarray, np.ndarray]:
    if config == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        return (X / 16.0).astype(np.float32), y.astype(np.int64)
    rng = np.random.default_rng(0)  # "wide": MNIST-sized synthetic classes
    centers = rng.normal(size=(10, 784)).astype(np.float32)
    y = rng.integers(0, 10, size=20_000)
    X = (centers[y] + rng.normal(scale=2.0, size=(20_000, 784))).astype(np.float32)
    return X, y


def _portnn(X, y, sizes, epochs):
    import portnn as pn

    with pn.use_backend("numpy"):
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(pn.Dense(a, b, init="he_uniform", seed=i))
            if i < len(sizes) - 2:
                layers.append(pn.ReLU())
        model = pn.Sequential(*layers)
        model.fit(X, y, loss="cross_entropy", optimizer=pn.Adam(1e-3), epochs=epochs,
                  batch_size=BATCH, seed=0, verbose=0)
    return lambda: float(np.mean(pn.to_numpy(model.predict_classes(X)) == y))


def _sklearn(X, y, sizes, epochs):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=tuple(sizes[1:-1]), solver="adam", learning_rate_init=1e-3,
                        batch_size=BATCH, max_iter=epochs, tol=0, n_iter_no_change=epochs + 1,
                        random_state=0, alpha=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    return lambda: float(clf.score(X, y))


def _torch(X, y, sizes, epochs):
    import torch

    torch.manual_seed(0)
    mods = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        mods.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            mods.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*mods)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    tx, ty = torch.from_numpy(X), torch.from_numpy(y)
    rng = np.random.default_rng(0)
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(X)))
        for s in range(0, len(X), BATCH):
            idx = order[s : s + BATCH]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(tx[idx]), ty[idx]).backward()
            opt.step()

    def accuracy():
        with torch.no_grad():
            return float((net(tx).argmax(1) == ty).float().mean())

    return accuracy


def _numpy_loop(X, y, sizes, epochs):
    """The same network, loss and Adam written out in plain NumPy: what the matrix products and
    elementwise passes cost with no library around them, the floor for portnn on NumPy."""
    rng = np.random.default_rng(0)
    W = [rng.uniform(-1, 1, size=(a, b)).astype(np.float32) * np.float32(np.sqrt(6 / a))
         for a, b in zip(sizes[:-1], sizes[1:])]
    B = [np.zeros(b, np.float32) for b in sizes[1:]]
    params = W + B
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    beta1, beta2, lr, eps = 0.9, 0.999, 1e-3, 1e-8
    classes = np.arange(sizes[-1])
    step = 0
    for epoch in range(epochs):
        order = rng.permutation(len(X))
        for s in range(0, len(X), BATCH):
            idx = order[s : s + BATCH]
            xb, yb = X[idx], y[idx]
            acts, pre = [xb], []
            for i, (w, b) in enumerate(zip(W, B)):
                z = acts[-1] @ w
                z += b
                pre.append(z)
                acts.append(np.maximum(z, 0) if i < len(W) - 1 else z)
            z = acts[-1]
            e = np.exp(z - z.max(axis=1, keepdims=True))
            dz = e / (len(xb) * e.sum(axis=1, keepdims=True))
            dz -= (yb[:, None] == classes) / np.float32(len(xb))
            gw, gb = [None] * len(W), [None] * len(W)
            for i in range(len(W) - 1, -1, -1):
                gw[i], gb[i] = acts[i].T @ dz, dz.sum(axis=0)
                if i:
                    dz = (dz @ W[i].T) * (pre[i - 1] > 0)
            step += 1
            root_bc2 = (1 - beta2**step) ** 0.5
            for p, g, mi, vi in zip(params, gw + gb, m, v):
                mi *= beta1
                mi += (1 - beta1) * g
                vi *= beta2
                vi += (1 - beta2) * g * g
                denom = np.sqrt(vi)
                denom += eps * root_bc2
                p -= (lr * root_bc2 / (1 - beta1**step)) * mi / denom

    def accuracy():
        h = X
        for i, (w, b) in enumerate(zip(W, B)):
            h = h @ w + b
            h = np.maximum(h, 0) if i < len(W) - 1 else h
        return float(np.mean(h.argmax(axis=1) == y))

    return accuracy


def run_contender(contender: str, config: str, epochs: int, repeats: int) -> dict:
    """One contender on one configuration, in this process: seconds per epoch, accuracy, peak RSS."""
    X, y = _data(config)
    sizes = CONFIGS[config][1]
    train = {"portnn": _portnn, "portnn_against": _portnn, "sklearn": _sklearn, "torch": _torch,
             "numpy_loop": _numpy_loop}[contender]
    train(X[: 4 * BATCH], y[: 4 * BATCH], sizes, 1)  # warm-up: imports, thread pools, allocator
    times, accuracy = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        accuracy = train(X, y, sizes, epochs)
        times.append(time.perf_counter() - start)
    return {
        "seconds_per_epoch": statistics.median(times) / epochs,
        "accuracy": accuracy(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


#: a checkout of portnn to time beside this one (``--against``): its child imports portnn from there
AGAINST: str | None = None


def _in_child(contender: str, config: str, epochs: int, repeats: int) -> dict | None:
    cmd = [sys.executable, __file__, "--child", contender, config, str(epochs), str(repeats)]
    env = None
    if contender == "portnn_against":
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [AGAINST, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        if "ModuleNotFoundError" in done.stderr:
            return None  # the contender's library is not installed here
        raise RuntimeError(f"{contender} on {config} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _interleaved(config: str, epochs: int, rounds: int) -> dict[str, dict]:
    """Each contender once per round, in turn, so that a busy moment hits them all alike.

    Per contender: the median time over rounds and the largest peak RSS.
    """
    runs: dict[str, list[dict]] = {}
    for _ in range(rounds):
        for contender in CONTENDERS + (("portnn_against",) if AGAINST else ()):
            r = _in_child(contender, config, epochs, 1)
            if r is not None:
                runs.setdefault(contender, []).append(r)
    return {
        c: {
            "seconds_per_epoch": statistics.median(r["seconds_per_epoch"] for r in rs),
            "accuracy": rs[-1]["accuracy"],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
        }
        for c, rs in runs.items()
    }


def bench_latency(repeats: int) -> dict[str, float]:
    """Microseconds for one sample through the tutorials' 2-3-2-2 network, and a 10k batch."""
    import portnn as pn

    W1 = np.array([[0.1, 0.3, 0.5], [0.2, 0.4, 0.6]]); b1 = np.array([0.1, 0.2, 0.3])  # noqa: E702
    W2 = np.array([[0.1, 0.4], [0.2, 0.5], [0.3, 0.6]]); b2 = np.array([0.1, 0.2])  # noqa: E702
    W3 = np.array([[0.1, 0.3], [0.2, 0.4]]); b3 = np.array([0.1, 0.2])  # noqa: E702
    x = np.array([1.0, 0.5])

    def sigmoid(a):
        return 1 / (1 + np.exp(-a))

    def plain():
        return sigmoid(sigmoid(x @ W1 + b1) @ W2 + b2) @ W3 + b3

    with pn.use_backend("numpy"):
        net = pn.Sequential(pn.Dense(2, 3, W1, b1), pn.Sigmoid(), pn.Dense(3, 2, W2, b2), pn.Sigmoid(),
                            pn.Dense(2, 2, W3, b3))
        big = pn.Sequential(pn.Dense(784, 256, seed=0), pn.ReLU(), pn.Dense(256, 256, seed=1), pn.ReLU(),
                            pn.Dense(256, 10, seed=2))
    np.testing.assert_allclose(pn.to_numpy(net(x)), plain(), rtol=1e-12)  # the same computation
    Xb = np.random.default_rng(0).normal(size=(10_000, 784)).astype(np.float32)

    def best(fn, number):
        return min(timeit.repeat(fn, number=number, repeat=max(repeats, 5))) / number * 1e6

    out = {"plain NumPy expression, one sample (2-3-2-2)": best(plain, 20_000),
           "portnn `model(x)`, one sample (2-3-2-2)": best(lambda: net(x), 20_000)}
    try:
        import torch

        tnet = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 2),
                                   torch.nn.Sigmoid(), torch.nn.Linear(2, 2)).double()
        tx = torch.from_numpy(x)
        with torch.no_grad():
            out["PyTorch `net(x)` under no_grad, one sample (2-3-2-2)"] = best(lambda: tnet(tx), 20_000)
            tnet_big = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                                           torch.nn.ReLU(), torch.nn.Linear(256, 10))
            txb = torch.from_numpy(Xb)
            out["PyTorch, 10,000 x 784 (784-256-256-10)"] = best(lambda: tnet_big(txb), 5)
    except ImportError:
        pass
    out["portnn `model.predict`, 10,000 x 784 (784-256-256-10)"] = best(lambda: big.predict(Xb), 5)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat and fewer epochs")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of every contender (default 5, 1 with --quick)")
    parser.add_argument("--against", metavar="DIR",
                        help="also time portnn imported from the checkout DIR (e.g. a git worktree of main)")
    parser.add_argument("--child", nargs=4, metavar=("CONTENDER", "CONFIG", "EPOCHS", "REPEATS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        contender, config, epochs, repeats = args.child
        print(json.dumps(run_contender(contender, config, int(epochs), int(repeats))))
        return
    global AGAINST
    AGAINST = os.path.abspath(args.against) if args.against else None
    repeats = 1 if args.quick else 3
    rounds = args.rounds or (1 if args.quick else 5)
    import portnn as pn

    print(f"# portnn {pn.__version__} CPU benchmarks, {time.strftime('%Y-%m-%d')}\n")
    print(f"{platform.platform()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}, NumPy {np.__version__}\n")
    for config, (title, _, epochs, quick_epochs) in CONFIGS.items():
        epochs = quick_epochs if args.quick else epochs
        results = _interleaved(config, epochs, rounds)
        print(f"## Training: {title}, Adam(1e-3), batch {BATCH}, {epochs} epochs\n")
        print("| contender | s/epoch | train accuracy | peak RSS (MiB) | portnn time / its time |")
        print("|---|---|---|---|---|")
        ours = results["portnn"]["seconds_per_epoch"]
        for name, r in results.items():
            print(f"| {LABELS[name]} | {r['seconds_per_epoch']:.3f} | {r['accuracy']:.3f} | "
                  f"{r['peak_rss_mib']:.0f} | {ours / r['seconds_per_epoch']:.2f} |")
        print()
        sys.stdout.flush()
    print("## Inference latency (best of repeats)\n")
    print("| case | µs |")
    print("|---|---|")
    for name, us in bench_latency(repeats).items():
        print(f"| {name} | {us:,.1f} |")


if __name__ == "__main__":
    main()
