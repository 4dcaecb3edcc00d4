"""The benchmark suite of ``python -m jacobians bench`` (the runner is :mod:`jacobians.bench`).

Sections, each a table: every group is one size and dtype, measured side by side.

* ``jacobian`` — the dense softmax Jacobian ``act.jacobian(z)`` (fresh, and into ``out=``;
  all cores, and ``workers=1``) against the machine's limit for writing that many bytes
  (``np.ones`` for a fresh array, ``buf.fill(1.0)`` for a buffer) and the peers.
* ``contract`` — ``jacobians.contract(g, J)`` against ``np.matmul`` (its target), reading J
  once (the limit) and the peers.
* ``vjp`` — ``act.vjp(z, g)`` (forward included) against torch's softmax forward +
  autograd backward with one thread; ``g @ act.jacobian_operator(z)`` against torch's
  backward alone (one thread).
* ``fused`` — value and dE/dz of softmax + CE, log-softmax + NLL, sigmoid + BCE from the
  logits against torch's functional losses forward + backward (default threads), and the
  fused path's speed-up over the Jacobian path at K = 10, 100, 1000.
* ``blocked`` — ``head.grad(z, y, method='jacobian', max_bytes=...)`` on a batch whose dense
  Jacobian does not fit in memory, timed in a subprocess that reports its peak RSS.
* ``second_order`` — softmax + CE: the Hessian blocks ``head.hessian(z, y)`` against the dense
  Jacobian build ``act.jacobian(z)`` (same diagonal-minus-rank-one structure, same size),
  torch's ``vmap(hessian(per-sample loss))`` (one thread and default threads) and JAX's
  ``jit(vmap(hessian))``; ``head.hvp(z, y, v)`` against ``head.grad(z, y)``; the factor
  ``head.sqrt_ggn(z, y)`` against the same dense build and BackPACK's ``sqrt_hessian``;
  at 1024 × 50,304 (a language model's vocabulary) the structured ``head.hessian_operator(z, y)``
  and ``head.hvp`` against one softmax ``act(z)`` (target: ≤ 1.5×).
* ``last_layer`` — softmax + CE through a linear layer, N = 50,000, D = 128, K = 10:
  ``jac.linear_curvature(structure='full')`` against the one BLAS product ``UᵀU`` its
  rank-one parts come to, torch's ``func.hessian`` in θ and BackPACK's ``SqrtGGNExact``;
  ``'diag'`` and ``'kron'`` against one O(N·K·D) product ``pᵀX̃``; and the 200,000 × 64,
  K = 100 ``'full'`` GGN with ``max_bytes`` in a subprocess reporting its peak RSS.
* ``dask`` — softmax + CE ``head.grad`` and ``head.hessian`` on Dask arrays against the same
  call on numpy: one chunk on the synchronous scheduler (the dask path's overhead),
  several chunks on the threaded scheduler, and a ``LocalCluster`` of one-thread worker
  processes (one worker against two). Only when dask and distributed import; otherwise
  the section is skipped with the reason (:func:`skipped_sections`).
* ``entmax`` — α-entmax forward + VJP, ``Entmax(1.5).vjp(z, g)``, against the closed form
  ``Entmax15().vjp(z, g)`` (target: within 3×) and the entmax package's ``entmax_bisect``
  forward + backward, torch with one thread (target: ahead); ``Entmax(1.3)`` (no closed
  form) and ``Entmax(2.5)`` beside them.
* ``heads`` — the heads of ``heads_suite.py`` against torch autograd of the same loss.
* ``laplace`` — ``jac.LastLayerLaplace`` fit + probit predictive against laplace-torch's
  last-layer Laplace (N = 50,000, D = 128, K = 10; target ≤ 0.5×), and ``jac.influence``
  against a torch autograd reference (10⁵ × 10³ rows, P = 5,000): ``laplace_suite.py``.

The limits are one-thread numpy operations that move the same bytes: the least any
implementation must pay. Targets are attached to our
rows and reported as met or not met: the fused and Jacobian targets with the numpy
kernels, the tighter ones with the compiled ones (``fast`` extra: every fused row ≤ 0.8× torch and
≤ 1.0× JAX, ``act.vjp`` ≤ 0.8× torch with one thread).
"""

from __future__ import annotations

import functools
import itertools
import logging
import time

import backend_suite
import heads_suite
import laplace_suite
import numpy as np
import peers as P
import seed_recipes as seed

import jacobians as jac
from jacobians.bench import Case, Group

TITLES = {
    "jacobian": "dense softmax Jacobian (N, K, K); ×column = this row's median ÷ the column's (< 1: faster)",
    "contract": "dE/dz = contract(dE/da, J), 'ij,ijk->ik'",
    "vjp": "softmax VJP: act.vjp(z, g) (forward included) and g @ act.jacobian_operator(z) (backward only); torch 1 thread",
    "fused": "value and dE/dz from the logits, forward + backward; torch default threads",
    "blocked": "head.grad(z, y, method='jacobian', max_bytes) in a subprocess: time and peak RSS",
    "second_order": "softmax + CE curvature from the logits: Hessian blocks (N, K, K), H·v, GGN factor; "
    "torch/JAX default threads unless marked",
    "last_layer": "softmax + CE curvature of a linear layer in θ = vec([W | b]), P = K·(D+1): dense GGN (P, P), "
    "its diagonal, its Kronecker factors; peers timed on a subset of the rows and scaled",
    "dask": "softmax + CE on Dask arrays against the numpy call (×numpy), and 2 workers against 1 "
    "(×1 worker …); ratios of one run on a shared machine, not asserted",
    "entmax": "α-entmax forward + VJP, act.vjp(z, g), against 1.5-entmax's closed form and entmax_bisect "
              "(torch 1 thread)",
    "heads": heads_suite.TITLE,
    "laplace": laplace_suite.TITLE,
}

PAIRS = {
    "softmax+cross_entropy": (jac.Softmax, jac.CrossEntropy),
    "log_softmax+nll": (jac.LogSoftmax, jac.NLLLoss),
    "sigmoid+binary_cross_entropy": (jac.Sigmoid, jac.BinaryCrossEntropy),
}


#: the compiled kernels (numba) have tighter targets
COMPILED = jac.kernels() == "numba"


def available_peers(names) -> dict[str, str]:
    """The requested peers that are installed, with their versions."""
    return P.available(names)


def _data(N, K, dtype, seed_=0):
    rng = np.random.default_rng(seed_)
    return rng.normal(size=(N, K)).astype(dtype), rng.normal(size=(N, K)).astype(dtype)


def _group(section, N, K, dtype, build, **kw):
    return Group(section=section, size=f"{N}x{K}", dtype=dtype, build=build, **kw)


# -- jacobian -------------------------------------------------------------------------------


def _jacobian_cases(N, K, dtype, peers):
    z, _ = _data(N, K, dtype)
    act = jac.Softmax()
    buf = np.empty((N, K, K), dtype=dtype)
    beat = {"torch vmap(jacrev)": 1 / 1.5, "jax vmap(jacrev)": 1 / 1.5}
    cases = [
        Case("np.ones((N, K, K))", lambda: np.ones((N, K, K), dtype=dtype), kind="limit", column="np.ones"),
        Case("buf.fill(1.0)", lambda: buf.fill(1.0), kind="limit", column="fill"),
        Case("act.jacobian(z)", lambda: act.jacobian(z), limit="np.ones", targets={"limit": 1.1, **beat}),
        Case("act.jacobian(z, workers=1)", lambda: act.jacobian(z, workers=1), limit="np.ones"),
        Case("act.jacobian(z, out=buf)", lambda: act.jacobian(z, out=buf), limit="fill", targets={"limit": 1.2, **beat}),
        Case("act.jacobian(z, out=buf, workers=1)", lambda: act.jacobian(z, out=buf, workers=1), limit="fill"),
    ]
    if "torch" in peers:
        cases += [
            Case("torch vmap(jacrev(softmax))", P.torch_jacobian_vmap(z), kind="peer", column="torch vmap(jacrev)"),
            Case("torch outer + diagonal by hand", P.torch_jacobian_hand(z), kind="peer", column="torch hand"),
        ]
    if "jax" in peers:
        cases.append(Case("jax jit(vmap(jacrev(softmax)))", P.jax_jacobian(z), kind="peer", column="jax vmap(jacrev)"))
    if "autograd" in peers:
        cases.append(Case("autograd jacobian (K reverse passes)", P.autograd_jacobian(z), kind="peer", column="autograd"))
    if "seed" in peers:
        cases += [
            Case("seed: tensordot + repeated eye", lambda: seed.softmax_derivative(z), kind="peer", column="seed tensordot"),
            Case("seed: einsum + diagonal view", lambda: seed.da_dz_pp(z), kind="peer", column="seed einsum"),
        ]
    if "loop" in peers:
        cases.append(Case("loop: diagflat(s) − outer(s, s)", lambda: seed.loop_jacobian(z), kind="peer", column="loop"))
    return cases


# -- contract -------------------------------------------------------------------------------


def _contract_cases(N, K, dtype, peers):
    z, g = _data(N, K, dtype)
    J = jac.Softmax().jacobian(z)
    cases = [
        Case("read J once (J.sum())", lambda: J.sum(), kind="limit", column="read"),
        Case("np.matmul(g[:, None, :], J)[:, 0, :]", lambda: np.matmul(g[:, None, :], J)[:, 0, :], kind="peer", column="np.matmul"),
        Case("jacobians.contract(g, J)", lambda: jac.contract(g, J), targets={"np.matmul": 1.1}),
    ]
    if "seed" in peers:
        cases.append(Case("seed: np.einsum('ij,ijk->ik')", lambda: np.einsum("ij,ijk->ik", g, J), kind="peer", column="np.einsum"))
        import opt_einsum

        cases.append(Case("opt_einsum.contract (default path)", lambda: opt_einsum.contract("ij,ijk->ik", g, J), kind="peer", column="opt_einsum"))
    if "torch" in peers:
        cases.append(Case("torch.bmm", P.torch_contract(g, J), kind="peer", column="torch bmm"))
    if "jax" in peers:
        cases.append(Case("jax jit(einsum)", P.jax_contract(g, J), kind="peer", column="jax einsum"))
    if "loop" in peers:
        cases.append(Case("seed loop: per-sample matmul", lambda: seed.dE_dz_test2(g, J), kind="peer", column="loop"))
    return cases


# -- vjp ------------------------------------------------------------------------------------


def _vjp_cases(N, K, dtype, peers):
    z, g = _data(N, K, dtype)
    act = jac.Softmax()
    op = act.jacobian_operator(z)
    out = np.empty_like(z)
    cases = [
        Case("one pass: np.multiply(z, g, out=)", lambda: np.multiply(z, g, out=out), kind="limit", column="1 pass"),
        Case("act.vjp(z, g)", lambda: act.vjp(z, g), targets={"torch fwd+bwd": 0.8 if COMPILED else 1.0}),
        Case("g @ act.jacobian_operator(z)", lambda: g @ op, targets={"torch bwd": 1.5}),
    ]
    if "torch" in peers:
        cases += [
            Case("torch softmax + backward (1 thread)", P.torch_vjp(z, g), kind="peer", column="torch fwd+bwd"),
            Case("torch backward alone (1 thread)", P.torch_backward(z, g), kind="peer", column="torch bwd"),
        ]
    if "jax" in peers:
        cases.append(Case("jax jit(vjp(softmax))", P.jax_vjp(z, g), kind="peer", column="jax"))
    if "autograd" in peers:
        cases.append(Case("autograd make_vjp", P.autograd_vjp(z, g), kind="peer", column="autograd"))
    if "seed" in peers and N * K * K <= 64 << 20:
        cases.append(Case("seed: einsum Jacobian, then einsum", lambda: np.einsum("ij,ijk->ik", g, seed.da_dz_pp(z)), kind="peer", column="seed"))
    if "loop" in peers and N * K * K <= 64 << 20:
        cases.append(Case("loop: per-sample J, g @ J", lambda: seed.loop_vjp(z, g), kind="peer", column="loop"))
    return cases


# -- fused ----------------------------------------------------------------------------------


def _fused_cases(pair, N, K, dtype, peers):
    rng = np.random.default_rng(1)
    z, _ = _data(N, K, dtype)
    acls, lcls = PAIRS[pair]
    head = jac.Head(acls(), lcls())
    if pair == "sigmoid+binary_cross_entropy":
        y = (rng.random((N, K)) < 0.5).astype(dtype)
    else:
        y = rng.integers(0, K, size=N)
    out = np.empty_like(z)
    if COMPILED:
        targets = {"torch": 0.8, "jax": 1.0}
    else:
        targets = {"torch": 1.5 if pair == "sigmoid+binary_cross_entropy" else 1.0}
    cases = [
        Case("one pass: np.exp(z, out=)", lambda: np.exp(z, out=out), kind="limit", column="1 exp pass"),
        Case(f"{pair} fused", lambda: head.value_and_grad(z, y, "fused"), targets=targets),
    ]
    if pair == "softmax+cross_entropy":
        cases.append(Case(f"{pair} method='vjp'", lambda: head.value_and_grad(z, y, "vjp")))
        jac_case = Case(f"{pair} method='jacobian'", lambda: head.value_and_grad(z, y, "jacobian"))
        cases.append(jac_case)
        cases.append(Case("fused path again, as the reference of ×fused", lambda: head.value_and_grad(z, y, "fused"), kind="ref", column="fused"))
    if "torch" in peers:
        cases.append(Case(f"torch {_torch_name(pair)}", P.torch_fused(pair, z, y), kind="peer", column="torch"))
    if "jax" in peers:
        cases.append(Case("jax jit(value_and_grad)", P.jax_fused(pair, z, y), kind="peer", column="jax"))
    if "autograd" in peers:
        cases.append(Case("autograd value_and_grad", P.autograd_fused(pair, z, y), kind="peer", column="autograd"))
    if pair == "softmax+cross_entropy":
        if "seed" in peers and N * K * K <= 64 << 20:
            onehot = np.eye(K, dtype=dtype)[y]
            cases.append(Case("seed: softmax, dE/da, einsum J, einsum", lambda: seed.dE_dz_pp(onehot, z), kind="peer", column="seed"))
        if "loop" in peers:
            cases.append(Case("loop: per-sample softmax, (s − e_y)/N", lambda: seed.loop_softmax_ce(z, y), kind="peer", column="loop"))
    return cases


def _torch_name(pair):
    return {
        "softmax+cross_entropy": "F.cross_entropy",
        "log_softmax+nll": "F.nll_loss(F.log_softmax)",
        "sigmoid+binary_cross_entropy": "F.binary_cross_entropy_with_logits",
    }[pair]


# -- blocked --------------------------------------------------------------------------------


def _blocked_cases(N, K, dtype, max_bytes, peers):
    import peak_memory

    z, _ = _data(N, K, dtype)
    y = np.random.default_rng(1).integers(0, K, size=N)
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    dense = N * K * K * np.dtype(dtype).itemsize
    fill_bytes = min(dense, 256 << 20)
    buf = np.empty(fill_bytes // np.dtype(dtype).itemsize, dtype=dtype)

    def fill_limit(rounds):
        import time

        times = []
        for _ in range(rounds + 1):
            t0 = time.perf_counter()
            buf.fill(1.0)
            times.append((time.perf_counter() - t0) * dense / fill_bytes)
        return {"times": times[1:]}

    def subprocess_measure(rounds):
        return peak_memory.measure(N, K, dtype, max_bytes, max(2, min(rounds, 3)))

    return [
        Case(f"write {dense / 2**30:.1f} GiB once (fill, scaled)", kind="limit", column="fill", measure=fill_limit),
        Case(f"method='jacobian', max_bytes={max_bytes >> 20} MiB", measure=subprocess_measure),
        Case("method='vjp'", lambda: head.grad(z, y, "vjp")),
        Case("method='fused'", lambda: head.grad(z, y, "fused")),
    ]


# -- second order ---------------------------------------------------------------------------


def _second_order_cases(N, K, dtype, peers):
    z, v = _data(N, K, dtype)
    y = np.random.default_rng(1).integers(0, K, size=N)
    act = jac.Softmax()
    head = jac.Head(act, jac.CrossEntropy())
    out = np.empty_like(z)
    # the targets: ratios of medians, ≥ 10× faster is ≤ 0.1
    beat = {c: 0.1 for c in ("torch vmap(hessian)", "torch vmap(hessian) 1 thread", "jax vmap(hessian)")}
    cases = [
        Case("np.ones((N, K, K))", lambda: np.ones((N, K, K), dtype=dtype), kind="limit", column="np.ones"),
        Case("one pass: np.exp(z, out=)", lambda: np.exp(z, out=out), kind="limit", column="1 exp pass"),
        Case("head.hessian(z, y)", lambda: head.hessian(z, y), limit="np.ones", targets={"act.jacobian": 1.2, **beat}),
        Case("head.sqrt_ggn(z, y)", lambda: head.sqrt_ggn(z, y), limit="np.ones", targets={"act.jacobian": 1.2}),
        Case("head.hvp(z, y, v)", lambda: head.hvp(z, y, v), limit="1 exp pass", targets={"head.grad": 1.5}),
        Case("act.jacobian(z): the dense build of the same size", lambda: act.jacobian(z), kind="ref",
             column="act.jacobian", limit="np.ones"),
        Case("head.grad(z, y): the reference of ×head.grad", lambda: head.grad(z, y), kind="ref",
             column="head.grad", limit="1 exp pass"),
    ]
    if "torch" in peers:
        cases += [
            Case("torch vmap(hessian(per-sample CE))", P.torch_hessian_vmap(z, y), kind="peer",
                 column="torch vmap(hessian)"),
            Case("torch vmap(hessian(per-sample CE)), 1 thread", P.torch_hessian_vmap(z, y, threads=1), kind="peer",
                 column="torch vmap(hessian) 1 thread"),
        ]
    if "jax" in peers:
        cases.append(Case("jax jit(vmap(hessian(per-sample CE)))", P.jax_hessian_vmap(z, y), kind="peer",
                          column="jax vmap(hessian)"))
    if "backpack" in peers and "torch" in peers:
        cases.append(Case("backpack CrossEntropyLoss sqrt_hessian", P.backpack_sqrt_hessian(z, y), kind="peer",
                          column="backpack sqrt_hessian"))
    return cases


def _operator_cases(N, K, dtype, peers):
    """The structured Hessian at a vocabulary-sized K: building it should cost about one
    softmax (it once held three full-size arrays and took 10× ``head.hvp``)."""
    z, v = _data(N, K, dtype)
    y = np.random.default_rng(1).integers(0, K, size=N)
    act = jac.Softmax()
    head = jac.Head(act, jac.CrossEntropy())
    out = np.empty_like(z)
    return [
        Case("one pass: np.exp(z, out=)", lambda: np.exp(z, out=out), kind="limit", column="1 exp pass"),
        Case("head.hessian_operator(z, y)", lambda: head.hessian_operator(z, y), limit="1 exp pass",
             targets={"softmax": 1.5}),
        Case("head.hvp(z, y, v)", lambda: head.hvp(z, y, v), limit="1 exp pass"),
        Case("act(z): one softmax, the reference of ×softmax", lambda: act(z), kind="ref", column="softmax",
             limit="1 exp pass"),
    ]


# -- last layer -----------------------------------------------------------------------------


def _last_layer_problem(N, D, K, dtype, seed_=0):
    """Features X (N, D), a layer W (K, D), b (K,) with logits of unit scale, z and y."""
    rng = np.random.default_rng(seed_)
    X = rng.normal(size=(N, D)).astype(dtype)
    W = (rng.normal(size=(K, D)) / np.sqrt(D)).astype(dtype)
    b = (0.3 * rng.normal(size=K)).astype(dtype)
    return X, W, b, X @ W.T + b, rng.integers(0, K, size=N)


def _rank_one_rows(p, Xt):
    """U (N, P) with rows ``p_n ⊗ φ̃_n``: ``UᵀU`` is the sum of softmax + CE's rank-one parts."""
    return (p[:, :, None] * Xt[:, None, :]).reshape(len(p), -1)


def _scaled_peer(make, reference, rows, factor, rtol):
    """``measure(rounds)`` of a peer timed on ``rows`` rows, its times multiplied by ``factor``
    (its cost is a loop over row chunks: linear in N). The first call is the warm-up, its
    result compared with ours on the same rows (largest difference over the largest entry)."""

    def measure(rounds):
        fn = make()
        diff = float(np.abs(np.asarray(fn()) - reference).max() / np.abs(reference).max())
        times = []
        for _ in range(max(2, min(rounds, 3))):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * factor)
        agrees = "" if diff <= rtol else f" > {rtol:.0e}: DISAGREES"
        return {"times": times, "rows": rows, "scale": factor, "max_rel_diff": diff,
                "label": f"(on {rows:,} rows, × {factor:g}; vs ours {diff:.0e}{agrees})"}

    return measure


def _last_layer_cases(N, D, K, dtype, peers, peer_rows):
    X, W, b, z, y = _last_layer_problem(N, D, K, dtype)
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    p = head.activation(z)
    Xt = np.concatenate([X, np.ones((N, 1), dtype)], axis=1)
    U = _rank_one_rows(p, Xt)  # built once, outside the timed call: the limit is the product alone
    beat = {c: 1.0 for c in ("torch hessian", "torch hessian 1 thread", "backpack SqrtGGNExact")}
    cases = [
        Case("U.T @ U, U (N, P): rows p_n ⊗ φ̃_n", lambda: U.T @ U, kind="limit", column="UᵀU"),
        Case("p.T @ X̃: one O(N·K·D) product", lambda: p.T @ Xt, kind="limit", column="pᵀX̃"),
        Case("X̃.T @ X̃: K-FAC's B factor alone, O(N·D²)", lambda: Xt.T @ Xt, kind="limit", column="X̃ᵀX̃"),
        Case("linear_curvature(structure='full')", lambda: jac.linear_curvature(X, head, z, y, kind="ggn"),
             limit="UᵀU", targets={"limit": 1.5, **beat}),
        Case("linear_curvature(structure='diag')",
             lambda: jac.linear_curvature(X, head, z, y, kind="ggn", structure="diag"), limit="pᵀX̃"),
        Case("linear_curvature(structure='kron')",
             lambda: jac.linear_curvature(X, head, z, y, kind="ggn", structure="kron"), limit="pᵀX̃"),
    ]
    if "torch" in peers:
        n = min(N, peer_rows)
        Xs, ys = X[:n], y[:n]
        ours = jac.linear_curvature(Xs, head, z[:n], ys, kind="ggn")
        rtol = 1e-12 if dtype == "float64" else 1e-4
        scaled = functools.partial(_scaled_peer, reference=ours, rows=n, factor=N / n, rtol=rtol)
        cases += [
            Case("torch func.hessian(E)(θ)", kind="peer", column="torch hessian",
                 measure=scaled(lambda: P.torch_linear_hessian(Xs, W, b, ys))),
            Case("torch func.hessian(E)(θ), 1 thread", kind="peer", column="torch hessian 1 thread",
                 measure=scaled(lambda: P.torch_linear_hessian(Xs, W, b, ys, threads=1))),
        ]
        if "backpack" in peers:
            cases.append(Case("backpack SqrtGGNExact (Linear + CE), SᵀS", kind="peer",
                              column="backpack SqrtGGNExact", measure=scaled(lambda: P.backpack_linear_ggn(Xs, W, b, ys))))
    return cases


def _last_layer_memory_cases(N, D, K, dtype, max_bytes, repeats, block_rows):
    import peak_memory

    P_ = K * (D + 1)
    itemsize = np.dtype(dtype).itemsize

    def product_limit(rounds):
        n = min(N, block_rows)
        X, _, _, z, _ = _last_layer_problem(n, D, K, dtype)
        U = _rank_one_rows(jac.Softmax()(z), np.concatenate([X, np.ones((n, 1), dtype)], axis=1))
        times = []
        for _ in range(rounds + 1):
            t0 = time.perf_counter()
            U.T @ U
            times.append((time.perf_counter() - t0) * N / n)
        return {"times": times[1:]}

    def subprocess_measure(rounds):
        out = peak_memory.measure_linear_curvature(N, D, K, dtype, max_bytes, repeats)
        above = out["peak_rss_bytes"] - out["baseline_rss_bytes"]
        result = out["result_bytes"]
        out["label"] = f"+{above / 2**20:.0f} MiB over the start = max_bytes + {(above - max_bytes) / result:.2f}·P²"
        return out

    n = min(N, block_rows)
    return [
        Case(f"U.T @ U on {n:,} rows, scaled to N (P={P_:,})", kind="limit", column="UᵀU", measure=product_limit),
        Case(f"'full', max_bytes={max_bytes >> 20} MiB, P²={P_ * P_ * itemsize / 2**20:.0f} MiB", measure=subprocess_measure),
    ]
# -- dask -----------------------------------------------------------------------------------


def dask_missing() -> str | None:
    """Why the ``dask`` section cannot run, or None when dask.array and distributed import."""
    try:
        import dask.array  # noqa: F401
        import distributed  # noqa: F401
    except Exception as exc:  # not installed, or a broken install
        return f"needs dask[array] and distributed ({type(exc).__name__}: {exc}); pip install 'jacobians[dask]'"
    return None


def skipped_sections(sections) -> dict[str, str]:
    """``{section: why}`` for the requested sections that cannot run here (the runner prints
    the reason in place of the table)."""
    why = dask_missing() if "dask" in sections else None
    return {"dask": why} if why else {}


class _Cluster:
    """The section's ``LocalCluster``: two worker processes of one thread each, started on
    first use (once for the whole section) and closed by :func:`close`."""

    def __init__(self):
        self.cluster = self.client = None

    def get(self):
        if self.client is None:
            from distributed import Client, LocalCluster

            self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                        silence_logs=logging.ERROR)
            # not the default scheduler of this process: the other rows name theirs
            self.client = Client(self.cluster, set_as_default=False)
        return self.client

    def close(self):
        if self.client is not None:
            self.client.close()
            self.cluster.close()
        self.cluster = self.client = None


_CLUSTER = _Cluster()


def close() -> None:
    """Called by the runner when every group has run: closes the dask section's cluster."""
    _CLUSTER.close()


def _scatter(client, x, rows: int, workers=None):
    """``x`` split into chunks of ``rows`` rows and sent to the workers (all of them, or
    ``workers``) before timing: a dask array of those futures. Random keys (``hash=False``):
    the same data scattered again is a copy of its own, not the first one's keys."""
    import dask.array as da

    pieces = [x[i:i + rows] for i in range(0, len(x), rows)]
    futures = client.scatter(pieces, workers=workers, hash=False)
    return da.concatenate([da.from_delayed(f, shape=p.shape, dtype=p.dtype) for f, p in zip(futures, pieces)])


def _dask_cases(what, N, K, dtype, n_chunks, cluster, target=None):
    """``what``: ``'grad'`` (dE/dz, (N, K)), ``'hessian'`` (the blocks, (N, K, K)), or
    ``'hessian.sum()'`` (the blocks built and summed chunk by chunk, never held at once;
    numpy does the same row blocks in a loop, with the whole batch's denominator).
    ``target``: the largest ratio of the one-chunk ``.compute()`` row to numpy ."""
    import dask
    import dask.array as da

    rng = np.random.default_rng(0)
    z = rng.normal(size=(N, K)).astype(dtype, copy=False)
    y = rng.integers(0, K, size=N)
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    rows = -(-N // n_chunks)
    if what == "grad":
        def call(zz, yy):
            return head.grad(zz, yy)

        out = np.empty_like(z)
        limit = Case("one pass: np.exp(z, out=)", lambda: np.exp(z, out=out), kind="limit", column="1 exp pass")
        reference = Case("numpy head.grad(z, y)", lambda: head.grad(z, y), kind="ref", column="numpy")
    elif what == "hessian":
        def call(zz, yy):
            return head.hessian(zz, yy)

        limit = Case("np.ones((N, K, K))", lambda: np.ones((N, K, K), dtype=dtype), kind="limit", column="np.ones")
        reference = Case("numpy head.hessian(z, y)", lambda: head.hessian(z, y), kind="ref", column="numpy")
    else:
        def call(zz, yy):
            return head.hessian(zz, yy).sum()

        piece = jac.Head(head.activation, head.loss_fn.with_denominator(N))
        buf = np.empty((rows, K, K), dtype=dtype)

        def numpy_blocks():
            return sum(float(piece.hessian(z[i:i + rows], y[i:i + rows]).sum()) for i in range(0, N, rows))

        def fill():
            for _ in range(0, N, rows):
                buf.fill(1.0)

        limit = Case("write the blocks once, a chunk at a time (fill)", fill, kind="limit", column="fill")
        reference = Case(f"numpy: the same {n_chunks} row blocks in a loop, each summed", numpy_blocks,
                         kind="ref", column="numpy")
    reduced = what == "hessian.sum()"
    one_chunk = (da.from_array(z, chunks=(N, K)), da.from_array(y, chunks=N))
    chunked = (da.from_array(z, chunks=(rows, K)), da.from_array(y, chunks=rows))
    threads = dask.system.CPU_COUNT  # the threaded scheduler's default pool
    cases = [limit, reference]
    if not reduced:  # one chunk of 8 GB of blocks would not be a fair row
        cases += [
            Case("dask 1 chunk, synchronous: .compute()",
                 lambda: call(*one_chunk).compute(scheduler="synchronous"),
                 targets={} if target is None else {"numpy": target}),
            Case("dask 1 chunk, synchronous: dask.persist (dask's final copy left out)",
                 lambda: dask.persist(call(*one_chunk), scheduler="synchronous")),
        ]
    cases.append(Case(f"dask {n_chunks} chunks, threads ({threads}): .compute()",
                      lambda: call(*chunked).compute(scheduler="threads")))
    if cluster:
        from distributed import futures_of, wait

        client = _CLUSTER.get()
        first = sorted(client.scheduler_info()["workers"])[0]
        on_both = (_scatter(client, z, rows), _scatter(client, y, rows))
        on_first = (_scatter(client, z, rows, [first]), _scatter(client, y, rows, [first]))
        only = {"workers": [first], "allow_other_workers": False}

        calls = itertools.count()

        def fresh(data):
            """The data under new names (``np.asarray`` of each chunk: the same buffers), so that
            every call's graph has keys of its own: the same keys again would be served from
            the previous round's results if the scheduler still held them."""
            n = next(calls)
            return tuple(x.map_blocks(np.asarray, name=f"{x.name}-call-{n}", dtype=x.dtype) for x in data)

        def compute(data, **kw):
            return client.compute(call(*fresh(data)), **kw).result()

        def persist(data, **kw):
            futures = futures_of(client.persist(call(*fresh(data)), **kw))
            with client.as_current():  # wait() asks for the current client (it is not the default)
                wait(futures)  # the results are released when the futures go, on return

        cases += [
            Case("LocalCluster, 1 worker: client.compute(...).result()", lambda: compute(on_first, **only),
                 kind="ref", column="1 worker .compute"),
            Case("LocalCluster, 2 workers: client.compute(...).result()", lambda: compute(on_both)),
        ]
        if not reduced:  # a scalar: nothing to leave on the workers
            cases += [
                Case("LocalCluster, 1 worker: persist (results left on the worker)", lambda: persist(on_first, **only),
                     kind="ref", column="1 worker persist"),
                Case("LocalCluster, 2 workers: persist (results left on the workers)", lambda: persist(on_both)),
            ]
    return cases


#: (what, N, K, chunks) of the dask section: 800 MB of float64 logits for the gradient;
#: 800 MB of Hessian blocks when they are returned; 8 GB of blocks (80 GB at 10⁶ × 100
#: could not be built in the time of a benchmark) when they are summed chunk by chunk
DASK_SIZES = [("grad", 10**7, 10, 8), ("grad", 10**6, 100, 8),
              ("hessian", 10**6, 10, 8), ("hessian", 10**4, 100, 8),
              ("hessian.sum()", 10**7, 10, 10), ("hessian.sum()", 10**5, 100, 10)]
DASK_SIZES_QUICK = [("grad", 20_000, 10, 4), ("grad", 2_000, 100, 4),
                    ("hessian", 2_000, 10, 4), ("hessian", 200, 100, 4),
                    ("hessian.sum()", 20_000, 10, 4), ("hessian.sum()", 2_000, 100, 4)]
DASK_NOTES = {
    "cluster": "LocalCluster(n_workers=2, threads_per_worker=1), started once for the section; z and y are "
    "scattered to the workers before timing (the chunks spread over both, and a copy on the first worker "
    "alone for the 1-worker rows, restricted to it); .compute() gathers the result into this process, "
    "persist leaves it on the workers",
    "quick": "--quick: no LocalCluster (its start takes seconds); synchronous and threaded schedulers only",
    "sum": "hessian.sum(): the blocks are built and summed chunk by chunk, never held at once; numpy sums "
    "the same row blocks in a loop (loss.with_denominator(N))",
}
#: the dask path at one chunk within 1.2× of numpy at 10⁶ × 100 (head.grad)
DASK_TARGETS = {("grad", 10**6, 100): 1.2}


def dask_groups(dtype, *, quick, cluster=None) -> list[Group]:
    """The dask section's groups (``cluster``: with the LocalCluster rows; default: not in --quick)."""
    cluster = (not quick) if cluster is None else cluster
    groups = []
    for what, N, K, n_chunks in DASK_SIZES_QUICK if quick else DASK_SIZES:
        note = DASK_NOTES["sum"] if what == "hessian.sum()" else DASK_NOTES["cluster" if cluster else "quick"]
        target = None if quick else DASK_TARGETS.get((what, N, K))
        groups.append(Group(section="dask", size=f"{N}x{K} {what}", dtype=dtype, note=note, ref_ratios=True,
                            build=functools.partial(_dask_cases, what, N, K, dtype, n_chunks, cluster, target)))
    return groups


# -- entmax ---------------------------------------------------------------------------------


def _entmax_cases(N, K, dtype, peers):
    z, g = _data(N, K, dtype)
    out = np.empty_like(z)
    cases = [
        Case("one pass: np.multiply(z, g, out=)", lambda: np.multiply(z, g, out=out), kind="limit", column="1 pass"),
        Case("Entmax15().vjp(z, g) (closed form, sort-based)", lambda: jac.Entmax15().vjp(z, g), kind="ref", column="entmax15"),
        Case("Entmax(1.5).vjp(z, g)", lambda: jac.Entmax(1.5).vjp(z, g), targets={"entmax15": 3.0, "entmax_bisect": 1.0}),
        Case("Entmax(1.3).vjp(z, g)", lambda: jac.Entmax(1.3).vjp(z, g)),
        Case("Entmax(2.5).vjp(z, g)", lambda: jac.Entmax(2.5).vjp(z, g)),
    ]
    if "entmax_bisect" in peers:
        cases.append(Case("entmax_bisect(z, 1.5) + backward (torch, 1 thread)", P.entmax_bisect_vjp(z, g, 1.5),
                          kind="peer", column="entmax_bisect"))
    return cases


# -- the plan -------------------------------------------------------------------------------


def backend_plan(backend, *, sections, dtypes, quick, sizes=None, device="cpu", threads=None):
    """``(framework description, groups)`` of ``--backend torch|jax``: see ``backend_suite.py``."""
    return backend_suite.plan(backend, sections=sections, dtypes=dtypes, quick=quick, sizes=sizes, device=device,
                              threads=threads)


def backend_titles(backend) -> dict[str, str]:
    return backend_suite.titles(backend)


def plan(*, sections, dtypes, quick, peers, sizes=None) -> list[Group]:
    """The groups to run, in order. ``sizes``: ``[(N, K), ...]`` in place of the jacobian,
    contract, vjp, fused, entmax and second_order sections' own (without the vocabulary-sized
    operator group): a smoke run."""
    groups: list[Group] = []
    big = [(256, 100), (32, 1000)] if quick else [(1024, 100), (256, 1000)]
    small = [(1024, 10), (256, 100), (64, 1000)] if quick else [(4096, 10), (1024, 100), (256, 1000)]
    if sizes:
        big = small = list(sizes)
    one_thread = functools.partial(P.torch_threads, 1) if "torch" in peers else None
    for dtype in dtypes:
        if "jacobian" in sections:
            groups += [_group("jacobian", N, K, dtype, functools.partial(_jacobian_cases, N, K, dtype, peers)) for N, K in big]
        if "contract" in sections:
            groups += [_group("contract", N, K, dtype, functools.partial(_contract_cases, N, K, dtype, peers)) for N, K in big]
        if "vjp" in sections:
            groups += [
                _group("vjp", N, K, dtype, functools.partial(_vjp_cases, N, K, dtype, peers), context=one_thread)
                for N, K in small
            ]
        if "fused" in sections:
            for pair in PAIRS:
                groups += [
                    Group(section="fused", size=f"{N}x{K}", dtype=dtype,
                          build=functools.partial(_fused_cases, pair, N, K, dtype, peers), note="")
                    for N, K in small
                ]
        if "entmax" in sections:
            entmax_sizes = small if sizes else [(256, 100)] if quick else [(1024, 100)]
            threads = functools.partial(P.torch_threads, 1) if "entmax_bisect" in peers else None
            groups += [_group("entmax", N, K, dtype, functools.partial(_entmax_cases, N, K, dtype, peers), context=threads)
                       for N, K in entmax_sizes]
        if "heads" in sections:
            groups += heads_suite.groups(dtype, quick=quick, peers=peers, sizes=sizes)
        if "laplace" in sections:
            groups += laplace_suite.groups(dtype, quick=quick, peers=peers, sizes=sizes)
        if "blocked" in sections:
            N, K, mb = (2000, 256, 32 << 20) if quick else (20000, 256, 256 << 20)
            groups.append(_group("blocked", N, K, dtype, functools.partial(_blocked_cases, N, K, dtype, mb, peers),
                                 note="peak RSS of the whole subprocess (python, numpy, z, y, dE/dz included)"))
        if "second_order" in sections:
            groups += [
                _group("second_order", N, K, dtype, functools.partial(_second_order_cases, N, K, dtype, peers))
                for N, K in big
            ]
            if not sizes:
                N, K = (256, 8192) if quick else (1024, 50_304)  # a language model's vocabulary
                groups.append(_group("second_order", N, K, dtype, functools.partial(_operator_cases, N, K, dtype, peers)))
        if "last_layer" in sections:
            N, D, K, peer_rows = (5000, 32, 10, 1000) if quick else (50_000, 128, 10, 5000)
            groups.append(Group(section="last_layer", size=f"{N}x{D},K={K}", dtype=dtype,
                                build=functools.partial(_last_layer_cases, N, D, K, dtype, peers, peer_rows),
                                note=f"peers: timed on the first {peer_rows:,} rows (a loop over row chunks, linear in N), "
                                     "times scaled to N; 'vs ours': their largest difference from our result on those "
                                     "rows over its largest entry"))
            # the memory run: float32 as measured for the targets (float64 only when float32 is not asked for)
            if quick or dtype == "float32" or "float32" not in dtypes:
                N, D, K, mb, repeats = (4000, 32, 50, 32 << 20, 2) if quick else (200_000, 64, 100, 256 << 20, 1)
                groups.append(Group(section="last_layer", size=f"{N}x{D},K={K}", dtype=dtype,
                                    build=functools.partial(_last_layer_memory_cases, N, D, K, dtype, mb, repeats, 10_000),
                                    note="peak RSS of the whole subprocess; 'over the start': above its peak with the data "
                                         "in memory and the code paths warmed up"))
    if "dask" in sections and not skipped_sections(sections):
        groups += dask_groups(dtypes[0], quick=quick)  # 800 MB arrays: one dtype (float64 unless --dtypes)
    order = {s: i for i, s in enumerate(sections)}
    groups.sort(key=lambda g: order[g.section])
    return groups

