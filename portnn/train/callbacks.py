"""Callbacks: code that ``fit`` calls at the start and end of training, of each epoch and,
for callbacks that ask for them, of each batch (Keras's hooks and their order).

``logs`` is a dict of Python floats: ``loss`` and each metric, ``val_`` versions
when there is validation data, and ``lr``. Setting ``model.stop_training = True``
ends training after the current epoch.

Batch hooks cost a host read per batch (the logs are floats), so the loops call
them only for callbacks that implement them: before its loop, ``fit`` (and
``evaluate``, ``predict``) asks :func:`needs_batch_hooks` once per kind
(``"train"``, ``"test"``, ``"predict"``) and, where it is False, builds no batch
logs and makes no batch calls. The contract for the loops:

* ``on_train_batch_begin(batch, logs)`` / ``on_train_batch_end(batch, logs)``: ``batch``
  is the batch's index within the epoch, from 0 (a resumed epoch continues its count);
  the end logs hold ``loss``, the mean loss of the epoch's batches so far (as Keras
  reports it), and ``size``, the batch's rows;
* ``on_test_begin/end(logs)`` and ``on_test_batch_begin/end(batch, logs)`` around
  ``evaluate`` and the validation pass at each epoch's end;
* ``on_predict_begin/end(logs)`` and ``on_predict_batch_begin/end(batch, logs)`` around
  ``predict``.
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

from .._checks import count
from ..backend import to_numpy
from ..optim.base import learning_rate, with_learning_rate

__all__ = [
    "Callback",
    "CSVLogger",
    "EarlyStopping",
    "JSONLogger",
    "LambdaCallback",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "needs_batch_hooks",
]

# hook names by loop: a callback list needs per-batch calls of a kind if one of these is implemented
BATCH_HOOKS: dict[str, tuple[str, ...]] = {
    "train": ("on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end"),
    "test": ("on_test_batch_begin", "on_test_batch_end"),
    "predict": ("on_predict_batch_begin", "on_predict_batch_end"),
}


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

    def on_train_batch_begin(self, batch: int, logs: dict[str, float]) -> None:
        """Before training batch ``batch`` (its index within the epoch, from 0)."""
        self.on_batch_begin(batch, logs)

    def on_train_batch_end(self, batch: int, logs: dict[str, float]) -> None:
        """After training batch ``batch``; ``logs["loss"]``: the epoch's mean loss so far."""
        self.on_batch_end(batch, logs)

    def on_batch_begin(self, batch: int, logs: dict[str, float]) -> None:
        """Keras's older name for :meth:`on_train_batch_begin` (called by it)."""

    def on_batch_end(self, batch: int, logs: dict[str, float]) -> None:
        """Keras's older name for :meth:`on_train_batch_end` (called by it)."""

    def on_test_begin(self, logs: dict[str, float]) -> None: ...

    def on_test_end(self, logs: dict[str, float]) -> None: ...

    def on_test_batch_begin(self, batch: int, logs: dict[str, float]) -> None: ...

    def on_test_batch_end(self, batch: int, logs: dict[str, float]) -> None: ...

    def on_predict_begin(self, logs: dict[str, float]) -> None: ...

    def on_predict_end(self, logs: dict[str, float]) -> None: ...

    def on_predict_batch_begin(self, batch: int, logs: dict[str, float]) -> None: ...

    def on_predict_batch_end(self, batch: int, logs: dict[str, float]) -> None: ...

    def on_interrupt(self, logs: dict[str, float]) -> None:
        """Ctrl-C or SIGTERM stopped training; the model is at the last completed step."""

    def implements(self, hook: str) -> bool:
        """Whether this callback does something in ``hook`` (a method name such as
        ``"on_train_batch_end"``): its class or the instance replaces Callback's own."""
        base = getattr(Callback, hook, None)
        if base is None:
            raise ValueError(f"{hook!r} is not a callback hook")
        mine = getattr(self, hook)
        return getattr(mine, "__func__", mine) is not base

    def required_logs(self) -> tuple[str, ...]:
        """Keys this callback reads from ``logs``; ``fit`` checks them before training."""
        return ()


def needs_batch_hooks(callbacks: Any, kind: str = "train") -> bool:
    """Whether any callback implements a batch hook of ``kind`` ("train", "test" or
    "predict"); where not, the loop makes no per-batch calls and builds no batch logs."""
    if kind not in BATCH_HOOKS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, BATCH_HOOKS))}; got {kind!r}")
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    return any(cb.implements(hook) for cb in callbacks or () for hook in BATCH_HOOKS[kind])


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
    """Stop when ``monitor`` has not improved for ``patience`` epochs: Keras's rule.

    From epoch ``start_from_epoch`` on, each epoch adds one to a wait count; a value
    better than the best so far by more than ``min_delta`` becomes the best and, if
    it also beats ``baseline`` (when given), sets the count back to 0. After an
    epoch that is no improvement, training stops once the count reaches ``patience``
    (never at epoch 0). So ``patience=3`` on ``[1, 2, 2, 2, ...]`` stops at epoch 3,
    after three epochs without improvement; ``patience`` 0 and 1 both stop after the
    first. If no epoch beats ``baseline``, training runs ``patience`` epochs.

    With ``restore_best_weights=True`` the model ends with the weights of its best
    epoch (the first monitored epoch's when none improved), whether or not training
    stopped early. ``verbose=1`` prints when it stops and restores.
    ``stopped_epoch`` (None if it did not stop) and ``best_epoch`` count from 0.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 0,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best_weights: bool = False,
        *,
        baseline: float | None = None,
        start_from_epoch: int = 0,
        verbose: int = 0,
    ) -> None:
        super().__init__(monitor, mode, min_delta)
        self.patience = count("patience", patience, minimum=0)
        self.restore_best_weights = bool(restore_best_weights)
        if baseline is not None:
            if isinstance(baseline, bool) or not isinstance(baseline, numbers.Real):
                raise TypeError(f"baseline must be a number or None, got {type(baseline).__name__}")
            if not math.isfinite(baseline):
                raise ValueError(f"baseline must be a finite number, got {baseline!r}")
            baseline = float(baseline)
        self.baseline = baseline
        self.start_from_epoch = count("start_from_epoch", start_from_epoch, minimum=0)
        self.verbose = count("verbose", verbose, minimum=0)
        self.on_train_begin({})

    def on_train_begin(self, logs: dict[str, float]) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = 0
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self._best_weights: dict[str, Any] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        value = self._current(logs)
        if epoch < self.start_from_epoch:
            return  # warm-up: not monitored
        if self.restore_best_weights and self._best_weights is None:
            self._best_weights, self.best_epoch = snapshot(self.model), epoch
        self.wait += 1
        if self._improved(value):
            self.best, self.best_epoch = value, epoch
            if self.restore_best_weights:
                self._best_weights = snapshot(self.model)
            if self.baseline is None or self._beats(value, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def _beats(self, value: float, reference: float) -> bool:
        if self.mode == "min":
            return value < reference - self.min_delta
        return value > reference + self.min_delta

    def _improved(self, value: float) -> bool:
        return self._beats(value, self.best)

    def on_train_end(self, logs: dict[str, float]) -> None:
        if self.stopped_epoch is not None and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self._best_weights is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
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
        point = self.model.resume_point
        history = self.model.history
        epoch = point["epoch"] + 1 if point else (history.epoch[-1] + 1 if history.epoch else 0)
        self._save(epoch, logs)

    def _save(self, epoch: int, logs: dict[str, float]) -> None:
        self.last_path = self._file_name(epoch, logs)
        self.model.save(self.last_path)


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of each epoch to ``schedule(epoch, lr)``, ``lr``
    the current rate (in the optimizer state, where the new one goes too)."""

    def __init__(self, schedule: Callable[[int, float], float]) -> None:
        if not callable(schedule):
            raise TypeError(f"schedule must be callable as schedule(epoch, lr), got {type(schedule).__name__}")
        self.schedule = schedule

    def on_epoch_begin(self, epoch: int, logs: dict[str, float]) -> None:
        state = self.model.optimizer_state
        lr = float(self.schedule(epoch, learning_rate(state)))
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"the schedule returned lr={lr!r} for epoch {epoch}; it must be > 0")
        self.model.optimizer_state = with_learning_rate(state, lr)


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
    """A callback from plain functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``.

    Any hook can be given (``on_train_batch_end=lambda batch, logs: ...`` too); the
    loops call only those given, so one without batch hooks costs nothing per batch.
    """

    _HOOKS = (
        "on_train_begin", "on_epoch_begin", "on_epoch_end", "on_train_end",
        "on_train_batch_begin", "on_train_batch_end", "on_test_begin", "on_test_end",
        "on_test_batch_begin", "on_test_batch_end", "on_predict_begin", "on_predict_end",
        "on_predict_batch_begin", "on_predict_batch_end",
    )

    def __init__(
        self,
        on_train_begin: Callable[[dict], None] | None = None,
        on_epoch_begin: Callable[[int, dict], None] | None = None,
        on_epoch_end: Callable[[int, dict], None] | None = None,
        on_train_end: Callable[[dict], None] | None = None,
        **hooks: Callable[..., None] | None,
    ) -> None:
        unknown = sorted(set(hooks) - set(self._HOOKS))
        if unknown:
            raise TypeError(f"LambdaCallback has no hook {unknown[0]!r}; hooks: {', '.join(self._HOOKS)}")
        hooks.update(on_train_begin=on_train_begin, on_epoch_begin=on_epoch_begin,
                     on_epoch_end=on_epoch_end, on_train_end=on_train_end)
        self._hooks = {name: _hook(name, fn) for name, fn in hooks.items() if fn is not None}

    def implements(self, hook: str) -> bool:
        super().implements(hook)  # an unknown name is an error here too
        return hook in self._hooks

    def _call(self, hook: str, *args: Any) -> None:
        fn = self._hooks.get(hook)
        if fn is not None:
            fn(*args)


def _forward(hook: str) -> Callable[..., None]:
    def call(self: LambdaCallback, *args: Any) -> None:
        self._call(hook, *args)

    call.__name__ = call.__qualname__ = hook
    call.__doc__ = getattr(Callback, hook).__doc__
    return call


for _name in LambdaCallback._HOOKS:  # each hook calls the function given for it, if any
    setattr(LambdaCallback, _name, _forward(_name))
