"""Models as trees of modules: the protocol, the layers and the combinators.

:class:`Module` is the protocol every layer follows (``add_parameter``,
sub-modules as attributes, ``apply(x, training) -> (y, backward)``);
the layers compute with ``self.xp`` only; the combinators compose them.
"""

from .module import Module
from .layers import ELU, GELU, Dense, Flatten, Identity, LeakyReLU, ReLU, Reshape, SiLU, Sigmoid, Softmax, Softplus, Step, Tanh
from .normalization import BatchNorm, Dropout, LayerNorm
from .scaling import Standardize
from .conv import Conv1D, Conv2D
from .pooling import AvgPool1D, AvgPool2D, GlobalAvgPool2D, MaxPool1D, MaxPool2D
from .combinators import Add, Concatenate, Parallel, Residual, Sequential
from .summary import Summary

__all__ = [
    "Add", "AvgPool1D", "AvgPool2D", "BatchNorm", "Concatenate", "Conv1D", "Conv2D", "Dense", "Dropout",
    "ELU", "Flatten", "GELU", "GlobalAvgPool2D", "Identity", "LayerNorm", "LeakyReLU", "MaxPool1D",
    "MaxPool2D", "Module", "Parallel", "ReLU", "Reshape", "Residual", "Sequential",
    "SiLU", "Sigmoid", "Softmax", "Softplus", "Standardize", "Step", "Summary", "Tanh",
]
