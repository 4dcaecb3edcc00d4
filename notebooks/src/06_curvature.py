# %% [markdown]
# # 06 · Curvature: Hessian blocks, GGN, Fisher, and a Newton step
#
# The second-order methods of a head give the curvature of the reduced loss
# $E$ = `head.loss(z, y)` with respect to the logits. Rows of a batch do not interact, so
# $\partial^2 E/\partial z\,\partial z$ is block diagonal, and the toolkit returns its
# blocks, shape `(N, K, K)`, each with the reduction's factor inside (1/N for `'mean'`):
#
# | method                          | what it returns                                                 |
# |---------------------------------|-----------------------------------------------------------------|
# | `head.hessian(z, y)`            | the blocks $H_n = \partial^2 E/\partial z_n \partial z_n$         |
# | `head.hvp(z, y, v)`             | $H_n v_n$ per row, without the blocks                           |
# | `head.ggn(z, y)`                | the generalized Gauss–Newton blocks $J^\top H_a J$               |
# | `head.sqrt_ggn(z, y)`           | a factor $S$ with $S S^\top$ = the GGN blocks                    |
# | `head.fisher(z, y, kind=...)`   | the exact, Monte-Carlo or empirical Fisher blocks                |
#
# This notebook looks at the blocks of a few heads, compares the GGN with the Hessian where
# they differ, watches the Monte-Carlo Fisher converge, and uses the blocks for Newton's
# method on a small multinomial logistic regression.

# %%
import matplotlib.pyplot as plt
import numpy as np

import jacobians as jac

plt.rcParams.update({"figure.dpi": 90})
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1 · The Hessian blocks of one sample
#
# One row of six logits through four heads. The losses use `reduction='sum'`, so the
# block is the Hessian of that sample's own loss (with `'mean'` it would be divided by N,
# or by N·K for an elementwise loss).

# %%
z1 = np.array([[1.2, 0.2, -0.6, 1.0, -1.4, 0.9]])
k1 = 3                                          # the target class
heads = {
    "softmax + CE": (jac.Head(jac.Softmax(), jac.CrossEntropy(reduction="sum")), np.array([k1])),
    "sigmoid + BCE": (jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy(reduction="sum")),
                      np.array([[0.0, 1.0, 0.0, 1.0, 0.0, 0.0]])),
    "softmax + MSE": (jac.Head(jac.Softmax(), jac.MeanSquaredError(reduction="sum")), np.eye(6)[[k1]]),
    "sparsemax + sparsemax loss": (jac.Head(jac.Sparsemax(), jac.SparsemaxLoss(reduction="sum")), np.array([k1])),
}
print("softmax:  ", np.round(jac.Softmax()(z1)[0], 3))
print("sparsemax:", np.round(jac.Sparsemax()(z1)[0], 3))

fig, axes = plt.subplots(1, 4, figsize=(12, 3.3))
for ax, (name, (head, y)) in zip(axes, heads.items()):
    H = head.hessian(z1, y)[0]
    vmax = np.abs(H).max()
    im = ax.imshow(H, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    ax.set_title(name, fontsize=10)
    ax.set_xticks(range(6))
    ax.set_yticks(range(6))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
fig.suptitle("Hessian block ∂²E/∂z∂z of one sample (red > 0, blue < 0)", fontsize=11)
fig.tight_layout()
plt.show()

# %% [markdown]
# What the heatmaps show:
#
# - **softmax + CE**: $\operatorname{diag}(p) - p p^\top$, the softmax Jacobian itself; it
#   does not depend on the target at all, every row sums to zero (adding a constant to
#   all logits changes nothing), and it is positive semi-definite.
# - **sigmoid + BCE**: diagonal, $\sigma(z_k)\,\sigma(-z_k)$; the outputs are independent.
# - **softmax + MSE**: dense and with no sign pattern: the target enters, and so does the
#   softmax's own curvature weighted by the residual $a - y$. Entry $(3, 3)$ — the target
#   class — is negative: the block is indefinite (section 2).
# - **sparsemax + sparsemax loss**: $\operatorname{diag}(s) - s s^\top/|S|$ with $s$ the
#   support indicator: non-zero only on the support $\{0, 3, 5\}$, zero curvature for the
#   logits sparsemax sets to 0.
#
# The blocks agree with the chain rule (`method='chain'`) and, for a canonical pair, with
# the GGN:

# %%
for name, (head, y) in heads.items():
    H = head.hessian(z1, y)
    chain = "fused-only" if head.logits_loss else f"{np.abs(head.hessian(z1, y, method='chain') - H).max():.0e}"
    print(f"{name:<28} canonical: {head.ggn_is_hessian!s:<5}  |chain − fused| = {chain:<10}  "
          f"|GGN − H| = {np.abs(head.ggn(z1, y) - H).max():.2g}")

# %% [markdown]
# ## 2 · GGN against Hessian for a non-canonical pair
#
# The chain rule at second order, with $a$ the activation's output and $J = \partial a/\partial z$:
#
# $$H_z = \underbrace{J^\top H_a J}_{\text{GGN}} + \sum_i \frac{\partial E}{\partial a_i}\, \nabla^2 a_i .$$
#
# For a *canonical* pair (softmax + CE, log-softmax + NLL, sigmoid + BCE, identity + MSE, a
# Fenchel–Young loss with its own map) the second term cancels against part of the first
# and the GGN *is* the Hessian; `head.ggn_is_hessian` says so. For softmax + MSE it does
# not: the curvature term, `act.hessian_vjp(z, dE/da)`, has either sign. The GGN is
# positive semi-definite whenever the loss is convex in $a$; the Hessian need not be.
# Below, the blocks of 400 samples of softmax + MSE.

# %%
canonical = jac.Head(jac.Softmax(), jac.CrossEntropy())
head = jac.Head(jac.Softmax(), jac.MeanSquaredError(reduction="sum"))
print("softmax + CE  ggn_is_hessian:", canonical.ggn_is_hessian)
print("softmax + MSE ggn_is_hessian:", head.ggn_is_hessian)

N, K = 400, 5
z = 2.0 * rng.normal(size=(N, K))
Y = np.eye(K)[rng.integers(0, K, size=N)]
H, G = head.hessian(z, Y), head.ggn(z, Y)
a = head.activation(z)
curvature_term = head.activation.hessian_vjp(z, head.loss_fn.grad(a, Y))
print(f"|H − (GGN + hessian_vjp(z, dE/da))| = {np.abs(H - (G + curvature_term)).max():.1e}")

eig_H, eig_G = np.linalg.eigvalsh(H), np.linalg.eigvalsh(G)          # (N, K), ascending
print(f"smallest GGN eigenvalue over the batch: {eig_G.min():.1e}  (PSD up to round-off)")
print(f"blocks with a negative Hessian eigenvalue < −1e-12: {np.mean(eig_H[:, 0] < -1e-12):.0%}, "
      f"smallest {eig_H.min():.3f}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1.5, 1]})
show = np.argsort(eig_H[:, 0])[:: N // 40]                           # 40 samples, sorted by λ_min(H)
x = np.arange(len(show))
for k in range(K):
    ax1.plot(x - 0.15, eig_G[show, k], "o", color="C0", markersize=3, label="GGN" if k == 0 else None)
    ax1.plot(x + 0.15, eig_H[show, k], "x", color="C3", markersize=4, label="Hessian" if k == 0 else None)
ax1.axhline(0, color="0.5", linewidth=0.8)
ax1.set_xlabel("sample (sorted by the Hessian's smallest eigenvalue)")
ax1.set_ylabel("eigenvalues of the block")
ax1.set_title("softmax + MSE: the K eigenvalues of 40 blocks")
ax1.legend(fontsize=8)
bins = np.linspace(eig_H[:, 0].min(), 0.05, 40)
ax2.hist(eig_H[:, 0], bins=bins, color="C3", alpha=0.7, label="Hessian")
ax2.hist(eig_G[:, 0], bins=bins, color="C0", alpha=0.7, label="GGN")
ax2.set_xlabel("smallest eigenvalue of a block")
ax2.set_ylabel("samples")
ax2.set_title(f"over all {N} samples")
ax2.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Every block has one zero eigenvalue, along $(1, \dots, 1)$: softmax ignores a shift of
# all logits. The GGN's other eigenvalues are positive; the Hessian's smallest is
# negative for most samples, and most negative for those whose prediction is far from
# the target, where the residual $a - y$ weighs the softmax's curvature most. That is why
# second-order optimisers and Laplace approximations use the GGN for such pairs: a
# Newton step with an indefinite Hessian can go uphill. Its factor `head.sqrt_ggn` (K×K
# here) gives the GGN exactly:

# %%
S = head.sqrt_ggn(z, Y)
print("S:", S.shape, f" |S Sᵀ − GGN| = {np.abs(S @ np.swapaxes(S, -1, -2) - G).max():.1e}")

# %% [markdown]
# ## 3 · The Monte-Carlo Fisher and its 1/√M error
#
# The (type-2) Fisher is the expected outer product of the per-sample gradient when the
# target $\hat y$ is drawn from the model's own predictive distribution, here
# $\hat y \sim \operatorname{Categorical}(p)$. `head.fisher(z, y)` computes it in closed
# form; `head.sqrt_ggn_sampled(z, M, seed)` draws M targets per row and returns their
# gradients as M columns, scaled so that $S S^\top$ averages them:
# `head.fisher(z, y, kind='mc', mc_samples=M)`. Its error should fall like $1/\sqrt{M}$.
#
# With label smoothing the loss is no longer the model's negative log-likelihood, and the
# Fisher is *not* the Hessian: $(1-\varepsilon)^2(\operatorname{diag}p - pp^\top) +
# \varepsilon^2 (p - 1/K)(p - 1/K)^\top$ against $\operatorname{diag}p - pp^\top$. The
# sampled Fisher converges to the Fisher, so its distance to the Hessian levels off.

# %%
head = jac.Head(jac.Softmax(), jac.CrossEntropy(label_smoothing=0.1))
N, K = 32, 10
z = rng.normal(size=(N, K))
y = rng.integers(0, K, size=N)
F, H = head.fisher(z, y), head.hessian(z, y)
print(f"‖F − H‖ / ‖F‖ = {np.linalg.norm(F - H) / np.linalg.norm(F):.3f}")

Ms = np.unique(np.logspace(0, 3, 10).astype(int))
seeds = range(5)
err_F = np.array([[np.linalg.norm(head.fisher(z, y, kind="mc", mc_samples=int(M), seed=s) - F) for M in Ms]
                  for s in seeds]) / np.linalg.norm(F)
err_H = np.array([[np.linalg.norm(head.fisher(z, y, kind="mc", mc_samples=int(M), seed=s) - H) for M in Ms]
                  for s in seeds]) / np.linalg.norm(F)

fig, ax = plt.subplots(figsize=(6.4, 3.9))
for e in err_F:
    ax.loglog(Ms, e, color="C0", alpha=0.25, linewidth=0.8)
ax.loglog(Ms, err_F.mean(axis=0), "o-", color="C0", markersize=4, label="MC Fisher − exact Fisher")
ax.loglog(Ms, err_H.mean(axis=0), "s-", color="C3", markersize=4, label="MC Fisher − Hessian")
ax.loglog(Ms, err_F.mean(axis=0)[0] / np.sqrt(Ms), "--", color="0.4", label="1/√M")
ax.axhline(np.linalg.norm(F - H) / np.linalg.norm(F), color="C3", linewidth=0.8, linestyle=":")
ax.set_xlabel("mc_samples M")
ax.set_ylabel("relative error (Frobenius, over the batch)")
ax.set_title(f"softmax + CE, label smoothing 0.1: {N} rows, {K} classes, {len(seeds)} seeds")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The error against the exact Fisher follows the $1/\sqrt M$ line over three decades (thin
# lines: each seed; the draws are a function of the seed, the row and the sample only,
# so the figure is reproducible). Against the Hessian the error stops at
# $\lVert F - H\rVert$ (dotted): more samples do not turn the Fisher into the Hessian.
# Without label smoothing (or class weights) the three coincide:

# %%
plain = jac.Head(jac.Softmax(), jac.CrossEntropy())
print("plain CE: |Fisher − Hessian| =", np.abs(plain.fisher(z, y) - plain.hessian(z, y)).max())
print("empirical Fisher (gradients at the true targets) − Hessian:",
      f"{np.abs(plain.fisher(z, y, kind='empirical') - plain.hessian(z, y)).max():.3f}  (not the same thing)")

# %% [markdown]
# ## 4 · Newton against gradient descent: multinomial logistic regression
#
# Three classes of 2-d points, a linear layer $z_n = W \tilde x_n$ with
# $\tilde x_n = (x_n, 1)$ and $W$ of shape $(K, D + 1)$, softmax + CE with `'mean'`. The
# gradient with respect to $W$ is $\sum_n (\partial E/\partial z_n)\, \tilde x_n^\top$.
# A linear layer adds no curvature of its own, so the Hessian with respect to
# $\theta = \operatorname{vec}(W)$ is the logits' blocks pushed through it:
#
# $$\nabla^2_\theta E = \sum_n H_n \otimes \tilde x_n \tilde x_n^\top ,$$
#
# one `np.einsum` from `head.hessian`. Softmax ignores adding the same vector to every row
# of $W$, so this matrix is singular; a small damping $\lambda I$ ($\lambda = 10^{-8}$)
# makes it invertible, and the gradient has no component along that direction anyway.
# Gradient descent takes the step $1/L$ with
# $L = \tfrac12 \lambda_{\max}(\tfrac1N \sum_n \tilde x_n \tilde x_n^\top)$, an upper bound
# on the curvature ($\operatorname{diag}p - pp^\top \preceq \tfrac12 I$).

# %%
N, D, K = 300, 2, 3
centers = np.array([[0.0, 0.0], [2.0, 1.0], [0.5, 2.2]])
labels = rng.integers(0, K, size=N)
X = centers[labels] + rng.normal(size=(N, D))
Xt = np.hstack([X, np.ones((N, 1))])                       # x̃ = (x, 1)
head = jac.Head(jac.Softmax(), jac.CrossEntropy())


def loss_and_grad(W):
    value, dE_dz = head.value_and_grad(Xt @ W.T, labels)
    return value, dE_dz.T @ Xt                             # (K, D + 1)


def theta_hessian(W):
    Hn = head.hessian(Xt @ W.T, labels)                    # (N, K, K), with the 1/N inside
    P = K * (D + 1)
    return np.einsum("nkl,nd,ne->kdle", Hn, Xt, Xt).reshape(P, P)


# the θ-Hessian against central differences of the gradient along a random direction
W0, V = rng.normal(size=(K, D + 1)), rng.normal(size=(K, D + 1))
h = 1e-5
fd = (loss_and_grad(W0 + h * V)[1] - loss_and_grad(W0 - h * V)[1]) / (2 * h)
print(f"|∇²θ E · v − finite differences| = {np.abs(theta_hessian(W0) @ V.ravel() - fd.ravel()).max():.1e}")

# %%
def newton(W, steps, damping=1e-8):
    history = [loss_and_grad(W)[0]]
    for _ in range(steps):
        _, g = loss_and_grad(W)
        A = theta_hessian(W) + damping * np.eye(W.size)
        W = W - np.linalg.solve(A, g.ravel()).reshape(W.shape)
        history.append(loss_and_grad(W)[0])
    return W, np.array(history)


def gradient_descent(W, steps, lr):
    history = [loss_and_grad(W)[0]]
    for _ in range(steps):
        W = W - lr * loss_and_grad(W)[1]
        history.append(loss_and_grad(W)[0])
    return W, np.array(history)


L = 0.5 * np.linalg.eigvalsh(Xt.T @ Xt / N).max()
W_newton, E_newton = newton(np.zeros((K, D + 1)), steps=10)
W_gd, E_gd = gradient_descent(np.zeros((K, D + 1)), steps=200, lr=1 / L)
E_star = E_newton[-1]
print(f"loss after 10 Newton steps {E_newton[-1]:.12f}, after 200 gradient steps {E_gd[-1]:.12f}")
print(f"accuracy {np.mean((Xt @ W_newton.T).argmax(axis=1) == labels):.1%}")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.9), gridspec_kw={"width_ratios": [1, 1.3]})
g0, g1 = np.meshgrid(np.linspace(-3, 5, 120), np.linspace(-3, 5, 120))
grid = np.stack([g0.ravel(), g1.ravel(), np.ones(g0.size)], axis=1)
ax1.contourf(g0, g1, (grid @ W_newton.T).argmax(axis=1).reshape(g0.shape), levels=[-0.5, 0.5, 1.5, 2.5],
             colors=["#c6dbef", "#fdd0a2", "#c7e9c0"])
for k, color in enumerate(["C0", "C1", "C2"]):
    ax1.plot(*X[labels == k].T, ".", color=color, markersize=3)
ax1.set_title("data and the fitted classes")
ax2.semilogy(np.maximum(E_newton - E_star, 1e-16), "o-", color="C3", markersize=4, label="Newton (θ-Hessian)")
ax2.semilogy(np.maximum(E_gd - E_star, 1e-16), "-", color="C0", label="gradient descent, step 1/L")
ax2.set_xlabel("iteration")
ax2.set_ylabel("E − E*  (0 drawn at 1e-16)")
ax2.set_title("loss above the optimum")
ax2.set_xlim(-3, 200)
ax2.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Newton's method reaches the optimum to round-off in about six steps — the quadratic
# convergence of a smooth convex loss near its minimum — while gradient descent with its
# safe step is still about 10⁻⁴ above it after 200 steps, slowed down by the directions
# of small curvature that Newton's step rescales. Each Newton step costs a solve of size
# K·(D + 1); for a large layer that is what `head.hvp` (conjugate gradients) or the
# factor `head.sqrt_ggn` (Kronecker-factored or low-rank approximations) are for.
