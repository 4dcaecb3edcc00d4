"""Final activations, each with a batched Jacobian, a VJP and a JVP.

Each module registers its classes as it is imported, so the registry lists them in the
order of the imports below (softmax first, then the elementwise maps, then the sparse maps);
a module's ``__all__`` is what the package, and ``jacobians``, export of it.
"""

# the order of these imports is the registry's order
# isort: off
from . import base, softmax, elementwise, simplex, sparse_maps
from . import mean_variance
from . import exp
from .base import *  # noqa: F403
from .softmax import *  # noqa: F403
from .elementwise import *  # noqa: F403
from .simplex import *  # noqa: F403
from .sparse_maps import *  # noqa: F403
from .mean_variance import *  # noqa: F403
from .exp import *  # noqa: F403

# isort: on

__all__ = [
    *base.__all__,
    *simplex.__all__,
    *softmax.__all__,
    *elementwise.__all__,
    *sparse_maps.__all__,
    *mean_variance.__all__,
    *exp.__all__,
]
