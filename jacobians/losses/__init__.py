"""Losses with gradients dE/da, every reduction, torch's semantics.

Each module registers its classes as it is imported, so the registry lists them in the
order of the imports below; a module's ``__all__`` is what the package, and ``jacobians``,
export of it.
"""

# the order of these imports is the registry's order
# isort: off
from . import base, classification, regression, divergence, fenchel_young, plackett_luce, gaussian_nll
from . import focal, poly1, poisson_nll, multi_margin
from .base import *  # noqa: F403
from .classification import *  # noqa: F403
from .regression import *  # noqa: F403
from .divergence import *  # noqa: F403
from .fenchel_young import *  # noqa: F403
from .plackett_luce import *  # noqa: F403
from .gaussian_nll import *  # noqa: F403
from .focal import *  # noqa: F403
from .poly1 import *  # noqa: F403
from .poisson_nll import *  # noqa: F403
from .multi_margin import *  # noqa: F403

# isort: on

__all__ = [
    *base.__all__,
    *classification.__all__,
    *regression.__all__,
    *divergence.__all__,
    *fenchel_young.__all__,
    *plackett_luce.__all__,
    *gaussian_nll.__all__,
    *focal.__all__,
    *poly1.__all__,
    *poisson_nll.__all__,
    *multi_margin.__all__,
]
