"""The bottom layer: numerics, their buffers, input checks and row-block threads.

Pure functions of numpy arrays that import nothing else of the package: the
cancellation-free kernels along the last axis (:mod:`.buffers` chunks, scratch buffers
and row reductions; :mod:`.algebra` complements and projections; :mod:`.softmax`;
:mod:`.elementwise`; :mod:`.sparse` sparsemax and 1.5-entmax; :mod:`.entmax` the α-entmax
solver), the rule for a ``'mean'`` over nothing (:mod:`.empty`), the input checks
(:mod:`.validation`), the row-block threads (:mod:`.parallel`), the scoped memo
(:mod:`.memo`) and the counter-based sampling (:mod:`.sampling`). Callers import the
modules themselves; this package re-exports nothing.
"""
