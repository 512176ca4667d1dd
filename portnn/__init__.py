"""portnn: neural networks written once against the Array API standard.

The same model trains on NumPy, CuPy, PyTorch tensors, array_api_strict and any
other compliant array library.
"""

from . import functional
from .backend import Backend, BackendError, available_backends, get_backend, set_backend, to_numpy, use_backend
from . import nn
from .nn import ELU, GELU, Dense, Flatten, Identity, LeakyReLU, Module, ReLU, Reshape, SiLU, Sigmoid, Softmax, Softplus, Step, Tanh
from .nn import BatchNorm, Dropout, LayerNorm
from .nn.scaling import NotAdaptedError, Standardize
from .nn import Conv1D, Conv2D
from .nn import AvgPool1D, AvgPool2D, GlobalAvgPool2D, MaxPool1D, MaxPool2D
from .nn import Add, Concatenate, Parallel, Residual, Sequential
from .losses import BinaryCrossEntropy, CrossEntropy, Loss, MSELoss
from . import optim
from .optim import SGD, AdaGrad, Adam, AdamW, Optimizer, RMSProp, clip_by_global_norm
from ._guard import TrainingDivergedError
from . import train
from .train import History, StepResult, TrainStep, evaluate, fit, gradient_check, make_train_step, predict, predict_classes, predict_proba, value_and_grad
from . import metrics
from .train import callbacks, distributed, schedules
from .train.callbacks import CSVLogger, Callback, EarlyStopping, JSONLogger, LambdaCallback, LearningRateScheduler, ModelCheckpoint
from .train.schedules import CosineAnnealingLR, ExponentialLR, LinearWarmup, ReduceLROnPlateau, StepLR
from .io import load, register, save
from .train import DataParallel, DistributedError
from .export import ExportError, export_onnx
from . import testing

from ._version import __version__


def __getattr__(name: str):
    # scikit-learn takes a second to import: the estimators load it on first use, not with portnn
    if name in ("MLPClassifier", "MLPRegressor"):
        from . import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# every public name imported above (one import line per module keeps this file easy to extend)
__all__ = sorted(
    name
    for name, value in globals().items()
    if not name.startswith("_")
    and (not isinstance(value, type(functional)) or name in {"functional", "callbacks", "distributed", "metrics", "optim", "schedules", "nn", "testing", "train"})
)
