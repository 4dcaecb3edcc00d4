"""Recognising Dask arrays without importing dask (``import jacobians`` never does).

Every row-wise entry point asks :func:`any_dask` of its array arguments; only when one is
a Dask array is :mod:`jacobians._dask` imported and given the call.
"""

from __future__ import annotations

import functools

__all__ = ["is_dask", "any_dask", "dask_support", "dask_aware"]


def is_dask(x) -> bool:
    """True for a ``dask.array.Array``, read off its type's module (no import of dask)."""
    return type(x).__module__.split(".")[0] == "dask"


def any_dask(*xs) -> bool:
    return any(is_dask(x) for x in xs)


def dask_support():
    """The module that runs the entry points on Dask arrays (imports dask)."""
    from . import _dask

    return _dask


def dask_aware(name: str):
    """Decorator for an activation's or loss's row-wise method: with a Dask array among the
    arguments the call goes to ``jacobians._dask.METHODS[name]``, chunk by chunk."""

    def wrap(fn):
        if getattr(fn, "__dask_aware__", False):
            return fn

        @functools.wraps(fn)
        def method(self, *args, **kwargs):
            if any_dask(*args, *kwargs.values()):
                return dask_support().METHODS[name](self, fn, *args, **kwargs)
            return fn(self, *args, **kwargs)

        method.__dask_aware__ = True
        return method

    return wrap
