"""``jac.influence`` and ``jac.self_influence`` against torch in float64: θ = vec([W | b]) a
leaf tensor, the training loss written in torch as the head reduces it, H by
``torch.func.hessian``, each row's own gradient by autograd, the influence by
``torch.linalg.solve``. The approximations against their definitions (diag of torch's H;
EK-FAC built in plain numpy from torch's H and per-sample blocks), the clear error on a
singular curvature, the memory budget's blocks, and the inputs."""

from __future__ import annotations

import numpy as np
import pytest

import jacobians as jac

torch = pytest.importorskip("torch", reason="torch (the test extra) is not installed")
F = torch.nn.functional

N, M, D, K = 40, 7, 3, 4
WEIGHT = np.array([0.5, 1.0, 1.5, 2.0])
POS_WEIGHT = np.array([1.0, 2.0, 0.5, 1.5])


def _onehot(y):
    return np.eye(K)[y]


# each case: the head, its torch loss of the logits z (reduced as the head reduces it, and per
# row: 'none', summed over a row's entries), targets, a damping that makes H + λI definite
def _ce_torch(z, y, reduction):
    return F.cross_entropy(z, y, weight=torch.tensor(WEIGHT), label_smoothing=0.1, reduction=reduction)


def _bce_torch(z, y, reduction):
    t = y * 0.9 + 0.05  # the loss's label smoothing ε = 0.1: y(1 − ε) + ε/2
    e = F.binary_cross_entropy_with_logits(z, t, pos_weight=torch.tensor(POS_WEIGHT), reduction="none")
    return e.mean() if reduction == "mean" else e.sum(dim=-1)


def _mse_torch(z, y, reduction):
    e = (z - y) ** 2
    return e.mean() if reduction == "mean" else e.sum(dim=-1)


def _softmax_mse_torch(z, y, reduction):  # not canonical: its Hessian is not its GGN
    return _mse_torch(torch.softmax(z, dim=-1), y, reduction)


CASES = {
    "softmax_ce": (lambda: jac.Head(jac.Softmax(), jac.CrossEntropy(label_smoothing=0.1, weight=WEIGHT)),
                   _ce_torch, lambda rng: rng.integers(0, K, size=N + M), 1e-2),
    "sigmoid_bce": (lambda: jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy(label_smoothing=0.1, pos_weight=POS_WEIGHT)),
                    _bce_torch, lambda rng: (rng.random((N + M, K)) < 0.4).astype(float), 0.0),
    "identity_mse": (lambda: jac.Head(jac.Identity(), jac.MeanSquaredError()),
                     _mse_torch, lambda rng: rng.normal(size=(N + M, K)), 0.0),
    "softmax_mse": (lambda: jac.Head(jac.Softmax(), jac.MeanSquaredError()),
                    _softmax_mse_torch, lambda rng: _onehot(rng.integers(0, K, size=N + M)), 5e-2),
}


def _data(case, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N + M, D))
    W = rng.normal(size=(K, D)) * 0.7
    b = rng.normal(size=K) * 0.3 if bias else None
    y = CASES[case][2](rng)
    return X[:N], y[:N], X[N:], y[N:], W, b


def _t(a):
    return torch.as_tensor(np.asarray(a)) if not np.issubdtype(np.asarray(a).dtype, np.integer) else torch.as_tensor(a)


class TorchLayer:
    """The layer in torch: θ a float64 leaf, z = X Wᵀ + b with [W | b] = θ.reshape(K, D + 1)."""

    def __init__(self, case, W, b):
        self.loss = CASES[case][1]
        self.bias = b is not None
        self.theta = torch.tensor(np.concatenate([W, b[:, None]], 1).ravel() if self.bias else W.ravel(),
                                  dtype=torch.float64, requires_grad=True)

    def logits(self, theta, X):
        Wb = theta.reshape(K, -1)
        return X @ Wb[:, :D].T + (Wb[:, D] if self.bias else 0)

    def hessian(self, X, y):
        X, y = _t(X), _t(y)
        return torch.func.hessian(lambda th: self.loss(self.logits(th, X), y, "mean"))(self.theta.detach())

    def row_grads(self, X, y):
        X, y = _t(X), _t(y)
        return torch.autograd.functional.jacobian(lambda th: self.loss(self.logits(th, X), y, "none"), self.theta.detach())

    def influence(self, H, damping, Xtr, ytr, Xte, yte):
        Gtr, Gte = self.row_grads(Xtr, ytr), self.row_grads(Xte, yte)
        A = H + damping * torch.eye(H.shape[0], dtype=H.dtype)
        return (-Gte @ torch.linalg.solve(A, Gtr.T)).numpy()


def _close(actual, expected, rtol=1e-8):
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


# -- exact: 'full' against torch ------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_influence_equals_torch_exact_inverse(case):
    Xtr, ytr, Xte, yte, W, b = _data(case)
    head, damping = CASES[case][0](), CASES[case][3]
    ref = TorchLayer(case, W, b)
    expected = ref.influence(ref.hessian(Xtr, ytr), damping, Xtr, ytr, Xte, yte)
    got = jac.influence(head, Xtr, ytr, Xte, yte, W, b, damping=damping)
    assert got.shape == (M, N) and got.dtype == np.float64
    _close(got, expected)


@pytest.mark.parametrize("case", list(CASES))
def test_self_influence_is_minus_the_diagonal_and_torch(case):
    Xtr, ytr, _, _, W, b = _data(case, seed=1)
    head, damping = CASES[case][0](), CASES[case][3]
    ref = TorchLayer(case, W, b)
    H = ref.hessian(Xtr, ytr)
    G = ref.row_grads(Xtr, ytr)
    A = H + damping * torch.eye(H.shape[0], dtype=H.dtype)
    expected = torch.einsum("np,np->n", G, torch.linalg.solve(A, G.T).T).numpy()
    got = jac.self_influence(head, Xtr, ytr, W, b, damping=damping)
    assert got.shape == (N,) and np.all(got > 0)
    _close(got, expected)
    full = jac.influence(head, Xtr, ytr, Xtr, ytr, W, b, damping=damping)
    _close(got, -np.diagonal(full))


def test_ggn_kind_equals_torch_gauss_newton():
    """Softmax + MSE: GGN = Jᵀ H_a J split at the softmax's output, built in torch."""
    case = "softmax_mse"
    Xtr, ytr, Xte, yte, W, b = _data(case, seed=2)
    ref = TorchLayer(case, W, b)
    X, y, th = _t(Xtr), _t(ytr), ref.theta.detach()
    J = torch.autograd.functional.jacobian(lambda t: torch.softmax(ref.logits(t, X), -1).reshape(-1), th)
    Ha = torch.func.hessian(lambda a: _mse_torch(a.reshape(N, K), y, "mean"))(torch.softmax(ref.logits(th, X), -1).reshape(-1))
    ggn = J.T @ Ha @ J
    assert not torch.allclose(ggn, ref.hessian(Xtr, ytr))  # the two kinds differ here
    expected = ref.influence(ggn, 1e-3, Xtr, ytr, Xte, yte)
    got = jac.influence(CASES[case][0](), Xtr, ytr, Xte, yte, W, b, damping=1e-3, kind="ggn")
    _close(got, expected)


def test_empirical_fisher_kind_equals_mean_outer_product():
    case = "sigmoid_bce"
    Xtr, ytr, Xte, yte, W, b = _data(case, seed=3)
    ref = TorchLayer(case, W, b)
    G = ref.row_grads(Xtr, ytr)
    c = 1.0 / (N * K)  # BCE's 'mean' over N·K entries: E = c Σ_n ℓ_n
    expected = ref.influence(c * G.T @ G, 1e-3, Xtr, ytr, Xte, yte)
    got = jac.influence(CASES[case][0](), Xtr, ytr, Xte, yte, W, b, damping=1e-3, kind="empirical_fisher")
    _close(got, expected)


PLAIN = {  # the canonical pairs without weights or smoothing (which move their Fisher off the Hessian)
    "softmax_ce": (lambda: jac.Head(jac.Softmax(), jac.CrossEntropy()),
                   lambda z, y, reduction: F.cross_entropy(z, y, reduction=reduction)),
    "sigmoid_bce": (lambda: jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy()),
                    lambda z, y, reduction: (lambda e: e.mean() if reduction == "mean" else e.sum(-1))(
                        F.binary_cross_entropy_with_logits(z, y, reduction="none"))),
}


@pytest.mark.parametrize("case", list(PLAIN))
def test_fisher_kind_of_a_canonical_pair_is_its_hessian(case):
    """Canonical pairs: the exact Fisher equals torch's Hessian, whatever the targets."""
    Xtr, ytr, Xte, yte, W, b = _data(case, seed=15)
    ref = TorchLayer(case, W, b)
    ref.loss = PLAIN[case][1]
    expected = ref.influence(ref.hessian(Xtr, ytr), 1e-2, Xtr, ytr, Xte, yte)
    got = jac.influence(PLAIN[case][0](), Xtr, ytr, Xte, yte, W, b, damping=1e-2, kind="fisher")
    _close(got, expected)


@pytest.mark.parametrize("case", ["identity_mse", "softmax_ce"])
def test_without_bias(case):
    Xtr, ytr, Xte, yte, W, _ = _data(case, seed=4, bias=False)
    head, damping = CASES[case][0](), CASES[case][3]
    ref = TorchLayer(case, W, None)
    expected = ref.influence(ref.hessian(Xtr, ytr), damping, Xtr, ytr, Xte, yte)
    got = jac.influence(head, Xtr, ytr, Xte, yte, W, None, damping=damping, bias=False)
    assert got.shape == (M, N)
    _close(got, expected)
    s = jac.self_influence(head, Xtr, ytr, W, None, damping=damping, bias=False)
    assert s.shape == (N,)


# -- approximations ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_diag_structure_is_its_definition(case):
    Xtr, ytr, Xte, yte, W, b = _data(case, seed=5)
    head, damping = CASES[case][0](), CASES[case][3] or 1e-3
    ref = TorchLayer(case, W, b)
    d = torch.diagonal(ref.hessian(Xtr, ytr)) + damping
    Gtr, Gte = ref.row_grads(Xtr, ytr), ref.row_grads(Xte, yte)
    expected = (-(Gte / d) @ Gtr.T).numpy()
    _close(jac.influence(head, Xtr, ytr, Xte, yte, W, b, damping=damping, structure="diag"), expected)
    s = jac.self_influence(head, Xtr, ytr, W, b, damping=damping, structure="diag")
    _close(s, ((Gtr * Gtr) / d).sum(1).numpy())


def _ekfac_reference(case, Xtr, ytr, W, b, damping):
    """(Q Λ Qᵀ + λI)⁻¹ dense, from the definition: A = Σ_n B_n (torch's Hessian blocks of E
    in z), B = mean φ̃φ̃ᵀ, Q = Q_A ⊗ Q_B, Λ = diag(Qᵀ H Q) with H torch's θ-Hessian."""
    ref = TorchLayer(case, W, b)
    X, y = _t(Xtr), _t(ytr)
    z = ref.logits(ref.theta.detach(), X)
    Hz = torch.func.hessian(lambda zz: ref.loss(zz, y, "mean"))(z).numpy()  # (N, K, N, K)
    A = np.einsum("nknl->kl", Hz)
    X1 = np.concatenate([Xtr, np.ones((N, 1))], 1)
    B = X1.T @ X1 / N
    Q = np.kron(np.linalg.eigh(A)[1], np.linalg.eigh(B)[1])
    lam = np.diagonal(Q.T @ ref.hessian(Xtr, ytr).numpy() @ Q)
    return Q @ np.diag(1 / (lam + damping)) @ Q.T, ref


@pytest.mark.parametrize("case", list(CASES))
def test_kron_structure_is_ekfac_and_its_error_against_full(case):
    Xtr, ytr, Xte, yte, W, b = _data(case, seed=6)
    head, damping = CASES[case][0](), CASES[case][3] or 1e-3
    inv, ref = _ekfac_reference(case, Xtr, ytr, W, b, damping)
    Gtr, Gte = ref.row_grads(Xtr, ytr).numpy(), ref.row_grads(Xte, yte).numpy()
    got = jac.influence(head, Xtr, ytr, Xte, yte, W, b, damping=damping, structure="kron")
    _close(got, -Gte @ inv @ Gtr.T, rtol=1e-7)  # eigenvectors of two computations of A and B
    _close(jac.self_influence(head, Xtr, ytr, W, b, damping=damping, structure="kron"),
           np.einsum("np,pq,nq->n", Gtr, inv, Gtr), rtol=1e-7)
    full = jac.influence(head, Xtr, ytr, Xte, yte, W, b, damping=damping)
    diag = jac.influence(head, Xtr, ytr, Xte, yte, W, b, damping=damping, structure="diag")
    err = {s: np.linalg.norm(a - full) / np.linalg.norm(full) for s, a in (("kron", got), ("diag", diag))}
    print(f"{case}: relative error against 'full': kron {err['kron']:.3f}, diag {err['diag']:.3f}")
    if case == "identity_mse":  # every block B_n = 2/(NK)·I: the Kronecker product is exact
        assert err["kron"] < 1e-10
    assert err["kron"] < 1.0 and np.corrcoef(got.ravel(), full.ravel())[0, 1] > 0.5


# -- singular curvature -------------------------------------------------------------------------------


@pytest.mark.parametrize("structure", ["full", "kron"])
def test_singular_curvature_names_damping(structure):
    Xtr, ytr, Xte, yte, W, b = _data("identity_mse", seed=7)
    Xdup = np.concatenate([Xtr, Xtr[:, :1]], 1)  # a duplicated column: H has a null direction
    Wdup = np.concatenate([W, W[:, :1]], 1)
    head = CASES["identity_mse"][0]()
    with pytest.raises(ValueError, match="damping") as info:
        jac.influence(head, Xdup, ytr, Xdup[:3], ytr[:3], Wdup, b, structure=structure)
    assert "positive definite" in str(info.value)
    with pytest.raises(ValueError, match="damping"):
        jac.self_influence(head, Xdup, ytr, Wdup, b, structure=structure)
    # damping makes it definite
    assert np.all(jac.self_influence(head, Xdup, ytr, Wdup, b, damping=1e-3, structure=structure) > 0)


def test_softmax_hessian_is_singular_without_damping():
    """Softmax is invariant to a shift of every logit: H has a null space of dimension D + 1."""
    Xtr, ytr, Xte, yte, W, b = _data("softmax_ce", seed=8)
    with pytest.raises(ValueError, match=r"damping=0\.0.*smallest eigenvalue"):
        jac.influence(CASES["softmax_ce"][0](), Xtr, ytr, Xte, yte, W, b)


def test_indefinite_hessian_names_damping():
    Xtr, ytr, Xte, yte, W, b = _data("softmax_mse", seed=9)
    ref = TorchLayer("softmax_mse", W, b)
    low = float(torch.linalg.eigvalsh(ref.hessian(Xtr, ytr))[0])
    assert low < 0  # a non-convex head's Hessian
    with pytest.raises(ValueError, match="damping"):
        jac.influence(CASES["softmax_mse"][0](), Xtr, ytr, Xte, yte, W, b, damping=-low / 2)
    _close(jac.influence(CASES["softmax_mse"][0](), Xtr, ytr, Xte, yte, W, b, damping=-2 * low),
           ref.influence(ref.hessian(Xtr, ytr), -2 * low, Xtr, ytr, Xte, yte))


# -- blocks, dtypes, inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize("structure", ["full", "kron", "diag"])
def test_small_budget_gives_the_same_answer(structure):
    Xtr, ytr, Xte, yte, W, b = _data("softmax_ce", seed=10)
    head = CASES["softmax_ce"][0]()
    big = jac.influence(head, Xtr, ytr, Xte, yte, W, b, damping=1e-2, structure=structure)
    small = jac.influence(head, Xtr, ytr, Xte, yte, W, b, damping=1e-2, structure=structure, max_bytes=600)
    _close(small, big, rtol=1e-12)
    s_big = jac.self_influence(head, Xtr, ytr, W, b, damping=1e-2, structure=structure)
    s_small = jac.self_influence(head, Xtr, ytr, W, b, damping=1e-2, structure=structure, max_bytes=600)
    _close(s_small, s_big, rtol=1e-12)


def test_large_parameter_count_uses_the_blocked_triangular_solves():
    """P = 3·(99 + 1) = 300 > the directly solved triangular blocks (128): the recursion."""
    rng = np.random.default_rng(11)
    n, d, k = 400, 99, 3
    X, Y, W, b = rng.normal(size=(n, d)), rng.normal(size=(n, k)), rng.normal(size=(k, d)), rng.normal(size=k)
    head = jac.Head(jac.Identity(), jac.MeanSquaredError())
    X1 = np.concatenate([X, np.ones((n, 1))], 1)
    H = np.kron(2 / (n * k) * np.eye(k), X1.T @ X1)  # MSE's 'mean': E = Σ (z − y)²/(N K)
    G = (2 * (X @ W.T + b - Y))[:, :, None] * X1[:, None, :]
    G = G.reshape(n, -1)
    expected = -G[:5] @ np.linalg.solve(H + 0.1 * np.eye(H.shape[0]), G.T)
    _close(jac.influence(head, X, Y, X[:5], Y[:5], W, b, damping=0.1), expected)
    _close(jac.self_influence(head, X, Y, W, b, damping=0.1, max_bytes=50_000)[:5], -np.diagonal(expected[:, :5]))


def test_inputs_are_not_modified_and_float32_stays():
    Xtr, ytr, Xte, yte, W, b = _data("softmax_ce", seed=12)
    arrays = [Xtr, ytr, Xte, yte, W, b]
    copies = [a.copy() for a in arrays]
    for a in arrays:
        a.flags.writeable = False
    head = CASES["softmax_ce"][0]()
    for structure in ("full", "kron", "diag"):
        jac.influence(head, Xtr, ytr, Xte, yte, W, b, damping=1e-2, structure=structure)
        jac.self_influence(head, Xtr, ytr, W, b, damping=1e-2, structure=structure)
    for a, c in zip(arrays, copies):
        np.testing.assert_array_equal(a, c)
    f32 = [a.astype(np.float32) for a in (Xtr, Xte, W, b)]
    got = jac.influence(head, f32[0], ytr, f32[1], yte, f32[2], f32[3], damping=1e-2)
    assert got.dtype == np.float32
    s = jac.self_influence(head, f32[0], ytr, f32[2], f32[3], damping=1e-2)
    assert s.dtype == np.float32
    ref = jac.influence(head, Xtr, ytr, Xte, yte, W, b, damping=1e-2)
    _close(got, ref, rtol=1e-3)


@pytest.mark.parametrize("change, match", [
    (dict(W=np.zeros((K, D + 1))), r"features_train must have shape \(N, D\) with D = 4"),
    (dict(W=np.zeros(K)), r"W must have .*shape \(K, D\)|W must have at least 2"),
    (dict(b=np.zeros(K + 1)), r"b must have shape \(K,\) = \(4,\)"),
    (dict(b=None), "b is None but bias=True"),
    (dict(bias=False), "b was given but bias=False"),
    (dict(y_train=np.zeros(N - 1, int)), r"y_train must have shape \(40,\)"),
    (dict(features_test=np.zeros((M, D + 2))), r"features_test must have shape \(N, D\)"),
    (dict(damping=-1.0), "damping must be a finite number >= 0"),
    (dict(damping=float("nan")), "damping must be a finite number >= 0"),
    (dict(kind="hess"), "kind must be one of"),
    (dict(kind="fisher_mc"), "kind must be one of"),
    (dict(structure="block"), "structure must be one of"),
    (dict(max_bytes=0), "max_bytes must be a positive int"),
    (dict(W=np.full((K, D), np.nan)), "W must be finite"),
])
def test_bad_input_gets_a_clear_error(change, match):
    Xtr, ytr, Xte, yte, W, b = _data("softmax_ce", seed=13)
    args = dict(features_train=Xtr, y_train=ytr, features_test=Xte, y_test=yte, W=W, b=b, damping=1e-2)
    args.update(change)
    head = CASES["softmax_ce"][0]()
    with pytest.raises(ValueError, match=match):
        jac.influence(head, **args)


def test_bad_types_get_a_clear_error():
    Xtr, ytr, Xte, yte, W, b = _data("softmax_ce", seed=14)
    with pytest.raises(TypeError, match="head must be a jacobians.Head"):
        jac.influence("head", Xtr, ytr, Xte, yte, W, b)
    with pytest.raises(TypeError, match="damping must be a real number"):
        jac.self_influence(CASES["softmax_ce"][0](), Xtr, ytr, W, b, damping=True)
