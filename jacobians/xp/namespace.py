"""Which array API namespace a call's arrays belong to, and targets moved to it.

The generic path serves every namespace other than numpy's and Dask's. A call's namespace
comes from its arrays (:func:`namespace_of`, through ``array_api_compat.array_namespace``);
arrays of two namespaces in one call are a ``TypeError`` naming both. Targets are the one
exception: they may come as numpy (or a list) and are moved to the logits' namespace and
device by :func:`as_targets`.

:func:`is_generic_type` is the cheap detector meant for
:func:`jacobians.backend.register_backend`: it judges a *type* from its module name and
imports no array library.

Examples
--------
>>> import numpy as np
>>> from jacobians.xp.namespace import is_generic_type, namespace_of
>>> is_generic_type(np.ndarray), is_generic_type(float)
(False, False)
>>> namespace_of(np.zeros(3), None, 2.0).__name__
'array_api_compat.numpy'
"""

from __future__ import annotations

import numbers

import array_api_compat
import numpy as np

from .detect import GENERIC_ROOTS, is_generic_type

__all__ = ["GENERIC_ROOTS", "is_generic_type", "namespace_name", "namespace_of", "as_targets"]

def namespace_name(xp) -> str:
    """A namespace's short name for messages: ``'torch'``, ``'jax.numpy'``, ``'numpy'``,
    ``'array_api_strict'`` (``array_api_compat.``'s prefix dropped)."""
    name = getattr(xp, "__name__", repr(xp))
    return name[len("array_api_compat.") :] if name.startswith("array_api_compat.") else name


def _is_scalar(x) -> bool:
    return x is None or isinstance(x, (numbers.Number, np.generic))


def namespace_of(*arrays, targets=()):
    """The array API namespace of ``arrays``.

    ``None``, Python numbers and numpy scalars are skipped. Every array among ``arrays``
    must belong to one namespace. ``targets`` (a tuple) are arrays the caller accepts from
    the host as well: numpy arrays, lists and scalars there go with any namespace (move them
    with :func:`as_targets`), while a generic array there must be of the same namespace.

    Parameters
    ----------
    *arrays
        The call's arrays (any shape).
    targets : tuple, optional
        Arrays that may also be numpy.

    Returns
    -------
    namespace
        ``array_api_compat``'s wrapped namespace (``array_api_compat.torch``,
        ``array_api_compat.numpy``, ...) or the library's own (``jax.numpy``,
        ``array_api_strict``); numpy's when only numpy arrays (or only targets) came.

    Raises
    ------
    TypeError
        For arrays of two namespaces in one call (naming both), for a numpy array among
        generic ones outside ``targets``, or when no array came at all.
    """
    generic = {}  # name -> namespace, in order of appearance
    numpy_xp, numpy_outside_targets = None, False
    for group, host_ok in ((arrays, False), (tuple(targets), True)):
        for x in group:
            if _is_scalar(x) or (host_ok and isinstance(x, (list, tuple))):
                continue
            try:
                xp = array_api_compat.array_namespace(x)
            except TypeError as err:
                raise TypeError(
                    f"expected arrays of an array API namespace; got a {type(x).__module__}.{type(x).__qualname__}"
                ) from err
            name = namespace_name(xp)
            if name == "numpy":
                numpy_xp = xp
                numpy_outside_targets = numpy_outside_targets or not host_ok
            else:
                generic.setdefault(name, xp)
    names = list(generic)
    if len(names) > 1:
        raise TypeError(
            f"arrays of two namespaces in one call: {names[0]} and {names[1]}; convert them to one array library first"
        )
    if names and numpy_outside_targets:
        raise TypeError(
            f"arrays of two namespaces in one call: numpy and {names[0]}; only targets may come as numpy (they are "
            f"moved to the logits' device): convert the other arrays to {names[0]} first"
        )
    if names:
        return generic[names[0]]
    if numpy_xp is not None:
        return numpy_xp
    raise TypeError("no array among the arguments: cannot tell the array namespace")


def _int_dtype(xp, name: str, device):
    """xp's integer dtype called ``name`` where the namespace has it on ``device``, else its
    default indexing dtype."""
    info = xp.__array_namespace_info__()
    available = info.dtypes(device=device, kind="integral")
    return available[name] if name in available else info.default_dtypes(device=device)["indexing"]


def as_targets(y, like):
    """Targets ``y`` as an array of ``like``'s namespace, on ``like``'s device.

    Parameters
    ----------
    y : array_like
        Class indices ``(...,)`` or one-hot / soft targets ``(..., K)``: a numpy array, a
        list, or an array of ``like``'s namespace.
    like : array
        The logits (or activations) ``(..., K)`` whose namespace, device and dtype count.

    Returns
    -------
    array
        ``y`` in ``like``'s namespace on ``array_api_compat.device(like)``, shape unchanged.
        Integers stay integers (the same dtype where the namespace has it there, else its
        default indexing dtype: e.g. ``uint32`` on torch, ``int64`` on JAX without x64),
        booleans stay booleans, floating targets take ``like.dtype``.

    Raises
    ------
    TypeError
        When ``y`` is an array of another generic namespace (see :func:`namespace_of`), or
        of a complex or object dtype.
    ValueError
        When integer targets do not fit the integer dtype they become.
    """
    xp = namespace_of(like, targets=(y,))
    device = array_api_compat.device(like)
    if isinstance(y, (np.ndarray, np.generic, list, tuple, numbers.Number)):
        host = np.asarray(y)
        kind = host.dtype.kind
        if kind == "b":
            dtype = xp.bool
        elif kind in "iu":
            dtype = _int_dtype(xp, host.dtype.name, device)
            bits = xp.iinfo(dtype)
            if host.size and (host.min() < bits.min or host.max() > bits.max):
                raise ValueError(
                    f"integer targets y must fit {dtype} on this namespace: got values in "
                    f"[{host.min()}, {host.max()}]"
                )
        elif kind == "f":
            dtype = like.dtype
        else:
            raise TypeError(f"targets y must be integer, bool or floating; got dtype {host.dtype}")
        return xp.asarray(host, dtype=dtype, device=device)
    if xp.isdtype(y.dtype, "real floating") and y.dtype != like.dtype:
        y = xp.astype(y, like.dtype)
    elif not xp.isdtype(y.dtype, ("integral", "bool", "real floating")):
        raise TypeError(f"targets y must be integer, bool or floating; got dtype {y.dtype}")
    if array_api_compat.device(y) != device:
        y = array_api_compat.to_device(y, device)
    return y
