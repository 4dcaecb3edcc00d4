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

__all__ = ["available_cores", "resolve_workers", "run_in_row_blocks", "ForkedTasks", "fork_is_safe", "PARALLEL_MIN_BYTES", "CHUNK_BYTES"]

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
    work: Callable[[slice], None], n_rows: int, out_nbytes: int, workers: int | None, chunk_rows: int | None = None,
    min_bytes: int = PARALLEL_MIN_BYTES,
) -> None:
    """Call ``work(rows)`` on disjoint slices covering ``range(n_rows)``, on up to ``workers``
    threads (the calling thread included) when the output is large enough to pay.

    ``work`` must write only to its own rows of the output. ``chunk_rows`` sets the size of
    the slices (default about :data:`CHUNK_BYTES` of output); outputs under ``min_bytes``
    (default :data:`PARALLEL_MIN_BYTES`) stay on the calling thread. The first exception
    raised by any ``work`` call stops the others from taking new chunks and is re-raised.
    """
    n_workers = min(resolve_workers(workers), n_rows)
    if n_workers <= 1 or out_nbytes < min_bytes:
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


def _forget_pool() -> None:
    """In a forked child the pool's threads do not exist: start a new pool on first use."""
    global _POOL
    _POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def fork_is_safe() -> bool:
    """False once JAX is imported in this process: its runtime's threads make ``os.fork``
    unsafe (JAX warns of deadlocks), so :class:`ForkedTasks` then runs its tasks here."""
    import sys

    return "jax" not in sys.modules


class ForkedTasks:
    """Zero-argument callables run on up to ``workers`` forked processes (every core by
    default), in groups: ``with ForkedTasks(tasks) as pool: pool.run(indices)``.

    For work that holds the GIL (many small numpy calls): threads would take turns, forked
    processes run side by side. The tasks are inherited by the fork, not pickled (closures
    are fine); their results are pickled back. One pool serves every :meth:`run`, so what a
    worker loads on first use (compiled kernels) it loads once. Tasks are handed out one at
    a time, so a slow one does not hold up a chunk. With one worker, without the ``fork``
    start method (not Linux), or once JAX is imported (:func:`fork_is_safe`), the tasks
    run here, in order.
    """

    def __init__(self, tasks: list[Callable], workers: int | None = None):
        import multiprocessing as mp

        self.tasks = list(tasks)
        self.workers = min(resolve_workers(workers), max(len(self.tasks), 1))
        self._pool = None
        if self.workers > 1 and "fork" in mp.get_all_start_methods() and fork_is_safe():
            global _FORKED
            _FORKED = self.tasks
            try:
                self._pool = mp.get_context("fork").Pool(self.workers)
            finally:
                _FORKED = None

    def run(self, indices) -> list:
        """The results of ``tasks[i]`` for ``i`` in ``indices``, in that order."""
        indices = list(indices)
        if self._pool is None or len(indices) <= 1:
            return [self.tasks[i]() for i in indices]
        where = {i: k for k, i in enumerate(indices)}
        out = [None] * len(indices)
        for i, result in self._pool.imap_unordered(_call_forked, indices, chunksize=1):
            out[where[i]] = result
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> ForkedTasks:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_FORKED: list | None = None


def _call_forked(i: int):
    return i, _FORKED[i]()
