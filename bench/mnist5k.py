"""Accuracy of the README's CNN on mnist5k: portnn against the same recipe in PyTorch.

    python bench/mnist5k.py                 # one seed each; prints a Markdown table
    python bench/mnist5k.py --seeds 0,1,2   # the spread over seeds
    python bench/mnist5k.py --epochs 2      # a smoke run

The recipe is what ``portnn train --dataset mnist5k --model cnn`` builds: conv 32 x 5 x 5 -
ReLU - max pool 2 - conv 64 x 5 x 5 - ReLU - max pool 2 - dropout 0.25 - flatten - dense 128 -
ReLU - dropout 0.5 - dense 10, softmax cross-entropy, Adam (lr 1e-3), batch 64, the training set
shuffled every epoch, 20 epochs, float32, each library's own default initialization. Both
train on the same 4,000 images and are scored on the same 1,000 held-out ones
(``load_dataset("mnist5k", images=True)``). Each contender runs in a child process of its
own, one after the other, with the CPU threads both libraries use by default.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

CONTENDERS = ("portnn", "torch")
LABELS = {"portnn": "portnn (NumPy)", "torch": "PyTorch (CPU)"}


def _data():
    from portnn.datasets import load_dataset

    return load_dataset("mnist5k", images=True)


def _portnn(seed: int, epochs: int) -> dict:
    import portnn as pn

    X_train, X_test, y_train, y_test = _data()
    with pn.use_backend("numpy"):
        model = pn.Sequential(
            pn.Conv2D(1, 32, 5, seed=seed),
            pn.ReLU(),
            pn.MaxPool2D(2),
            pn.Conv2D(32, 64, 5, seed=seed + 1),
            pn.ReLU(),
            pn.MaxPool2D(2),
            pn.Dropout(0.25, seed=seed + 2),
            pn.Flatten(),
            pn.Dense(64 * 4 * 4, 128, seed=seed + 3),
            pn.ReLU(),
            pn.Dropout(0.5, seed=seed + 4),
            pn.Dense(128, 10, seed=seed + 5),
        )
        start = time.perf_counter()
        model.fit(X_train, y_train, loss="cross_entropy", optimizer=pn.Adam(1e-3), epochs=epochs,
                  batch_size=64, seed=seed, verbose=0)
        seconds = time.perf_counter() - start
        predicted = np.asarray(pn.to_numpy(model.predict_classes(X_test)))
    return {"accuracy": float(np.mean(predicted == y_test)), "seconds": seconds}


def _torch(seed: int, epochs: int) -> dict:
    import torch
    from torch import nn

    X_train, X_test, y_train, y_test = _data()
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    X, y = torch.from_numpy(X_train), torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(X), generator=generator)
        for i in range(0, len(X), 64):
            batch = order[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[batch]), y[batch]).backward()
            opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(X_test)).argmax(1).numpy()
    return {"accuracy": float(np.mean(predicted == y_test)), "seconds": seconds}


def _child(name: str, seed: int, epochs: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, "--seeds", str(seed), "--epochs", str(epochs)],
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0", help="comma separated (default: 0)")
    parser.add_argument("--epochs", type=int, default=20, help="(default: 20)")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.child:
        run = _portnn if args.child == "portnn" else _torch
        print(json.dumps(run(seeds[0], args.epochs)))
        return
    results: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
    for seed in seeds:
        for name in CONTENDERS:
            results[name].append(_child(name, seed, args.epochs))
            print(f"seed {seed} {name}: {results[name][-1]}", file=sys.stderr)
    print(f"mnist5k CNN, {args.epochs} epochs, seeds {args.seeds}; "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}\n")
    print("| contender | test accuracy (per seed) | mean | training time, s (median) |")
    print("|---|---|---|---|")
    for name in CONTENDERS:
        accuracies = [r["accuracy"] for r in results[name]]
        seconds = statistics.median(r["seconds"] for r in results[name])
        print(f"| {LABELS[name]} | {', '.join(f'{a:.3f}' for a in accuracies)} | "
              f"{statistics.mean(accuracies):.4f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
