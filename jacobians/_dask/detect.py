"""Recognising Dask's types without importing dask."""

from __future__ import annotations

__all__ = ["is_dask_type"]


def is_dask_type(cls: type) -> bool:
    """True for ``dask.array.Array`` (and any type of dask's), by its module's name."""
    return cls.__module__.split(".")[0] == "dask"
