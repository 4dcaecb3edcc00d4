# %% [markdown]
# # 01 · The softmax Jacobian, from the derivation to the N×K×K array
#
# Softmax maps logits $z \in \mathbb{R}^K$ to probabilities
# $s_i = e^{z_i} / \sum_k e^{z_k}$. Differentiating the quotient,
#
# $$\frac{\partial s_i}{\partial z_j} = s_i\,(\delta_{ij} - s_j),
# \qquad\text{i.e.}\qquad J = \operatorname{diag}(s) - s\,s^\top .$$
#
# The toolkit's layout is `J[..., i, j] = ∂a_i/∂z_j` (row = output, column = input), and a
# batch of N samples gives an array of shape `(N, K, K)`. This notebook builds that array,
# looks at it, and checks it against a plain loop.

# %%
import matplotlib.pyplot as plt
import numpy as np

import jacobians as jac

plt.rcParams.update({"figure.dpi": 90})
rng = np.random.default_rng(0)

# %% [markdown]
# ## Build it
#
# Four samples of five logits. `jac.Softmax()` is callable (`softmax(z)` is the forward
# pass) and `softmax.jacobian(z)` returns the whole batch of Jacobians at once, built without
# a Python loop over samples.

# %%
z = rng.normal(size=(4, 5))          # (N, K)
softmax = jac.Softmax()
s = softmax(z)                       # (N, K), rows sum to 1
J = softmax.jacobian(z)              # (N, K, K), J[n, i, j] = ∂s_i/∂z_j of sample n
print("s:", s.shape, "J:", J.shape)
print("sample 0 equals diag(s) − s sᵀ:", np.allclose(J[0], np.diag(s[0]) - np.outer(s[0], s[0])))

# %% [markdown]
# One sample's Jacobian as a heatmap: positive on the diagonal ($s_i(1-s_i)$), negative
# everywhere else ($-s_i s_j$), and symmetric.

# %%
fig, ax = plt.subplots(figsize=(4.6, 3.8))
lim = np.abs(J[0]).max()
im = ax.imshow(J[0], cmap="RdBu_r", vmin=-lim, vmax=lim)
for i in range(5):
    for j in range(5):
        color = "white" if abs(J[0, i, j]) > 0.6 * lim else "black"
        ax.text(j, i, f"{J[0, i, j]:+.3f}", ha="center", va="center", fontsize=8, color=color)
ax.set_xlabel("input j (logit $z_j$)")
ax.set_ylabel("output i (probability $s_i$)")
ax.set_title("softmax Jacobian of sample 0")
ax.set_xticks(range(5))
ax.set_yticks(range(5))
fig.colorbar(im, ax=ax, shrink=0.8)
plt.show()

# %% [markdown]
# ## The diagonal is a view
#
# `jac.diagonal(J)` returns each Jacobian's diagonal, shape `(N, K)`, as a *view* into
# `J` (`np.einsum('...jj->...j', J)`): no copy, and writing to it writes to `J`. This is how
# the dense Jacobian is built in two vectorized steps — the outer product
# `einsum('ij,ik->ijk', s, -s)`, then `s` added onto the diagonal view.

# %%
d = jac.diagonal(J)
print("shape:", d.shape, "| shares memory with J:", np.shares_memory(d, J))
print("diagonal equals s(1 − s):", np.allclose(d, s * (1 - s)))

# the two-step construction, by hand
J_hand = np.einsum("ij,ik->ijk", s, -s)   # −s_i s_j everywhere
jac.diagonal(J_hand)[...] += s            # + s_i on the diagonal, in place
print("two-step construction equals softmax.jacobian(z):", np.allclose(J_hand, J))

# %%
J_copy = J.copy()
jac.diagonal(J_copy)[0, 2] = 7.0          # write through the view ...
print("J_copy[0, 2, 2] =", J_copy[0, 2, 2])   # ... and the array itself changed

# %% [markdown]
# ## Rank one plus diagonal
#
# $J = \operatorname{diag}(s) - s s^\top$ is a diagonal matrix minus a rank-one matrix.
# Three consequences you can check numerically:
#
# * **rows and columns sum to 0**: $\sum_j s_i(\delta_{ij} - s_j) = s_i - s_i \sum_j s_j = 0$,
#   so $J\mathbf 1 = 0$ — adding a constant to every logit does not change softmax;
# * hence **one eigenvalue is 0** (eigenvector $\mathbf 1$);
# * $J$ is symmetric and positive semi-definite, so the other eigenvalues are positive
#   (for $0 < s_i$ they lie between the sorted $s_i$, by interlacing).

# %%
print("max |row sum|:   ", f"{np.abs(J.sum(axis=-1)).max():.1e}")
print("max |column sum|:", f"{np.abs(J.sum(axis=-2)).max():.1e}")
eig = np.linalg.eigvalsh(J)               # (N, K), ascending, for every sample at once
print("eigenvalues of each sample's J (rounded):")
print(np.round(eig, 4) + 0.0)
print("smallest |eigenvalue| per sample < 1e-15:", np.abs(eig[:, 0]).max() < 1e-15)

# %% [markdown]
# The structure means the Jacobian never has to be stored densely.
# `softmax.jacobian_operator(z)` keeps only a few `(N, K)` arrays, `J = diag(d) − u vᵀ`,
# and still does everything the dense array does: `op @ v` (Jacobian–vector product),
# `g @ op` (vector–Jacobian product, the chain rule), `op.diagonal()`, and `op.dense()`
# when you really want the array.

# %%
op = softmax.jacobian_operator(z)
print(op)
g = rng.normal(size=z.shape)              # some upstream gradient dE/ds
print("op.dense() equals J:        ", np.allclose(op.dense(), J))
print("g @ op equals contract(g, J):", np.allclose(g @ op, jac.contract(g, J)))
print("op @ g equals J @ g:         ", np.allclose(op @ g, np.einsum("nij,nj->ni", J, g)))

# %% [markdown]
# At the sizes where Jacobians hurt, the difference is the point: a batch of 1024 samples
# over 1000 classes would need 8 GB as a dense float64 array; the operator holds at most
# three `(N, K)` arrays, tens of megabytes (nothing dense is built here).

# %%
z_big = rng.normal(size=(1024, 1000))
op_big = softmax.jacobian_operator(z_big)
print(f"dense Jacobian: {op_big.dense_nbytes / 1e9:.2f} GB")
print(f"operator:       {op_big.nbytes / 1e6:.1f} MB   (ratio {op_big.dense_nbytes / op_big.nbytes:.0f}×)")

# %% [markdown]
# ## Equivalence with a loop reference
#
# The obvious way to build the batch — one sample at a time, `np.diag(s) − np.outer(s, s)`
# — is slow but hard to get wrong, which makes it a good reference. `jacobians.testing`
# ships such loop references for every built-in activation (they share no code with the
# vectorized kernels), and assertions with dtype-aware tolerances for your own test suite.
# The vectorized array agrees with the loop to round-off, and both agree with central
# finite differences (`jac.numerical_jacobian`), the independent referee.

# %%
from jacobians import testing

J_loop = testing.loop_jacobian(softmax, z)          # one sample at a time, float64
testing.assert_jacobian_close(J, J_loop)             # raises AssertionError with a report if not
J_num = jac.numerical_jacobian(softmax, z)
print(f"max |J − loop reference|     = {np.abs(J - J_loop).max():.1e}")
print(f"max |J − finite differences| = {np.abs(J - J_num).max():.1e}")
