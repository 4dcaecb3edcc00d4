"""Doctest collection of the package: the numba kernel modules import numba (the optional
``fast`` extra), so they are left out where numba is not installed."""

import importlib.util

collect_ignore = (
    [] if importlib.util.find_spec("numba") else ["jacobians/_kernels/numba_impl.py", "jacobians/_kernels/numba_math.py"]
)
