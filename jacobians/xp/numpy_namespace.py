"""numpy under the array API's names, for formulas written once with ``xp`` to run on numpy
arrays **without** array_api_compat (not a run-time dependency: ``import jacobians`` and the
numpy path need only numpy and opt_einsum).

:data:`numpy_xp` is numpy's own module behind the few names the generic formulas use that
numpy lacks before 2.0 (``astype``, ``matrix_transpose``, ``bool``, ``concat``,
``permute_dims``, ``vecdot``), and creation functions that take the standard's ``device=``
(numpy's arrays live on the CPU: ``None`` or ``'cpu'`` accepted, anything else refused).

Examples
--------
>>> import numpy as np
>>> from jacobians.xp.numpy_namespace import numpy_xp as xp
>>> xp.astype(xp.zeros((2,), device="cpu"), np.float32).dtype
dtype('float32')
>>> xp.matrix_transpose(np.arange(6.0).reshape(2, 3)).shape
(3, 2)
"""

from __future__ import annotations

import types

import numpy as np

__all__ = ["numpy_xp"]

_CREATION = ("asarray", "zeros", "ones", "empty", "full", "eye", "arange", "linspace",
             "zeros_like", "ones_like", "empty_like", "full_like")


def _on_cpu(fn):
    def call(*args, device=None, **kwargs):
        if device not in (None, "cpu"):
            raise ValueError(f"numpy arrays live on the CPU; got device={device!r}")
        return fn(*args, **kwargs)

    call.__name__ = call.__qualname__ = fn.__name__
    call.__doc__ = fn.__doc__
    return call


def _astype(x, dtype, /, *, copy=True, device=None):
    return _on_cpu(lambda x: np.asarray(x).astype(dtype, copy=copy))(x, device=device)


def _namespace() -> types.SimpleNamespace:
    names = {name: getattr(np, name) for name in dir(np) if not name.startswith("_")}
    names.update({name: _on_cpu(getattr(np, name)) for name in _CREATION})
    names.update(
        __name__="numpy",
        astype=_astype,
        matrix_transpose=lambda x, /: np.swapaxes(x, -1, -2),
        bool=np.bool_,
        concat=np.concatenate,
        permute_dims=np.transpose,
        vecdot=lambda x1, x2, /, *, axis=-1: np.sum(np.conj(x1) * x2, axis=axis),
    )
    return types.SimpleNamespace(**names)


#: numpy with the array API names the generic formulas use (see the module's docstring)
numpy_xp = _namespace()
