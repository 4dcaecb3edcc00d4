"""Counter-based sampling and the built-in predictive distributions: the public path of
:mod:`jacobians.numerics.sampling` (see there)."""

from .numerics import sampling as _sampling
from .numerics.sampling import *  # noqa: F403 (its __all__, the same list)

__all__ = list(_sampling.__all__)
