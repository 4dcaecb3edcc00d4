"""The array-type dispatch (jacobians.backend): a registered backend's arrays go to its
implementation, numpy ones to the package's own code; the loader runs once, on first
use; two backends in one call are a TypeError naming both; nothing is imported to
detect."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

import jacobians as jac
from jacobians import backend


class FakeArray:
    """An array of a library of its own, holding a numpy array."""

    def __init__(self, x):
        self.x = np.asarray(x)


class OtherArray(FakeArray):
    pass


def _implementation(calls):
    def method(name):
        def run(obj, plain, *args, **kwargs):
            calls.append(name)
            return FakeArray(
                plain(
                    obj,
                    *(a.x if isinstance(a, FakeArray) else a for a in args),
                    **kwargs,
                )
            )

        return run

    names = [
        "__call__",
        "jacobian",
        "vjp",
        "jvp",
        "hessian",
        "hessian_vjp",
        "loss.value",
        "loss.grad",
        "loss.value_and_grad",
        "loss.hessian",
        "loss.hvp",
    ]

    def head_value_and_grad(head, z, y, method, *, max_bytes, workers, need):
        calls.append("head_value_and_grad")
        return head.value_and_grad(z.x, y, method)

    return types.SimpleNamespace(
        METHODS={n: method(n) for n in names}, head_value_and_grad=head_value_and_grad
    )


@pytest.fixture
def fake():
    """The 'fake' backend registered for the test (and removed after): its calls and
    loads."""
    calls, loads = [], []

    def load():
        loads.append(1)
        return _implementation(calls)

    backend.register_backend("fake", lambda cls: cls is FakeArray, load)
    backend.register_backend(
        "other", lambda cls: cls is OtherArray, lambda: _implementation(calls)
    )
    yield calls, loads
    backend.unregister_backend("fake")
    backend.unregister_backend("other")


def test_numpy_arrays_have_no_backend():
    assert backend.backend_of(np.zeros(3), None, 1.0, [1, 2], np.float32(2)) is None
    assert backend.backend_of() is None


def test_a_backends_arrays_go_to_its_implementation(fake, rng):
    calls, loads = fake
    z = rng.normal(size=(4, 3))
    g = rng.normal(size=(4, 3))
    act = jac.Softmax()
    out = act.vjp(FakeArray(z), g)  # a numpy g with the backend's z
    assert isinstance(out, FakeArray) and np.array_equal(out.x, act.vjp(z, g))
    y = np.array([0, 2, 1, 1])
    loss = jac.CrossEntropy()
    assert np.array_equal(loss.grad(FakeArray(act(z)), y).x, loss.grad(act(z), y))
    head = jac.Head(act, loss)
    assert np.array_equal(head.grad(FakeArray(z), y), head.grad(z, y))
    assert calls == ["vjp", "loss.grad", "head_value_and_grad"]
    assert loads == [1]  # loaded once, on first use
    act.vjp(z, g)  # numpy: the backend is not asked
    assert calls == ["vjp", "loss.grad", "head_value_and_grad"]


def test_two_backends_in_one_call_name_both(fake, rng):
    z = rng.normal(size=(4, 3))
    with pytest.raises(TypeError, match="fake and other"):
        backend.backend_of(FakeArray(z), np.zeros(2), OtherArray(z))
    with pytest.raises(TypeError, match="fake and other"):
        jac.Softmax().vjp(FakeArray(z), OtherArray(z))


def test_registering_is_checked(fake):
    with pytest.raises(ValueError, match="already registered"):
        backend.register_backend("fake", lambda cls: False, lambda: None)
    with pytest.raises(TypeError, match="callables"):
        backend.register_backend("new", None, lambda: None)
    with pytest.raises(KeyError, match="not registered"):
        backend.unregister_backend("never")
    assert list(backend.BACKENDS)[:2] == ["arrays", "dask"]  # the built-ins, in import order
    with pytest.raises(TypeError):
        backend.BACKENDS["x"] = (
            None  # read-only: register_backend keeps the type cache right
        )


def test_dask_is_registered_without_importing_dask():
    code = (
        "import sys, jacobians, numpy as np\n"
        "from jacobians.backend import BACKENDS, backend_of\n"
        "assert backend_of(np.zeros(2)) is None\n"
        "print('dask' in BACKENDS, 'dask' in sys.modules, "
        "any(m.endswith(('_dask.heads', '_dask.rows')) for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["True", "False", "False"]


def test_nothing_below_the_top_imports_a_backend():
    """Only the package's face (jacobians/__init__.py) imports jacobians._dask, and _dask
    reaches the rest of the package from above: every import statement is read, inside
    functions too."""
    import ast
    import pathlib

    root = pathlib.Path(jac.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] == "_dask" or rel == pathlib.Path("__init__.py"):
            continue
        package = ["jacobians", *rel.parts[:-1]]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                names = [f"{module}.{a.name}" for a in node.names] + [module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            if any(n == "jacobians._dask" or n.startswith("jacobians._dask.") for n in names):
                offenders.append(str(rel))
    assert offenders == []
