"""``fit(..., jit=True)``: the whole training step compiled by ``jax.jit``.

The step is the same portable code as the eager loop -- the layers' forward and
backward, the loss, the penalties and the optimizer's update -- run once under
``jax.jit`` as a pure function of the parameters, buffers, optimizer state,
learning rate and batch. XLA then fuses it into one compiled program.

What would otherwise be frozen into the program at trace time is passed in on
every call instead: the optimizer state's numbers -- the learning rate (a
schedule is evaluated on the host before every step, callbacks change it between
epochs) and the step counts (for Adam's bias corrections) -- and dropout's
uniform draws, which are drawn on the host exactly as in the eager loop (from
each layer's generator, or from the strategy's ``noise`` under data-parallel
training) and come into the program through :func:`portnn.nn.dropout_noise`, so
both paths see the same masks.

Under a strategy that shares a batch out (``distributed=``), the gradients are
averaged over the processes between two compiled programs: one computes the
loss and gradients, the other applies the update.
"""

from __future__ import annotations

from typing import Any

from .._guard import arrays_of
from ..losses import Loss
from ..nn import Dropout, Module
from ..nn.normalization import dropout_noise, host_noise
from ..optim.base import Transform
from ..optim.optimizers import update_trainable
from .step import StepResult, TrainStep, batch_value_and_grad
from .strategy import Strategy

__all__ = ["CompiledStep"]


class CompiledStep(TrainStep):
    """The training step of ``model`` compiled with ``jax.jit``; call it with a batch.

    It is a :class:`~portnn.train.step.TrainStep` (same arguments, same results within
    float rounding) whose forward, backward and update run as one XLA program. A
    step that is not finite changes nothing (``check_finite``), decided inside the
    program; ``finite`` is then one host read.
    """

    def __init__(
        self, model: Module, loss: Loss | str, optimizer: Transform | str, *,
        check_finite: bool = True, strategy: Strategy | None = None,
    ) -> None:
        if not isinstance(model, Module) or model.backend != "jax":
            raise ValueError(
                f"jit=True compiles the step with jax.jit and needs the model on the 'jax' backend, "
                f"not {str(getattr(model, 'backend', None))!r}; move it with model.to('jax')"
            )
        import jax  # the compiled step is an engine at the edge: jax.jit and its tree utilities, only here

        super().__init__(model, loss, optimizer, check_finite=check_finite, strategy=strategy)
        self._jax = jax
        self._has_dropout = any(isinstance(m, Dropout) and m.p > 0.0 for m in model.modules())
        self._noise_plan: dict[Any, list[tuple[Dropout, tuple[int, ...]]]] = {}
        self._shared_out = type(self.strategy) is not Strategy
        if self._shared_out:
            self._grads_program = jax.jit(self._pure_gradients)
            self._update_program = jax.jit(self._pure_update)
        else:
            self._compiled = jax.jit(self._pure_step)
        self._steps: int | None = None  # the step count on the host, for the schedule

    # ------------------------------------------------------------ the pure functions
    def _pure_gradients(self, params, buffers, noise, xb, yb, wb):
        model = self.model
        saved_params, saved_buffers = model.parameters(), model.buffers()
        try:
            self._set(params, buffers)
            draws = iter(noise)
            with dropout_noise(lambda layer, shape: next(draws)):
                value, grads, pred = batch_value_and_grad(model, self.loss, xb, yb, self.penalized, wb)
            new_buffers = dict(model.buffers())
        finally:
            self._set(saved_params, saved_buffers)
        return value, grads, pred, new_buffers

    def _pure_update(self, params, buffers, new_buffers, grads, opt_state, value):
        xp = self.model.xp
        trainable = list(self.model.parameters(trainable_only=True))
        new_params, new_state = update_trainable(self.optimizer, dict(params), trainable, grads, opt_state, xp, prepared=True)
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
        return new_params, new_buffers, new_state, finite

    def _pure_step(self, params, buffers, opt_state, noise, xb, yb, wb):
        value, grads, pred, new_buffers = self._pure_gradients(params, buffers, noise, xb, yb, wb)
        new_params, new_buffers, new_state, finite = self._pure_update(params, buffers, new_buffers, grads, opt_state, value)
        return new_params, new_buffers, new_state, value, pred, finite

    def _set(self, params: dict[str, Any], buffers: dict[str, Any]) -> None:
        self.model.assign_parameters(params)
        self.model.assign_buffers(buffers)

    # ------------------------------------------------------------ per step, on the host
    def _noise(self, xb: Any, yb: Any, wb: Any, args: tuple) -> list[Any]:
        """Dropout's draws for this batch, in the order the forward pass asks for them,
        drawn on the host from the strategy's source (each layer's generator)."""
        if not self._has_dropout:
            return []
        key = tuple(tuple(x.shape) for x in xb) if isinstance(xb, tuple) else tuple(xb.shape)
        if key not in self._noise_plan:
            # trace the forward once abstractly to learn which layer draws what shape, in order
            plan: list[tuple[Dropout, tuple[int, ...]]] = []
            dtype = _dtype(xb)

            def record(layer, shape):
                plan.append((layer, tuple(shape)))
                return self._jax.numpy.zeros(shape, dtype=dtype)

            with dropout_noise(record):
                self._jax.eval_shape(lambda p, b, x, y, w: self._pure_forward(p, b, x, y, w), *args[:2], xb, yb, wb)
            self._noise_plan[key] = plan
        source = self.strategy.noise or host_noise
        backend = self.model.backend
        return [backend.asarray(source(layer, shape), _dtype(xb)) for layer, shape in self._noise_plan[key]]

    def _pure_forward(self, params, buffers, xb, yb, wb):
        """The forward pass alone, for :meth:`_noise`'s abstract trace (the enclosing noise block draws)."""
        saved_params, saved_buffers = self.model.parameters(), self.model.buffers()
        try:
            self._set(params, buffers)
            return self.model.apply(xb, True)[0]
        finally:
            self._set(saved_params, saved_buffers)

    def run(self, xb: Any, yb: Any, wb: Any = None) -> StepResult:
        model = self.model
        state = model.optimizer_state
        if self._steps is None:
            self._steps = int(state["step"])
        # the schedule's rate on the host; the numbers go in as arrays so that no step compiles anew
        state = self.optimizer.prepare({**state, "step": self._steps})
        host_lr = state.get("lr")  # the state keeps the rate as the host computed it
        state = _as_arrays(state, model.xp, _dtype(xb))
        params, buffers = dict(model.parameters()), dict(model.buffers())
        noise = self._noise(xb, yb, wb, (params, buffers))
        if self._shared_out:
            new_params, new_buffers, new_state, value, pred, finite = self._shared_step(params, buffers, state, noise, xb, yb, wb)
        else:
            new_params, new_buffers, new_state, value, pred, finite = self._compiled(params, buffers, state, noise, xb, yb, wb)
        ok = None if finite is None else bool(finite)
        with model.weights_lock.writing():
            if ok is not False:
                self._set(new_params, new_buffers)
                model.optimizer_state = new_state if host_lr is None else {**new_state, "lr": host_lr}
                self._steps += 1
            else:
                model.optimizer_state = state if host_lr is None else {**state, "lr": host_lr}
        return StepResult(value, pred, ok)

    def _shared_step(self, params, buffers, state, noise, xb, yb, wb):
        """Gradients compiled, averaged by the strategy on the host, the update compiled."""
        computed: dict[str, Any] = {}

        def compute():
            value, grads, pred, computed["buffers"] = self._grads_program(params, buffers, noise, xb, yb, wb)
            return value, grads, pred

        with dropout_noise(self.strategy.noise or host_noise):  # a share with no rows runs eagerly
            value, grads, pred = self.strategy.value_and_grad(compute, self.model, xb)
        new_buffers = computed.get("buffers", dict(self.model.buffers()))
        new_params, new_buffers, new_state, finite = self._update_program(params, buffers, new_buffers, grads, state, value)
        return new_params, new_buffers, new_state, value, pred, finite

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
