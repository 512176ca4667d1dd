"""ONNX export: a model's portable forward pass, traced into an ONNX graph.

portnn's layers compute only with an Array API namespace, so no layer needs
ONNX code of its own: :func:`export_onnx` runs the model's ordinary inference
forward pass on `ndonnx <https://ndonnx.readthedocs.io>`_ arrays, whose
operations record an ONNX graph instead of computing, and writes that graph.

The input is an ndonnx *argument* of shape ``(batch_dim, *input_shape)`` with a
symbolic first dimension, so one exported file takes any number of samples; a
model with several inputs (a tuple of arrays, as :class:`~portnn.Parallel`
takes) gets one graph input per array, and a model with several outputs one
graph output per array. The parameters and buffers (e.g. BatchNorm's running
statistics) become constants of the graph. The model runs in inference mode: dropout is the identity and
batch normalization uses its running statistics, exactly as in
:meth:`~portnn.Module.predict`.

ndonnx (and onnxruntime, to run the file) are optional: ``pip install
"portnn[onnx]"``. portnn imports without them.
"""

from __future__ import annotations

import copy
import functools
import numbers
import os
import re
from typing import Any

from .backend import Backend, dtype_name, to_numpy
from .nn import Module
from .nn.module import map_arrays

__all__ = ["ExportError", "export_onnx"]

_INSTALL = 'pip install "portnn[onnx]"'
_BATCH_DIM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_DTYPES = ("float16", "float32", "float64")


class ExportError(ValueError):
    """A model (or one of its layers) cannot be exported; the message names the layer."""


def export_onnx(
    model: Module,
    path: str | os.PathLike[str],
    batch_dim: str = "N",
    *,
    input_shape: Any = None,
    in_features: int | None = None,
    dtype: Any = None,
    input_name: str = "input",
    output_name: str = "output",
) -> None:
    """Write ``model``'s inference forward pass to ``path`` as an ONNX model.

    The forward pass is traced with ndonnx: the model runs on an ndonnx input
    of shape ``(batch_dim, *input_shape)`` whose first dimension is symbolic,
    with its parameters and buffers copied in as constants, and every
    operation it performs becomes a node of the graph. The model itself is not
    changed (a copy is traced), and it may live on any backend: its arrays are
    read through :func:`~portnn.to_numpy`.

    The exported graph computes what :meth:`~portnn.Module.predict`
    computes, in inference mode (dropout off, batch normalization with its
    running statistics), for a batch of any number of samples. Run it with
    onnxruntime::

        import onnxruntime as ort
        session = ort.InferenceSession("model.onnx")
        (y,) = session.run(None, {"input": X})   # X: (n, *input_shape), the model's dtype

    A model with several inputs (``input_shape`` a tuple of per-sample shapes,
    such as ``Sequential(Parallel(net_a, net_b), Concatenate(), head)``) has
    one graph input per array, named ``f"{input_name}_{i}"`` (``"input_0"``,
    ``"input_1"``, ...), in the order of the model's input tuple. Likewise a
    model whose output is a tuple of arrays has the graph outputs
    ``f"{output_name}_{i}"`` (nested tuples: ``"output_0_1"``, ...); a model
    with one output has the one output ``output_name``.

    The file is written to a temporary file in the same directory and renamed
    onto ``path``, so a failed export leaves any previous file intact.

    :param model: a :class:`~portnn.Module`: any tree of modules (a
        :class:`~portnn.Sequential`, a :class:`~portnn.Parallel`, a layer of
        your own, ...).
    :param path: the file to write (``str`` or ``os.PathLike``), by convention
        ending in ``.onnx``. Its directory must exist.
    :param batch_dim: the name of the symbolic batch dimension (of every input
        and output), a Python-style identifier.
    :param input_shape: the per-sample shape of the input, without the batch
        axis: ``(in_features,)``, ``(T, F)`` for sequences, ``(1, 28, 28)`` for
        images; for a model with several inputs a tuple of such shapes, such as
        ``((3,), (4,))``. By default :meth:`~portnn.Module.input_shape` of the
        model (what its first Dense, BatchNorm or LayerNorm takes, per branch
        for a Parallel); it is needed for models that start with a layer whose
        input shape portnn cannot tell (activations, Flatten, Reshape, a
        Concatenate without branches, a layer of your own), and for samples of
        more than one axis. A shape the model states is checked: the last axis
        for a layer that acts on the last axis (Dense, the norms), the whole
        shape otherwise.
    :param in_features: the number of input features, the same as
        ``input_shape=(in_features,)``.
    :param dtype: the dtype of the graph's inputs, ``"float32"``, ``"float64"``
        or ``"float16"``. By default the dtype the model computes in: that of
        its parameters, float32 for a model without parameters. Another dtype
        is cast to that one on the way in, as :meth:`~portnn.Module.predict`
        casts its input; the output keeps the model's dtype.
    :param input_name: the name of the graph's input (the prefix of the names
        of several inputs).
    :param output_name: the name of the graph's output (the prefix of the
        names of several outputs).
    :raises TypeError: if ``model`` is not a Module or an argument has the
        wrong type.
    :raises ValueError: for a bad ``batch_dim``, ``input_shape``,
        ``in_features``, ``dtype`` or name, or an input shape the model
        does not take.
    :raises OSError: if ``path`` cannot be written (its directory is missing or
        read-only, or ``path`` is a directory); checked before anything is
        traced or written.
    :raises ExportError: if a layer cannot be traced (it reads array values on
        the host, converts to NumPy, or uses something ndonnx lacks); the
        message names the layer.
    :raises ImportError: if ndonnx is not installed (``pip install "portnn[onnx]"``).
    """
    from .io import _atomic_write, _file_name

    if not isinstance(model, Module):
        raise TypeError(f"export_onnx() takes a portnn Module, got {type(model).__name__}")
    path = _file_name(path)
    batch_dim = _check_batch_dim(batch_dim)
    input_name = _check_name("input_name", input_name)
    output_name = _check_name("output_name", output_name)
    if input_name == output_name:
        raise ValueError(f"input_name and output_name must differ, both are {input_name!r}")
    shapes, several = _check_input_shape(model, input_shape, in_features)
    compute = model.compute_dtype()
    model_dtype = dtype_name(compute) if compute is not None else "float32"  # as predict computes
    input_dtype = _check_dtype(dtype, model_dtype)
    _check_writable(path)

    ndx = _ndonnx()
    graph_inputs = (shapes, several, input_dtype, model_dtype)
    proto = _trace(ndx, model, graph_inputs, batch_dim, input_name, output_name)
    try:
        data = proto.SerializeToString()
    except ValueError as e:  # protobuf's 2 GB limit
        raise ExportError(
            f"the ONNX model is too large to write as one file ({e}); ONNX files hold at most 2 GB"
        ) from None
    _atomic_write(path, lambda: data)


# ---------------------------------------------------------------- arguments


def _ndonnx() -> Any:
    try:
        import ndonnx
    except ImportError as e:
        raise ImportError(
            f"ONNX export needs ndonnx (and onnxruntime to run the exported file): {_INSTALL} ({e})"
        ) from e
    return ndonnx


def _check_batch_dim(batch_dim: Any) -> str:
    if not isinstance(batch_dim, str):
        raise TypeError(
            f"batch_dim must be the name of the batch dimension, such as 'N'; "
            f"got {type(batch_dim).__name__}"
        )
    if not _BATCH_DIM.match(batch_dim):
        raise ValueError(
            "batch_dim must be a name of letters, digits and underscores that does not start "
            f"with a digit, such as 'N' or 'batch'; got {batch_dim!r}"
        )
    return batch_dim


def _check_name(argument: str, name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a str, got {type(name).__name__}")
    if not name.strip():
        raise ValueError(f"{argument} must not be empty")
    return name


def _check_in_features(model: Module, in_features: Any) -> int:
    known = _model_width(model)
    if in_features is None:
        if known is None:
            raise ValueError(
                f"cannot tell how many input features {type(model).__name__} takes "
                "(it does not start with a Dense, BatchNorm or LayerNorm); pass in_features="
            )
        return known
    if isinstance(in_features, bool) or not isinstance(in_features, int):
        raise TypeError(f"in_features must be an integer, got {type(in_features).__name__}")
    if in_features < 1:
        raise ValueError(f"in_features must be >= 1, got {in_features!r}")
    if known is not None and in_features != known:
        raise ValueError(f"in_features={in_features} but the model takes {known} input features")
    return int(in_features)


Shapes = tuple[tuple[int, ...], ...]


def _check_input_shape(model: Module, input_shape: Any, in_features: Any) -> tuple[Shapes, bool]:
    """(the per-sample shape of each graph input, whether the model takes a tuple of inputs)."""
    if in_features is not None:
        width = _check_in_features(model, in_features)
        one = (((width,),), False)
        if input_shape is not None and _parse_shapes("input_shape", input_shape) != one:
            raise ValueError(
                f"in_features={width} and input_shape={input_shape!r} disagree; pass one of them"
            )
        return one
    if input_shape is None:
        stated = model.input_shape()
        if stated is None:
            raise ValueError(
                f"cannot tell the input shape of {type(model).__name__} (it does not start with a Dense "
                "or LayerNorm, or a BatchNorm and a Dense); pass input_shape= (the shape of one "
                "sample, e.g. (1, 28, 28)), or, for samples of one axis, pass in_features="
            )
        return _parse_shapes(f"{type(model).__name__}.input_shape()", stated)
    shapes, several = _parse_shapes("input_shape", input_shape)
    _check_against_model(model, shapes, several)
    return shapes, several


def _parse_shapes(argument: str, value: Any) -> tuple[Shapes, bool]:
    """``(3,)`` -> (((3,),), False); ``((3,), (4, 2))`` -> (((3,), (4, 2)), True); checked."""
    if _is_int(value):
        value = (value,)
    if not isinstance(value, tuple | list) or not value:
        error = ValueError if isinstance(value, tuple | list) else TypeError
        raise error(
            f"{argument} must be the shape of one sample, such as (5,) or (1, 28, 28), or a tuple of "
            f"such shapes for several inputs; got {value!r}"
        )
    if all(_is_int(d) for d in value):
        return (_one_shape(argument, value),), False
    if all(isinstance(v, tuple | list) for v in value):
        return tuple(_one_shape(f"{argument}[{i}]", v) for i, v in enumerate(value)), True
    raise TypeError(
        f"{argument} must hold either integers (one input) or shapes (several inputs); got {value!r}"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _one_shape(argument: str, value: Any) -> tuple[int, ...]:
    if not value:
        raise ValueError(f"{argument} must be a non-empty tuple of integers, got {value!r}")
    if not all(_is_int(d) for d in value):
        raise TypeError(f"{argument} must be a tuple of integers, got {value!r}")
    if any(d < 1 for d in value):
        raise ValueError(f"{argument} must hold sizes >= 1, got {tuple(value)!r}")
    return tuple(int(d) for d in value)


def _check_against_model(model: Module, shapes: Shapes, several: bool) -> None:
    """A shape given for a model that states its own: the same number of inputs, and each
    the stated shape (only its last axis, for a layer that states one axis: Dense, the norms)."""
    try:
        stated, stated_several = _parse_shapes("input_shape()", model.input_shape())
    except (TypeError, ValueError):
        return  # the model states nothing (or nothing readable): the trace tells
    if several != stated_several or len(shapes) != len(stated):
        gives = f"{len(shapes)} inputs" if several else "one input"
        takes = f"{len(stated)} inputs {stated}" if stated_several else f"one input {stated[0]}"
        raise ValueError(
            f"input_shape={_show(shapes, several)} gives {gives}, "
            f"but {type(model).__name__} takes {takes}"
        )
    for i, (given, known) in enumerate(zip(shapes, stated)):
        fits = given[-1] == known[0] if len(known) == 1 else given == known
        if not fits:
            where = f" for input {i}" if several else ""
            raise ValueError(
                f"input_shape={_show(shapes, several)} but {type(model).__name__} takes samples of "
                f"shape {known}{where}"
                + (" (any leading axes, that last axis)" if len(known) == 1 else "")
            )


def _show(shapes: Shapes, several: bool) -> str:
    return repr(shapes if several else shapes[0])


def _model_width(model: Module) -> int | None:
    """The input width the model states (:meth:`Module.input_shape`), for a 1-D sample shape."""
    shape = model.input_shape()
    if shape is None or len(shape) != 1 or not isinstance(shape[0], int):
        return None
    return int(shape[0])


def _check_dtype(dtype: Any, model_dtype: str) -> str:
    if dtype is None:
        return model_dtype
    try:
        name = dtype_name(dtype)
    except Exception:  # noqa: BLE001 -- any unreadable dtype is reported the same way
        name = repr(dtype)
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}; got {name!r}")
    return name


def _check_writable(path: str) -> None:
    """Fail before tracing if ``path`` cannot be written (nothing is created here)."""
    if not os.path.basename(path) or os.path.isdir(path):
        raise IsADirectoryError(f"cannot export to {path!r}: it is a directory, not a file name")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(directory):
        raise FileNotFoundError(f"cannot export to {path!r}: no such directory {directory!r}")
    if not os.path.isdir(directory):
        raise NotADirectoryError(f"cannot export to {path!r}: {directory!r} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot export to {path!r}: directory {directory!r} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise PermissionError(f"cannot export to {path!r}: the file is read-only")


# ---------------------------------------------------------------- tracing


def _trace(
    ndx: Any,
    model: Module,
    graph_inputs: tuple[Shapes, bool, str, str],
    batch_dim: str,
    input_name: str,
    output_name: str,
) -> Any:
    from ._version import __version__

    shapes, several, input_dtype, model_dtype = graph_inputs
    traced = _traceable_copy(ndx, model)
    xs = [
        ndx.argument(shape=(batch_dim, *shape), dtype=getattr(ndx, input_dtype)) for shape in shapes
    ]
    hs = xs
    if model_dtype != input_dtype:
        hs = [ndx.astype(h, getattr(ndx, model_dtype)) for h in xs]  # as predict casts its input
    # the model's inference forward pass, as model(x) runs it in eval mode on a batch
    y = traced.infer(tuple(hs) if several else hs[0])
    outputs = _graph_outputs(ndx, model, y, output_name)
    inputs = {f"{input_name}_{i}": x for i, x in enumerate(xs)} if several else {input_name: xs[0]}
    clash = sorted(set(inputs) & set(outputs))
    if clash:
        raise ValueError(
            f"the graph's input and output names clash ({clash}); choose another input_name or output_name"
        )
    try:
        proto = ndx.build(inputs, outputs)
    except Exception as e:  # noqa: BLE001 -- reported with what was being exported
        raise ExportError(f"could not build the ONNX graph of {_label('', model)}: {e}") from e

    for output in proto.graph.output:
        out_shape = output.type.tensor_type.shape
        first = out_shape.dim[0] if out_shape.dim else None
        if first is not None and not first.dim_param and not first.HasField("dim_value"):
            # a layer maps each sample to a sample (Module.__call__ relies on it): the output's first
            # axis is the input's batch dimension, which ONNX's shape inference lost on the way
            first.dim_param = batch_dim
    proto.producer_name = "portnn"
    proto.producer_version = __version__
    proto.graph.name = type(model).__name__
    proto.doc_string = f"exported by portnn {__version__} with ndonnx:\n{model!r}"
    return proto


def _graph_outputs(ndx: Any, model: Module, y: Any, name: str) -> dict[str, Any]:
    """Output name -> traced array: ``name`` for one array, ``name_0``, ``name_1``, ... for a tuple."""
    if isinstance(y, ndx.Array):
        return {name: y}
    if isinstance(y, tuple | list) and y:
        outputs: dict[str, Any] = {}
        for i, yi in enumerate(y):
            outputs.update(_graph_outputs(ndx, model, yi, f"{name}_{i}"))
        return outputs
    raise ExportError(
        f"{_label('', model)} returned {type(y).__name__}, not a traced array (or a tuple of them); "
        "it cannot be exported"
    )


def _traceable_copy(ndx: Any, model: Module) -> Module:
    """A copy of ``model`` in inference mode whose arrays are ndonnx constants.

    Every module computes with the ndonnx namespace, and every module's forward
    is wrapped so that a failure names the layer it happened in.
    """
    # what fit attaches (the optimizer's state may be as large as the model) is not copied
    memo: dict[int, Any] = {}
    for attr in ("optimizer_state", "optimizer", "loss", "history"):
        value = model.__dict__.get(attr)
        if value is not None:
            memo[id(value)] = None
    try:
        clone = copy.deepcopy(model, memo)
    except Exception as e:  # noqa: BLE001 -- e.g. an attribute that cannot be copied
        raise ExportError(f"cannot copy {_label('', model)} to trace it: {e}") from e
    map_arrays(
        clone,
        Backend("ndonnx", ndx),
        lambda prefix, module, item: _constant(ndx, item[1], _label(prefix, module), item[0]),
    )
    for prefix, module in clone.named_modules():
        label = _label(prefix, module)
        module.training = False
        # on the copy only: a failure names the layer it happened in
        module.infer = _named(ndx, module.infer, label, pair=False)
        module.apply = _named(ndx, module.apply, label, pair=True)
    return clone


def _constant(ndx: Any, value: Any, label: str, key: str) -> Any:
    try:
        return ndx.asarray(to_numpy(value))
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{label}: cannot copy {key!r} into the ONNX graph: {e}") from e


def _label(prefix: str, module: Module) -> str:
    kind = type(module).__name__
    where = prefix.rstrip(".")
    return f"layer {where} ({kind})" if where else f"the model ({kind})"


def _named(ndx: Any, method: Any, label: str, *, pair: bool) -> Any:
    """``method`` with its failures turned into an ExportError naming the layer."""

    @functools.wraps(method)
    def traced(x: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = method(x, *args, **kwargs)
        except ExportError:
            raise
        except Exception as e:  # noqa: BLE001 -- any failure in the layer is reported as its own
            raise ExportError(
                f"{label} cannot be exported to ONNX: its forward pass failed under ndonnx "
                f"({type(e).__name__}: {e}). An exportable layer computes with its Array API "
                "namespace (self.xp) only, without reading array values on the host "
                "(bool(), float(), .item(), conversion to NumPy)"
            ) from e
        y = result[0] if pair and isinstance(result, tuple) else result
        if not _traced(ndx, y):
            raise ExportError(
                f"{label} cannot be exported to ONNX: its forward pass returned "
                f"{type(y).__name__}, not an array of its namespace (self.xp) or a tuple of them; "
                "it must not convert to NumPy or another library"
            )
        return result

    return traced


def _traced(ndx: Any, y: Any) -> bool:
    """Whether ``y`` is a traced array, or a (nested) non-empty tuple of them."""
    if isinstance(y, tuple | list):
        return bool(y) and all(_traced(ndx, v) for v in y)
    return isinstance(y, ndx.Array)
