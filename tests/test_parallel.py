"""The row-block scheduler: every row once, the calling thread working too, late or
failing helpers, and its small-output and ``workers`` rules."""

from __future__ import annotations

import threading
import time

import pytest

from jacobians.numerics import parallel
from jacobians.numerics.parallel import PARALLEL_MIN_BYTES, run_in_row_blocks


def _record(n_rows, delay=0.0, slow_thread=None):
    """A ``work`` that records which thread took which slice."""
    seen: list[tuple[int, int, str]] = []
    lock = threading.Lock()

    def work(rows: slice) -> None:
        name = threading.current_thread().name
        if delay and (slow_thread is None or slow_thread(name)):
            time.sleep(delay)
        with lock:
            seen.append((rows.start, rows.stop, name))

    return work, seen


def _covered_once(seen, n_rows):
    covered = sorted((a, b) for a, b, _ in seen)
    assert covered[0][0] == 0 and covered[-1][1] == n_rows
    assert all(b1 == a2 for (_, b1), (a2, _) in zip(covered, covered[1:])), covered
    assert all(a < b for a, b in covered)


@pytest.mark.parametrize("n_rows", [1, 7, 64, 1001])
@pytest.mark.parametrize("workers", [2, 3, 8])
@pytest.mark.parametrize("chunk_rows", [None, 1, 5, 10_000])
def test_every_row_is_taken_exactly_once(n_rows, workers, chunk_rows):
    work, seen = _record(n_rows)
    run_in_row_blocks(work, n_rows, PARALLEL_MIN_BYTES, workers, chunk_rows=chunk_rows)
    _covered_once(seen, n_rows)
    if chunk_rows is not None:
        assert max(b - a for a, b, _ in seen) <= chunk_rows


def test_small_outputs_and_one_worker_run_on_the_calling_thread():
    for nbytes, workers in [(PARALLEL_MIN_BYTES - 1, 4), (PARALLEL_MIN_BYTES, 1)]:
        work, seen = _record(100)
        run_in_row_blocks(work, 100, nbytes, workers)
        assert seen == [(0, 100, threading.current_thread().name)]


def test_the_calling_thread_takes_chunks_and_a_late_helper_takes_fewer():
    # a helper that sleeps on every chunk: the calling thread does most of the work
    # instead of waiting for a fixed half
    work, seen = _record(40, delay=0.02, slow_thread=lambda name: name.startswith("jacobians"))
    run_in_row_blocks(work, 40, PARALLEL_MIN_BYTES, 2, chunk_rows=1)
    _covered_once(seen, 40)
    me = threading.current_thread().name
    mine = sum(b - a for a, b, name in seen if name == me)
    assert mine > 20, seen


def test_default_chunks_are_about_chunk_bytes_and_at_least_four_per_thread(monkeypatch):
    work, seen = _record(16)
    run_in_row_blocks(work, 16, PARALLEL_MIN_BYTES, 2)  # a row is 256 KiB: 4 chunks a thread
    assert len(seen) == 8
    row_bytes = PARALLEL_MIN_BYTES // 4096
    monkeypatch.setattr(parallel, "CHUNK_BYTES", 10 * row_bytes)
    work, seen = _record(4096)
    run_in_row_blocks(work, 4096, PARALLEL_MIN_BYTES, 2)
    assert {b - a for a, b, _ in seen} == {10, 4096 % 10} and len(seen) == 410


def test_an_error_stops_the_others_and_is_raised():
    calls = []
    lock = threading.Lock()

    def work(rows: slice) -> None:
        with lock:
            calls.append(rows.start)
        if rows.start == 3:
            raise RuntimeError("boom at row 3")
        time.sleep(0.005)

    with pytest.raises(RuntimeError, match="boom at row 3"):
        run_in_row_blocks(work, 200, PARALLEL_MIN_BYTES, 2, chunk_rows=1)
    assert len(calls) < 50  # nobody kept taking chunks after the failure


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_workers_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="workers must be a positive int or None"):
        run_in_row_blocks(lambda rows: None, 10, PARALLEL_MIN_BYTES, bad)


def test_forked_tasks_fork_only_while_jax_is_not_imported():
    """JAX's runtime threads make os.fork unsafe (it warns of deadlocks): once jax is imported
    the tasks run in this process, with the same results. Checked in fresh processes."""
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "{pre}"
        "from jacobians.numerics.parallel import ForkedTasks\n"
        "tasks = [lambda i=i: (i * i, os.getpid()) for i in range(6)]\n"
        "with ForkedTasks(tasks, 2) as pool:\n"
        "    out = pool.run(range(6))\n"
        "assert [v for v, _ in out] == [i * i for i in range(6)]\n"
        "print(all(pid == os.getpid() for _, pid in out))\n"
    )
    forked = subprocess.run([sys.executable, "-c", code.format(pre="")], capture_output=True, text=True, timeout=120)
    assert forked.returncode == 0 and forked.stdout.strip() == "False", forked.stderr
    pytest.importorskip("jax", reason="jax (the test extra) is not installed")
    here = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", code.format(pre="import jax\n")],
        capture_output=True, text=True, timeout=120,
    )
    assert here.returncode == 0 and here.stdout.strip() == "True", here.stderr
