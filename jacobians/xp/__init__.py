"""The generic path's foundation: array API namespaces other than numpy's (and Dask's).

PyTorch, JAX, CuPy and array-api-strict arrays are served through the array API standard.
This subpackage holds what every generic formula stands on:

* :mod:`.namespace` — which namespace a call's arrays belong to (:func:`namespace_of`), a
  cheap type detector for :func:`jacobians.backend.register_backend`
  (:func:`is_generic_type`), and targets moved to the logits' namespace and device
  (:func:`as_targets`);
* :mod:`.shims` — one small, stable function per gap in the standard (``logsumexp``,
  ``expit``, ``log_sigmoid``, ``softplus``, ``log1mexp``, ``take_along_axis``,
  ``put_along_axis``), none writing in place;
* :mod:`.random` — the package's counter-based uniforms (SplitMix64 of a Weyl sequence,
  :mod:`jacobians.numerics.sampling`) with 32-bit integer ops only, bitwise the same on
  every namespace.

It sits on the bottom layer (it imports only :mod:`jacobians.numerics`) and needs the
``arrays`` extra (``array-api-compat``, ``array-api-extra``). ``import jacobians`` does not
import it; it imports no array library itself: the namespaces come from the arrays passed.
This ``__init__`` re-exports nothing, so importing one module does not import the others.
"""
