"""Deferring Ctrl-C (SIGINT) and SIGTERM to a step boundary.

While ``fit`` runs, these signals only set a flag; the loop finishes the step
it is in, so the parameters and optimizer state are never half updated, and
then hands the signal back to the handler that was there before (for Ctrl-C:
``KeyboardInterrupt``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Deferred:
    def __init__(self) -> None:
        self.received: int | None = None

    def _handler(self, signum: int, frame: object) -> None:
        self.received = signum


@contextlib.contextmanager
def deferred_signals() -> Iterator[Deferred]:
    """Record SIGINT/SIGTERM instead of acting on them (main thread only; elsewhere a no-op)."""
    state = Deferred()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    for s in _SIGNALS:
        signal.signal(s, state._handler)
    try:
        yield state
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def redeliver(signum: int) -> None:
    """Send ``signum`` again, now to the handlers that were in place before ``fit``."""
    os.kill(os.getpid(), signum)
