"""The Laplace evidence (log marginal likelihood), its gradient in the prior precision, and
the prior's tuning.

laplace-torch's definition (``ParametricLaplace.log_marginal_likelihood``), with θ the MAP,
H the curvature, ``P_prior = diag(δ)`` and ``P_post = H + P_prior``::

    log Z(δ) = log p(D | θ) − ½ (log det P_post − log det P_prior) − ½ θᵀ P_prior θ

    ∂ log Z / ∂δ_i = ½ (1/δ_i − [P_post⁻¹]_ii − θ_i²)          (vector prior)
    d log Z / dδ   = ½ (P/δ − tr P_post⁻¹ − θᵀθ)               (scalar prior: the sum)

For a scalar δ the evidence is concave in δ (its second derivative is
``½ Σ_i (1/(λ_i + δ)² − 1/δ²) < 0`` for the eigenvalues λ_i ≥ 0 of H), so its maximiser is
the one root of the derivative.
"""

from __future__ import annotations

import warnings

import numpy as np

from .structures import build, spectrum

__all__ = ["evidence", "maximise_scalar", "maximise_vector"]


def evidence(log_lik: float, theta, post, prior, *, return_grad: bool):
    """``log Z`` (and its gradient, shaped like ``prior``) for a built posterior ``post``."""
    theta = np.asarray(theta, dtype=np.float64)
    P = theta.shape[0]
    delta = np.broadcast_to(np.asarray(prior, dtype=np.float64), (P,))
    logdet_prior = float(np.log(delta).sum())
    scatter = float((theta * delta) @ theta)
    value = log_lik - 0.5 * (post.logdet() - logdet_prior) - 0.5 * scatter
    if not return_grad:
        return value
    g = 0.5 * (1.0 / delta - post.covariance_diagonal().astype(np.float64) - theta * theta)
    return value, (float(g.sum()) if np.ndim(prior) == 0 else g)


def _scalar_grad(log_delta: float, lam, sq: float):
    """``d log Z / d log δ`` and its derivative in log δ, from the spectrum ``lam`` of H."""
    d = np.exp(log_delta)
    P = lam.shape[0]
    r = 1.0 / (lam + d)
    g = 0.5 * (P / d - r.sum() - sq)  # d/dδ
    h = 0.5 * (-P / d**2 + (r * r).sum())  # d²/dδ²
    return d * g, d * g + d * d * h


def maximise_scalar(structure: str, H, theta, *, rtol: float = 1e-12, max_iter: int = 200) -> float:
    """The scalar δ that maximises the evidence: the root of ``d log Z / d log δ``, by Newton's
    method on log δ safeguarded by bisection inside a bracket (tolerance ``rtol`` on δ).

    Uses the spectrum of H once (:func:`~jacobians.laplace.structures.spectrum`): each step
    costs O(P)."""
    lam = np.clip(spectrum(structure, H), 0.0, None)
    sq = float(np.dot(theta, theta))
    if sq == 0.0:
        raise ValueError("the MAP θ is zero: the evidence grows without bound in the prior precision")
    # bracket the root of the gradient in log δ (it is positive for small δ, negative for large δ)
    lo, hi = 0.0, 0.0
    while _scalar_grad(lo, lam, sq)[0] <= 0:
        lo -= 4.0
        if lo < -700:
            return float(np.exp(lo))
    while _scalar_grad(hi, lam, sq)[0] >= 0:
        hi += 4.0
        if hi > 700:
            return float(np.exp(hi))
    x = 0.5 * (lo + hi)
    for _ in range(max_iter):
        g, dg = _scalar_grad(x, lam, sq)
        if g > 0:
            lo = x
        else:
            hi = x
        step = -g / dg if dg < 0 else np.inf
        new = x + step
        if not lo < new < hi:
            new = 0.5 * (lo + hi)
        if abs(new - x) < rtol or hi - lo < rtol:
            x = new
            break
        x = new
    return float(np.exp(x))


def maximise_vector(structure: str, H, theta, start, K: int, D1: int, *, gtol: float = 1e-9,
                    max_iter: int = 200, bounds=(1e-10, 1e10)) -> np.ndarray:
    """The (P,) prior precision at a stationary point of the evidence.

    'diag': each coordinate in closed form, the positive root of
    ``1/δ − 1/(h + δ) = θ²``, i.e. ``δ = 2h / (θ²h + √(θ⁴h² + 4θ²h))``.
    'full': Newton's method on log δ with the exact Hessian ``∂² log Z / ∂u_i∂u_j = ½ δ_i δ_j
    [P_post⁻¹]_ij² + [i = j](δ_i g_i − ½)`` (u = log δ), a step of MacKay's fixed point
    ``δ_i ← γ_i / θ_i²``, ``γ_i = 1 − δ_i [P_post⁻¹]_ii``, where it is not concave, and
    backtracking so that the evidence never decreases; until ``|∂ log Z / ∂ log δ_i| < gtol``
    (a ``RuntimeWarning`` after ``max_iter`` steps). Values are kept within ``bounds`` (a
    θ_i = 0 sends δ_i to the upper bound)."""
    lo, hi = bounds
    t2 = np.asarray(theta, dtype=np.float64) ** 2
    if structure == "diag":
        h = np.clip(np.asarray(H, dtype=np.float64).ravel(), 0.0, None)
        with np.errstate(divide="ignore", invalid="ignore"):
            # the same root without cancellation; h = 0 (no curvature): the gradient is −θ²/2 < 0
            delta = 2 * h / (t2 * h + np.sqrt((t2 * h) ** 2 + 4 * t2 * h))
            delta = np.where(h == 0, np.where(t2 > 0, lo, hi), delta)
        return np.clip(np.nan_to_num(delta, nan=hi, posinf=hi), lo, hi)
    if structure == "kron":
        raise ValueError("structure='kron' takes a scalar prior_precision only; use method='marglik' with a scalar")
    u = np.log(np.clip(np.broadcast_to(np.asarray(start, dtype=np.float64), t2.shape), lo, hi))
    ulo, uhi = np.log(lo), np.log(hi)
    theta = np.asarray(theta, dtype=np.float64)

    def objective(u):  # the evidence without log p(D | θ) (a constant here), and the posterior
        post = build(structure, H, np.exp(u), K, D1)
        return -0.5 * (post.logdet() - u.sum()) - 0.5 * (np.exp(u) * t2).sum(), post

    value, post = objective(u)
    s = np.inf
    for _ in range(max_iter):
        d = np.exp(u)
        Sigma = post.covariance().astype(np.float64)
        s = d * 0.5 * (1.0 / d - np.diagonal(Sigma) - t2)  # ∂ log Z / ∂ log δ
        free = ~(((u >= uhi) & (s > 0)) | ((u <= ulo) & (s < 0)))
        if np.max(np.abs(s[free]), initial=0.0) < gtol:
            return d
        # Newton on the free coordinates: ∂²/∂u_i∂u_j = ½ δ_i δ_j Σ_ij² + δ_ij (s_i − ½)
        Hu = 0.5 * np.outer(d, d)[np.ix_(free, free)] * Sigma[np.ix_(free, free)] ** 2
        Hu[np.diag_indices_from(Hu)] += s[free] - 0.5
        step = np.zeros_like(u)
        try:
            np.linalg.cholesky(-Hu)
            step[free] = np.linalg.solve(-Hu, s[free])
        except np.linalg.LinAlgError:  # not concave here: MacKay's fixed point δ_i ← γ_i / θ_i²
            gamma = np.clip(1.0 - d * np.diagonal(Sigma), 1e-300, 1.0)
            with np.errstate(divide="ignore"):
                step[free] = (np.log(gamma) - np.log(np.where(t2 > 0, t2, 0.0)) - u)[free]
        step = np.clip(np.nan_to_num(step, nan=0.0, posinf=uhi - ulo, neginf=ulo - uhi), -5.0, 5.0)
        for _ in range(40):  # backtracking: the evidence must not decrease
            new = np.clip(u + step, ulo, uhi)
            try:
                new_value, new_post = objective(new)
            except ValueError:
                new_value = -np.inf
            if new_value >= value - 1e-12 * abs(value):
                break
            step = step / 2
        else:
            break
        u, value, post = new, new_value, new_post
    warnings.warn(f"the evidence's maximisation over a vector prior stopped after {max_iter} steps with "
                  f"|∂ log Z / ∂ log δ| = {np.max(np.abs(s)):.1e} (tolerance {gtol:.0e})", RuntimeWarning, stacklevel=3)
    return np.exp(u)
