"""What ``fit`` shows while it trains: a tqdm bar per epoch, a line per epoch, or nothing.

``verbose="auto"`` (the default) and ``1`` draw a bar when stdout is a terminal
and tqdm is installed, and print one line per epoch otherwise; ``2`` always
prints lines; ``0`` is silent. The running loss is read from the device only
when the bar redraws (a few times a second), never once per step.

Numbers are never hidden by the terminal's width: a bar that does not fit
beside them is dropped first (then the rate, the times and the sample counts),
and the line that ends each epoch holds every metric, wrapped onto more lines
on a narrow terminal rather than cut.
"""

from __future__ import annotations

import numbers
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Progress"]

VERBOSE_CHOICES = (0, 1, 2, "auto")
_REFRESH_SECONDS = 0.5
_MIN_BAR = 10  # a bar narrower than this tells nothing: drop it instead
_SLACK = 2  # the counts and times grow a little between two layout choices

# the bar's layouts, richest first; the first whose text fits the terminal is drawn
_LAYOUTS = (
    "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]",
    "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]",
    "{desc} {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}]",
    "{desc} {percentage:3.0f}% {n_fmt}/{total_fmt}",
    "{desc} {percentage:3.0f}%",
)


def _pieces(logs: dict[str, Any]) -> list[str]:
    """``"name value"`` for every number in ``logs`` (NumPy scalars included)."""
    return [
        f"{k} {float(v):.4g}"
        for k, v in logs.items()
        if isinstance(v, numbers.Real) and not isinstance(v, bool)
    ]


def _format(logs: dict[str, Any]) -> str:
    return " - ".join(_pieces(logs))


def terminal_width() -> int:
    """Columns of the terminal (``$COLUMNS`` first, 80 when it cannot be told)."""
    return shutil.get_terminal_size((80, 24)).columns


def wrap(pieces: list[str], width: int, indent: str = "  ") -> str:
    """``pieces`` joined by ``" - "`` into lines of at most ``width`` characters; a piece is
    never split (one longer than the width gets a line of its own)."""
    lines: list[str] = []
    line = ""
    for piece in pieces:
        candidate = f"{line} - {piece}" if line else piece
        if line and len(candidate) + len(" -") > width:  # room for the " -" that ends a wrapped line
            lines.append(line + " -")
            line = indent + piece
        else:
            line = candidate
    lines.append(line)
    return "\n".join(lines)


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
            width = terminal_width()
            self._bar = self._tqdm(
                total=self.n_samples,
                desc=f"epoch {epoch + 1}/{self.epochs}",
                unit="sample",
                unit_scale=True,
                leave=False,  # end_epoch prints the epoch's line, with every metric, in its place
                file=sys.stdout,
                ncols=width - 1,
                bar_format=_LAYOUTS[-1],
            )
            self._fit_layout([], width)

    def advance(self, n: int, running: Callable[[], dict[str, float]]) -> None:
        """``n`` more samples done; ``running()`` (which reads the device) is called rarely."""
        if self._bar is None:
            return
        now = time.perf_counter()
        if now - self._last_refresh > _REFRESH_SECONDS:
            self._fit_layout(_pieces(running()), terminal_width())
            self._last_refresh = now
        self._bar.update(n)

    def end_epoch(self, epoch: int, logs: dict[str, Any]) -> float:
        seconds = time.perf_counter() - self._start
        if self.mode is None:
            return seconds
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        rate = self.n_samples / seconds if seconds > 0 else float("inf")
        pieces = [f"epoch {epoch + 1}/{self.epochs}", *_pieces(logs), f"{seconds:.2f}s", f"{rate:,.0f} samples/s"]
        # a file or pipe gets one line per epoch; a terminal gets it wrapped, never cut
        text = wrap(pieces, terminal_width() - 1) if self.mode == "bar" else " - ".join(pieces)
        print(text, file=sys.stdout, flush=True)
        return seconds

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _fit_layout(self, pieces: list[str], width: int) -> None:
        """Draw the richest layout whose text fits ``width`` beside the numbers; if even the
        shortest does not, as many numbers as fit (the epoch's line shows them all)."""
        bar = self._bar
        room = width - 1 - _SLACK
        fields = dict(bar.format_dict, ncols=None)
        chosen = None
        for layout in _LAYOUTS:
            fmt = _with_numbers(layout, pieces)
            length = len(bar.format_meter(**{**fields, "bar_format": fmt.replace("{bar}", "")}))
            if length + (_MIN_BAR if "{bar}" in layout else 0) <= room:
                chosen = fmt
                break
        while chosen is None and pieces:
            pieces = pieces[:-1]
            fmt = _with_numbers(_LAYOUTS[-1], pieces)
            if len(bar.format_meter(**{**fields, "bar_format": fmt})) <= room or not pieces:
                chosen = fmt
        bar.ncols = width - 1  # a line as wide as the terminal wraps on some terminals
        bar.bar_format = chosen if chosen is not None else _LAYOUTS[-1]


def _with_numbers(layout: str, pieces: list[str]) -> str:
    """``layout`` followed by the numbers, braces escaped (they are format fields to tqdm)."""
    if not pieces:
        return layout
    numbers_text = " - ".join(pieces).replace("{", "{{").replace("}", "}}")
    return f"{layout} - {numbers_text}"
