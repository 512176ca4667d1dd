"""How a training step's work is shared out: the strategy plugged into ``fit``'s loop.

The loop asks its strategy for the epoch's batches, has it compute every step's
loss and gradients, and tells it when an epoch and the run end; the strategy of
one process (:class:`Strategy` itself) passes everything straight through.
:class:`~portnn.DataParallel` (``fit(..., distributed=True)``) is the other: each
MPI rank computes its share of every batch and the gradients are averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["Strategy"]


class Strategy:
    """One process trains on every batch; the base of the other strategies.

    ``noise`` is where Dropout's draws come from during a step (None: each layer's
    own generator); a strategy that splits a batch gives each share its rows of
    the whole batch's mask.
    """

    noise: Callable[[Any, tuple[int, ...]], Any] | None = None
    interrupt: Any = None

    def verbose(self, verbose: Any) -> Any:
        """The progress output this process shows (every process but one is silent)."""
        return verbose

    def agree(self, model: Any, **settings: Any) -> None:
        """Check that every process trains the same model on the same data (nothing to check here)."""

    def start(self, model: Any, base_seed: int, callbacks: Sequence[Any], interrupt: Any) -> tuple[int, list[Any]]:
        """The run begins: returns ``(seed of the shuffling orders, callbacks this process runs)``."""
        self.interrupt = interrupt
        return base_seed, list(callbacks)

    def batches(self, batcher: Any, order: Any, batch_size: int) -> Iterator[tuple[Any, Any, int]]:
        """The epoch's batches as ``(xb, yb, samples in the whole batch)``."""
        return batcher.batches(order, batch_size)

    def batch_weight(self, wb: Any, xp: Any) -> Any:
        """The sum of the sample weights of the whole batch, of which ``wb`` is this process's share."""
        return xp.sum(wb)

    def value_and_grad(self, compute: Callable[[], tuple[Any, dict[str, Any], Any]], model: Any, xb: Any) -> tuple[Any, dict[str, Any], Any]:
        """The step's ``(loss, gradients, predictions)``; ``compute()`` gives this process's."""
        return compute()

    def end_epoch(self, model: Any, metrics: Sequence[Any]) -> None:
        """After an epoch's last step (combine what the processes computed)."""

    def finish(self) -> None:
        """The run ended, normally or not."""
