"""What ``python -m jacobians bench`` was measured on (CPU, numpy's vector level, the
kernel set, BLAS, the environment variables that change the figures) and its progress bar.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path

import numpy as np

__all__ = ["ENV_SHOWN", "numpy_simd", "kernels_description", "machine_info"]


#: environment variables that change what is measured (shown in the header and --json)
ENV_SHOWN = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "NPY_DISABLE_CPU_FEATURES", "ATEN_CPU_CAPABILITY",
             "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "JACOBIANS_KERNELS")


def numpy_simd() -> str:
    """numpy's vector level: the SIMD targets it dispatches to that this CPU has (what
    ``np.show_runtime()`` reports as found), e.g. ``'X86_V4 (found X86_V3 X86_V4 AVX512_ICL;
    not found AVX512_SPR)'``; ``NPY_DISABLE_CPU_FEATURES`` removes targets."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:  # numpy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__
        except ImportError:
            return "unknown"
    found = [t for t in __cpu_dispatch__ if __cpu_features__.get(t)]
    missing = [t for t in __cpu_dispatch__ if not __cpu_features__.get(t)]
    levels = [t for t in found if t.startswith("X86_V") or t in ("ASIMD", "SVE", "VSX", "VX")]
    top = levels[-1] if levels else "baseline"
    return f"{top} (found {' '.join(found) or 'none'}; not found {' '.join(missing) or 'none'})"


def kernels_description() -> str:
    """Which kernel set runs (see :func:`jacobians.kernels`), with its version and target."""
    from .. import _kernels

    return _kernels.describe()


def machine_info() -> dict:
    """What the figures were measured on."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "numpy": np.__version__,
        "env": {k: os.environ[k] for k in ENV_SHOWN if k in os.environ},
        "numpy_simd": numpy_simd(),
        "kernels": kernels_description(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(Exception):
        import threadpoolctl

        info["blas"] = [
            {k: d.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for d in threadpoolctl.threadpool_info()
        ]
    return info


class _Progress:
    """tqdm on stderr when it is a terminal (a plain counter without tqdm); silent otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        self.n, self.total = 0, total
        self.enabled = enabled and sys.stderr.isatty()
        if self.enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, file=sys.stderr, unit="group", leave=False)
            except ImportError:
                self.bar = None

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)
        elif self.enabled:
            print(f"\r[{self.n}/{self.total}] {text:<60}", end="", file=sys.stderr, flush=True)

    def update(self) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print("\r" + " " * 75 + "\r", end="", file=sys.stderr, flush=True)

