"""Row-block parallelism for the memory-bound dense Jacobian builds.

numpy releases the GIL inside einsum and ufunc loops, so writing disjoint row blocks of
one output from a few threads uses more of the machine's memory bandwidth than one core
can. Small outputs are built on the calling thread: a thread hand-off costs more than
it saves below a few MiB.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

__all__ = ["available_cores", "run_in_row_blocks", "PARALLEL_MIN_BYTES"]

#: Outputs smaller than this are built on the calling thread.
PARALLEL_MIN_BYTES = 4 << 20

_POOL: ThreadPoolExecutor | None = None


def available_cores() -> int:
    """Number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(available_cores(), 1), thread_name_prefix="jacobians")
    return _POOL


def resolve_workers(workers: int | None) -> int:
    """``None`` means every available core; otherwise a positive int."""
    if workers is None:
        return available_cores()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int or None; got {workers!r}")
    return workers


def run_in_row_blocks(work: Callable[[slice], None], n_rows: int, out_nbytes: int, workers: int | None) -> None:
    """Call ``work(rows)`` on slices covering ``range(n_rows)``, in parallel if it pays.

    ``work`` must write only to its own rows of the output.
    """
    n_workers = min(resolve_workers(workers), n_rows)
    if n_workers <= 1 or out_nbytes < PARALLEL_MIN_BYTES:
        work(slice(0, n_rows))
        return
    bounds = [n_rows * i // n_workers for i in range(n_workers + 1)]
    blocks = [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    # list() re-raises the first exception of any block.
    list(_pool().map(work, blocks))
