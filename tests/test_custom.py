"""Your own loss, activation and fused rule (issue 3): a user writes the least code and
gets every reduction, every Head method and the registries. Registry entries added here
are removed again by the ``restore_registries`` fixture."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REDUCTIONS, Brier

import jacobians as jac
from jacobians import testing

TIGHT = {"rtol": 1e-10, "atol": 1e-12}
FD = {"rtol": 1e-6, "atol": 1e-8}


class FocalLoss(jac.Loss):
    """−(1 − p_y)^γ log p_y on probabilities: per_sample and per_sample_grad only."""

    input_domain = "open_simplex"
    target_kind = "class"

    def __init__(self, gamma=2.0, reduction="mean"):
        super().__init__(reduction)
        self.gamma = gamma

    def per_sample(self, a, y):
        p = np.take_along_axis(a, y[..., None], axis=-1)[..., 0]
        return -((1 - p) ** self.gamma) * np.log(p)

    def per_sample_grad(self, a, y):
        p = np.take_along_axis(a, y[..., None], axis=-1)[..., 0]
        d = self.gamma * (1 - p) ** (self.gamma - 1) * np.log(p) - (1 - p) ** self.gamma / p
        grad = np.zeros_like(a)
        np.put_along_axis(grad, y[..., None], d[..., None], axis=-1)
        return grad


class TiltedSoftmax(jac.Activation):
    """a_i = softmax(z)_i · (1 + z_0²): non-symmetric Jacobian, forward and jacobian only."""

    output_domain = "real"

    def forward(self, z):
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True) * (1 + z[..., :1] ** 2)

    def jacobian(self, z):
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        s = e / e.sum(axis=-1, keepdims=True)
        scale = 1 + z[..., :1] ** 2
        J = -np.einsum("...i,...j->...ij", s, s)
        jac.diagonal(J)[...] += s
        J *= scale[..., None]
        J[..., :, 0] += s * 2 * z[..., :1]
        return J


class Probabilities(jac.Activation):
    """A custom activation onto the open simplex (softmax of 2z), declaring its output."""

    output_domain = "open_simplex"

    def forward(self, z):
        e = np.exp(2 * z - (2 * z).max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def jacobian(self, z):
        s = self.forward(z)
        J = -2 * np.einsum("...i,...j->...ij", s, s)
        jac.diagonal(J)[...] += 2 * s
        return J


def _focal_reference(a, y, gamma):
    """Per sample, from the definition."""
    values, grads = [], []
    for a_n, t in zip(a, y):
        p = a_n[t]
        values.append(-((1 - p) ** gamma) * np.log(p))
        g = np.zeros_like(a_n)
        g[t] = gamma * (1 - p) ** (gamma - 1) * np.log(p) - (1 - p) ** gamma / p
        grads.append(g)
    return np.array(values), np.array(grads)


def _probs(rng, shape):
    e = np.exp(rng.normal(size=shape) * 0.5)
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_focal_loss_gets_every_reduction(reduction, rng):
    a = _probs(rng, (6, 4))
    y = rng.integers(0, 4, size=6)
    loss = FocalLoss(gamma=1.5, reduction=reduction)
    per, per_grad = _focal_reference(a, y, 1.5)
    expected = {"none": (per, per_grad), "sum": (per.sum(), per_grad), "mean": (per.mean(), per_grad / 6)}[reduction]
    value, grad = loss.value_and_grad(a, y)
    testing.assert_grad_close(value, expected[0], **TIGHT)
    testing.assert_grad_close(grad, expected[1], **TIGHT)
    numeric = jac.numerical_grad(lambda x: float(np.sum(loss.value(x, y))), a)
    testing.assert_grad_close(grad, numeric, **FD)
    assert loss.value(a[None], y[None]).shape == ((1, 6) if reduction == "none" else ())  # batch axes


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_brier_without_super_init_gets_every_reduction(reduction, rng):
    a = _probs(rng, (2, 3, 4))
    y = _probs(rng, (2, 3, 4))
    loss = Brier()
    assert loss.reduction == "mean"
    loss = loss.with_reduction(reduction)
    per = ((a - y) ** 2).sum(-1)
    value, grad = loss.value_and_grad(a, y)
    expected = {"none": per, "sum": per.sum(), "mean": per.mean()}[reduction]
    testing.assert_grad_close(value, expected, **TIGHT)
    testing.assert_grad_close(grad, 2 * (a - y) / (6 if reduction == "mean" else 1), **TIGHT)


@pytest.mark.parametrize("loss", [FocalLoss(), FocalLoss(gamma=0.0, reduction="sum"), Brier()], ids=["focal", "focal0-sum", "brier"])
@pytest.mark.parametrize("act", [jac.Softmax(), jac.Softmax(temperature=2.0), Probabilities()], ids=["softmax", "softmax-T2", "custom"])
def test_custom_loss_works_in_head_with_vjp_and_jacobian(loss, act, rng):
    head = jac.Head(act, loss)
    assert head.method == "vjp" and head.fused_rule is None
    z = rng.normal(size=(5, 4))
    y = rng.integers(0, 4, size=5) if isinstance(loss, FocalLoss) else _probs(rng, (5, 4))
    g_vjp = head.grad(z, y, method="vjp")
    g_jac = head.grad(z, y, method="jacobian")
    testing.assert_grad_close(g_vjp, g_jac, **TIGHT)
    testing.assert_grad_close(g_vjp, jac.numerical_grad(lambda x: float(head.loss(x, y)), z), **FD)
    with pytest.raises(ValueError, match="no fused rule is registered"):
        head.grad(z, y, method="fused")


def test_focal_loss_with_gamma_zero_is_cross_entropy(rng):
    z = rng.normal(size=(5, 4))
    y = rng.integers(0, 4, size=5)
    focal = jac.Head(jac.Softmax(), FocalLoss(gamma=0.0))
    ce = jac.Head(jac.Softmax(), jac.CrossEntropy())
    testing.assert_grad_close(focal.grad(z, y), ce.grad(z, y), **TIGHT)
    testing.assert_grad_close(focal.loss(z, y), ce.loss(z, y), **TIGHT)


def test_custom_activation_with_only_forward_and_jacobian(rng):
    act = TiltedSoftmax()
    z = rng.normal(size=(2, 3, 4))
    J = act.jacobian(z)
    assert not np.allclose(J, np.swapaxes(J, -1, -2))  # a layout error would show
    testing.assert_jacobian_close(J, jac.numerical_jacobian(act, z), rtol=1e-6, atol=1e-8)
    g, v = rng.normal(size=z.shape), rng.normal(size=z.shape)
    testing.assert_grad_close(act.vjp(z, g), np.einsum("...i,...ij->...j", g, J), **TIGHT)
    testing.assert_grad_close(act.jvp(z, v), np.einsum("...ij,...j->...i", J, v), **TIGHT)
    op = act.jacobian_operator(z)
    assert isinstance(op, jac.DenseJacobian)
    testing.assert_grad_close(g @ op, act.vjp(z, g), **TIGHT)


@pytest.mark.parametrize("loss", [jac.MeanSquaredError(), jac.Huber(delta=0.5, reduction="sum"), jac.MeanAbsoluteError(reduction="none")])
def test_custom_activation_works_in_head(loss, rng):
    head = jac.Head(TiltedSoftmax(), loss)
    assert head.method == "vjp"
    z = rng.normal(size=(4, 3))
    y = rng.normal(size=(4, 3))
    g_vjp = head.grad(z, y, method="vjp")
    testing.assert_grad_close(head.grad(z, y, method="jacobian"), g_vjp, **TIGHT)
    testing.assert_grad_close(head.grad(z, y, method="jacobian", max_bytes=2 * 9 * 8), g_vjp, **TIGHT)
    numeric = jac.numerical_grad(lambda x: float(np.sum(head.loss(x, y))), z)
    testing.assert_grad_close(g_vjp, numeric, **FD)


def test_a_transposed_jacobian_is_caught(rng):
    class Transposed(TiltedSoftmax):
        def jacobian(self, z):
            return np.swapaxes(super().jacobian(z), -1, -2)

    z = rng.normal(size=(3, 4))
    with pytest.raises(AssertionError, match="Jacobians not close"):
        testing.assert_jacobian_close(Transposed().jacobian(z), jac.numerical_jacobian(Transposed(), z), rtol=1e-6, atol=1e-8)
    head = jac.Head(Transposed(), jac.MeanSquaredError())
    y = rng.normal(size=z.shape)
    with pytest.raises(AssertionError, match="gradients not close"):
        testing.assert_grad_close(head.grad(z, y), jac.numerical_grad(lambda x: float(head.loss(x, y)), z), rtol=1e-6, atol=1e-8)


def test_output_domain_decides_the_pairs():
    assert jac.Head(Probabilities(), jac.CrossEntropy()).method == "vjp"

    class Undeclared(jac.Activation):
        def forward(self, z):
            return z

        def jacobian(self, z):
            return np.broadcast_to(np.eye(z.shape[-1]), z.shape + z.shape[-1:]).copy()

    jac.Head(Undeclared(), jac.MeanSquaredError())  # real-valued by default: pairs without ceremony
    with pytest.raises(ValueError, match="Undeclared outputs real.*CrossEntropy needs open_simplex.*output_domain"):
        jac.Head(Undeclared(), jac.CrossEntropy())


def test_registered_custom_classes_join_pairs(restore_registries):
    jac.register_loss(Brier, name="brier")
    jac.register_activation(Probabilities, name="probabilities")
    listed = {(p.activation, p.loss): p.fused for p in jac.pairs()}
    assert listed[("softmax", "brier")] is False
    assert listed[("probabilities", "cross_entropy")] is False
    assert listed[("probabilities", "brier")] is False
    assert ("tanh", "brier") not in listed
    assert jac.get_loss("brier") is Brier and jac.get_activation("probabilities") is Probabilities
    with pytest.raises(ValueError, match="loss name 'brier' is already taken by Brier"):
        jac.register_loss(FocalLoss, name="brier")
    with pytest.raises(TypeError, match="only Loss subclasses can be registered"):
        jac.register_loss(Probabilities)


def test_user_fused_rule_is_picked_by_auto(restore_registries, rng):
    calls = []

    @jac.register_fused(jac.Softmax, Brier)
    def softmax_brier(act, loss, z, y):
        calls.append(z.shape)
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        s = e / e.sum(axis=-1, keepdims=True)
        r = 2 * (s - y)
        grad = s * (r - (r * s).sum(axis=-1, keepdims=True))
        n = z.shape[0]
        return ((s - y) ** 2).sum() / n, grad / n

    head = jac.Head(jac.Softmax(), Brier())
    assert head.method == "fused" and head.fused_rule is softmax_brier
    z = rng.normal(size=(5, 3))
    y = _probs(rng, (5, 3))
    g_auto = head.grad(z, y)
    assert calls == [(5, 3)]
    testing.assert_grad_close(g_auto, head.grad(z, y, method="vjp"), **TIGHT)
    testing.assert_grad_close(g_auto, head.grad(z, y, method="jacobian"), **TIGHT)
    testing.assert_grad_close(head.loss(z, y), Brier()(jac.Softmax()(z), y), **TIGHT)
    jac.register_loss(Brier, name="brier")
    assert ("softmax", "brier", True) in [tuple(p) for p in jac.pairs()]
    with pytest.raises(ValueError, match=r"a fused rule for \(Softmax, Brier\) is already registered"):
        jac.register_fused(jac.Softmax, Brier)(lambda *args: None)
    jac.register_fused(jac.Softmax, Brier, replace=True)(softmax_brier)
    with pytest.raises(TypeError, match="activation_cls must be an Activation subclass"):
        jac.register_fused(jac.Softmax(), Brier)
    with pytest.raises(TypeError, match="loss_cls must be a Loss subclass"):
        jac.register_fused(jac.Softmax, dict)


def test_fused_rules_are_looked_up_by_exact_class(restore_registries, rng):
    class MyCE(jac.CrossEntropy):
        pass

    head = jac.Head(jac.Softmax(), MyCE())
    assert head.method == "vjp"  # a subclass may change the math: it needs its own rule
    z, y = rng.normal(size=(3, 4)), np.array([0, 3, 1])
    testing.assert_grad_close(head.grad(z, y), jac.Head(jac.Softmax(), jac.CrossEntropy()).grad(z, y), **TIGHT)


def test_no_registry_entry_leaks_from_the_tests_above():
    """Runs after the tests that register classes (file order): the fixture removed them."""
    assert "brier" not in jac.LOSSES and "probabilities" not in jac.ACTIVATIONS
    assert (jac.Softmax, Brier) not in jac.fused.FUSED
    assert all(cls.__module__.startswith("jacobians") for cls in [*jac.ACTIVATIONS.values(), *jac.LOSSES.values()])


# -- the focal loss's Hessian of docs/custom.md, against torch ------------------------------------------


def _docs_focal_loss():
    """The FocalLoss class of the docs page's second-order example, as a reader pastes it."""
    import pathlib
    import re

    page = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "custom.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", page, flags=re.S | re.M)
              if "def per_sample_hessian" in b and "numerical_jacobian" in b]
    assert len(blocks) == 1, "docs/custom.md: one example writes the focal loss's per_sample_hessian"
    namespace = {"__name__": "docs_custom"}
    exec(compile(blocks[0], "docs/custom.md (focal loss, second order)", "exec"), namespace)
    return namespace["FocalLoss"]


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 3.5])
def test_the_docs_focal_loss_hessian_is_the_second_difference_of_its_loss(gamma):
    """ℓ''(p) against (ℓ(p + h) − 2ℓ(p) + ℓ(p − h))/h² of the loss alone, in long double, with
    h = 1e-4·p (relative truncation ~1e-8, round-off ~eps/1e-8 ~ 1e-11)."""
    FocalLoss = _docs_focal_loss()
    loss = FocalLoss(gamma=gamma)
    rng = np.random.default_rng(int(gamma * 10))
    N, K = 9, 3
    a = jac.Softmax()(rng.normal(size=(N, K)) * 1.5)
    y = rng.integers(0, K, size=N)
    H = loss.per_sample_hessian(a, y)
    onehot = np.eye(K, dtype=bool)[y]
    assert np.all(H[~(onehot[:, :, None] & onehot[:, None, :])] == 0)  # the (y, y) entry only
    LD = np.longdouble
    al, e = a.astype(LD), np.eye(K, dtype=LD)[y]
    h = LD(1e-4) * al[np.arange(N), y]
    e *= h[:, None]
    second = (loss.per_sample(al + e, y) - 2 * loss.per_sample(al, y) + loss.per_sample(al - e, y)) / h**2
    np.testing.assert_allclose(H[np.arange(N), y, y], second.astype(np.float64), rtol=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own, on import
@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 3.5])
def test_the_docs_focal_loss_hessian_is_torchs(gamma):
    """per_sample_hessian (in a) and head.hessian (in z, through softmax) of the docs' focal
    loss against torch.func.hessian of the same loss written in torch."""
    torch = pytest.importorskip("torch", reason="torch, a test-only peer not in any extra yet: pip install torch==2.13.0 (its CPU build)")
    FocalLoss = _docs_focal_loss()
    rng = np.random.default_rng(int(gamma * 10))
    N, K = 7, 4
    z = rng.normal(size=(N, K)) * 1.5
    y = rng.integers(0, K, size=N)
    yt = torch.as_tensor(y)

    def focal(a_row, k):
        p = a_row[k]
        return -((1 - p) ** gamma) * torch.log(p)

    a = jac.Softmax()(z)
    at = torch.as_tensor(a)
    H_a = torch.stack([torch.func.hessian(focal)(at[n], yt[n]) for n in range(N)]).numpy()
    np.testing.assert_allclose(FocalLoss(gamma=gamma).per_sample_hessian(a, y), H_a, rtol=1e-12, atol=1e-12)

    def mean_loss(zt):
        return torch.stack([focal(torch.softmax(zt[n], -1), yt[n]) for n in range(N)]).mean()

    H_full = torch.func.hessian(mean_loss)(torch.as_tensor(z)).numpy()           # (N, K, N, K)
    blocks = np.stack([H_full[n, :, n, :] for n in range(N)])
    head = jac.Head(jac.Softmax(), FocalLoss(gamma=gamma))
    np.testing.assert_allclose(head.hessian(z, y), blocks, rtol=1e-10, atol=1e-13)
    assert np.abs(H_full[0, :, 1, :]).max() == 0  # rows do not interact: the blocks are all of it


def test_the_docs_input_domain_table_lists_every_domain_and_the_activations_that_fit():
    import pathlib
    import re

    from jacobians.domains import DOMAINS, domain

    page = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "custom.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)` \| [^|]+ \| ([^|]+) \|$", page, flags=re.M))
    rows.pop("input_domain")  # the header
    assert set(rows) == set(DOMAINS)
    for name, listed in rows.items():
        fits = [k for k, cls in jac.ACTIVATIONS.items() if domain(cls.output_domain).issubset(name)]
        shown = list(jac.ACTIVATIONS) if listed.strip() == "all of them" else [s.strip() for s in listed.split(",")]
        assert shown == fits, name
