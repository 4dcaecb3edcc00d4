"""A head's Fisher blocks (exact, Monte-Carlo, empirical) and its per-row blocks of any kind.

Fisher kinds, each carrying the row's factor ``c_n`` of ``E = Σ_n c_n ℓ_n`` (so all are on
the scale of the Hessian):

* ``'exact'`` (type-2): ``c_n E_ŷ[∇ℓ_n(ŷ) ∇ℓ_n(ŷ)ᵀ]`` with ``ŷ`` drawn from the model's own
  predictive distribution (:attr:`~jacobians.Loss.predictive`), in closed form (the pair
  rule's ``fisher``, else the generic rule's ``Jᵀ F_a J``);
* ``'mc'``: the same expectation from ``mc_samples`` draws (:func:`sqrt_ggn_sampled`);
* ``'empirical'``: ``c_n ∇ℓ_n ∇ℓ_nᵀ`` at the true targets.

The per-sample loss ``ℓ_n(ŷ)`` is the loss as configured — class weights, label smoothing
and ``pos_weight`` apply to the sampled target exactly as to a real one.
"""

from __future__ import annotations

import numpy as np

from .numerics.sampling import MC_BLOCK_ENTRIES, check_mc_samples, predictive_of, seed_key, uniforms_for_rows
from .numerics.validation import as_float_array
from .operators import DenseJacobian, JacobianOperator
from .rules import GENERIC, get_rule
from .rules.vocabulary import BLOCK_KINDS, FISHER_KINDS, check_kind
from .second_order import ggn_operator, hessian_operator

__all__ = [
    "row_factor",
    "fisher_operator",
    "row_gradients",
    "sqrt_ggn_sampled",
    "reduction_factor",
    "check_kind_applies",
    "blocks_for_rows",
    "sample_targets",
    "sqrt_fisher",
]


def row_factor(loss, x: np.ndarray, y):
    """``(c, valid)``: the factor ``c_n`` of ``E = Σ c_n ℓ_n`` (one scalar for every row,
    :meth:`~jacobians.Loss.reduction_scale`) and the rows that count (a bool mask, or None
    for all). Without targets ``'mean'`` divides by the number of rows (of entries, for an
    elementwise loss)."""
    t = None if y is None else loss.check_targets(x, y)
    valid = getattr(t, "valid", None)  # class targets' mask of the rows not ignored
    return loss.reduction_scale(x, t), valid


def _masked(op: JacobianOperator, c, valid) -> JacobianOperator:
    if valid is None:
        return op if c == 1 else op.scaled(c)
    return op.scaled(c * valid.astype(op.dtype))


def _loss_input(head, z):
    return z if head.logits_loss else head.activation(z)


def fisher_operator(head, z, y=None, kind: str = "exact", *, mc_samples: int = 1, seed=None) -> JacobianOperator:
    """The Fisher blocks of ``kind``; see :meth:`jacobians.Head.fisher`."""
    meaning = check_kind(kind, FISHER_KINDS)
    z = as_float_array(z, "z")
    loss = head.loss_fn
    if meaning == "empirical_fisher":
        if y is None:
            raise ValueError(f"kind={kind!r} needs the true targets y: it is built from the gradients at them")
        g = row_gradients(head, z, y)
        c, _ = row_factor(loss, _loss_input(head, z), y)
        return DenseJacobian(np.einsum("...i,...j->...ij", g, g) * c)
    if meaning == "fisher_mc":
        S = sqrt_ggn_sampled(head, z, mc_samples=mc_samples, seed=seed, y=y)
        return DenseJacobian(S @ np.swapaxes(S, -1, -2))
    predictive_of(loss)
    c, valid = row_factor(loss, _loss_input(head, z), y)
    rule = get_rule(head.activation, loss)
    source = rule if rule is not None and rule.fisher is not None else GENERIC
    return _masked(source.fisher(head.activation, loss, z, y), c, valid)


def sqrt_fisher(head, z, y=None) -> np.ndarray:
    """``S`` (..., K, C) with ``S Sᵀ`` the exact Fisher blocks; see :meth:`jacobians.Head.sqrt_fisher`.

    One mechanism for every head with an exact Fisher: the exact Fisher's operator in z (the
    pair rule's closed form, else ``Jᵀ F_a J``, with the row factors ``c_n`` inside) factored
    by its own square root — in closed form for the structured blocks (diagonal, simplex),
    by a symmetric eigendecomposition otherwise. Factoring in z, not ``Jᵀ`` times a factor
    of ``F_a``, keeps the digits where ``F_a`` is huge on outputs the Jacobian annihilates
    (a sparse map's zeros under BCE)."""
    return fisher_operator(head, z, y, "exact").sqrt()


def row_gradients(head, z, y, *, sampled: bool = False) -> np.ndarray:
    """∇_z of each row's own loss (the reduction 'none'), shape of z.

    ``sampled``: ``y`` was drawn from the predictive distribution. ``ignore_index`` selects
    rows by their *true* target (the mask of :func:`row_factor`); a drawn class equal to it
    is a class like any other, as in the exact Fisher, so the per-row loss here goes without
    it."""
    loss = head.loss_fn.with_reduction("none")
    if sampled and getattr(loss, "ignore_index", None) is not None:
        loss.ignore_index = None  # a copy: the head's own loss keeps it
    return type(head)(head.activation, loss).grad(z, y)


def sample_targets(loss, a: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Targets drawn from ``loss``'s predictive distribution at ``a`` from uniforms ``u``:
    :meth:`jacobians.Loss.sample_targets`."""
    return loss.sample_targets(a, u)


def sqrt_ggn_sampled(head, z, mc_samples: int = 1, seed=None, *, y=None, row_start: int = 0,
                     row_ids=None) -> np.ndarray:
    """Monte-Carlo columns ``(..., K, M)``: ``√(c_n/M) ∇_z ℓ_n(ŷ_m)`` with ``ŷ_m`` drawn from the
    model's predictive distribution; ``E[S Sᵀ]`` is the exact Fisher.

    The draws of row n are a function of (seed, its global index, m): ``row_ids`` (the
    global flat indices of z's rows) or ``row_start + arange(N)``."""
    check_mc_samples(mc_samples)
    z = as_float_array(z, "z")
    loss = head.loss_fn
    predictive_of(loss)
    key = seed_key(seed)
    a = head.activation(z)
    c, valid = row_factor(loss, z if head.logits_loss else a, y)
    K = z.shape[-1]
    n = int(np.prod(z.shape[:-1]))
    M = int(mc_samples)
    per = loss.predictive_uniforms(K)
    z2, a2 = z.reshape(n, K), a.reshape(n, K)
    ids = np.arange(row_start, row_start + n) if row_ids is None else np.asarray(row_ids).reshape(-1)
    if ids.size != n:
        raise ValueError(f"row_ids must hold one index per row of z, {n}; got {ids.size}")
    # a predictive that reads the targets (a ranking's R) draws row r's samples with y's row r
    yr = None
    if y is not None and getattr(loss, "predictive_needs_targets", False):
        yr = np.asarray(loss.check_targets(a, y)).reshape(n, -1)
    S = np.empty((n, K, M), dtype=z.dtype)
    step = max(1, MC_BLOCK_ENTRIES // (M * K))
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        m = rows.stop - rows.start
        # row r's draws for all M samples, one block: the same numbers however rows are split
        u = uniforms_for_rows(key, ids[rows], M * per).reshape(m * M, per)
        zr = np.broadcast_to(z2[rows, None, :], (m, M, K)).reshape(m * M, K)
        ar = np.broadcast_to(a2[rows, None, :], (m, M, K)).reshape(m * M, K)
        if yr is None:
            drawn = loss.sample_targets(ar, u)
        else:
            drawn = loss.sample_targets(ar, u, np.repeat(yr[rows], M, axis=0))
        grads = row_gradients(head, zr, drawn, sampled=True)
        S[rows] = np.swapaxes(grads.reshape(m, M, K), -1, -2)
    S = S.reshape(z.shape + (M,))
    w = np.sqrt(c / z.dtype.type(mc_samples))
    if valid is not None:
        return S * (w * valid.astype(z.dtype))[..., None, None]
    return S * w


# -- row blocks (the last layer and Dask take the blocks a slice of rows at a time) ----------------


def reduction_factor(head, z, y) -> float:
    """``c`` with the reduced loss's blocks = ``c`` × the blocks of the ``'sum'`` loss, for the
    whole batch ``z`` (and targets ``y``, or None): :meth:`~jacobians.Loss.reduction_scale`
    in float64 (1/denominator for ``'mean'``, else 1; a loss made by
    :meth:`~jacobians.Loss.with_denominator` keeps its own denominator)."""
    z = as_float_array(z, "z")
    # the denominator reads the shape of the loss's input (z's) and the targets
    return float(head.loss_fn.reduction_scale(z, y, dtype=np.float64))  # 0 for a denominator of 0


def check_kind_applies(head, kind: str) -> str:
    """The meaning of ``kind`` (:data:`~jacobians.rules.vocabulary.KINDS`) for this head's
    row blocks; ``ValueError`` for an unknown name or a Fisher of a loss with no predictive."""
    meaning = check_kind(kind, BLOCK_KINDS)
    if meaning in ("fisher", "fisher_mc"):
        predictive_of(head.loss_fn)
    return meaning


def blocks_for_rows(head, kind: str, z, y, *, key: int = 0, mc_samples: int = 1, row_start: int = 0, row_ids=None):
    """The per-sample blocks of ``kind`` for some rows, for a head whose loss has reduction
    ``'sum'`` or ``'none'`` (each row's own blocks: multiply by :func:`reduction_factor` of
    the whole batch for ``'mean'``).

    Returns a :class:`~jacobians.JacobianOperator` (``'hessian'``, ``'ggn'``, ``'fisher'``)
    or a factor ``S`` (n, K, C) whose blocks are ``S Sᵀ`` (``'fisher_mc'``: M sampled
    columns drawn for global rows ``row_start ...`` from ``key``; ``'empirical_fisher'``:
    the rows' own gradients, C = 1).
    """
    meaning = check_kind(kind, BLOCK_KINDS)
    if meaning == "hessian":
        return hessian_operator(head, z, y)
    if meaning == "ggn":
        return ggn_operator(head, z, y)
    if meaning == "fisher":
        return fisher_operator(head, z, y, "exact")
    if meaning == "fisher_mc":
        S = sqrt_ggn_sampled(head, z, mc_samples, key, y=y, row_start=row_start, row_ids=row_ids)
        return S.reshape(-1, *S.shape[-2:])
    g = row_gradients(head, as_float_array(z, "z"), y)
    return g.reshape(-1, g.shape[-1])[..., None]
