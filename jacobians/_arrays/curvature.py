"""A head's factors and Fisher blocks on generic arrays: ``sqrt_ggn``, ``fisher`` of every
kind, ``sqrt_ggn_sampled``, and the per-row blocks the last layer sums (:func:`row_blocks`).

The twins of :func:`jacobians.second_order.sqrt_ggn` and :mod:`jacobians.fisher`, with the
classes' generic methods:

* ``sqrt_ggn``: a canonical pair's rule ``xp_sqrt_hessian`` (the softmax family's
  ``√w (diag(√p) − p √pᵀ)``, sigmoid + BCE's and identity + MSE's diagonals: the same
  factor as numpy's), else the Hessian's eigendecomposition (numpy's dense ``.sqrt()``);
  any other pair ``Jᵀ S_a`` (:meth:`~jacobians.rules.ChainRule.xp_sqrt_ggn`) with ``S_a`` the
  loss Hessian's own factor (``xp_sqrt_hessian``: ``diag(√h)`` for a diagonal Hessian);
* the exact Fisher: the rule's ``xp_fisher`` or ``Jᵀ F_a J`` (``xp_fisher_blocks``), times
  the row factor ``c_n`` and zero for ignored rows (numpy's ``row_factor``);
* Monte Carlo: numpy's uniforms bit for bit (:func:`jacobians.xp.random.uniforms_for_rows`)
  turned into targets by the loss's ``xp_sample_targets`` (numpy's arithmetic), then the
  rows' own gradients at them;
* empirical: ``c_n ∇ℓ_n ∇ℓ_nᵀ`` from the rows' own gradients at the true targets.

Value checks (a negative eigenvalue, a negative diagonal) run on concrete arrays only: under
``jax.jit`` they are skipped (see :func:`jacobians.losses.generic.concrete`).
"""

from __future__ import annotations

import math

import numpy as np

from ..losses.generic import xp_eigen_sqrt
from ..numerics.sampling import MC_BLOCK_ENTRIES, check_mc_samples, predictive_of, seed_key
from ..rules import GENERIC
from ..rules.vocabulary import FISHER_KINDS, check_kind
from ..second_order import require_chain
from ..xp.blocks import device_of
from ..xp.random import float64_available, uniforms_for_rows
from . import heads
from .heads import _generic_part, _hessian, _inputs, _plain
from .inputs import namespace_of, targets_like, unsupported

__all__ = ["head_blocks", "sqrt_ggn", "head_sqrt_ggn_sampled", "head_fisher", "row_blocks"]


def head_blocks(head, name, z, y, *args, sizes=None):
    """:func:`.heads.head_blocks` (Hessian, GGN), the GGN's factor ``'sqrt_ggn'`` and the
    exact Fisher's ``'sqrt_fisher'`` (its dense blocks' eigendecomposition, as numpy's dense
    ``.sqrt()``)."""
    if name == "sqrt_fisher":
        F = head_fisher(head, z, y, "exact", 1, None)
        return xp_eigen_sqrt(namespace_of(F), F)
    if name == "sqrt_ggn":
        xp, z, y = _inputs(head, z, y)
        return sqrt_ggn(xp, head, z, y)
    return heads.head_blocks(head, name, z, y, *args, sizes=sizes)


def sqrt_ggn(xp, head, z, y):
    """``S`` (..., K, C) with ``S Sᵀ`` the GGN blocks, for checked ``z`` and ``y`` of ``xp``."""
    if head.logits_loss:  # a Fenchel–Young head: the loss's own factor (numpy's SimplexBlock.sqrt)
        return heads._logits_curvature(xp, head, z, y, factor=True)
    if head.ggn_is_hessian:
        closed = _generic_part(head.rule, "sqrt_hessian")
        if closed is not None:
            return closed(xp, head.activation, head.loss_fn, z, y)
        return xp_eigen_sqrt(xp, _hessian(xp, head, z, y, "fused"))
    require_chain(head, "sqrt_ggn")
    return GENERIC.xp_sqrt_ggn(xp, head.activation, head.loss_fn, z, y)


# -- the pieces every kind shares ----------------------------------------------------------------


def _loss_input(xp, head, z):
    return z if head.logits_loss else head.activation.xp_forward(xp, z)


def _row_factor(xp, loss, x, y):
    """``(c, valid)`` as :func:`jacobians.fisher.row_factor`: ``c`` a 0-d array of x's dtype,
    ``valid`` the rows not ignored (a bool array) or None for all."""
    t = None if y is None else loss.xp_check_targets(xp, x, y)
    return loss.xp_reduction_scale(xp, x, t), getattr(t, "valid", None)


def _with_factor(xp, B, c, valid):
    """Blocks or factors ``B`` (..., K, C) times ``c`` (and zero for rows not ``valid``)."""
    if valid is None:
        return B * c
    return B * (c * xp.astype(valid, B.dtype))[..., None, None]


def _row_gradients(xp, head, z, y, *, sampled: bool = False):
    """∇_z of each row's own loss (the reduction 'none'), shape of z: the twin of
    :func:`jacobians.fisher.row_gradients` (a drawn class equal to ``ignore_index`` is a class
    like any other: ``sampled`` drops it)."""
    loss = head.loss_fn.with_reduction("none")
    if sampled and getattr(loss, "ignore_index", None) is not None:
        loss.ignore_index = None  # a copy: the head's own loss keeps it
    own = type(head)(head.activation, loss)
    return heads.head_value_and_grad(own, z, y, "fused", max_bytes=None, workers=None, need="grad")[1]


def _exact_fisher(xp, head, z, y):
    """``c_n E_ŷ[∇ℓ_n ∇ℓ_nᵀ]`` in closed form: the rule's ``xp_fisher`` where it writes the
    Fisher, else ``Jᵀ F_a J``."""
    loss = head.loss_fn
    predictive_of(loss)
    c, valid = _row_factor(xp, loss, _loss_input(xp, head, z), y)
    rule = head.rule
    closed = _generic_part(rule, "fisher") if rule is not None and rule.fisher is not None else None
    F = (closed or GENERIC.xp_fisher)(xp, head.activation, loss, z, y)
    return _with_factor(xp, F, c, valid)


def _empirical_fisher(xp, head, z, y, kind):
    if y is None:
        raise ValueError(f"kind={kind!r} needs the true targets y: it is built from the gradients at them")
    g = _row_gradients(xp, head, z, y)
    c, _ = _row_factor(xp, head.loss_fn, _loss_input(xp, head, z), y)
    return g[..., :, None] * g[..., None, :] * c


def _host_or_xp_ids(xp, row_ids, n):
    """The rows' global indices, flat: numpy's for host ids (and None: ``0 ... n−1``), else
    the array of ``xp`` reshaped; ``ValueError`` unless one per row."""
    if row_ids is None:
        return np.arange(n)
    if isinstance(row_ids, (range, list, tuple, np.ndarray, np.generic, int)):
        ids = np.asarray(row_ids).reshape(-1)
    else:
        ids = xp.reshape(row_ids, (-1,))
    size = math.prod(ids.shape)
    if size != n:
        raise ValueError(f"row_ids must hold one index per row of z, {n}; got {size}")
    return ids


def _sampled(xp, head, z, y, M: int, key: int, row_ids=None):
    """Monte-Carlo columns ``(..., K, M)``: ``√(c_n/M) ∇_z ℓ_n(ŷ_m)``, ``ŷ_m`` drawn from
    numpy's uniforms for (key, global row, m): the twin of :func:`jacobians.fisher.sqrt_ggn_sampled`."""
    loss = head.loss_fn
    a = head.activation.xp_forward(xp, z)
    c, valid = _row_factor(xp, loss, z if head.logits_loss else a, y)
    K = z.shape[-1]
    batch = tuple(z.shape[:-1])
    n = math.prod(batch)
    per = loss.predictive_uniforms(K)
    ids = _host_or_xp_ids(xp, row_ids, n)
    device = device_of(z)
    udtype = xp.float64 if float64_available(xp, device) else xp.float32
    z2, a2 = xp.reshape(z, (n, K)), xp.reshape(a, (n, K))
    yr = None  # a predictive that reads the targets (a ranking's R) draws row r's samples with y's row r
    if y is not None and getattr(loss, "predictive_needs_targets", False):
        yl = loss.xp_check_targets(xp, a, y)
        yr = xp.reshape(yl, (n, yl.shape[-1]))
    step = max(1, MC_BLOCK_ENTRIES // (M * K))
    parts = []
    for start in range(0, n, step):  # (static shapes: the same blocks under jax.jit)
        stop = min(n, start + step)
        m = stop - start
        # row r's draws for all M samples, one block: the same numbers however rows are split
        u = xp.reshape(uniforms_for_rows(xp, key, ids[start:stop], M * per, device=device, dtype=udtype), (m * M, per))
        zr = xp.reshape(xp.broadcast_to(z2[start:stop, None, :], (m, M, K)), (m * M, K))
        ar = xp.reshape(xp.broadcast_to(a2[start:stop, None, :], (m, M, K)), (m * M, K))
        if yr is None:
            drawn = loss.xp_sample_targets(xp, ar, u)
        else:
            yb = yr[start:stop, :]
            yb = xp.reshape(xp.broadcast_to(yb[:, None, :], (m, M, yb.shape[-1])), (m * M, yb.shape[-1]))
            drawn = loss.xp_sample_targets(xp, ar, u, yb)
        grads = _row_gradients(xp, head, zr, drawn, sampled=True)
        parts.append(xp.permute_dims(xp.reshape(grads, (m, M, K)), (0, 2, 1)))
    S = parts[0] if len(parts) == 1 else xp.concat(parts, axis=0) if parts else xp.zeros((0, K, M), dtype=z.dtype, device=device)
    S = xp.reshape(S, batch + (K, M))
    return _with_factor(xp, S, xp.sqrt(c / M), valid)


# -- the entry points ---------------------------------------------------------------------------


def head_sqrt_ggn_sampled(head, z, mc_samples, seed, y=None):
    M = check_mc_samples(mc_samples)
    xp, z, y = _inputs(head, z, y, need_y=False)
    predictive_of(head.loss_fn)
    return _sampled(xp, head, z, y, M, seed_key(seed))


def head_fisher(head, z, y, kind, mc_samples, seed):
    meaning = check_kind(kind, FISHER_KINDS)
    xp, z, y = _inputs(head, z, y, need_y=False)
    if meaning == "empirical_fisher":
        return _empirical_fisher(xp, head, z, y, kind)
    if meaning == "fisher_mc":
        M = check_mc_samples(mc_samples)
        predictive_of(head.loss_fn)
        S = _sampled(xp, head, z, y, M, seed_key(seed))
        return xp.matmul(S, xp.matrix_transpose(S))
    return _exact_fisher(xp, head, z, y)


def row_blocks(head, meaning, z, y, *, key=0, mc_samples=1, row_ids=None):
    """The per-sample blocks of ``meaning`` (a :data:`~jacobians.rules.vocabulary.KINDS`
    meaning) for the rows of ``z`` (already checked: one namespace, z detached and float),
    for a head whose loss has reduction ``'sum'`` or ``'none'``; the generic twin of
    :func:`jacobians.fisher.blocks_for_rows`.

    Returns ``('blocks', B)`` with ``B`` of shape ``(n, K, K)`` (``'hessian'``, ``'ggn'``,
    ``'fisher'``) or ``('factor', S)`` with ``S`` of shape ``(n, K, C)`` and blocks
    ``S Sᵀ`` (``'fisher_mc'``: M columns drawn for the global rows ``row_ids`` from
    ``key``; ``'empirical_fisher'``: the rows' own gradients, C = 1).
    """
    xp = namespace_of(z, targets=(y,))
    K = z.shape[-1]
    y = None if y is None else _plain(targets_like(y, z))
    if meaning == "hessian":
        return "blocks", xp.reshape(_hessian(xp, head, z, y, "fused"), (-1, K, K))
    if meaning == "ggn":
        return "blocks", xp.reshape(_hessian(xp, head, z, y, "fused", gauss_newton_only=True), (-1, K, K))
    if meaning == "fisher":
        return "blocks", xp.reshape(_exact_fisher(xp, head, z, y), (-1, K, K))
    if meaning == "fisher_mc":
        M = check_mc_samples(mc_samples)
        predictive_of(head.loss_fn)
        return "factor", xp.reshape(_sampled(xp, head, z, y, M, seed_key(key), row_ids), (-1, K, M))
    if meaning == "empirical_fisher":
        return "factor", xp.reshape(_row_gradients(xp, head, z, y), (-1, K))[..., None]
    raise unsupported(f"linear_curvature(kind={meaning!r})", xp)
