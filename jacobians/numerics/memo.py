"""A scoped memo of pure kernels, for callers that evaluate one input many times.

The check command compares every method of a pair on one input: each method computes
the activation's forward pass itself, so an α-entmax row is solved about five times over
the same bits. Within ``with memo():`` the kernels decorated with :func:`memoized`
return a copy of the result they computed for the same input bits (dtype, shape,
values, parameters; C-contiguous inputs only) earlier in the block, on this thread. A
kernel is a pure function of those bits, so the results are the same bits as without
the memo. Outside a block (the default, and on every other thread) nothing is stored
and every call computes.
"""

from __future__ import annotations

import contextlib
import functools
import threading

import numpy as np

__all__ = ["memo", "memoized", "scoped_table", "MEMO_MAX_BYTES", "MEMO_MAX_ENTRIES"]

#: inputs larger than this are never stored (the memo serves small, repeated inputs)
MEMO_MAX_BYTES = 1 << 16
#: the memo starts afresh when it holds this many results
MEMO_MAX_ENTRIES = 4096

_STATE = threading.local()


@contextlib.contextmanager
def scoped_table(state: threading.local):
    """A dict at ``state.table`` for the duration of the block, on this thread (nested
    blocks share the outermost block's dict; it is dropped when that block exits).
    Outside every block ``state.table`` is None."""
    outer = getattr(state, "table", None)
    if outer is None:
        state.table = {}
    try:
        yield state.table
    finally:
        if outer is None:
            state.table = None


def memo():
    """Memoize the decorated kernels on this thread within the block (nested blocks
    share the outermost block's memo); the memo is dropped when the outermost block
    exits."""
    return scoped_table(_STATE)


def _param_key(value):
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    return (type(value), value)


def memoized(fn):
    """``fn(z, *params)`` memoized within :func:`memo` blocks (see the module's
    docstring); ``z`` an ndarray, ``params`` floats or ndarrays. Always returns an array
    of its own."""

    @functools.wraps(fn)
    def wrapper(z, *params):
        table = getattr(_STATE, "table", None)
        if (
            table is None
            or not isinstance(z, np.ndarray)
            or not z.flags.c_contiguous
            or z.nbytes > MEMO_MAX_BYTES
        ):
            return fn(z, *params)
        key = (fn.__name__, z.dtype.str, z.shape, z.tobytes(), *map(_param_key, params))
        hit = table.get(key)
        if hit is None:
            result = fn(z, *params)
            if len(table) >= MEMO_MAX_ENTRIES:
                table.clear()
            table[key] = result.copy()
            return result
        return hit.copy()

    return wrapper
