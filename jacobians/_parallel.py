"""Row-block parallelism for the dense Jacobian builds.

numpy releases the GIL inside einsum and ufunc loops, so building disjoint row blocks of
one output on several threads puts every core to work (the build is compute-bound in
numpy's einsum loop, and one core cannot saturate memory bandwidth). Small outputs are
built on the calling thread: a thread hand-off costs more than it saves below a few MiB.

The calling thread works too, and every thread takes the next chunk of rows from a shared
counter until none is left. A helper that starts late (an idle vCPU takes milliseconds
to wake on a busy host) or runs slowly (a noisy neighbour) then does less of the work,
instead of the whole call waiting for its fixed half.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

__all__ = ["available_cores", "resolve_workers", "run_in_row_blocks", "PARALLEL_MIN_BYTES", "CHUNK_BYTES"]

#: Outputs smaller than this are built on the calling thread.
PARALLEL_MIN_BYTES = 4 << 20

#: Threads take the rows in chunks of about this many output bytes (at least 4 chunks a thread).
CHUNK_BYTES = 4 << 20

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


def run_in_row_blocks(
    work: Callable[[slice], None], n_rows: int, out_nbytes: int, workers: int | None, chunk_rows: int | None = None
) -> None:
    """Call ``work(rows)`` on disjoint slices covering ``range(n_rows)``, on up to ``workers``
    threads (the calling thread included) when the output is large enough to pay.

    ``work`` must write only to its own rows of the output. ``chunk_rows`` sets the size of
    the slices (default about :data:`CHUNK_BYTES` of output). The first exception raised by
    any ``work`` call stops the others from taking new chunks and is re-raised.
    """
    n_workers = min(resolve_workers(workers), n_rows)
    if n_workers <= 1 or out_nbytes < PARALLEL_MIN_BYTES:
        work(slice(0, n_rows))
        return
    if chunk_rows is None:
        chunk_rows = max(1, int(CHUNK_BYTES * n_rows // out_nbytes))
    chunk_rows = max(1, min(chunk_rows, math.ceil(n_rows / (4 * n_workers))))
    n_chunks = math.ceil(n_rows / chunk_rows)
    lock = threading.Lock()
    next_chunk = 0
    failed = threading.Event()

    def drain() -> None:
        nonlocal next_chunk
        while not failed.is_set():
            with lock:
                c = next_chunk
                next_chunk += 1
            if c >= n_chunks:
                return
            try:
                work(slice(c * chunk_rows, min(n_rows, (c + 1) * chunk_rows)))
            except BaseException:
                failed.set()
                raise

    helpers = [_pool().submit(drain) for _ in range(n_workers - 1)]
    try:
        drain()
    finally:
        errors = [f.exception() for f in helpers]  # waits for every helper
    for e in errors:
        if e is not None:
            raise e
