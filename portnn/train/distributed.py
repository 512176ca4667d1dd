"""Data-parallel training over MPI: ``fit(..., distributed=True)`` under ``mpiexec``.

Every process (rank) holds a replica of the model and is given the same ``X, y``.
``batch_size`` is the *global* batch: each of the N ranks computes the forward
and backward pass of its own contiguous 1/N of every batch of the epoch's
shuffled order, so the union over the ranks is exactly the batch a single
process would train on. After each backward pass the gradients (weighted by
each rank's share of the batch, because the loss is a mean over the batch) are
summed across the ranks in one flat buffer -- one collective per step -- and
every rank applies the same optimizer step. Hence, to float rounding::

    mpiexec -n 4 python train.py     # fit(X, y, batch_size=B, seed=s, distributed=True)

trains the same weights as ``fit(X, y, batch_size=B, seed=s)`` in one process.

The engine is MPI through mpi4py (``pip install "portnn[mpi]"`` brings mpi4py
and MPICH). On CuPy the gradients are summed with NCCL (``cupy.cuda.nccl``)
directly between the GPUs when every rank can use it, else through MPI on
host buffers.

What else keeps the replicas identical:

- parameters, buffers, optimizer state and dropout generators are broadcast
  from rank 0 when ``fit`` starts, and so is the seed of the shuffling orders;
- each Dropout layer draws the mask of the whole global batch from its
  generator and keeps its rank's rows, so masks equal the single process's;
- the loss, the metrics' running sums and the check for non-finite gradients
  come from the reduced values, so every rank logs the same numbers and skips
  (or raises on) the same steps; Ctrl-C or SIGTERM on any rank stops all of
  them at the same step;
- BatchNorm normalizes with its rank's share of the batch (its running
  statistics are averaged across ranks after every epoch), so models with
  BatchNorm train close to, not exactly like, a single process.

Only rank 0 writes checkpoints and logs (:class:`~portnn.ModelCheckpoint`,
:class:`~portnn.CSVLogger`, :class:`~portnn.JSONLogger` are skipped elsewhere)
and shows progress.

Failures never hang the job: every collective is nonblocking and polled with
a deadline (``timeout`` seconds, default 300). A rank whose ``fit`` raises tells
the other ranks before it re-raises, and they stop at their next collective
with a :class:`~portnn.DistributedError` naming that rank and its error. A rank that
dies or stalls makes the others fail with the same error when the deadline
passes (``mpiexec`` itself also ends the job when a process dies). Once a
:class:`~portnn.DataParallel` exists in a process of a multi-process job, an uncaught
exception ends the whole job with ``MPI_Abort`` after printing its traceback
(as ``python -m mpi4py`` does), so no rank is left waiting for a dead one.
Checkpoints are written atomically, so the last one stays valid.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np  # host side only: MPI buffers and the shuffling order's shards

from .._checks import positive_number
from ..backend import dtype_name, to_numpy
from ..data import n_samples
from ..nn.normalization import host_noise
from .reducers import HostReducer, NcclReducer
from .state import capture, restore
from .strategy import Strategy

__all__ = ["DataParallel", "DistributedError", "rank", "world_size"]

# tag of the point-to-point message with which a failing rank tells the others
_ALARM_TAG = 0x706E
_ALARM_BYTES = 4096


class DistributedError(RuntimeError):
    """Another rank failed, or did not answer within the timeout; this rank stopped too.

    ``source`` is the rank that reported the failure (None for a timeout).
    """

    def __init__(self, message: str, source: int | None = None) -> None:
        super().__init__(message)
        self.source = source


def _mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError(
            'distributed training needs mpi4py and an MPI library; install them with '
            'pip install "portnn[mpi]" and launch with mpiexec -n 4 python train.py'
        ) from None
    return MPI


def _launched_by_mpi() -> bool:
    """Whether this process was started by mpiexec (without importing mpi4py)."""
    keys = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALRANKID")
    return any(k in os.environ for k in keys)


def rank() -> int:
    """This process's rank in ``MPI.COMM_WORLD``: 0 when not started by mpiexec."""
    return _mpi().COMM_WORLD.Get_rank() if _launched_by_mpi() else 0


def world_size() -> int:
    """The number of processes ``mpiexec`` started: 1 when not started by it."""
    return _mpi().COMM_WORLD.Get_size() if _launched_by_mpi() else 1


_hook_installed = False


def _abort_on_uncaught_exception(MPI: Any) -> None:
    """Make an uncaught exception end the whole MPI job (as ``python -m mpi4py`` does).

    Otherwise a rank that stops with an error may wait forever in ``MPI_Finalize``
    for a rank that is stuck, or leave the others waiting for it.
    """
    global _hook_installed
    if _hook_installed:
        return
    _hook_installed = True
    previous = sys.excepthook

    def hook(kind: Any, value: Any, tb: Any) -> None:
        alive = MPI.Is_initialized() and not MPI.Is_finalized()
        if alive and MPI.COMM_WORLD.Get_size() > 1:
            # the one line that matters first: mpiexec may cut the rest short
            sys.stderr.write(f"rank {MPI.COMM_WORLD.Get_rank()}: {_describe(value)}; ending the MPI job\n")
            sys.stderr.flush()
        previous(kind, value, tb)
        if alive and MPI.COMM_WORLD.Get_size() > 1:
            sys.stderr.flush()
            time.sleep(0.2)  # lets mpiexec pass the output on before it tears the job down
            MPI.COMM_WORLD.Abort(1)

    sys.excepthook = hook


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 1000 else text[:1000] + "..."


class DataParallel(Strategy):
    """Settings of data-parallel training; pass one as ``fit(..., distributed=DataParallel(...))``.

    ``distributed=True`` is ``DataParallel()``: all processes of
    ``MPI.COMM_WORLD``, a 300 s deadline on every collective, NCCL on CuPy.

    :param comm: the mpi4py communicator whose ranks train together (default
        ``MPI.COMM_WORLD``).
    :param timeout: seconds a rank waits for the others at a collective before it
        raises :class:`~portnn.DistributedError`; allow for the slowest rank's step (the
        first one included) and for its validation and checkpoints.
    :param nccl: sum CuPy gradients with NCCL where every rank can (else MPI on host
        buffers); ``False`` always uses MPI.
    """

    def __init__(self, comm: Any = None, *, timeout: float = 300.0, nccl: bool = True) -> None:
        MPI = _mpi()
        if comm is None:
            comm = MPI.COMM_WORLD
        if not isinstance(comm, MPI.Intracomm):
            raise TypeError(f"comm must be an mpi4py intracommunicator, got {type(comm).__name__}")
        if not isinstance(nccl, bool):
            raise TypeError(f"nccl must be True or False, got {nccl!r}")
        self.timeout = positive_number("timeout", timeout)
        self.nccl = nccl
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self._MPI = MPI
        self._outer: BaseException | None = None
        if self.size > 1:
            _abort_on_uncaught_exception(MPI)
        self._comm: Any = None  # this fit's duplicate of comm (its own message space)
        self._alarm: Any = None
        self._reducer: Any = None
        self._span = (0, 0, 0)
        self._signal: int | None = None
        self._handlers_set = False

    def __repr__(self) -> str:
        return f"DataParallel(rank={self.rank}, size={self.size}, timeout={self.timeout:g})"

    # ------------------------------------------------------------ waiting with a deadline
    def _wait(self, done: Callable[[], bool], what: str) -> None:
        """Poll ``done()`` until it is true; a failure report or the deadline raises."""
        deadline = time.monotonic() + self.timeout
        polls = 0
        while not done():
            self._check_alarm()
            if time.monotonic() > deadline:
                raise DistributedError(
                    f"rank {self.rank} of {self.size}: the other ranks did not answer within "
                    f"{self.timeout:g} s while {what}; a rank has died, stalled or is running "
                    "other code (do all ranks call fit with the same arguments?). "
                    "Raise DataParallel(timeout=...) if a step legitimately takes longer"
                )
            polls += 1
            if polls > 200:  # a short spin for fast steps, then sleep up to 1 ms per poll
                time.sleep(min(1e-3, 1e-5 * (polls - 200)))

    def _wait_request(self, request: Any, what: str) -> None:
        self._wait(request.Test, what)

    def _check_alarm(self) -> None:
        if self._alarm is None:
            return
        request, buf = self._alarm
        status = self._MPI.Status()
        if request.Test(status):
            self._alarm = None
            source = status.Get_source()
            text = bytes(buf[: status.Get_count(self._MPI.BYTE)]).decode("utf-8", "replace")
            raise DistributedError(
                f"rank {source} of {self.size} failed ({text}); rank {self.rank} stopped with it. "
                "Checkpoints are written atomically: the last one is intact",
                source=source,
            )

    def _alarm_others(self, exc: BaseException) -> None:
        """Tell every other rank that this one failed (best effort, one second at most)."""
        comm = self._comm
        if comm is None or self.size == 1:
            return
        text = _describe(exc).encode("utf-8", "replace")[:_ALARM_BYTES]
        requests = [
            comm.Isend([text, self._MPI.BYTE], dest=r, tag=_ALARM_TAG)
            for r in range(self.size)
            if r != self.rank
        ]
        deadline = time.monotonic() + 1.0
        while not self._MPI.Request.Testall(requests) and time.monotonic() < deadline:
            time.sleep(1e-4)

    # ------------------------------------------------------------ collectives on host buffers
    def _allreduce(self, buf: np.ndarray, what: str, comm: Any = None) -> np.ndarray:
        """Sum ``buf`` over the ranks in place (the host path)."""
        comm = comm or self._comm
        self._wait_request(comm.Iallreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM), what)
        return buf

    def _allgather_object(self, obj: Any, what: str, comm: Any = None) -> list[Any]:
        comm = comm or self._comm
        payload = np.frombuffer(pickle.dumps(obj, protocol=5), dtype=np.uint8)
        sizes = np.zeros(self.size, dtype=np.int64)
        self._wait_request(comm.Iallgather(np.array([payload.size], np.int64), sizes), what)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        out = np.empty(int(sizes.sum()), dtype=np.uint8)
        request = comm.Iallgatherv(payload, [out, sizes, offsets, self._MPI.BYTE])
        self._wait_request(request, what)
        return [pickle.loads(out[o : o + s].tobytes()) for o, s in zip(offsets, sizes)]

    def _bcast_object(self, obj: Any, what: str) -> Any:
        """``obj`` as rank 0 has it, on every rank."""
        comm = self._comm
        payload = pickle.dumps(obj, protocol=5) if self.rank == 0 else b""
        size = np.array([len(payload)], np.int64)
        self._wait_request(comm.Ibcast(size, root=0), what)
        buf = np.frombuffer(payload, np.uint8).copy() if self.rank == 0 else np.empty(int(size[0]), np.uint8)
        self._wait_request(comm.Ibcast(buf, root=0), what)
        return obj if self.rank == 0 else pickle.loads(buf.tobytes())

    # ------------------------------------------------------------ the hooks fit calls
    def verbose(self, verbose: Any) -> Any:
        """Only rank 0 shows progress."""
        return verbose if self.rank == 0 else 0

    def agree(self, model: Any, **settings: Any) -> None:
        """Check, before the model changes, that every rank calls ``fit`` alike.

        ``settings`` (numbers of samples and features, batch size, epochs, ...) and
        the model's parameter names, shapes and dtypes must be equal on all ranks;
        otherwise every rank raises the same ValueError.
        """
        mine = {
            **settings,
            "parameters": [(k, tuple(v.shape), dtype_name(v.dtype)) for k, v in model.parameters().items()],
        }
        everyone = self._allgather_object(mine, "checking that all ranks call fit alike", self.comm)
        for r, theirs in enumerate(everyone):
            for key in mine:
                if theirs[key] != everyone[0][key]:
                    raise ValueError(
                        f"distributed fit: ranks disagree on {key}: rank 0 has {everyone[0][key]!r}, "
                        f"rank {r} has {theirs[key]!r}; every rank must call fit with the same data "
                        "shape, model and arguments"
                    )
        batch_size, n = settings.get("batch_size"), settings.get("n_samples")
        if batch_size and n and any(getattr(m, "needs_batch_statistics", False) for m in model.modules()):
            last = n % batch_size or batch_size
            smallest = min(batch_size, last) // self.size
            if smallest < 2:
                raise ValueError(
                    f"batch normalization needs at least 2 samples per rank, and a batch of "
                    f"{min(batch_size, last)} split over {self.size} ranks leaves {smallest}; "
                    "choose a larger batch_size (or one that leaves a larger last batch)"
                )

    def start(self, model: Any, base_seed: int, callbacks: Sequence[Any], interrupt: Any) -> tuple[int, list[Any]]:
        """Broadcast rank 0's model state and shuffling seed; keep file-writing callbacks on rank 0.

        Returns ``(seed of the shuffling orders, callbacks this rank runs)``.
        """
        from .callbacks import CSVLogger, JSONLogger, ModelCheckpoint

        self.interrupt = interrupt
        MPI = self._MPI
        # an exception the caller is handling while it calls fit is not a failure of fit
        self._outer = sys.exc_info()[1]
        comm, request = self.comm.Idup()
        self._wait_request(request, "setting up the communicator")
        self._comm = comm
        buf = bytearray(_ALARM_BYTES)
        self._alarm = (comm.Irecv([buf, MPI.BYTE], source=MPI.ANY_SOURCE, tag=_ALARM_TAG), buf)
        self._signal = None
        self._handlers_set = False

        state = {"seed": base_seed, "model": capture(model, host=True)} if self.rank == 0 else None
        state = self._bcast_object(state, "broadcasting the model from rank 0")
        if self.rank != 0:
            restore(model, state["model"])
        self._reducer = self._make_reducer(model)
        if self.rank != 0:
            writers = (ModelCheckpoint, CSVLogger, JSONLogger)
            callbacks = [cb for cb in callbacks if not isinstance(cb, writers)]
        return int(state["seed"]), list(callbacks)

    def noise(self, layer: Any, shape: tuple[int, ...]) -> Any:
        """Dropout's draws for this rank: its rows of the mask of the whole batch (as one
        process draws it), so every rank's generator advances alike."""
        total, lo, hi = self._span
        return host_noise(layer, (total, *shape[1:]))[lo:hi]

    def batches(self, batcher: Any, order: np.ndarray | None, batch_size: int) -> Iterator[tuple[Any, Any, int]]:
        """This rank's share of every batch of the epoch, as ``(xb, yb, global batch size)``."""
        n = len(batcher) if order is None else len(order)
        rows = np.arange(n) if order is None else order
        # with sample weights (the second of a pair of targets), ranks weigh their shares by weight
        weights = to_numpy(batcher.y[1]) if isinstance(batcher.y, tuple) else None
        selections, spans, shares, wholes = [], [], [], []
        for a in range(0, n, batch_size):
            total = min(a + batch_size, n) - a
            lo, hi = total * self.rank // self.size, total * (self.rank + 1) // self.size
            selections.append(slice(a + lo, a + hi) if order is None else order[a + lo : a + hi])
            spans.append((total, lo, hi))
            if weights is None:
                shares.append((hi - lo) / total)
            else:
                whole = float(np.sum(weights[rows[a : a + total]]))
                wholes.append(whole)
                shares.append(float(np.sum(weights[rows[a + lo : a + hi]])) / whole if whole > 0 else 0.0)
        for i, ((xb, yb, _), span, share) in enumerate(zip(batcher.select(selections), spans, shares)):
            self._span, self._share = span, share
            self._whole = wholes[i] if wholes else None
            yield xb, yb, span[0]

    def batch_weight(self, wb: Any, xp: Any) -> Any:
        return self._whole

    def value_and_grad(
        self, compute: Callable[[], tuple[Any, dict[str, Any], Any]], model: Any, xb: Any
    ) -> tuple[Any, dict[str, Any], Any]:
        """The step's loss and gradients averaged over the global batch, on every rank.

        ``compute()`` gives this rank's (mean loss, gradients, predictions); they are
        weighted by its share of the batch and summed over the ranks with one
        collective, together with Ctrl-C/SIGTERM flags (so all ranks stop alike).
        """
        if self.interrupt is None or self._reducer is None:
            raise RuntimeError(
                "DataParallel shares out the steps of fit(..., distributed=...); it was not started, "
                "so it cannot share out a step of your own"
            )
        if not self._handlers_set:
            # signals now only set a flag that travels with the next reduction
            for s in (signal.SIGINT, signal.SIGTERM):
                try:
                    signal.signal(s, self._on_signal)
                except ValueError:  # not the main thread: signals are not deferred there
                    pass
            self._handlers_set = True
        total, lo, hi = self._span
        local = n_samples(xb)
        if local:
            value, grads, pred = compute()
        else:  # a batch smaller than the number of ranks: nothing to compute here
            pred, _ = model.apply(xb, True)  # still advances the dropout generators
            value, grads = None, {}
        interrupt = self.interrupt
        signum = self._signal or interrupt.received
        self._signal = interrupt.received = None
        flags = (float(signum == signal.SIGINT), float(signum == signal.SIGTERM))
        value, grads, flags = self._reducer(model, value, grads, self._share, flags)
        if flags[1] > 0:
            interrupt.received = signal.SIGTERM
        elif flags[0] > 0:
            interrupt.received = signal.SIGINT
        return value, grads, pred

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signal = signum

    def end_epoch(self, model: Any, metrics: Sequence[Any]) -> None:
        """Sum the metrics' running sums over the ranks; average BatchNorm's running statistics."""
        buffers = model.buffers()
        keys = [(m, k) for m in metrics for k in sorted(m._sums)]
        if not buffers and not keys:
            return
        values = [to_numpy(m._sums[k]) for m, k in keys] + [to_numpy(v) for v in buffers.values()]
        sizes = [v.size for v in values]
        flat = np.concatenate([np.asarray(v, np.float64).reshape(-1) for v in values])
        self._allreduce(flat, "summing metrics and running statistics")
        offset = 0
        for (m, k), v, s in zip(keys, values, sizes):
            reduced = flat[offset : offset + s].reshape(v.shape)
            offset += s
            old = m._sums[k]
            if isinstance(old, int):
                m._sums[k] = int(round(float(reduced)))
            elif isinstance(old, float):
                m._sums[k] = float(reduced)
            else:
                m._sums[k] = reduced.astype(v.dtype)
        if buffers:
            averaged = {}
            for (name, v), host, s in zip(buffers.items(), values[len(keys) :], sizes[len(keys) :]):
                averaged[name] = (flat[offset : offset + s] / self.size).reshape(host.shape).astype(host.dtype)
                offset += s
            model.load_buffers(averaged)

    def finish(self) -> None:
        """End of ``fit`` (normal or not): tell the others if this rank failed; clean up."""
        exc = sys.exc_info()[1]
        if exc is self._outer:
            exc = None
        self._outer = None
        if exc is not None and not _shared_failure(exc):
            self._alarm_others(exc)
        interrupt = self.interrupt
        if self._signal is not None and interrupt is not None and interrupt.received is None:
            interrupt.received = self._signal  # arrived after the last step: handled like fit does
        if self._alarm is not None:
            request, _ = self._alarm
            request.Cancel()
            request.Wait()
            self._alarm = None
        if self._reducer is not None:
            self._reducer.close(failed=exc is not None)
            self._reducer = None
        if self._comm is not None:
            if exc is None:
                self._comm.Free()
            self._comm = None  # after a failure, requests may still be pending on it

    # ------------------------------------------------------------ reducers
    def _make_reducer(self, model: Any) -> Any:
        trainable = model.parameters(trainable_only=True)  # frozen parameters have no gradients
        names = list(trainable)
        shapes = [tuple(p.shape) for p in trainable.values()]
        if str(model.backend) == "cupy" and self.nccl and self.size > 1:
            reducer = NcclReducer.create(self, names, shapes)
            if reducer is not None:
                return reducer
        return HostReducer(self, names, shapes)


def _shared_failure(exc: BaseException) -> bool:
    """Errors every rank raises at the same step (nothing to report to the others)."""
    from .._guard import TrainingDivergedError

    return isinstance(exc, TrainingDivergedError) or (isinstance(exc, DistributedError) and exc.source is not None)


def strategy_for(distributed: Any) -> Strategy:
    """``fit``'s ``distributed`` argument as a strategy: False is one process, True is
    ``DataParallel()``; a :class:`~portnn.DataParallel` (or any Strategy) is itself."""
    if distributed is False:
        return Strategy()
    if distributed is True:
        return DataParallel()
    if not isinstance(distributed, Strategy):
        raise TypeError(
            f"distributed must be True, False or a portnn.DataParallel, got {type(distributed).__name__}"
        )
    return distributed
