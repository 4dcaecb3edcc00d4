"""The bottom layer: numerics and their buffers, input checks, row-block threads.

Pure functions of numpy arrays that import nothing else of the package: the rule
for a ``'mean'`` over nothing (:mod:`.empty`), the input checks (:mod:`.validation`), the
row-block threads (:mod:`.parallel`), the scoped memo (:mod:`.memo`) and the
counter-based sampling (:mod:`.sampling`). Callers import the modules themselves; this
package re-exports nothing.
"""
