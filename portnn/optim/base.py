"""The transform protocol, ``chain``, ``partition`` and applying updates.

A transform is a pair ``init(params) -> state`` and ``update(grads, state,
params) -> (updates, state)``, as in optax; the updates are *added* to the
parameters (:func:`apply_updates`). Transforms compose with :func:`chain`.

The state of a transform (or of a chain of them) is one dict:

* ``"step"``: how many updates were made (a schedule's step, counted from 0);
* ``"counts"``: parameter name -> how many updates that parameter received (a
  frozen parameter's count stands still, as ``torch.optim``'s per-parameter step);
* ``"slots"``: parameter name -> slot name -> array (moments, buffers), each slot
  named by the transform that keeps it (names are unique within a chain);
* ``"lr"``: the learning rate of the latest step, if the chain scales by one.

An update is pure: it never writes into the gradients, parameters or state it is
given, and returns new arrays, so JAX runs it as is, ``jax.jit`` compiles it and
``fit`` can refuse a non-finite step by not keeping it. In-place operators are
used only on the temporaries an update makes itself (where the backend's arrays
are writeable), so a chain allocates no more than a hand-fused rule would.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from array_api_compat import array_namespace, is_writeable_array

__all__ = [
    "Chain",
    "Partition",
    "Transform",
    "apply_updates",
    "chain",
    "learning_rate",
    "partition",
    "with_learning_rate",
]

State = dict[str, Any]


def namespace(arrays: Mapping[str, Any]) -> Any:
    """The array namespace of a dict of arrays (resolved once per call)."""
    if not arrays:
        raise ValueError("an optimizer update needs at least one array")
    return array_namespace(next(iter(arrays.values())))


def scaled(u: Any, factor: Any, owned: bool) -> Any:
    """``u * factor``, written into ``u`` when the update owns it and its backend allows."""
    if owned and is_writeable_array(u):
        u *= factor
        return u
    return u * factor


def scaled_all(updates: dict[str, Any], factor: Any, owned: bool) -> dict[str, Any]:
    """Every update times ``factor`` (in place where :func:`scaled` would be; one check for all)."""
    if owned and updates and is_writeable_array(next(iter(updates.values()))):
        for k, u in updates.items():
            u *= factor
            updates[k] = u  # the array itself where it was written into, its result where not
        return updates
    return {k: u * factor for k, u in updates.items()}


class Transform:
    """Base class of update transforms: subclasses give ``_init`` and ``_update``.

    ``_init(params, xp)`` returns the transform's own entries of the state
    (``{"slots": {name: {slot: array}}}`` and any others); ``_update(updates,
    state, params, xp, owned)`` reads and replaces its own entries in ``state``
    (this call's own dicts; the arrays in them must not be written to) and
    returns ``(updates, owned)``, ``owned`` saying the update arrays are
    temporaries of this step that later transforms may overwrite.
    ``_prepare(state)`` sets, on the host, what the next update needs from
    outside the arrays (a scheduled learning rate).
    """

    def init(self, params: Mapping[str, Any], xp: Any = None) -> State:
        """Fresh state for ``params`` (name -> array), on their backend and device."""
        xp = namespace(params) if xp is None else xp
        own = self._init(params, xp)
        own_slots = own.pop("slots", {})
        slots = {name: dict(own_slots.get(name, {})) for name in params}
        return {"step": 0, "counts": dict.fromkeys(params, 0), "slots": slots, **own}

    def prepare(self, state: State) -> State:
        """The state with what the next update takes from the host (a scheduled rate) set."""
        new = dict(state)
        self._prepare(new)
        return new

    def update(
        self, grads: Mapping[str, Any], state: State, params: Mapping[str, Any] | None = None,
        xp: Any = None, *, prepared: bool = False,
    ) -> tuple[dict[str, Any], State]:
        """``(updates, new state)`` for ``grads``; add the updates to the parameters.

        ``prepared=True``: :meth:`prepare` was called already (a compiled step calls it
        on the host, outside the compiled function)."""
        updates, new, _ = self._step(grads, state, params, xp, prepared)
        return updates, new

    def _step(self, grads, state, params, xp, prepared):
        xp = namespace(grads) if xp is None else xp
        counts = state["counts"]
        new = {**state, "slots": {k: dict(v) for k, v in state["slots"].items()}}
        if not prepared:
            self._prepare(new)
        updates, owned = self._update(dict(grads), new, params, xp, False)
        new["step"] = state["step"] + 1
        new["counts"] = {**counts, **{k: counts[k] + 1 for k in grads}}
        return updates, new, owned

    def _init(self, params: Mapping[str, Any], xp: Any) -> State:
        return {}

    def _prepare(self, state: State) -> None:
        pass

    def _update(self, updates: dict[str, Any], state: State, params: Any, xp: Any, owned: bool) -> tuple[dict[str, Any], bool]:
        raise NotImplementedError

    #: whether ``_update`` takes ``factor=``: a scalar it multiplies its own fresh updates by,
    #: so that a chain folds the scalings after it into that one pass
    takes_factor = False

    def scalar_factor(self, state: State) -> Any:
        """The factor this transform multiplies every update by, if that is all it does (else None)."""
        return None

    def is_identity(self) -> bool:
        """Whether this transform, with its options, changes nothing (a chain may leave it out)."""
        return False

    def config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _merge_entries(target: State, entries: State, where: str) -> None:
    """Put one transform's state entries into a chain's, refusing two owners of a name."""
    for name, slots in entries.pop("slots", {}).items():
        mine = target.setdefault("slots", {}).setdefault(name, {})
        for slot in slots:
            if slot in mine:
                raise ValueError(f"two transforms of {where} keep a slot named {slot!r}")
        mine.update(slots)
    for key, value in entries.items():
        if key in target:
            raise ValueError(f"two transforms of {where} keep the state entry {key!r}")
        target[key] = value


class Chain(Transform):
    """Transforms applied one after another, each to the previous one's updates."""

    def __init__(self, *transforms: Transform) -> None:
        for t in transforms:
            if not isinstance(t, Transform):
                raise TypeError(f"chain takes transforms (portnn.optim), got {type(t).__name__} {t!r}")
        self.transforms = tuple(transforms)

    def _init(self, params, xp):
        state: State = {}
        for t in self.transforms:
            _merge_entries(state, t._init(params, xp), "a chain")
        return state

    def _prepare(self, state):
        for t in self.transforms:
            t._prepare(state)

    def _update(self, updates, state, params, xp, owned):
        transforms, i = self.transforms, 0
        while i < len(transforms):
            t, i = transforms[i], i + 1
            factor = None
            while t.takes_factor and i < len(transforms):  # Adam then -lr: one pass, not two
                f = transforms[i].scalar_factor(state)
                if f is None:
                    break
                factor, i = f if factor is None else factor * f, i + 1
            if factor is None:
                updates, owned = t._update(updates, state, params, xp, owned)
            else:
                updates, owned = t._update(updates, state, params, xp, owned, factor=factor)
        return updates, owned

    def __repr__(self) -> str:
        return f"chain({', '.join(map(repr, self.transforms))})"


def chain(*transforms: Transform) -> Chain:
    """One transform that applies ``transforms`` in order, as ``optax.chain``:
    ``chain(clip_by_global_norm(1.0), scale_by_adam(), add_decayed_weights(1e-2),
    scale_by_learning_rate(1e-3))`` is AdamW with clipping."""
    return Chain(*transforms)


class Partition(Transform):
    """Each parameter's updates go through the transform of its label.

    ``label_of(name)`` gives a parameter's label, a key of ``transforms``."""

    def __init__(
        self, transforms: Mapping[Any, Transform], label_of: Callable[[str], Any],
        rules: Sequence[tuple[str, Any]] | Mapping[str, Any] | None = None,
    ) -> None:
        self.transforms = dict(transforms)
        self.label_of = label_of
        #: the labels as given, when they were patterns or a dict (what a file can hold)
        self.rules = rules
        self._labels: dict[str, Any] = {}

    def _label(self, name: str) -> Any:
        label = self._labels.get(name)
        if label is None:
            label = self._labels[name] = self.label_of(name)
            if label not in self.transforms:
                raise KeyError(f"parameter {name!r} has label {label!r}, which names no transform")
        return label

    def _split(self, arrays: Mapping[str, Any]) -> dict[Any, dict[str, Any]]:
        parts: dict[Any, dict[str, Any]] = {}
        for name, value in arrays.items():
            parts.setdefault(self._label(name), {})[name] = value
        return parts

    def _init(self, params, xp):
        state: State = {}
        for label, part in self._split(params).items():
            _merge_entries(state, self.transforms[label]._init(part, xp), "a partition")
        return state

    def _prepare(self, state):
        for t in self.transforms.values():
            t._prepare(state)

    def _update(self, updates, state, params, xp, owned):
        out: dict[str, Any] = {}
        all_owned = True
        for label, part in self._split(updates).items():
            new, part_owned = self.transforms[label]._update(part, state, params, xp, owned)
            out.update(new)
            all_owned = all_owned and part_owned
        return {k: out[k] for k in updates}, all_owned


def partition(transforms: Mapping[Any, Transform], labels: Callable[[str], Any] | Mapping[str, Any] | Sequence[tuple[str, Any]]) -> Partition:
    """Route each parameter's updates through the transform of its label (``optax.partition``).

    ``labels`` is a function of the parameter's dotted name (``"0.weight"``), a
    dict name -> label, or a list of ``(fnmatch pattern, label)`` where the first
    matching pattern wins and ``"*"`` can close the list."""
    if callable(labels):
        return Partition(transforms, labels)
    if isinstance(labels, Mapping):
        return Partition(transforms, labels.__getitem__, dict(labels))
    rules = [(str(p), label) for p, label in labels]

    def label_of(name: str) -> Any:
        return first_match(name, rules)

    return Partition(transforms, label_of, rules)


def first_match(name: str, rules: Iterable[tuple[str, Any]], default: Any = None) -> Any:
    """The value of the first ``(fnmatch pattern, value)`` whose pattern matches ``name``."""
    for pattern, value in rules:
        if fnmatch.fnmatchcase(name, pattern):
            return value
    return default


def apply_updates(params: Mapping[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    """``params + updates``, new arrays (the parameters given are not changed)."""
    return {k: p + updates[k] if k in updates else p for k, p in params.items()}


def optimizer_step(
    transform: Transform, params: Mapping[str, Any], grads: Mapping[str, Any], state: State,
    xp: Any, prepared: bool = False,
) -> tuple[dict[str, Any], State]:
    """``(new params, new state)``: the update added to the parameters, in the update's own
    buffers where it owns them (the parameters and gradients given are not changed).

    A transform of one's own that gives ``update`` itself (not ``_update``) is called by it."""
    if type(transform).update is Transform.update:
        updates, new, owned = transform._step(grads, state, params, xp, prepared)
    else:
        updates, new = transform.update(grads, state, params, xp, **({"prepared": True} if prepared else {}))
        owned = False
    if owned and updates and is_writeable_array(next(iter(updates.values()))):
        new_params = {}
        for k, u in updates.items():
            u += params[k]
            new_params[k] = u
        return new_params, new
    return {k: params[k] + u for k, u in updates.items()}, new


def learning_rate(state: Mapping[str, Any] | None) -> float:
    """The learning rate of the latest step in an optimizer state (NaN if it keeps none)."""
    if not state or "lr" not in state:
        return math.nan
    return float(state["lr"])


def with_learning_rate(state: State, lr: float) -> State:
    """The state with the rate of the next steps set to ``lr`` (for an optimizer of a
    constant rate: a schedule sets its own rate every step)."""
    if "lr" not in state:
        raise ValueError("this optimizer keeps no learning rate in its state (no scale_by_learning_rate)")
    return {**state, "lr": float(lr)}
