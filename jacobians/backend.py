"""Which array library an entry point's arrays come from, and who computes with them.

numpy arrays (and anything ``np.asarray`` takes) need no backend: the package's own code
runs on them. Another array library registers a *backend* here: a name, a cheap detector
and a loader. Every row-wise entry point asks :func:`backend_of` of its array arguments;
when one of them belongs to a backend, the call goes to that backend's implementation.

* The detector is called with an argument's *type* (never its value) and must not import
  the library: e.g. ``lambda cls: cls.__module__.split(".")[0] == "dask"``. Its answers
  are remembered per type, so a lookup costs a dict access per argument.
* The loader runs once, on the first call that meets such an array, and returns the
  implementation: an object (a module, a namespace) with the attributes of
  :class:`Implementation`. Importing the library happens there, so ``import jacobians``
  imports none of them.

Dask registers itself (``jacobians/_dask/__init__.py``, imported by ``jacobians``).
Nothing in the package imports a backend's implementation: it lives on the top floor and
is reached only through this module.

Examples
--------
>>> import numpy as np
>>> from jacobians import backend
>>> backend.backend_of(np.zeros(3), None, 1.5) is None    # numpy: no backend
True
>>> "dask" in backend.BACKENDS
True
"""

from __future__ import annotations

import functools
import types
from typing import Any, Callable, Protocol

__all__ = [
    "Backend",
    "Implementation",
    "BACKENDS",
    "ENTRY_POINTS",
    "OPTIONAL_ENTRY_POINTS",
    "register_backend",
    "unregister_backend",
    "backend_of",
    "backend_aware",
]

#: the functions an implementation provides besides ``METHODS`` (see
#: :class:`Implementation`)
ENTRY_POINTS = (
    "contract",
    "head_loss",
    "head_value_and_grad",
    "head_blocks",
    "head_hvp",
    "head_sqrt_ggn_sampled",
    "head_fisher",
    "linear_gradient",
    "linear_curvature",
)

#: functions an implementation may leave out: an entry point that meets a backend without
#: one keeps the numpy path's behaviour (its error), as before the backend had them
#: (``diagonal``: :func:`jacobians.diagonal`; ``head_operator``: ``Head.hessian_operator``
#: and ``Head.ggn_operator``)
OPTIONAL_ENTRY_POINTS = ("diagonal", "head_operator")


class Implementation(Protocol):
    """What a backend's loader returns; each function mirrors the numpy entry point of
    the same name and returns arrays of the backend's own type.

    ``METHODS`` maps the name of an activation's or a loss's row-wise method
    (``'__call__'``, ``'jacobian'``, ``'vjp'``, ``'jvp'``, ``'hessian'``,
    ``'hessian_vjp'``, ``'alpha_vjp'``; ``'loss.value'``, ``'loss.grad'``, ``'loss.value_and_grad'``,
    ``'loss.hessian'``, ``'loss.hvp'``) to ``f(obj, plain_method, *args, **kwargs)``,
    where ``plain_method`` is the numpy method (unbound), to run on pieces of the
    arrays. A name of an ``optional`` :func:`backend_aware` method (the activations'
    structured operators) may be missing: the numpy method runs then, as before.

    The functions of ``OPTIONAL_ENTRY_POINTS`` may be missing too:
    ``diagonal(J)`` and ``head_operator(head, name, z, y, method)`` (``name`` ``'hessian'``
    or ``'ggn'``).
    """

    METHODS: dict[str, Callable[..., Any]]

    def contract(self, g, J): ...
    def head_loss(self, head, z, y): ...
    def head_value_and_grad(self, head, z, y, method, *, max_bytes, workers, need): ...
    def head_blocks(self, head, name, z, y, *args, sizes=None): ...
    def head_hvp(self, head, z, y, v, method): ...
    def head_sqrt_ggn_sampled(self, head, z, mc_samples, seed, y=None): ...
    def head_fisher(self, head, z, y, kind, mc_samples, seed): ...
    def linear_gradient(self, features, head, z, y, bias): ...
    def linear_curvature(
        self,
        features,
        head,
        z,
        y,
        *,
        kind,
        structure,
        bias,
        max_bytes,
        mc_samples,
        seed,
    ): ...


class Backend:
    """A registered backend: its ``name``, ``detect(cls) -> bool`` and ``load()``.

    :attr:`implementation` calls ``load()`` the first time it is read.
    """

    __slots__ = ("name", "detect", "load", "_implementation")

    def __init__(
        self, name: str, detect: Callable[[type], bool], load: Callable[[], Any]
    ):
        self.name, self.detect, self.load = name, detect, load
        self._implementation = None

    @property
    def implementation(self) -> Implementation:
        if self._implementation is None:
            self._implementation = self.load()
        return self._implementation

    def __repr__(self) -> str:
        state = "loaded" if self._implementation is not None else "not loaded"
        return f"Backend({self.name!r}, {state})"


_REGISTRY: dict[str, Backend] = {}
#: name -> :class:`Backend`, in registration order (read-only: use
#: :func:`register_backend`)
BACKENDS = types.MappingProxyType(_REGISTRY)
#: type -> its backend (or None): the detectors' answers, cleared when the registry
#: changes
_BY_TYPE: dict[type, Backend | None] = {}


def register_backend(
    name: str,
    detect: Callable[[type], bool],
    load: Callable[[], Any],
    *,
    replace: bool = False,
) -> Backend:
    """Register a backend; ``replace=True`` to register a name again. Returns it."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a backend's name must be a non-empty str; got {name!r}")
    if not (callable(detect) and callable(load)):
        raise TypeError(
            "detect and load must be callables: detect(cls) -> bool, "
            "load() -> implementation"
        )
    if name in _REGISTRY and not replace:
        raise ValueError(
            f"backend {name!r} is already registered; pass replace=True to replace it"
        )
    backend = Backend(name, detect, load)
    _REGISTRY[name] = backend
    _BY_TYPE.clear()
    return backend


def unregister_backend(name: str) -> None:
    """Remove a registered backend."""
    if name not in _REGISTRY:
        raise KeyError(
            f"backend {name!r} is not registered; registered: {sorted(_REGISTRY)}"
        )
    del _REGISTRY[name]
    _BY_TYPE.clear()


def _classify(cls: type) -> Backend | None:
    """The first registered backend whose detector accepts ``cls`` (remembered)."""
    found = next((b for b in _REGISTRY.values() if b.detect(cls)), None)
    _BY_TYPE[cls] = found
    return found


def backend_of(*arrays) -> Implementation | None:
    """The implementation of the backend the arrays belong to, or None for numpy ones.

    Arguments of no backend (numpy arrays, scalars, None) go with any backend; arrays of
    two different backends in one call raise a ``TypeError`` naming both.
    """
    found = None
    for x in arrays:
        cls = type(x)
        b = _BY_TYPE[cls] if cls in _BY_TYPE else _classify(cls)
        if b is not None and b is not found:
            if found is not None:
                raise TypeError(
                    f"arrays of two backends in one call: {found.name} and {b.name} "
                    f"(a {cls.__module__}."
                    f"{cls.__qualname__}); convert them to one array library first"
                )
            found = b
    return None if found is None else found.implementation


def backend_aware(name: str, *, optional: bool = False):
    """Decorator for an activation's or a loss's row-wise method: with an array of a
    backend among the arguments, the call goes to its implementation's
    ``METHODS[name]`` (``optional``: to the method itself when the implementation has no
    such entry)."""

    def wrap(fn):
        if getattr(fn, "__backend_aware__", False):
            return fn

        @functools.wraps(fn)
        def method(self, *args, **kwargs):
            impl = backend_of(*args, *kwargs.values())
            if impl is None:
                return fn(self, *args, **kwargs)
            run = impl.METHODS.get(name) if optional else impl.METHODS[name]
            if run is None:
                return fn(self, *args, **kwargs)
            return run(self, fn, *args, **kwargs)

        method.__backend_aware__ = True
        return method

    return wrap
