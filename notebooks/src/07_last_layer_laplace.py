# %% [markdown]
# # 07 · The last layer: Newton, a Laplace posterior, and three curvature structures
#
# A linear last layer $z = W\varphi + b$ makes every logit linear in its parameters. With
# $\tilde\varphi = (\varphi, 1)$ and $\Theta = [W \mid b]$ of shape $(K, D+1)$, $z_n = \Theta\,\tilde\varphi_n$,
# and the curvature of the loss with respect to $\theta = \operatorname{vec}(\Theta)$ (C order:
# class $k$'s weights, then its bias) is the head's blocks pushed through the layer, exactly:
#
# $$\frac{\partial^2 E}{\partial\theta\,\partial\theta} = \sum_n B_n \otimes \tilde\varphi_n \tilde\varphi_n^\top ,
# \qquad B_n = \frac{\partial^2 E}{\partial z_n \partial z_n}\ \text{(or a GGN / Fisher block)} .$$
#
# `jac.linear_curvature(features, head, z, y, kind=..., structure=...)` returns it for
# `kind` = `'hessian'`, `'ggn'`, `'fisher'`, `'fisher_mc'`, `'empirical_fisher'`, as the dense
# $P \times P$ matrix (`'full'`, $P = K(D+1)$), as Kronecker factors $A \otimes B$ (`'kron'`,
# K-FAC) or as its diagonal (`'diag'`); `jac.linear_gradient` is the gradient in the same order.
#
# This notebook fits a multinomial logistic regression with Newton's method, puts a Laplace
# posterior on its weights, compares two ways of computing the predictive (Monte Carlo over
# θ and the probit approximation), shows what the posterior does to the confidence far from
# the data, and then compares the three structures on the same problem.

# %%
import matplotlib.pyplot as plt
import numpy as np

import jacobians as jac

plt.rcParams.update({"figure.dpi": 80})
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1 · Data and the MAP by Newton's method
#
# Three classes of 2-d points, 20 each, around three centres. The features are the points
# themselves (D = 2), so θ has P = 3 · (2 + 1) = 9 entries. The loss is cross-entropy with
# `reduction='sum'` — the negative log-likelihood — and a Gaussian prior
# $\mathcal N(0, \lambda^{-1} I)$ on θ (biases included) makes the objective
#
# $$L(\theta) = \sum_n \ell_n(\theta) + \tfrac{\lambda}{2}\lVert\theta\rVert^2 , \qquad
# \nabla L = g + \lambda\theta, \qquad \nabla^2 L = H + \lambda I ,$$
#
# with $g$ from `jac.linear_gradient(...).ravel()` and $H$ from
# `jac.linear_curvature(..., kind='hessian')`. Newton's step is
# $\theta \leftarrow \theta - (H + \lambda I)^{-1}(g + \lambda\theta)$.

# %%
K, D, lam = 3, 2, 1.0                      # classes, features, prior precision λ
P = K * (D + 1)
angles = np.pi / 2 + 2 * np.pi * np.arange(K) / K
centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def sample(n, rng):
    y = np.arange(n) % K
    return centres[y] + rng.normal(size=(n, D)), y


X, y = sample(60, rng)
X_test, y_test = sample(3000, rng)
head = jac.Head(jac.Softmax(), jac.CrossEntropy(reduction="sum"))


def features(X):
    """φ̃ = (φ, 1), shape (N, D + 1)."""
    return np.hstack([X, np.ones((len(X), 1))])


def logits(theta, X):
    """z_n = Θ φ̃_n with Θ = [W | b] = theta.reshape(K, D + 1)."""
    return features(X) @ theta.reshape(K, D + 1).T


def fit_map(lam, steps=8, show=False):
    """θ* of Σ_n ℓ_n(θ) + λ/2 ‖θ‖² by Newton's method from θ = 0."""
    theta = np.zeros(P)
    for step in range(steps + 1):
        z = logits(theta, X)
        grad = jac.linear_gradient(X, head, z, y).ravel() + lam * theta
        if show:
            print(f"{step:>4}   {head.loss(z, y) + lam / 2 * theta @ theta:.15f}   {np.linalg.norm(grad):.1e}")
        if step < steps:
            H = jac.linear_curvature(X, head, z, y, kind="hessian")
            theta = theta - np.linalg.solve(H + lam * np.eye(P), grad)
    return theta


print("step   L(θ)                 |∇L|")
theta_map = fit_map(lam, show=True)
z = logits(theta_map, X)
print(f"training accuracy {np.mean(z.argmax(axis=1) == y):.1%}, "
      f"test accuracy {np.mean(logits(theta_map, X_test).argmax(axis=1) == y_test):.1%}")

# %% [markdown]
# The gradient norm falls quadratically once it is small (5e-3, 3e-6, 1e-12): the prior
# makes $L$ strongly convex, so Newton's method converges from θ = 0 without a line search
# here.
#
# ## 2 · The Laplace posterior
#
# Around the MAP, $L(\theta) \approx L(\theta_*) + \tfrac12 (\theta - \theta_*)^\top \Lambda
# (\theta - \theta_*)$, so the posterior is approximately $\mathcal N(\theta_*, \Lambda^{-1})$
# with precision $\Lambda$ = curvature + λI. We take the curvature as the **GGN**
# (`kind='ggn'`): it is positive semi-definite for any head whose loss is convex in the
# activation's output, so Λ is positive definite whatever the pair, while a Hessian can be
# indefinite away from softmax + CE (notebook 06). For softmax + CE, a canonical pair, the
# two are the same matrix:

# %%
G = jac.linear_curvature(X, head, z, y, kind="ggn")
print("head.ggn_is_hessian:", head.ggn_is_hessian, f"  |GGN − Hessian| = "
      f"{np.abs(G - jac.linear_curvature(X, head, z, y, kind='hessian')).max():.1e}")
precision = G + lam * np.eye(P)
Sigma = np.linalg.inv(precision)
print(f"eigenvalues of the precision: {np.round(np.linalg.eigvalsh(precision), 2)}  (λ = {lam:g})")

# %% [markdown]
# ## 3 · The predictive: Monte Carlo over θ, and the probit approximation
#
# The predictive at a point $x$ is $p(y \mid x) = \mathbb E_{\theta \sim \mathcal N(\theta_*,
# \Sigma)}[\operatorname{softmax}(\Theta\tilde\varphi(x))]$.
#
# - **Monte Carlo**: draw $S$ parameter vectors $\theta_s = \theta_* + L\varepsilon_s$ with
#   $L L^\top = \Sigma$ (Cholesky) and average the softmax of their logits.
# - **Probit** (the multiclass form of MacKay's approximation): the logits are linear in θ,
#   $z = J\theta$ with $J = I_K \otimes \tilde\varphi^\top$, so they are Gaussian with mean
#   $z_* = \Theta_*\tilde\varphi$ and covariance $\Sigma_z = J \Sigma J^\top$; entry $(k, l)$ is
#   $\tilde\varphi^\top \Sigma_{kl}\, \tilde\varphi$ with $\Sigma_{kl}$ the $(D+1) \times (D+1)$
#   block of Σ. Each logit is then shrunk by its own variance,
#   $p \approx \operatorname{softmax}(\kappa \odot z_*)$ with
#   $\kappa_k = 1/\sqrt{1 + \tfrac{\pi}{8}\,(\Sigma_z)_{kk}}$. No sampling, one pass.

# %%
def logit_variances(Sigma, X):
    """diag(Σ_z) = φ̃ᵀ Σ_kk φ̃ for every point and class, shape (N, K)."""
    F = features(X)
    return np.einsum("nd,kdke,ne->nk", F, Sigma.reshape(K, D + 1, K, D + 1), F)


def predict_probit(theta, variances, X):
    return jac.Softmax()(logits(theta, X) / np.sqrt(1 + np.pi / 8 * variances))


def predict_mc(theta, Sigma, X, samples=500, seed=1):
    eps = np.random.default_rng(seed).normal(size=(samples, P))
    thetas = theta + eps @ np.linalg.cholesky(Sigma).T                  # (S, P)
    Z = np.einsum("nd,skd->snk", features(X), thetas.reshape(samples, K, D + 1))
    return jac.Softmax()(Z).mean(axis=0)


# Σ_z = J Σ Jᵀ with J = I_K ⊗ φ̃ᵀ, built for one point: its diagonal is logit_variances
x0 = np.array([[1.0, -2.0]])
J = np.kron(np.eye(K), features(x0))                                     # (K, P)
print(f"|diag(J Σ Jᵀ) − logit_variances| = {np.abs(np.diag(J @ Sigma @ J.T) - logit_variances(Sigma, x0)).max():.1e}")

def laplace_covariance(theta, lam):
    """Σ = (GGN + λI)⁻¹ at θ."""
    return np.linalg.inv(jac.linear_curvature(X, head, logits(theta, X), y, kind="ggn") + lam * np.eye(P))


rows = np.arange(len(y_test))
print(f"\n{'on 3000 test points':<41} {'accuracy':>9} {'NLL':>7} {'mean confidence':>16}")
for lam_ in (lam, 0.1):
    theta_ = theta_map if lam_ == lam else fit_map(lam_)
    Sigma_ = laplace_covariance(theta_, lam_)
    predictives = {
        "MAP": jac.Softmax()(logits(theta_, X_test)),
        "Laplace, Monte Carlo (500 draws)": predict_mc(theta_, Sigma_, X_test),
        "Laplace, probit": predict_probit(theta_, logit_variances(Sigma_, X_test), X_test),
    }
    for name, p in predictives.items():
        print(f"λ = {lam_:<4g} {name:<32} {np.mean(p.argmax(axis=1) == y_test):>9.1%} "
              f"{-np.log(p[rows, y_test]).mean():>7.3f} {p.max(axis=1).mean():>16.3f}")
    p_mc, p_probit = predictives["Laplace, Monte Carlo (500 draws)"], predictives["Laplace, probit"]
    print(f"{'':<9}|probit − Monte Carlo|: mean {np.abs(p_probit - p_mc).mean():.3f}, "
          f"max {np.abs(p_probit - p_mc).max():.3f}\n")

# %% [markdown]
# The three classify alike. At λ = 1 the MAP has the lowest test NLL: with a prior this
# strong it is not overconfident near the data, and the posterior only lowers the
# confidence a little. With a weak prior, λ = 0.1, the MAP is more confident and its NLL
# higher, and averaging over the posterior by Monte Carlo brings it down.
#
# The probit approximation is not Monte Carlo, and here it is always the less confident of
# the two, the more so the weaker the prior. It shrinks each logit by that logit's own
# variance, the diagonal of $\Sigma_z$. Part of that variance moves all logits together,
# which the softmax ignores: along the three directions of θ that add the same vector to
# every row of Θ the GGN is zero, and only the prior holds them (the three eigenvalues of
# the precision equal to λ above). Monte Carlo sees that such draws change nothing; the
# probit approximation counts them as uncertainty.
#
# ## 4 · Confidence over the plane: MAP against Laplace
#
# The confidence $\max_k p(k \mid x)$ on a grid that reaches far beyond the data.

# %%
g = np.linspace(-10, 10, 90)
g0, g1 = np.meshgrid(g, g)
grid = np.stack([g0.ravel(), g1.ravel()], axis=1)
confidence = {
    "MAP": jac.Softmax()(logits(theta_map, grid)).max(axis=1),
    "Laplace, Monte Carlo": predict_mc(theta_map, Sigma, grid).max(axis=1),
    "Laplace, probit": predict_probit(theta_map, logit_variances(Sigma, grid), grid).max(axis=1),
}
def show_confidence(ax, c, title):
    """A map of the confidence c over the grid, its 0.9 and 0.99 lines, the data; returns the contour set."""
    c = c.reshape(g0.shape)
    cs = ax.contourf(g0, g1, c, levels=np.linspace(1 / 3, 1, 15), cmap="viridis")
    ax.contour(g0, g1, c, levels=[0.9, 0.99], colors="w", linewidths=0.7, linestyles=["--", "-"])
    for k, color in enumerate(["C1", "C3", "C6"]):
        ax.plot(*X[y == k].T, "o", color=color, markersize=3, markeredgecolor="k", markeredgewidth=0.3)
    ax.set_title(f"{title}\n< 0.9 on {np.mean(c < 0.9):.0%} of the square, > 0.99 on {np.mean(c > 0.99):.0%}",
                 fontsize=9)
    ax.set_aspect("equal")
    return cs


fig, axes = plt.subplots(1, 3, figsize=(12, 3.9), sharey=True)
for ax, (name, c) in zip(axes, confidence.items()):
    cs = show_confidence(ax, c, name)
fig.colorbar(cs, ax=axes, fraction=0.02, pad=0.02, label="confidence max_k p(k | x)",
             ticks=[1 / 3, 0.5, 0.7, 0.9, 1], format="%.2f")
fig.suptitle("white lines: confidence 0.9 (dashed) and 0.99", fontsize=10, y=0.02)
plt.show()

# %% [markdown]
# The MAP's uncertain region is a strip of fixed width around each decision boundary: on
# three quarters of the square it is more than 99 % sure, about points unlike any it was
# fitted on. Under the Laplace posterior the strips open into wedges: the logits' standard
# deviation grows with $\lVert\tilde\varphi\rVert$ as fast as the logits do, so far from the
# data the confidence no longer goes to 1 but levels off below it, the more so the closer
# the direction is to a boundary. Along two rays from the origin:

# %%
r = np.logspace(-0.5, 2.5, 60)
directions = {"into class 0 (90°)": np.pi / 2, "between classes 0 and 1 (140°)": np.deg2rad(140)}
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
for ax, (name, a) in zip(axes, directions.items()):
    ray = r[:, None] * np.array([np.cos(a), np.sin(a)])
    curves = {
        "MAP": jac.Softmax()(logits(theta_map, ray)),
        "Laplace, Monte Carlo": predict_mc(theta_map, Sigma, ray, samples=4000),
        "Laplace, probit": predict_probit(theta_map, logit_variances(Sigma, ray), ray),
    }
    for (label, p), style in zip(curves.items(), ["-", "--", ":"]):
        doubt = np.sort(p, axis=1)[:, :-1].sum(axis=1)     # 1 − max_k p_k, from the others: no cancellation
        ax.loglog(r, doubt, style, label=label, linewidth=1.5)
    ax.axvspan(r[0], 4, color="0.9", zorder=0)
    ax.set_ylim(1e-20, 1)
    ax.set_xlabel("distance from the origin (grey: where the data are)")
    ax.set_title(name, fontsize=10)
axes[0].set_ylabel("1 − confidence")
axes[0].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# On a log scale the difference is plain. The MAP's $1 - \text{confidence}$ (computed as the
# sum of the other classes' probabilities, so it keeps its digits) falls exponentially with
# the distance: 1e-20 at distance 20 into class 0, 1e-18 at 50 between classes. The Laplace
# predictive's levels off: into class 0 at 2.5e-4 (Monte Carlo, 4000 draws) and 7e-3
# (probit), between classes 0 and 1 at 0.06 and 0.13. The probit level is again the less
# confident of the two.
#
# ## 5 · Three structures on the same problem
#
# For a large layer the dense $P \times P$ matrix is out of reach ($P$ = 513,000 for
# D = 512, K = 1000). `structure='kron'` returns $A$ (K × K, the logits' curvature summed
# over the batch) and $B$ (the features' mean outer product, $(D+1) \times (D+1)$) with
# $A \otimes B \approx$ the full matrix (K-FAC: exact when every block $B_n$ is the same);
# `structure='diag'` returns the exact diagonal, shape (K, D + 1).

# %%
kron = jac.linear_curvature(X, head, z, y, kind="ggn", structure="kron")
diag = jac.linear_curvature(X, head, z, y, kind="ggn", structure="diag")
approx = {"full": G, "kron: np.kron(A, B)": kron.dense(), "diag": np.diag(diag.ravel())}
sizes = {"full": G.nbytes, "kron: np.kron(A, B)": kron.A.nbytes + kron.B.nbytes, "diag": diag.nbytes}
print(f"A {kron.A.shape}, B {kron.B.shape}, diag {diag.shape};  "
      f"|np.kron(A, B) − kron.dense()| = {np.abs(np.kron(kron.A, kron.B) - kron.dense()).max():.0e}")
print(f"\n{'structure':<22} {'‖· − full‖_F / ‖full‖_F':>24} {'|diagonal − full’s|':>20} {'bytes':>7}")
for name, M in approx.items():
    print(f"{name:<22} {np.linalg.norm(M - G) / np.linalg.norm(G):>24.3f} "
          f"{np.abs(np.diag(M) - np.diag(G)).max():>20.1e} {sizes[name]:>7}")

print(f"\nbytes in float32 for larger layers:\n{'D':>6} {'K':>6} {'P':>10} {'full P²':>10} {'kron K² + (D+1)²':>17} {'diag P':>9}")


def human(n):
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.0f} PB"


for d, k in [(D, K), (128, 10), (512, 1000), (2048, 1000)]:
    p_ = k * (d + 1)
    print(f"{d:>6} {k:>6} {p_:>10,} {human(4 * p_**2):>10} {human(4 * (k**2 + (d + 1) ** 2)):>17} {human(4 * p_):>9}")

# %% [markdown]
# Even on this 9 × 9 problem neither approximation is close in norm: 'diag' drops every
# off-diagonal entry, and 'kron' replaces $\sum_n B_n \otimes \tilde\varphi_n\tilde\varphi_n^\top$
# by $(\sum_n B_n) \otimes \overline{\tilde\varphi\tilde\varphi^\top}$, as if how confident a point
# is did not depend on where it lies (its diagonal is off too). What they cost is another
# matter: at D = 2048, K = 1000 the dense matrix would need 17 TB, the factors 21 MB.
#
# What matters for a Laplace posterior is the predictive. Each structure gives a
# precision (curvature + λI) whose logit variances have a cheap form: the diagonal's inverse
# is elementwise, and with eigendecompositions $A = Q_A \operatorname{diag}(a) Q_A^\top$,
# $B = Q_B \operatorname{diag}(b) Q_B^\top$,
# $(A \otimes B + \lambda I)^{-1} = (Q_A \otimes Q_B)\operatorname{diag}\big(1/(a_i b_j + \lambda)\big)(Q_A \otimes Q_B)^\top$,
# so $(\Sigma_z)_{kk} = \sum_{ij} (Q_A)_{ki}^2\, (Q_B^\top\tilde\varphi)_j^2 / (a_i b_j + \lambda)$ —
# neither needs a $P \times P$ matrix.

# %%
a, QA = np.linalg.eigh(kron.A)
b, QB = np.linalg.eigh(kron.B)


def kron_variances(X):
    return np.einsum("ki,nj,ij->nk", QA**2, (features(X) @ QB) ** 2, 1 / (np.outer(a, b) + lam))


def diag_variances(X):
    return features(X) ** 2 @ (1 / (diag + lam)).T


variances = {
    "full": lambda X: logit_variances(Sigma, X),
    "kron": kron_variances,
    "diag": diag_variances,
}
dense = {"kron": np.linalg.inv(kron.dense() + lam * np.eye(P)), "diag": np.diag(1 / (diag.ravel() + lam))}
for name in ("kron", "diag"):
    err = np.abs(variances[name](grid) - logit_variances(dense[name], grid)).max()
    print(f"{name}: variances from the factors against the dense inverse: {err:.0e}")

fig, axes = plt.subplots(2, 3, figsize=(11, 7.6), gridspec_kw={"height_ratios": [1, 1.2]})
vmax = max(np.abs(M).max() for M in approx.values())
for ax, (name, M) in zip(axes[0], approx.items()):
    im = ax.imshow(M, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    ax.set_title(f"{name}  ({sizes[name]} bytes)\nrel. error {np.linalg.norm(M - G) / np.linalg.norm(G):.2f}",
                 fontsize=10)
    ax.set_xticks(range(0, P, D + 1))
    ax.set_yticks(range(0, P, D + 1))
fig.colorbar(im, ax=axes[0], fraction=0.02, pad=0.02)
for ax, (name, var) in zip(axes[1], variances.items()):
    p = predict_probit(theta_map, var(X_test), X_test)
    cs = show_confidence(ax, predict_probit(theta_map, var(grid), grid).max(axis=1),
                         f"Laplace ({name}), probit: test NLL {-np.log(p[rows, y_test]).mean():.3f}")
fig.colorbar(cs, ax=axes[1], fraction=0.02, pad=0.02, ticks=[1 / 3, 0.5, 0.7, 0.9, 1], format="%.2f")
plt.show()

# %% [markdown]
# Top: the GGN in θ's order — 3 × 3 blocks, one per pair of classes, each a weighted sum of
# the features' $(D+1) \times (D+1)$ outer products — and its two approximations. 'kron' is
# too large on its diagonal here (the weights' entries by up to 5.2): its A sums the blocks
# of every point, and its B weighs every point's features alike, while the points far out
# along their own class, with the largest features, are the confident ones with the
# smallest blocks. 'diag' has the exact diagonal, but no zero directions: the shift
# shared by all logits, which the full GGN leaves to the prior alone, gets curvature too.
#
# Bottom: the probit confidence of the Laplace posterior built on each. All three keep
# the MAP's decisions and open wedges far from the data; 'kron' and 'diag' open them less
# (> 0.99 on 26 % and 44 % of the square, against 15 %). The test NLLs — 0.234 full, 0.229 kron, 0.216 diag, and 0.205 for the
# MAP itself — do not rank them: at λ = 1 the posterior matters away from the data, not
# near it. For a layer of this size take 'full'; for a large one, 'kron' keeps a coupling
# between classes and between features that 'diag' drops, at $K^2 + (D+1)^2$ and $P$
# numbers instead of $P^2$.
