"""Final activations, each with a batched Jacobian, a VJP and a JVP."""

from .base import (
    ACTIVATIONS,
    Activation,
    ElementwiseActivation,
    get_activation,
    register_activation,
)
from .elementwise import Identity, LeakyReLU, ReLU, Sigmoid, Softplus, Tanh
from .simplex import Entmax, Entmax15, LogSoftmax, SimplexMapping, Softmax, Sparsemax

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "ElementwiseActivation",
    "SimplexMapping",
    "get_activation",
    "register_activation",
    "Softmax",
    "LogSoftmax",
    "Sigmoid",
    "Tanh",
    "ReLU",
    "LeakyReLU",
    "Identity",
    "Softplus",
    "Sparsemax",
    "Entmax15",
    "Entmax",
]
