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
* ``entmax`` — α-entmax forward + VJP, ``Entmax(1.5).vjp(z, g)``, against the closed form
  ``Entmax15().vjp(z, g)`` (target: within 3×) and the entmax package's ``entmax_bisect``
  forward + backward, torch with one thread (target: ahead); ``Entmax(1.3)`` (no closed
  form) and ``Entmax(2.5)`` beside them.

The limits are one-thread numpy operations that move the same bytes: the least any
implementation must pay. Targets (from issue 5) are attached to our rows and reported
as met or not met.
"""

from __future__ import annotations

import functools

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
    "entmax": "α-entmax forward + VJP, act.vjp(z, g), against 1.5-entmax's closed form and entmax_bisect "
              "(torch 1 thread)",
}

PAIRS = {
    "softmax+cross_entropy": (jac.Softmax, jac.CrossEntropy),
    "log_softmax+nll": (jac.LogSoftmax, jac.NLLLoss),
    "sigmoid+binary_cross_entropy": (jac.Sigmoid, jac.BinaryCrossEntropy),
}


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
        Case("act.vjp(z, g)", lambda: act.vjp(z, g), targets={"torch fwd+bwd": 1.0}),
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
    torch_target = 1.5 if pair == "sigmoid+binary_cross_entropy" else 1.0
    cases = [
        Case("one pass: np.exp(z, out=)", lambda: np.exp(z, out=out), kind="limit", column="1 exp pass"),
        Case(f"{pair} fused", lambda: head.value_and_grad(z, y, "fused"), targets={"torch": torch_target}),
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


def plan(*, sections, dtypes, quick, peers) -> list[Group]:
    """The groups to run, in order."""
    groups: list[Group] = []
    big = [(256, 100), (32, 1000)] if quick else [(1024, 100), (256, 1000)]
    small = [(1024, 10), (256, 100), (64, 1000)] if quick else [(4096, 10), (1024, 100), (256, 1000)]
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
            sizes = [(256, 100)] if quick else [(1024, 100)]
            threads = functools.partial(P.torch_threads, 1) if "entmax_bisect" in peers else None
            groups += [_group("entmax", N, K, dtype, functools.partial(_entmax_cases, N, K, dtype, peers), context=threads)
                       for N, K in sizes]
        if "blocked" in sections:
            N, K, mb = (2000, 256, 32 << 20) if quick else (20000, 256, 256 << 20)
            groups.append(_group("blocked", N, K, dtype, functools.partial(_blocked_cases, N, K, dtype, mb, peers),
                                 note="peak RSS of the whole subprocess (python, numpy, z, y, dE/dz included)"))
    order = {s: i for i, s in enumerate(sections)}
    groups.sort(key=lambda g: order[g.section])
    return groups

