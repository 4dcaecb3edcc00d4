"""Dask arrays in, Dask arrays out: every row-wise entry point, chunk by chunk.

This package is the Dask backend (the top floor of the library). Importing it registers
the backend with :mod:`jacobians.backend` and imports nothing else: dask is imported by
the loader, when a Dask array first reaches an entry point (``import jacobians`` never
imports dask). Rows of a batch do not interact, so each chunk of rows runs the numpy
code that exists; only the reductions cross chunks:

* the row axes may be chunked any way; the class axis K is rechunked to one chunk;
* targets ``y`` (numpy or dask) are aligned to z's row chunks;
* ``'mean'`` divides by the whole batch's denominator, the loss's own
  ``mean_denominator`` (N, N·K, or the summed class weights of the targets not
  ignored): a number computed at once from numpy targets (no graph), else a 0-d dask
  array summed over the chunks of the targets (of ``a`` too for a loss with
  ``denominator_from_targets = False``); every chunk computes with it
  (``loss.with_denominator``); a denominator of 0 (``'mean'`` over nothing) warns once
  for the call, at graph build or from the one task that sums it, not per chunk;
* a reduced loss value is a 0-d dask array; ``linear_curvature`` sums its per-chunk
  partials in a tree;
* Monte-Carlo draws are a function of (seed, global row index, sample), so they do not
  depend on the chunking.

Modules: :mod:`.detect` (the detector: no import of dask), :mod:`.arrays` (preparing and
aligning arrays, running a function chunk by chunk, exact totals), :mod:`.reduction`
(the whole batch's ``'mean'`` denominator and factor), :mod:`.rows` (activations' and
losses' row-wise methods), :mod:`.heads` (a head's entry points, ``contract`` and the
last layer).
"""

from __future__ import annotations

import types

from ..backend import ENTRY_POINTS, register_backend
from .detect import is_dask_type

__all__ = ["is_dask_type", "load"]


def load():
    """The implementation (imports dask): see
    :class:`jacobians.backend.Implementation`."""
    from . import heads, rows

    return types.SimpleNamespace(
        METHODS=rows.METHODS, **{name: getattr(heads, name) for name in ENTRY_POINTS}
    )


register_backend("dask", is_dask_type, load)
