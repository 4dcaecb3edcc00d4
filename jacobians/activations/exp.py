"""The exponential ``a = e^z``: an elementwise activation (a positive rate from a log-rate).

Jacobian ``diag(e^z)``, second derivative ``e^z``; ``e^z`` is evaluated once per call, never
squared, so every method is finite up to the float's exp limit (``log(finfo.max)``: 709.78
in float64, 88.72 in float32) and overflows to ``inf`` exactly where ``torch.exp`` does, with
no warning (torch gives none). Below ``log(finfo.tiny)`` it underflows to 0 as torch does.
"""

from __future__ import annotations

import math

import numpy as np

from ..numerics.validation import as_float_array
from .base import ElementwiseActivation, register_activation

__all__ = ["Exp"]


def _exp(z):
    """``e^z`` silently overflowing to ``inf`` (as ``torch.exp``)."""
    with np.errstate(over="ignore"):
        return np.exp(z)


def _math_exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return float("inf")


def exp_sample(act, z):
    """The plain reference: one sample (K,) in float64, entry by entry with ``math.exp``."""
    a = np.array([_math_exp(x) for x in z.tolist()])
    return a, np.diag(a)


def _extreme_magnitude(dtype) -> float:
    """The largest ``|z|`` of the checks' extreme logits for a head with ``Exp``: half the exp
    limit less 5, so that ``e^z`` squared (a squared error of the rate) stays finite."""
    return float(math.floor(math.log(float(np.finfo(dtype).max)) / 2) - 5)


@register_activation
class Exp(ElementwiseActivation):
    """``a = e^z`` (torch ``exp``), outputs ≥ 0 (``e^z`` underflows to 0 below the float's range).

    ``f'(z) = f''(z) = e^z``. Pair it with :class:`~jacobians.PoissonNLL` ``(log_input=False)``:
    the canonical log link of a Poisson rate (see ``jacobians.rules.log_link_poisson``).

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import Exp
    >>> Exp()(np.array([0.0, 1.0]))
    array([1.        , 2.71828183])
    >>> Exp().derivative(np.array([0.0]))
    array([1.])
    """

    name = "exp"
    loop_reference = exp_sample
    output_domain = "nonnegative"

    def extreme_magnitude(self, dtype, head=None) -> float:
        """The largest ``|z|`` the checks' extreme logits take with this activation (not 1e4:
        ``e^{1e4}`` is ``inf``, as torch's): half the exp limit less 5."""
        return _extreme_magnitude(dtype)

    def forward(self, z):
        return _exp(as_float_array(z, "z"))

    def derivative(self, z):
        return _exp(as_float_array(z, "z"))

    def second_derivative(self, z):
        return _exp(as_float_array(z, "z"))

    # -- the generic (array API) path -----------------------------------------------------
    def xp_forward(self, xp, z):
        return xp.exp(z)

    def xp_derivative(self, xp, z):
        return xp.exp(z)

    def xp_second_derivative(self, xp, z):
        return xp.exp(z)
