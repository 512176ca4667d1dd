"""The progress display never hides a metric on a narrow terminal: the bar goes first, and
the line that ends each epoch has every metric (wrapped, never cut), with tqdm or without."""

from __future__ import annotations

import io
import re
import sys

import numpy as np
import pytest

import portnn as pn
from portnn.train import progress

LOGS = {"loss": 2.0791234, "accuracy": 0.91234, "val_loss": 2.3456, "val_accuracy": 0.8765, "lr": 0.01}


class _Terminal(io.StringIO):
    """A stdout that says it is a terminal, so fit draws its bar."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal(monkeypatch):
    def at(columns: int) -> _Terminal:
        monkeypatch.setenv("COLUMNS", str(columns))
        monkeypatch.setenv("LINES", "24")
        out = _Terminal()
        monkeypatch.setattr(sys, "stdout", out)
        return out

    return at


def _frames(text: str) -> list[str]:
    """What the terminal showed: every redraw (after a carriage return) and every line."""
    return [frame for frame in re.split(r"[\r\n]", text) if frame.strip()]


def _assert_every_metric(text: str, logs: dict) -> None:
    shown = " ".join(text.split())  # the wrapped lines read as one
    for name, value in logs.items():
        assert f"{name} {value:.4g}" in shown, f"{name} {value:.4g} missing from {text!r}"


def _fit(rng, verbose):
    X = rng.normal(size=(240, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    model = pn.Sequential(pn.Dense(4, 8, seed=0), pn.Tanh(), pn.Dense(8, 2, seed=1))
    history = model.fit(
        X[:180], y[:180], loss="cross_entropy", metrics=["accuracy", "f1"], epochs=2, batch_size=30,
        validation_data=(X[180:], y[180:]), seed=0, verbose=verbose,
    )
    return {name: values[-1] for name, values in history.history.items()}


@pytest.mark.parametrize("columns", [80, 60, 40])
def test_fit_on_a_terminal_shows_every_metric(rng, terminal, columns):
    pytest.importorskip("tqdm")
    out = terminal(columns)
    logs = _fit(rng, verbose=1)
    assert {"val_loss", "val_accuracy", "val_f1"} <= set(logs)
    _assert_every_metric(out.getvalue(), logs)
    for frame in _frames(out.getvalue()):
        assert len(frame) < columns, f"a line wider than the terminal: {frame!r}"


@pytest.mark.parametrize("columns", [80, 60, 40])
def test_lines_without_tqdm_show_every_metric(rng, terminal, monkeypatch, columns):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import tqdm.auto raises ImportError
    out = terminal(columns)
    logs = _fit(rng, verbose=1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2")
    _assert_every_metric(lines[1], logs)


@pytest.mark.parametrize("columns", [80, 60, 40])
def test_the_bar_goes_before_the_numbers(terminal, monkeypatch, columns):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(progress, "_REFRESH_SECONDS", -1.0)  # a new layout at every step
    out = terminal(columns)
    bar = progress.Progress(1, 3, 1000)
    assert bar.mode == "bar"
    bar.start_epoch(0)
    for _ in range(10):
        bar.advance(100, lambda: {"loss": 2.0791234})
        bar._bar.refresh()
    running = out.getvalue()
    bar.end_epoch(0, LOGS)
    frames = [f for f in _frames(running) if "loss" in f]
    assert frames, f"the running loss never showed: {running!r}"
    assert all("loss 2.079" in f and len(f) < columns for f in frames)
    assert all(("|" in f) == (columns >= 80) for f in frames)  # no room for a bar below 80 columns
    final = out.getvalue()[len(running):]
    _assert_every_metric(final, LOGS)
    assert all(len(line) < columns for line in final.splitlines())


def test_wrap_keeps_each_number_whole():
    pieces = ["epoch 1/3", *(f"metric_{i} 0.{i}234" for i in range(8))]
    text = progress.wrap(pieces, 30)
    assert all(len(line) <= 30 for line in text.splitlines())
    assert " ".join(text.split()).replace(" -", "") == " ".join(pieces)
    assert progress.wrap(["a_name_longer_than_the_width 1"], 10) == "a_name_longer_than_the_width 1"
