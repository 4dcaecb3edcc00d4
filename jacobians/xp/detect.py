"""Recognising the array types of the generic path without importing any array library.

:func:`is_generic_type` is the detector :mod:`jacobians._arrays` registers with
:func:`jacobians.backend.register_backend`: ``import jacobians`` imports this module, and
it imports neither array_api_compat nor any array library.
"""

from __future__ import annotations

import numpy as np

__all__ = ["GENERIC_ROOTS", "is_generic_type"]

#: top-level modules whose array types take the generic path (judged by name, no import)
GENERIC_ROOTS = frozenset({"torch", "jax", "jaxlib", "cupy", "cupyx", "array_api_strict"})
#: top-level modules with a path of their own (numpy's kernels, the Dask backend)
_OWN_PATH_ROOTS = frozenset({"numpy", "dask"})


def is_generic_type(cls: type) -> bool:
    """Whether arrays of type ``cls`` take the generic (array API) path.

    True for the array types of torch, jax/jaxlib, cupy and array_api_strict (judged from
    ``cls.__module__``'s first component, without importing them), and for any other type
    with an ``__array_namespace__`` method that is neither numpy's (``numpy.ndarray`` and
    its subclasses) nor Dask's. Python scalars, numpy arrays and ``None`` give False.

    Parameters
    ----------
    cls : type
        The type of an argument (never its value).

    Returns
    -------
    bool
    """
    root = (getattr(cls, "__module__", None) or "").split(".")[0]
    if root in GENERIC_ROOTS:
        return True
    if root in _OWN_PATH_ROOTS or not isinstance(cls, type) or issubclass(cls, np.ndarray):
        return False
    return callable(getattr(cls, "__array_namespace__", None))
