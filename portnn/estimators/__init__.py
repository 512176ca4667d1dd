"""scikit-learn estimators: :class:`MLPClassifier` and :class:`MLPRegressor` on any backend.

They take scikit-learn's parameters (those of
:class:`sklearn.neural_network.MLPClassifier` and ``MLPRegressor``, with the
same names and meanings), build a :class:`~portnn.Sequential` of
:class:`~portnn.Dense` layers and train it with :func:`portnn.fit`. So they work
in a ``Pipeline``, ``GridSearchCV`` or ``cross_val_score`` like any other
estimator, and pass scikit-learn's estimator checks; beside the usual fitted
attributes they expose the trained model as ``model_``.

With ``sklearn.config_context(array_api_dispatch=True)`` they train on the array
library of the input (PyTorch tensors, CuPy, ``array_api_strict``) and return
that library's arrays; ``backend=`` trains elsewhere (``backend="cupy"`` trains
NumPy data on the GPU) and still answers in the input's library.

This package needs scikit-learn (``pip install "portnn[sklearn]"``). ``import
portnn`` does not import it: ``portnn.MLPClassifier`` imports this package on
first use.
"""

from .classifier import MLPClassifier
from .regressor import MLPRegressor

__all__ = ["MLPClassifier", "MLPRegressor"]

# estimators pickled before this was a package name their host copies
# ``portnn.estimators._HostArray``: kept reachable there, so those pickles still load
from .pickling import _HostArray  # noqa: E402, F401
