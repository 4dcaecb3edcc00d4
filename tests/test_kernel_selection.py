"""Which kernel set runs: chosen on first use, from the environment; never imported by
``import jacobians`` (see :mod:`jacobians._kernels`)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jacobians as jac


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=600,
    )


def test_import_never_imports_numba():
    out = _run("""
        import sys
        import jacobians
        assert "numba" not in sys.modules
        import numpy as np
        jacobians.Softmax().jacobian_operator(np.zeros((2, 3)))  # a kernel runs: now chosen
        print(jacobians.kernels(), "numba" in sys.modules)
    """, JACOBIANS_KERNELS="numpy")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["numpy", "False"]


def test_the_environment_chooses_the_kernels():
    numba_there = _run("import numba").returncode == 0
    for value, expected in [("numpy", "numpy"), ("auto", "numba" if numba_there else "numpy"), ("", "numba" if numba_there else "numpy")]:
        out = _run("import jacobians; print(jacobians.kernels())", JACOBIANS_KERNELS=value)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == expected, value
    bad = _run("import jacobians; jacobians.kernels()", JACOBIANS_KERNELS="fortran")
    assert bad.returncode != 0
    assert "JACOBIANS_KERNELS must be one of auto, numba, numpy; got 'fortran'" in bad.stderr
    forced = _run("import jacobians; print(jacobians.kernels())", JACOBIANS_KERNELS="numba")
    if numba_there:
        assert forced.stdout.strip() == "numba"
    else:
        assert forced.returncode != 0 and "pip install 'jacobians[fast]'" in forced.stderr


def test_kernels_reports_the_set_in_use():
    expected = "numpy" if os.environ.get("JACOBIANS_KERNELS", "auto").strip().lower() == "numpy" else None
    assert jac.kernels() in ("numba", "numpy")
    if expected:
        assert jac.kernels() == expected


