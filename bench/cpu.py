"""CPU benchmarks: portnn on NumPy against scikit-learn's MLPClassifier and PyTorch.

    python bench/cpu.py                 # prints a table; --markdown for docs/benchmarks.md
    python bench/cpu.py --quick         # fewer repeats

Every contender trains the same architecture with Adam on the same data and
batch size; times are medians of repeated runs measured side by side in one
process. Ratios are what the targets are about, not absolute times.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import time
import warnings

import numpy as np

import portnn as pn


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _data(n: int, features: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, features)).astype(np.float32)
    y = rng.integers(0, classes, size=n)
    X = (centers[y] + rng.normal(scale=2.0, size=(n, features))).astype(np.float32)
    return X, y


def _portnn_model(sizes):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(pn.Dense(a, b, init="he_uniform", seed=i))
        if i < len(sizes) - 2:
            layers.append(pn.ReLU())
    return pn.Sequential(*layers)


def bench_training(X, y, sizes, epochs: int, batch: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Seconds per epoch and train accuracy for each contender."""
    results = {}

    with pn.use_backend("numpy"):
        def run_portnn():
            model = _portnn_model(sizes)
            model.fit(X, y, loss="cross_entropy", optimizer=pn.Adam(1e-3), epochs=epochs, batch_size=batch, seed=0, verbose=0)
            return model

        t = _median_time(run_portnn, repeats) / epochs
        acc = float(np.mean(pn.to_numpy(run_portnn().predict_classes(X)) == y))
        results["portnn (numpy)"] = (t, acc)

    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        def run_sklearn():
            clf = MLPClassifier(hidden_layer_sizes=tuple(sizes[1:-1]), solver="adam", batch_size=batch,
                                max_iter=epochs, tol=0, n_iter_no_change=epochs + 1, random_state=0, alpha=0.0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(X, y)
            return clf

        t = _median_time(run_sklearn, repeats) / epochs
        results["scikit-learn MLPClassifier"] = (t, float(run_sklearn().score(X, y)))
    except ImportError:
        pass

    try:
        import torch

        def run_torch():
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
                for s in range(0, len(X), batch):
                    idx = order[s : s + batch]
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(net(tx[idx]), ty[idx]).backward()
                    opt.step()
            return net, tx, ty

        t = _median_time(run_torch, repeats) / epochs
        net, tx, ty = run_torch()
        with torch.no_grad():
            acc = float((net(tx).argmax(1) == ty).float().mean())
        results["PyTorch (CPU)"] = (t, acc)
    except ImportError:
        pass
    return results


def bench_latency(repeats: int) -> dict[str, float]:
    """Microseconds for one sample through the tutorials' 2-3-2-2 network, and a 10k batch."""
    import timeit

    W1 = np.array([[0.1, 0.3, 0.5], [0.2, 0.4, 0.6]]); b1 = np.array([0.1, 0.2, 0.3])  # noqa: E702
    W2 = np.array([[0.1, 0.4], [0.2, 0.5], [0.3, 0.6]]); b2 = np.array([0.1, 0.2])  # noqa: E702
    W3 = np.array([[0.1, 0.3], [0.2, 0.4]]); b3 = np.array([0.1, 0.2])  # noqa: E702
    x = np.array([1.0, 0.5])

    def sigmoid(a):
        return 1 / (1 + np.exp(-a))

    def plain():
        return sigmoid(sigmoid(x @ W1 + b1) @ W2 + b2) @ W3 + b3

    with pn.use_backend("numpy"):
        net = pn.Sequential(pn.Dense(2, 3, W1, b1), pn.Sigmoid(), pn.Dense(3, 2, W2, b2), pn.Sigmoid(), pn.Dense(2, 2, W3, b3))
        big = _portnn_model([784, 256, 256, 10])
    Xb = np.random.default_rng(0).normal(size=(10_000, 784)).astype(np.float32)

    def best(fn, number):
        return min(timeit.repeat(fn, number=number, repeat=repeats)) / number * 1e6

    out = {"plain NumPy, one sample (2-3-2-2)": best(plain, 5000), "portnn model(x), one sample (2-3-2-2)": best(lambda: net(x), 5000)}
    try:
        import torch

        tnet = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 2), torch.nn.Sigmoid(), torch.nn.Linear(2, 2)).double()
        tx = torch.from_numpy(x)
        with torch.no_grad():
            out["PyTorch, one sample (2-3-2-2)"] = best(lambda: tnet(tx), 5000)
    except ImportError:
        pass
    out["portnn predict, 10,000 x 784 (784-256-256-10)"] = best(lambda: big.predict(Xb), 3)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else 3
    print(f"# {time.strftime('%Y-%m-%d')} - {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}, NumPy {np.__version__}")
    configs = [
        ("MLP 784-256-256-10, 20,000 samples, batch 200", _data(20_000, 784, 10), [784, 256, 256, 10], 3 if not args.quick else 1),
        ("MLP 64-128-10, digits-sized (1,797 samples), batch 200", _data(1_797, 64, 10), [64, 128, 10], 10),
    ]
    for title, (X, y), sizes, epochs in configs:
        results = bench_training(X, y, sizes, epochs, 200, repeats)
        print(f"\n## Training: {title}, Adam(1e-3), {epochs} epochs\n")
        print("| contender | s/epoch | train accuracy | portnn / it |")
        print("|---|---|---|---|")
        ours = results["portnn (numpy)"][0]
        for name, (t, acc) in results.items():
            print(f"| {name} | {t:.3f} | {acc:.3f} | {ours / t:.2f} |")
    print("\n## Inference latency\n")
    print("| case | µs |")
    print("|---|---|")
    for name, us in bench_latency(repeats).items():
        print(f"| {name} | {us:,.1f} |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of this process: {peak:.0f} MiB (all contenders together)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
