"""Plackett–Luce ranking loss (issue 21, item 5): values, gradients and Hessians against a plain
torch float64 reference (a loop over the steps with torch.logsumexp, autograd,
torch.func.hessian), ragged rankings, Bradley–Terry, the exact factor, the operator's memory,
the Fisher kinds, errors and extreme scores. No expected value is taken from the code itself."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from plackett_luce_reference import plackett_luce_longdouble

import jacobians as jac
from jacobians import curvature
from jacobians.operators.ranking import SimplexBlockSum

torch = pytest.importorskip("torch")

REDUCTIONS = ("mean", "sum", "none")


# -- the torch reference -------------------------------------------------------------------------


def _torch_rows(z, y):
    """Each row's loss, one step at a time: logsumexp over the candidates not yet placed."""
    M = z.shape[-1]
    out = []
    for n in range(z.shape[0]):
        left = list(range(M))
        total = z.new_zeros(())
        for c in y[n]:
            c = int(c)
            if c < 0:
                break
            total = total + torch.logsumexp(z[n, left], 0) - z[n, c]
            left.remove(c)
        out.append(total)
    return torch.stack(out)


def _reduce(v, reduction):
    return {"mean": v.mean, "sum": v.sum, "none": lambda: v}[reduction]()


def torch_reference(z, y, reduction):
    """(value, grad, Hessian blocks) in float64: autograd and torch.func.hessian of the reduced
    loss of the flattened batch."""
    M = z.shape[-1]
    z2 = torch.tensor(np.asarray(z, np.float64).reshape(-1, M), requires_grad=True)
    y2 = np.asarray(y).reshape(z2.shape[0], -1)
    value = _reduce(_torch_rows(z2, y2), reduction)
    summed = value.sum()  # 'none': the Jacobian of each row's loss is its own row's gradient
    (grad,) = torch.autograd.grad(summed, z2)
    H = torch.func.hessian(lambda x: _reduce(_torch_rows(x, y2), reduction).sum())(z2.detach())
    n = z2.shape[0]
    blocks = torch.stack([H[i, :, i, :] for i in range(n)])
    value = value.detach()
    return (value.numpy().reshape(np.shape(z)[:-1]) if reduction == "none" else value.item(),
            grad.numpy().reshape(np.shape(z)), blocks.numpy().reshape(np.shape(z) + (M,)))


def rankings(rng, batch, M, R, ragged=True):
    """Random top-R rankings; with ``ragged`` some rows end early in −1 (one row all −1)."""
    n = math.prod(batch)
    y = np.argsort(rng.random((n, M)), axis=-1)[:, :R].astype(np.int64)
    if ragged and n > 1:
        for r in range(n):
            y[r, (r * 7) % (R + 1):] = -1 if r % 3 == 1 else y[r, (r * 7) % (R + 1):]
        y[1] = -1
    return y.reshape(tuple(batch) + (R,))


def _close(got, want, rtol=1e-12):
    want = np.asarray(want)
    scale = max(float(np.abs(want).max(initial=0.0)), 1e-300)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


CASES = [((5,), 4, 4), ((2, 3), 5, 2), ((6,), 6, 3), ((4,), 3, 1), ((3,), 2, 2), ((1,), 1, 1)]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("batch", "M", "R"), CASES, ids=[f"{b}-M{m}-R{r}" for b, m, r in CASES])
def test_values_gradients_and_hessians_match_torch(batch, M, R, reduction):
    rng = np.random.default_rng(M * 10 + R)
    z = rng.normal(size=batch + (M,)) * 2
    y = rankings(rng, batch, M, R)
    value, grad, H = torch_reference(z, y, reduction)
    head = jac.Head(jac.Identity(), jac.PlackettLuce(reduction=reduction))
    assert head.method == "fused" and head.ggn_is_hessian
    _close(head.loss(z, y), value)
    for method in ("auto", "fused", "vjp", "jacobian"):
        v, g = head.value_and_grad(z, y, method=method)
        _close(v, value)
        _close(g, grad)
    for method in ("auto", "fused", "chain"):
        _close(head.hessian(z, y, method=method), H)
    v = rng.normal(size=z.shape)
    _close(head.hvp(z, y, v), np.einsum("...ij,...j->...i", H, v))
    _close(head.ggn(z, y), H)
    S = head.sqrt_ggn(z, y)
    assert S.shape == z.shape + (R * M,)
    _close(S @ np.swapaxes(S, -1, -2), H)
    lam = np.linalg.eigvalsh(head.ggn(z, y).reshape(-1, M, M))
    assert lam.min() >= -1e-14 * max(1.0, np.abs(lam).max())  # PSD
    # the loss alone (a = z) gives the same
    loss = jac.PlackettLuce(reduction=reduction)
    _close(loss(z, y), value)
    _close(loss.grad(z, y), grad)
    _close(loss.hessian(z, y), H)


def test_a_loop_reference_agrees_with_torch():
    rng = np.random.default_rng(1)
    z, y = rng.normal(size=(6, 5)), rankings(rng, (6,), 5, 3)
    values, grads, denom = jac.PlackettLuce.loop_reference(jac.PlackettLuce(), z, y)
    want_v, want_g, _ = torch_reference(z, y, "none")
    _close(values, want_v)
    _close(grads, want_g)
    assert denom == 6


def test_ragged_rows_are_their_top_r_rankings():
    """A row padded with −1 is the top-R_n ranking of its own entries, and 'mean' divides by the
    rows (all −1 rows included: rows, not placements)."""
    rng = np.random.default_rng(2)
    z = rng.normal(size=(3, 5))
    y = np.array([[3, 1, 4], [2, -1, -1], [-1, -1, -1]])
    none = jac.PlackettLuce(reduction="none")
    rows = [none(z[:1], y[:1, :3])[0], none(z[1:2], y[1:2, :1])[0], 0.0]
    np.testing.assert_allclose(none(z, y), rows, rtol=1e-15)
    assert none(z[2:], y[2:])[0] == 0 and not none.grad(z[2:], y[2:]).any()
    np.testing.assert_allclose(jac.PlackettLuce()(z, y), sum(rows) / 3, rtol=1e-15)
    assert float(jac.PlackettLuce().reduction_scale(z, y)) == 1 / 3
    # a full ranking's last placement is no choice: R = M equals R = M − 1
    full = np.array([[3, 1, 4, 0, 2]])
    np.testing.assert_allclose(none(z[:1], full), none(z[:1], full[:, :4]), rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bradley_terry_is_two_candidates_one_step(dtype):
    rng = np.random.default_rng(3)
    z = (rng.normal(size=(50, 2)) * 3).astype(dtype)
    chosen = rng.integers(0, 2, size=50)
    y = chosen[:, None]
    zt = torch.tensor(z.astype(np.float64))
    ct = torch.tensor(chosen)
    diff = zt.gather(1, ct[:, None])[:, 0] - zt.gather(1, (1 - ct)[:, None])[:, 0]
    want = -torch.nn.functional.logsigmoid(diff)
    head = jac.Head(jac.Identity(), jac.PlackettLuce(reduction="none"))
    got = head.loss(z, y)
    assert got.dtype == dtype
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(got, want.numpy(), rtol=rtol, atol=rtol * 1e-3)
    # the full ranking of the two is the same model
    full = np.stack([chosen, 1 - chosen], axis=-1)
    np.testing.assert_allclose(head.loss(z, full), got, rtol=rtol)
    # its gradient: (σ(d) − 1) on the chosen one, the opposite on the other
    s = torch.sigmoid(diff).numpy()
    g = head.grad(z, y)
    np.testing.assert_allclose(g[np.arange(50), chosen], s - 1, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(g[np.arange(50), 1 - chosen], 1 - s, rtol=rtol, atol=rtol)


# -- the operator ----------------------------------------------------------------------------------


def test_the_hessian_operator_holds_no_m_by_m_block():
    rng = np.random.default_rng(4)
    N, M, R = 64, 40, 3
    z, y = rng.normal(size=(N, M)), rankings(rng, (N,), M, R)
    head = jac.Head(jac.Identity(), jac.PlackettLuce())
    op = head.hessian_operator(z, y)
    assert isinstance(op, SimplexBlockSum) and op.shape == (N, M, M)
    held = [x for x in vars(op).values() if isinstance(x, np.ndarray)]
    for part in op.ops:
        held += [x for x in (part.weights, part.total, part._w_factor, part._root_d) if x is not None]
    assert held and all(x.size <= N * M * R for x in held)
    assert op.nbytes <= 3 * N * M * R * 8 < op.dense_nbytes
    # products, diagonal and transpose without the dense blocks, each against the dense form
    H = op.dense()
    v = rng.normal(size=(N, M))
    np.testing.assert_allclose(op @ v, np.einsum("nij,nj->ni", H, v), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(v @ op, np.einsum("ni,nij->nj", v, H), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(op.diagonal(), np.einsum("nii->ni", H), rtol=1e-12, atol=1e-15)
    X = rng.normal(size=(N, M, 2))
    np.testing.assert_allclose(op.matmat(X), H @ X, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(jac.operators.as_low_rank(op).dense(), H, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(op[2:5].dense(), H[2:5], rtol=0, atol=0)
    np.testing.assert_allclose(op.scaled(3.0).dense(), 3 * H, rtol=1e-14, atol=1e-17)
    np.testing.assert_array_equal(H, np.swapaxes(H, -1, -2))  # symmetric to the bit
    S = op.sqrt()
    assert S.shape == (N, M, R * M)
    np.testing.assert_allclose(S @ np.swapaxes(S, -1, -2), H, rtol=1e-12, atol=1e-15)


# -- the Fisher ------------------------------------------------------------------------------------


def _ce_hessian(z):
    """torch.func.hessian of softmax cross-entropy's row loss (its Fisher for one choice)."""
    zt = torch.tensor(z)
    f = lambda x: torch.nn.functional.cross_entropy(x[None], torch.tensor([0]))  # noqa: E731
    return np.stack([torch.func.hessian(f)(zt[n]).numpy() for n in range(z.shape[0])])


def _enumerated_fisher(z, R):
    """E_π[Hessian(π)] over every top-R ranking π, with its Plackett–Luce probability: the exact
    Fisher by brute force (small M)."""
    M = z.shape[-1]
    out = np.zeros((z.shape[0], M, M))
    for n in range(z.shape[0]):
        w = np.exp(z[n] - z[n].max())
        for pi in itertools.permutations(range(M), R):
            left, prob, H = list(range(M)), 1.0, np.zeros((M, M))
            for c in pi:
                p = np.zeros(M)
                p[left] = w[left] / w[left].sum()
                prob *= p[c]
                H += np.diag(p) - np.outer(p, p)
                left.remove(c)
            out[n] += prob * H
    return out


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_exact_fisher_of_one_step_is_softmax_cross_entropys(reduction):
    rng = np.random.default_rng(5)
    z = rng.normal(size=(6, 4))
    y = rankings(rng, (6,), 4, 1, ragged=False)
    y[2] = -1  # a row of no step: no curvature
    head = jac.Head(jac.Identity(), jac.PlackettLuce(reduction=reduction))
    c = 1 / 6 if reduction == "mean" else 1.0
    want = c * _ce_hessian(z)
    want[2] = 0
    for kind in ("exact", "fisher"):
        _close(head.fisher(z, y, kind=kind), want)
    # one step: the Fisher is the Hessian (it does not depend on the choice)
    _close(head.hessian(z, y), want)
    # M = 2: a full ranking is one step too
    z2 = rng.normal(size=(3, 2))
    full = np.array([[0, 1], [1, 0], [1, -1]])
    _close(head.fisher(z2, full), (1 / 3 if reduction == "mean" else 1.0) * _ce_hessian(z2))


def test_exact_fisher_of_more_steps_is_refused_clearly():
    rng = np.random.default_rng(6)
    z = rng.normal(size=(3, 4))
    head = jac.Head(jac.Identity(), jac.PlackettLuce())
    y = np.array([[0, 1], [2, -1], [1, 3]])
    with pytest.raises(ValueError, match=r"no closed-form exact Fisher.*R = 2 of M = 4.*kind='mc'"):
        head.fisher(z, y)
    # without targets: one choice a row, softmax cross-entropy's Fisher
    _close(head.fisher(z), _ce_hessian(z) / 3)
    tanh = jac.Head(jac.Tanh(), jac.PlackettLuce())  # the chain rule's Fisher reads the targets too
    with pytest.raises(ValueError, match="no closed-form exact Fisher"):
        tanh.fisher(z, y)
    one = np.array([[0, -1], [2, -1], [1, -1]])
    J = jac.Tanh().jacobian(z)
    F = np.swapaxes(J, -1, -2) @ _ce_hessian(np.tanh(z)) @ J / 3
    _close(tanh.fisher(z, one), F)
    with pytest.raises(ValueError, match="no closed-form exact Fisher"):
        jac.linear_curvature(rng.normal(size=(3, 2)), head, z, y, kind="fisher")


def _mc_error(head, z, y, exact, M, seed):
    """(error of the mean of M draws, its standard error), Frobenius norms over the batch."""
    S = head.sqrt_ggn_sampled(z, mc_samples=M, seed=seed, y=y)
    draws = np.einsum("nim,njm->nijm", S, S) * M
    se = np.sqrt(((draws - draws.mean(axis=-1, keepdims=True)) ** 2).sum() / M / M)
    return np.sqrt(((draws.mean(axis=-1) - exact) ** 2).sum()), se, S


def test_monte_carlo_fisher_converges_to_the_exact_one_at_one_step():
    rng = np.random.default_rng(7)
    z = rng.normal(size=(3, 4))
    y = rankings(rng, (3,), 4, 1, ragged=False)
    head = jac.Head(jac.Identity(), jac.PlackettLuce())
    exact = _ce_hessian(z) / 3
    err, se, S = _mc_error(head, z, y, exact, 20000, 11)
    assert S.shape == (3, 4, 20000)
    assert 1e-3 * se <= err <= 6 * se
    np.testing.assert_allclose(head.fisher(z, y, kind="mc", mc_samples=20000, seed=11), S @ np.swapaxes(S, -1, -2))
    err_small = _mc_error(head, z, y, exact, 500, 12)[0]
    assert err < err_small  # more draws, closer


@pytest.mark.parametrize("R", [2, 3])
def test_monte_carlo_fisher_of_top_r_rankings_averages_to_the_enumerated_expectation(R):
    """For R > 1 the sampled rankings are Gumbel top-R draws of each row's own R: their mean
    outer product matches E_π[H(π)] enumerated over every ranking (the exact Fisher the
    package refuses to give in closed form)."""
    rng = np.random.default_rng(8 + R)
    z = rng.normal(size=(3, 4))
    y = rankings(rng, (3,), 4, R, ragged=False)
    y[1, 1:] = -1  # a row of one step
    head = jac.Head(jac.Identity(), jac.PlackettLuce(reduction="sum"))
    exact = np.stack([_enumerated_fisher(z[n:n + 1], int((y[n] >= 0).sum()))[0] for n in range(3)])
    err, se, _ = _mc_error(head, z, y, exact, 20000, 5)
    assert err <= 6 * se
    # a wrong R (one choice, no targets) is far off
    far, se_far, _ = _mc_error(head, z, None, exact, 20000, 5)
    assert far > 10 * se_far


def test_sampled_rankings_follow_the_model():
    loss = jac.PlackettLuce()
    a = np.array([[1.0, 0.0, -0.5, 2.0]])
    n = 40000
    u = curvature.row_uniforms(3, 0, n, 4)
    r = loss.sample_targets(np.repeat(a, n, axis=0), u, np.tile(np.arange(4), (n, 1)))  # full rankings
    assert r.shape == (n, 4) and all(sorted(row) == [0, 1, 2, 3] for row in r[:50])
    np.testing.assert_array_equal(loss.sample_targets(np.repeat(a, n, axis=0), u), r[:, :1])  # no y: one choice
    p = np.exp(a[0]) / np.exp(a[0]).sum()
    np.testing.assert_allclose(np.bincount(r[:, 0], minlength=4) / n, p, atol=0.01)
    # second place given first = 3: the softmax over the others
    second = r[r[:, 0] == 3, 1]
    q = np.exp(a[0, :3]) / np.exp(a[0, :3]).sum()
    np.testing.assert_allclose(np.bincount(second, minlength=4)[:3] / second.size, q, atol=0.015)
    # with targets: each row keeps its own R, padded with −1
    y = np.array([[2, 0, -1], [1, -1, -1]])
    drawn = loss.sample_targets(np.array([[0.0, 1, 2, 3], [3.0, 2, 1, 0]]), u[:2], y)
    assert drawn.shape == (2, 3) and (drawn[0, 2], drawn[1, 1], drawn[1, 2]) == (-1, -1, -1)
    assert drawn[0, 0] != drawn[0, 1] and min(drawn[0, :2].min(), drawn[1, 0]) >= 0


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empirical_fisher_is_the_outer_product_of_the_row_gradients(reduction):
    rng = np.random.default_rng(9)
    z, y = rng.normal(size=(5, 4)), rankings(rng, (5,), 4, 3)
    _, g, _ = torch_reference(z, y, "none")
    c = 1 / 5 if reduction == "mean" else 1.0
    head = jac.Head(jac.Identity(), jac.PlackettLuce(reduction=reduction))
    _close(head.fisher(z, y, kind="empirical"), c * np.einsum("ni,nj->nij", g, g))


# -- checks, last layer, Dask, other activations -------------------------------------------------------


def test_checks_pass_with_the_example_targets_and_with_longer_rankings():
    head = jac.Head(jac.Identity(), jac.PlackettLuce())
    for report in (jac.check_head(head), jac.check_second_order(head), jac.checks.check_extreme(head),
                   jac.checks.check_second_order_extreme(head)):
        assert report.passed, report
        assert report.missing == []
    rng = np.random.default_rng(10)
    z, y = rng.normal(size=(6, 5)), rankings(rng, (6,), 5, 4)
    assert jac.check_head(head, z, y).passed
    report = jac.check_second_order(head, z, y)
    # every row but the two that need the exact Fisher (the Monte-Carlo one's reference and
    # sqrt_fisher's factor), refused for R > 1 with the clear error
    assert sorted(r.compared for r in report.failures) == ["F: mc vs exact", "SSᵀ: sqrt_fisher vs fisher"], report
    assert all("no closed-form exact Fisher" in r.note for r in report.failures), report
    assert all(r.passed for r in report.rows
               if r.compared.startswith(("H", "GGN", "SS", "F: empirical")) and r.method != "sqrt_fisher")
    assert any(r.compared.startswith("SS") and r.passed for r in report.rows)  # sqrt_ggn's rows are there


@pytest.mark.parametrize("kind", ["hessian", "ggn", "fisher_mc", "empirical_fisher"])
def test_last_layer_curvature_of_top_r_rankings(kind):
    rng = np.random.default_rng(12)
    N, D, M = 6, 3, 4
    X = rng.normal(size=(N, D))
    z, y = rng.normal(size=(N, M)), rankings(rng, (N,), M, 3)
    head = jac.Head(jac.Identity(), jac.PlackettLuce())
    if kind == "fisher_mc":
        S = head.sqrt_ggn_sampled(z, 7, seed=3, y=y)
        blocks = S @ np.swapaxes(S, -1, -2)
    elif kind == "empirical_fisher":
        blocks = head.fisher(z, y, kind="empirical")
    else:
        blocks = torch_reference(z, y, "mean")[2]
    Xt = np.concatenate([X, np.ones((N, 1))], axis=1)
    full = sum(np.kron(blocks[n], np.outer(Xt[n], Xt[n])) for n in range(N))  # the loop reference
    got = jac.linear_curvature(X, head, z, y, kind=kind, mc_samples=7, seed=3)
    np.testing.assert_allclose(got, full, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(jac.linear_curvature(X, head, z, y, kind=kind, structure="diag", mc_samples=7, seed=3),
                               np.diag(full).reshape(M, D + 1), rtol=1e-10, atol=1e-14)


def test_dask_arrays_of_rows():
    da = pytest.importorskip("dask.array", reason="the dask extra is not installed: python -m pip install -e '.[dask]'")
    rng = np.random.default_rng(13)
    z, y = rng.normal(size=(7, 5)), rankings(rng, (7,), 5, 3)
    zd, yd = da.from_array(z, chunks=(3, 5)), da.from_array(y, chunks=(3, 3))
    head = jac.Head(jac.Identity(), jac.PlackettLuce())
    value, grad, H = torch_reference(z, y, "mean")
    np.testing.assert_allclose(float(head.loss(zd, yd).compute()), value, rtol=1e-12)
    np.testing.assert_allclose(head.grad(zd, yd).compute(), grad, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(head.hessian(zd, yd).compute(), H, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(head.sqrt_ggn_sampled(zd, 4, seed=2, y=yd).compute(),
                               head.sqrt_ggn_sampled(z, 4, seed=2, y=y), rtol=1e-14)


def test_with_another_activation_the_chain_rule_holds():
    """Scores tanh(z): the gradient and Hessian through the chain rule, against torch."""
    rng = np.random.default_rng(14)
    z, y = rng.normal(size=(4, 4)), rankings(rng, (4,), 4, 3)
    head = jac.Head(jac.Tanh(), jac.PlackettLuce())
    zt = torch.tensor(z, requires_grad=True)
    f = lambda x: _torch_rows(torch.tanh(x), y).mean()  # noqa: E731
    (g,) = torch.autograd.grad(f(zt), zt)
    H = torch.func.hessian(f)(zt.detach())
    _close(head.grad(z, y), g.numpy())
    _close(head.hessian(z, y), np.stack([H[i, :, i, :].numpy() for i in range(4)]))
    G = head.ggn(z, y)
    assert np.linalg.eigvalsh(G).min() >= -1e-14


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_torch_and_array_api_strict_arrays_match_the_torch_reference(reduction):
    rng = np.random.default_rng(17)
    z, y = rng.normal(size=(2, 3, 5)), rankings(rng, (2, 3), 5, 3)
    value, grad, H = torch_reference(z, y, reduction)
    head = jac.Head(jac.Identity(), jac.PlackettLuce(reduction=reduction))
    S_np = head.sqrt_ggn(z, y)
    mc_np = head.sqrt_ggn_sampled(z, 5, seed=4, y=y)
    namespaces = [(torch.tensor, lambda x: x.numpy())]
    xps = pytest.importorskip("array_api_strict")
    namespaces.append((xps.asarray, np.from_dlpack))
    for to, back in namespaces:
        zt, yt = to(z), to(y)
        v, g = head.value_and_grad(zt, yt)
        _close(back(v) if reduction == "none" else float(v), value)
        _close(back(g), grad)
        _close(back(head.hessian(zt, yt)), H)
        _close(back(head.hvp(zt, yt, zt)), np.einsum("...ij,...j->...i", H, z))
        _close(back(head.sqrt_ggn(zt, yt)), S_np)
        np.testing.assert_allclose(back(head.sqrt_ggn_sampled(zt, 5, seed=4, y=yt)), mc_np, rtol=1e-12, atol=1e-15)
        with pytest.raises(ValueError, match="no closed-form exact Fisher"):
            head.fisher(zt, yt)
        with pytest.raises(ValueError, match="pads a ranking at its end only"):
            head.loss(zt, to(np.where(np.arange(3) == 0, -1, y)))
        with pytest.raises(TypeError, match="integer candidate indices"):
            head.loss(zt, to(y.astype(np.float64)))


def test_under_jax_jit():
    jax = pytest.importorskip("jax")
    rng = np.random.default_rng(18)
    z, y = rng.normal(size=(4, 5)), rankings(rng, (4,), 5, 3)
    value, grad, H = torch_reference(z, y, "mean")
    head = jac.Head(jac.Identity(), jac.PlackettLuce())
    with jax.enable_x64(True):
        f = jax.jit(lambda z, y: (*head.value_and_grad(z, y), head.hessian(z, y)))
        v, g, h = f(jax.numpy.asarray(z), jax.numpy.asarray(y))
    _close(float(v), value)
    _close(np.asarray(g), grad)
    _close(np.asarray(h), H)


# -- dtypes, extremes, errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_scores_of_1e4_stay_finite_and_exact(dtype):
    z = np.array([[1e4, 0.0, -1e4, 0.0], [-1e4, 1e4, -1e4, 1e4], [0.0, -1e4, -1e4, -1e4]], dtype=dtype)
    y = np.array([[1, 0, 3], [0, 1, -1], [3, 0, 2]])
    head = jac.Head(jac.Identity(), jac.PlackettLuce(reduction="none"))
    value, grad, H = torch_reference(z.astype(np.float64), y, "none")
    v, g = head.value_and_grad(z, y)
    assert v.dtype == g.dtype == dtype and np.all(np.isfinite(v)) and np.all(np.isfinite(g))
    rtol = 1e-12 if dtype == np.float64 else 2e-7
    np.testing.assert_allclose(v, value, rtol=rtol)
    np.testing.assert_allclose(g, grad, rtol=rtol, atol=rtol)
    for out in (head.hessian(z, y), head.sqrt_ggn(z, y), head.hvp(z, y, np.ones_like(z)),
                head.fisher(z, y, kind="mc", mc_samples=3, seed=0)):
        assert out.dtype == dtype and np.all(np.isfinite(out))
    np.testing.assert_allclose(head.hessian(z, y), H, rtol=rtol, atol=rtol)
    # a confident step keeps its tiny loss: log1p, not lse − z
    tiny = np.array([[40.0, 0.0, 1.0]], dtype=dtype)
    want = math.log1p(math.exp(-40.0) + math.exp(-39.0))
    np.testing.assert_allclose(head.loss(tiny, np.array([[0]])), [want], rtol=1e-15 if dtype == np.float64 else 1e-6)
    # scores near 1e6 in float32: the shifted scores, never lse(z) − z_y of large numbers
    big = np.array([[1e6, 1e6 + 1.0, 1e6 - 2.0]], dtype=np.float32)
    want = math.log(1 + math.exp(1.0) + math.exp(-2.0))
    np.testing.assert_allclose(head.loss(big, np.array([[0]])), [want], rtol=1e-6)


def test_float32_stays_float32_and_inputs_are_not_modified():
    rng = np.random.default_rng(15)
    z = rng.normal(size=(4, 5)).astype(np.float32)
    y = rankings(rng, (4,), 5, 3)
    z.flags.writeable = y.flags.writeable = False
    z0, y0 = z.copy(), y.copy()
    head = jac.Head(jac.Identity(), jac.PlackettLuce())
    for out in (head.grad(z, y), head.hessian(z, y), head.hvp(z, y, z), head.sqrt_ggn(z, y),
                head.fisher(z, y, "empirical"), head.fisher(z, y, "mc", mc_samples=2, seed=0)):
        assert out.dtype == np.float32
    assert np.asarray(head.loss(z, y)).dtype == np.float32
    np.testing.assert_array_equal(z, z0)
    np.testing.assert_array_equal(y, y0)


def test_bad_targets_get_clear_errors():
    z = np.zeros((2, 4))
    loss = jac.PlackettLuce()
    with pytest.raises(TypeError, match=r"y must hold integer candidate indices.*got dtype float64"):
        loss(z, np.array([[0.0, 1.0], [2.0, 3.0]]))
    with pytest.raises(TypeError, match="got dtype bool"):
        loss(z, np.ones((2, 2), bool))
    with pytest.raises(ValueError, match=r"y must have shape \(2, 'R'\).*got shape \(2,\)"):
        loss(z, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"y must have shape \(2, 'R'\).*got shape \(3, 2\)"):
        loss(z, np.zeros((3, 2), int))
    with pytest.raises(ValueError, match=r"R = 5 candidates a row but a has M = 4"):
        loss(z, np.array([[0, 1, 2, 3, -1]] * 2))
    with pytest.raises(ValueError, match=r"in \[0, 4\) or -1 \(padding\); got values in \[0, 4\]"):
        loss(z, np.array([[0, 4], [1, 2]]))
    with pytest.raises(ValueError, match=r"got values in \[-2, 1\]"):
        loss(z, np.array([[0, -2], [1, 0]]))
    with pytest.raises(ValueError, match=r"pads a ranking at its end only; row 1 .* \[-1, 2\]"):
        loss(z, np.array([[0, 1], [-1, 2]]))
    with pytest.raises(ValueError, match=r"at most once; row 0 .* candidate 3 twice: \[3, 3\]"):
        loss(z, np.array([[3, 3], [1, 2]]))
    head = jac.Head(jac.Identity(), loss)
    with pytest.raises(ValueError, match="pads a ranking at its end only"):
        head.grad(z, np.array([[0, 1], [-1, 2]]))
    with pytest.raises(ValueError, match="reduction"):
        jac.PlackettLuce(reduction="avg")


def test_registered_and_exported():
    assert jac.LOSSES["plackett_luce"] is jac.PlackettLuce
    assert ("identity", "plackett_luce", True) in jac.pairs()
    assert isinstance(jac.get_rule(jac.Identity(), jac.PlackettLuce()), jac.rules.PairRule)


def test_the_long_double_reference_agrees_with_torch():
    rng = np.random.default_rng(16)
    z, y = rng.normal(size=(5, 4)), rankings(rng, (5,), 4, 3)
    values, _, grads, _, denom = plackett_luce_longdouble(None, None, z, y)
    want_v, want_g, _ = torch_reference(z, y, "none")
    _close(values.astype(np.float64), want_v)
    _close(grads.astype(np.float64), want_g)
    assert denom == 5


def test_edge_shapes():
    """No placement at all (R = 0), one candidate (M = 1: no choice), an empty batch."""
    head = jac.Head(jac.Identity(), jac.PlackettLuce())
    z = np.random.default_rng(19).normal(size=(3, 4))
    none = np.zeros((3, 0), np.int64)
    assert head.loss(z, none) == 0 and not head.grad(z, none).any()
    assert head.sqrt_ggn(z, none).shape == (3, 4, 0) and not head.hessian(z, none).any()
    one = np.zeros((3, 1), np.int64)
    assert head.loss(z[:, :1], one) == 0 and not head.hessian(z[:, :1], one).any()
    with pytest.warns(jac.EmptyMeanWarning):
        assert np.isnan(head.loss(np.zeros((0, 4)), np.zeros((0, 2), np.int64)))
    with pytest.warns(jac.EmptyMeanWarning):
        assert head.hessian(np.zeros((0, 4)), np.zeros((0, 2), np.int64)).shape == (0, 4, 4)
