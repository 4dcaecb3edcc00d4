# %% [markdown]
# # 09 · Last-layer Laplace and influence functions
#
# `jac.LastLayerLaplace` puts a Laplace posterior on the weights θ = vec([W | b]) of a linear
# output layer, and `jac.influence` / `jac.self_influence` give the exact influence of the
# training rows on a test row's loss (the docs page `docs/laplace.md`). This notebook uses both on a small
# three-class problem:
#
# 1. tuning the prior precision δ by the evidence (the marginal likelihood), post hoc as
#    laplace-torch does and by re-fitting the MAP at the chosen δ (MacKay's loop);
# 2. a reliability diagram of the MAP against the Laplace predictive, on test data like the
#    training data and on data beyond it;
# 3. the training rows that most raise the loss of a misclassified test row;
# 4. self-influence finding labels flipped on purpose: precision at k.

# %%
import matplotlib.pyplot as plt
import numpy as np

import jacobians as jac

plt.rcParams.update({"figure.dpi": 80})
rng = np.random.default_rng(0)

# %% [markdown]
# ## Data, features, the MAP
#
# Three interleaved spiral arms in the plane, with enough angular noise that the classes
# overlap. The last layer sees fixed features: 30 Gaussian bumps centred on training inputs
# (a stand-in for a network's penultimate layer), so D = 30 and θ has P = 3 · 31 = 93
# entries. The MAP minimises the **summed** cross-entropy plus ½ δ |θ|² — the log-posterior
# that `LastLayerLaplace` assumes — by Newton's method with `jac.linear_gradient` and
# `jac.linear_curvature`.

# %%
K = 3


def spirals(n, rng, r_range=(0.2, 1.0)):
    y = rng.integers(0, K, n)
    r = rng.uniform(*r_range, n)
    angle = 2 * np.pi * y / K + 2.5 * r + 0.5 * rng.normal(size=n)
    return np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1), y


x_train, y_train = spirals(300, rng)
x_test, y_test = spirals(2000, rng)
x_far, y_far = spirals(2000, rng, r_range=(1.0, 1.4))   # beyond the training radius
centres = x_train[:30]


def features(x):
    return np.exp(-((x[:, None, :] - centres) ** 2).sum(-1) / (2 * 0.25**2))


F_train, F_test, F_far = features(x_train), features(x_test), features(x_far)
N, D = F_train.shape
head = jac.Head(jac.Softmax(), jac.CrossEntropy())               # what the model is trained with
summed = jac.Head(jac.Softmax(), jac.CrossEntropy(reduction="sum"))


def fit_map(F, y, delta, steps=20):
    """Newton's method on Σ ℓ_n + ½ δ |θ|²; returns W (K, D), b (K,)."""
    theta = np.zeros((K, D + 1))
    for _ in range(steps):
        z = F @ theta[:, :D].T + theta[:, D]
        g = jac.linear_gradient(F, summed, z, y) + delta * theta
        H = jac.linear_curvature(F, summed, z, y) + delta * np.eye(theta.size)
        theta -= np.linalg.solve(H, g.ravel()).reshape(theta.shape)
    return theta[:, :D], theta[:, D]


delta0 = 1e-2
W, b = fit_map(F_train, y_train, delta0)
print(f"MAP at δ = {delta0}: train accuracy {np.mean((F_train @ W.T + b).argmax(1) == y_train):.3f}, "
      f"test accuracy {np.mean((F_test @ W.T + b).argmax(1) == y_test):.3f}")

# %% [markdown]
# ## 1 · The evidence against the prior precision
#
# After `fit`, `la.log_marginal_likelihood(δ)` evaluates the Laplace evidence
# log p(D | θ\*) − ½ log det(P)/det(P₀) − ½ δ |θ\*|² at any δ without changing `la`, and
# `la.optimize_prior_precision()` sets δ to its maximiser. Post hoc, θ\* stays the MAP found
# at δ₀ (laplace-torch's practice). That MAP depends on δ₀, so the chosen δ does too: MacKay's
# loop re-fits the MAP at the chosen δ and tunes again, until δ settles.

# %%
grid = np.logspace(-3, 1, 60)
la = jac.LastLayerLaplace(head, prior_precision=delta0).fit(F_train, W, b, y_train)
evidence_post_hoc = [la.log_marginal_likelihood(d) for d in grid]
delta_post_hoc = la.optimize_prior_precision()

delta = delta_post_hoc
history = [delta0, delta]
for _ in range(30):                                   # MacKay: re-fit the MAP, tune again
    W, b = fit_map(F_train, y_train, delta)
    la = jac.LastLayerLaplace(head, prior_precision=delta).fit(F_train, W, b, y_train)
    delta = la.optimize_prior_precision()
    history.append(delta)
    if abs(np.log(history[-1] / history[-2])) < 1e-3:
        break
evidence_final = [la.log_marginal_likelihood(d) for d in grid]
print("δ along the loop:", " → ".join(f"{d:.3g}" for d in history))

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.semilogx(grid, evidence_post_hoc, label=f"at the MAP of δ₀ = {delta0}")
ax.semilogx(grid, evidence_final, label=f"at the MAP of δ = {delta:.3g} (loop converged)")
ax.axvline(delta_post_hoc, color="C0", ls=":", lw=1)
ax.axvline(delta, color="C1", ls=":", lw=1)
ax.set_xlabel("prior precision δ")
ax.set_ylabel("log evidence")
top = max(max(evidence_post_hoc), max(evidence_final))
ax.set_ylim(top - 150, top + 10)
ax.legend(fontsize=8)
ax.set_title("Laplace evidence; dotted: the maximiser")
plt.tight_layout()
plt.show()

# %% [markdown]
# Post hoc, the evidence at the MAP of δ₀ peaks at a δ a few times δ₀; re-fitting the MAP there
# moves the peak again, and the loop settles about an order of magnitude above where it began.
# The two curves are not the same function: each is the evidence of a Laplace approximation
# around a different θ\*. That is one reason post-hoc tuning can disagree with a model trained
# at the tuned value — the question users put to laplace-torch's marglik tuning.

# %% [markdown]
# ## 2 · Reliability: the MAP against the Laplace predictive
#
# The MAP predicts `softmax(z)`; the Laplace predictive averages over the posterior of θ —
# probit (`softmax(κ ⊙ f_mu)`, laplace-torch's default) and Monte Carlo over the exact
# Gaussian of the logits. A reliability diagram bins the test rows by confidence (the top
# probability) and plots each bin's accuracy against it: the diagonal is calibrated, below it
# overconfident. ECE is the bins' average gap, weighted by their size. Left: test data drawn
# like the training data; right: radii beyond the training data (1.0 to 1.4).


# %%
def reliability(p, y, bins=10):
    conf, hit = p.max(1), p.argmax(1) == y
    which = np.minimum((conf * bins).astype(int), bins - 1)
    rows = [(conf[which == k].mean(), hit[which == k].mean(), np.mean(which == k))
            for k in range(bins) if np.any(which == k)]
    c, a, w = map(np.array, zip(*rows))
    return c, a, float(np.sum(w * np.abs(a - c)))


fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for ax, (name, F, y) in zip(axes, [("test, like the training data", F_test, y_test),
                                   ("beyond the training radius", F_far, y_far)]):
    predictions = {
        "MAP": jac.Softmax()(F @ W.T + b),
        "Laplace, probit": la.predictive(F, link="probit"),
        "Laplace, MC (200)": la.predictive(F, link="mc", mc_samples=200, seed=0),
    }
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    for label, p in predictions.items():
        c, a, ece = reliability(p, y)
        nll = -np.mean(np.log(p[np.arange(len(y)), y]))
        ax.plot(c, a, "o-", ms=4, label=f"{label}: ECE {ece:.3f}, NLL {nll:.3f}")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{name} (accuracy {np.mean(predictions['MAP'].argmax(1) == y):.2f})")
    ax.legend(fontsize=7, loc="lower right")
plt.tight_layout()
plt.show()

# %% [markdown]
# On this problem the MAP is already well calibrated on data like its training data, and the
# Laplace predictive is **under**confident there (its curves lie above the diagonal): the
# posterior spreads the logits, and probit more than Monte Carlo, because κ shrinks each logit
# by its own variance, including the variance along the direction that softmax ignores (all
# logits moving together), which only the prior constrains. Beyond the training radius the MAP
# is overconfident (its bins from 0.7 up lie below the diagonal); the Laplace predictive lowers
# those confidences, overshooting in the top bins, and its NLL is a little lower than the MAP's.
# A Laplace posterior is no free calibration: it helps where the MAP is overconfident, and
# costs where it is not.

# %% [markdown]
# ## 3 · Which training rows made a test row wrong?
#
# For a test row j, `jac.influence` gives I[j, i] = −∇ℓ_jᵀ (H + λI)⁻¹ ∇ℓ_i, the first-order
# change of its loss when training row i is up-weighted, with H the θ-Hessian of the training
# loss as `head` reduces it (the mean) and λ = `damping`. Softmax's Hessian in θ is singular
# (adding one vector to every class's weights changes nothing), so a small damping is needed;
# here λ = δ / N, the prior's share of the mean loss. I > 0 marks a harmful row (removing it
# would lower the test loss), I < 0 a helpful one.

# %%
z_test = F_test @ W.T + b
wrong = np.flatnonzero(z_test.argmax(1) != y_test)
j = wrong[np.argmax(jac.Softmax()(z_test)[wrong].max(1))]       # the most confident mistake
damping = delta / N
infl = jac.influence(head, F_train, y_train, F_test[j:j + 1], y_test[j:j + 1], W, b,
                  damping=damping)[0]                              # (N_train,)
harmful, helpful = np.argsort(-infl)[:8], np.argsort(infl)[:8]
print(f"test row {j}: class {y_test[j]}, predicted {z_test[j].argmax()}")
print("most harmful training rows: classes", y_train[harmful], "influence", np.round(infl[harmful], 3))
print("most helpful training rows: classes", y_train[helpful], "influence", np.round(infl[helpful], 3))

fig, ax = plt.subplots(figsize=(5.5, 5))
colours = np.array(["C0", "C1", "C2"])
ax.scatter(*x_train.T, c=colours[y_train], s=10, alpha=0.35)
ax.scatter(*x_train[harmful].T, facecolors="none", edgecolors=colours[y_train[harmful]], s=120, lw=2,
           label="8 most harmful (I > 0)")
ax.scatter(*x_train[helpful].T, marker="s", facecolors="none", edgecolors=colours[y_train[helpful]], s=120,
           lw=2, label="8 most helpful (I < 0)")
ax.scatter(*x_test[j], marker="*", s=350, c=colours[y_test[j]], edgecolors="k",
           label=f"test row (class {y_test[j]}, predicted {z_test[j].argmax()})")
ax.legend(fontsize=8, loc="lower left")
ax.set_aspect("equal")
ax.set_title("influence on a misclassified test row")
plt.tight_layout()
plt.show()

# %% [markdown]
# The rows that most raise this test row's loss are rows of the predicted class around it: they
# pulled the boundary over it. The helpful rows are weaker and more spread out — not only rows of
# its true class: a row of the predicted class can help by bending the boundary elsewhere. The
# influence is exact: the same numbers come from the formula by hand, with the per-row
# gradients `g_n ⊗ [φ_n, 1]` and H from `jac.linear_curvature`:

# %%
rows = jac.Head(jac.Softmax(), jac.CrossEntropy(reduction="none"))


def row_gradients(F, y):
    g = rows.grad(F @ W.T + b, y)                                   # (n, K): each row's own loss
    Ft = np.hstack([F, np.ones((len(F), 1))])
    return (g[:, :, None] * Ft[:, None, :]).reshape(len(F), -1)     # (n, P) in θ's order


H = jac.linear_curvature(F_train, head, F_train @ W.T + b, y_train, kind="hessian")
by_hand = -row_gradients(F_test[j:j + 1], y_test[j:j + 1]) @ np.linalg.solve(
    H + damping * np.eye(len(H)), row_gradients(F_train, y_train).T)
print("largest difference from the formula by hand:", float(np.abs(by_hand[0] - infl).max()))
assert np.allclose(by_hand[0], infl, rtol=1e-9, atol=1e-9 * np.abs(infl).max())

# %% [markdown]
# ## 4 · Self-influence finds flipped labels
#
# Flip the labels of 30 training rows (10 %) to another class, re-fit the MAP, and score
# every row by its self-influence ∇ℓ_iᵀ (H + λI)⁻¹ ∇ℓ_i: how much the row's own loss would
# fall if it were up-weighted, large for rows the model can only fit by bending towards
# them. The precision at k is the share of flipped rows among the k top-scored rows; a random
# ranking gets 10 %. The row's own loss, a cheaper score, is the baseline; the EK-FAC (`'kron'`)
# and diagonal structures are the approximations influence packages use for whole networks.

# %%
flipped = rng.choice(N, size=30, replace=False)
y_noisy = y_train.copy()
y_noisy[flipped] = (y_noisy[flipped] + rng.integers(1, K, size=30)) % K
W_n, b_n = fit_map(F_train, y_noisy, delta)
scores = {
    "self-influence": jac.self_influence(head, F_train, y_noisy, W_n, b_n, damping=damping),
    "self-influence, 'kron' (EK-FAC)": jac.self_influence(head, F_train, y_noisy, W_n, b_n,
                                                         damping=damping, structure="kron"),
    "self-influence, 'diag'": jac.self_influence(head, F_train, y_noisy, W_n, b_n, damping=damping,
                                                 structure="diag"),
    "the row's loss": rows.loss(F_train @ W_n.T + b_n, y_noisy),
}
is_flipped = np.isin(np.arange(N), flipped)
ks = np.arange(1, 61)
fig, ax = plt.subplots(figsize=(6, 3.5))
for label, s in scores.items():
    hits = np.cumsum(is_flipped[np.argsort(-s)])[: len(ks)]
    ax.plot(ks, hits / ks, label=label)
    print(f"{label}: precision at 10 = {hits[9] / 10:.2f}, at 30 = {hits[29] / 30:.2f}")
ax.axhline(is_flipped.mean(), color="k", ls=":", lw=1, label="random ranking")
ax.axvline(30, color="0.6", lw=0.8)
ax.set_xlabel("k (rows inspected, highest score first)")
ax.set_ylabel("precision at k")
ax.set_ylim(0, 1.05)
ax.legend(fontsize=8)
ax.set_title("finding 30 flipped labels among 300")
plt.tight_layout()
plt.show()

# %% [markdown]
# Self-influence finds the flipped labels far better than chance, but on this problem no better
# than the row's own loss: for a linear last layer both are large for the same rows, those the
# model fits worst. The exact and EK-FAC rankings agree here and the diagonal one is a little
# worse. Self-influence earns its cost where the loss cannot see the problem — rows the model
# has memorised (low loss, high self-influence) — and its exact value on the last layer is what
# the cheaper approximations can be checked against.
