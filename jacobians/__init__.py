"""jacobians — vectorized Jacobians and dE/dz for final activations and losses.

dE/dz, the gradient of a loss with respect to the logits, three ways that agree:

* ``'jacobian'``: the full batched Jacobian ``(..., K, K)`` contracted with dE/da;
* ``'vjp'``: the same product in closed form, without building the Jacobian;
* ``'fused'``: the closed-form gradient of the (activation, loss) pair.

>>> import numpy as np
>>> import jacobians as jac
>>> z = np.random.default_rng(0).normal(size=(4, 3))
>>> y = np.array([0, 2, 1, 1])
>>> head = jac.Head(jac.Softmax(), jac.CrossEntropy())
>>> all(np.allclose(head.grad(z, y, m), head.grad(z, y)) for m in ("jacobian", "vjp", "fused"))
True
"""

__version__ = "0.1.0"

from . import _arrays as _arrays  # registers the generic backend (torch, JAX, CuPy, array-api-strict)
from . import _dask as _dask  # registers the Dask backend; dask is imported on first use
from . import activations, curvature, domains, fused, losses, operators
from ._kernels import kernels
from .activations import *  # noqa: F403 (its __all__, exported below)
from .checks import CheckReport, check_activation, check_head, check_second_order
from .contract import contract, diagonal
from .curvature import register_hessian
from .fused import register_fused
from .head import Head, Pair, pairs
from .laplace import LastLayerLaplace
from .laplace.influences import influence, self_influence
from .last_layer import Kron, linear_curvature, linear_gradient
from .losses import *  # noqa: F403 (its __all__, exported below)
from .numerical import numerical_grad, numerical_jacobian
from .numerics.empty import EmptyMeanWarning
from .operators import (
    DenseJacobian,
    DiagonalJacobian,
    DiagonalPlusLowRank,
    DiagonalPlusRankOne,
    JacobianOperator,
    SimplexBlock,
)
from .rules import RULES, PairRule, get_rule, register_rule

__all__ = [
    "__version__",
    # activations and losses: what their packages export
    *activations.__all__,
    *losses.__all__,
    "EmptyMeanWarning",
    # contraction and operators
    "contract",
    "diagonal",
    "JacobianOperator",
    "DenseJacobian",
    "DiagonalJacobian",
    "DiagonalPlusRankOne",
    "DiagonalPlusLowRank",
    "SimplexBlock",
    # heads
    "Head",
    "Pair",
    "pairs",
    "register_fused",
    "register_hessian",
    "PairRule",
    "register_rule",
    "get_rule",
    "RULES",
    # the last layer
    "linear_curvature",
    "linear_gradient",
    "Kron",
    "LastLayerLaplace",
    "influence",
    "self_influence",
    # verification
    "numerical_jacobian",
    "numerical_grad",
    "check_activation",
    "check_head",
    "check_second_order",
    "CheckReport",
    # which compiled kernels run
    "kernels",
    # modules
    "curvature",
    "domains",
    "fused",
    "operators",
]
