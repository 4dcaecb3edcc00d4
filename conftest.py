"""Doctest collection of the package: modules that import an optional extra are left out
where it is not installed (the numba kernels: ``fast``; the Dask backend's modules: ``dask``;
the generic path's ``jacobians/xp``: ``arrays``), so the suite runs with the ``test`` extra
alone."""

import importlib.util
import pathlib

HERE = pathlib.Path(__file__).parent
collect_ignore = []
if not importlib.util.find_spec("numba"):
    collect_ignore += [str(p.relative_to(HERE)) for p in HERE.glob("jacobians/_kernels/numba_*.py")]
if not (importlib.util.find_spec("dask") and importlib.util.find_spec("distributed")):
    # its __init__ (the registration) and detect.py import no dask
    collect_ignore += [
        str(p.relative_to(HERE))
        for p in HERE.glob("jacobians/_dask/*.py")
        if p.name not in ("__init__.py", "detect.py")
    ]
if not importlib.util.find_spec("array_api_compat"):
    # the generic path (jacobians.xp) needs the arrays extra
    collect_ignore += [str(p.relative_to(HERE)) for p in HERE.glob("jacobians/xp/*.py") if p.name != "__init__.py"]
    collect_ignore += [str(p.relative_to(HERE)) for p in HERE.glob("jacobians/_arrays/*.py") if p.name != "__init__.py"]
for module, name in (("torch", "torch.py"), ("jax", "jax.py")):
    # the adapters import their framework (the test extra installs both)
    if not (importlib.util.find_spec(module) and importlib.util.find_spec("array_api_compat")):
        collect_ignore.append(str(pathlib.Path("jacobians") / name))
