"""Peak memory of ``head.grad(z, y, method='jacobian', max_bytes=...)``, in a fresh process.

Run as a script (the suite does): prints one JSON line with the times of ``repeats`` calls,
the peak resident set size (``ru_maxrss``) before the first call (numpy, the data) and
after the last, and the size the dense Jacobian would have::

    python benchmarks/peak_memory.py N K DTYPE MAX_BYTES REPEATS
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


def run(N: int, K: int, dtype: str, max_bytes: int, repeats: int) -> dict:
    import numpy as np

    import jacobians as jac

    rng = np.random.default_rng(0)
    z = rng.normal(size=(N, K)).astype(dtype)
    y = rng.integers(0, K, size=N)
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    baseline = peak_rss_bytes()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        g = head.grad(z, y, method="jacobian", max_bytes=max_bytes)
        times.append(time.perf_counter() - t0)
        del g
    return {
        "times": times,
        "peak_rss_bytes": peak_rss_bytes(),
        "baseline_rss_bytes": baseline,
        "dense_bytes": N * K * K * np.dtype(dtype).itemsize,
        "max_bytes": max_bytes,
    }


def measure(N: int, K: int, dtype: str, max_bytes: int, repeats: int) -> dict:
    """:func:`run` in a subprocess (so that its peak RSS is its own).

    The child imports the same ``jacobians`` as this process, installed or not.
    """
    import jacobians

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(jacobians.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, __file__, str(N), str(K), dtype, str(max_bytes), str(repeats)],
        capture_output=True, text=True, check=True, env=env,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    n, k, dt, mb, rep = sys.argv[1:6]
    print(json.dumps(run(int(n), int(k), dt, int(mb), int(rep))))
