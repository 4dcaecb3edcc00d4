"""Elementwise activations: diagonal Jacobians ``J = diag(f'(z))``."""

from __future__ import annotations

import numpy as np

from ..numerics.elementwise import sigmoid, sigmoid_derivative, softplus, tanh_derivative
from ..numerics.validation import as_float_array, check_nonnegative_scalar
from . import references
from .base import ElementwiseActivation, register_activation

# The generic (array API) methods take the namespace ``xp`` and an array ``z`` (..., K) of
# float32/float64 and return arrays of z's shape, dtype and device (see ElementwiseActivation).


def _shims():
    """:mod:`jacobians.xp.shims` (it imports array_api_compat: only generic arrays come here)."""
    from ..xp import shims

    return shims


def _xp_sigmoid_derivative(xp, z):
    """``σ(z)σ(−z) = e/(1 + e)²`` with ``e = exp(−|z|)`` (numerics.elementwise's formula)."""
    e = xp.exp(-xp.abs(z))
    return e / (1 + e) ** 2


def _xp_tanh_derivative(xp, z):
    """``1 − tanh²(z) = 4e/(1 + e)²`` with ``e = exp(−2|z|)``."""
    e = xp.exp(-2 * xp.abs(z))
    return 4 * e / (1 + e) ** 2

__all__ = ["Sigmoid", "Tanh", "ReLU", "LeakyReLU", "Identity", "Softplus"]


@register_activation
class Sigmoid(ElementwiseActivation):
    """Logistic sigmoid ``σ(z) = 1 / (1 + e^{−z})``, outputs in (0, 1).

    ``f'(z) = σ(z)(1 − σ(z))``, computed as ``σ(z)σ(−z)`` so it stays accurate where
    ``σ(z)`` rounds to 1. Never evaluates ``exp`` of a large positive number.

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import Sigmoid
    >>> Sigmoid()(np.array([-1e4, 0.0, 1e4]))
    array([0. , 0.5, 1. ])
    >>> Sigmoid().derivative(np.array([0.0]))
    array([0.25])
    """

    name = "sigmoid"
    loop_reference = references.sigmoid_sample
    output_domain = "open_unit_interval"

    def forward(self, z):
        return sigmoid(as_float_array(z, "z"))

    def derivative(self, z):
        return sigmoid_derivative(as_float_array(z, "z"))

    def second_derivative(self, z):
        # σ(1 − σ)(1 − 2σ) with 1 − 2σ(z) = −tanh(z/2): no cancellation near σ = 1/2 or 1
        z = as_float_array(z, "z")
        return -sigmoid_derivative(z) * np.tanh(z / 2)

    def xp_forward(self, xp, z):
        return _shims().expit(xp, z)

    def xp_derivative(self, xp, z):
        return _xp_sigmoid_derivative(xp, z)

    def xp_second_derivative(self, xp, z):
        return -_xp_sigmoid_derivative(xp, z) * xp.tanh(z / 2)


@register_activation
class Tanh(ElementwiseActivation):
    """Hyperbolic tangent, outputs in (−1, 1); ``f'(z) = 1 − tanh²(z)``.

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import Tanh
    >>> Tanh().derivative(np.array([0.0, 1e4]))
    array([1., 0.])
    """

    name = "tanh"
    loop_reference = references.tanh_sample
    output_domain = "signed_unit_interval"

    def forward(self, z):
        return np.tanh(as_float_array(z, "z"))

    def derivative(self, z):
        return tanh_derivative(as_float_array(z, "z"))

    def second_derivative(self, z):
        # −2 tanh(z) (1 − tanh²(z))
        z = as_float_array(z, "z")
        return -2 * np.tanh(z) * tanh_derivative(z)

    def xp_forward(self, xp, z):
        return xp.tanh(z)

    def xp_derivative(self, xp, z):
        return _xp_tanh_derivative(xp, z)

    def xp_second_derivative(self, xp, z):
        return -2 * xp.tanh(z) * _xp_tanh_derivative(xp, z)


@register_activation
class ReLU(ElementwiseActivation):
    """``max(z, 0)``; ``f'(z) = 1`` for ``z > 0`` else 0 (0 at the kink, as torch).

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import ReLU
    >>> ReLU()(np.array([-2.0, 0.0, 3.0]))
    array([0., 0., 3.])
    """

    name = "relu"
    loop_reference = references.relu_sample
    kinks = references.abs_distance
    output_domain = "nonnegative"

    def forward(self, z):
        return np.maximum(as_float_array(z, "z"), 0)

    def derivative(self, z):
        z = as_float_array(z, "z")
        return (z > 0).astype(z.dtype)

    def second_derivative(self, z):
        return np.zeros_like(as_float_array(z, "z"))

    def xp_forward(self, xp, z):
        return xp.maximum(z, xp.zeros_like(z))

    def xp_derivative(self, xp, z):
        return xp.astype(z > 0, z.dtype)

    def xp_second_derivative(self, xp, z):
        return xp.zeros_like(z)


@register_activation
class LeakyReLU(ElementwiseActivation):
    """``z`` for ``z > 0`` else ``slope · z``; ``f'(z) = 1`` or ``slope`` (``slope`` at 0).

    Parameters
    ----------
    slope : float, default 0.01
        Slope for negative inputs, >= 0.

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import LeakyReLU
    >>> LeakyReLU(slope=0.1)(np.array([-2.0, 3.0]))
    array([-0.2,  3. ])
    """

    name = "leaky_relu"
    loop_reference = references.leaky_relu_sample
    kinks = references.abs_distance

    def __init__(self, slope: float = 0.01):
        self.slope = check_nonnegative_scalar(slope, "slope")

    @classmethod
    def variants(cls, K):
        return [{"slope": 0.2}]

    def forward(self, z):
        z = as_float_array(z, "z")
        return np.where(z > 0, z, z * z.dtype.type(self.slope))

    def derivative(self, z):
        z = as_float_array(z, "z")
        return np.where(z > 0, z.dtype.type(1), z.dtype.type(self.slope))

    def second_derivative(self, z):
        return np.zeros_like(as_float_array(z, "z"))

    def xp_forward(self, xp, z):
        return xp.where(z > 0, z, z * self.slope)

    def xp_derivative(self, xp, z):
        return xp.where(z > 0, xp.ones_like(z), xp.full_like(z, self.slope))

    def xp_second_derivative(self, xp, z):
        return xp.zeros_like(z)


@register_activation
class Identity(ElementwiseActivation):
    """``a = z`` (a copy); the Jacobian is the identity. Pair it with losses on logits.

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import Identity
    >>> Identity().jacobian(np.array([1.0, 2.0]))
    array([[1., 0.],
           [0., 1.]])
    """

    name = "identity"
    loop_reference = references.identity_sample

    def forward(self, z):
        return np.array(as_float_array(z, "z"), copy=True)

    def derivative(self, z):
        return np.ones_like(as_float_array(z, "z"))

    def second_derivative(self, z):
        return np.zeros_like(as_float_array(z, "z"))

    def vjp(self, z, g):
        from .base import _check_pair

        return np.array(_check_pair(z, g, "g")[1], copy=True)

    def xp_forward(self, xp, z):
        # a new array, bit for bit z (−0.0 and NaN kept); torch.asarray(copy=True) would warn
        # about requires_grad
        return z * 1

    def xp_derivative(self, xp, z):
        return xp.ones_like(z)

    def xp_second_derivative(self, xp, z):
        return xp.zeros_like(z)

    def xp_vjp(self, xp, z, g):
        return g * 1


@register_activation
class Softplus(ElementwiseActivation):
    """``log(1 + e^z)`` computed as ``max(z, 0) + log1p(e^{−|z|})``; ``f'(z) = σ(z)``.

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import Softplus
    >>> Softplus()(np.array([-1e4, 1e4]))
    array([    0., 10000.])
    """

    name = "softplus"
    loop_reference = references.softplus_sample
    output_domain = "nonnegative"

    def forward(self, z):
        return softplus(as_float_array(z, "z"))

    def derivative(self, z):
        return sigmoid(as_float_array(z, "z"))

    def second_derivative(self, z):
        return sigmoid_derivative(as_float_array(z, "z"))

    def xp_forward(self, xp, z):
        return _shims().softplus(xp, z)

    def xp_derivative(self, xp, z):
        return _shims().expit(xp, z)

    def xp_second_derivative(self, xp, z):
        return _xp_sigmoid_derivative(xp, z)
