"""The Plackett–Luce ranking loss: the negative log-likelihood of a ranking of M scored
candidates (Bradley–Terry is M = 2).

A row of scores ``a`` (M,) and a ranking ``π`` (R,) of candidate indices, best first
(``R <= M``; ``R < M`` is a top-R ranking; a row may end in −1 entries, which makes R
ragged). Step i chooses ``π_i`` among the candidates not yet placed, ``S_i = all ∖ {π_0,
..., π_{i−1}}``, with the softmax ``p⁽ⁱ⁾`` of the scores over ``S_i``::

    ℓ = Σ_{i<R} [logsumexp(a over S_i) − a_{π_i}]
    ∇ℓ = Σ_i (p⁽ⁱ⁾ − e_{π_i})
    ∇²ℓ = Σ_i (diag p⁽ⁱ⁾ − p⁽ⁱ⁾ p⁽ⁱ⁾ᵀ)  =  diag(Σ_i p⁽ⁱ⁾) − P Pᵀ,   P = [p⁽⁰⁾ … p⁽ᴿ⁻¹⁾]

All three in O(R·M) a row, from (N, R, M) arrays of the steps (the remaining sets as masks:
``k ∈ S_i`` iff k is placed at step i or later, or not at all). Each step's log-sum-exp is
taken of the scores shifted by the step's own maximum, ``log1p(Σ_{k≠top} e^{a_k − m_i}) +
(m_i − a_{π_i})``: two non-negative terms, nothing cancels, exact for scores of ±1e4 in
float32 too. The Hessian is held as the R probability vectors
(:class:`~jacobians.operators.ranking.SimplexBlockSum`), never as M×M blocks unless the
dense form is asked for.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _kernels
from .._kernels.numpy_ranking import ranking_steps
from ..numerics.sampling import Predictive
from ..numerics.validation import as_array, as_float_array
from ..operators import SimplexBlock
from ..operators.ranking import SimplexBlockSum
from ..xp.blocks import complement_sums, simplex_sqrt, with_diagonal
from .base import Loss, register_loss
from .generic import concrete, const, device_of

__all__ = ["PlackettLuce"]

#: the padding entry that ends a ranking of fewer than R candidates
PAD = -1


def check_rankings(a: np.ndarray, y) -> np.ndarray:
    """``y`` as int64 rankings of shape ``a.shape[:-1] + (R,)``, ``R <= M``: candidate
    indices in [0, M), each at most once in a row, −1 only as trailing padding.
    ``TypeError`` for a non-integer dtype, ``ValueError`` naming ``y`` otherwise."""
    y = as_array(y, "y")
    if y.dtype.kind not in "iu":
        raise TypeError(
            "y must hold integer candidate indices (a ranking per row, best first, -1 as trailing padding); "
            f"got dtype {y.dtype}"
        )
    M, batch = a.shape[-1], a.shape[:-1]
    if y.ndim != a.ndim or y.shape[:-1] != batch:
        raise ValueError(
            f"y must have shape {batch + ('R',)} (..., R): one ranking of candidate indices per row of a, "
            f"whose shape is {a.shape}; got shape {y.shape}"
        )
    R = y.shape[-1]
    if R > M:
        raise ValueError(f"y ranks R = {R} candidates a row but a has M = {M}: R must be <= M; got shape {y.shape}")
    if y.dtype == np.int64 and y.size and not _kernels.ranking_flaw(y.reshape(-1, R), M):
        return y  # (the kernel's one pass found nothing: the checks below find and name a flaw)
    if y.size:
        lo, hi = int(y.min()), int(y.max())
        if lo < PAD or hi >= M:
            raise ValueError(
                f"y must hold candidate indices in [0, {M}) or {PAD} (padding); got values in [{lo}, {hi}]"
            )
    y = y.astype(np.int64, copy=False)
    if y.size and R > 1:
        y2 = y.reshape(-1, R)
        pad = y2 < 0
        bad = np.flatnonzero((pad[:, :-1] & ~pad[:, 1:]).any(axis=-1))
        if bad.size:
            row = int(bad[0])
            raise ValueError(
                f"y: {PAD} pads a ranking at its end only; row {row} (of the flattened batch) has a candidate "
                f"after a {PAD}: {y2[row].tolist()}"
            )
        s = np.sort(y2, axis=-1)
        dup = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
        bad = np.flatnonzero(dup.any(axis=-1))
        if bad.size:
            row = int(bad[0])
            k = int(s[row, 1:][dup[row]][0])
            raise ValueError(
                f"y: a ranking names each candidate at most once; row {row} (of the flattened batch) names "
                f"candidate {k} twice: {y2[row].tolist()}"
            )
    return y


def _host(y) -> np.ndarray:
    """A numpy copy of the targets ``y`` of any namespace (for value checks on concrete arrays)."""
    try:
        return np.from_dlpack(y)
    except (TypeError, RuntimeError, BufferError, AttributeError):
        return np.asarray(y)


def xp_ranking_steps(xp, a, y, need_grad: bool = True):
    """The twin of :func:`ranking_steps` on the array API, batch axes kept:
    ``(values (...), grads (..., M) or None, P (..., R, M), parts)`` with ``parts`` =
    ``(d, t, inv, istop, remain)`` for the curvature (the shifted scores, each step's sum
    without its top and ``1/(1 + t)``, the tops and the remaining sets as masks). No scatter and nothing written in place: the
    placements are a one-hot (..., R, M) mask, each candidate's step its minimum over it."""
    M, R = a.shape[-1], y.shape[-1]
    dev = device_of(a)
    zero, one = const(xp, 0.0, a), const(xp, 1.0, a)
    valid = y >= 0  # (..., R)
    k = xp.arange(M, dtype=y.dtype, device=dev)
    onehot = y[..., :, None] == k  # (..., R, M): a −1 places nothing
    steps = xp.arange(R, dtype=y.dtype, device=dev)[:, None]  # (R, 1)
    never = xp.full(onehot.shape, R, dtype=y.dtype, device=dev)
    pos = xp.min(xp.where(onehot, steps, never), axis=-2) if R else xp.full(a.shape, R, dtype=y.dtype, device=dev)
    remain = (pos[..., None, :] >= steps) & valid[..., None]  # k ∈ S_i
    x = xp.where(remain, a[..., None, :], const(xp, -math.inf, a))
    m = xp.where(valid, xp.max(x, axis=-1), zero) if M else xp.zeros(valid.shape, dtype=a.dtype, device=dev)
    d = x - m[..., None]
    e = xp.exp(d)
    top = xp.argmax(d, axis=-1) if M and R else xp.zeros(valid.shape, dtype=y.dtype, device=dev)
    istop = xp.arange(M, dtype=top.dtype, device=dev) == top[..., None]
    t = xp.sum(xp.where(istop, zero, e), axis=-1)  # Σ_{k ∈ S_i, k ≠ top} e^{a_k − m_i}
    a_pi = xp.sum(xp.where(onehot, a[..., None, :], zero), axis=-1)
    values = xp.sum(xp.where(valid, xp.log1p(t) + (m - a_pi), zero), axis=-1)
    inv = one / (one + t)
    P = e * inv[..., None]
    grads = None
    if need_grad:
        e_pi = xp.sum(xp.where(onehot, e, zero), axis=-1)
        own = xp.where(xp.any(onehot & istop, axis=-1), -t * inv, e_pi * inv - one)
        grads = xp.sum(xp.where(onehot, own[..., None], P), axis=-2)
    return values, grads, P, (d, t, inv, istop, remain)


def softmax_rows(a: np.ndarray) -> np.ndarray:
    """The softmax of each row of ``a`` (..., M), shifted by its maximum."""
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def gumbel_rankings(a2: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Full rankings (N, M) drawn from the Plackett–Luce model at scores ``a2`` (N, M) from
    uniforms ``u`` (N, M): the candidates sorted by ``a + G``, ``G = −log(−log u)`` Gumbel
    noise (the Gumbel-max trick, step after step). Their first R entries are a top-R
    ranking drawn from the model."""
    M = a2.shape[-1]
    with np.errstate(divide="ignore"):
        g = -np.log(-np.log(u[:, :M]))
    keys = a2.astype(np.float64) + g
    return np.argsort(-keys, axis=-1, kind="stable").astype(np.int64)


def _draw(a2, u):
    return gumbel_rankings(a2, u)


def _loop_rows(loss, a, y):
    """One row and one step at a time, in float64: the plain reference."""
    M = a.shape[-1]
    a2 = np.asarray(a, dtype=np.float64).reshape(-1, M)
    y2 = np.asarray(y).reshape(a2.shape[0], -1)
    values, grads = np.zeros(a2.shape[0]), np.zeros_like(a2)
    for n in range(a2.shape[0]):
        left = list(range(M))
        for c in y2[n]:
            if c < 0:
                break
            c = int(c)
            top = max(a2[n, k] for k in left)
            total = sum(math.exp(a2[n, k] - top) for k in left)
            values[n] += top + math.log(total) - a2[n, c]
            for k in left:
                grads[n, k] += math.exp(a2[n, k] - top) / total
            grads[n, c] -= 1.0
            left.remove(c)
    return values, grads, float(a2.shape[0])


@register_loss
class PlackettLuce(Loss):
    """Plackett–Luce negative log-likelihood of rankings, on scores (pair it with Identity).

    Scores ``a`` (..., M); targets ``y`` (..., R) integer candidate indices, best first,
    ``R <= M`` (a top-R ranking when ``R < M``), a row may end in −1 entries (its own,
    shorter R). ``ℓ = Σ_{i<R} [logsumexp(a over the candidates not yet placed) − a_{π_i}]``.
    Bradley–Terry is M = 2, R = 1: ``ℓ = −log σ(a_chosen − a_rejected)``.

    Parameters
    ----------
    reduction : {'mean', 'sum', 'none'}
        ``'mean'`` divides the summed row losses by N, the number of rows — rows, not
        placements, and a row of −1 only (no placement, loss 0) counts like any other,
        as torch's ``'mean'`` of a per-row loss does (CE's ``ignore_index`` would drop it
        from the count: ``reduction='sum'`` divided by your own count gives that).
        ``'none'`` gives shape ``(...,)``.

    Notes
    -----
    Hessian ``Σ_i (diag p⁽ⁱ⁾ − p⁽ⁱ⁾ p⁽ⁱ⁾ᵀ)`` with ``p⁽ⁱ⁾`` the softmax over the set remaining at
    step i: convex, PSD, held as R simplex blocks (O(N·M·R) memory) whose factors side by
    side, ``(..., M, R·M)``, are its exact square root. The model's predictive distribution
    draws rankings by Gumbel top-R (``argsort(a + G)``, its first R), R being each row's
    own from the targets (without targets: one choice a row, R = 1). The exact Fisher — the
    Hessian's expectation under the model — is in closed form only for one step (R = 1,
    or M <= 2): softmax cross-entropy's ``diag(p) − p pᵀ``; for more steps
    ``fisher(kind='exact')`` is a ValueError: use ``kind='mc'`` or ``'empirical'``.

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> z = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    >>> y = np.array([[0, 1, 2], [2, -1, -1]])          # a full ranking, a top-1 one
    >>> head = jac.Head(jac.Identity(), jac.PlackettLuce())
    >>> round(float(head.loss(z, y)), 6)
    0.306285
    >>> bt = jac.PlackettLuce(reduction="none")(np.array([[1.0, 0.0]]), np.array([[0]]))
    >>> bool(np.isclose(bt[0], np.log1p(np.exp(-1.0))))   # −log σ(1 − 0)
    True
    """

    name = "plackett_luce"
    input_domain = "real"
    target_kind = "ranking"
    predictive = Predictive(
        "rankings drawn from the Plackett–Luce model at the scores a (Gumbel top-R: the first R of argsort(a + G))",
        lambda K: K,
        _draw,
        False,
    )
    #: the predictive's rankings take each row's R from the targets (the Fisher passes them)
    predictive_needs_targets = True
    loop_reference = _loop_rows

    def check_targets(self, a, y):
        return check_rankings(a, y)

    def _terms(self, a, y, need_grad):
        values, grads = self.fused_terms(a, y, 1)  # (the values of value_and_grad's kernel, to the bit)
        return values, (grads if need_grad else None), values.size

    @staticmethod
    def fused_terms(a, y, scale):
        """``(values (...,), scale · grads (..., M))`` of validated rankings, by the kernel
        :func:`jacobians._kernels.plackett_luce` (numba's, or numpy's :func:`ranking_steps`)."""
        n, M, R = math.prod(a.shape[:-1]), a.shape[-1], y.shape[-1]
        values, grads = _kernels.plackett_luce(a.reshape(n, M), y.reshape(n, R), scale)
        return values.reshape(a.shape[:-1]), grads.reshape(a.shape)

    def per_sample(self, a, y):
        a = as_float_array(a, "a")
        return self._terms(a, self.check_targets(a, y), False)[0]

    def per_sample_grad(self, a, y):
        a = as_float_array(a, "a")
        return self._terms(a, self.check_targets(a, y), True)[1]

    def steps_operator(self, a, y, *, root: bool = False) -> SimplexBlockSum:
        """The unreduced Hessian blocks ``Σ_i (diag p⁽ⁱ⁾ − p⁽ⁱ⁾ p⁽ⁱ⁾ᵀ)`` of validated targets,
        as R simplex blocks (``root``: with ``√p⁽ⁱ⁾ = exp(½(a − m_i))/√Σe^{a − m_i}``, normal
        where p⁽ⁱ⁾ underflows, for the exact factor)."""
        _, _, P, r = ranking_steps(a, y, need_grad=False, need_root=root)
        shape = a.shape[:-1] + P.shape[1:]
        return SimplexBlockSum(P.reshape(shape), a.dtype.type(1), None if r is None else r.reshape(shape))

    def _hessian_terms(self, a, y):
        return self.steps_operator(a, y), math.prod(a.shape[:-1])

    def per_sample_hessian(self, a, y):
        a = as_float_array(a, "a")
        return self._hessian_terms(a, self.check_targets(a, y))[0].dense()

    # -- the model's own distribution ----------------------------------------------------
    def steps_per_row(self, a, y=None) -> np.ndarray:
        """Each row's R (its candidates that are not −1); 1 for every row without ``y`` (the
        model's choice of one candidate)."""
        if y is None:
            return np.ones(a.shape[:-1], dtype=np.int64)
        return (self.check_targets(a, y) >= 0).sum(axis=-1)

    def fisher_blocks(self, a, y=None):
        """The exact Fisher ``E_π[∇ℓ ∇ℓᵀ]`` in ``a``, unreduced: ``diag(p) − p pᵀ`` (the
        softmax over all M) for a row of one step (R = 1, or M <= 2: the last candidate
        placed is no choice), zero for a row of none; ``ValueError`` for more steps."""
        a = as_float_array(a, "a")
        M = a.shape[-1]
        R = self.steps_per_row(a, y)
        steps = np.minimum(R, max(M - 1, 0))
        if steps.size and int(steps.max()) > 1:
            raise ValueError(
                "PlackettLuce has no closed-form exact Fisher for rankings of more than one step: the Hessian "
                "depends on the ranking drawn, and its expectation under the model is in closed form only for "
                f"R = 1 (softmax cross-entropy's diag(p) - p pᵀ); these targets rank up to R = {int(R.max())} of M = {M} "
                "candidates. Use kind='mc' (rankings drawn by Gumbel top-R) or kind='empirical'"
            )
        p = softmax_rows(a) if M else a
        return SimplexBlock(p, (steps > 0).astype(a.dtype))

    def sample_targets(self, a, u, y=None):
        """Rankings drawn from the model at ``a`` (..., M) from uniforms ``u`` (N, M): with
        targets ``y`` (..., R) each row's first R_n candidates of a Gumbel-sorted full
        ranking (its own R from y, a top-R_n draw), padded by −1 to y's width; without
        targets one choice a row, (..., 1)."""
        M = a.shape[-1]
        full = gumbel_rankings(a.reshape(-1, M), u)
        if y is None:
            return full[:, :1].reshape(a.shape[:-1] + (min(M, 1),))
        y = self.check_targets(a, y)
        R = y.shape[-1]
        keep = (y >= 0).reshape(-1, R)
        out = np.where(keep, full[:, :R], PAD)
        return out.reshape(y.shape)

    def example_targets(self, shape, rng):
        """Rankings for scores of ``shape`` (..., M), for the checks and the test walks:
        width R = min(M, 3); full rankings for M <= 2, else top-1 rankings padded by −1;
        every fifth row (from the fifth) all −1. Every row is one step of curvature, so the
        walks' exact Fisher applies; rankings of more steps are tested in
        tests/test_plackett_luce.py."""
        M = shape[-1]
        batch = tuple(shape[:-1])
        n = math.prod(batch)
        R = min(M, 3)
        y = np.argsort(rng.random((n, M)), axis=-1)[:, :R].astype(np.int64)
        if M > 2:
            y[:, 1:] = PAD
        y[4::5] = PAD
        return y.reshape(batch + (R,))

    # -- the generic (array API) path: torch, JAX, CuPy, array-api-strict arrays -------------
    def xp_check_targets(self, xp, a, y):
        """``y`` as :func:`check_rankings` checks it: integer dtype and shape always, the
        values on concrete arrays (not under ``jax.jit``)."""
        if not xp.isdtype(y.dtype, "integral"):
            raise TypeError(
                "y must hold integer candidate indices (a ranking per row, best first, -1 as trailing padding); "
                f"got dtype {y.dtype}"
            )
        if concrete(y):
            check_rankings(np.broadcast_to(np.zeros((), np.float64), tuple(a.shape)), _host(y))
        elif y.ndim != a.ndim or tuple(y.shape[:-1]) != tuple(a.shape[:-1]) or y.shape[-1] > a.shape[-1]:
            check_rankings(np.broadcast_to(np.zeros((), np.float64), tuple(a.shape)), np.zeros(tuple(y.shape), int))
        return y

    def xp_terms(self, xp, a, y, need_grad):
        values, grads, _, _ = xp_ranking_steps(xp, a, y, need_grad)
        return values, grads, math.prod(a.shape[:-1])

    def xp_per_sample(self, xp, a, y):
        return self.xp_terms(xp, a, y, False)[0]

    def xp_per_sample_grad(self, xp, a, y):
        return self.xp_terms(xp, a, y, True)[1]

    def xp_per_sample_hessian(self, xp, a, y):
        """``Σ_i (diag p⁽ⁱ⁾ − p⁽ⁱ⁾ p⁽ⁱ⁾ᵀ)`` dense: ``−Pᵀ P`` with the diagonal ``Σ_i p⁽ⁱ⁾ (1 − p⁽ⁱ⁾)``,
        ``1 − p`` as ``t/(1 + t)`` at a step's top (no cancellation on a confident step)."""
        _, _, P, (d, t, inv, istop, remain) = xp_ranking_steps(xp, a, y, False)
        e = xp.exp(d)
        rest = xp.where(istop, t[..., None], (1 + t[..., None]) - e) * inv[..., None]
        diag = xp.sum(P * rest, axis=-2)
        return with_diagonal(xp, -xp.matmul(xp.matrix_transpose(P), P), diag)

    def xp_hessian_terms(self, xp, a, y):
        return self.xp_per_sample_hessian(xp, a, y), math.prod(a.shape[:-1]), False

    def xp_sqrt_hessian(self, xp, a, y):
        """The R steps' simplex factors side by side, ``(..., M, R·M)`` (numpy's
        :meth:`SimplexBlockSum.sqrt <jacobians.operators.ranking.SimplexBlockSum.sqrt>`)."""
        _, _, P, (d, t, inv, istop, remain) = xp_ranking_steps(xp, a, y, False)
        root = xp.where(remain, xp.exp(d / 2) * xp.sqrt(inv)[..., None], const(xp, 0.0, a))
        scale, _ = self._xp_scale(xp, math.prod(a.shape[:-1]), a)
        c = None if scale is None else xp.reshape(scale, (1,) * (a.ndim - 1) + (1,)) * xp.ones_like(a[..., :1])
        R = y.shape[-1]
        if not R:
            return xp.zeros(tuple(a.shape) + (0,), dtype=a.dtype, device=device_of(a))
        return xp.concat([simplex_sqrt(xp, P[..., i, :], root[..., i, :], c) for i in range(R)], axis=-1)

    def xp_fisher_blocks(self, xp, a, y=None):
        """The twin of :meth:`fisher_blocks`, dense: ``diag(p) − p pᵀ`` for a row of one step
        (rows of more steps: ValueError, decided on concrete targets; under ``jax.jit`` only
        targets of width 1, or M <= 2, are known to be one step)."""
        M = a.shape[-1]
        R = 1 if y is None else y.shape[-1]
        if y is not None and min(R, max(M - 1, 0)) > 1:
            if not concrete(y):
                raise ValueError(
                    "PlackettLuce's exact Fisher needs each row's R from concrete targets: under jax.jit pass "
                    "targets of width 1 (or use kind='mc')"
                )
            self.fisher_blocks(np.broadcast_to(np.zeros((), np.float64), tuple(a.shape)), _host(y))  # the refusal
        p = xp.exp(a - xp.max(a, axis=-1, keepdims=True))
        p = p / xp.sum(p, axis=-1, keepdims=True)
        w = const(xp, 1.0, a) if y is None else xp.astype(xp.any(y >= 0, axis=-1), a.dtype)[..., None]
        H = with_diagonal(xp, -(p[..., :, None] * p[..., None, :]), p * complement_sums(xp, p))
        return H * w[..., None] if y is not None else H

    def xp_sample_targets(self, xp, a, u, y=None):
        """The twin of :meth:`sample_targets`: ``argsort(a + G)`` (G = −log(−log u), in u's
        dtype), its first R_n entries (one without ``y``)."""
        M = a.shape[-1]
        a2 = xp.reshape(a, (-1, M))
        keys = xp.astype(a2, u.dtype) - xp.log(-xp.log(u[:, :M]))
        full = xp.argsort(-keys, axis=-1, stable=True)
        if y is None:
            return xp.reshape(full[:, :1], tuple(a.shape[:-1]) + (min(M, 1),))
        R = y.shape[-1]
        y2 = xp.reshape(y, (-1, R))
        out = xp.where(y2 >= 0, xp.astype(full[:, :R], y.dtype), xp.full(y2.shape, PAD, dtype=y.dtype, device=device_of(y)))
        return xp.reshape(out, tuple(y.shape))
