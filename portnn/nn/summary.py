"""``model.summary()``: a table of the modules of a tree, their output shapes and parameter counts.

It reads a model through its public methods only (and imports nothing of nn/: the
module protocol calls it).
"""

from __future__ import annotations

import copy
import math
from typing import Any

__all__ = ["Summary", "summarize"]


class Summary:
    """What :meth:`Module.summary` found: one row per module and the totals.

    ``rows`` holds dicts with ``name`` (dotted, ``""`` for the model itself),
    ``type``, ``output_shape`` (``None`` for the sample axis; ``None`` as a whole
    when the input shape is not known) and ``parameters`` (inside that module);
    ``total``, ``trainable`` and ``frozen`` count parameter entries.
    ``str(summary)`` is the table.
    """

    def __init__(self, rows: list[dict[str, Any]], total: int, trainable: int) -> None:
        self.rows = rows
        self.total = total
        self.trainable = trainable
        self.frozen = total - trainable

    def __str__(self) -> str:
        header = ("Module", "Type", "Output shape", "Parameters")
        lines = [
            (
                "  " * row["depth"] + (row["name"].rsplit(".", 1)[-1] or "(model)"),
                row["type"],
                _shape_text(row["output_shape"]),
                f"{row['parameters']:,}",
            )
            for row in self.rows
        ]
        widths = [max(len(r[i]) for r in [header, *lines]) for i in range(4)]
        rule = "-" * (sum(widths) + 6)

        def fmt(r: tuple[str, ...]) -> str:
            return "  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2]), r[3].rjust(widths[3])])

        return "\n".join(
            [
                fmt(header),
                rule,
                *map(fmt, lines),
                rule,
                f"Total parameters: {self.total:,} (trainable {self.trainable:,}, frozen {self.frozen:,})",
            ]
        )

    def __repr__(self) -> str:  # short: summary() has printed the table already
        return f"<Summary of {len(self.rows)} modules: {self.total:,} parameters ({self.trainable:,} trainable, {self.frozen:,} frozen)>"


def _shape_text(shape: Any) -> str:
    if shape is None:
        return "?"
    if shape and isinstance(shape[0], tuple | list):
        return ", ".join(_shape_text(s) for s in shape)
    return "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"


def _shape_of(y: Any) -> Any:
    if isinstance(y, tuple | list):
        return tuple(_shape_of(v) for v in y)
    return (None, *(int(s) for s in y.shape[1:]))


def _check_shape(input_shape: Any) -> tuple[Any, ...]:
    def one(shape: Any) -> tuple[int, ...]:
        if isinstance(shape, int) and not isinstance(shape, bool):
            shape = (shape,)
        if not isinstance(shape, tuple | list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
            raise ValueError(f"input_shape must be a per-sample shape such as (784,) or (1, 28, 28), got {input_shape!r}")
        return tuple(shape)

    if isinstance(input_shape, tuple | list) and input_shape and all(isinstance(s, tuple | list) for s in input_shape):
        return tuple(one(s) for s in input_shape)
    return one(input_shape)


def _output_shapes(model: Any, input_shape: Any) -> dict[str, Any]:
    """Each module's output shape, from one inference pass over zeros through a copy of ``model``."""
    probe = copy.deepcopy(model)
    found: dict[str, Any] = {}
    for prefix, module in probe.named_modules():
        inner, inner_apply = module.infer, module.apply

        def recording(x: Any, _inner: Any = inner, _prefix: str = prefix) -> Any:
            y = _inner(x)
            found[_prefix] = _shape_of(y)
            return y

        # a container of the user's own may call its children's apply rather than infer
        def recording_apply(
            x: Any, training: bool, _inner: Any = inner_apply, _prefix: str = prefix
        ) -> Any:
            y, backward = _inner(x, training)
            found[_prefix] = _shape_of(y)
            return y, backward

        module.__dict__["infer"] = recording  # on the copy only
        module.__dict__["apply"] = recording_apply
    xp, backend = probe.xp, probe.backend
    dtype = probe.compute_dtype() or xp.float32

    def zeros(shape: tuple[int, ...]) -> Any:
        return xp.zeros((1, *shape), dtype=dtype, device=backend.device)

    multi = bool(input_shape) and isinstance(input_shape[0], tuple)
    probe.infer(tuple(zeros(s) for s in input_shape) if multi else zeros(input_shape))
    return found


def summarize(model: Any, input_shape: Any = None) -> Summary:
    """The :class:`Summary` of ``model`` (output shapes from ``input_shape`` or the first layer's)."""
    shapes: dict[str, Any] = {}
    if input_shape is not None:
        shapes = _output_shapes(model, _check_shape(input_shape))
    elif model.input_shape() is not None:
        try:
            shapes = _output_shapes(model, _check_shape(model.input_shape()))
        except (TypeError, ValueError):
            # the first layer tells only the last axis ((T, F) samples to a Dense of F, say):
            # the shapes stay unknown unless given
            shapes = {}
    rows = []
    for prefix, module in model.named_modules():
        name = prefix[:-1]
        rows.append(
            {
                "name": name,
                "type": type(module).__name__,
                "depth": name.count(".") + 1 if name else 0,
                "output_shape": shapes.get(prefix),
                "parameters": sum(math.prod(p.shape) for p in module.parameters().values()),
            }
        )
    return Summary(rows, model.num_parameters(), model.num_parameters(trainable_only=True))
