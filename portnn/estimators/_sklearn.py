"""scikit-learn, imported once for the estimators: a missing or too old scikit-learn
fails here, with an error that says how to install it."""

try:
    import sklearn
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state
    from sklearn.utils._param_validation import Interval, Options, StrOptions
    from sklearn.utils.class_weight import compute_class_weight
    from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
    from sklearn.utils.validation import (
        _check_sample_weight,
        _num_samples,
        check_is_fitted,
        column_or_1d,
        validate_data,
    )
except ImportError as e:  # scikit-learn missing, or older than 1.6 (no validate_data)
    raise ImportError(
        "portnn.MLPClassifier and portnn.MLPRegressor need scikit-learn >= 1.6: "
        'pip install "portnn[sklearn]"'
    ) from e

# what the estimators' modules take from here
__all__ = [
    "BaseEstimator",
    "ClassifierMixin",
    "ConvergenceWarning",
    "Interval",
    "LabelBinarizer",
    "Options",
    "RegressorMixin",
    "StrOptions",
    "_check_sample_weight",
    "_num_samples",
    "accuracy_score",
    "check_classification_targets",
    "check_is_fitted",
    "check_random_state",
    "column_or_1d",
    "compute_class_weight",
    "r2_score",
    "sklearn",
    "train_test_split",
    "type_of_target",
    "unique_labels",
    "validate_data",
]
