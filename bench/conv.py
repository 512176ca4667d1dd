"""CPU benchmark of a convolutional network: the book's SimpleConvNet, one training step.

    python bench/conv.py              # 5 rounds; prints a Markdown table
    python bench/conv.py --quick      # 1 round, fewer steps (a smoke run)

The network is the one of Deep Learning from Scratch, ch. 7 (``SimpleConvNet``):
conv 30 x 5 x 5 (stride 1, no padding) - ReLU - max pool 2 x 2 - affine 100 - ReLU -
affine 10 - softmax cross-entropy, on 28 x 28 one-channel images, batch 100, Adam
(lr 1e-3). Contenders:

* ``portnn``: ``pn.Sequential(Conv2D, ReLU, MaxPool2D, Flatten, Dense, ReLU, Dense)``
  trained by ``fit`` on NumPy (float32), the time of an epoch over the steps in it;
* ``torch``: the same model in PyTorch on the CPU (float32), the usual
  ``zero_grad / forward / backward / step`` loop over the same batches;
* ``book``: the book's own NumPy code (``common/layers.py``, ``common/util.py``'s
  im2col/col2im, ``common/optimizer.py``'s Adam), written out here as it is there:
  float64 weights (``0.01 * randn``), float32 images, and the first layer's
  input gradient computed as the book computes it.

Each contender runs in a child process of its own (after warm-up steps there), so
that its peak RSS is its own; the contenders take turns, round after round, in this
one run, and the times are medians over the rounds. The data are random images (the
time of a step does not depend on the values). The report also counts the FLOPs of
the step's matrix products and times those products alone at NumPy's measured rate.
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

import numpy as np

BATCH = 100
N_TRAIN = 2000  # 20 steps an epoch
CONTENDERS = ("portnn", "torch", "book")
LABELS = {"portnn": "portnn (NumPy)", "torch": "PyTorch (CPU)", "book": "the book's NumPy code"}


def _data(n: int = N_TRAIN) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, size=n)


# ---------------------------------------------------------------- portnn


def _portnn_model(pn):
    return pn.Sequential(
        pn.Conv2D(1, 30, 5, seed=0),
        pn.ReLU(),
        pn.MaxPool2D(2),
        pn.Flatten(),
        pn.Dense(30 * 12 * 12, 100, init="he_uniform", seed=1),
        pn.ReLU(),
        pn.Dense(100, 10, seed=2),
    )


def _portnn(X, y, epochs):
    import portnn as pn

    with pn.use_backend("numpy"):
        model = _portnn_model(pn)
        opt = pn.Adam(1e-3)

        def train(n_epochs):
            model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=n_epochs, batch_size=BATCH, seed=0, verbose=0)

        train(1)  # warm-up
        start = time.perf_counter()
        train(epochs)
        return time.perf_counter() - start


def _portnn_layers(X, y, epochs):
    """portnn's step inside ``fit``, layer by layer: the median thread CPU time of each
    layer's forward and backward, and the page faults they take; and the step's totals."""
    import portnn as pn

    def faults():
        return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt

    with pn.use_backend("numpy"):
        model = _portnn_model(pn)
        names = ["Conv2D", "ReLU", "MaxPool2D", "Flatten", "Dense", "ReLU 2", "Dense 2"]
        seen: dict[str, list[list[float]]] = {n: [[], [], [], []] for n in names}

        def timed(layer, rec):
            apply = layer.apply

            def timed_apply(x, training):
                f, t = faults(), time.thread_time()
                out, back = apply(x, training)
                rec[0].append(time.thread_time() - t)
                rec[2].append(faults() - f)

                def timed_backward(dy, need_dx=True):
                    f, t = faults(), time.thread_time()
                    result = back(dy, need_dx=need_dx)
                    rec[1].append(time.thread_time() - t)
                    rec[3].append(faults() - f)
                    return result

                return out, timed_backward

            object.__setattr__(layer, "apply", timed_apply)

        for name, layer in zip(names, model._modules.values()):
            timed(layer, seen[name])
        opt = pn.Adam(1e-3)

        def train(n_epochs):
            model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=n_epochs, batch_size=BATCH, seed=0, verbose=0)

        train(1)
        for rec in seen.values():
            for r in rec:
                r.clear()
        r0, t0, f0 = resource.getrusage(resource.RUSAGE_SELF), time.thread_time(), faults()
        train(epochs)
        r1, t1, f1 = resource.getrusage(resource.RUSAGE_SELF), time.thread_time(), faults()
    steps = epochs * (len(X) // BATCH)

    def ms(v):
        return statistics.median(v) * 1e3

    return {
        "layers": {n: {"forward_ms": ms(r[0]), "backward_ms": ms(r[1]), "faults": statistics.mean(r[2]) + statistics.mean(r[3])}
                   for n, r in seen.items()},
        "cpu_ms": (t1 - t0) / steps * 1e3,
        "sys_ms": (r1.ru_stime - r0.ru_stime) / steps * 1e3,
        "faults": (f1 - f0) / steps,
    }


# ---------------------------------------------------------------- PyTorch


def _torch(X, y, epochs):
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 30, 5),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(30 * 12 * 12, 100),
        torch.nn.ReLU(),
        torch.nn.Linear(100, 10),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    tx, ty = torch.from_numpy(X), torch.from_numpy(y)
    rng = np.random.default_rng(0)

    def train(n_epochs):
        for _ in range(n_epochs):
            order = torch.from_numpy(rng.permutation(len(X)))
            for s in range(0, len(X), BATCH):
                idx = order[s : s + BATCH]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(tx[idx]), ty[idx]).backward()
                opt.step()

    train(1)
    start = time.perf_counter()
    train(epochs)
    return time.perf_counter() - start


# ---------------------------------------------------------------- the book's code


def _im2col(input_data, filter_h, filter_w, stride=1, pad=0):
    N, C, H, W = input_data.shape
    out_h = (H + 2 * pad - filter_h) // stride + 1
    out_w = (W + 2 * pad - filter_w) // stride + 1
    img = np.pad(input_data, [(0, 0), (0, 0), (pad, pad), (pad, pad)], "constant")
    col = np.zeros((N, C, filter_h, filter_w, out_h, out_w))
    for yy in range(filter_h):
        y_max = yy + stride * out_h
        for xx in range(filter_w):
            x_max = xx + stride * out_w
            col[:, :, yy, xx, :, :] = img[:, :, yy:y_max:stride, xx:x_max:stride]
    return col.transpose(0, 4, 5, 1, 2, 3).reshape(N * out_h * out_w, -1)


def _col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    N, C, H, W = input_shape
    out_h = (H + 2 * pad - filter_h) // stride + 1
    out_w = (W + 2 * pad - filter_w) // stride + 1
    col = col.reshape(N, out_h, out_w, C, filter_h, filter_w).transpose(0, 3, 4, 5, 1, 2)
    img = np.zeros((N, C, H + 2 * pad + stride - 1, W + 2 * pad + stride - 1))
    for yy in range(filter_h):
        y_max = yy + stride * out_h
        for xx in range(filter_w):
            x_max = xx + stride * out_w
            img[:, :, yy:y_max:stride, xx:x_max:stride] += col[:, :, yy, xx, :, :]
    return img[:, :, pad : H + pad, pad : W + pad]


class _Convolution:
    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, x):
        FN, C, FH, FW = self.W.shape
        N, C, H, W = x.shape
        out_h, out_w = H - FH + 1, W - FW + 1
        col = _im2col(x, FH, FW)
        col_W = self.W.reshape(FN, -1).T
        out = np.dot(col, col_W) + self.b
        self.x, self.col, self.col_W = x, col, col_W
        return out.reshape(N, out_h, out_w, -1).transpose(0, 3, 1, 2)

    def backward(self, dout):
        FN, C, FH, FW = self.W.shape
        dout = dout.transpose(0, 2, 3, 1).reshape(-1, FN)
        self.db = np.sum(dout, axis=0)
        self.dW = np.dot(self.col.T, dout).transpose(1, 0).reshape(FN, C, FH, FW)
        dcol = np.dot(dout, self.col_W.T)
        return _col2im(dcol, self.x.shape, FH, FW)


class _Pooling:
    def forward(self, x):
        N, C, H, W = x.shape
        out_h, out_w = (H - 2) // 2 + 1, (W - 2) // 2 + 1
        col = _im2col(x, 2, 2, 2).reshape(-1, 4)
        self.x, self.arg_max = x, np.argmax(col, axis=1)
        return np.max(col, axis=1).reshape(N, out_h, out_w, C).transpose(0, 3, 1, 2)

    def backward(self, dout):
        dout = dout.transpose(0, 2, 3, 1)
        dmax = np.zeros((dout.size, 4))
        dmax[np.arange(self.arg_max.size), self.arg_max.flatten()] = dout.flatten()
        dmax = dmax.reshape(dout.shape + (4,))
        dcol = dmax.reshape(dmax.shape[0] * dmax.shape[1] * dmax.shape[2], -1)
        return _col2im(dcol, self.x.shape, 2, 2, 2)


class _Relu:
    def forward(self, x):
        self.mask = x <= 0
        out = x.copy()
        out[self.mask] = 0
        return out

    def backward(self, dout):
        dout[self.mask] = 0
        return dout


class _Affine:
    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, x):
        self.original_x_shape = x.shape
        self.x = x.reshape(x.shape[0], -1)
        return np.dot(self.x, self.W) + self.b

    def backward(self, dout):
        dx = np.dot(dout, self.W.T)
        self.dW = np.dot(self.x.T, dout)
        self.db = np.sum(dout, axis=0)
        return dx.reshape(*self.original_x_shape)


def _book(X, y, epochs):
    rng = np.random.default_rng(0)
    params = {
        "W1": 0.01 * rng.standard_normal((30, 1, 5, 5)), "b1": np.zeros(30),
        "W2": 0.01 * rng.standard_normal((30 * 12 * 12, 100)), "b2": np.zeros(100),
        "W3": 0.01 * rng.standard_normal((100, 10)), "b3": np.zeros(10),
    }
    conv, pool = _Convolution(params["W1"], params["b1"]), _Pooling()
    relu1, relu2 = _Relu(), _Relu()
    aff1, aff2 = _Affine(params["W2"], params["b2"]), _Affine(params["W3"], params["b3"])
    layers = [conv, relu1, pool, aff1, relu2, aff2]
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    step = 0

    def train(n_epochs):
        nonlocal step
        for _ in range(n_epochs):
            order = rng.permutation(len(X))
            for s in range(0, len(X), BATCH):
                idx = order[s : s + BATCH]
                h, t = X[idx], y[idx]
                for layer in layers:
                    h = layer.forward(h)
                e = np.exp(h - h.max(axis=1, keepdims=True))  # SoftmaxWithLoss
                p = e / e.sum(axis=1, keepdims=True)
                dout = p.copy()
                dout[np.arange(len(t)), t] -= 1
                dout /= len(t)
                for layer in reversed(layers):
                    dout = layer.backward(dout)
                grads = {"W1": conv.dW, "b1": conv.db, "W2": aff1.dW, "b2": aff1.db, "W3": aff2.dW, "b3": aff2.db}
                step += 1  # the book's Adam (common/optimizer.py)
                lr_t = 1e-3 * np.sqrt(1.0 - 0.999**step) / (1.0 - 0.9**step)
                for k in params:
                    m[k] += (1 - 0.9) * (grads[k] - m[k])
                    v[k] += (1 - 0.999) * (grads[k] ** 2 - v[k])
                    params[k] -= lr_t * m[k] / (np.sqrt(v[k]) + 1e-7)

    train(1)
    start = time.perf_counter()
    train(epochs)
    return time.perf_counter() - start


# ---------------------------------------------------------------- the count


def matmul_floor(repeats: int = 20) -> dict:
    """The step's matrix products (float32, the shapes portnn multiplies) timed alone."""
    rng = np.random.default_rng(0)
    f = np.float32
    cols = rng.random((BATCH, 1, 25, 576), dtype=f)  # im2col of the first layer
    w1, dy1 = rng.random((1, 30, 25), dtype=f), rng.random((BATCH, 1, 30, 576), dtype=f)
    h, w2, dy2 = rng.random((BATCH, 4320), dtype=f), rng.random((4320, 100), dtype=f), rng.random((BATCH, 100), dtype=f)
    products = [
        lambda: w1 @ cols,  # conv forward
        lambda: dy1 @ np.swapaxes(cols, -1, -2),  # conv weight gradient (no input gradient: first layer)
        lambda: h @ w2,  # affine 1: forward, weight gradient, input gradient
        lambda: h.T @ dy2,
        lambda: dy2 @ w2.T,
    ]
    flops = 2 * BATCH * 30 * 25 * 576 * 2 + 2 * BATCH * 4320 * 100 * 3 + 2 * BATCH * 100 * 10 * 3
    for p in products:
        p()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for p in products:
            p()
        times.append(time.perf_counter() - start)
    seconds = min(times)  # the floor: the least a busy moment added
    return {"gflop": flops / 1e9, "ms": seconds * 1e3, "gflops": flops / seconds / 1e9}


# ---------------------------------------------------------------- running


def run_contender(contender: str, epochs: int) -> dict:
    if contender == "floor":
        return matmul_floor()
    X, y = _data()
    if contender == "layers":
        return _portnn_layers(X, y, epochs)
    seconds = {"portnn": _portnn, "torch": _torch, "book": _book}[contender](X, y, epochs)
    steps = epochs * (len(X) // BATCH)
    return {
        "ms_per_step": seconds / steps * 1e3,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# glibc returns every large array to the kernel when it is freed (mmap), so each step's fresh
# arrays fault their pages in again; a higher threshold keeps them in the heap for reuse
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(256 << 20), "MALLOC_TRIM_THRESHOLD_": str(512 << 20)}


def _in_child(contender: str, epochs: int, tuned_malloc: bool = False, threads: int | None = None) -> dict | None:
    cmd = [sys.executable, __file__, "--child", contender, str(epochs)]
    env = dict(os.environ)
    if tuned_malloc:
        env.update(TUNED_MALLOC)
    if threads:  # NumPy's BLAS and PyTorch's intra-op pool alike
        env.update({k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        if "ModuleNotFoundError" in done.stderr:
            return None
        raise RuntimeError(f"{contender} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round of one epoch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (20 steps each) per run")
    parser.add_argument("--tuned-malloc", action="store_true",
                        help="run every contender with glibc's mmap threshold raised (" + ", ".join(f"{k}={v}" for k, v in TUNED_MALLOC.items()) + ")")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for every contender (OMP/OpenBLAS/MKL_NUM_THREADS; default: the libraries' own)")
    parser.add_argument("--layers", action="store_true",
                        help="also profile portnn's step inside fit layer by layer (thread CPU time, page faults)")
    parser.add_argument("--child", nargs=2, metavar=("CONTENDER", "EPOCHS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_contender(args.child[0], int(args.child[1]))))
        return
    rounds, epochs = (1, 1) if args.quick else (args.rounds, args.epochs)
    floor = _in_child("floor", 0, args.tuned_malloc, args.threads)  # under the contenders' settings
    runs: dict[str, list[dict]] = {}
    for _ in range(rounds):
        for contender in CONTENDERS:
            r = _in_child(contender, epochs, args.tuned_malloc, args.threads)
            if r is not None:
                runs.setdefault(contender, []).append(r)
    result = {
        c: {"ms_per_step": statistics.median(r["ms_per_step"] for r in rs),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rs)}
        for c, rs in runs.items()
    }
    cpu = os.cpu_count()
    print(f"SimpleConvNet (conv 30x5x5 - ReLU - pool 2x2 - affine 100 - ReLU - affine 10), batch {BATCH}, "
          f"28x28, Adam; {platform.processor() or platform.machine()}, {cpu} cores, NumPy {np.__version__}; "
          f"medians of {rounds} rounds x {epochs * N_TRAIN // BATCH} steps"
          + (f"; {args.threads} thread(s) each" if args.threads else "")
          + ("; glibc malloc tuned (" + ", ".join(f"{k}={v}" for k, v in TUNED_MALLOC.items()) + ")" if args.tuned_malloc else "")
          + "\n")
    print("| contender | ms / step | vs PyTorch | peak RSS (MiB) |")
    print("|---|---|---|---|")
    torch_ms = result.get("torch", {}).get("ms_per_step")
    for c, r in result.items():
        ratio = f"{r['ms_per_step'] / torch_ms:.2f}x" if torch_ms else "-"
        print(f"| {LABELS[c]} | {r['ms_per_step']:.1f} | {ratio} | {r['peak_rss_mib']:.0f} |")
    if "portnn" in result and "book" in result:
        print(f"\nportnn is {result['book']['ms_per_step'] / result['portnn']['ms_per_step']:.1f}x faster than the book's code.")
    print(f"\nThe step's matrix products: {floor['gflop']:.2f} GFLOP, {floor['ms']:.1f} ms alone at NumPy's "
          f"{floor['gflops']:.0f} GFLOP/s on these shapes (float32).")
    if "portnn" in result:
        rest = result["portnn"]["ms_per_step"] - floor["ms"]
        print(f"portnn's step beyond them: {rest:.1f} ms (im2col copies, pooling, elementwise passes, "
              "Adam, the loss, fit's batching).")
    if args.layers:
        _print_layers(_in_child("layers", epochs, args.tuned_malloc, args.threads))


def _print_layers(p: dict) -> None:
    print("\nportnn's step inside fit, layer by layer (medians of the main thread's CPU time; page faults per step):\n")
    print("| layer | forward (ms) | backward (ms) | page faults |")
    print("|---|---|---|---|")
    total = 0.0
    for name, r in p["layers"].items():
        total += r["forward_ms"] + r["backward_ms"]
        print(f"| {name} | {r['forward_ms']:.2f} | {r['backward_ms']:.2f} | {r['faults']:.0f} |")
    print(f"\nthe layers: {total:.1f} ms of a step's {p['cpu_ms']:.1f} ms of CPU time (the rest: the loss, Adam, "
          f"fit's batching and bookkeeping); the kernel's share {p['sys_ms']:.1f} ms, {p['faults']:.0f} page faults a step.")


if __name__ == "__main__":
    main()
