"""Counter-based sampling and the built-in predictive distributions: the public path of
the bottom layer's ``jacobians.numerics.sampling``.

The uniforms are a function of (seed, global row, column) only, so any split of the rows
into chunks draws the same numbers for the same rows; a loss turns them into targets with
:meth:`jacobians.Loss.sample_targets`, whose default draws from the distribution of
:data:`PREDICTIVES` that :attr:`jacobians.Loss.predictive` names.
"""

from .numerics import sampling as _sampling
from .numerics.sampling import *  # noqa: F403 (its __all__, the same list)

__all__ = list(_sampling.__all__)
