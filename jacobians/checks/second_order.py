"""check_second_order: the curvature of a head against finite differences and itself.

Every second-order quantity of a :class:`~jacobians.Head` — ``hessian`` (each method),
``hessian_operator``, ``hvp``, ``ggn``, ``sqrt_ggn`` and, for a negative
log-likelihood, the Fisher kinds — compared with each other and with central
differences of the exact gradient in float64, on generated inputs clear of kinks.
"""

from __future__ import annotations

import numpy as np

from ..head import Head
from ..numerical import numerical_jacobian
from ..numerics.validation import as_float_array
from ..operators import DenseJacobian, DiagonalPlusLowRank, as_low_rank
from ..rules import EXTREME_HESSIANS
from .head import missing_references, reduction_factor, row_loss_head, stack_or_loop, stacked
from .inputs import DEFAULT_SHAPE, _check_dtype, _head_inputs, example_inputs, extreme_inputs, prepare_targets
from .report import CheckReport, _Failed, _readonly, _require, _Rows, _run, _safe_call, _subject

__all__ = ["check_second_order", "check_activation_second_order", "check_second_order_extreme", "EXTREME_HESSIANS", "MC_SAMPLES", "MC_SIGMAS"]

#: samples of the Monte-Carlo Fisher the check averages
MC_SAMPLES = 4000
#: a failed Monte-Carlo comparison is retried once with this many times the draws
MC_RETRY = 8
#: the Monte-Carlo average passes within this many standard errors of the exact Fisher
MC_SIGMAS = 6.0


def _second_order_methods(head: Head) -> list[str]:
    if head.logits_loss:
        return ["fused"]
    return (["fused"] if head.hessian_rule is not None else []) + ["chain"]


_row_loss_head = row_loss_head


def _hessian_reference(head: Head, z64, y64, c):
    """Central differences of ``head.grad(·, y)``: ``c`` times those of the rows' own
    gradients (``'none'``), from ONE call on the 2K perturbed copies of every row stacked on
    a leading axis; where ``c`` is unknown, 2K calls of ``head.grad`` on the whole batch."""
    if c is not None:
        H = _run(lambda: numerical_jacobian(stacked(row_loss_head(head).grad, y64, z64), z64, stack=True))
        if not isinstance(H, _Failed):
            return c * H
    return _run(lambda: numerical_jacobian(lambda x: head.grad(x, y64), z64))


def _symmetric(x):
    return np.swapaxes(x, -1, -2)


def _min_eigenvalue_ratio(blocks, floor: float = 0.0) -> float:
    """Smallest eigenvalue over the blocks, relative to the largest in size or to ``floor``
    (the round-off level), whichever is larger (0 for zeros)."""
    lam = np.linalg.eigvalsh(np.asarray(blocks, dtype=np.float64))
    scale = max(float(np.abs(lam).max(initial=0.0)), floor)
    return float(lam.min(initial=0.0)) / scale if scale > 0 else 0.0


def _no_real_factor(head: Head, z, y, G) -> bool:
    """The GGN ``G``, or the loss's own Hessian that ``sqrt_ggn`` factors (``Jᵀ S_a``), has a
    block with an eigenvalue below −1e3·eps × its largest: a loss not convex in its input
    (Gaussian NLL in (μ, σ²)), whose ``sqrt_ggn`` rightly refuses."""
    if head.logits_loss:
        return _indefinite(G, z.dtype)
    a = _safe_call(head.activation, z)
    H = None if a is None else _safe_call(head.loss_fn.hessian, a, y)
    return _indefinite(G, z.dtype) or (H is not None and _indefinite(H, z.dtype))


def _indefinite(G, dtype, floor: float = 0.0) -> bool:
    """The blocks ``G`` have an eigenvalue below −1e3·eps × the block's largest; False when
    ``G`` failed or is not finite."""
    if isinstance(G, _Failed) or not np.all(np.isfinite(G)):
        return False
    lam = np.linalg.eigvalsh(np.asarray(G, dtype=np.float64))  # block by block, as the factor judges
    scale = np.maximum(np.abs(lam).max(axis=-1, initial=0.0), max(floor, 1e-300))
    return bool(np.any(lam.min(axis=-1, initial=0.0) / scale < -1e3 * float(np.finfo(dtype).eps)))


def check_second_order(head: Head, z=None, y=None, *, shape=DEFAULT_SHAPE, dtype=None, seed=0,
                       mc_samples: int = MC_SAMPLES) -> CheckReport:
    """Check a head's second order against central differences and against itself.

    The reference ``H_num`` is :func:`~jacobians.numerical_jacobian` of the exact gradient
    ``head.grad(·, y)`` at ``z`` promoted to float64 (rows do not interact, so the
    Jacobian of the gradient is the stack of Hessian blocks), taken in one call of the
    unreduced gradient on every row's 2K perturbed copies, times the reduction factor. Rows::

        H:   <method> vs numerical (fused, chain),  chain vs fused,  operator vs <method>
        H:   <method> is symmetric (vs its transpose)
        H·v: hvp vs H @ v
        GGN: ggn vs hessian         (exactly, where head.ggn_is_hessian)
        GGN: ggn is PSD             (smallest eigenvalue, when the loss's own Hessian is PSD)
        SSᵀ: sqrt_ggn vs ggn
        F:   mc vs exact            (the mean of mc_samples draws within MC_SIGMAS standard errors,
                                     in the Frobenius norm over the batch)
        F:   empirical vs gradients (c_n ∇ℓ_n ∇ℓ_nᵀ from the gradients at y)

    A method that does not apply (``'chain'`` for a Fenchel–Young loss with its own map,
    the Fisher of a loss that is no likelihood) is left out; one that raises a
    ``NotImplementedError`` (a custom class without second derivatives) is a failed row.

    Parameters
    ----------
    head : Head
    z, y, shape, dtype, seed
        As in :func:`check_head`.
    mc_samples : int
        Draws of the Monte-Carlo Fisher.

    Returns
    -------
    CheckReport

    Examples
    --------
    A loss Hessian off by its sign is caught:

    >>> import numpy as np
    >>> import jacobians as jac
    >>> class Flipped(jac.MeanSquaredError):
    ...     def per_element_hessian(self, a, y):
    ...         return -super().per_element_hessian(a, y)
    >>> report = check_second_order(jac.Head(jac.Tanh(), Flipped()))
    >>> report.passed, report.failures[0].compared
    (False, 'H: chain vs numerical')
    """
    _require(head, Head, "head")
    rng = np.random.default_rng(seed)
    z, y, kink, x64 = _head_inputs(head, z, y, shape=shape, dtype=dtype, rng=rng)  # x64: the loss's input at z64
    rows = _Rows(_subject(head), z.dtype, z.shape, kink)
    z64 = z.astype(np.float64)
    y64 = y.astype(np.float64) if y.dtype.kind == "f" else y
    v = _readonly(rng.normal(size=z.shape).astype(z.dtype))

    # (E, dE/dz) and the rows' own (ℓ_n, ∇ℓ_n) at z64, once: the sizes, the factor c with
    # E = c Σ_n ℓ_n and the empirical Fisher's reference read them (a value only where the
    # head computes its loss with the same call: a fused rule)
    at64 = _safe_call(head.value_and_grad, z64, y64)
    rows64 = _safe_call(_row_loss_head(head).value_and_grad, z64, y64)
    value = at64[0] if at64 is not None and head.fused_rule is not None else None
    own = rows64[0] if rows64 is not None and _row_loss_head(head).fused_rule is not None else None
    c = _safe_call(lambda: reduction_factor(head, z64, y64, value, x=x64, rows=own))
    H_num = _hessian_reference(head, z64, y64, c)
    # round-off scales with the curvature, or with the gradient, the Gauss–Newton terms
    # |J|ᵀ |H_E| |J| and the curvature terms |∂E/∂a| |∇²a| where the curvature vanishes
    # (they may cancel to exact zeros)
    floor = max(_grad_size(head, z64, y64, None if at64 is None else at64[1]), _gauss_newton_scale(head, z64, y64, x64),
                _curvature_term_scale(head, z64, y64, x64))
    if not isinstance(H_num, _Failed):
        floor = max(float(np.abs(H_num).max(initial=0.0)), floor)
    rows.floors["numerical"] = rows.floors["methods"] = floor

    blocks = {}
    for method in _second_order_methods(head):
        H = _run(head.hessian, z, y, method)
        blocks[method] = H
        rows.compare("H", method, "numerical", H, H_num, "numerical")
        rows.compare("H", method, "symmetric", H, H if isinstance(H, _Failed) else _symmetric(H), "methods")
        op = _run(head.hessian_operator, z, y, method)
        rows.compare("H", "operator", method, op if isinstance(op, _Failed) else _run(op.dense), H, "methods")
    first = next(iter(blocks))
    for method, H in blocks.items():
        if method != first:
            rows.compare("H", method, first, H, blocks[first], "methods")
    H = blocks[first]
    Hv = H if isinstance(H, _Failed) else np.einsum("...ij,...j->...i", np.asarray(H, np.float64), v.astype(np.float64))
    rows.compare("H·v", "hvp", "H @ v", _run(head.hvp, z, y, v), Hv, "methods")

    G = _run(head.ggn, z, y)
    if head.ggn_is_hessian and not isinstance(G, _Failed):
        rows.compare("GGN", "ggn", "hessian", G, H, "methods", floor=0.0)
        if not isinstance(H, _Failed):
            rows.rows[-1].passed = bool(np.array_equal(G, H))  # the same blocks, to the bit
            rows.rows[-1].note = "" if rows.rows[-1].passed else "ggn differs from hessian for a canonical pair"
    _psd_row(rows, head, z, y, G)
    S = _run(head.sqrt_ggn, z, y)
    if isinstance(S, _Failed) and _no_real_factor(head, z, y, G):  # a loss not convex in its input
        rows._add("SSᵀ", "sqrt_ggn", "ggn", None, None, rows.tol("methods"), "indefinite" in S.note,
                  f"the GGN is indefinite: sqrt_ggn {S.note}")
    else:
        SSt = S if isinstance(S, _Failed) else np.asarray(S) @ _symmetric(np.asarray(S))
        rows.compare("SSᵀ", "sqrt_ggn", "ggn", SSt, G, "methods", dtype_of=S)

    if getattr(head.loss_fn, "predictive", None) is not None and not head.logits_loss:
        SF = _run(head.sqrt_fisher, z, y)
        SFt = SF if isinstance(SF, _Failed) else np.asarray(SF) @ _symmetric(np.asarray(SF))
        rows.compare("SSᵀ", "sqrt_fisher", "fisher", SFt, _run(head.fisher, z, y, "exact"), "methods", dtype_of=SF)
        _fisher_rows(rows, head, z, y, mc_samples, int(rng.integers(2**63)))
    _empirical_row(rows, head, z, y, z64, y64, c, None if rows64 is None else rows64[1])
    return CheckReport(rows.rows, missing_references(head))


def _absolute(op) -> np.ndarray | None:
    """``|diag(d)| + |U| |V|ᵀ``: the size of the terms a structured operator adds up."""
    low = as_low_rank(op)
    if isinstance(low, DenseJacobian):
        return np.abs(low.J)
    return DiagonalPlusLowRank(np.abs(low.d), np.abs(low.U), -np.abs(low.V)).dense()


def _gauss_newton_scale(head, z64, y64, x64=None) -> float:
    """``max |J|ᵀ |H_E| |J|`` with each piece's terms in absolute value, at float64 inputs
    (0 when a piece is unavailable): the size of what the Gauss–Newton term adds up.
    ``x64``: the loss's input at ``z64`` when already computed."""
    x = x64 if x64 is not None else z64 if head.logits_loss else _safe_call(head.activation, z64)
    op = None if x is None else _safe_call(head.loss_fn.hessian_operator, x, y64)
    H = None if op is None else _safe_call(_absolute, op)
    if H is None or not np.all(np.isfinite(H)):
        return 0.0
    if head.logits_loss:
        return float(H.max(initial=0.0))
    J = _safe_call(head.activation.jacobian_operator, z64)
    absJ = None if J is None else _safe_call(_absolute, J)
    if absJ is None or not np.all(np.isfinite(absJ)):
        return 0.0
    return float((_symmetric(absJ) @ H @ absJ).max(initial=0.0))


def _curvature_term_scale(head, z64, y64, a64=None) -> float:
    """``max_jk Σ_i |∂E/∂a_i| |∂²a_i/∂z_j∂z_k|`` at float64 inputs: the size of what the
    curvature term adds up (it cancels to 0 when ∂E/∂a is constant over a simplex map)."""
    if head.logits_loss or z64.size * z64.shape[-1] ** 2 > 4_000_000:
        return 0.0
    a = _safe_call(head.activation, z64) if a64 is None else a64
    g = None if a is None else _safe_call(head.loss_fn.grad, a, y64)
    T = _safe_call(head.activation.hessian, z64)
    if g is None or T is None or not (np.all(np.isfinite(g)) and np.all(np.isfinite(T))):
        return 0.0
    return float(np.einsum("...i,...ijk->...jk", np.abs(g), np.abs(T)).max(initial=0.0))


def _grad_size(head, z64, y64, g=None) -> float:
    g = _safe_call(head.grad, z64, y64) if g is None else g
    return float(np.abs(g).max(initial=0.0)) if g is not None and np.all(np.isfinite(g)) else 1.0


def _psd_row(rows: _Rows, head: Head, z, y, G) -> None:
    """The GGN is PSD whenever the loss is convex in its input (its own Hessian is PSD)."""
    a = z if head.logits_loss else _safe_call(head.activation, z)
    H_loss = None if a is None else _safe_call(head.loss_fn.hessian, a, y)
    if H_loss is None or isinstance(G, _Failed) or _min_eigenvalue_ratio(H_loss) < -1e3 * np.finfo(z.dtype).eps:
        return
    worst = _min_eigenvalue_ratio(G, rows.floors["methods"])
    tol = 1e3 * float(np.finfo(z.dtype).eps)
    rows._add("GGN", "ggn", "PSD", max(-worst, 0.0), max(-worst, 0.0), (0.0, tol), worst >= -tol,
              "" if worst >= -tol else f"smallest eigenvalue {worst:.3g} × the largest", allowed=tol)


def _fisher_rows(rows: _Rows, head: Head, z, y, mc_samples: int, seed) -> None:
    """The Monte-Carlo Fisher's mean within MC_SIGMAS standard errors of the exact one.

    The standard error is estimated from the draws themselves, which underestimates it when
    a rare outcome carries a large gradient (a Bernoulli entry of probability 0.005 with
    ``pos_weight`` 3 turns up 2 or 3 times in 500 draws): a failure is retried once with
    :data:`MC_RETRY` times as many draws from another seed, and the row reports that run.
    """
    exact = _run(head.fisher, z, y, "exact")
    if isinstance(exact, _Failed):
        rows.compare("F", "mc", "exact", exact, exact, "methods")
        return
    exact64 = np.asarray(exact, np.float64)
    scale = float(np.sqrt((exact64**2).sum()))
    note = ""
    for attempt, (M, s) in enumerate(((mc_samples, seed), (MC_RETRY * mc_samples, seed + 1))):
        S = _run(lambda: head.sqrt_ggn_sampled(z, M, s, y=y))  # noqa: B023
        if isinstance(S, _Failed):
            rows.compare("F", "mc", "exact", S, exact, "methods")
            return
        S = np.asarray(S, dtype=np.float64)
        # draw m's own estimate of the Fisher is M s_m s_mᵀ and their mean S Sᵀ; Frobenius
        # norms over the whole batch: the error of the mean against its standard error, the
        # draws' spread Σ_m ‖M s_m s_mᵀ − S Sᵀ‖² / M = M Σ_m ‖s_m‖⁴ − ‖S Sᵀ‖² (no K×K×M array)
        mean = S @ _symmetric(S)
        err = float(np.sqrt(((mean - exact64) ** 2).sum()))
        spread = float(np.sqrt(max(M * ((S * S).sum(axis=-2) ** 2).sum() - (mean**2).sum(), 0.0)))
        allowed = MC_SIGMAS * spread / np.sqrt(M) + 1e3 * float(np.finfo(z.dtype).eps) * scale
        passed = err <= allowed
        if passed or attempt:
            break
        note = f"{mc_samples} draws were {err / allowed * MC_SIGMAS:.1f} standard errors off; retried with {M * MC_RETRY}: "
    note = (note + "passed") if passed and note else note
    if not passed:
        note += f"the mean of {M} draws is {err / allowed * MC_SIGMAS:.1f} standard errors off"
    rows._add("F", "mc", "exact", err, err / scale if scale else 0.0, (MC_SIGMAS, 0.0), passed, note,
              allowed=allowed)
    rows.finite("F", "exact", exact)


def _empirical_row(rows: _Rows, head: Head, z, y, z64, y64, c, row=None) -> None:
    """``c ∇ℓ_n ∇ℓ_nᵀ`` against outer products of the rows' own gradients, with the factor
    read off the losses: ``c = E / Σ_n ℓ_n`` (:func:`reduction_factor`; 1 for ``'sum'`` and
    ``'none'``, 0 when the rows' losses add up to 0). ``row``: the rows' own gradients at
    ``z64`` when already computed."""
    F = _run(head.fisher, z, y, "empirical")
    row = _safe_call(_row_loss_head(head).grad, z64, y64) if row is None else row
    if c is None:  # the losses add up to 0, or could not be computed
        losses = _safe_call(_row_loss_head(head).loss, z64, y64)
        c = 0.0 if losses is not None and float(np.sum(losses)) == 0 else None
    if row is None or c is None or isinstance(F, _Failed):
        rows.compare("F", "empirical", "gradients", F, F, "methods")
        return
    rows.compare("F", "empirical", "gradients", F, c * np.einsum("...i,...j->...ij", row, row), "methods")


def check_activation_second_order(act, z=None, *, shape=DEFAULT_SHAPE, dtype=None, seed=0) -> CheckReport:
    """Check an activation's second derivatives against central differences of its Jacobian.

    Rows::

        T:      hessian vs numerical          (∂J_ij/∂z_k by central differences, float64)
        Σ g∇²a: hessian_vjp vs numerical      (with a random g)
        Σ g∇²a: operator vs hessian_vjp       (hessian_vjp_operator(z, g).dense())
        Σ g∇²a: hessian_vjp is symmetric

    Examples
    --------
    >>> import jacobians as jac
    >>> check_activation_second_order(jac.Softmax(temperature=0.5)).passed
    True
    """
    from ..activations import Activation

    _require(act, Activation, "act")
    rng = np.random.default_rng(seed)
    if z is None:
        z = example_inputs(act, shape=shape, dtype=np.float64 if dtype is None else dtype, seed=rng)
    else:
        z = as_float_array(z, "z")
        if dtype is not None:
            z = z.astype(_check_dtype(dtype))
    z = _readonly(z)
    g = _readonly(rng.normal(size=z.shape).astype(z.dtype))
    rows = _Rows(_subject(act), z.dtype, z.shape)
    K = z.shape[-1]
    z64 = z.astype(np.float64)
    T_num = _run(lambda: stack_or_loop(lambda x: act.jacobian(x).reshape(x.shape[:-1] + (K * K,)), z64)
                 .reshape(z.shape + (K, K)))
    if not isinstance(T_num, _Failed):
        rows.floors["numerical"] = max(float(np.abs(act.jacobian(z64)).max(initial=0.0)), 1.0)
        rows.floors["methods"] = max(float(np.abs(T_num).max(initial=0.0)), 1e-300)
    rows.compare("T", "hessian", "numerical", _run(act.hessian, z), T_num, "numerical")
    gT = T_num if isinstance(T_num, _Failed) else np.einsum("...i,...ijk->...jk", g.astype(np.float64), T_num)
    vjp = _run(act.hessian_vjp, z, g)
    rows.compare("Σ g∇²a", "hessian_vjp", "numerical", vjp, gT, "numerical")
    op = _run(act.hessian_vjp_operator, z, g)
    rows.compare("Σ g∇²a", "operator", "hessian_vjp", op if isinstance(op, _Failed) else _run(op.dense), vjp, "methods")
    rows.compare("Σ g∇²a", "hessian_vjp", "symmetric", vjp, vjp if isinstance(vjp, _Failed) else _symmetric(vjp), "methods")
    return CheckReport(rows.rows)


def check_second_order_extreme(head: Head, *, shape=(2, 3, 5), dtype=np.float64, seed=0) -> CheckReport:
    """At logits of ±1e4 (:func:`extreme_inputs`) every second-order method stays finite and
    keeps the dtype; a canonical pair's Hessian is 0 where its map is one-hot (softmax,
    sparsemax, 1.5-entmax, sigmoid saturated) and ``2/(N·K) I`` for identity + MSE."""
    _require(head, Head, "head")
    z, y = extreme_inputs(head, shape=shape, dtype=dtype, seed=seed)
    z = _readonly(z)
    y = prepare_targets(y, z)
    rows = _Rows(_subject(head) + " (±1e4)", z.dtype, z.shape)
    for method in _second_order_methods(head):
        rows.finite("H", method, _run(head.hessian, z, y, method))
    G = _run(head.ggn, z, y)
    rows.finite("GGN", "ggn", G)
    S = _run(head.sqrt_ggn, z, y)
    if isinstance(S, _Failed) and _no_real_factor(head, z, y, G):  # no real factor, and it says so
        rows._add("S", "sqrt_ggn", "finite", None, None, (0.0, 0.0), "indefinite" in S.note,
                  f"the GGN is indefinite: sqrt_ggn {S.note}")
    else:
        rows.finite("S", "sqrt_ggn", S)
    rule = head.rule
    closed = None if rule is None else rule.extreme_hessian
    yc = y.astype(np.float64) if y.dtype.kind == "f" else y
    expected = None if closed is None else _run(closed, head.activation, head.loss_fn, z.astype(np.float64), yc)
    if expected is not None:  # (None: the rule has no limit for these logits or options)
        rows.compare("H", "fused", "closed form", _run(head.hessian, z, y, "fused"), expected, "closed_form")
    return CheckReport(rows.rows)
