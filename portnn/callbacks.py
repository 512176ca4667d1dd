"""Callbacks: code that ``fit`` calls at the start and end of training and of each epoch.

``logs`` is a dict of Python floats: ``loss`` and each metric, ``val_`` versions
when there is validation data, and ``lr``. Setting ``model.stop_training = True``
ends training after the current epoch.
"""

from __future__ import annotations

import collections
import csv
import errno
import json
import math
import numbers
import os
from collections.abc import Callable
from typing import Any

from ._checks import count
from .backend import to_numpy

__all__ = [
    "Callback",
    "CSVLogger",
    "EarlyStopping",
    "JSONLogger",
    "LambdaCallback",
    "LearningRateScheduler",
    "ModelCheckpoint",
]


class Callback:
    """Base class; override the hooks you need. ``self.model`` is set by ``fit``."""

    model: Any = None
    params: dict[str, Any] | None = None

    def set_model(self, model: Any) -> None:
        self.model = model

    def set_params(self, params: dict[str, Any]) -> None:
        """What ``fit`` was asked for: ``epochs``, ``initial_epoch``, ``steps`` (batches per
        epoch) and ``batch_size``, as Keras's ``Callback.params``."""
        self.params = params

    def on_train_begin(self, logs: dict[str, float]) -> None: ...

    def on_epoch_begin(self, epoch: int, logs: dict[str, float]) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...

    def on_train_end(self, logs: dict[str, float]) -> None: ...

    def on_interrupt(self, logs: dict[str, float]) -> None:
        """Ctrl-C or SIGTERM stopped training; the model is at the last completed step."""

    def required_logs(self) -> tuple[str, ...]:
        """Keys this callback reads from ``logs``; ``fit`` checks them before training."""
        return ()


def _path(name: str, value: Any) -> str:
    """``value`` as a file name (str or os.PathLike), or a TypeError naming the argument."""
    if isinstance(value, bytes):
        return os.fsdecode(value)
    try:
        return os.fspath(value)
    except TypeError:
        raise TypeError(f"{name} must be a file name (str or os.PathLike), got {type(value).__name__}") from None


def _hook(name: str, value: Any) -> Any:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable (or None), got {type(value).__name__}")
    return value


def _mode(monitor: str, mode: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    lower_is_better = ("loss", "mse", "mae", "error")
    return "min" if any(word in monitor for word in lower_is_better) else "max"


class _Monitor(Callback):
    """Tracks the best value of one logged quantity."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0) -> None:
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be the name of a logged value, got {type(monitor).__name__}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, numbers.Real):
            raise TypeError(f"min_delta must be a number, got {type(min_delta).__name__}")
        if not math.isfinite(min_delta):
            raise ValueError(f"min_delta must be a finite number, got {min_delta!r}")
        self.monitor = monitor
        self.mode = _mode(monitor, mode)
        self.min_delta = abs(float(min_delta))
        self.best = math.inf if self.mode == "min" else -math.inf

    def required_logs(self) -> tuple[str, ...]:
        return (self.monitor,)

    def _current(self, logs: dict[str, float]) -> float:
        if self.monitor not in logs:
            known = ", ".join(sorted(logs))
            raise KeyError(
                f"{type(self).__name__} monitors {self.monitor!r}, which fit does not log "
                f"(logged: {known}); pass validation data or metrics, or monitor another key"
            )
        return float(logs[self.monitor])

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


def snapshot(model: Any) -> dict[str, dict[str, Any]]:
    """Copies of the model's parameters and buffers (on its backend)."""
    xp = model.xp
    return {
        "parameters": {k: xp.asarray(v, copy=True) for k, v in model.parameters().items()},
        "buffers": {k: xp.asarray(v, copy=True) for k, v in model.buffers().items()},
    }


def restore(model: Any, saved: dict[str, dict[str, Any]]) -> None:
    model.load_parameters(saved["parameters"])
    if saved["buffers"]:
        model.load_buffers(saved["buffers"])


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved for ``patience`` epochs.

    With ``restore_best_weights=True`` the model ends with the weights of its
    best epoch.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 0,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best_weights: bool = False,
    ) -> None:
        super().__init__(monitor, mode, min_delta)
        self.patience = count("patience", patience, minimum=0)
        self.restore_best_weights = bool(restore_best_weights)

    def on_train_begin(self, logs: dict[str, float]) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = 0
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self._best_weights: dict[str, Any] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        value = self._current(logs)
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self._best_weights = snapshot(self.model)
            return
        self.wait += 1
        if self.wait > self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, float]) -> None:
        if self.restore_best_weights and self._best_weights is not None:
            restore(self.model, self._best_weights)


class ModelCheckpoint(_Monitor):
    """Save the model (``model.save``) after each epoch, or only when ``monitor`` improves.

    ``path`` may hold ``{epoch}`` and any logged key, e.g. ``"ckpt-{epoch:03d}.safetensors"``.
    Saving is atomic: an interrupted save leaves the previous file intact.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        monitor: str = "val_loss",
        save_best_only: bool = False,
        mode: str = "auto",
    ) -> None:
        super().__init__(monitor, mode)
        self.path = _path("path", path)
        self.save_best_only = bool(save_best_only)
        self.last_path: str | None = None
        self._file_name(1, {})  # a bad template fails here, not after an epoch of training

    def on_train_begin(self, logs: dict[str, float]) -> None:
        """Check that the checkpoint's folder exists before the first training step
        (unless the folder itself is a template, such as ``"run-{epoch}/model.safetensors"``)."""
        if "{" in os.path.dirname(self.path):
            return
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise FileNotFoundError(
                errno.ENOENT, f"ModelCheckpoint cannot save {self.path!r}: no such directory", directory
            )

    def _file_name(self, epoch: int, logs: dict[str, float]) -> str:
        fields = collections.defaultdict(lambda: math.nan, logs)
        fields["epoch"] = epoch
        try:
            return self.path.format_map(fields)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"ModelCheckpoint path {self.path!r} is not a valid template ({e}); it may hold "
                "{epoch} (an int) and logged values such as {val_loss:.4f} (floats)"
            ) from None

    def required_logs(self) -> tuple[str, ...]:
        return (self.monitor,) if self.save_best_only else ()

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.save_best_only:
            value = self._current(logs)
            if not self._improved(value):
                return
            self.best = value
        self._save(epoch + 1, logs)

    def on_interrupt(self, logs: dict[str, float]) -> None:
        """Write a final checkpoint of the model as it stands (whatever ``save_best_only`` says).

        It is named after the epoch in progress (``{epoch}`` counts from 1, as after each
        epoch), so it never replaces the file of the last completed epoch, and it records
        the step it stopped at (``model.resume_point``): ``fit(..., initial_epoch=e)`` on
        the loaded model continues from that step.
        """
        point = getattr(self.model, "resume_point", None)
        history = self.model.history
        epoch = point["epoch"] + 1 if point else (history.epoch[-1] + 1 if history.epoch else 0)
        self._save(epoch, logs)

    def _save(self, epoch: int, logs: dict[str, float]) -> None:
        self.last_path = self._file_name(epoch, logs)
        self.model.save(self.last_path)


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of each epoch to ``schedule(epoch, lr)``."""

    def __init__(self, schedule: Callable[[int, float], float]) -> None:
        if not callable(schedule):
            raise TypeError(f"schedule must be callable as schedule(epoch, lr), got {type(schedule).__name__}")
        self.schedule = schedule

    def on_epoch_begin(self, epoch: int, logs: dict[str, float]) -> None:
        lr = float(self.schedule(epoch, self.model.optimizer.lr))
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"the schedule returned lr={lr!r} for epoch {epoch}; it must be > 0")
        self.model.optimizer.lr = lr


class CSVLogger(Callback):
    """Append one row per epoch (``epoch`` and every logged value) to a CSV file."""

    def __init__(self, path: str | os.PathLike, append: bool = False) -> None:
        self.path = _path("path", path)
        self.append = bool(append)

    def on_train_begin(self, logs: dict[str, float]) -> None:
        self._keys: list[str] | None = None
        if not self.append and os.path.exists(self.path):
            os.remove(self.path)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        keys = self._keys or sorted(logs)
        new_file = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(["epoch", *keys])
            writer.writerow([epoch, *(logs.get(k, "") for k in keys)])
        self._keys = keys


class JSONLogger(Callback):
    """Append one JSON object per epoch (JSON Lines) to a file."""

    def __init__(self, path: str | os.PathLike, append: bool = False) -> None:
        self.path = _path("path", path)
        self.append = bool(append)

    def on_train_begin(self, logs: dict[str, float]) -> None:
        if not self.append and os.path.exists(self.path):
            os.remove(self.path)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"epoch": epoch, **{k: _plain(v) for k, v in logs.items()}}) + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return to_numpy(value).tolist()


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``."""

    def __init__(
        self,
        on_train_begin: Callable[[dict], None] | None = None,
        on_epoch_begin: Callable[[int, dict], None] | None = None,
        on_epoch_end: Callable[[int, dict], None] | None = None,
        on_train_end: Callable[[dict], None] | None = None,
    ) -> None:
        self._hooks = {
            "on_train_begin": _hook("on_train_begin", on_train_begin),
            "on_epoch_begin": _hook("on_epoch_begin", on_epoch_begin),
            "on_epoch_end": _hook("on_epoch_end", on_epoch_end),
            "on_train_end": _hook("on_train_end", on_train_end),
        }

    def on_train_begin(self, logs: dict[str, float]) -> None:
        if self._hooks["on_train_begin"]:
            self._hooks["on_train_begin"](logs)

    def on_epoch_begin(self, epoch: int, logs: dict[str, float]) -> None:
        if self._hooks["on_epoch_begin"]:
            self._hooks["on_epoch_begin"](epoch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self._hooks["on_epoch_end"]:
            self._hooks["on_epoch_end"](epoch, logs)

    def on_train_end(self, logs: dict[str, float]) -> None:
        if self._hooks["on_train_end"]:
            self._hooks["on_train_end"](logs)
