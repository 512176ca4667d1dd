"""``fit(..., jit=True)``: the whole training step compiled by ``jax.jit``.

The step is the same portable code as the eager loop -- the layers' forward and
backward, the loss, the penalties and the optimizer's update -- run once under
``jax.jit`` as a pure function of the parameters, buffers, optimizer state,
learning rate and batch. XLA then fuses it into one compiled program.

What would otherwise be frozen into the program at trace time is passed in on
every call instead: the optimizer state's numbers -- the learning rate (a
schedule is evaluated on the host before every step, callbacks change it between
epochs) and the step counts (for Adam's bias corrections) -- and dropout's
uniform draws, which are drawn on the host from each layer's own generator
exactly as in the eager loop, so both paths see the same masks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._guard import arrays_of
from .losses import Loss
from .nn import Dropout, Module
from .optim.base import Transform
from .optim.optimizers import update_trainable

__all__ = ["CompiledStep"]


class CompiledStep:
    """One training step of ``model`` compiled with ``jax.jit``; call it with a batch.

    ``step(xb, yb, wb=None)`` (``wb``: the batch's sample weights) applies the step to the model (parameters, buffers and
    optimizer state) unless ``check`` is set and the loss, a gradient, an updated
    parameter or an updated optimizer slot is not finite, and returns ``(loss value, predictions, finite)``; ``finite`` is a
    Python bool (one host read) when ``check`` is set, else None.
    """

    def __init__(
        self,
        model: Module,
        loss: Loss,
        optimizer: Transform,
        value_and_grad: Callable[..., tuple[Any, dict[str, Any], Any]],
        check: bool,
    ) -> None:
        if model.backend != "jax":
            raise ValueError(
                f"jit=True compiles the step with jax.jit and needs the model on the 'jax' backend, "
                f"not {str(model.backend)!r}; move it with model.to('jax')"
            )
        import jax  # the compiled step is an engine at the edge: jax.jit and its tree utilities, only here

        self.model, self.loss, self.optimizer, self.check = model, loss, optimizer, check
        self._value_and_grad = value_and_grad
        self._dropouts = [m for m in model.modules() if isinstance(m, Dropout) and m.p > 0.0]
        self._noise_shapes: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        self._jax = jax
        self._compiled = jax.jit(self._pure_step)
        self._steps: int | None = None  # the step count on the host, for the schedule

    # ------------------------------------------------------------ the pure function
    def _pure_step(self, params, buffers, opt_state, noise, xb, yb, wb):
        model, opt, xp = self.model, self.optimizer, self.model.xp
        saved_params, saved_buffers = model.parameters(), model.buffers()
        try:
            self._set(params, buffers)
            if noise is not None:  # None: the caller has put its own draws in place
                draws = iter(noise)
                for layer in self._dropouts:
                    layer.uniform = lambda shape: next(draws)
            value, grads, pred = self._value_and_grad(model, self.loss, xb, yb, wb)
            new_buffers = dict(model.buffers())
            trainable = list(model.parameters(trainable_only=True))
            new_params, new_state = update_trainable(opt, dict(params), trainable, grads, opt_state, xp, prepared=True)
            new_params = {**params, **new_params}  # frozen ones as they were
            finite = None
            if self.check:
                # the update itself may overflow: its results are probed with the gradients
                produced = [*grads.values(), *new_params.values(), *arrays_of(new_state)]
                finite = xp.isfinite(value)
                for a in produced:  # exact, entry by entry: XLA fuses these reductions
                    if xp.isdtype(a.dtype, "real floating"):
                        finite = finite & xp.all(xp.isfinite(a))
                # a non-finite step changes nothing: every output falls back to its input
                keep = self._jax.tree_util.tree_map
                new_params = keep(lambda new, old: xp.where(finite, new, old), new_params, dict(params))
                new_buffers = keep(lambda new, old: xp.where(finite, new, old), new_buffers, dict(buffers))
                new_state = keep(lambda new, old: xp.where(finite, new, old), new_state, opt_state)
        finally:
            self._set(saved_params, saved_buffers)
            if noise is not None:
                for layer in self._dropouts:
                    del layer.uniform  # back to the class's host draw
        return new_params, new_buffers, new_state, value, pred, finite

    def _set(self, params: dict[str, Any], buffers: dict[str, Any]) -> None:
        self.model.assign_parameters(params)
        self.model.assign_buffers(buffers)

    # ------------------------------------------------------------ per step, on the host
    def _noise(self, xb: Any, yb: Any, wb: Any, args: tuple) -> list[Any]:
        """Dropout's draws for this batch, from each layer's host generator in forward order."""
        if not self._dropouts:
            return []
        shape = tuple(tuple(x.shape) for x in xb) if isinstance(xb, tuple) else tuple(xb.shape)
        dtype = _dtype(xb)
        if shape not in self._noise_shapes:
            # trace the forward once abstractly to learn each dropout's input shape
            shapes: list[tuple[int, ...]] = []

            def record(s):
                shapes.append(tuple(s))
                return self._jax.numpy.zeros(s, dtype=dtype)

            for layer in self._dropouts:
                layer.uniform = record
            try:
                self._jax.eval_shape(lambda *a: self._pure_step(*a[:3], None, *a[3:]), *args, xb, yb, wb)
            finally:
                for layer in self._dropouts:
                    layer.__dict__.pop("uniform", None)
            self._noise_shapes[shape] = shapes
        backend = self.model.backend
        return [
            backend.asarray(layer.generator.random(s), dtype)
            for layer, s in zip(self._dropouts, self._noise_shapes[shape])
        ]

    def __call__(self, xb: Any, yb: Any, wb: Any = None) -> tuple[Any, Any, bool | None]:
        model = self.model
        state = model.optimizer_state
        if self._steps is None:
            self._steps = int(state["step"])
        # the schedule's rate on the host; the numbers go in as arrays so that no step compiles anew
        state = self.optimizer.prepare({**state, "step": self._steps})
        host_lr = state.get("lr")  # the state keeps the rate as the host computed it
        state = _as_arrays(state, model.xp, _dtype(xb))
        args = (dict(model.parameters()), dict(model.buffers()), state)
        noise = self._noise(xb, yb, wb, args)
        new_params, new_buffers, new_state, value, pred, finite = self._compiled(*args, noise, xb, yb, wb)
        ok = None if finite is None else bool(finite)
        with model.weights_lock.writing():
            if ok is not False:
                self._set(new_params, new_buffers)
                model.optimizer_state = new_state if host_lr is None else {**new_state, "lr": host_lr}
                self._steps += 1
            else:
                model.optimizer_state = state if host_lr is None else {**state, "lr": host_lr}
        return value, pred, ok

    def finish(self) -> None:
        """Give the optimizer state its host numbers back (as the eager loop keeps them)."""
        state = self.model.optimizer_state
        if isinstance(state, dict) and hasattr(state.get("step"), "dtype"):
            host = {**state, "step": int(state["step"]), "counts": {k: int(c) for k, c in state["counts"].items()}}
            if "lr" in host:
                host["lr"] = float(host["lr"])
            self.model.optimizer_state = host
        self._steps = None


def _as_arrays(state: dict[str, Any], xp: Any, dtype: Any) -> dict[str, Any]:
    """The state with its step counts and rate as 0-d arrays of the batch's dtype."""
    def number(v: Any) -> Any:
        return v if hasattr(v, "dtype") else xp.asarray(v, dtype=dtype)

    new = {**state, "step": number(state["step"]), "counts": {k: number(c) for k, c in state["counts"].items()}}
    if "lr" in new:
        new["lr"] = number(new["lr"])
    return new


def _dtype(xb: Any) -> Any:
    """The dtype of a batch (of its first array, for a model with several inputs)."""
    return (xb[0] if isinstance(xb, tuple) else xb).dtype
