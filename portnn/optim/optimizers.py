"""The named optimizers: SGD, Adam, AdamW, RMSProp, AdaGrad as chains of transforms.

Each keeps PyTorch's rule, defaults and option names (``torch.optim``), and is a
:class:`~portnn.optim.Chain`: ``[clip_by_global_norm] + the rule's transforms +
scale_by_learning_rate``. ``groups=`` gives parameters options of their own, as
PyTorch's parameter groups: each group is a dict with a ``"match"`` pattern
(``fnmatch`` on the parameter's dotted name, e.g. ``"*.bias"``, ``"0.*"``), any of
the optimizer's options and ``"lr_scale"`` (its learning rate is ``lr *
lr_scale``); a parameter takes the first group that matches, and the optimizer's
own options when none does.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from .._checks import lookup, positive_number
from .base import Chain, Partition, State, Transform, first_match, optimizer_step
from .schedules import as_learning_rate, learning_rate_config
from .transforms import (
    add_decayed_weights, clip_by_global_norm, flag, fraction, fraction_pair, scale,
    scale_by_adagrad, scale_by_adam, scale_by_learning_rate, scale_by_rms, trace,
)

__all__ = ["OPTIMIZERS", "SGD", "AdaGrad", "Adam", "AdamW", "Optimizer", "RMSProp", "get_optimizer", "update_trainable"]

_DEFAULT_GROUP = -1  # the label of parameters no group matches


class Optimizer(Chain):
    """Base class of the named optimizers: a chain built from the constructor's options.

    Subclasses check their options in ``__init__`` and give ``_rule(options)``, the
    transforms of one parameter group (between clipping and the learning rate).
    ``config()`` returns the constructor's arguments, so ``type(opt)(**opt.config())``
    rebuilds the optimizer. ``lr`` is a number or a schedule (``step -> lr``).
    """

    name = "optimizer"

    def __init__(self, lr: Any, clip_norm: float | None = None, groups: Sequence[Mapping[str, Any]] | None = None) -> None:
        self.lr = as_learning_rate(lr)
        self.clip_norm = None if clip_norm is None else positive_number("clip_norm", clip_norm)
        self._groups_given = groups
        self._built: tuple[Transform, ...] | None = None

    # ------------------------------------------------------------ options and groups
    #: the options of the rule, which a parameter group may set (attributes of the same names)
    options: tuple[str, ...] = ()

    def _rule_options(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.options}

    def _named_class(self) -> type[Optimizer]:
        """portnn's own optimizer class this one is (a subclass of): it checks a group's options."""
        return next(c for c in type(self).__mro__ if c in OPTIMIZERS.values())

    def _rule(self, options: dict[str, Any]) -> list[Transform]:
        raise NotImplementedError

    @property
    def groups(self) -> list[dict[str, Any]] | None:
        return None if self._groups_given is None else [dict(g) for g in self._groups_given]

    def _group_rules(self) -> dict[Any, list[Transform]]:
        """Label -> transforms: one per group, and the optimizer's own options (``-1``)."""
        own = self._rule_options()
        rules = {_DEFAULT_GROUP: self._rule(own)}
        for i, group in enumerate(self._groups_given or ()):
            options = {**own, **{k: v for k, v in group.items() if k not in ("match", "lr_scale")}}
            # the group's options are checked as the constructor checks them
            checked = self._named_class()(**options)._rule_options()
            lr_scale = positive_number(f"groups[{i}]['lr_scale']", group.get("lr_scale", 1.0))
            rules[i] = self._rule(checked) + ([scale(lr_scale)] if lr_scale != 1.0 else [])
        return rules

    def _check_groups(self) -> None:
        groups = self._groups_given
        if groups is None:
            return
        if isinstance(groups, Mapping | str) or not isinstance(groups, Sequence):
            raise TypeError(f"groups must be a list of dicts such as {{'match': '*.bias', 'weight_decay': 0.0}}, got {groups!r}")
        allowed = set(self._rule_options()) | {"match", "lr_scale"}
        for i, group in enumerate(groups):
            if not isinstance(group, Mapping) or not isinstance(group.get("match"), str):
                raise TypeError(f"groups[{i}] must be a dict with a 'match' pattern (a str), got {group!r}")
            unknown = sorted(set(group) - allowed)
            if unknown:
                hint = " (a group's rate is lr * lr_scale)" if "lr" in unknown else ""
                raise ValueError(
                    f"groups[{i}] has options {unknown} that {type(self).__name__} does not take{hint}; "
                    f"a group takes {sorted(allowed)}"
                )
        self._groups_given = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in groups]
        self._group_rules()  # every group's options are valid

    # ------------------------------------------------------------ the chain
    def __setattr__(self, name: str, value: Any) -> None:
        if name != "_built":
            self.__dict__["_built"] = None  # an option changed: the chain is built anew
        super().__setattr__(name, value)

    @property
    def transforms(self) -> tuple[Transform, ...]:
        built = self._built
        if built is None:
            built = self._built = self._chain().transforms
        return built

    @transforms.setter
    def transforms(self, value: Any) -> None:
        raise AttributeError("a named optimizer's transforms follow its options; build a chain(...) instead")

    def _chain(self) -> Chain:
        rules = {label: [t for t in ts if not t.is_identity()] for label, ts in self._group_rules().items()}
        if len(rules) == 1:
            body = list(rules[_DEFAULT_GROUP])
        else:
            patterns = [(g["match"], i) for i, g in enumerate(self._groups_given or ())]
            body = [Partition({label: Chain(*ts) for label, ts in rules.items()},
                              lambda name: first_match(name, patterns, _DEFAULT_GROUP))]
        clip = [clip_by_global_norm(self.clip_norm)] if self.clip_norm is not None else []
        return Chain(*clip, *body, scale_by_learning_rate(self.lr))

    @property
    def slots(self) -> tuple[str, ...]:
        """The names of the slots this optimizer keeps per parameter (with its own options)."""
        import array_api_compat.numpy as xp

        return tuple(Chain(*self._rule(self._rule_options()))._init({"p": xp.zeros(1)}, xp).get("slots", {}).get("p", {}))

    def group_of(self, name: str) -> int | None:
        """The index of the group parameter ``name`` belongs to (None: the optimizer's own options)."""
        patterns = [(g["match"], i) for i, g in enumerate(self._groups_given or ())]
        return first_match(name, patterns, None)

    def config(self) -> dict[str, Any]:
        """The constructor's arguments (JSON-friendly: tuples as lists, a shipped schedule as its config)."""
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        params = inspect.signature(type(self).__init__).parameters.values()
        names = [q.name for q in params if q.kind in kinds and q.name != "self"]
        values = {n: getattr(self, n) for n in names}
        if values.get("groups", ()) is None:
            del values["groups"]  # given only where groups were given
        if "lr" in values:
            values["lr"] = learning_rate_config(values["lr"])
        return {n: list(v) if isinstance(v, tuple) else v for n, v in values.items()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay.

    As ``torch.optim.SGD``: ``d = g + weight_decay * p``; with momentum ``b = momentum
    * b + (1 - dampening) * d`` (``b = d`` at a parameter's first step) and ``d = b``
    (or ``d + momentum * b`` with Nesterov); then ``p -= lr * d``.
    """

    name = "sgd"
    options = ("momentum", "nesterov", "weight_decay", "dampening")

    def __init__(
        self, lr: Any = 0.001, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
        clip_norm: float | None = None, dampening: float = 0.0, *, groups: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(lr, clip_norm, groups)
        self.momentum = positive_number("momentum", momentum, allow_zero=True)
        self.nesterov = flag("nesterov", nesterov)
        self.weight_decay = positive_number("weight_decay", weight_decay, allow_zero=True)
        self.dampening = positive_number("dampening", dampening, allow_zero=True)
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening 0")
        self._check_groups()

    def _rule(self, o):
        return [add_decayed_weights(o["weight_decay"]), trace(o["momentum"], o["dampening"], o["nesterov"])]


class AdaGrad(Optimizer):
    """AdaGrad, as ``torch.optim.Adagrad``: ``g += weight_decay * p``; ``sum += g * g`` (from
    ``initial_accumulator_value``); ``p -= lr / (1 + (step - 1) * lr_decay) * g / (sqrt(sum) + eps)``
    with the parameter's own step."""

    name = "adagrad"
    options = ("lr_decay", "weight_decay", "initial_accumulator_value", "eps")

    def __init__(
        self, lr: Any = 0.01, lr_decay: float = 0.0, weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
        eps: float = 1e-10, clip_norm: float | None = None, *, groups: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(lr, clip_norm, groups)
        self.lr_decay = positive_number("lr_decay", lr_decay, allow_zero=True)
        self.weight_decay = positive_number("weight_decay", weight_decay, allow_zero=True)
        self.initial_accumulator_value = positive_number("initial_accumulator_value", initial_accumulator_value, allow_zero=True)
        self.eps = positive_number("eps", eps)
        self._check_groups()

    def _rule(self, o):
        return [add_decayed_weights(o["weight_decay"]), scale_by_adagrad(o["eps"], o["initial_accumulator_value"], o["lr_decay"])]


class RMSProp(Optimizer):
    """RMSProp, as ``torch.optim.RMSprop``: ``g += weight_decay * p``; ``square_avg = alpha *
    square_avg + (1 - alpha) * g * g``; ``avg = sqrt(square_avg) + eps`` (``centered``: minus the
    squared running mean of ``g``); ``p -= lr * g / avg``, or with momentum ``b = momentum * b +
    g / avg`` and ``p -= lr * b``."""

    name = "rmsprop"
    options = ("alpha", "eps", "weight_decay", "momentum", "centered")

    def __init__(
        self, lr: Any = 0.01, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0,
        centered: bool = False, clip_norm: float | None = None, *, groups: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(lr, clip_norm, groups)
        self.alpha = fraction("alpha", alpha)
        self.eps = positive_number("eps", eps)
        self.weight_decay = positive_number("weight_decay", weight_decay, allow_zero=True)
        self.momentum = positive_number("momentum", momentum, allow_zero=True)
        self.centered = flag("centered", centered)
        self._check_groups()

    def _rule(self, o):
        return [add_decayed_weights(o["weight_decay"]), scale_by_rms(o["alpha"], o["eps"], o["centered"]), trace(o["momentum"])]


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam`` (``weight_decay`` is L2: added to the gradient): ``m = beta1 *
    m + (1 - beta1) * g``; ``v = beta2 * v + (1 - beta2) * g * g`` (``amsgrad``: their running
    maximum); ``p -= lr / (1 - beta1 ** t) * m / (sqrt(v / (1 - beta2 ** t)) + eps)``, ``t`` the
    parameter's own step."""

    name = "adam"
    options = ("betas", "eps", "weight_decay", "amsgrad")
    decoupled = False

    def __init__(
        self, lr: Any = 0.001, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
        amsgrad: bool = False, clip_norm: float | None = None, *, groups: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(lr, clip_norm, groups)
        self.betas = fraction_pair("betas", betas)
        self.eps = positive_number("eps", eps)
        self.weight_decay = positive_number("weight_decay", weight_decay, allow_zero=True)
        self.amsgrad = flag("amsgrad", amsgrad)
        self._check_groups()

    def _rule(self, o):
        adam = scale_by_adam(o["betas"], o["eps"], o["amsgrad"])
        decay = add_decayed_weights(o["weight_decay"])
        return [adam, decay] if self.decoupled else [decay, adam]


class AdamW(Adam):
    """AdamW, as ``torch.optim.AdamW``: Adam with decoupled weight decay (``p -= lr *
    weight_decay * p`` beside the Adam step; the gradient itself is not changed)."""

    name = "adamw"
    decoupled = True

    def __init__(
        self, lr: Any = 0.001, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01,
        amsgrad: bool = False, clip_norm: float | None = None, *, groups: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(lr, betas, eps, weight_decay, amsgrad, clip_norm, groups=groups)


OPTIMIZERS: dict[str, type[Optimizer]] = {cls.name: cls for cls in (SGD, AdaGrad, RMSProp, Adam, AdamW)}


def get_optimizer(optimizer: str | Transform) -> Transform:
    """An optimizer from a name (default settings), a named optimizer or any transform (a chain)."""
    if isinstance(optimizer, Transform):
        return optimizer
    return lookup("optimizer", optimizer, OPTIMIZERS)()


def update_trainable(
    opt: Transform, params: dict[str, Any], trainable: Sequence[str], grads: dict[str, Any], state: State, xp: Any,
    prepared: bool = False,
) -> tuple[dict[str, Any], State]:
    """The optimizer's step for the trainable parameters (``trainable``, names): frozen ones,
    their slots and their step counts are left as they are, and so are any gradients a layer
    gave for them (they never reach gradient clipping's norm).

    Returns the new trainable parameters and the whole new state."""
    if len(trainable) == len(params):
        return optimizer_step(opt, params, grads, state, xp, prepared)
    slots, counts = state["slots"], state["counts"]
    part = {**state, "slots": {k: slots[k] for k in trainable}, "counts": {k: counts[k] for k in trainable}}
    new_params, new_part = optimizer_step(
        opt, {k: params[k] for k in trainable}, {k: grads[k] for k in trainable}, part, xp, prepared
    )
    return new_params, {**new_part, "slots": {**slots, **new_part["slots"]}, "counts": {**counts, **new_part["counts"]}}
