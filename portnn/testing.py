"""The contract every module passes: :func:`check_module`.

``check_module(module, x)`` runs one module (a layer of portnn's or of your own,
or any tree of them) through the checks that make it a good citizen of a model,
and raises :class:`AssertionError` naming the first check that fails::

    import portnn as pn
    pn.testing.check_module(Scale(4), np.random.default_rng(0).normal(size=(8, 4)))

portnn's test suite runs it over every class of :attr:`Module.registry
<portnn.Module.registry>`, so a new layer is covered by being registered.
The module passed in is never changed: every check works on copies.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import numpy as np

from . import _tree
from .backend import _has_float64, available_backends, backend_of, dtype_name, to_numpy
from .export import export_onnx
from .io import load, save
from .nn.module import Module, call_backward
from .train.inference import predict

__all__ = ["check_module"]

_MAX_ENTRIES = 20  # entries of each array checked by central differences (a seeded sample)
_GRAD_TOL = (1e-5, 1e-7)  # (rtol, atol) of the float64 gradient check
_OUT_TOL = {"float16": (1e-2, 1e-3), "float32": (1e-5, 1e-6), "float64": (1e-10, 1e-12)}


def check_module(
    module: Module,
    x: Any,
    *,
    backends: Sequence[str] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    onnx: bool | None = None,
) -> None:
    """Check ``module`` on the batch ``x`` (an array whose first axis is the samples,
    or a tuple of them for a module that takes several inputs); raise
    :class:`AssertionError` naming the failed check, as
    ``"check_module(Scale): gradient check of parameter 'scale' failed: ..."``.

    The checks, in order:

    1. **gradients**: on a float64 copy (on NumPy where the backend has no
       float64), with every module unfrozen, in training and in inference mode:
       the input gradient and the gradient of every parameter that ``backward``
       returns match central differences of ``sum(y * r)`` for a fixed random
       ``r``; ``backward`` returns one gradient per parameter, of its shape,
       and the same ones with ``need_dx=False``. Modules holding a NumPy
       generator in ``generator`` (Dropout) are rewound before every
       evaluation, so all see one mask.
    2. **config and file**: every module's ``config()`` is JSON-serializable,
       and :func:`~portnn.save` then :func:`~portnn.load` (with the tree's own
       classes as ``custom_objects``) rebuilds the same tree: same parameters,
       buffers, trainable flags and extra state, and the same inference output.
    3. **backends**: a copy moved with ``to()`` to each backend (``backends``,
       by default :func:`~portnn.available_backends`) holds the same parameters
       and gives the same inference output.
    4. **inference path**: ``infer(x)`` equals ``apply(x, False)[0]``.
    5. **ONNX**: where ndonnx and onnxruntime are importable (or ``onnx=True``;
       ``onnx=False`` skips it, for a layer that is not meant to export), the
       module exported by :func:`~portnn.export_onnx` and run by onnxruntime
       gives what :func:`~portnn.predict` gives, for the batch and one sample.

    Outputs are compared with the tolerance of the less precise dtype
    (float32: ``rtol`` 1e-5, ``atol`` 1e-6; float64: 1e-10, 1e-12), gradients
    with ``rtol`` 1e-5 and ``atol`` 1e-7; ``atol`` is scaled by the magnitude
    of the values compared (at least 1). ``atol``/``rtol`` replace those
    defaults in every check.
    """
    if not isinstance(module, Module):
        raise TypeError(f"check_module() takes a portnn Module, got {type(module).__name__}")
    check = _Check(f"check_module({type(module).__name__})", (rtol, atol))
    x_host = _host_input(x)
    _check_gradients(check, module, x_host)
    _check_config_and_file(check, module, x_host)
    _check_backends(check, module, x_host, available_backends() if backends is None else backends)
    _check_inference_path(check, module, x_host)
    if onnx is None:
        onnx = all(importlib.util.find_spec(m) for m in ("ndonnx", "onnx", "onnxruntime"))
    if onnx:
        _check_onnx(check, module, x_host)


class _Check:
    """The failure messages and comparisons of one ``check_module`` call."""

    def __init__(self, label: str, tol: tuple[float | None, float | None]) -> None:
        self.label, self.tol = label, tol

    def fail(self, message: str) -> NoReturn:
        raise AssertionError(f"{self.label}: {message}")

    def tolerance(self, default: tuple[float, float]) -> tuple[float, float]:
        rtol, atol = self.tol
        return (default[0] if rtol is None else rtol), (default[1] if atol is None else atol)

    def close(
        self, what: str, got: Any, expected: Any, scale_of: Any = None, tol: Any = None
    ) -> None:
        """Two trees of arrays of one structure and shapes, equal to the tolerance of the less
        precise dtype, ``atol`` scaled by the magnitude of ``expected`` and ``scale_of``."""
        got, expected = _leaves(got), _leaves(expected)
        if len(got) != len(expected):
            self.fail(f"{what}: {len(got)} arrays where {len(expected)} were expected")
        sizes = [float(np.max(np.abs(to_numpy(v)), initial=0.0)) for v in _leaves(scale_of)]
        for i, (g, e) in enumerate(zip(got, expected)):
            g, e = np.asarray(to_numpy(g)), np.asarray(to_numpy(e))
            where = f" (output {i})" if len(expected) > 1 else ""
            if g.shape != e.shape:
                self.fail(f"{what}{where}: shape {g.shape}, expected {e.shape}")
            dtypes = (_OUT_TOL.get(dtype_name(d), _OUT_TOL["float64"]) for d in (g.dtype, e.dtype))
            r, a = tol or self.tolerance(max(dtypes, key=lambda t: t[0]))
            g64, e64 = g.astype(np.float64), e.astype(np.float64)
            a *= max([1.0, float(np.max(np.abs(e64), initial=0.0)), *sizes])
            bad = ~np.isclose(g64, e64, rtol=r, atol=a, equal_nan=True)
            if bad.any():
                diff = np.where(bad, np.nan_to_num(np.abs(g64 - e64), nan=np.inf), -1.0)
                at = np.unravel_index(int(np.argmax(diff)), diff.shape)
                self.fail(
                    f"{what}{where}: {int(bad.sum())} of {bad.size} values differ, the most at "
                    f"index {tuple(int(k) for k in at)}: got {float(g64[at]):.10g}, expected "
                    f"{float(e64[at]):.10g} (rtol={r:g}, atol={a:g})"
                )


# ---------------------------------------------------------------- trees of arrays


def _host_input(x: Any) -> Any:
    """``x`` as NumPy copies (a tuple stays a tuple), each a batch of real floats."""
    if isinstance(x, tuple | list):
        if not x:
            raise ValueError("check_module: x is an empty tuple")
        return tuple(_host_input(v) for v in x)
    arr = np.array(to_numpy(x), copy=True)
    if arr.dtype.kind != "f" or arr.ndim < 2:
        raise ValueError(
            "check_module takes a batch of real floats (first axis: samples), "
            f"got {arr.dtype} of shape {arr.shape}"
        )
    return arr


def _leaves(tree: Any) -> list[Any]:
    if tree is None:
        return []
    if isinstance(tree, tuple | list):
        return [leaf for v in tree for leaf in _leaves(v)]
    return [tree]


def _rebuild(template: Any, leaves: list[Any]) -> Any:
    """``leaves`` (in order) nested as ``template`` is."""
    it = iter(leaves)

    def build(t: Any) -> Any:
        return tuple(build(v) for v in t) if isinstance(t, tuple | list) else next(it)

    return build(template)


def _input_dtype(module: Module) -> Any:
    """The dtype ``predict`` casts inputs to: the parameters', else float32."""
    dtype = module.compute_dtype()
    return dtype if dtype is not None else module.xp.float32


def _on(module: Module, host: Any, dtype: Any = None) -> Any:
    """``host`` on the module's backend, in ``dtype`` (default: what ``predict`` casts to)."""
    dtype = _input_dtype(module) if dtype is None else dtype
    return _rebuild(host, [module.backend.asarray(v, dtype) for v in _leaves(host)])


def _rewinder(module: Module) -> Callable[[], None]:
    """A function that rewinds every host generator in ``module`` to its present state."""
    found = [getattr(m, "generator", None) for m in module.modules()]
    found = [g for g in found if isinstance(g, np.random.Generator)]
    states = [g.bit_generator.state for g in found]

    def rewind() -> None:
        for g, state in zip(found, states):
            g.bit_generator.state = state

    return rewind


def _where(prefix: str, module: Module) -> str:
    return f"{prefix[:-1] or 'the module'} ({type(module).__name__})"


# ---------------------------------------------------------------- 1. gradients


def _check_gradients(check: _Check, module: Module, x_host: Any) -> None:
    """The gradients ``backward`` returns are those of ``sum(y * r)`` (central differences, float64)."""
    probe = module.copy().unfreeze()  # every gradient computed, and checked
    if _has_float64(probe.backend):
        probe.to(dtype="float64")
    if not _has_float64(probe.backend) or any(
        dtype_name(p.dtype) != "float64" for p in probe.parameters().values()
    ):
        probe.to("numpy", dtype="float64")
    x64 = _rebuild(x_host, [v.astype(np.float64) for v in _leaves(x_host)])
    for training in (True, False):
        _check_gradients_in_mode(check, probe, x64, training)


def _check_gradients_in_mode(check: _Check, probe: Module, x64: Any, training: bool) -> None:
    backend, f64, mode = probe.backend, probe.xp.float64, f"training={training}"
    rewind = _rewinder(probe)

    def run(xh: Any) -> tuple[Any, Any]:
        rewind()
        return probe.apply(_on(probe, xh, f64), training)

    try:
        y, backward = run(x64)
    except Exception as e:  # noqa: BLE001 -- reported as the failed check
        check.fail(f"apply(x, {mode}) failed in float64 on {backend}: {type(e).__name__}: {e}")
    ys = [to_numpy(v) for v in _leaves(y)]
    r = [np.random.default_rng(1234 + i).normal(size=v.shape) for i, v in enumerate(ys)]
    scale = max(1.0, sum(float(np.sum(np.abs(v * ri))) for v, ri in zip(ys, r)))

    def loss(xh: Any) -> float:
        return sum(float(np.sum(to_numpy(v) * ri)) for v, ri in zip(_leaves(run(xh)[0]), r))

    dy = _rebuild(y, [backend.asarray(ri, f64) for ri in r])
    dx, nested = backward(dy)
    grads = _gradients(check, mode, probe, nested)
    no_dx = _gradients(
        check, f"{mode}, need_dx=False", probe, call_backward(backward, dy, False)[1]
    )
    what = f"backward(dy, need_dx=False) ({mode}) gives other parameter gradients than backward(dy)"
    check.close(what, list(no_dx.values()), list(grads.values()), tol=(1e-12, 1e-14))
    leaves, dxs = _leaves(x64), _leaves(dx)
    if len(dxs) != len(leaves):
        check.fail(f"backward ({mode}) returns {len(dxs)} input gradients for {len(leaves)} inputs")
    for i, (xi, dxi) in enumerate(zip(leaves, dxs)):
        if tuple(dxi.shape) != xi.shape:
            check.fail(
                f"the input gradient ({mode}) has shape {tuple(dxi.shape)}, the input {xi.shape}"
            )

        def at_input(v: np.ndarray, i: int = i) -> float:
            return loss(_rebuild(x64, [v if j == i else leaves[j] for j in range(len(leaves))]))

        what = "the input" if len(leaves) == 1 else f"input {i}"
        _differences(check, f"gradient check of {what} failed ({mode})", xi, dxi, at_input, scale)
    for name, g in grads.items():
        original = probe.parameters()[name]

        def at_parameter(v: np.ndarray, name: str = name) -> float:
            probe.assign_parameters({name: backend.asarray(v, f64)})
            return loss(x64)

        what = f"gradient check of parameter {name!r} failed ({mode})"
        try:
            _differences(check, what, to_numpy(original).astype(np.float64), g, at_parameter, scale)
        finally:
            probe.assign_parameters({name: original})


def _gradients(check: _Check, mode: str, probe: Module, nested: Any) -> dict[str, Any]:
    """The flattened gradients: one per parameter, named and shaped as it is."""
    if not isinstance(nested, dict):
        check.fail(
            f"backward ({mode}) returns {type(nested).__name__} as its gradients, not a dict"
        )
    grads = {k: v for k, v in _tree.flatten(nested).items() if v is not None}
    params = probe.parameters()
    missing, unknown = [n for n in params if n not in grads], [n for n in grads if n not in params]
    if missing or unknown:
        check.fail(
            f"backward ({mode}) returns no gradient for parameters {missing} and gradients for "
            f"unknown names {unknown} (a child's gradients go under the child's name, unchanged)"
        )
    for name, p in params.items():
        if tuple(grads[name].shape) != tuple(p.shape):
            check.fail(
                f"the gradient of parameter {name!r} ({mode}) has shape "
                f"{tuple(grads[name].shape)}, the parameter {tuple(p.shape)}"
            )
    return {name: grads[name] for name in params}


def _differences(
    check: _Check, what: str, value: np.ndarray, analytic: Any, loss_at: Callable, scale: float
) -> None:
    """Central differences of ``loss_at`` around ``value`` against ``analytic`` (seeded entries)."""
    rtol, atol = check.tolerance(_GRAD_TOL)
    analytic = np.asarray(to_numpy(analytic), dtype=np.float64)
    n = value.size
    for k in sorted(np.random.default_rng(n).choice(n, size=min(n, _MAX_ENTRIES), replace=False)):
        index = np.unravel_index(int(k), value.shape)
        h = 1e-6 * max(1.0, abs(float(value[index])))
        plus, minus = value.copy(), value.copy()
        plus[index] += h
        minus[index] -= h
        numeric = (loss_at(plus) - loss_at(minus)) / (2 * h)
        got = float(analytic[index])
        if not abs(got - numeric) <= atol * scale + rtol * max(abs(got), abs(numeric)):
            check.fail(
                f"{what}: at index {tuple(int(i) for i in index)} backward gives {got:.10g}, "
                f"central differences {numeric:.10g}"
            )


# ---------------------------------------------------------------- 2. config and file


def _check_config_and_file(check: _Check, module: Module, x_host: Any) -> None:
    """``config()`` is JSON; save then load rebuilds the same tree, arrays, flags and output."""
    for prefix, m in module.named_modules():
        try:
            json.dumps(m.config())
        except (TypeError, ValueError) as e:
            check.fail(f"config() of {_where(prefix, m)} is not JSON-serializable: {e}")
    if importlib.util.find_spec("safetensors") is None:
        return  # pn.save needs it (portnn[io])
    registry = Module.registry
    ours = {type(m).__name__: type(m) for m in module.modules()}
    custom = {name: cls for name, cls in ours.items() if registry.get(name) is not cls}
    original = module.copy().eval()
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "module.safetensors")
        try:
            save(original, path)
            loaded = load(path, str(module.backend), module.backend.device, custom_objects=custom)
        except Exception as e:  # noqa: BLE001 -- reported as the failed check
            check.fail(f"save/load round trip failed: {type(e).__name__}: {e}")
    before, after = list(original.named_modules()), list(loaded.named_modules())
    if [(p, type(m)) for p, m in before] != [(p, type(m)) for p, m in after]:
        check.fail("save/load round trip rebuilt another tree (check config() and from_config())")
    for kind in ("parameters", "buffers"):
        old, new = getattr(original, kind)(), getattr(loaded, kind)()
        if list(old) != list(new):
            check.fail(f"save/load round trip changed the {kind}: {list(old)} -> {list(new)}")
        for name in old:
            b, a = to_numpy(old[name]), to_numpy(new[name])
            if b.dtype != a.dtype or b.shape != a.shape or not np.array_equal(b, a, equal_nan=True):
                check.fail(f"save/load round trip changed {kind[:-1]} {name!r}")
    for (prefix, m), (_, n) in zip(before, after):
        if m.trainable != n.trainable or json.dumps(m.extra_state()) != json.dumps(n.extra_state()):
            check.fail(
                f"save/load round trip changed the trainable flag or extra state of {_where(prefix, m)}"
            )
    what = "save/load round trip changed the inference output (does config() hold every argument?)"
    check.close(
        what, loaded.infer(_on(loaded, x_host)), original.infer(_on(original, x_host)), x_host
    )


# ---------------------------------------------------------------- 3. backends


def _check_backends(check: _Check, module: Module, x_host: Any, names: Sequence[str]) -> None:
    """A copy moved to each backend holds the parameters and gives the output of the module."""
    reference = module.copy().eval()
    expected = reference.infer(_on(reference, x_host))
    for name in names:
        try:
            moved = module.copy().eval().to(name)
        except Exception as e:  # noqa: BLE001 -- reported as the failed check
            check.fail(f"to({name!r}) failed: {type(e).__name__}: {e}")
        for key, value in [*moved.parameters().items(), *moved.buffers().items()]:
            where = backend_of(value)
            if where is None or str(where) != name:
                check.fail(f"to({name!r}) left {key!r} on {where or type(value).__name__}")
        params = list(moved.parameters().values())
        check.close(
            f"to({name!r}) changed the parameters", params, list(reference.parameters().values())
        )
        try:
            got = moved.infer(_on(moved, x_host))
        except Exception as e:  # noqa: BLE001 -- reported as the failed check
            check.fail(f"inference after to({name!r}) failed: {type(e).__name__}: {e}")
        check.close(f"to({name!r}) changed the inference output", got, expected, x_host)


# ---------------------------------------------------------------- 4. inference path


def _check_inference_path(check: _Check, module: Module, x_host: Any) -> None:
    """``infer(x)`` (the fast inference path) computes what ``apply(x, False)`` computes."""
    probe = module.copy().eval()
    rewind = _rewinder(probe)
    xb = _on(probe, x_host)
    rewind()
    fast = probe.infer(xb)
    rewind()
    slow = probe.apply(xb, False)[0]
    for f, s in zip(_leaves(fast), _leaves(slow)):
        if f.dtype != s.dtype:
            check.fail(
                f"infer(x) gives {dtype_name(f.dtype)}, apply(x, False)[0] {dtype_name(s.dtype)}"
            )
    check.close("infer(x) differs from apply(x, False)[0]", fast, slow, x_host)


# ---------------------------------------------------------------- 5. ONNX


def _check_onnx(check: _Check, module: Module, x_host: Any) -> None:
    """The ONNX trace, run by onnxruntime, gives ``predict``'s output (batch and one sample)."""
    import onnxruntime

    model = module.copy().eval()
    several = isinstance(x_host, tuple)
    inputs = list(x_host) if several else [x_host]
    shapes = tuple(tuple(v.shape[1:]) for v in inputs)
    dtype = dtype_name(_input_dtype(model))
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "module.onnx")
        try:
            export_onnx(model, path, input_shape=shapes if several else shapes[0])
            session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 -- reported as the failed check
            check.fail(f"ONNX export failed: {type(e).__name__}: {e}")
    names = [f"input_{i}" for i in range(len(inputs))] if several else ["input"]
    for rows in sorted({len(inputs[0]), 1}, reverse=True):
        batch = [v[:rows] for v in inputs]
        got = session.run(None, {n: v.astype(dtype) for n, v in zip(names, batch)})
        expected = predict(model, tuple(batch) if several else batch[0])
        what = f"the ONNX graph run by onnxruntime differs from predict (batch of {rows})"
        check.close(what, got, expected, batch)
