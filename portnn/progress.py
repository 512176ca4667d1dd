"""What ``fit`` shows while it trains: a tqdm bar per epoch, a line per epoch, or nothing.

``verbose="auto"`` (the default) and ``1`` draw a bar when stdout is a terminal
and tqdm is installed, and print one line per epoch otherwise; ``2`` always
prints lines; ``0`` is silent. The running loss is read from the device only
when the bar redraws (a few times a second), never once per step.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Progress"]

VERBOSE_CHOICES = (0, 1, 2, "auto")


def _format(logs: dict[str, Any]) -> str:
    return " - ".join(f"{k} {v:.4g}" for k, v in logs.items() if isinstance(v, float))


class Progress:
    def __init__(self, verbose: Any, epochs: int, n_samples: int) -> None:
        if verbose not in VERBOSE_CHOICES or isinstance(verbose, bool):
            raise ValueError(f"verbose must be one of {VERBOSE_CHOICES}, got {verbose!r}")
        self.epochs = epochs
        self.n_samples = n_samples
        self.mode = None if verbose == 0 else "line"
        self._tqdm: Any = None
        if verbose in (1, "auto") and sys.stdout.isatty():
            try:
                from tqdm.auto import tqdm

                self._tqdm = tqdm
                self.mode = "bar"
            except ImportError:
                pass
        self._bar: Any = None

    def start_epoch(self, epoch: int) -> None:
        self._start = time.perf_counter()
        self._last_refresh = self._start
        if self.mode == "bar":
            self._bar = self._tqdm(
                total=self.n_samples,
                desc=f"epoch {epoch + 1}/{self.epochs}",
                unit="sample",
                unit_scale=True,
                leave=True,
                file=sys.stdout,
                dynamic_ncols=True,
            )

    def advance(self, n: int, running: Callable[[], dict[str, float]]) -> None:
        """``n`` more samples done; ``running()`` (which reads the device) is called rarely."""
        if self._bar is None:
            return
        self._bar.update(n)
        now = time.perf_counter()
        if now - self._last_refresh > 0.5:
            self._bar.set_postfix_str(_format(running()), refresh=False)
            self._last_refresh = now

    def end_epoch(self, epoch: int, logs: dict[str, Any]) -> float:
        seconds = time.perf_counter() - self._start
        if self._bar is not None:
            self._bar.set_postfix_str(_format(logs), refresh=False)
            self._bar.close()
            self._bar = None
        elif self.mode == "line":
            rate = self.n_samples / seconds if seconds > 0 else float("inf")
            print(
                f"epoch {epoch + 1}/{self.epochs} - {_format(logs)} - {seconds:.2f}s - {rate:,.0f} samples/s",
                flush=True,
            )
        return seconds

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
