"""Peak memory of a blocked call, in a fresh process.

Two calls, each bounded by ``max_bytes`` of intermediates:

* ``grad``: ``head.grad(z, y, method='jacobian', max_bytes=...)`` (softmax + CE, z (N, K));
* ``linear_curvature``: ``jac.linear_curvature(X, head, z, y, kind='ggn', max_bytes=...)``
  (softmax + CE, features X (N, D), the dense (P, P) GGN, P = K·(D+1)).

Run as a script (the suite does): prints one JSON line with the times of ``repeats`` calls,
the peak resident set size before the first call (numpy, the data, the code paths warmed
up) and after the last, and what the call would take without blocks::

    python benchmarks/peak_memory.py grad N K DTYPE MAX_BYTES REPEATS
    python benchmarks/peak_memory.py linear_curvature N D K DTYPE MAX_BYTES REPEATS
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    On Linux, ``VmHWM`` of ``/proc/self/status``: the high-water mark of this process
    image only. (``ru_maxrss`` of a child started by a big parent can report the
    parent's size: the forked copy's RSS is folded in at ``exec``.)
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def _timed(call, repeats: int) -> dict:
    """``call()`` ``repeats`` times: the times, and the peak RSS before and after."""
    baseline = peak_rss_bytes()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t0)
        del out
    return {"times": times, "peak_rss_bytes": peak_rss_bytes(), "baseline_rss_bytes": baseline}


def run_grad(N: int, K: int, dtype: str, max_bytes: int, repeats: int) -> dict:
    import numpy as np

    import jacobians as jac

    rng = np.random.default_rng(0)
    z = rng.normal(size=(N, K)).astype(dtype)
    y = rng.integers(0, K, size=N)
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    out = _timed(lambda: head.grad(z, y, method="jacobian", max_bytes=max_bytes), repeats)
    return {**out, "dense_bytes": N * K * K * np.dtype(dtype).itemsize, "max_bytes": max_bytes}


def run_linear_curvature(N: int, D: int, K: int, dtype: str, max_bytes: int, repeats: int) -> dict:
    import numpy as np

    import jacobians as jac

    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D)).astype(dtype)
    z = (X @ rng.normal(size=(D, K)).astype(dtype) * 0.1).astype(dtype)
    y = rng.integers(0, K, size=N)
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    # warm up the code paths on a tiny layer (K = 3, D = 2): a warm-up of this size would
    # leave its own (P, P) result and product in the high-water mark before the start
    jac.linear_curvature(X[:64, :2], head, z[:64, :3], y[:64] % 3, kind="ggn")
    out = _timed(lambda: jac.linear_curvature(X, head, z, y, kind="ggn", max_bytes=max_bytes), repeats)
    P, itemsize = K * (D + 1), np.dtype(dtype).itemsize
    return {**out, "result_bytes": P * P * itemsize, "rank_one_rows_bytes": N * P * itemsize, "max_bytes": max_bytes}


RUNNERS = {"grad": run_grad, "linear_curvature": run_linear_curvature}


def _in_subprocess(what: str, *args) -> dict:
    """``RUNNERS[what](*args)`` in a subprocess (so that its peak RSS is its own).

    The child imports the same ``jacobians`` as this process, installed or not.
    """
    import jacobians

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(jacobians.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, __file__, what, *(str(a) for a in args)],
        capture_output=True, text=True, check=True, env=env,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(N: int, K: int, dtype: str, max_bytes: int, repeats: int) -> dict:
    """:func:`run_grad` in a subprocess."""
    return _in_subprocess("grad", N, K, dtype, max_bytes, repeats)


def measure_linear_curvature(N: int, D: int, K: int, dtype: str, max_bytes: int, repeats: int) -> dict:
    """:func:`run_linear_curvature` in a subprocess."""
    return _in_subprocess("linear_curvature", N, D, K, dtype, max_bytes, repeats)


if __name__ == "__main__":
    runner = RUNNERS[sys.argv[1]]
    *ints, dt, mb, rep = sys.argv[2:]
    print(json.dumps(runner(*(int(a) for a in ints), dt, int(mb), int(rep))))
