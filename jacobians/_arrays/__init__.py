"""PyTorch, JAX, CuPy and array-api-strict arrays in, the same type out, on the same device.

This package is the generic backend (the top floor of the library, beside the Dask one).
Importing it registers the backend with :mod:`jacobians.backend` under the name
``'arrays'`` and imports no array library: the detector
(:func:`jacobians.xp.detect.is_generic_type`) judges a type by its module's name, and the
loader imports ``array_api_compat`` (the ``arrays`` extra) when such an array first
reaches an entry point.

The formulas are the classes' own: each built-in activation and loss writes its generic
methods next to its numpy ones, with the namespace ``xp`` first (``xp_forward``,
``xp_vjp``, ``xp_terms`` ...: see :class:`~jacobians.Activation` and
:class:`~jacobians.Loss`). They use only the array API standard and :mod:`jacobians.xp`'s
shims, write nothing in place and have no data-dependent Python control flow, so they run
under ``jax.jit`` and on any device. numpy arrays never come here: their path (and the
numba kernels) is unchanged.

Modules: :mod:`.rows` (activations' and losses' row-wise methods: the namespace, the
inputs' checks, then the class's generic method), :mod:`.heads` (a head's loss, gradient,
Hessian, GGN, HVP and ``contract``), :mod:`.curvature` (factors, Fisher blocks, sampled
columns), :mod:`.last_layer` (``linear_gradient``, ``linear_curvature``) and
:mod:`.operators` (the structured operators of activations and heads, ``diagonal``).
"""

from __future__ import annotations

import types

from ..backend import ENTRY_POINTS, OPTIONAL_ENTRY_POINTS, register_backend
from ..xp.detect import is_generic_type

__all__ = ["load"]


def load():
    """The implementation (imports array_api_compat): see
    :class:`jacobians.backend.Implementation`."""
    try:
        import array_api_compat  # noqa: F401
        import array_api_extra  # noqa: F401
    except ImportError:
        raise ImportError(
            "torch, JAX, CuPy and array-api-strict arrays need the arrays extra: "
            "pip install 'jacobians[arrays]' (array-api-compat, array-api-extra)"
        ) from None
    from . import curvature, heads, last_layer, operators, rows

    # the first that exports a name serves it (operators' contract takes its operators too)
    modules = (operators, curvature, last_layer, heads)
    return types.SimpleNamespace(
        METHODS=rows.METHODS,
        **{
            name: getattr(next(m for m in modules if name in m.__all__), name)
            for name in ENTRY_POINTS + OPTIONAL_ENTRY_POINTS
        },
    )


register_backend("arrays", is_generic_type, load)
