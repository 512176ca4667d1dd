"""How data-parallel ranks sum their gradients: MPI on host buffers, or NCCL on the GPUs.

A reducer takes one rank's loss and gradients, weighted by the rank's share of the
batch, with the Ctrl-C/SIGTERM flags, and returns their sums over all ranks in one
collective. :class:`~portnn.train.distributed.DataParallel` picks one when training
starts (NCCL only where every rank can use it) and closes it when training ends.
"""

from __future__ import annotations

from typing import Any

import numpy as np  # host side only: the MPI buffer

from ..backend import dtype_name, to_numpy

__all__ = ["HostReducer", "NcclReducer"]


class HostReducer:
    """Gradients summed by MPI in one host buffer (NumPy: no copy to the host at all)."""

    def __init__(self, dp: Any, names: list[str], shapes: list[tuple[int, ...]]) -> None:
        self.dp, self.names, self.shapes = dp, names, shapes
        self.sizes = [int(np.prod(s)) for s in shapes]
        self.total = sum(self.sizes)

    def __call__(
        self, model: Any, value: Any, grads: dict[str, Any], weight: float, flags: tuple[float, float]
    ) -> tuple[Any, dict[str, Any], tuple[float, float]]:
        backend = model.backend
        dtype = np.dtype(np.float64 if dtype_name(model.compute_dtype()) == "float64" else np.float32)
        # a fresh buffer every step: the gradients handed to the optimizer are views of it
        buf = np.zeros(self.total + 3, dtype)
        if weight:
            offset = 0
            for name, size in zip(self.names, self.sizes):
                if name in grads:
                    buf[offset : offset + size] = to_numpy(grads[name]).reshape(-1)
                offset += size
            buf[self.total] = float(value)
            buf[: self.total + 1] *= weight
        buf[self.total + 1 :] = flags
        self.dp._allreduce(buf, "averaging gradients")
        out, offset = {}, 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes):
            out[name] = backend.asarray(buf[offset : offset + size].reshape(shape))
            offset += size
        value = backend.asarray(buf[self.total])
        return value, out, (float(buf[self.total + 1]), float(buf[self.total + 2]))

    def close(self, failed: bool) -> None:
        pass


class NcclReducer:
    """Gradients summed by NCCL on the GPUs (CuPy), one flat device buffer per step.

    Created only where every rank imports ``cupy.cuda.nccl`` and the communicator
    initializes on every rank (NCCL refuses two ranks on one GPU, for example);
    otherwise all ranks use MPI on host buffers.
    """

    def __init__(self, dp: Any, comm: Any, names: list[str], shapes: list[tuple[int, ...]]) -> None:
        self.dp, self.comm, self.names, self.shapes = dp, comm, names, shapes
        self.sizes = [int(np.prod(s)) for s in shapes]
        self.total = sum(self.sizes)

    @classmethod
    def create(cls, dp: Any, names: list[str], shapes: list[tuple[int, ...]]) -> NcclReducer | None:
        try:
            # NCCL is an engine at the edge: CuPy's binding, imported only where gradients live on GPUs
            from cupy.cuda import nccl

            ok = bool(nccl.get_version())
        except Exception:  # noqa: BLE001 -- no NCCL here: the host path
            ok = False
        if not all(dp._allgather_object(ok, "checking for NCCL")):
            return None
        comm = None
        try:
            uid = dp._bcast_object(nccl.get_unique_id() if dp.rank == 0 else None, "sharing the NCCL id")
            comm = nccl.NcclCommunicator(dp.size, uid, dp.rank)
            ok = True
        except Exception:  # noqa: BLE001 -- e.g. two ranks on one GPU
            ok = False
        if not all(dp._allgather_object(ok, "starting NCCL")):
            if comm is not None:
                comm.abort()
            return None
        return cls(dp, comm, names, shapes)

    def __call__(
        self, model: Any, value: Any, grads: dict[str, Any], weight: float, flags: tuple[float, float]
    ) -> tuple[Any, dict[str, Any], tuple[float, float]]:
        # the device buffer NCCL sums in place is CuPy's (this reducer exists only on CuPy)
        import cupy
        from cupy.cuda import nccl

        dtype = cupy.float64 if dtype_name(model.compute_dtype()) == "float64" else cupy.float32
        code = nccl.NCCL_FLOAT64 if dtype == cupy.float64 else nccl.NCCL_FLOAT32
        buf = cupy.zeros(self.total + 3, dtype)
        if weight:
            offset = 0
            for name, size in zip(self.names, self.sizes):
                if name in grads:
                    buf[offset : offset + size] = grads[name].reshape(-1)
                offset += size
            buf[self.total] = value
            buf[: self.total + 1] *= weight
        buf[self.total + 1 :] = cupy.asarray(flags, dtype)
        stream = cupy.cuda.get_current_stream()
        self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, code, nccl.NCCL_SUM, stream.ptr)
        self.dp._wait(lambda: stream.done, "averaging gradients over NCCL")
        out, offset = {}, 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes):
            out[name] = buf[offset : offset + size].reshape(shape)
            offset += size
        tail = buf[self.total + 1 :].get()
        return buf[self.total], out, (float(tail[0]), float(tail[1]))

    def close(self, failed: bool) -> None:
        if failed:
            self.comm.abort()  # a collective may be pending
        else:
            self.comm.destroy()
