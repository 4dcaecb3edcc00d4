"""A new canonical pair defined entirely in this file, and everything it gets by registering.

The pair: ``Identity`` + a Gaussian negative log-likelihood of fixed scale σ,
``ℓ = Σ_k (a_k − y_k)² / (2σ²)`` per sample. Its natural parameter is ``a/σ²``, so the pair
is canonical: the Hessian ``I/σ²`` is its GGN and its exact Fisher. The loss carries its own
predictive distribution (``y ~ N(a, σ²)``: no central table), the rule its closed forms.
Registering the two classes — nothing else in the package changes — gives ``Head.grad`` by
every method, the Hessian, HVP, GGN and its factor, every Fisher, the checks, the last
layer's curvature, Dask arrays and the ``check`` command's rows. Every expected value here
comes from finite differences, loops over the rows, or the closed form written out.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import fd_hessian_blocks, registries_kept

import jacobians as jac
from jacobians import cli
from jacobians.sampling import Predictive

SIGMA = 1.5


def _normal(u1, u2):
    """Box–Muller: N(0, 1) from two uniforms in [0, 1)."""
    return np.sqrt(-2 * np.log(1 - u1)) * np.cos(2 * np.pi * u2)


class GaussianNLL(jac.ElementwiseLoss):
    """``(a − y)² / (2σ²)`` per entry, the negative log-likelihood of ``y ~ N(a, σ²)`` (up to
    a constant)."""

    name = "gaussian_nll_test"

    def __init__(self, sigma: float = SIGMA, reduction: str = "mean"):
        super().__init__(reduction)
        self.sigma = float(sigma)

    @classmethod
    def variants(cls, K):
        return [{"sigma": 0.5}]

    @property
    def predictive(self):
        sigma = self.sigma
        return Predictive(
            f"a + N(0, {sigma}²)",
            lambda K: 2 * K,
            lambda a2, u: a2 + (sigma * _normal(u[:, : a2.shape[1]], u[:, a2.shape[1] :])).astype(a2.dtype),
            False,
        )

    def _inv_var(self, a):
        return a.dtype.type(1.0 / self.sigma**2)

    def per_element(self, a, y):
        d = a - y
        return d * d * (self._inv_var(a) / 2)

    def per_element_grad(self, a, y):
        return (a - y) * self._inv_var(a)

    def per_element_hessian(self, a, y):
        return np.full_like(a, self._inv_var(a))

    def fisher_blocks(self, a):
        return jac.DiagonalJacobian(np.full_like(a, self._inv_var(a)))

    def loop_reference(self, a, y):
        """One entry at a time, in float64: the check's plain reference."""
        a2 = np.asarray(a, dtype=np.float64).reshape(-1, a.shape[-1])
        y2 = np.asarray(y, dtype=np.float64).reshape(a2.shape)
        values, grads = np.empty_like(a2), np.empty_like(a2)
        for n in range(a2.shape[0]):
            for k in range(a2.shape[1]):
                d = a2[n, k] - y2[n, k]
                values[n, k] = d * d / (2 * self.sigma**2)
                grads[n, k] = d / self.sigma**2
        return values, grads, float(values.size)


class IdentityGaussian(jac.PairRule):
    """Identity + GaussianNLL: everything in closed form from ``c = loss.reduction_scale``."""

    pairs = ((jac.Identity, GaussianNLL),)
    canonical = True

    def value_and_grad(self, activation, loss, z, y):
        z = np.asarray(z, dtype=float) if not isinstance(z, np.ndarray) else z
        y = loss.check_targets(z, y)
        c = loss.reduction_scale(z, y)
        d = z - y
        values = d * d * z.dtype.type(0.5 / loss.sigma**2)
        grad = d * (c / z.dtype.type(loss.sigma**2))
        if loss.reduction == "none":
            return values, grad
        return values.sum() * c, grad

    def hessian(self, activation, loss, z, y):
        c = loss.reduction_scale(z, y)
        return jac.DiagonalJacobian(np.full_like(z, c / z.dtype.type(loss.sigma**2)))

    def hvp(self, activation, loss, z, y, v):
        return v * (loss.reduction_scale(z, y) / z.dtype.type(loss.sigma**2))

    def sqrt_hessian(self, activation, loss, z, y):
        root = np.sqrt(loss.reduction_scale(z, y)) / z.dtype.type(loss.sigma)
        return jac.DiagonalJacobian(np.full_like(z, root)).dense()

    def fisher(self, activation, loss, z, y=None):
        return jac.DiagonalJacobian(np.full_like(z, 1.0 / loss.sigma**2))

    def extreme_value_and_grad(self, activation, loss, z, y):
        d = z - np.asarray(y, dtype=np.float64)
        values, grads = d * d / (2 * loss.sigma**2), d / loss.sigma**2
        if loss.reduction == "none":
            return values, grads
        if loss.reduction == "sum":
            return values.sum(), grads
        return values.sum() / d.size, grads / d.size

    def extreme_hessian(self, activation, loss, z, y):
        c = 1.0 / z.size if loss.reduction == "mean" else 1.0
        return c / loss.sigma**2 * np.broadcast_to(np.eye(z.shape[-1]), z.shape + z.shape[-1:])


@pytest.fixture(scope="module", autouse=True)
def registered():
    """Register the loss and its rule for this module's tests, and only for them."""
    with registries_kept(jac.LOSSES, jac.RULES):
        jac.register_loss(GaussianNLL)
        jac.register_rule(IdentityGaussian)
        yield


REDUCTIONS = ("mean", "sum", "none")
N, K = 5, 3


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, K)), rng.normal(size=(N, K))


def _factor(reduction):
    return 1.0 / (N * K) if reduction == "mean" else 1.0


def _fd_grad(head, z, y, h=1e-6):
    """Central differences of the summed loss (for 'none': of each entry's own loss)."""
    out = np.empty_like(z)
    for idx in np.ndindex(*z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += h
        zm[idx] -= h
        fp, fm = np.sum(head.loss(zp, y)), np.sum(head.loss(zm, y))
        out[idx] = (fp - fm) / (2 * h)
    return out


def test_registering_makes_it_a_rule():
    head = jac.Head(jac.Identity(), GaussianNLL())
    assert isinstance(jac.get_rule(head.activation, head.loss_fn), IdentityGaussian)
    assert head.method == "fused" and head.ggn_is_hessian
    assert (jac.Identity, GaussianNLL) in jac.fused.FUSED and (jac.Identity, GaussianNLL) in jac.curvature.HESSIAN_RULES
    assert ("identity", "gaussian_nll_test", True) in jac.pairs()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("method", ["auto", "fused", "vjp", "jacobian", "chain"])
def test_grad_by_every_method_matches_finite_differences(method, reduction):
    z, y = _data()
    head = jac.Head(jac.Identity(), GaussianNLL(reduction=reduction))
    np.testing.assert_allclose(head.grad(z, y, method=method), _fd_grad(head, z, y), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_second_order_matches_finite_differences_and_the_chain_rule(reduction):
    z, y = _data(1)
    v = np.random.default_rng(2).normal(size=z.shape)
    head = jac.Head(jac.Identity(), GaussianNLL(reduction=reduction))
    reference = fd_hessian_blocks(head, z, y)
    closed = np.broadcast_to(np.eye(K) * _factor(reduction) / SIGMA**2, (N, K, K))
    np.testing.assert_allclose(reference, closed, rtol=1e-6, atol=1e-12)  # the reference is right
    for method in ("auto", "fused", "chain"):
        np.testing.assert_allclose(head.hessian(z, y, method=method), reference, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(head.hvp(z, y, v, method=method), np.einsum("nij,nj->ni", reference, v),
                                   rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(head.ggn(z, y), reference, rtol=1e-6, atol=1e-12)
    S = head.sqrt_ggn(z, y)
    np.testing.assert_allclose(S @ np.swapaxes(S, -1, -2), reference, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_fisher_of_every_kind(reduction):
    z, y = _data(3)
    head = jac.Head(jac.Identity(), GaussianNLL(reduction=reduction))
    c = _factor(reduction)
    exact = np.broadcast_to(np.eye(K) * c / SIGMA**2, (N, K, K))
    for kind in ("exact", "fisher"):
        np.testing.assert_allclose(head.fisher(z, y, kind=kind), exact, rtol=1e-12)
    g = (z - y) / SIGMA**2  # each row's own gradient, written out
    empirical = c * np.einsum("ni,nj->nij", g, g)
    for kind in ("empirical", "empirical_fisher"):
        np.testing.assert_allclose(head.fisher(z, y, kind=kind), empirical, rtol=1e-12)
    # the Monte-Carlo Fisher draws from the loss's own predictive distribution
    mc = head.fisher(z, y, kind="mc", mc_samples=20000, seed=7)
    np.testing.assert_allclose(mc, exact, atol=0.05 * c / SIGMA**2)


def test_checks_pass():
    head = jac.Head(jac.Identity(), GaussianNLL())
    for report in (jac.check_head(head), jac.check_second_order(head), jac.checks.check_extreme(head),
                   jac.checks.check_second_order_extreme(head)):
        assert report.passed, report
        assert report.missing == [], report.missing  # the loss's loop reference is found
    assert (jac.Identity, GaussianNLL) in jac.checks.EXTREME_CLOSED_FORMS
    assert (jac.Identity, GaussianNLL) in jac.checks.EXTREME_HESSIANS


@pytest.mark.parametrize("kind", ["hessian", "ggn", "fisher", "exact", "empirical_fisher"])
def test_last_layer_curvature(kind):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(N, 2))
    W, b = rng.normal(size=(K, 2)), rng.normal(size=K)
    z, y = X @ W.T + b, rng.normal(size=(N, K))
    head = jac.Head(jac.Identity(), GaussianNLL())
    blocks = {"empirical_fisher": head.fisher(z, y, kind="empirical")}.get(kind, None)
    if blocks is None:
        blocks = np.broadcast_to(np.eye(K) / (N * K) / SIGMA**2, (N, K, K))
    Xt = np.concatenate([X, np.ones((N, 1))], axis=1)
    full = sum(np.kron(blocks[n], np.outer(Xt[n], Xt[n])) for n in range(N))  # the loop reference
    np.testing.assert_allclose(jac.linear_curvature(X, head, z, y, kind=kind), full, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(jac.linear_curvature(X, head, z, y, kind=kind, structure="diag"),
                               np.diag(full).reshape(K, 3), rtol=1e-10, atol=1e-14)
    A, B = jac.linear_curvature(X, head, z, y, kind=kind, structure="kron")
    assert A.shape == (K, K) and B.shape == (3, 3)


def test_dask_arrays():
    da = pytest.importorskip("dask.array", reason="needs dask: pip install 'jacobians[dask]' (the dask extra)")
    z, y = _data(5)
    head = jac.Head(jac.Identity(), GaussianNLL())
    zd, yd = da.from_array(z, chunks=(2, K)), da.from_array(y, chunks=(2, K))
    np.testing.assert_allclose(head.grad(zd, yd).compute(), _fd_grad(head, z, y), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(head.hessian(zd, yd).compute(), head.hessian(z, y), rtol=1e-12)
    np.testing.assert_allclose(float(head.loss(zd, yd).compute()), float(head.loss(z, y)), rtol=1e-12)


def test_check_command_rows(capsys):
    status = cli.main(["check", "--only", "identity,gaussian_nll_test", "--n", "64", "--k", "8"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "identity + gaussian_nll_test" in out
    assert "identity + gaussian_nll_test(sigma=0.5)" in out
