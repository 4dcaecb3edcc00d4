"""A final activation paired with a loss: dE/dz three ways, and which pairs make sense."""

from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np

from . import fisher, second_order
from .activations import ACTIVATIONS, Activation
from .backend import backend_of
from .contract import contract
from .losses import LOSSES, Loss
from .numerics.parallel import PARALLEL_MIN_BYTES, resolve_workers, run_in_row_blocks
from .numerics.validation import as_float_array
from .operators import DenseJacobian
from .rules import HESSIAN_RULES, get_rule
from .rules.vocabulary import FIRST_ORDER_METHODS, check_method

__all__ = ["Head", "METHODS", "DEFAULT_MAX_BYTES", "pairs", "check_pair", "Pair"]

#: the documented methods of the gradient (what each means: jacobians.rules.vocabulary.METHODS)
METHODS = FIRST_ORDER_METHODS

#: default memory budget of the dense Jacobian in ``method='jacobian'`` (256 MiB)
DEFAULT_MAX_BYTES = 256 << 20

#: ``method='jacobian'`` builds and contracts the Jacobian in blocks of at most this many
#: bytes per thread (within ``max_bytes``): a block is contracted while still in cache
JACOBIAN_BLOCK_BYTES = 8 << 20


def check_pair(activation, loss) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``loss`` accepts what ``activation`` outputs.

    A Fenchel–Young loss paired with its own mapping (``Sparsemax`` + ``SparsemaxLoss``)
    is accepted: the head then applies the loss to the logits (over the map's temperature).
    The loss may refuse an instance of its own mapping with other parameters
    (``Entmax(1.5)`` + ``EntmaxLoss(2.0)``: ``ValueError``).
    """
    for obj, base, what in ((activation, Activation, "activation"), (loss, Loss, "loss")):
        if isinstance(obj, type) and issubclass(obj, base):
            raise TypeError(f"{what} must be an instance; got the class {obj.__name__} (write {obj.__name__}())")
        if not isinstance(obj, base):
            raise TypeError(f"{what} must be a jacobians.{base.__name__} instance; got {type(obj).__name__}")
    if loss.logits_of is not None and isinstance(activation, loss.logits_of):
        mismatch = loss.own_mapping_mismatch(activation)
        if mismatch:
            raise ValueError(mismatch)
        return
    refusal = getattr(loss, "pair_mismatch", None)  # a loss that refuses an activation by its options
    if refusal is not None and (why := refusal(activation)):
        raise ValueError(why)
    out, need = activation.domain, loss.domain
    if out.issubset(need):
        return
    fits = [
        name
        for name, cls in ACTIVATIONS.items()
        if _default_instance(cls) is not None and _default_instance(cls).domain.issubset(need)
    ]
    hint = f"; activations whose output fits: {', '.join(fits)}" if fits else ""
    raise ValueError(
        f"{type(activation).__name__} outputs {out}, but {type(loss).__name__} needs {need}: the pair "
        f"makes no sense{hint}. (A custom activation declares its output with output_domain = '...'.)"
    )


def _default_instance(cls):
    try:
        return cls()
    except TypeError:
        return None


class Head:
    """A final activation and a loss: the loss value and dE/dz from the logits ``z``.

    Parameters
    ----------
    activation : Activation
    loss : Loss

    Notes
    -----
    ``method`` selects how dE/dz is computed, and all agree to round-off:

    * ``'jacobian'`` — build the N×K×K Jacobian (in row blocks within ``max_bytes``) and
      contract it with dE/da;
    * ``'vjp'`` — the activation's closed-form vector–Jacobian product;
    * ``'fused'`` — the pair's closed-form rule (its :class:`~jacobians.PairRule`);
    * ``'auto'`` — ``'fused'`` when the pair has a rule, else ``'vjp'``;
    * ``'chain'`` — the generic rule, ``'vjp'`` here (and the chain rule for the second
      order: the same names for :meth:`grad`, :meth:`hessian` and :meth:`hvp`, see
      ``jacobians.rules.vocabulary.METHODS``).

    :meth:`loss` uses the fused rule when there is one, so it is exact for extreme
    logits; ``value_and_grad(..., method='vjp'/'jacobian')`` returns the separate path's
    value, which for losses of probabilities uses ``max(a, tiny)`` where ``a`` underflowed.

    A Fenchel–Young loss with its own mapping (``Head(Sparsemax(), SparsemaxLoss())``) is
    a function of the logits, not of the mapping's output: only ``'fused'`` applies.

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> z = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    >>> y = np.array([0, 1])
    >>> head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    >>> head.method
    'fused'
    >>> g = head.grad(z, y)
    >>> np.allclose(g, head.grad(z, y, method="jacobian")), np.allclose(g, head.grad(z, y, method="vjp"))
    (True, True)
    """

    def __init__(self, activation: Activation, loss: Loss):
        check_pair(activation, loss)
        self.activation = activation
        self.loss_fn = loss

    @property
    def rule(self):
        """The pair's :class:`~jacobians.PairRule` (:func:`jacobians.get_rule`), or None."""
        return get_rule(self.activation, self.loss_fn)

    @property
    def fused_rule(self):
        """The registered fused rule of this pair (its rule's ``value_and_grad``), or None."""
        rule = get_rule(self.activation, self.loss_fn)
        return None if rule is None else rule.fused_function()

    @property
    def logits_loss(self) -> bool:
        """True for a Fenchel–Young loss paired with its own mapping (loss of the logits)."""
        lo = self.loss_fn.logits_of
        return lo is not None and isinstance(self.activation, lo)

    @property
    def method(self) -> str:
        """What ``method='auto'`` picks: ``'fused'`` when the pair has a rule, else ``'vjp'``."""
        return "fused" if self.fused_rule is not None else "vjp"

    def _resolve(self, method) -> str:
        method = check_method(method, 1)
        if method == "chain":  # the generic rule of the first order
            method = "vjp"
        if method == "auto":
            return self.method
        if method == "fused" and self.fused_rule is None:
            raise ValueError(
                f"no fused rule is registered for ({type(self.activation).__name__}, "
                f"{type(self.loss_fn).__name__}); use method='vjp' or 'jacobian', or register one "
                "with jacobians.register_fused"
            )
        if method != "fused" and self.logits_loss:
            raise ValueError(
                f"{type(self.loss_fn).__name__} is a Fenchel–Young loss of the logits: it cannot be written "
                f"as a function of {type(self.activation).__name__}'s output, so method={method!r} does not "
                "apply; use method='fused', or Head(Identity(), "
                f"{type(self.loss_fn).__name__}()) to run every method"
            )
        return method

    def loss(self, z, y):
        """The loss value from logits ``z`` (..., K): the fused rule's when there is one."""
        if (backend := backend_of(z, y)) is not None:
            return backend.head_loss(self, z, y)
        z = as_float_array(z, "z")
        rule = self.fused_rule
        if rule is not None:
            return rule(self.activation, self.loss_fn, z, y)[0]
        return self.loss_fn.value(self.activation(z), y)

    def grad(self, z, y, method: str = "auto", *, max_bytes: int | None = None, workers: int | None = None):
        """dE/dz, shape of ``z``. See :meth:`value_and_grad`."""
        return self._value_and_grad(z, y, method, max_bytes, workers, need="grad")[1]

    def value_and_grad(self, z, y, method: str = "auto", *, max_bytes: int | None = None, workers: int | None = None):
        """``(loss value, dE/dz)`` from logits ``z`` (..., K), sharing the forward pass.

        Parameters
        ----------
        z : array_like, shape (..., K)
        y : array_like
            Targets in the loss's form.
        method : {'auto', 'fused', 'vjp', 'jacobian', 'chain'}
            See the class's notes (``'chain'`` is ``'vjp'`` here).
        max_bytes : int, optional
            ``'jacobian'`` only: memory budget of the dense Jacobian, built and contracted
            in row blocks so that peak memory stays near ``max_bytes`` plus O(N·K).
            Default :data:`~jacobians.head.DEFAULT_MAX_BYTES` (256 MiB).
        workers : int, optional
            ``'jacobian'`` only: threads building each block (default: all cores).
        """
        return self._value_and_grad(z, y, method, max_bytes, workers, need="both")

    def _value_and_grad(self, z, y, method, max_bytes, workers, need):
        # need ('both', 'grad'): what the caller uses, so that the Dask path computes only that
        method = self._resolve(method)
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 1):
            raise ValueError(f"max_bytes must be a positive int; got {max_bytes!r}")
        if (backend := backend_of(z, y)) is not None:
            return backend.head_value_and_grad(self, z, y, method, max_bytes=max_bytes, workers=workers,
                                               need=need)
        z = as_float_array(z, "z")
        if method == "fused":
            return self.fused_rule(self.activation, self.loss_fn, z, y)
        a = self.activation(z)
        value, g = self.loss_fn.value_and_grad(a, y)
        if method == "vjp":
            return value, self.activation.vjp_from_output(z, a, g)
        return value, self._jacobian_product(z, a, g, max_bytes or DEFAULT_MAX_BYTES, workers)

    def _jacobian_product(self, z, a, g, max_bytes, workers):
        # Each thread takes blocks of rows in turn: build the block's dense Jacobian in
        # its own buffer, contract it while it is still in cache, write the block's rows
        # of dE/dz. The blocks are at most JACOBIAN_BLOCK_BYTES (cache sized: faster than
        # one big block) and all buffers together stay within max_bytes.
        K = z.shape[-1]
        z2, a2, g2 = (x.reshape(-1, K) for x in (z, a, g))
        n = z2.shape[0]
        row_bytes = K * K * z.dtype.itemsize
        n_workers = max(1, min(resolve_workers(workers), n))
        if n * row_bytes < PARALLEL_MIN_BYTES:
            n_workers = 1
        rows = max(1, min(int(max_bytes) // n_workers, JACOBIAN_BLOCK_BYTES) // row_bytes)
        out = np.empty(g2.shape, dtype=np.result_type(g2.dtype, z.dtype))
        act = self.activation

        scratch = threading.local()  # one block buffer per thread, for this call only

        def work(span: slice) -> None:
            for start in range(span.start, span.stop, rows):
                sl = slice(start, min(span.stop, start + rows))
                op = act.jacobian_operator_from_output(z2[sl], a2[sl])
                if isinstance(op, DenseJacobian):
                    J = op.J
                else:
                    buf = getattr(scratch, "buf", None)
                    if buf is None:
                        buf = scratch.buf = np.empty((min(rows, n), K, K), dtype=op.dtype)
                    J = op.dense(out=buf[: sl.stop - sl.start], workers=1)
                if J.dtype == g2.dtype:
                    # the block is still in cache: numpy's einsum reads it on this thread
                    # (BLAS would start threads of its own beside the workers)
                    np.einsum("ij,ijk->ik", g2[sl], J, out=out[sl])
                else:
                    out[sl] = contract(g2[sl], J)

        run_in_row_blocks(work, n, n * row_bytes, n_workers, chunk_rows=rows)
        return out.reshape(z.shape)

    # -- second order ------------------------------------------------------------------
    @property
    def hessian_rule(self):
        """The pair's closed-form second order, as a :class:`~jacobians.curvature.HessianRule`
        read from its :class:`~jacobians.PairRule`, or None."""
        return HESSIAN_RULES.get((type(self.activation), type(self.loss_fn)))

    @property
    def ggn_is_hessian(self) -> bool:
        """True for a canonical pair (softmax + CE, log-softmax + NLL, softmax + KL, sigmoid +
        BCE, identity + MSE, a Fenchel–Young loss with its own map, a user's pair registered
        with ``canonical=True``): convex in z, its GGN is its Hessian."""
        rule = get_rule(self.activation, self.loss_fn)
        applies = getattr(rule, "canonical_for", None)  # a rule whose canonicity depends on the options
        return rule is not None and rule.canonical and (applies is None or applies(self.activation, self.loss_fn))

    def hessian_operator(self, z, y, method: str = "auto"):
        """The Hessian blocks as a :class:`~jacobians.JacobianOperator` (diagonal, or diagonal
        minus low rank for every built-in pair: O(N·K) memory); see :meth:`hessian`."""
        if (backend := backend_of(z, y)) is not None:
            if getattr(backend, "head_operator", None) is None:
                raise TypeError("hessian_operator holds numpy arrays: for dask logits use hessian, hvp, ggn or sqrt_ggn")
            second_order.resolve(self, method)
            return backend.head_operator(self, "hessian", z, y, method)  # torch, JAX ...: an ArrayOperator
        return second_order.hessian_operator(self, z, y, method)

    def hessian(self, z, y, method: str = "auto") -> np.ndarray:
        """Blocks ``∂²E/∂z_n∂z_n`` of the reduced loss ``E = head.loss(z, y)``, shape ``(..., K, K)``.

        Rows do not interact, so the Hessian of E is block diagonal; block n carries the
        reduction's factor (1/N for ``'mean'``, 1/(N·K) for an elementwise loss, the class
        weights' normalisation, zero for ignored rows), so ``Σ_n v_nᵀ H_n v_n`` is the exact
        second-order term of E along v. With ``'none'``, block n is the Hessian of row n's
        own loss.

        Parameters
        ----------
        z : array_like, shape (..., K)
        y : array_like
            Targets in the loss's form.
        method : {'auto', 'fused', 'chain'}
            ``'fused'``: the pair's closed form (softmax + CE: ``Σc (diag(p) − p pᵀ)/T²``;
            sigmoid + BCE: ``diag(σσ̄(1 − y + p y))``; identity + MSE: ``2I``; a
            Fenchel–Young loss: its map's Jacobian); ``'chain'``: any pair,
            ``Jᵀ H_E J + Σ_i (∂E/∂a_i) ∇²a_i``; ``'auto'``: fused where the pair has a rule.
            A pair rule (:class:`~jacobians.PairRule`) without a closed-form Hessian falls
            back to ``'chain'``.

        Examples
        --------
        >>> import numpy as np
        >>> import jacobians as jac
        >>> head = jac.Head(jac.Softmax(), jac.CrossEntropy())
        >>> z, y = np.array([[0.0, 0.0]]), np.array([0])
        >>> head.hessian(z, y)                              # diag(p) − p pᵀ with p = (½, ½)
        array([[[ 0.25, -0.25],
                [-0.25,  0.25]]])
        >>> np.allclose(head.hessian(z, y, method="chain"), head.hessian(z, y))
        True
        """
        if (backend := backend_of(z, y)) is not None:
            second_order.resolve(self, method)
            return backend.head_blocks(self, "hessian", z, y, method, sizes="K")
        return self.hessian_operator(z, y, method).dense()

    def hvp(self, z, y, v, method: str = "auto") -> np.ndarray:
        """``H_n v_n`` per row, shape ``(..., K)``: O(N·K) for the structured pairs."""
        if (backend := backend_of(z, y, v)) is not None:
            second_order.resolve(self, method)
            return backend.head_hvp(self, z, y, v, method)
        return second_order.hvp(self, z, y, v, method)

    def ggn_operator(self, z, y):
        """The GGN blocks as a :class:`~jacobians.JacobianOperator`; see :meth:`ggn`."""
        if (backend := backend_of(z, y)) is not None:
            if getattr(backend, "head_operator", None) is None:
                raise TypeError("ggn_operator holds numpy arrays: for dask logits use ggn, hvp or sqrt_ggn")
            return backend.head_operator(self, "ggn", z, y)  # torch, JAX ...: an ArrayOperator
        return second_order.ggn_operator(self, z, y)

    def ggn(self, z, y) -> np.ndarray:
        """Generalized Gauss–Newton blocks, shape ``(..., K, K)``.

        For a canonical pair (:attr:`ggn_is_hessian`) the Hessian; for any other pair
        ``Jᵀ H_E J``, split at the activation's output (positive semi-definite when the
        loss is convex in ``a``). It differs from the Hessian by ``Σ_i (∂E/∂a_i) ∇²a_i``,
        and the Hessian may be indefinite (softmax + MSE, tanh + BCE, ...). (Splitting
        softmax + CE at the probabilities would give ``(e_y − p)(e_y − p)ᵀ/N``: the
        empirical Fisher, not this GGN.)

        Examples
        --------
        >>> import numpy as np
        >>> import jacobians as jac
        >>> head = jac.Head(jac.Softmax(), jac.MeanSquaredError())
        >>> z, y = np.array([[2.0, -1.0, 0.5]]), np.array([[0.0, 1.0, 0.0]])
        >>> bool(np.linalg.eigvalsh(head.ggn(z, y)).min() >= -1e-15)      # PSD
        True
        >>> bool(np.linalg.eigvalsh(head.hessian(z, y)).min() < 0)        # the Hessian is not
        True
        """
        if (backend := backend_of(z, y)) is not None:
            return backend.head_blocks(self, "ggn", z, y, sizes="K")
        return self.ggn_operator(z, y).dense()

    def sqrt_ggn(self, z, y) -> np.ndarray:
        """A factor ``S`` of the GGN blocks, shape ``(..., K, C)``, with ``S @ Sᵀ == ggn``.

        Per-sample layout: column c of row n is ``S[n, :, c]``; BackPACK's ``[C, N, K]`` is
        ``np.moveaxis(S, -1, 0)``. The entmax family (softmax + CE, sparsemax, 1.5-entmax)
        has ``S = √c (diag(√d) − d √dᵀ/Σd)``, exact for any ``Σd`` (``√p`` as
        ``exp(½ log p)``); sigmoid + BCE ``diag(√c e^{−|z|/2}/(1 + e^{−|z|}))``; other pairs
        ``Jᵀ S_E`` with ``S_E`` the loss Hessian's own factor.
        """
        if (backend := backend_of(z, y)) is not None:
            return backend.head_blocks(self, "sqrt_ggn", z, y, sizes="K")
        return second_order.sqrt_ggn(self, z, y)

    def sqrt_ggn_sampled(self, z, mc_samples: int = 1, seed=None, *, y=None) -> np.ndarray:
        """Monte-Carlo factor ``(..., K, M)`` with ``E[S Sᵀ]`` the exact Fisher.

        Column m of row n is ``√(c_n/M) ∇_z ℓ_n(ŷ_m)`` with ``ŷ_m`` drawn from the model's
        own predictive distribution (:attr:`~jacobians.Loss.predictive`: categorical for
        CE/NLL/KL, an independent Bernoulli per output for BCE — multi-label included —,
        Gaussian of variance ½ for MSE, whatever activation is in front) and the loss's
        options applied to the sampled target. ``c_n`` is the row's factor of ``E``: with
        targets ``y`` as in the Hessian (class-weight normalisation, ignored rows zero),
        without them ``1/N`` (``1/(N·K)`` elementwise) for ``'mean'``.

        Parameters
        ----------
        z : array_like, shape (..., K)
        mc_samples : int, >= 1
        seed : int, numpy.random.Generator or None
            The draws are a function of (seed, row, sample) only: the same seed gives the
            same columns for the same rows however the batch is split.
        y : array_like, optional
        """
        if (backend := backend_of(z, y)) is not None:
            return backend.head_sqrt_ggn_sampled(self, z, mc_samples, seed, y=y)
        return fisher.sqrt_ggn_sampled(self, z, mc_samples, seed, y=y)

    def sqrt_fisher(self, z, y=None) -> np.ndarray:
        """A factor ``S`` (..., K, C) of the exact Fisher blocks: ``S Sᵀ == fisher(z, y, 'exact')``.

        The exact Fisher's operator in z (the pair's closed form, else ``Jᵀ F_a J``, with the
        row factors ``c_n``) factored by its own square root (closed form for diagonal and
        simplex blocks, else a symmetric eigendecomposition).
        For a canonical pair without options it equals :meth:`sqrt_ggn`; where the GGN is no
        Fisher (Gaussian NLL with a learned variance: its GGN is indefinite) it is the factor
        Laplace needs. ``y`` only sets the reduction's factor, as for :meth:`fisher`.
        """
        if (backend := backend_of(z, y)) is not None:
            return backend.head_blocks(self, "sqrt_fisher", z, y, sizes="K")
        return fisher.sqrt_fisher(self, z, y)

    def fisher(self, z, y=None, kind: str = "exact", *, mc_samples: int = 1, seed=None) -> np.ndarray:
        """Fisher blocks, shape ``(..., K, K)``, on the scale of the Hessian.

        ``kind='exact'`` (type-2): ``c_n E_ŷ[∇ℓ_n(ŷ) ∇ℓ_n(ŷ)ᵀ]`` over the model's own
        predictive distribution, in closed form; ``'mc'``: the same from ``mc_samples``
        draws (``S Sᵀ`` of :meth:`sqrt_ggn_sampled`); ``'empirical'``: ``c_n ∇ℓ_n ∇ℓ_nᵀ`` at
        the true targets ``y`` (required). ``c_n`` is the row's factor of
        ``E = Σ_n c_n ℓ_n`` (1/N for a class loss's ``'mean'``, 1/(N·K) for an elementwise
        loss's, the class-weight normalisation when ``y`` is given), so for CE ``'mean'`` the
        empirical blocks sum to ``(1/N) Σ ∇ℓ_n ∇ℓ_nᵀ``.

        How the options enter: ``ℓ_n(ŷ)`` is the loss as configured, so class weights scale
        each sampled class's gradient by its weight, label smoothing mixes the sampled
        target with the uniform (CE) or with ½ (BCE), and ``pos_weight`` weighs a sampled
        positive. The exact Fisher is the Hessian for the plain canonical pairs (no weights,
        smoothing or ``pos_weight``); with them it differs (e.g. CE with smoothing ε:
        ``(1 − ε)²(diag p − p pᵀ) + ε²(p − 1/K)(p − 1/K)ᵀ``). A loss that is no negative
        log-likelihood (MAE, Huber, the Fenchel–Young losses) has no ``'exact'`` or
        ``'mc'`` Fisher: a ValueError says so. ``kind`` also takes the names of
        :func:`~jacobians.linear_curvature` (``'fisher'``, ``'fisher_mc'``,
        ``'empirical_fisher'``): one vocabulary, ``jacobians.rules.vocabulary.KINDS``.
        """
        if (backend := backend_of(z, y)) is not None:
            return backend.head_fisher(self, z, y, kind, mc_samples, seed)
        return fisher.fisher_operator(self, z, y, kind, mc_samples=mc_samples, seed=seed).dense()

    def __repr__(self) -> str:
        return f"Head({self.activation!r}, {self.loss_fn!r})"



class Pair(NamedTuple):
    """One valid (activation, loss) pair of the registries."""

    activation: str
    loss: str
    fused: bool


def pairs() -> list[Pair]:
    """Every valid (activation, loss) pair of the registries, with whether it has a fused rule.

    Classes are taken with their default parameters; classes that need arguments are
    left out.

    Examples
    --------
    >>> import jacobians as jac
    >>> ("softmax", "cross_entropy", True) in jac.pairs()
    True
    >>> any(p.activation == "tanh" and p.loss == "cross_entropy" for p in jac.pairs())
    False
    """
    out = []
    for aname, acls in ACTIVATIONS.items():
        act = _default_instance(acls)
        if act is None:
            continue
        for lname, lcls in LOSSES.items():
            loss = _default_instance(lcls)
            if loss is None:
                continue
            try:
                check_pair(act, loss)
            except ValueError:
                continue
            rule = get_rule(act, loss)
            out.append(Pair(aname, lname, rule is not None and rule.value_and_grad is not None))
    return out
