"""Doctest collection of the package: modules that import an optional extra are left out
where it is not installed (the numba kernels: ``fast``; the Dask path: ``dask``), so the
suite runs with the ``test`` extra alone."""

import importlib.util

collect_ignore = []
if not importlib.util.find_spec("numba"):
    collect_ignore += ["jacobians/_kernels/numba_impl.py", "jacobians/_kernels/numba_math.py"]
if not (importlib.util.find_spec("dask") and importlib.util.find_spec("distributed")):
    collect_ignore += ["jacobians/_dask.py"]
