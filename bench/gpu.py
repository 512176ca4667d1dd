"""GPU benchmarks: portnn on CuPy against PyTorch (eager and CUDA graphs) and JAX (jit).

    python bench/gpu.py                                 # every configuration, on the GPU
    python bench/gpu.py --configs A,B --repeats 7 --optimizer adam
    python bench/gpu.py --write-docs docs/benchmarks-gpu-table.md
    python bench/gpu.py --smoke                         # on the CPU: shrunk, exercises the code

Configurations (float32, softmax cross-entropy, one optimizer step per iteration):

    A, B, C  MLP 784-1024-1024-10, batch 64 / 1024 / 8192, data already on the device
    D        MLP 1024-4096-4096-4096-10, batch 8192, data already on the device
    E        one fit epoch over 60,000 x 784 host (NumPy) rows, batch 1024: every
             batch goes from the host to the device inside the timing
    F        predict over 1,000,000 x 784 host rows, in batches of 65,536

Contenders, each where its library is installed (a row says why one is skipped):
portnn on CuPy (the portable path, and the fast path fit(..., engine="fast")
where portnn has one), PyTorch eager, PyTorch with the whole step in a CUDA
graph, and JAX with the step under jax.jit. They run in this one process and
run, from the same initial weights (drawn once on the host with
numpy.random.default_rng(seed)) and on the same batches. Per contender and
configuration: a check run from the initial weights (its loss is printed, so
that a reader sees that all trained the same thing; the peak device memory is
measured over it), a warm-up, then --repeats timed repeats whose median is
reported. A contender that fails (out of memory, say) gets "failed: <reason>"
in its row and the run goes on. portnn's rows skip fit's finite check of every
step and predict's NaN/inf scan of the data, as the others check nothing; for
E and F a row "with ..." keeps those defaults, to show what they cost.

Timing: the device is synchronized, a loop of K steps runs (K chosen so that a
repeat takes about 0.2 s), the device is synchronized again, and the host's
wall time (perf_counter) is divided by K. It therefore includes the host's
cost of issuing the work, which is what bounds small batches. An epoch (E) and
a predict call (F) are timed whole, the same way; portnn's epoch is the time
fit itself records per epoch (fit reads the epoch's loss at its end, which
waits for the device).

Matrix products are full fp32 for every contender (TF32 off: PyTorch's and
CuPy's default; JAX is set to "highest" precision, as its GPU default would
use TF32). The fp32, TF32 and bf16 matrix rates they are compared against are
measured in the same run, on a large square product. The report ends with one
PASS / FAIL / n.a. line per target, computed from the numbers of the run.

--smoke runs all of it on the CPU, shrunk (hidden widths and batches / 16, host
rows / 100; portnn on NumPy, PyTorch and JAX on the CPU, no CUDA graphs) in
well under a minute, and exits 1 if a contender fails or portnn's and
PyTorch's losses differ: it exercises the code, its numbers are no benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.util
import inspect
import itertools
import math
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# JAX takes 75% of the GPU's memory at its first use unless told not to, which
# would starve CuPy and PyTorch in this shared process and hide JAX's own peak
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
if __name__ == "__main__" and "--smoke" in sys.argv[1:]:
    # on a small shared machine the BLAS and PyTorch thread pools, spinning against each
    # other and everything else, make a CPU step many times slower; the smoke run needs
    # no parallelism, and these must be set before NumPy and PyTorch load
    for _threads in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_threads, "1")

import numpy as np  # after the thread settings above, which NumPy reads as it loads

BATCHES_ON_DEVICE = 8  # distinct batches the step configurations cycle through
CHECK_STEPS = 8  # steps from the initial weights before the loss column is read
LOSS_RTOL = 1e-3  # float32 agreement expected between contenders after those steps
SECONDS_PER_REPEAT = {"gpu": 0.2, "smoke": 0.01}
WARMUP_STEPS = {"gpu": 10, "smoke": 2}
MiB = 2**20


# ---------------------------------------------------------------- configurations


@dataclass(frozen=True)
class Config:
    key: str
    widths: tuple[int, ...]
    batch: int
    kind: str  # "step" (data on the device), "epoch" (a fit epoch over host rows), "predict"
    rows: int = 0  # host rows of "epoch" and "predict"

    @property
    def mlp(self) -> str:
        return "MLP " + "-".join(map(str, self.widths))

    @property
    def samples(self) -> int:
        """Samples one timed unit (a step, an epoch, a predict call) processes."""
        return self.batch if self.kind == "step" else self.rows

    @property
    def flops(self) -> float:
        """Matrix-product FLOPs of one timed unit: 6 per multiply-add and sample for a
        training step (forward, input and weight gradients), 2 for inference."""
        macs = sum(i * o for i, o in itertools.pairwise(self.widths))
        return (2.0 if self.kind == "predict" else 6.0) * macs * self.samples

    @property
    def title(self) -> str:
        if self.kind == "step":
            return f"{self.key}: {self.mlp}, batch {self.batch:,}: one training step, data on the device"
        if self.kind == "epoch":
            return (f"{self.key}: {self.mlp}, one fit epoch over {self.rows:,} x {self.widths[0]} "
                    f"host rows, batch {self.batch:,}: each batch copied to the device inside the timing")
        return (f"{self.key}: {self.mlp}, predict over {self.rows:,} x {self.widths[0]} host rows "
                f"in batches of {self.batch:,}")

    @property
    def unit(self) -> str:
        return {"step": "ms/step", "epoch": "ms/epoch", "predict": "ms/call"}[self.kind]

    @property
    def check(self) -> str:
        return {"step": f"loss at step {CHECK_STEPS}", "epoch": "mean loss of epoch 1",
                "predict": "loss of the predictions"}[self.kind]

    def shrunk(self) -> Config:
        """The smoke run's version: hidden widths and batches / 16, host rows / 100."""
        widths = (self.widths[0], *(w // 16 for w in self.widths[1:-1]), self.widths[-1])
        return replace(self, widths=widths, batch=max(2, self.batch // 16), rows=self.rows // 100)

    def batch_rows(self) -> list[int]:
        """The batch sizes this configuration feeds (a smaller last one where rows do not divide)."""
        if self.kind == "step":
            return [self.batch]
        return sorted({self.batch, self.rows % self.batch} - {0}, reverse=True)


MNIST_MLP = (784, 1024, 1024, 10)
CONFIGS = {
    "A": Config("A", MNIST_MLP, 64, "step"),
    "B": Config("B", MNIST_MLP, 1024, "step"),
    "C": Config("C", MNIST_MLP, 8192, "step"),
    "D": Config("D", (1024, 4096, 4096, 4096, 10), 8192, "step"),
    "E": Config("E", MNIST_MLP, 1024, "epoch", 60_000),
    "F": Config("F", MNIST_MLP, 65_536, "predict", 1_000_000),
}
LEARNING_RATES = {"sgd": 0.01, "adam": 1e-3}


def initial_weights(widths: tuple[int, ...], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight of shape (in, out), bias) per layer: He-uniform weights, PyTorch-style biases."""
    rng = np.random.default_rng(seed)
    weights = []
    for fan_in, fan_out in itertools.pairwise(widths):
        limit = math.sqrt(6.0 / fan_in)
        w = rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)
        b = rng.uniform(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), size=fan_out).astype(np.float32)
        weights.append((w, b))
    return weights


def classification_data(
    rows: int, features: int, classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Noisy copies of one centre per class: a problem whose loss falls as it trains."""
    centres = rng.standard_normal((classes, features), dtype=np.float32)
    y = rng.integers(0, classes, size=rows)
    X = rng.standard_normal((rows, features), dtype=np.float32)
    X += 0.5 * centres[y]
    return X, y.astype(np.int64)


def host_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean softmax cross-entropy in float64 on the host (the predict check)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-np.take_along_axis(log_p, labels[:, None], axis=1).mean())


# ---------------------------------------------------------------- where it runs


class Unavailable(Exception):
    """A contender that cannot run here; the message becomes its row ("skipped: ...")."""


def _optional(name: str) -> tuple[Any, str]:
    """(module, "") or (None, why not)."""
    if importlib.util.find_spec(name) is None:
        return None, f"{name} is not installed"
    try:
        return importlib.import_module(name), ""
    except Exception as e:  # noqa: BLE001 -- a broken install is a note, not a crash
        return None, f"importing {name} failed: {type(e).__name__}: {e}"


class Platform:
    """The libraries and devices of this run: CUDA (the benchmark) or the CPU (--smoke)."""

    def __init__(self, smoke: bool) -> None:
        self.smoke = smoke
        self.mode = "smoke" if smoke else "gpu"
        self.portnn_backend = "numpy" if smoke else "cupy"
        self.cupy = None
        if not smoke:
            import portnn as pn

            if "cupy" not in pn.available_backends():
                raise SystemExit("portnn's cupy backend cannot run here (no CuPy or no CUDA device); "
                                 "use --smoke for the CPU smoke run")
            import cupy

            self.cupy = cupy
        self.torch, self.torch_note = _optional("torch")
        self.torch_device = None
        if self.torch is not None:
            if smoke:
                self.torch_device = self.torch.device("cpu")
            elif self.torch.cuda.is_available():
                self.torch_device = self.torch.device("cuda")
            else:
                self.torch_note = "PyTorch sees no CUDA device"
        self.jax, self.jax_note = _optional("jax")
        self.jax_device = None
        if self.jax is not None:
            try:
                self.jax_device = self.jax.devices("cpu" if smoke else "gpu")[0]
            except Exception as e:  # noqa: BLE001 -- a CPU-only jaxlib, or a broken CUDA plugin
                self.jax_note = f"JAX has no GPU backend here ({type(e).__name__}: {str(e)[:120]})"

    @property
    def torch_cuda(self) -> bool:
        return self.torch_device is not None and self.torch_device.type == "cuda"

    def device_name(self) -> str:
        if self.smoke:
            return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        if self.torch_cuda:
            return self.torch.cuda.get_device_name(0)
        name = self.cupy.cuda.runtime.getDeviceProperties(0)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)

    def versions(self) -> str:
        import portnn as pn

        parts = [f"portnn {pn.__version__}", f"Python {platform.python_version()}",
                 f"NumPy {np.__version__}"]
        if self.cupy is not None:
            runtime = self.cupy.cuda.runtime
            parts.append(f"CuPy {self.cupy.__version__} (CUDA runtime {runtime.runtimeGetVersion()}, "
                         f"driver {runtime.driverGetVersion()})")
        if self.torch is not None:
            cuda = f" (CUDA {self.torch.version.cuda})" if self.torch.version.cuda else ""
            parts.append(f"PyTorch {self.torch.__version__}{cuda}")
        if self.jax is not None:
            import jaxlib

            parts.append(f"JAX {self.jax.__version__} (jaxlib {jaxlib.__version__})")
        return ", ".join(parts)

    def synchronize(self) -> None:
        if self.cupy is not None:
            self.cupy.cuda.Device().synchronize()
        if self.torch_cuda:
            self.torch.cuda.synchronize()

    def release_memory(self) -> None:
        """Hand back what the libraries' pools hold, so that the next contender starts clean."""
        gc.collect()
        self.synchronize()
        if self.cupy is not None:
            self.cupy.get_default_memory_pool().free_all_blocks()
            self.cupy.get_default_pinned_memory_pool().free_all_blocks()
        if self.torch_cuda:
            self.torch.cuda.empty_cache()

    def meter(self, library: str) -> MemoryMeter:
        if self.smoke:
            return MemoryMeter()
        if library == "portnn":
            return CupyMeter(self.cupy)
        if library == "torch" and self.torch_cuda:
            return TorchMeter(self.torch)
        if library == "jax" and self.jax_device is not None:
            return JaxMeter(self.jax_device)
        return MemoryMeter()  # the contender will not run: nothing to measure


# ---------------------------------------------------------------- peak device memory


class MemoryMeter:
    """Peak device memory one contender's library allocates between start and stop.

    ``stop`` returns (bytes or None, note); the note is "≤" where only an upper
    bound is known, or why there is no number.
    """

    def start(self) -> None:
        pass

    def stop(self) -> tuple[int | None, str]:
        return None, "n.a. (CPU)"


class TorchMeter(MemoryMeter):
    def __init__(self, torch: Any) -> None:
        self.torch = torch

    def start(self) -> None:
        self.torch.cuda.reset_peak_memory_stats()
        self.base = self.torch.cuda.memory_allocated()

    def stop(self) -> tuple[int | None, str]:
        self.torch.cuda.synchronize()
        return self.torch.cuda.max_memory_allocated() - self.base, ""


class CupyMeter(MemoryMeter):
    """CuPy's pool keeps no high-water mark of the bytes in use, so every allocation is
    routed through a wrapper that records it (for the check run only: it costs time)."""

    def __init__(self, cupy: Any) -> None:
        self.cupy = cupy
        self.pool = cupy.get_default_memory_pool()

    def start(self) -> None:
        self.base = self.peak = self.pool.used_bytes()

        def tracking_malloc(size: int) -> Any:
            memory = self.pool.malloc(size)
            self.peak = max(self.peak, self.pool.used_bytes())
            return memory

        self.cupy.cuda.set_allocator(tracking_malloc)

    def stop(self) -> tuple[int | None, str]:
        self.cupy.cuda.set_allocator(self.pool.malloc)
        return self.peak - self.base, ""


class JaxMeter(MemoryMeter):
    """JAX's allocator has a peak but no way to reset it: the peak is exact where this
    contender raised it, and an upper bound (≤) where an earlier one had gone higher."""

    def __init__(self, device: Any) -> None:
        self.device = device

    def start(self) -> None:
        stats = self.device.memory_stats() or {}
        self.base = stats.get("bytes_in_use")
        self.previous_peak = stats.get("peak_bytes_in_use", 0)

    def stop(self) -> tuple[int | None, str]:
        stats = self.device.memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        if peak is None or self.base is None:
            return None, "n.a. (no memory statistics)"
        return peak - self.base, "" if peak > self.previous_peak else "≤"


# ---------------------------------------------------------------- contenders


class Contender:
    """One library's way of training and predicting, on arrays of its own device.

    ``step`` returns the step's loss as a device scalar, valid until the next step.
    """

    library = ""

    def prepare(self, config: Config) -> None:
        """Work done once before the check run (capturing CUDA graphs)."""

    def to_device(self, X: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
        raise NotImplementedError

    def step(self, xb: Any, yb: Any) -> Any:
        raise NotImplementedError

    def scalar(self, value: Any) -> float:
        return float(value)

    def sync(self) -> None:
        pass

    def run_steps(self, batches: list[tuple[Any, Any]], n: int) -> int:
        """``n`` steps cycling through ``batches``; returns the number of steps done."""
        for i in range(n):
            self.step(*batches[i % len(batches)])
        return n

    def check_steps(self, batches: list[tuple[Any, Any]], n: int) -> float:
        """The loss of the ``n``-th step from the current weights."""
        for i in range(n):
            loss = self.step(*batches[i % len(batches)])
        return self.scalar(loss)

    def load_batch(self, X: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
        """A host batch on the device, for a training step."""
        return self.to_device(X, y)

    def train_epochs(
        self, X: np.ndarray, y: np.ndarray, batch: int, seed: int, first: int, count: int
    ) -> list[tuple[float, float]]:
        """Epochs ``first .. first + count - 1`` over host data, each in the order fit would
        shuffle it (a generator seeded with [seed, epoch]); (seconds, mean loss) per epoch."""
        n = len(X)
        results = []
        for epoch in range(first, first + count):
            order = np.random.default_rng([seed, epoch]).permutation(n)
            self.sync()
            start = time.perf_counter()
            total = None
            for a in range(0, n, batch):
                rows = order[a : a + batch]
                loss = self.step(*self.load_batch(X[rows], y[rows]))
                total = loss * len(rows) if total is None else total + loss * len(rows)
            mean = self.scalar(total) / n  # read once per epoch, as fit does
            self.sync()
            results.append((time.perf_counter() - start, mean))
        return results

    def predict(self, X: np.ndarray, batch: int) -> Any:
        raise NotImplementedError

    def to_numpy(self, out: Any) -> np.ndarray:
        return np.asarray(out)


class Portnn(Contender):
    """portnn's portable path: the step is fit's own (``pn.TrainStep``, run on prepared
    batches: forward, backward and the optimizer's update). Epochs (E) run through ``fit`` and
    predictions through ``predict``; like the other contenders, they check nothing unless
    ``checks`` keeps fit's and predict's defaults (a finite check of every step's loss, a
    NaN/inf scan of the data)."""

    library = "portnn"

    def __init__(self, backend: str, weights: list, optimizer: str, checks: bool = False) -> None:
        import portnn as pn

        self.pn = pn
        with pn.use_backend(backend):
            layers: list[Any] = []
            for i, (w, b) in enumerate(weights):
                layers.append(pn.Dense(w.shape[0], w.shape[1], weight=w, bias=b))
                if i + 1 < len(weights):
                    layers.append(pn.ReLU())
            self.model = pn.Sequential(*layers)
        self.backend = self.model.backend
        self.xp = self.backend.xp
        self.cupy = importlib.import_module("cupy") if backend == "cupy" else None
        self.loss = pn.CrossEntropy()
        lr = LEARNING_RATES[optimizer]
        self.opt = pn.SGD(lr=lr) if optimizer == "sgd" else pn.Adam(lr=lr)
        self.model.train()
        # fit's own eager step, without its finite check; building it sets what fit keeps on
        # the model, so that fit (E) and the bare step (A-D) share one state
        self._step = pn.TrainStep(self.model, self.loss, self.opt, check_finite=False)
        self.fit_options: dict[str, Any] = {} if checks else {"on_nonfinite": None}
        self.predict_options: dict[str, Any] = {} if checks else {"check_finite": False}

    def to_device(self, X: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
        backend = self.backend
        return backend.asarray(X, self.xp.float32), backend.asarray(y, backend.index_dtype)

    def step(self, xb: Any, yb: Any) -> Any:
        return self._step.run(xb, yb).loss

    def sync(self) -> None:
        if self.cupy is not None:
            self.cupy.cuda.Device().synchronize()

    def train_epochs(
        self, X: np.ndarray, y: np.ndarray, batch: int, seed: int, first: int, count: int
    ) -> list[tuple[float, float]]:
        history = self.model.fit(X, y, epochs=first + count, initial_epoch=first, batch_size=batch,
                                 seed=seed, verbose=0, **self.fit_options)
        return list(zip(history.times, history["loss"]))

    def predict(self, X: np.ndarray, batch: int) -> Any:
        return self.model.predict(X, batch_size=batch, **self.predict_options)

    def to_numpy(self, out: Any) -> np.ndarray:
        return self.pn.to_numpy(out)


class PortnnThroughFit(Portnn):
    """portnn measured through ``fit`` alone, the only way into an engine such as
    ``engine="fast"``: steps are epochs over the device-resident batches, so the time per
    step is an epoch's time over its batches (fit's per-call and per-epoch work included)."""

    def __init__(self, backend: str, weights: list, optimizer: str, engine: str | None) -> None:
        super().__init__(backend, weights, optimizer)
        if engine is not None:
            self.fit_options["engine"] = self.predict_options["engine"] = engine
        self._pool: tuple[Any, Any] | None = None

    def _fit(self, X: Any, y: Any, epochs: int, batch: int) -> None:
        self.model.fit(X, y, epochs=epochs, batch_size=batch, shuffle=False, verbose=0,
                       check_finite=False, **self.fit_options)

    def _joined(self, batches: list[tuple[Any, Any]]) -> tuple[Any, Any]:
        xp = self.xp
        return xp.concat([x for x, _ in batches], axis=0), xp.concat([t for _, t in batches], axis=0)

    def run_steps(self, batches: list[tuple[Any, Any]], n: int) -> int:
        if self._pool is None:
            self._pool = self._joined(batches)
        epochs = max(1, round(n / len(batches)))
        self._fit(*self._pool, epochs, int(batches[0][0].shape[0]))
        return epochs * len(batches)

    def check_steps(self, batches: list[tuple[Any, Any]], n: int) -> float:
        # n - 1 steps through fit, then the loss of the n-th batch at those weights: the
        # value the n-th step computes (the model has no layer that trains differently)
        done = [batches[i % len(batches)] for i in range(n - 1)]
        if done:
            self._fit(*self._joined(done), 1, int(batches[0][0].shape[0]))
        xb, yb = batches[(n - 1) % len(batches)]
        return float(self.model.evaluate(xb, yb))


class TorchEager(Contender):
    """nn.Sequential, CrossEntropyLoss and torch.optim, as a PyTorch user writes them."""

    library = "torch"
    capturable = False

    def __init__(self, torch: Any, device: Any, weights: list, optimizer: str) -> None:
        self.torch, self.device = torch, device
        layers: list[Any] = []
        for i, (w, b) in enumerate(weights):
            linear = torch.nn.Linear(w.shape[0], w.shape[1], device=device, dtype=torch.float32)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))  # stored (out, in)
                linear.bias.copy_(torch.from_numpy(b))
            layers.append(linear)
            if i + 1 < len(weights):
                layers.append(torch.nn.ReLU())
        self.net = torch.nn.Sequential(*layers)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        lr = LEARNING_RATES[optimizer]
        params = self.net.parameters()
        if optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=lr)
        else:
            self.opt = torch.optim.Adam(params, lr=lr, capturable=self.capturable)
        self.features, self.classes = weights[0][0].shape[0], weights[-1][0].shape[1]

    def to_device(self, X: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
        return self.torch.from_numpy(X).to(self.device), self.torch.from_numpy(y).to(self.device)

    def step(self, xb: Any, yb: Any) -> Any:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.net(xb), yb)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def predict(self, X: np.ndarray, batch: int) -> Any:
        torch = self.torch
        with torch.inference_mode():
            outs = [self.net(torch.from_numpy(X[a : a + batch]).to(self.device))
                    for a in range(0, len(X), batch)]
            return torch.cat(outs)

    def to_numpy(self, out: Any) -> np.ndarray:
        return out.cpu().numpy()


class TorchGraph(TorchEager):
    """The whole training step (forward, backward, optimizer) captured once in a CUDA graph
    per batch size and replayed; batches are copied into the graph's static input buffers.
    Warm-up runs on a side stream before capture, as PyTorch's documentation describes, and
    the capture on that same stream, so that no library handle is first created mid-capture."""

    capturable = True  # Adam keeps its step count on the device, so the graph can advance it

    def prepare(self, config: Config) -> None:
        torch = self.torch
        self.graphs: dict[int, tuple[Any, Any, Any, Any]] = {}
        self.side = torch.cuda.Stream()
        if config.kind == "predict":
            for rows in config.batch_rows():
                x = torch.zeros((rows, self.features), device=self.device)
                with torch.no_grad():
                    self._warm_up(lambda x=x: self.net(x))
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, stream=self.side, capture_error_mode="thread_local"):
                        out = self.net(x)
                self.graphs[rows] = (graph, x, None, out)
            return
        params = list(self.net.parameters())
        saved = [p.detach().cpu() for p in params]  # on the host, so as not to add to the peak
        for rows in config.batch_rows():
            x = torch.zeros((rows, self.features), device=self.device)
            y = torch.zeros((rows,), dtype=torch.int64, device=self.device)
            self._warm_up(lambda x=x, y=y: TorchEager.step(self, x, y))
            graph = torch.cuda.CUDAGraph()
            # no grads: the backward in the capture allocates them from the graph's own pool
            self.opt.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph, stream=self.side, capture_error_mode="thread_local"):
                loss = self.loss_fn(self.net(x), y)
                loss.backward()
                self.opt.step()
            self.graphs[rows] = (graph, x, y, loss)
        # the warm-up steps trained: back to the initial weights and a fresh optimizer state,
        # in place, since the graphs hold these very tensors
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
            for state in self.opt.state.values():
                for value in state.values():
                    if torch.is_tensor(value):
                        value.zero_()

    def _warm_up(self, fn: Callable[[], Any]) -> None:
        torch = self.torch
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(self.side)

    def step(self, xb: Any, yb: Any) -> Any:
        graph, x, y, loss = self.graphs[int(xb.shape[0])]
        if xb is not x:
            x.copy_(xb)
            y.copy_(yb)
        graph.replay()
        return loss

    def load_batch(self, X: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
        _, x, t, _ = self.graphs[len(X)]
        x.copy_(self.torch.from_numpy(X))  # straight from the host into the static input
        t.copy_(self.torch.from_numpy(y))
        return x, t

    def predict(self, X: np.ndarray, batch: int) -> Any:
        torch = self.torch
        result = torch.empty((len(X), self.classes), device=self.device)
        for a in range(0, len(X), batch):
            chunk = X[a : a + batch]
            graph, x, _, out = self.graphs[len(chunk)]
            x.copy_(torch.from_numpy(chunk))
            graph.replay()
            result[a : a + len(chunk)].copy_(out)
        return result


class JaxJit(Contender):
    """A pure step ``(params, opt_state, x, y) -> (params, opt_state, loss)`` under jax.jit,
    with SGD or Adam written out in jax.numpy (Adam as torch.optim.Adam)."""

    library = "jax"

    def __init__(self, jax: Any, device: Any, weights: list, optimizer: str, donate: bool) -> None:
        import jax.numpy as jnp

        jax.config.update("jax_default_matmul_precision", "highest")  # fp32, as the others compute
        self.jax, self.jnp, self.device = jax, jnp, device
        self.params = [(jax.device_put(w, device), jax.device_put(b, device)) for w, b in weights]
        lr = LEARNING_RATES[optimizer]
        beta1, beta2, eps = 0.9, 0.999, 1e-8

        def forward(params, x):
            for i, (w, b) in enumerate(params):
                x = x @ w + b
                if i + 1 < len(params):
                    x = jnp.maximum(x, 0.0)
            return x

        def loss_fn(params, x, y):
            log_p = jax.nn.log_softmax(forward(params, x), axis=-1)
            return -jnp.mean(jnp.take_along_axis(log_p, y[:, None], axis=1))

        if optimizer == "sgd":
            self.state: Any = ()

            def update(params, grads, state):
                return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads), state
        else:
            # two separate trees of zeros: a buffer may not be donated twice in one call
            m0, v0 = (jax.tree_util.tree_map(jnp.zeros_like, self.params) for _ in range(2))
            self.state = (jax.device_put(np.float32(0.0), device), m0, v0)

            def update(params, grads, state):
                t, m, v = state
                t = t + 1.0
                m = jax.tree_util.tree_map(lambda m, g: beta1 * m + (1 - beta1) * g, m, grads)
                v = jax.tree_util.tree_map(lambda v, g: beta2 * v + (1 - beta2) * g * g, v, grads)
                step_size = lr / (1 - beta1**t)
                root_bc2 = jnp.sqrt(1 - beta2**t)
                params = jax.tree_util.tree_map(
                    lambda p, m, v: p - step_size * m / (jnp.sqrt(v) / root_bc2 + eps), params, m, v
                )
                return params, (t, m, v)

        def train_step(params, state, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            params, state = update(params, grads, state)
            return params, state, loss

        # donating the old parameters and state lets XLA update them in place (GPU only:
        # the CPU backend cannot use donated buffers and warns)
        self._step = jax.jit(train_step, donate_argnums=(0, 1) if donate else ())
        self._forward = jax.jit(forward)

    def to_device(self, X: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
        return self.jax.device_put(X, self.device), self.jax.device_put(y.astype(np.int32), self.device)

    def step(self, xb: Any, yb: Any) -> Any:
        self.params, self.state, loss = self._step(self.params, self.state, xb, yb)
        return loss

    def sync(self) -> None:
        self.jax.block_until_ready((self.params, self.state))

    def predict(self, X: np.ndarray, batch: int) -> Any:
        put = self.jax.device_put
        outs = [self._forward(self.params, put(X[a : a + batch], self.device))
                for a in range(0, len(X), batch)]
        return self.jnp.concatenate(outs, axis=0)


# ---------------------------------------------------------------- which contenders, and running one


@dataclass
class Row:
    key: str
    label: str
    status: str = "ok"  # "ok", or "skipped: ...", "not available: ...", "failed: ..."
    seconds: float | None = None  # median per timed unit (step, epoch, predict call)
    loss: float | None = None
    peak_bytes: int | None = None
    peak_note: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class Spec:
    key: str
    label: str
    library: str
    build: Callable[[], Contender]  # raises Unavailable where it cannot run here


def _fast_engine_missing(kind: str) -> str | None:
    """Why portnn's fast engine cannot be measured, or None where it can."""
    import portnn as pn

    entry = pn.predict if kind == "predict" else pn.fit
    if "engine" not in inspect.signature(entry).parameters:
        return f"not available: portnn.{entry.__name__} has no engine= argument yet"
    return None


def contender_specs(config: Config, where: Platform, weights: list, optimizer: str) -> list[Spec]:
    on = "NumPy" if where.smoke else "CuPy"
    entry = "predict" if config.kind == "predict" else "fit"

    def portnn_fast() -> Contender:
        missing = _fast_engine_missing(config.kind)
        if missing:
            raise Unavailable(missing)
        if where.smoke:
            raise Unavailable("skipped: the fast engine needs CUDA (this is the CPU smoke run)")
        return PortnnThroughFit(where.portnn_backend, weights, optimizer, engine="fast")

    def torch_eager() -> Contender:
        if where.torch_device is None:
            raise Unavailable(f"skipped: {where.torch_note}")
        return TorchEager(where.torch, where.torch_device, weights, optimizer)

    def torch_graph() -> Contender:
        if where.smoke:
            raise Unavailable("skipped: CUDA graphs need a GPU (this is the CPU smoke run)")
        if not where.torch_cuda:
            raise Unavailable(f"skipped: {where.torch_note}")
        return TorchGraph(where.torch, where.torch_device, weights, optimizer)

    def jax_jit() -> Contender:
        if where.jax_device is None:
            raise Unavailable(f"skipped: {where.jax_note}")
        return JaxJit(where.jax, where.jax_device, weights, optimizer, donate=not where.smoke)

    specs = [Spec("portnn", f"portnn on {on}, portable", "portnn",
                  lambda: Portnn(where.portnn_backend, weights, optimizer))]
    if config.kind != "step":
        checks = ("fit's finite check of every step" if config.kind == "epoch"
                  else "predict's NaN/inf scan of X")
        specs.append(Spec("portnn-checks", f"portnn on {on}, portable, with {checks}", "portnn",
                          lambda: Portnn(where.portnn_backend, weights, optimizer, checks=True)))
    specs += [
        Spec("portnn-fast", f'portnn on {on}, {entry}(engine="fast")', "portnn", portnn_fast),
        Spec("torch", "PyTorch eager", "torch", torch_eager),
        Spec("torch-graph", "PyTorch, CUDA graph", "torch", torch_graph),
        Spec("jax", "JAX, jax.jit", "jax", jax_jit),
    ]
    return specs


def _time_steps(contender: Contender, batches: list, where: Platform, repeats: int) -> float:
    warmup = WARMUP_STEPS[where.mode]
    contender.run_steps(batches, warmup)
    contender.sync()
    start = time.perf_counter()
    done = contender.run_steps(batches, warmup)
    contender.sync()
    per_step = (time.perf_counter() - start) / done
    k = min(10_000, max(1, round(SECONDS_PER_REPEAT[where.mode] / max(per_step, 1e-9))))
    times = []
    for _ in range(repeats):
        contender.sync()
        start = time.perf_counter()
        done = contender.run_steps(batches, k)
        contender.sync()
        times.append((time.perf_counter() - start) / done)
    return statistics.median(times)


def _steps(contender: Contender, config: Config, data: Any, where: Platform, repeats: int, seed: int,
           checked: Callable[[], None]) -> tuple[float, float]:
    batches = [contender.to_device(X, y) for X, y in data]
    loss = contender.check_steps(batches, CHECK_STEPS)
    checked()
    return loss, _time_steps(contender, batches, where, repeats)


def _epochs(contender: Contender, config: Config, data: Any, where: Platform, repeats: int, seed: int,
            checked: Callable[[], None]) -> tuple[float, float]:
    X, y = data
    [(_, loss)] = contender.train_epochs(X, y, config.batch, seed, first=0, count=1)
    checked()
    # epoch 1 is the warm-up
    timed = contender.train_epochs(X, y, config.batch, seed, first=1, count=1 + repeats)[1:]
    return loss, statistics.median(seconds for seconds, _ in timed)


def _predictions(contender: Contender, config: Config, data: Any, where: Platform, repeats: int,
                 seed: int, checked: Callable[[], None]) -> tuple[float, float]:
    X, y = data
    out = contender.predict(X, config.batch)  # the check doubles as the warm-up
    loss = host_cross_entropy(contender.to_numpy(out), y)
    del out
    checked()
    times = []
    for _ in range(repeats):
        contender.sync()
        start = time.perf_counter()
        out = contender.predict(X, config.batch)
        contender.sync()
        times.append(time.perf_counter() - start)
        del out
    return loss, statistics.median(times)


def run_contender(
    spec: Spec, config: Config, data: Any, where: Platform, repeats: int, seed: int
) -> Row:
    """Build, check and time one contender; whatever goes wrong becomes its row's status."""
    row = Row(spec.key, spec.label)
    where.release_memory()
    meter = where.meter(spec.library)
    metering = [False]

    def checked() -> None:
        # the check run is over; the timed runs repeat its shapes, so its peak is the peak
        where.synchronize()
        metering[0] = False
        row.peak_bytes, row.peak_note = meter.stop()

    contender = None
    try:
        meter.start()  # before the model is built: its parameters count too
        metering[0] = True
        contender = spec.build()
        contender.prepare(config)
        measure = {"step": _steps, "epoch": _epochs, "predict": _predictions}[config.kind]
        row.loss, row.seconds = measure(contender, config, data, where, repeats, seed, checked)
    except Unavailable as e:
        row.status = str(e)
    except Exception as e:  # noqa: BLE001 -- one contender's failure is its row, not the run's end
        traceback.print_exc(file=sys.stderr)
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        row.status = f"failed: {type(e).__name__}" + (f": {message[:160]}" if message else "")
    finally:
        if metering[0]:
            meter.stop()  # CuPy's allocator back to the plain pool
        del contender
        where.release_memory()
    return row


# ---------------------------------------------------------------- the card's matrix rates


@contextlib.contextmanager
def _torch_tf32(torch: Any, enabled: bool) -> Any:
    """A scope in which PyTorch's float32 matrix products use TF32 (or not).

    Through ``allow_tf32``, whose setter keeps the legacy flag and the newer
    ``fp32_precision`` in step; setting only the newer one to TF32 makes any later
    read of the legacy flag (by PyTorch itself, too) raise."""
    matmul = torch.backends.cuda.matmul
    previous = matmul.allow_tf32
    matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        matmul.allow_tf32 = previous


def _product_rate(multiply: Callable[[], Any], sync: Callable[[], None], n: int, reps: int) -> float:
    """TFLOP/s of ``multiply`` (one n x n x n product), median of three loops of ``reps``."""
    for _ in range(2):
        multiply()
    sync()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            multiply()
        sync()
        times.append((time.perf_counter() - start) / reps)
    return 2.0 * n**3 / statistics.median(times) / 1e12


def matrix_rates(where: Platform) -> dict[str, tuple[float | None, str]]:
    """Measured TFLOP/s of a square matrix product in fp32, TF32 and bf16: name -> (rate, note)."""
    n, reps = (512, 3) if where.smoke else (8192, 10)
    rng = np.random.default_rng(0)
    a_host = rng.standard_normal((n, n), dtype=np.float32)
    b_host = rng.standard_normal((n, n), dtype=np.float32)
    rates: dict[str, tuple[float | None, str]] = {}
    if where.torch_device is not None:
        torch = where.torch
        sync = torch.cuda.synchronize if where.torch_cuda else (lambda: None)
        a, b = (torch.from_numpy(h).to(where.torch_device) for h in (a_host, b_host))
        c = torch.empty_like(a)
        with _torch_tf32(torch, False):
            rates["fp32"] = (_product_rate(lambda: torch.mm(a, b, out=c), sync, n, reps), "PyTorch")
        if where.torch_cuda:
            with _torch_tf32(torch, True):
                rates["TF32"] = (_product_rate(lambda: torch.mm(a, b, out=c), sync, n, reps), "PyTorch")
        else:
            rates["TF32"] = (None, "n.a. (CPU)")
        a16, b16 = a.to(torch.bfloat16), b.to(torch.bfloat16)
        c16 = torch.empty_like(a16)
        rates["bf16"] = (_product_rate(lambda: torch.mm(a16, b16, out=c16), sync, n, reps), "PyTorch")
        del a, b, c, a16, b16, c16
    elif where.cupy is not None:
        cupy = where.cupy
        a, b = cupy.asarray(a_host), cupy.asarray(b_host)
        c = cupy.empty_like(a)
        rate = _product_rate(lambda: cupy.matmul(a, b, out=c), where.synchronize, n, reps)
        rates["fp32"] = (rate, "CuPy")
        rates["TF32"] = rates["bf16"] = (None, f"n.a. (needs PyTorch: {where.torch_note})")
        del a, b, c
    else:
        c_host = np.empty_like(a_host)
        rate = _product_rate(lambda: np.matmul(a_host, b_host, out=c_host), lambda: None, n, reps)
        rates["fp32"] = (rate, "NumPy")
        rates["TF32"] = (None, "n.a. (CPU)")
        rates["bf16"] = (None, f"n.a. (needs PyTorch: {where.torch_note})")
    where.release_memory()
    return {name: (rate, f"{note}, {n:,}^3" if rate is not None else note)
            for name, (rate, note) in rates.items()}


# ---------------------------------------------------------------- the report


def _num(x: float) -> str:
    """About three significant digits, without exponents for everyday sizes."""
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 0.001:
        return f"{x:.3g}" if x < 100 else f"{x:.0f}"
    return f"{x:.2e}"


def _reference(rows: dict[str, Row]) -> Row | None:
    """The row other losses and times are compared with: PyTorch eager, else portnn."""
    for key in ("torch", "portnn"):
        if key in rows and rows[key].ok:
            return rows[key]
    return None


def _loss_agrees(loss: float, reference: float) -> bool:
    return abs(loss - reference) <= LOSS_RTOL * max(abs(reference), 1e-12)


def config_table(config: Config, rows: dict[str, Row], rates: dict) -> list[str]:
    fp32 = rates["fp32"][0]
    torch = rows.get("torch")
    torch_seconds = torch.seconds if torch is not None and torch.ok else None
    reference = _reference(rows)
    header = (f"| contender | {config.unit} | samples/s | TFLOP/s | % of fp32 matmul | peak MiB | "
              f"time / PyTorch eager | {config.check} |")
    lines = [f"## {config.title}", "", header, "|---|---|---|---|---|---|---|---|"]
    for row in rows.values():
        if not row.ok:
            lines.append(f"| {row.label} | {row.status} | | | | | | |")
            continue
        tflops = config.flops / row.seconds / 1e12
        share = f"{100 * tflops / fp32:.1f}%" if fp32 else "n.a."
        memory = row.peak_note
        if row.peak_bytes is not None:
            memory = f"{row.peak_note}{row.peak_bytes / MiB:,.1f}"
        ratio = f"{row.seconds / torch_seconds:.3g}" if torch_seconds else "n.a."
        loss = f"{row.loss:.6f}"
        if reference is not None and row is not reference and not _loss_agrees(row.loss, reference.loss):
            loss += f" (differs from {reference.label})"
        lines.append(f"| {row.label} | {_num(row.seconds * 1e3)} | {_num(config.samples / row.seconds)} | "
                     f"{_num(tflops)} | {share} | {memory} | {ratio} | {loss} |")
    return lines


def _best_portnn(rows: dict[str, Row]) -> Row | None:
    """The faster of portnn's portable path and its fast engine, where either ran."""
    ran = [rows[k] for k in ("portnn", "portnn-fast") if k in rows and rows[k].ok]
    return min(ran, key=lambda r: r.seconds) if ran else None


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def _against_compiled(key: str, bound: float, rows: dict[str, Row]) -> tuple[str, str, str]:
    name = f"{key}: portnn time ≤ {bound} × the faster of PyTorch CUDA graph and JAX jit"
    ours = _best_portnn(rows)
    others = [rows[k] for k in ("torch-graph", "jax") if k in rows and rows[k].ok]
    if ours is None or not others:
        return name, "portnn or both references did not run", "n.a."
    best = min(others, key=lambda r: r.seconds)
    ratio = ours.seconds / best.seconds
    measured = (f"{ours.label} {_num(ours.seconds * 1e3)} ms vs {best.label} "
                f"{_num(best.seconds * 1e3)} ms: {ratio:.2f}×")
    return name, measured, _verdict(ratio <= bound)


def _share_of_fp32(config: Config, rows: dict[str, Row], fp32: float | None) -> tuple[str, str, str]:
    name = f"{config.key}: portnn ≥ 90% of the measured fp32 matrix rate"
    ours = _best_portnn(rows)
    if ours is None or not fp32:
        return name, "portnn or the fp32 rate was not measured", "n.a."
    tflops = config.flops / ours.seconds / 1e12
    measured = f"{ours.label} {_num(tflops)} of {_num(fp32)} TFLOP/s: {100 * tflops / fp32:.1f}%"
    return name, measured, _verdict(tflops >= 0.9 * fp32)


def _epoch_targets(
    configs: dict[str, Config], results: dict[str, dict[str, Row]]
) -> list[tuple[str, str, str]]:
    epoch, rows = configs["E"], results["E"]
    ours = _best_portnn(rows)
    found = []
    # the step configuration of the same model and batch, with its data on the device (B)
    same = [k for k, c in configs.items()
            if c.kind == "step" and c.batch == epoch.batch and c.widths == epoch.widths]
    name = (f"E: portnn epoch throughput ≥ 0.8 × its step throughput at batch {epoch.batch:,} "
            f"with the data on the device ({same[0] if same else 'B'})")
    stepped = results[same[0]].get(ours.key) if same and ours is not None else None
    if ours is None or stepped is None or not stepped.ok:
        found.append((name, "needs portnn rows in E and in that configuration (--configs B,E)", "n.a."))
    else:
        ours_rate, step_rate = epoch.samples / ours.seconds, epoch.batch / stepped.seconds
        measured = f"{_num(ours_rate)} vs {_num(step_rate)} samples/s: {ours_rate / step_rate:.2f}×"
        found.append((name, measured, _verdict(ours_rate >= 0.8 * step_rate)))
    name = "E: portnn epoch throughput ≥ 1.0 × a PyTorch loop that copies each batch to the device"
    torch = rows.get("torch")
    if ours is None or torch is None or not torch.ok:
        found.append((name, "portnn or PyTorch did not run", "n.a."))
    else:
        ratio = torch.seconds / ours.seconds
        measured = (f"{_num(epoch.samples / ours.seconds)} vs {_num(epoch.samples / torch.seconds)} "
                    f"samples/s: {ratio:.2f}×")
        found.append((name, measured, _verdict(ratio >= 1.0)))
    return found


def _memory_target(key: str, rows: dict[str, Row]) -> tuple[str, str, str]:
    name = f"{key}: portnn peak device memory ≤ PyTorch eager's"
    ours, torch = _best_portnn(rows), rows.get("torch")
    if ours is None or torch is None or not torch.ok or None in (ours.peak_bytes, torch.peak_bytes):
        return name, "not measured (both must run on the GPU)", "n.a."
    measured = f"{ours.peak_bytes / MiB:,.1f} vs {torch.peak_bytes / MiB:,.1f} MiB"
    return name, measured, _verdict(ours.peak_bytes <= torch.peak_bytes)


def targets(
    configs: dict[str, Config], results: dict[str, dict[str, Row]], rates: dict
) -> list[tuple[str, str, str]]:
    """(target, what was measured, PASS / FAIL / n.a.) for each target, from this run's numbers."""
    found = [_against_compiled(key, bound, results[key])
             for key, bound in (("A", 0.8), ("B", 0.8), ("C", 1.0)) if key in results]
    if "D" in results:
        found.append(_share_of_fp32(configs["D"], results["D"], rates["fp32"][0]))
    if "E" in results:
        found += _epoch_targets(configs, results)
    found += [_memory_target(key, rows) for key, rows in results.items()]
    return found


def _notes(where: Platform, optimizer: str, repeats: int, seed: int) -> list[str]:
    lr = LEARNING_RATES[optimizer]
    opt = f"SGD(lr={lr})" if optimizer == "sgd" else f"Adam(lr={lr})"
    notes = [
        (f"- every contender: float32, softmax cross-entropy, {opt}, the same initial weights "
         f"(numpy.random.default_rng({seed})) and batches; median of {repeats} timed repeats after a "
         "warm-up; matrix products in full fp32"),
        ("- time: host wall time between device synchronizations around K steps (K for about "
         f"{SECONDS_PER_REPEAT[where.mode]} s), divided by K; an epoch or a predict call is timed whole"),
        ("- TFLOP/s: matrix-product FLOPs (6 x batch x the sum of in x out per training step, 2 x that "
         "per predicted row) over that time"),
        ("- peak MiB: the most device memory the contender's library had allocated at once, from "
         "building the model to the end of its check run, data included (PyTorch: max_memory_allocated; "
         "CuPy: its pool's bytes in use, tracked at every allocation; JAX: peak_bytes_in_use, which "
         "cannot be reset: ≤ where an earlier contender set it)"),
        ("- portnn's rows run without fit's finite check of every step and predict's NaN/inf scan of "
         "the data, as the other contenders check nothing; the \"with\" rows keep those defaults"),
    ]
    if where.smoke:
        notes.append("- smoke run on the CPU: hidden widths and batches / 16, host rows / 100, portnn on "
                     "NumPy, PyTorch and JAX on the CPU; the numbers exercise the code, they are not the "
                     "benchmark")
    notes += [f"- environment: {flag}={os.environ[flag]}"
              for flag in ("CUPY_TF32", "NVIDIA_TF32_OVERRIDE") if flag in os.environ]
    return notes


def report(where: Platform, command: str, optimizer: str, repeats: int, seed: int, rates: dict,
           configs: dict[str, Config], results: dict[str, dict[str, Row]]) -> str:
    """The whole report in Markdown, its tables last."""
    lines = [
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}",
        f"- device: {where.device_name()}",
        f"- libraries: {where.versions()}",
        f"- command: `{command}`",
        *_notes(where, optimizer, repeats, seed),
        "",
        "## Matrix rates measured in this run",
        "",
        "| product | TFLOP/s | measured with |",
        "|---|---|---|",
    ]
    for name, (rate, note) in rates.items():
        lines.append(f"| {name} | {_num(rate) if rate is not None else 'n.a.'} | {note} |")
    for key, rows in results.items():
        lines += ["", *config_table(configs[key], rows, rates)]
    lines += ["", "## Targets", "", "| target | measured | result |", "|---|---|---|"]
    lines += [f"| {name} | {measured} | {verdict} |"
              for name, measured, verdict in targets(configs, results, rates)]
    return "\n".join(lines)


def smoke_problems(results: dict[str, dict[str, Row]]) -> list[str]:
    """What makes a smoke run fail: a failed contender, a missing or non-positive portnn
    row, or portnn and PyTorch disagreeing on the loss."""
    problems = []
    for key, rows in results.items():
        for row in rows.values():
            if row.status.startswith("failed"):
                problems.append(f"{key}: {row.label} {row.status}")
            elif row.ok and not (row.seconds > 0 and math.isfinite(row.loss)):
                problems.append(f"{key}: {row.label} measured {row.seconds} s, loss {row.loss}")
        ours, torch = rows.get("portnn"), rows.get("torch")
        if ours is None or not ours.ok:
            problems.append(f"{key}: portnn did not run")
        elif torch is not None and torch.ok and not _loss_agrees(ours.loss, torch.loss):
            problems.append(f"{key}: portnn's loss {ours.loss:.7f} and PyTorch's {torch.loss:.7f} differ "
                            f"by more than {LOSS_RTOL:g} relative")
    return problems


# ---------------------------------------------------------------- main


def config_data(config: Config, seed: int) -> Any:
    """Host data: a list of batches (step), or (X, y) over all rows (epoch, predict)."""
    rng = np.random.default_rng([seed, 1])
    features, classes = config.widths[0], config.widths[-1]
    if config.kind == "step":
        X, y = classification_data(BATCHES_ON_DEVICE * config.batch, features, classes, rng)
        return [(X[i : i + config.batch], y[i : i + config.batch]) for i in range(0, len(X), config.batch)]
    if config.kind == "epoch":
        return classification_data(config.rows, features, classes, rng)
    # predictions need no structure in the data: uniform noise is quick to draw at 3 GB
    return rng.random((config.rows, features), dtype=np.float32), rng.integers(0, classes, size=config.rows)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated, of {','.join(CONFIGS)} (default: all)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats (default 5; 2 with --smoke)")
    parser.add_argument("--optimizer", choices=sorted(LEARNING_RATES), default="sgd",
                        help="sgd: SGD(lr=0.01) (default); adam: Adam(lr=1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and data")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU smoke run: portnn on NumPy, PyTorch and JAX on the CPU, "
                             "every configuration shrunk")
    parser.add_argument("--write-docs", nargs="?", const="docs/benchmarks-gpu-table.md", metavar="PATH",
                        help="also write the report to PATH (default docs/benchmarks-gpu-table.md)")
    args = parser.parse_args(argv)
    keys = [k.strip().upper() for k in args.configs.split(",") if k.strip()]
    unknown = [k for k in keys if k not in CONFIGS]
    if unknown or not keys:
        parser.error(f"unknown configurations {unknown}; choose from {','.join(CONFIGS)}")
    repeats = args.repeats if args.repeats is not None else (2 if args.smoke else 5)
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.smoke:
        os.environ["JAX_PLATFORMS"] = "cpu"  # a smoke run never touches a GPU, even where there is one
    script = sys.argv[0] if sys.argv and sys.argv[0] else "bench/gpu.py"
    command = shlex.join(["python", script, *argv])

    where = Platform(args.smoke)
    log(f"device: {where.device_name()}; measuring the matrix rates")
    rates = matrix_rates(where)
    configs = {k: CONFIGS[k].shrunk() if args.smoke else CONFIGS[k] for k in keys}
    results: dict[str, dict[str, Row]] = {}
    # PyTorch's float32 products in full fp32 (its default, made explicit), like the others'
    with _torch_tf32(where.torch, False) if where.torch is not None else contextlib.nullcontext():
        for key, config in configs.items():
            log(f"{config.title}")
            weights = initial_weights(config.widths, args.seed)
            data = config_data(config, args.seed)
            results[key] = {}
            for spec in contender_specs(config, where, weights, args.optimizer):
                row = run_contender(spec, config, data, where, repeats, args.seed)
                results[key][row.key] = row
                summary = row.status
                if row.ok:
                    summary = f"{row.seconds * 1e3:.4g} {config.unit}, {config.check} {row.loss:.6f}"
                log(f"  {row.label}: {summary}")
            del data

    text = report(where, command, args.optimizer, repeats, args.seed, rates, configs, results)
    title = "# portnn GPU benchmarks" + (" (CPU smoke run)" if args.smoke else "")
    print(f"{title}\n\n{text}")
    if args.write_docs:
        path = Path(args.write_docs)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{title}\n\n{text}\n", encoding="utf-8")
        log(f"wrote {path}")
    if args.smoke:
        problems = smoke_problems(results)
        for problem in problems:
            log(f"smoke run failed: {problem}")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
