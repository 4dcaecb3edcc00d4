"""Last-layer Laplace approximations and influence functions, exact for a linear output layer.

Built on :func:`jacobians.linear_curvature` and :func:`jacobians.linear_gradient`: θ is the
C-order vector of ``[W | b]`` (see :mod:`jacobians.last_layer`).
"""

from .posterior import LastLayerLaplace

__all__ = ["LastLayerLaplace"]
