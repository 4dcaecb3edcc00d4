"""The numpy path needs numpy and opt_einsum only: with every optional package made
unimportable, ``import jacobians`` works and every registered pair answers on numpy arrays.

Run in a fresh interpreter whose import system refuses the optional packages (array-API
helpers, the array libraries, numba, Dask, scipy), as on a machine where only the run-time
dependencies are installed. A module that imports one of them at import time, or a numpy
code path that reaches for one, fails here by name.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKED = ("array_api_compat", "array_api_extra", "array_api_strict", "torch", "jax", "cupy", "numba", "dask",
           "distributed", "scipy")

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed here")

    sys.meta_path.insert(0, Refuse())

    import numpy as np
    import jacobians as jac
    from jacobians.checks import example_inputs

    answered = 0
    for pair in jac.pairs():
        head = jac.Head(jac.ACTIVATIONS[pair.activation](), jac.LOSSES[pair.loss]())
        z, y = example_inputs(head, shape=(3, 4))
        methods = (["fused"] if pair.fused else []) + ([] if head.logits_loss else ["vjp", "jacobian"])
        for method in methods:
            head.grad(z, y, method)
        head.value_and_grad(z, y)
        head.hessian(z, y)
        head.hvp(z, y, np.ones_like(z))
        head.ggn(z, y)
        head.fisher(z, y, kind="empirical")
        try:
            head.fisher(z, y)
        except ValueError as exc:  # not a likelihood, or no closed form: said so
            assert "likelihood" in str(exc) or "exact" in str(exc), exc
        jac.linear_curvature(np.ones((3, 2)), head, z, y, kind="ggn")
        answered += 1
    print(answered, len(jac.pairs()))
    """
)


def test_numpy_path_needs_no_optional_package():
    code = f"BLOCKED = {BLOCKED!r}\n" + SCRIPT
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    answered, total = map(int, out.stdout.split())
    assert answered == total > 100
