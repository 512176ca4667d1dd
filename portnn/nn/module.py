"""The module protocol: a model is a tree of modules.

A module declares its parameters with :meth:`Module.add_parameter`, its
sub-modules by assigning them as attributes (or with :meth:`Module.add_module`),
and computes in one method, ``apply(x, training) -> (y, backward)``. The
backward is a closure over exactly what the forward computed, so the pair can
never drift apart and nothing is cached on the module between calls.
``backward(dy)`` returns ``(dx, grads)``: ``grads`` holds one entry per own
parameter and one per child (that child's own ``grads``), so gradients stay
nested like the tree and nobody renames keys by hand. A backward may take a
``need_dx`` keyword; the first layer of a model is then asked not to compute
its input gradient.

Everything a tree needs -- dotted parameter names, moving, copying, loading,
freezing -- is written here once. Only ``self.xp`` (the backend's Array API
namespace) is used for math.
"""

from __future__ import annotations

import copy
import math
import sys
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

from .._checks import check_finite, check_real, check_same_samples, floating_dtype, host_array
from .._rwlock import ReadWriteLock
from .._tree import flatten, move_array, move_tree
from ..backend import Backend, _library_name, _make_backend, get_backend
from .calling import _STDOUT, Backward, call_backward, first_sample, one_input, provide_workflows, workflow
from .training_state import TrainingState, training_property
from .tree import assign, backend_owner, check_name, load_checked, map_arrays

__all__ = ["Backward", "Module", "call_backward", "map_arrays", "provide_workflows"]

class Module:
    """Base of every layer and model.

    Parameters live on one backend (``model.backend``); ``model.to(name)``
    moves them. A module starts in inference mode; ``train()`` / ``eval()``
    switch the mode that calling it (``model(x)``, ``forward``) uses. ``fit``,
    ``evaluate`` and ``predict`` choose their own mode per call and leave this
    flag alone, so a training run never changes what other threads see.
    """

    training: bool = False
    #: whether the output has the input's shape (activations, dropout, normalization)
    preserves_shape: bool = False

    # portnn's own layer classes by class name, so a saved architecture can be rebuilt
    # from names alone (loading a file never runs code from it). Classes defined
    # outside portnn never enter it, so they cannot shadow portnn's: load() finds
    # them only through custom_objects or portnn.register.
    registry: dict[str, type[Module]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        module = cls.__module__ or ""
        if not cls.__name__.startswith("_") and (module == "portnn" or module.startswith("portnn.")):
            Module.registry[cls.__name__] = cls

    def __init__(self) -> None:
        state = self.__dict__
        state["_params"] = {}
        # arrays that are state but not trained (running statistics): moved, copied, saved
        state["_buffers"] = {}
        state["_modules"] = {}
        state["_grads"] = {}
        state["_backend"] = get_backend()
        state["_backward"] = None
        state["_single"] = False
        state["_trainable"] = True
        state["name"] = type(self).__name__

    # ------------------------------------------------------------ declaring the tree
    def add_parameter(self, name: str, value: Any, *, dtype: Any = None) -> Any:
        """Declare parameter ``name`` with initial ``value`` (array-like of any library).

        The value is copied onto the module's backend; a floating value keeps its
        dtype unless ``dtype`` is given, anything else becomes float32. Returns the
        array (also ``self.parameters()[name]`` and ``self.<name>``).
        """
        check_name("parameter", name, self)
        backend = self._backend
        target = None if dtype is None else floating_dtype(backend, dtype)
        if _library_name(value) in (None, "numpy"):
            host_array(f"parameter {name!r}", value)  # numbers only: no strings, objects, bools
        else:
            check_real(f"parameter {name!r}", value, floating=False)
        arr = backend.asarray(value, target, copy=True)  # never train a caller's array in place
        if not backend.xp.isdtype(arr.dtype, "real floating"):
            arr = backend.xp.astype(arr, backend.xp.float32)
        check_finite(name, arr, backend.xp)
        self._params[name] = arr
        return arr

    def add_buffer(self, name: str, value: Any) -> Any:
        """Declare buffer ``name``: state that is saved and moved but not trained (running statistics)."""
        check_name("buffer", name, self)
        arr = self._backend.asarray(value, copy=True)
        self._buffers[name] = arr
        return arr

    def add_module(self, name: str, module: Module) -> Module:
        """Declare ``module`` as the child ``name`` (what assigning ``self.<name> = module`` does)."""
        if "_modules" not in self.__dict__:
            raise AttributeError(f"call super().__init__() in {type(self).__name__}.__init__ before adding modules")
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}.add_module takes a portnn Module, got {type(module).__name__}")
        check_name("module", name, self)
        if any(m is self for m in module.modules()):
            raise ValueError(f"cannot add {type(module).__name__} {name!r}: it contains its parent")
        replaced = self._modules.get(name)
        present = {id(m) for child_name, child in self._modules.items() if child_name != name for m in child.modules()}
        # a stateless layer (an activation) may serve twice; one with arrays would be trained twice
        shared = [m for m in module.modules() if id(m) in present and (m._params or m._buffers)]
        if shared and replaced is not module:
            raise ValueError(
                f"cannot add {type(module).__name__} {name!r}: {type(shared[0]).__name__} is in the model already; "
                "a module sits in one place of a tree (sharing weights between places is not supported): "
                "use module.copy() for a second, independent one"
            )
        owner = backend_owner([*self.modules(), *module.modules()])
        self.__dict__.pop(name, None)
        self._modules[name] = module
        if owner is not None:
            for m in self.modules():
                m.__dict__["_backend"] = owner
        for prefix, m in self.named_modules():
            if prefix:
                m.__dict__["name"] = f"layer {prefix[:-1]} ({type(m).__name__})"
        return module

    def __setattr__(self, name: str, value: Any) -> None:
        state = self.__dict__
        if isinstance(value, Module):
            self.add_module(name, value)
            return
        modules = state.get("_modules")
        if modules is not None and name in modules:
            del modules[name]
        if not isinstance(getattr(type(self), name, None), property):
            for kind, store in (("parameter", "_params"), ("buffer", "_buffers")):
                own = state.get(store)
                if own is not None and name in own:
                    # ``self.w = self.add_parameter("w", ...)`` or a new value sets the parameter itself:
                    # a plain attribute would hide every value training gives it
                    if value is not own[name]:
                        load_checked(self, kind, {name: value}, True, False)
                    return
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        state = self.__dict__
        for store in ("_modules", "_params", "_buffers"):
            found = state.get(store)
            if found is not None and name in found:
                return found[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------ walking the tree
    def children(self) -> list[tuple[str, Module]]:
        """(name, module) of each direct sub-module, in the order they were added."""
        return list(self._modules.items())

    def modules(self) -> Iterator[Module]:
        """This module and every module inside it, depth first."""
        yield self
        for _, child in self.children():
            yield from child.modules()

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """(prefix, module) pairs; the prefix ends with "." except for the root ("")."""
        yield prefix, self
        for child_name, child in self.children():
            yield from child.named_modules(f"{prefix}{child_name}.")

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def xp(self) -> Any:
        return self._backend.xp

    # ------------------------------------------------------------ parameters and buffers
    def parameters(self, trainable_only: bool = False) -> OrderedDict[str, Any]:
        """Name -> array for every parameter (``"0.weight"``, ``"block.1.bias"``, ...), in tree order.

        ``trainable_only=True`` leaves out the parameters of frozen modules.
        """
        return OrderedDict(
            (prefix + key, value)
            for prefix, module in self.named_modules()
            if module._trainable or not trainable_only
            for key, value in module._params.items()
        )

    def buffers(self) -> OrderedDict[str, Any]:
        """Name -> array for every non-trained state array (e.g. ``"1.running_mean"``)."""
        return OrderedDict(
            (prefix + key, value) for prefix, module in self.named_modules() for key, value in module._buffers.items()
        )

    def gradients(self) -> OrderedDict[str, Any]:
        """Name -> gradient from the last ``backward`` / ``value_and_grad``."""
        return OrderedDict(
            (prefix + key, module._grads[key])
            for prefix, module in self.named_modules()
            for key in module._params
            if key in module._grads
        )

    def num_parameters(self, trainable_only: bool = False) -> int:
        """How many numbers the parameters hold (those of frozen modules too, unless ``trainable_only``)."""
        return sum(math.prod(p.shape) for p in self.parameters(trainable_only).values())

    def load_parameters(
        self, params: Mapping[str, Any], *, check_finite: bool = True, keep_dtype: bool = False
    ) -> None:
        """Set parameters from name -> array-like (any library), checking names and shapes
        (and, unless ``check_finite=False``, rejecting NaN and infinity).

        A floating parameter takes floating-point values only: integers, bools,
        complex numbers, strings and objects are a TypeError naming the parameter,
        whatever the array library. The values are cast to each parameter's dtype,
        or, with ``keep_dtype=True``, keep their own. Nothing changes unless every
        entry is valid.
        """
        load_checked(self, "parameter", params, check_finite, keep_dtype)

    def load_buffers(
        self, buffers: Mapping[str, Any], *, check_finite: bool = True, keep_dtype: bool = False
    ) -> None:
        """Set buffers from name -> array-like, checking names, shapes and values first.

        A floating buffer takes floating-point values only (TypeError for
        integers, bools, complex numbers), and, unless ``check_finite=False``,
        no NaN or infinity (ValueError); a layer may refuse more (BatchNorm: a
        negative ``running_var``). Nothing changes unless every entry is valid.
        """
        load_checked(self, "buffer", buffers, check_finite, keep_dtype)

    def assign_parameters(self, params: Mapping[str, Any]) -> None:
        """Rebind parameters to these arrays as they are: no checks, no copies.

        The training loop's fast path, for arrays an optimizer made from this
        model's own (same backend, shapes and dtypes); use :meth:`load_parameters`
        for anything else. Unknown names are a KeyError.
        """
        assign(self, "parameter", params)

    def assign_buffers(self, buffers: Mapping[str, Any]) -> None:
        """Rebind buffers to these arrays as they are (see :meth:`assign_parameters`)."""
        assign(self, "buffer", buffers)

    def check_buffer(self, key: str, value: Any, label: str) -> None:
        """Refuse a value for buffer ``key`` this layer cannot use (ValueError naming ``label``)."""

    # ------------------------------------------------------------ freezing
    @property
    def trainable(self) -> bool:
        """Whether ``fit`` trains this module's own parameters. Setting it sets every module inside."""
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"trainable must be True or False, got {value!r}")
        for module in self.modules():
            module.__dict__["_trainable"] = value

    def freeze(self) -> Module:
        """Stop training every parameter inside (``trainable = False``); returns the module."""
        self.trainable = False
        return self

    def unfreeze(self) -> Module:
        """Train every parameter inside again (``trainable = True``); returns the module."""
        self.trainable = True
        return self

    # ------------------------------------------------------------ what a layer may define
    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this module (JSON-friendly); see :func:`portnn.save`."""
        return {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], children: Mapping[str, Module]) -> Module:
        """Rebuild a module from :meth:`config` (and, for containers that take their
        children as arguments, the rebuilt ``children``). By default ``cls(**config)``."""
        return cls(**config)

    def extra_state(self) -> dict[str, Any]:
        """JSON-friendly state that is neither parameter nor buffer (e.g. a generator's state)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    def has_penalty(self) -> bool:
        """Whether this module adds a penalty (L1/L2) to the training loss."""
        return False

    def penalty(self) -> tuple[Any, dict[str, Any]]:
        """(penalty value, its gradient for each own parameter)."""
        return 0.0, {}

    def input_shape(self) -> tuple[int, ...] | tuple[tuple[int, ...], ...] | None:
        """The per-sample input shape when the module knows it (``Dense``: ``(in_features,)``)."""
        return None

    def output_layer(self) -> Module:
        """The module whose output is this module's output (a Sequential's last layer's)."""
        return self

    def apply(self, x: Any, training: bool) -> tuple[Any, Backward]:
        """``(y, backward)`` for a batch ``x``; ``backward(dy)`` returns ``(dx, grads)``."""
        raise NotImplementedError(f"{type(self).__name__} must define apply(self, x, training) -> (y, backward)")

    def infer(self, x: Any) -> Any:
        """The inference-mode output alone (layers may define a faster path)."""
        return self.apply(x, False)[0]

    # ------------------------------------------------------------ moving and copying
    def to(self, backend: str | None = None, *, device: Any = None, dtype: Any = None) -> Module:
        """Move every parameter (and optimizer state) to ``backend``/``device``, optionally casting.

        The backend, device and dtype are checked first, and every array is moved
        before any module changes, so a move that fails leaves the model as it was.
        Returns the module itself, like PyTorch.
        """
        if backend is None and device is None:
            target = self._backend
        elif device is None and backend == str(self._backend):
            # the same library without a device: the arrays stay where they are, and so does the
            # device the model makes its inputs on (None would mean the library's default)
            target = _make_backend(backend, self._backend.device)
        else:
            target = _make_backend(backend if backend is not None else str(self._backend), device)
        cast = None if dtype is None else floating_dtype(target, dtype)
        moved = [
            (
                module,
                {k: target.asarray(v, cast) for k, v in module._params.items()},
                {k: move_array(target, v, cast) for k, v in module._buffers.items()},
            )
            for module in self.modules()
        ]
        state = self.optimizer_state
        if state is not None:
            state = move_tree(state, target, cast)
        for module, params, buffers in moved:
            module.__dict__.update(_backend=target, _params=params, _buffers=buffers, _grads={}, _backward=None)
        if state is not None:
            self.optimizer_state = state
        return self

    def train(self, mode: bool = True) -> Module:
        for module in self.modules():
            module.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def copy(self) -> Module:
        """An independent deep copy (parameters copied on the same backend)."""
        return copy.deepcopy(self)

    @property
    def training_state(self) -> TrainingState:
        """The loss, optimizer, optimizer state, history and resume point training keeps here."""
        state = self.__dict__.get("_training_state")
        if state is None:
            state = self.__dict__.setdefault("_training_state", TrainingState())
        return state

    @training_state.setter
    def training_state(self, state: TrainingState) -> None:
        if not isinstance(state, TrainingState):
            raise TypeError(f"training_state must be a TrainingState, got {type(state).__name__}")
        self.__dict__["_training_state"] = state

    loss = training_property("loss")
    optimizer = training_property("optimizer")
    optimizer_state = training_property("optimizer_state")
    history = training_property("history")
    resume_point = training_property("resume_point")
    stop_training = training_property("stop_training")

    @property
    def weights_lock(self) -> ReadWriteLock:
        """Written under by a training step, read under by ``predict``: inference in another
        thread sees the weights of one whole step (see :mod:`portnn._rwlock`)."""
        lock = self.__dict__.get("_lock")
        if lock is None:
            lock = self.__dict__.setdefault("_lock", ReadWriteLock())
        return lock

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __deepcopy__(self, memo: dict) -> Module:
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        xp = self._backend.xp
        for k, v in self.__dict__.items():
            if k == "_lock":
                continue
            if k == "_backward":
                clone.__dict__[k] = None
            elif k in ("_params", "_buffers", "_grads"):
                clone.__dict__[k] = {n: xp.asarray(a, copy=True) for n, a in v.items()}
            else:
                clone.__dict__[k] = copy.deepcopy(v, memo)
        return clone

    # ------------------------------------------------------------ calling
    def compute_dtype(self) -> Any:
        """The floating dtype inputs are cast to: that of the first parameter, else None."""
        for value in self._params.values():
            return value.dtype
        for child in self._modules.values():  # on every call of the model: no generators
            dtype = child.compute_dtype()
            if dtype is not None:
                return dtype
        return None

    def check_input_kind(self, x: Any, name: str = "x") -> None:
        """Refuse a tuple of inputs for a model that takes one array (when it tells, through
        :meth:`input_shape`), with a ValueError naming ``name``. (A model with several inputs
        starts with a Parallel, which names a wrong number of inputs itself.)"""
        if not isinstance(x, tuple) or not x:
            return
        shape = self.input_shape()
        if shape is not None and not (shape and isinstance(shape[0], tuple)):
            raise ValueError(
                f"{name} is a tuple of {len(x)} arrays, but {type(self).__name__} takes one input "
                f"(samples of shape {shape}); a model with several inputs starts with a Parallel"
            )

    def _input(self, x: Any) -> tuple[Any, bool]:
        """``x`` checked and on the backend, as a batch; whether it was one sample (1-D)."""
        dtype = self.compute_dtype()
        if not isinstance(x, tuple):
            x = one_input(self._backend, "x", x, dtype)
            return (x[None, ...], True) if x.ndim == 1 else (x, False)
        self.check_input_kind(x)
        items = tuple(one_input(self._backend, f"x[{i}]", xi, dtype) for i, xi in enumerate(x))
        if not items:
            raise ValueError("x is an empty tuple; a model with several inputs takes one array per input")
        if all(xi.ndim == 1 for xi in items):
            return tuple(xi[None, ...] for xi in items), True
        check_same_samples("x", items)
        return items, False

    def __call__(self, x: Any) -> Any:
        """Apply the module to a batch (first axis: samples) or to one sample (a 1-D array)."""
        x, single = self._input(x)
        y = self.apply(x, True)[0] if self.training else self.infer(x)
        return first_sample(y) if single else y

    def forward(self, x: Any) -> Any:
        """Like calling the module, and keep what ``backward`` needs."""
        x, single = self._input(x)
        y, self.__dict__["_backward"] = self.apply(x, self.training)
        self.__dict__["_single"] = single
        return first_sample(y) if single else y

    def backward(self, dy: Any) -> Any:
        """Gradient with respect to the last ``forward``'s input; stores parameter gradients."""
        if self._backward is None:
            raise RuntimeError(f"{self.name}.backward() called before forward()")
        dtype = self.compute_dtype()
        if isinstance(dy, tuple):
            dy = tuple(self._backend.asarray(d, dtype) for d in dy)
        else:
            dy = self._backend.asarray(dy, dtype)
        if self._single:
            dy = tuple(d[None, ...] for d in dy) if isinstance(dy, tuple) else dy[None, ...]
        dx, grads = self._backward(dy)
        self.store_gradients(grads)
        return first_sample(dx) if self._single else dx

    def store_gradients(self, grads: Mapping[str, Any]) -> None:
        """Keep ``grads`` (nested as a backward returns them, or dotted) for :meth:`gradients`."""
        for module in self.modules():
            module.__dict__["_grads"] = {}
        flat = flatten(grads)
        for prefix, module in self.named_modules():
            module.__dict__["_grads"] = {k: flat[prefix + k] for k in module._params if prefix + k in flat}

    # ------------------------------------------------------------ training API (see portnn.train)
    def fit(self, X: Any, y: Any, **kwargs: Any) -> Any:
        """Train on ``X, y``; see :func:`portnn.fit`."""
        return workflow("fit")(self, X, y, **kwargs)

    def predict(self, X: Any, batch_size: int | None = None, **kwargs: Any) -> Any:
        """Outputs in inference mode, as arrays of the model's backend; see :func:`portnn.predict`."""
        return workflow("predict")(self, X, batch_size=batch_size, **kwargs)

    def evaluate(self, X: Any, y: Any, **kwargs: Any) -> Any:
        """Mean loss (and metrics) on ``X, y``; see :func:`portnn.evaluate`."""
        return workflow("evaluate")(self, X, y, **kwargs)

    def predict_proba(self, X: Any, batch_size: int | None = None) -> Any:
        """Class probabilities; see :func:`portnn.predict_proba`."""
        return workflow("predict_proba")(self, X, batch_size=batch_size)

    def predict_classes(self, X: Any, batch_size: int | None = None) -> Any:
        """Predicted class labels; see :func:`portnn.predict_classes`."""
        return workflow("predict_classes")(self, X, batch_size=batch_size)

    def save(self, path: Any, metadata: Any = None) -> None:
        """Save architecture, parameters and optimizer state (and ``metadata``, notes of
        your own) to ``path``; see :func:`portnn.save` and :func:`portnn.load`."""
        workflow("save")(self, path, metadata)

    def summary(self, input_shape: Any = None, file: Any = _STDOUT) -> Any:
        """A table of every module: name, type, output shape, parameter count; see :mod:`portnn.nn.summary`.

        ``input_shape`` is the per-sample shape (a tuple of them for several
        inputs); without it, the shape the first layer takes, when it tells.
        Printed to ``file`` (None: not printed) and returned.
        """
        from .summary import summarize

        table = summarize(self, input_shape)
        if file is not None:
            # the sys.stdout of the call, not of the import (redirect_stdout, captured output)
            print(table, file=sys.stdout if file is _STDOUT else file)
        return table

    def __repr__(self) -> str:
        children = self.children()
        if not children:
            return f"{type(self).__name__}({self._repr_args()})"
        inner = ",\n".join(f"  ({name}): " + repr(child).replace("\n", "\n  ") for name, child in children)
        return f"{type(self).__name__}(\n{inner}\n)"

    def _repr_args(self) -> str:
        return ""
