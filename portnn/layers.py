"""Layers: the Module protocol, Dense, activation layers and Sequential.

A layer's math is one method, ``_forward(x, training) -> (y, backward)``: the
backward is a closure over exactly what the forward computed, so the pair can
never drift apart and nothing is cached between calls. ``backward(dy, need_dx)``
returns ``(dx, grads)`` with ``grads`` keyed like the layer's parameters.

Only ``self.xp`` (the backend's Array API namespace) is used for math.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from . import functional as F
from ._checks import as_input, check_features, host_array, positive_number
from ._rwlock import ReadWriteLock
from ._checks import check_finite as _check_finite
from .backend import Backend, _library_name, _make_backend, dtype_name, get_backend, host_rng
from ._file_checks import check_real
from .init import get_initializer

__all__ = [
    "ELU",
    "GELU",
    "Dense",
    "Identity",
    "LeakyReLU",
    "Module",
    "ReLU",
    "SiLU",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Softplus",
    "Step",
    "Tanh",
]

Backward = Callable[..., tuple[Any, dict[str, Any]]]


class Module:
    """Base of every layer and model.

    Parameters live on one backend (``model.backend``); ``model.to(name)``
    moves them. A module starts in inference mode; ``train()`` / ``eval()``
    switch the mode that calling it (``model(x)``, ``forward``) uses. ``fit``,
    ``evaluate`` and ``predict`` choose their own mode per call and leave this
    flag alone, so a training run never changes what other threads see.
    """

    training: bool = False

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
        self._params: dict[str, Any] = {}
        # arrays that are state but not trained (running statistics): moved, copied, saved
        self._buffers: dict[str, Any] = {}
        self._grads: dict[str, Any] = {}
        self._backend: Backend = get_backend()
        self._backward: Backward | None = None
        self._single = False
        self.name = type(self).__name__

    # ------------------------------------------------------------ structure
    def children(self) -> list[tuple[str, Module]]:
        return []

    def modules(self) -> Iterator[Module]:
        """This module and every module inside it, depth first."""
        yield self
        for _, child in self.children():
            yield from child.modules()

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def xp(self) -> Any:
        return self._backend.xp

    def _slots(self, prefix: str = "") -> list[tuple[str, Module, str]]:
        """(full name, owning module, own key) for every parameter, in order."""
        slots = [(prefix + key, self, key) for key in self._params]
        for child_name, child in self.children():
            slots.extend(child._slots(f"{prefix}{child_name}."))
        return slots

    def buffers(self) -> OrderedDict[str, Any]:
        """Name → array for every non-trained state array (e.g. ``"1.running_mean"``)."""
        found: OrderedDict[str, Any] = OrderedDict((k, v) for k, v in self._buffers.items())
        for child_name, child in self.children():
            for k, v in child.buffers().items():
                found[f"{child_name}.{k}"] = v
        return found

    def load_buffers(self, buffers: Mapping[str, Any], *, check_finite: bool = True) -> None:
        """Set buffers from name → array-like, checking names, shapes and values first.

        A floating buffer takes floating-point values only (TypeError for
        integers, bools, complex numbers), and, unless ``check_finite=False``,
        no NaN or infinity (ValueError); a layer may refuse more (BatchNorm: a
        negative ``running_var``). Nothing changes unless every entry is valid.
        """
        if not isinstance(buffers, Mapping):
            raise TypeError(f"load_buffers takes a mapping of name -> array, got {type(buffers).__name__}")
        owners = {}
        for module_name, module in self.named_modules():
            for key, old in module._buffers.items():
                owners[f"{module_name}{key}"] = (module, key, old)
        unknown = [k for k in buffers if k not in owners]
        if unknown:
            raise KeyError(f"unknown buffer names {unknown}; this model has {list(owners)}")
        new = {}
        for full, value in buffers.items():
            module, key, old = owners[full]
            xp = module._backend.xp
            floating = xp.isdtype(old.dtype, "real floating")
            check_real(f"buffer {full!r}", value, floating=floating)
            arr = module._backend.asarray(value, old.dtype, copy=True)
            if tuple(arr.shape) != tuple(old.shape):
                raise ValueError(f"buffer {full!r} has shape {tuple(old.shape)}, got {tuple(arr.shape)}")
            if check_finite and floating:
                _check_finite(f"buffer {full!r}", arr, xp)
            module._check_buffer(key, arr, f"buffer {full!r}")
            new[full] = arr
        for full, arr in new.items():
            module, key, _ = owners[full]
            module._buffers[key] = arr

    def _check_buffer(self, key: str, value: Any, label: str) -> None:
        """Refuse a value for buffer ``key`` this layer cannot use (ValueError naming ``label``)."""

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """(prefix, module) pairs; the prefix ends with "." except for the root ("")."""
        yield prefix, self
        for child_name, child in self.children():
            yield from child.named_modules(f"{prefix}{child_name}.")

    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this module (JSON-friendly); see ``portnn.io``."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """JSON-friendly state that is neither parameter nor buffer (e.g. a generator's state)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    def has_penalty(self) -> bool:
        """Whether this module adds a penalty (L1/L2) to the training loss."""
        return False

    def _penalty(self) -> tuple[Any, dict[str, Any]]:
        """(penalty value, its gradient for each own parameter)."""
        return 0.0, {}

    def save(self, path: Any) -> None:
        """Save architecture, parameters and optimizer state to ``path``; see :func:`portnn.load`."""
        from .io import save

        save(self, path)

    def parameters(self) -> OrderedDict[str, Any]:
        """Name → array for every parameter (``"0.weight"``, ``"0.bias"``, ...)."""
        return OrderedDict((full, owner._params[key]) for full, owner, key in self._slots())

    def gradients(self) -> OrderedDict[str, Any]:
        """Name → gradient from the last ``backward`` / ``value_and_grad``."""
        return OrderedDict(
            (full, owner._grads[key])
            for full, owner, key in self._slots()
            if key in owner._grads
        )

    def load_parameters(self, params: Mapping[str, Any], *, check_finite: bool = True) -> None:
        """Set parameters from name → array-like (any library), checking names and shapes
        (and, unless ``check_finite=False``, rejecting NaN and infinity).

        A floating parameter takes floating-point values only: integers, bools,
        complex numbers, strings and objects are a TypeError naming the parameter,
        whatever the array library. Nothing changes unless every entry is valid.
        """
        if not isinstance(params, Mapping):
            raise TypeError(f"load_parameters takes a mapping of name -> array, got {type(params).__name__}")
        slots = {full: (owner, key) for full, owner, key in self._slots()}
        unknown = [k for k in params if k not in slots]
        if unknown:
            raise KeyError(f"unknown parameter names {unknown}; this model has {list(slots)}")
        new = {}
        for full, value in params.items():
            owner, key = slots[full]
            old = owner._params[key]
            # real numbers only, of any library; a floating parameter takes floating values
            floating = owner._backend.xp.isdtype(old.dtype, "real floating")
            check_real(f"parameter {full!r}", value, floating=floating)
            arr = owner._backend.asarray(value, old.dtype, copy=True)
            if tuple(arr.shape) != tuple(old.shape):
                raise ValueError(
                    f"parameter {full!r} has shape {tuple(old.shape)}, got {tuple(arr.shape)}"
                )
            if check_finite and owner._backend.xp.isdtype(arr.dtype, "real floating"):
                _check_finite(f"parameter {full!r}", arr, owner._backend.xp)
            new[full] = arr
        for full, arr in new.items():
            owner, key = slots[full]
            owner._params[key] = arr

    def _assign(self, params: Mapping[str, Any], slots: list[tuple[str, Module, str]]) -> None:
        """Set parameters without checks (the training loop's fast path)."""
        for full, owner, key in slots:
            owner._params[key] = params[full]

    def to(self, backend: str | None = None, *, device: Any = None, dtype: Any = None) -> Module:
        """Move every parameter (and optimizer state) to ``backend``/``device``, optionally casting.

        The backend, device and dtype are checked first, and every array is moved
        before any module changes, so a move that fails leaves the model as it was.
        Returns the module itself, like PyTorch.
        """
        from ._checks import floating_dtype

        if backend is None and device is None:
            target = self._backend
        else:
            target = _make_backend(backend if backend is not None else str(self._backend), device)
        cast = None if dtype is None else floating_dtype(target, dtype)
        moved = [
            (
                module,
                {k: target.asarray(v, cast) for k, v in module._params.items()},
                {k: _move_buffer(target, v, cast) for k, v in module._buffers.items()},
            )
            for module in self.modules()
        ]
        state = getattr(self, "optimizer_state", None)
        if state is not None:
            state = _move_tree(state, target, cast)
        for module, params, buffers in moved:
            module._backend = target
            module._params, module._buffers = params, buffers
            module._grads = {}
            module._backward = None
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
    def _weights_lock(self) -> ReadWriteLock:
        """Written under by a training step, read under by ``predict``: inference in another
        thread sees the weights of one whole step (see :mod:`portnn._rwlock`)."""
        lock = self.__dict__.get("_lock")
        if lock is None:
            lock = self.__dict__.setdefault("_lock", ReadWriteLock())
        return lock

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __deepcopy__(self, memo: dict) -> Module:
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        for k, v in self.__dict__.items():
            if k == "_lock":
                continue
            if k == "_backward":
                clone.__dict__[k] = None
            elif k in ("_params", "_buffers", "_grads"):
                clone.__dict__[k] = {n: _copy_array(a, self._backend) for n, a in v.items()}
            else:
                clone.__dict__[k] = copy.deepcopy(v, memo)
        return clone

    # ------------------------------------------------------------ compute
    def compute_dtype(self) -> Any:
        """The floating dtype inputs are cast to: that of the first parameter, else None."""
        for value in self._params.values():
            return value.dtype
        for _, child in self.children():
            dtype = child.compute_dtype()
            if dtype is not None:
                return dtype
        return None

    def _forward(self, x: Any, training: bool) -> tuple[Any, Backward]:
        raise NotImplementedError

    def _infer(self, x: Any) -> Any:
        """The inference-mode output alone; hot layers skip building ``backward``."""
        return self._forward(x, False)[0]

    def _input(self, x: Any) -> tuple[Any, bool]:
        dtype = self.compute_dtype()
        if not _ready(self._backend, x, dtype):
            x = as_input(self._backend, "x", x, dtype)
        if x.ndim == 1:
            return x[None, :], True
        return x, False

    def __call__(self, x: Any) -> Any:
        """Apply the module to a batch (2-D) or a single sample (1-D)."""
        x, single = self._input(x)
        y = self._forward(x, True)[0] if self.training else self._infer(x)
        return y[0, ...] if single else y

    def forward(self, x: Any) -> Any:
        """Like calling the module, and keep what ``backward`` needs."""
        x, single = self._input(x)
        y, self._backward = self._forward(x, self.training)
        self._single = single
        return y[0, ...] if single else y

    def backward(self, dy: Any) -> Any:
        """Gradient with respect to the last ``forward``'s input; stores parameter gradients."""
        if self._backward is None:
            raise RuntimeError(f"{self.name}.backward() called before forward()")
        dy = self._backend.asarray(dy, self.compute_dtype())
        if self._single:
            dy = dy[None, ...]
        dx, grads = self._backward(dy, True)
        self._store_gradients(grads)
        return dx[0, ...] if self._single else dx

    def _store_gradients(self, grads: Mapping[str, Any]) -> None:
        for module in self.modules():
            module._grads = {}
        for full, owner, key in self._slots():
            if full in grads:
                owner._grads[key] = grads[full]

    # ------------------------------------------------------------ training API
    def fit(self, X: Any, y: Any, **kwargs: Any) -> Any:
        """Train on ``X, y``; see :func:`portnn.fit`."""
        from .training import fit

        return fit(self, X, y, **kwargs)

    def predict(self, X: Any, batch_size: int | None = None, **kwargs: Any) -> Any:
        """Outputs in inference mode, as arrays of the model's backend; see :func:`portnn.predict`."""
        from .training import predict

        return predict(self, X, batch_size=batch_size, **kwargs)

    def evaluate(self, X: Any, y: Any, **kwargs: Any) -> Any:
        """Mean loss (and metrics) on ``X, y``; see :func:`portnn.evaluate`."""
        from .training import evaluate

        return evaluate(self, X, y, **kwargs)

    def predict_proba(self, X: Any, batch_size: int | None = None) -> Any:
        """Class probabilities; see :func:`portnn.predict_proba`."""
        from .training import predict_proba

        return predict_proba(self, X, batch_size=batch_size)

    def predict_classes(self, X: Any, batch_size: int | None = None) -> Any:
        """Predicted class labels; see :func:`portnn.predict_classes`."""
        from .training import predict_classes

        return predict_classes(self, X, batch_size=batch_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._repr_args()})"

    def _repr_args(self) -> str:
        return ""


def _ready(backend: Backend, x: Any, dtype: Any) -> bool:
    """Whether ``x`` is already a usable input: the backend's array, dtype, 1-D/2-D, not empty.

    The common case of calling a model on its own arrays skips the full checks.
    """
    return (
        dtype is not None
        and _library_name(x) == backend
        and x.dtype == dtype
        and 1 <= x.ndim <= 2
        and all(x.shape)
        and (backend.device is None or x.device == backend.device)
    )


def _move_buffer(target: Backend, value: Any, cast: Any) -> Any:
    """A buffer on ``target``; floating buffers take the cast, integer counters do not."""
    arr = target.asarray(value)
    if cast is not None and target.xp.isdtype(arr.dtype, "real floating"):
        arr = target.xp.astype(arr, cast)
    return arr


def _copy_array(a: Any, backend: Backend) -> Any:
    return backend.xp.asarray(a, copy=True)


def _move_tree(tree: Any, target: Backend, cast: Any = None) -> Any:
    """Optimizer state on ``target``: arrays moved (floating ones cast), everything else as is."""
    if isinstance(tree, dict):
        return {k: _move_tree(v, target, cast) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_move_tree(v, target, cast) for v in tree)
    if isinstance(tree, int | float | str | bool) or tree is None:
        return tree
    return _move_buffer(target, tree, cast)


# ---------------------------------------------------------------- Dense


class Dense(Module):
    """Fully connected layer: ``y = x @ weight + bias``, ``weight`` of shape (in, out).

    ``weight``/``bias`` array-likes are taken as given, dtype included. Otherwise
    they are drawn by ``init`` (and ``bias_init``) from a host generator seeded
    with ``seed``, so the same seed gives the same numbers on every backend.
    ``dtype`` defaults to float32. ``l1``/``l2`` add ``l1 * sum(|weight|) +
    l2 * sum(weight ** 2)`` to the training loss (Keras's kernel regularizers).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        weight: Any = None,
        bias: Any = None,
        init: Any = "xavier_uniform",
        seed: int | None = None,
        dtype: Any = None,
        *,
        bias_init: Any = "zeros",
        use_bias: bool = True,
        l1: float = 0.0,
        l2: float = 0.0,
    ) -> None:
        super().__init__()
        from ._checks import count, positive_number

        self.l1 = positive_number("l1", l1, allow_zero=True)
        self.l2 = positive_number("l2", l2, allow_zero=True)
        self.in_features = count("in_features", in_features)
        self.out_features = count("out_features", out_features)
        self.use_bias = bool(use_bias) or bias is not None
        self.init = init
        self.bias_init = bias_init
        # the initializer names are checked even when explicit arrays make them unused
        init_w, init_b = get_initializer(init), get_initializer(bias_init)
        for name, value in (("weight", weight), ("bias", bias)):
            if value is not None:
                check_real(name, value, floating=False)  # any library: no bool or complex
        backend = self._backend
        shape_w = (self.in_features, self.out_features)
        rng = host_rng(seed)
        if weight is None:
            weight = init_w(rng, shape_w, self.in_features, self.out_features)
            w_dtype = backend.dtype(dtype if dtype is not None else "float32")
        else:
            w_dtype = None if dtype is None else backend.dtype(dtype)
        w = _param(backend, "weight", weight, w_dtype, shape_w)
        self._params["weight"] = w
        if self.use_bias:
            if bias is None:
                bias = init_b(rng, (self.out_features,), self.in_features, self.out_features)
                b_dtype = w.dtype
            else:
                b_dtype = None if dtype is None else backend.dtype(dtype)
            self._params["bias"] = _param(backend, "bias", bias, b_dtype, (self.out_features,))

    def config(self) -> dict[str, Any]:
        from .backend import dtype_name

        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "use_bias": self.use_bias,
            "dtype": dtype_name(self._params["weight"].dtype),
            "init": self.init if isinstance(self.init, str) else "xavier_uniform",
            "bias_init": self.bias_init if isinstance(self.bias_init, str) else "zeros",
            "l1": self.l1,
            "l2": self.l2,
        }

    def has_penalty(self) -> bool:
        return bool(self.l1 or self.l2)

    def _penalty(self) -> tuple[Any, dict[str, Any]]:
        xp = self.xp
        w = self._params["weight"]
        value: Any = 0.0
        grad: Any = 0.0
        if self.l1:
            value = value + self.l1 * xp.sum(xp.abs(w))
            grad = grad + self.l1 * xp.sign(w)
        if self.l2:
            value = value + self.l2 * xp.sum(w * w)
            grad = grad + (2.0 * self.l2) * w
        return value, {"weight": grad}

    @property
    def weight(self) -> Any:
        return self._params["weight"]

    @property
    def bias(self) -> Any:
        return self._params.get("bias")

    def _infer(self, x: Any) -> Any:
        if x.shape[-1] != self.in_features:
            check_features(self.name, self.in_features, x)
        y = x @ self._params["weight"]
        b = self._params.get("bias")
        if b is not None:
            if b.dtype == y.dtype:
                y += b  # in place: the product is a fresh array this layer owns
            else:
                y = y + b
        return y

    def _forward(self, x: Any, training: bool) -> tuple[Any, Backward]:
        y = self._infer(x)
        w = self._params["weight"]
        b = self._params.get("bias")

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            grads = {"weight": x.T @ dy}
            if b is not None:
                grads["bias"] = self.xp.sum(dy, axis=0)
            return (dy @ w.T if need_dx else None), grads

        return y, backward

    def _repr_args(self) -> str:
        return f"{self.in_features}, {self.out_features}"


def _param(backend: Backend, name: str, value: Any, dtype: Any, shape: tuple[int, ...]) -> Any:
    if dtype is not None and not backend.xp.isdtype(dtype, "real floating"):
        raise TypeError(f"dtype must be a floating dtype such as 'float32', got {dtype_name(dtype)!r}")
    if _library_name(value) in (None, "numpy"):
        host_array(name, value)  # numbers only: no strings, objects, bools or complex
    arr = backend.asarray(value, dtype, copy=True)  # never train a caller's array in place
    if tuple(arr.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(arr.shape)}")
    if not backend.xp.isdtype(arr.dtype, "real floating"):
        arr = backend.xp.astype(arr, backend.xp.float32 if dtype is None else dtype)
    _check_finite(name, arr, backend.xp)
    return arr


# ---------------------------------------------------------------- activations


class _Activation(Module):
    """Elementwise activation; subclasses give ``f`` and the gradient from (x, y)."""

    def _f(self, x: Any) -> Any:
        raise NotImplementedError

    def _grad(self, x: Any, y: Any) -> Any:
        raise NotImplementedError

    def _forward(self, x: Any, training: bool) -> tuple[Any, Backward]:
        y = self._f(x)

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            return (dy * self._grad(x, y) if need_dx else None), {}

        return y, backward


class Identity(_Activation):
    def _forward(self, x: Any, training: bool) -> tuple[Any, Backward]:
        return x, lambda dy, need_dx=True: (dy, {})


class Step(_Activation):
    """Heaviside step (the perceptron's activation); its gradient is zero."""

    def _f(self, x: Any) -> Any:
        return F.step(x, xp=self.xp)

    def _grad(self, x: Any, y: Any) -> Any:
        return self.xp.zeros_like(x)


class Sigmoid(_Activation):
    def _f(self, x: Any) -> Any:
        return F.sigmoid(x, xp=self._backend.xp)

    def _grad(self, x: Any, y: Any) -> Any:
        return y * (1.0 - y)

    def _infer(self, x: Any) -> Any:
        return F.sigmoid(x, xp=self._backend.xp)

    def _forward(self, x: Any, training: bool) -> tuple[Any, Backward]:
        y = F.sigmoid(x, xp=self._backend.xp)

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            return (dy * (y * (1.0 - y)) if need_dx else None), {}

        return y, backward


class Tanh(_Activation):
    def _f(self, x: Any) -> Any:
        return self.xp.tanh(x)

    def _grad(self, x: Any, y: Any) -> Any:
        return 1.0 - y * y


class ReLU(_Activation):
    def _forward(self, x: Any, training: bool) -> tuple[Any, Backward]:
        xp = self.xp
        y = xp.maximum(x, 0.0)

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            if not need_dx:
                return None, {}
            # a 0/1 mask times dy: branch-free, several times faster on CPUs than where()
            dx = xp.astype(x > 0, dy.dtype)
            dx *= dy
            return dx, {}

        return y, backward


class LeakyReLU(_Activation):
    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__()
        self.alpha = positive_number("alpha", alpha, allow_zero=True)

    def _f(self, x: Any) -> Any:
        return F.leaky_relu(x, self.alpha, xp=self.xp)

    def _grad(self, x: Any, y: Any) -> Any:
        return F.leaky_relu_derivative(x, self.alpha, xp=self.xp)

    def config(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def _repr_args(self) -> str:
        return f"alpha={self.alpha}"


class ELU(_Activation):
    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = positive_number("alpha", alpha, allow_zero=True)

    def _f(self, x: Any) -> Any:
        return F.elu(x, self.alpha, xp=self.xp)

    def _grad(self, x: Any, y: Any) -> Any:
        return F.elu_derivative(x, self.alpha, xp=self.xp)

    def config(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def _repr_args(self) -> str:
        return f"alpha={self.alpha}"


class GELU(_Activation):
    """GELU, tanh approximation (PyTorch's ``GELU(approximate="tanh")``)."""

    def _f(self, x: Any) -> Any:
        return F.gelu(x, xp=self.xp)

    def _grad(self, x: Any, y: Any) -> Any:
        return F.gelu_derivative(x, xp=self.xp)


class SiLU(_Activation):
    def _f(self, x: Any) -> Any:
        return F.silu(x, xp=self.xp)

    def _grad(self, x: Any, y: Any) -> Any:
        return F.silu_derivative(x, xp=self.xp)


class Softplus(_Activation):
    """``log(1 + exp(beta x)) / beta``, linear above ``threshold`` (PyTorch's defaults)."""

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        super().__init__()
        self.beta = positive_number("beta", beta)
        self.threshold = positive_number("threshold", threshold)

    def config(self) -> dict[str, Any]:
        return {"beta": self.beta, "threshold": self.threshold}

    def _f(self, x: Any) -> Any:
        return F.softplus(x, self.beta, self.threshold, xp=self.xp)

    def _grad(self, x: Any, y: Any) -> Any:
        return F.softplus_derivative(x, self.beta, self.threshold, xp=self.xp)


class Softmax(_Activation):
    """Softmax over the last axis (shifted by the row maximum: never overflows)."""

    def _forward(self, x: Any, training: bool) -> tuple[Any, Backward]:
        xp = self.xp
        y = F.softmax(x, xp=xp)

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            if not need_dx:
                return None, {}
            return y * (dy - xp.sum(dy * y, axis=-1, keepdims=True)), {}

        return y, backward


# ---------------------------------------------------------------- Sequential


class Sequential(Module):
    """Layers applied in order; parameters are named ``"<index>.<name>"``."""

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], list | tuple):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(
                    f"Sequential takes layers; argument {i} is {type(layer).__name__}"
                )
        self.layers = list(layers)
        backends = {str(m._backend) for m in self.modules() if m._params}
        if len(backends) > 1:
            raise ValueError(
                f"Sequential got layers on different backends {sorted(backends)}; "
                "move them with layer.to(name) first"
            )
        owner = next((m for m in self.modules() if m._params), None)
        if owner is not None:
            for module in self.modules():
                module._backend = owner._backend
        for i, layer in enumerate(self.layers):
            layer.name = f"layer {i} ({type(layer).__name__})"

    def children(self) -> list[tuple[str, Module]]:
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def compute_dtype(self) -> Any:
        # on every call of the model: walk the layers without naming them
        for layer in self.layers:
            dtype = layer.compute_dtype()
            if dtype is not None:
                return dtype
        return None

    def config(self) -> dict[str, Any]:
        """Sequential's config is its layers; ``portnn.io`` serializes each in turn."""
        return {}

    def __getitem__(self, index: int) -> Module:
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Module]:
        return iter(self.layers)

    def _infer(self, x: Any) -> Any:
        for layer in self.layers:
            x = layer._infer(x)
        return x

    def _forward(self, x: Any, training: bool) -> tuple[Any, Backward]:
        backwards = []
        for layer in self.layers:
            x, back = layer._forward(x, training)
            backwards.append(back)

        def backward(dy: Any, need_dx: bool = True) -> tuple[Any, dict[str, Any]]:
            per_layer: list[dict[str, Any]] = [{}] * len(backwards)
            for i in range(len(backwards) - 1, -1, -1):
                dy, per_layer[i] = backwards[i](dy, need_dx or i > 0)
            grads = {}
            for i, g in enumerate(per_layer):
                for k, v in g.items():
                    grads[f"{i}.{k}"] = v
            return dy, grads

        return x, backward

    def __repr__(self) -> str:
        inner = ",\n".join(f"  {layer!r}" for layer in self.layers)
        return f"Sequential(\n{inner}\n)"

