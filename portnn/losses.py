"""Loss objects: a value and its gradient with respect to the predictions, in one pass.

``loss(pred, target)`` gives the mean loss (PyTorch's default reductions);
``loss.value_and_grad(pred, target)`` is what training uses. ``fit`` accepts a
loss object or a name ("mse", "binary_cross_entropy", "cross_entropy").

Weights: ``loss(pred, target, sample_weight=w)`` and
``loss.value_and_grad(pred, target, xp, weight=w)`` (``w`` one weight per
sample) give ``sum(w * l) / sum(w)``, ``l`` each sample's unweighted loss (its
mean over the outputs, or as each loss documents), and its exact gradient. A
weight of 0 is the same as leaving the sample out, and a batch whose weights are
all 0 has loss 0 and gradient 0. With ``w = class_weight[y]`` and class-index
targets that is PyTorch's ``cross_entropy(..., weight=class_weight)``.
``loss.sample_weights(target, n_outputs, sample_weight, class_weight)`` builds
``w`` from what a user passes to ``fit`` (see :mod:`portnn.weights`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np  # host side only: targets are validated on the host once per fit

from . import functional as F
from ._checks import as_input, host_array, lookup
from .backend import backend_of, get_backend
from .weights import sample_weights

__all__ = [
    "BinaryCrossEntropy",
    "BinaryLogLoss",
    "CrossEntropy",
    "HalfPoissonDeviance",
    "HalfSquaredError",
    "Loss",
    "MSELoss",
    "get_loss",
]


class Loss:
    """Base class: subclasses implement ``value_and_grad`` and ``prepare_target``."""

    name = "loss"
    # outputs are independent probabilities (sigmoids): several columns are a multi-label task
    independent_outputs = False

    def __call__(self, pred: Any, target: Any, sample_weight: Any = None) -> Any:
        """The mean loss of ``pred`` (1-D or 2-D numbers) against ``target``, as a 0-d array.

        With ``sample_weight`` (one number >= 0 per sample) it is the weighted mean
        ``sum(w * l) / sum(w)`` of the samples' losses.
        Computed on the backend ``pred`` lives on (host data: the current backend).
        Raises ValueError/TypeError naming ``pred``, ``target`` or ``sample_weight``
        for input that does not fit, before computing anything.
        """
        backend = backend_of(pred) or get_backend()
        pred = as_input(backend, "pred", pred, None, what=self._pred_ndim)
        n_out = pred.shape[-1] if pred.ndim > 1 else 1
        if pred.ndim == 1:
            if not self._column_target and _ndim(target) == 0:
                target = host_array("target", target)[None]  # one sample's row and its label
            pred = pred[:, None] if self._column_target else pred[None, :]
        self._check_pred(pred, backend.xp)
        try:
            target = self.prepare_target(target, n_out, n_samples=pred.shape[0])
        except (TypeError, ValueError) as e:
            message = str(e)
            raise type(e)("target " + message[2:] if message.startswith("y ") else message) from None
        weight = self.sample_weights(target, n_out, sample_weight)
        if weight is not None:
            weight = backend.asarray(weight, pred.dtype)
        target = backend.asarray(target, self.target_dtype(backend, pred.dtype, target))
        value, _ = self.value_and_grad(pred, target, backend.xp, weight=weight)
        return value

    def _check_pred(self, pred: Any, xp: Any) -> None:
        """Loss-specific checks of ``pred`` (values), for direct calls only (one host read)."""

    # a 1-D prediction is one column of outputs (True) or one sample's row (False)
    _column_target = True
    _pred_ndim = {1: "1-D (one output per sample)", 2: "2-D (samples, outputs)"}

    def target_dtype(self, backend: Any, pred_dtype: Any, target: np.ndarray) -> Any:
        """The backend dtype a prepared host target is converted to."""
        return pred_dtype

    def value_and_grad(self, pred: Any, target: Any, xp: Any = None, weight: Any = None) -> tuple[Any, Any]:
        """(mean loss as a 0-d array, d loss / d pred); all arrays already on one backend.

        ``weight``: None (every sample counts once) or per-sample weights of shape
        ``(n,)`` on ``pred``'s backend; then the loss is ``sum(w * l) / sum(w)``.
        """
        raise NotImplementedError

    def class_labels(self, target: np.ndarray) -> np.ndarray:
        """The integer class of each sample of a prepared host target (for ``class_weight``)."""
        raise ValueError(
            f"class_weight needs a classification loss (cross-entropy or binary cross-entropy), "
            f"not {type(self).__name__}; pass sample_weight instead"
        )

    def n_classes(self, n_outputs: int) -> int:
        return max(2, n_outputs)

    def sample_weights(
        self, target: np.ndarray, n_outputs: int, sample_weight: Any = None, class_weight: Any = None
    ) -> np.ndarray | None:
        """Host float64 weights, ``sample_weight * class_weight[class of each sample]``, or None.

        ``target`` is what :meth:`prepare_target` returned. This is what ``fit`` and
        ``evaluate`` call once, before moving the rows of the result with the batches.
        """
        if sample_weight is None and class_weight is None:
            return None
        labels = self.class_labels(target) if class_weight is not None else None
        return sample_weights(
            target.shape[0], sample_weight, class_weight, labels, self.n_classes(n_outputs)
        )

    def prepare_target(self, y: Any, n_outputs: int, n_samples: int | None = None) -> np.ndarray:
        """Validate targets on the host and shape them like the predictions."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _regression_target(y: Any, n_outputs: int, n_samples: int | None) -> np.ndarray:
    y = host_array("y", y)
    if n_samples is not None and (y.ndim == 0 or y.shape[0] != n_samples):
        got = "a scalar" if y.ndim == 0 else f"{y.shape[0]} rows"
        raise ValueError(f"y has {got} but there are {n_samples} samples")
    if y.ndim == 1:
        if n_outputs != 1:
            raise ValueError(
                f"y is 1-D but the model has {n_outputs} outputs; pass y of shape (n, {n_outputs})"
            )
        y = y[:, None]
    elif y.ndim != 2 or y.shape[1] != n_outputs:
        raise ValueError(
            f"y must have shape (n, {n_outputs}) to match the model's outputs, got {y.shape}"
        )
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError("y contains NaN or infinity")
    return y


class MSELoss(Loss):
    """Mean squared error, mean over all elements: ``mean((pred - target) ** 2)``."""

    name = "mse"

    def value_and_grad(self, pred: Any, target: Any, xp: Any = None, weight: Any = None) -> tuple[Any, Any]:
        xp = xp or _namespace(pred)
        d = pred - target
        if weight is None:
            n = _size(d)
            return xp.sum(d * d) / n, (2.0 / n) * d
        k = _per_sample(d)
        rd = _row_weights(weight, pred, xp) * d
        return xp.sum(rd * d) / k, (2.0 / k) * rd

    def prepare_target(self, y: Any, n_outputs: int, n_samples: int | None = None) -> np.ndarray:
        return _regression_target(y, n_outputs, n_samples)


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy, mean over all elements.

    ``from_logits=False`` (default) takes probabilities, e.g. after a ``Sigmoid``
    layer; ``from_logits=True`` takes raw scores and fuses the sigmoid in
    (numerically safer). Targets are 0/1 or probabilities.
    """

    name = "binary_cross_entropy"
    independent_outputs = True

    def __init__(self, from_logits: bool = False) -> None:
        self.from_logits = bool(from_logits)

    def config(self) -> dict[str, Any]:
        return {"from_logits": self.from_logits}

    def value_and_grad(self, pred: Any, target: Any, xp: Any = None, weight: Any = None) -> tuple[Any, Any]:
        xp = xp or _namespace(pred)
        if weight is None:
            n = _size(pred)
            if self.from_logits:
                value = F.binary_cross_entropy_with_logits(pred, target, xp=xp)
                return value, (F.sigmoid(pred, xp=xp) - target) / n
            value = _nan_unless_probabilities(F.binary_cross_entropy(pred, target, xp=xp), pred, xp)
            return value, (pred - target) / self._p_one_minus_p(pred, xp) / n
        # a sample's loss is its mean over the outputs: weights w/sum(w) per row, 1/k per output
        r = _row_weights(weight, pred, xp) / _per_sample(pred)
        if self.from_logits:
            value = xp.sum(r * F.binary_cross_entropy_with_logits_terms(pred, target, xp=xp))
            return value, r * (F.sigmoid(pred, xp=xp) - target)
        value = xp.sum(r * F.binary_cross_entropy_terms(pred, target, xp=xp))
        value = _nan_unless_probabilities(value, pred, xp)
        return value, r * (pred - target) / self._p_one_minus_p(pred, xp)

    @staticmethod
    def _p_one_minus_p(pred: Any, xp: Any) -> Any:
        """PyTorch's BCELoss gradient denominator, with its floor on p(1-p)."""
        return xp.maximum((1.0 - pred) * pred, 1e-12)

    def _check_pred(self, pred: Any, xp: Any) -> None:
        if not self.from_logits:
            _check_probabilities(pred, xp, "binary cross-entropy", "BinaryCrossEntropy", "Sigmoid")

    def prepare_target(self, y: Any, n_outputs: int, n_samples: int | None = None) -> np.ndarray:
        y = _regression_target(y, n_outputs, n_samples)
        if y.min() < 0 or y.max() > 1:
            raise ValueError(
                f"y for binary cross-entropy must lie in [0, 1]; found values in "
                f"[{y.min()}, {y.max()}]"
            )
        return y

    def class_labels(self, target: np.ndarray) -> np.ndarray:
        """Class 1 where the single target column is above 0.5; multi-label targets have none."""
        if target.ndim == 2 and target.shape[1] > 1:
            raise ValueError(
                f"class_weight applies to one label per sample, but y has {target.shape[1]} "
                "columns of independent labels (multi-label); pass sample_weight instead"
            )
        return (target.reshape(-1) > 0.5).astype(np.int64)


class CrossEntropy(Loss):
    """Softmax cross-entropy, mean over samples.

    ``from_logits=True`` (default) takes raw scores and fuses the softmax with
    its gradient (``softmax(z) - target``); ``from_logits=False`` takes
    probabilities, e.g. after a ``Softmax`` layer. Targets are integer class
    indices of shape ``(n,)`` or one-hot/probability rows of shape ``(n, classes)``.
    """

    name = "cross_entropy"
    _column_target = False
    _pred_ndim = {1: "1-D (one sample's scores)", 2: "2-D (samples, classes)"}

    def __init__(self, from_logits: bool = True) -> None:
        self.from_logits = bool(from_logits)

    def config(self) -> dict[str, Any]:
        return {"from_logits": self.from_logits}

    def target_dtype(self, backend: Any, pred_dtype: Any, target: np.ndarray) -> Any:
        return backend.index_dtype if target.ndim == 1 else pred_dtype

    def value_and_grad(self, pred: Any, target: Any, xp: Any = None, weight: Any = None) -> tuple[Any, Any]:
        """Unweighted: the mean over samples. Weighted: ``sum(w * l) / sum(w)``, which with
        ``w = class_weight[y]`` and class-index targets is PyTorch's ``cross_entropy(weight=)``
        (for probability targets PyTorch divides by n instead; portnn keeps one rule)."""
        xp = xp or _namespace(pred)
        # each row's share of the batch loss: 1/n, or w/sum(w) as a column
        share = 1.0 / pred.shape[0] if weight is None else _row_weights(weight, pred, xp)
        class_indices = target.ndim == 1
        if class_indices:
            target = F.one_hot(target, pred.shape[-1], pred.dtype, xp=xp)
        elif target.dtype != pred.dtype:
            target = xp.astype(target, pred.dtype)
        if weight is None:
            n = pred.shape[0]
            if self.from_logits:
                return self._from_logits(pred, target, class_indices, n, xp)
            return self._from_probabilities(pred, target, n, xp)
        weighted = target * share  # the weights scale the target rows; the math is unchanged
        if self.from_logits:
            return self._from_logits(pred, weighted, class_indices, 1, xp, share)
        return self._from_probabilities(pred, weighted, 1, xp)

    @staticmethod
    def _from_logits(pred: Any, target: Any, class_indices: bool, n: int, xp: Any, share: Any = None) -> tuple[Any, Any]:
        # log_softmax and softmax from one exp: shifted - log(s) and e / s
        shifted = pred - xp.max(pred, axis=-1, keepdims=True)
        e = xp.exp(shifted)
        s = xp.sum(e, axis=-1, keepdims=True)
        value = -xp.sum(target * (shifted - xp.log(s))) / n
        # d/dz of -sum(t * log_softmax(z)) is softmax(z) * sum(t) - t; one-hot rows sum to 1
        if class_indices:
            grad = e / (n * s) if share is None else e * (share / s)
        else:
            grad = e * (xp.sum(target, axis=-1, keepdims=True) / (n * s))
        grad -= target / n
        return value, grad

    @staticmethod
    def _from_probabilities(pred: Any, target: Any, n: int, xp: Any) -> tuple[Any, Any]:
        tiny = float(np.finfo(np.dtype(str(_dtype_name(pred.dtype)))).tiny)
        p = xp.maximum(pred, tiny)
        value = _nan_unless_probabilities(-xp.sum(target * xp.log(p)) / n, pred, xp)
        return value, -target / p / n

    def class_labels(self, target: np.ndarray) -> np.ndarray:
        """Class indices as they are; probability rows by their largest entry (as Keras does)."""
        return target.astype(np.int64) if target.ndim == 1 else np.argmax(target, axis=1)

    def _check_pred(self, pred: Any, xp: Any) -> None:
        if not self.from_logits:
            _check_probabilities(pred, xp, "cross-entropy", "CrossEntropy", "Softmax")

    def prepare_target(self, y: Any, n_outputs: int, n_samples: int | None = None) -> np.ndarray:
        y = host_array("y", y)
        if n_samples is not None and (y.ndim == 0 or y.shape[0] != n_samples):
            got = "a scalar" if y.ndim == 0 else f"{y.shape[0]} rows"
            raise ValueError(f"y has {got} but there are {n_samples} samples")
        if y.ndim == 2 and y.shape[1] == 1 and n_outputs > 1 and y.dtype.kind in "iu":
            y = y[:, 0]
        if y.ndim == 1:
            if y.dtype.kind == "f":
                if not np.isfinite(y).all() or not np.array_equal(y, np.round(y)):
                    raise ValueError(
                        "y for cross-entropy must be integer class indices; found non-integer values"
                    )
            low, high = y.min(), y.max()
            if low < 0 or high >= n_outputs:
                raise ValueError(
                    f"y holds class labels in [{low}, {high}], but the model has "
                    f"{n_outputs} outputs (labels must lie in 0..{n_outputs - 1})"
                )
            return y.astype(np.int64)
        if y.ndim == 2:
            if y.shape[1] != n_outputs:
                raise ValueError(
                    f"y has {y.shape[1]} columns but the model has {n_outputs} outputs"
                )
            if y.dtype.kind == "f" and not np.isfinite(y).all():
                raise ValueError("y contains NaN or infinity")
            if y.min() < 0:
                raise ValueError("y rows for cross-entropy must be probabilities (>= 0)")
            return y
        raise ValueError(
            f"y for cross-entropy must be 1-D class indices or 2-D probability rows; got {y.ndim}-D"
        )


def _row_weights(weight: Any, pred: Any, xp: Any) -> Any:
    """``w / sum(w)`` as a column ``(n, 1)`` in ``pred``'s dtype (no host read).

    A batch whose weights are all 0 gets a column of zeros: loss 0, gradient 0.
    """
    if weight.shape != (pred.shape[0],):
        raise ValueError(f"weight must have shape ({pred.shape[0]},), one per sample; got {tuple(weight.shape)}")
    if weight.dtype != pred.dtype:
        weight = xp.astype(weight, pred.dtype)
    total = xp.sum(weight)
    total = xp.where(total > 0, total, xp.ones_like(total))
    return (weight / total)[:, None]


def _check_probabilities(pred: Any, xp: Any, what: str, cls: str, layer: str) -> None:
    low, high = float(xp.min(pred)), float(xp.max(pred))
    if not (0.0 <= low and high <= 1.0):  # NaN fails too
        raise ValueError(
            f"pred for {what} with from_logits=False must be probabilities in [0, 1]; found "
            f"values in [{low}, {high}]. End the model with {layer}, or pass raw scores "
            f"with {cls}(from_logits=True)"
        )


def _nan_unless_probabilities(value: Any, pred: Any, xp: Any) -> Any:
    """``value``, or NaN where ``pred`` has entries outside [0, 1] (no host read).

    A model without a final Sigmoid/Softmax trained with a probability loss then
    stops with a non-finite loss instead of training on a meaningless one.
    """
    inside = xp.all((pred >= 0.0) & (pred <= 1.0))
    return xp.where(inside, value, xp.asarray(math.nan, dtype=value.dtype, device=_device(value)))


def _device(x: Any) -> Any:
    from array_api_compat import device

    return device(x)


def _ndim(x: Any) -> int:
    shape = getattr(x, "shape", None)
    return np.ndim(x) if shape is None else len(shape)


def _namespace(x: Any) -> Any:
    from array_api_compat import array_namespace

    return array_namespace(x)


def _per_sample(x: Any) -> int:
    """How many numbers one sample has (the outputs a sample's loss averages over)."""
    k = 1
    for s in x.shape[1:]:
        k *= s
    return k


def _size(x: Any) -> int:
    n = 1
    for s in x.shape:
        n *= s
    return n


def _dtype_name(dtype: Any) -> str:
    from .backend import dtype_name

    return dtype_name(dtype)


# ---------------------------------------------------------------- scikit-learn's conventions
#
# The losses portnn.MLPClassifier and portnn.MLPRegressor train with; here, with the
# others, so that portnn.load reads their models back without scikit-learn.
#
# Multi-class (softmax) log loss is portnn's CrossEntropy and binary log loss
# with one output its BinaryCrossEntropy. The rest differ from portnn's means
# over all elements: scikit-learn sums over the outputs and averages over the
# samples, and its squared and Poisson losses are halved.


class HalfSquaredError(MSELoss):
    """scikit-learn's squared loss: half the mean squared error, ``mean((pred - target) ** 2) / 2``.

    The gradient is scikit-learn's, ``(pred - target) / n_samples``: with
    several outputs that is the gradient of the sum over the outputs, not of
    their mean, exactly as scikit-learn's MLP steps.
    """

    name = "half_squared_error"

    def value_and_grad(self, pred: Any, target: Any, xp: Any = None, weight: Any = None) -> tuple[Any, Any]:
        xp = xp or _namespace(pred)
        d = pred - target
        if weight is None:
            return xp.sum(d * d) / (2 * _size(d)), d / pred.shape[0]
        # scikit-learn's weighted step: the gradient rows are w * d / sum(w)
        rd = _row_weights(weight, pred, xp) * d
        return xp.sum(rd * d) / (2 * _per_sample(d)), rd


class BinaryLogLoss(BinaryCrossEntropy):
    """Log loss of independent sigmoid outputs (multi-label), summed over the labels and
    averaged over the samples: scikit-learn's ``binary_log_loss``.

    Takes raw scores (``from_logits=True``); with one output it equals
    :class:`~portnn.BinaryCrossEntropy`.
    """

    name = "binary_log_loss"

    def __init__(self) -> None:
        super().__init__(from_logits=True)

    def config(self) -> dict[str, Any]:
        return {}

    def value_and_grad(self, pred: Any, target: Any, xp: Any = None, weight: Any = None) -> tuple[Any, Any]:
        value, grad = super().value_and_grad(pred, target, xp, weight)
        k = pred.shape[-1] if pred.ndim > 1 else 1
        return value * k, grad * k


class HalfPoissonDeviance(Loss):
    """scikit-learn's Poisson loss with a log link: the model's output ``z`` is the log of the
    predicted mean, and the loss is ``sum(y log(y / exp(z)) - y + exp(z)) / n_samples``.

    The gradient is ``(exp(z) - y) / n_samples``. Targets must be >= 0.
    """

    name = "half_poisson_deviance"

    def value_and_grad(self, pred: Any, target: Any, xp: Any = None, weight: Any = None) -> tuple[Any, Any]:
        xp = xp or _namespace(pred)
        mean = xp.exp(pred)
        positive = target > 0
        safe = xp.where(positive, target, xp.ones_like(target))
        ylogy = xp.where(positive, target * xp.log(safe), xp.zeros_like(target))
        if weight is None:
            n = pred.shape[0]
            value = xp.sum(ylogy - target * pred - target + mean) / n
            return value, (mean - target) / n
        r = _row_weights(weight, pred, xp)
        return xp.sum(r * (ylogy - target * pred - target + mean)), r * (mean - target)

    def prepare_target(self, y: Any, n_outputs: int, n_samples: int | None = None) -> np.ndarray:
        y = MSELoss().prepare_target(y, n_outputs, n_samples)
        if y.min() < 0:
            raise ValueError("y for the Poisson loss must be >= 0")
        return y


LOSSES: dict[str, type[Loss]] = {
    "mse": MSELoss,
    "mean_squared_error": MSELoss,
    "binary_cross_entropy": BinaryCrossEntropy,
    "bce": BinaryCrossEntropy,
    "binary_crossentropy": BinaryCrossEntropy,
    "cross_entropy": CrossEntropy,
    "categorical_crossentropy": CrossEntropy,
    "sparse_categorical_crossentropy": CrossEntropy,
    "half_squared_error": HalfSquaredError,
    "binary_log_loss": BinaryLogLoss,
    "half_poisson_deviance": HalfPoissonDeviance,
}


def get_loss(loss: str | Loss) -> Loss:
    """A loss object from a name or an instance."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, type) and issubclass(loss, Loss):
        return loss()
    return lookup("loss", loss, LOSSES)()
