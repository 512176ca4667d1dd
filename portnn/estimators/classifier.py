"""The classifier: labels to targets, class weights, logits to labels and probabilities."""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import numpy as np

from .. import functional as F
from ..backend import backend_of, to_numpy
from ..losses import BinaryCrossEntropy, BinaryLogLoss, CrossEntropy, Loss
from ..nn import Module
from ..optim.optimizers import Optimizer
from ..train.inference import predict as _outputs
from ._sklearn import (
    ClassifierMixin,
    LabelBinarizer,
    StrOptions,
    accuracy_score,
    check_classification_targets,
    type_of_target,
    unique_labels,
)
from .base import _BaseMLP
from .places import _to_place
from .weights import _combined_weights


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier, trained by portnn on any backend.

    The parameters are those of :class:`sklearn.neural_network.MLPClassifier`
    with the same meaning (``solver`` is ``"adam"`` or ``"sgd"``; there is no
    ``"lbfgs"``), plus portnn's: ``dropout`` (after every hidden activation),
    ``batch_norm`` (:class:`~portnn.BatchNorm` before every hidden activation),
    ``optimizer`` (a portnn optimizer or its name, in place of ``solver``),
    ``backend`` and ``device`` (where to train; None: the library of the
    input), and ``dtype`` (``"float32"`` or ``"float64"``; None: that of the
    input). See the "scikit-learn" page of the documentation.

    Two classes train one sigmoid output with binary log loss, more classes a
    softmax over one output per class with cross-entropy, and a label
    indicator matrix (multi-label) one sigmoid output per label.

    ``class_weight`` (None, a dict ``{label: weight}`` with the labels as in
    ``y``, or ``"balanced"``: ``n_samples / (n_classes * count of the
    class)``, scikit-learn's rule) multiplies ``fit``'s ``sample_weight``:
    each sample weighs ``sample_weight * class_weight[its label]``.

    Fitted attributes: ``classes_``, ``model_`` (the trained
    :class:`~portnn.Sequential`), ``loss_``, ``loss_curve_``, ``best_loss_``,
    ``validation_scores_`` and ``best_validation_score_`` (with
    ``early_stopping``), ``n_iter_``, ``t_``, ``n_features_in_``,
    ``n_outputs_``, ``n_layers_``, ``out_activation_``, and ``coefs_`` /
    ``intercepts_`` (the Dense layers' weights and biases).
    """

    _parameter_constraints: dict = {
        **_BaseMLP._parameter_constraints,
        "class_weight": [None, dict, StrOptions({"balanced"})],
    }

    def __init__(
        self,
        hidden_layer_sizes: Any = (100,),
        activation: str = "relu",
        *,
        solver: str = "adam",
        alpha: float = 0.0001,
        batch_size: int | str = "auto",
        learning_rate: str = "constant",
        learning_rate_init: float = 0.001,
        power_t: float = 0.5,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: Any = None,
        tol: float = 1e-4,
        verbose: bool = False,
        warm_start: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        n_iter_no_change: int = 10,
        class_weight: dict | str | None = None,
        dropout: float = 0.0,
        batch_norm: bool = False,
        optimizer: str | Optimizer | None = None,
        backend: str | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        self.class_weight = class_weight
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes,
            activation=activation,
            solver=solver,
            alpha=alpha,
            batch_size=batch_size,
            learning_rate=learning_rate,
            learning_rate_init=learning_rate_init,
            power_t=power_t,
            max_iter=max_iter,
            shuffle=shuffle,
            random_state=random_state,
            tol=tol,
            verbose=verbose,
            warm_start=warm_start,
            momentum=momentum,
            nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            n_iter_no_change=n_iter_no_change,
            dropout=dropout,
            batch_norm=batch_norm,
            optimizer=optimizer,
            backend=backend,
            device=device,
            dtype=dtype,
        )

    def partial_fit(
        self, X: Any, y: Any, sample_weight: Any = None, classes: Any = None
    ) -> MLPClassifier:
        """One epoch over ``X, y``, continuing from the previous call.

        ``classes`` (every label that will ever be seen) is required on the first
        call, as in scikit-learn, and may be omitted afterwards. ``sample_weight``
        weighs the samples as in :meth:`fit` (the argument order is scikit-learn's).
        """
        return self._fit(X, y, incremental=True, classes=classes, sample_weight=sample_weight)

    def _prepare_targets(
        self,
        y: np.ndarray,
        X: Any,
        *,
        first: bool,
        incremental: bool,
        classes: Any,
        sample_weight: np.ndarray | None,
    ) -> tuple[np.ndarray, int, np.ndarray | None]:
        check_classification_targets(y)
        if first:
            binarizer = self._new_binarizer(y, incremental=incremental, classes=classes)
        else:
            binarizer = self._binarizer
            self._check_known_labels(y, incremental=incremental, classes=classes)
        weights = _combined_weights(
            self.class_weight, y, binarizer, sample_weight, incremental=incremental
        )
        if first:  # every check passed: the label bookkeeping may change
            self._binarizer = binarizer
            labels = binarizer.classes_
            source = backend_of(X)
            if labels.dtype.kind in "biuf" and source is not None and str(source) != "numpy":
                self.classes_ = source.asarray(labels)  # everything follows X
            else:
                self.classes_ = labels
            self.out_activation_ = "softmax" if binarizer.y_type_ == "multiclass" else "logistic"
        kind = binarizer.y_type_
        if kind == "multilabel-indicator":
            return np.asarray(y, dtype=np.float64), int(y.shape[1]), weights
        if kind == "multiclass":
            indices = np.searchsorted(binarizer.classes_, y).astype(np.int64)
            return indices, len(binarizer.classes_), weights
        return binarizer.transform(y)[:, 0].astype(np.float64), 1, weights  # binary: 0/1

    def _new_binarizer(self, y: np.ndarray, *, incremental: bool, classes: Any) -> LabelBinarizer:
        """The labels of a first fit (of ``classes`` for ``partial_fit``), not yet stored."""
        if incremental:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            classes = unique_labels(to_numpy(classes))
        binarizer = LabelBinarizer()
        binarizer.fit(
            classes if incremental and not type_of_target(y).startswith("multilabel") else y
        )
        if binarizer.y_type_ != "multilabel-indicator" and len(binarizer.classes_) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes in the data, "
                f"but the data contains only one class: {binarizer.classes_[0]!r}"
            )
        return binarizer

    def _check_known_labels(self, y: np.ndarray, *, incremental: bool, classes: Any) -> None:
        """scikit-learn's rules for the labels of a later ``partial_fit`` or warm ``fit``."""
        known = self._binarizer.classes_
        if incremental and classes is not None:
            classes = unique_labels(to_numpy(classes))
            if not np.array_equal(classes, known):
                raise ValueError(
                    f"`classes={classes!r}` is not the same as on last call to "
                    f"partial_fit, was: {known!r}"
                )
        seen = unique_labels(y)
        if self.warm_start and not incremental:
            if set(seen) != set(known):
                raise ValueError(
                    "warm_start can only be used where `y` has the same classes as in the "
                    f"previous call to fit. Previously got {known}, `y` has {seen}"
                )
        elif len(np.setdiff1d(seen, known, assume_unique=True)):
            raise ValueError(
                f"`y` has classes not in `self.classes_`. `self.classes_` has {known}. 'y' has {seen}."
            )

    def _loss(self) -> Loss:
        kind = self._binarizer.y_type_
        if kind == "multiclass":
            return CrossEntropy(from_logits=True)
        if kind == "multilabel-indicator":
            return BinaryLogLoss()
        return BinaryCrossEntropy(from_logits=True)

    def _labels_from_outputs(self, out: Any, xp: Any) -> Any:
        """Class indices (binary, multi-class) or a 0/1 indicator matrix (multi-label)."""
        if self._binarizer.y_type_ == "multilabel-indicator":
            return xp.astype(out > 0, xp.int64)
        if out.shape[1] == 1:
            return xp.astype(out[:, 0] > 0, xp.int64)
        return xp.argmax(out, axis=1)

    def _validation_score(
        self, model: Module, X: Any, y: np.ndarray, sample_weight: np.ndarray | None
    ) -> float:
        out = to_numpy(_outputs(model, X, check_finite=False))
        if not np.isfinite(out).all():
            return math.nan
        predicted = to_numpy(self._labels_from_outputs(out, np))
        return float(accuracy_score(y.astype(np.int64), predicted, sample_weight=sample_weight))

    def predict(self, X: Any) -> Any:
        """Predicted labels (an indicator matrix for multi-label targets)."""
        out, place = self._raw(X, "predict")
        labels = self._labels_from_outputs(out, self.model_.xp)
        if self._binarizer.y_type_ == "multilabel-indicator":
            return _to_place(labels, place)
        classes = self.classes_
        if isinstance(classes, np.ndarray):
            picked = classes[to_numpy(labels)]
            return picked if classes.dtype.kind not in "biuf" else _to_place(picked, place)
        xp = array_api_compat.array_namespace(classes)
        return _to_place(xp.take(classes, _to_place(labels, backend_of(classes)), axis=0), place)

    def predict_proba(self, X: Any) -> Any:
        """Probability of each class, in the order of ``classes_`` (of each label, for multi-label)."""
        out, place = self._raw(X, "predict_proba")
        return _to_place(self._proba(out, self.model_.xp, log=False), place)

    def predict_log_proba(self, X: Any) -> Any:
        """Log of :meth:`predict_proba`, computed without forming the probabilities."""
        out, place = self._raw(X, "predict_log_proba")
        return _to_place(self._proba(out, self.model_.xp, log=True), place)

    def _proba(self, out: Any, xp: Any, *, log: bool) -> Any:
        if self._binarizer.y_type_ == "multiclass":
            return F.log_softmax(out, xp=xp) if log else F.softmax(out, xp=xp)
        if log:  # log(sigmoid(z)) = min(z, 0) - log1p(exp(-|z|))

            def log_sigmoid(z: Any) -> Any:
                return xp.minimum(z, 0.0) - xp.log1p(xp.exp(-xp.abs(z)))

            positive, negative = log_sigmoid(out), log_sigmoid(-out)
        else:
            positive = F.sigmoid(out, xp=xp)
            negative = 1.0 - positive
        if self._binarizer.y_type_ == "multilabel-indicator":
            return positive
        return xp.concat([negative, positive], axis=1)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags
