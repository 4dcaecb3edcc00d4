# %% [markdown]
# # 08 · New heads: a learned variance, counts, focal loss and rankings
#
# Four heads that the curvature libraries lack, each exact in first and second order:
#
# * **Gaussian NLL with a learned variance** — `jac.Head(jac.MeanVariance(), jac.GaussianNLL())`:
#   the network predicts a mean and a variance (heteroscedastic regression), with torch's
#   `gaussian_nll_loss` semantics;
# * **Poisson NLL** — `jac.Head(jac.Identity(), jac.PoissonNLL())` on log-rates, torch's
#   `poisson_nll_loss`, the canonical log link;
# * **focal loss** — `jac.Head(jac.Softmax(), jac.FocalLoss(gamma))`, which turns the gradient
#   of confident, correct rows down;
# * **Plackett–Luce** — `jac.Head(jac.Identity(), jac.PlackettLuce())`, the likelihood of a
#   ranking, with Bradley–Terry as its two-candidate case.
#
# Everything below runs on numpy arrays; the linear last layer's curvature comes from
# `jac.linear_curvature` exactly as in notebook 07.

# %%
import matplotlib.pyplot as plt
import numpy as np

import jacobians as jac

plt.rcParams.update({"figure.dpi": 80})
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1 · Heteroscedastic regression: mean and variance by Fisher scoring
#
# One input $x \in [-3, 3]$, a target $y = \sin x + \sigma(x)\,\varepsilon$ whose noise grows
# away from the origin, $\sigma(x) = 0.1 + 0.25\,|x|$. The model is linear in 12 Gaussian bumps
# $\varphi(x)$ with two outputs, $z = W\varphi + b = (m, s)$; `MeanVariance` maps them to
# $\mu = m$ and $\sigma^2 = \operatorname{softplus}(s)$, and `GaussianNLL(reduction='sum')` is the
# negative log-likelihood $\sum_n \tfrac12\big(\log\sigma_n^2 + (\mu_n - y_n)^2/\sigma_n^2\big)$.
#
# The loss Hessian in $(\mu, \sigma^2)$ is indefinite where the residual is large, so Newton's
# method can step the wrong way. Fisher scoring uses the Fisher information instead, in
# $(\mu, \sigma^2)$ the positive $\operatorname{diag}(1/\sigma^2,\ 1/(2\sigma^4))$, pulled back
# through the link: `kind='fisher'`.

# %%
def true_sigma(x):
    return 0.1 + 0.25 * np.abs(x)


x = rng.uniform(-3, 3, size=300)
y_reg = (np.sin(x) + true_sigma(x) * rng.normal(size=x.size))[:, None]   # targets (N, K=1)
centres = np.linspace(-3.5, 3.5, 12)


def bumps(x):
    return np.exp(-0.5 * ((x[:, None] - centres) / 0.6) ** 2)


Phi = bumps(x)                                            # (N, D = 12)
gauss = jac.Head(jac.MeanVariance(), jac.GaussianNLL(reduction="sum"))
D, lam = Phi.shape[1], 1e-2
theta = np.zeros((2, D + 1))                              # [W | b], rows: mean, variance logit
for step in range(20):                                   # converged after ~15
    z = Phi @ theta[:, :D].T + theta[:, D]
    g = jac.linear_gradient(Phi, gauss, z, y_reg).ravel() + lam * theta.ravel()
    F = jac.linear_curvature(Phi, gauss, z, y_reg, kind="fisher") + lam * np.eye(theta.size)
    theta = theta - np.linalg.solve(F, g).reshape(theta.shape)
z = Phi @ theta[:, :D].T + theta[:, D]
print(f"negative log-likelihood after Fisher scoring: {gauss.loss(z, y_reg):.2f}")

# %% [markdown]
# A last-layer Laplace posterior on $\theta$ has precision $F + \lambda I$; the mean's
# parameters are the first $D + 1$ entries of $\theta$ (C order: output 0's weights, then its
# bias), so the mean's epistemic variance at $x$ is $\tilde\varphi^\top \Sigma_{\mu\mu}\tilde\varphi$.
# The predictive band adds the learned noise $\sigma^2(x)$; the right panel compares the learned
# $\sigma(x)$ with the true one.

# %%
x_grid = np.linspace(-3, 3, 200)
Phi_g = bumps(x_grid)
z_g = Phi_g @ theta[:, :D].T + theta[:, D]
a_g = jac.MeanVariance()(z_g)                             # (M, 2): μ, σ²
mu, var_noise = a_g[:, 0], a_g[:, 1]
Sigma = np.linalg.inv(F)                                  # F + λI at the fit
phi_t = np.hstack([Phi_g, np.ones((len(x_grid), 1))])
var_mu = np.einsum("md,de,me->m", phi_t, Sigma[: D + 1, : D + 1], phi_t)
band = 2 * np.sqrt(var_mu + var_noise)

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
ax1.scatter(x, y_reg[:, 0], s=6, color="0.6", label="data")
ax1.plot(x_grid, mu, color="C0", label="learned mean")
ax1.fill_between(x_grid, mu - band, mu + band, color="C0", alpha=0.2, label="±2 predictive sd")
ax1.plot(x_grid, np.sin(x_grid), "k--", lw=1, label="sin x")
ax1.legend(fontsize=8)
ax1.set_title("mean and Laplace predictive band")
ax2.plot(x_grid, np.sqrt(var_noise), label="learned σ(x)")
ax2.plot(x_grid, true_sigma(x_grid), "k--", label="true σ(x)")
ax2.legend(fontsize=8)
ax2.set_title("the noise the head learned")
plt.tight_layout()
plt.show()
err = np.abs(np.sqrt(var_noise) - true_sigma(x_grid))
inner = np.abs(x_grid) <= 2.5
print(f"learned σ against the true one: mean error {err.mean():.3f}, largest for |x| ≤ 2.5 {err[inner].max():.3f}, "
      f"at the ends (few data) {err[~inner].max():.3f}")

# %% [markdown]
# ## 2 · Poisson counts with Newton's method
#
# Counts $y \sim \operatorname{Poisson}(e^{w^\top x + b})$. With log-rates as the scores,
# `Identity` + `PoissonNLL(log_input=True)` is the canonical log link: its Hessian
# $\operatorname{diag}(e^{z})$ is its GGN and its Fisher, and Newton's method converges in a
# few steps.

# %%
X = rng.normal(size=(500, 3))
w_true, b_true = np.array([0.5, -0.3, 0.2]), 0.4
counts = rng.poisson(np.exp(X @ w_true + b_true))[:, None].astype(float)
pois = jac.Head(jac.Identity(), jac.PoissonNLL(log_input=True, reduction="sum"))
theta_p = np.zeros((1, 4))
for step in range(8):
    z = X @ theta_p[:, :3].T + theta_p[:, 3]
    g = jac.linear_gradient(X, pois, z, counts).ravel()
    H = jac.linear_curvature(X, pois, z, counts, kind="hessian")
    theta_p = theta_p - np.linalg.solve(H, g).reshape(theta_p.shape)
    print(f"step {step}: |gradient| = {np.linalg.norm(g):.2e}")
print("fitted w, b:", np.round(theta_p[0], 3), " true:", np.append(w_true, b_true))

# %% [markdown]
# ## 3 · Focal loss: the gradient of a confident row
#
# Focal loss $-\sum_k t_k (1 - p_k)^\gamma \log p_k$ multiplies cross-entropy by
# $(1 - p_t)^\gamma$. As the true class's probability $p_t \to 1$ its gradient falls like
# $(1 - p_t)^{\gamma + 1}$ instead of cross-entropy's $1 - p_t$. With $\gamma = 0$ it is
# cross-entropy. (For $\gamma < 1$ the second derivative is unbounded as $p_t \to 1$.)

# %%
gap = np.linspace(0, 12, 60)                        # logit of the true class above the others
z_conf = np.stack([gap, np.zeros_like(gap), np.zeros_like(gap)], axis=1)
t = np.zeros(len(gap), dtype=int)
p_t = jac.Softmax()(z_conf)[:, 0]
plt.figure(figsize=(5, 3.5))
for gamma in (0.0, 0.5, 1.0, 2.0):
    g = jac.Head(jac.Softmax(), jac.FocalLoss(gamma=gamma, reduction="sum")).grad(z_conf, t)
    plt.loglog(1 - p_t, np.abs(g[:, 0]), label=f"focal γ = {gamma:g}")
g_ce = jac.Head(jac.Softmax(), jac.CrossEntropy(reduction="sum")).grad(z_conf, t)
plt.loglog(1 - p_t, np.abs(g_ce[:, 0]), "k:", lw=2, label="cross-entropy")
plt.xlabel("1 − p_t")
plt.ylabel("|dE/dz_t|")
plt.legend(fontsize=8)
plt.title("focal vs cross-entropy as p_t → 1")
plt.tight_layout()
plt.show()
focal0 = jac.Head(jac.Softmax(), jac.FocalLoss(gamma=0.0, reduction="sum")).grad(z_conf, t)
print("γ = 0 equals cross-entropy's gradient:", np.allclose(focal0, g_ce, rtol=1e-14, atol=0))

# %% [markdown]
# ## 4 · Plackett–Luce: learning to rank from rankings
#
# Each row of targets is a ranking of M candidates, best first. The loss of a ranking $\pi$ is
# $\sum_i \big(\log\sum_{j \text{ not yet placed}} e^{z_j} - z_{\pi_i}\big)$: a softmax over the
# candidates left at each step, so its Hessian is a sum of softmax blocks (convex). Below, 300
# lists of M = 6 candidates, each candidate with 3 features and the score $x^\top w$; the
# rankings are drawn from the Plackett–Luce model itself (Gumbel top-R), and every other list
# keeps only its top 3 (−1 pads the rest). Newton's method on $w$ uses the head's gradient and
# Hessian blocks pushed through $\partial z/\partial w = X$, and a Laplace posterior
# $\operatorname{cov}(w) = H^{-1}/N$ (H is the mean loss's Hessian) says how far $w$ may be
# from the truth.

# %%
N, M, D = 300, 6, 3
w_true = np.array([1.5, -1.0, 0.5])
X = rng.normal(size=(N, M, D))
y_rank = np.argsort(-(X @ w_true + rng.gumbel(size=(N, M))), axis=-1)
y_rank[::2, 3:] = -1                                      # every other list: top 3 only
pl = jac.Head(jac.Identity(), jac.PlackettLuce())
w = np.zeros(D)
for step in range(6):
    z = X @ w
    g = np.einsum("nm,nmd->d", pl.grad(z, y_rank), X)
    H = np.einsum("nmd,nmk,nke->de", X, pl.hessian(z, y_rank), X)
    w = w - np.linalg.solve(H, g)
    print(f"step {step}: loss {float(pl.loss(X @ w, y_rank)):.6f}, w = {np.round(w, 4)}")
sd = np.sqrt(np.diag(np.linalg.inv(H) / N))
print("true w:", w_true, "| within 3 posterior sd:", bool(np.all(np.abs(w - w_true) < 3 * sd)))

# %% [markdown]
# **Bradley–Terry** is the case $M = 2$, $R = 1$: the loss of "the chosen candidate beats the
# other" is $-\log\sigma(z_\text{chosen} - z_\text{rejected})$.

# %%
z_pair = rng.normal(size=(6, 2))
chosen = rng.integers(0, 2, size=(6, 1))                   # the preferred candidate of each pair
bt = jac.Head(jac.Identity(), jac.PlackettLuce(reduction="none")).loss(z_pair, chosen)
margin = np.take_along_axis(z_pair, chosen, 1)[:, 0] - np.take_along_axis(z_pair, 1 - chosen, 1)[:, 0]
print("Plackett–Luce with M = 2 equals −log σ(z_chosen − z_rejected):",
      np.allclose(bt, np.logaddexp(0, -margin), rtol=1e-14))
