"""A readers-writer lock: inference in many threads at once, or one training step's writes.

``fit`` writes a model's parameters (in place, where the backend allows) inside
``writing()``; ``predict`` reads them inside ``reading()``, so a prediction sees
the weights of one whole step while predictions in several threads still run
side by side. A waiting writer holds back new readers, so a busy server never
starves training. A thread may read while it writes or reads already (a
callback or a custom optimizer that predicts does not deadlock).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["ReadWriteLock"]


class ReadWriteLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None
        self._writers_waiting = 0
        self._mine = threading.local()  # this thread's read depth

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        mine = self._mine
        depth = getattr(mine, "depth", 0)
        if depth or self._writer == threading.get_ident():
            mine.depth = depth + 1  # already inside: never wait on ourselves
            try:
                yield
            finally:
                mine.depth = depth
            return
        with self._cond:
            while self._writer is not None or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        mine.depth = 1
        try:
            yield
        finally:
            mine.depth = 0
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        me = threading.get_ident()
        if self._writer == me:  # nested: already exclusive
            yield
            return
        with self._cond:
            self._writers_waiting += 1
            # our own reads (a reader that starts a step) do not block us
            while self._writer is not None or self._readers - getattr(self._mine, "depth", 0):
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = me
        try:
            yield
        finally:
            with self._cond:
                self._writer = None
                self._cond.notify_all()
