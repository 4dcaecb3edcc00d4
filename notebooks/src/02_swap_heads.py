# %% [markdown]
# # 02 · Swap heads: one set of logits, many (activation, loss) pairs
#
# A *head* is the last activation of a network and the loss on top of it. What training
# needs is $\partial E/\partial z$, the gradient with respect to the logits.
# `jac.Head(activation, loss)` gives it for any pair that makes sense, three ways:
#
# | method       | how                                                     | cost     |
# |--------------|---------------------------------------------------------|----------|
# | `'jacobian'` | build the N×K×K Jacobian, contract it with dE/da        | O(N·K²)  |
# | `'vjp'`      | the activation's closed-form vector–Jacobian product    | O(N·K)   |
# | `'fused'`    | the pair's own closed form, e.g. softmax + CE → (s − y)/N | O(N·K) |
#
# This notebook runs the same logits through many pairs, checks that the methods agree,
# and looks at what the toolkit says about pairs that make no sense.

# %%
import matplotlib.pyplot as plt
import numpy as np

import jacobians as jac

plt.rcParams.update({"figure.dpi": 90})
rng = np.random.default_rng(0)

N, K = 6, 4
z = rng.normal(size=(N, K))              # the same logits for every head
y = rng.integers(0, K, size=N)           # class indices, for class losses
Y = np.eye(K)[y]                         # the same targets as one-hot rows, for the others


def targets_for(loss):
    """Class losses take indices; every other loss gets the one-hot rows."""
    return y if loss.target_kind == "class" else Y


print("logits z:\n", np.round(z, 3))
print("targets y:", y)

# %% [markdown]
# ## Which pairs make sense
#
# Every activation declares what it outputs (`'open_simplex'` for softmax,
# `'open_unit_interval'` for sigmoid, `'real'` for the identity, ...) and every loss what it
# accepts. A pair is valid when the output lies inside the accepted domain.
# `jac.pairs()` walks the registries and lists every valid pair, with whether it has a
# fused rule.

# %%
valid = jac.pairs()
acts, losses = list(jac.ACTIVATIONS), list(jac.LOSSES)
print(f"{len(valid)} valid pairs out of {len(acts)} activations × {len(losses)} losses = {len(acts) * len(losses)}")
print("with a fused rule:", [(p.activation, p.loss) for p in valid if p.fused])

grid = np.zeros((len(acts), len(losses)))
for p in valid:
    grid[acts.index(p.activation), losses.index(p.loss)] = 2 if p.fused else 1
fig, ax = plt.subplots(figsize=(6.4, 4.4))
ax.imshow(grid, cmap=plt.matplotlib.colors.ListedColormap(["#eeeeee", "#9ecae1", "#08519c"]), vmin=0, vmax=2)
ax.set_xticks(np.arange(len(losses) + 1) - 0.5, minor=True)
ax.set_yticks(np.arange(len(acts) + 1) - 0.5, minor=True)
ax.grid(which="minor", color="white", linewidth=1.5)
ax.tick_params(which="minor", length=0)
ax.set_xticks(range(len(losses)), losses, rotation=45, ha="right")
ax.set_yticks(range(len(acts)), acts)
ax.set_title("valid pairs (light) and pairs with a fused rule (dark)")
plt.show()

# %% [markdown]
# ## The three methods agree
#
# For a few heads, every method the pair supports, compared with each other and with a
# central-difference gradient of `head.loss` (`jac.numerical_grad`, the independent
# referee). `'auto'` picks `'fused'` when there is a rule, else `'vjp'`.

# %%
def methods_of(head):
    """The methods a head supports: 'fused' if it has a rule; 'vjp'/'jacobian' unless the
    loss is a Fenchel–Young loss of its own mapping's logits (then only 'fused')."""
    return (["fused"] if head.fused_rule else []) + ([] if head.logits_loss else ["vjp", "jacobian"])


def compare(head, t, x=z):
    grads = {m: head.grad(x, t, method=m) for m in methods_of(head)}
    numeric = jac.numerical_grad(lambda v: head.loss(v, t), x)
    first = next(iter(grads.values()))
    spread = max(np.abs(g - first).max() for g in grads.values())
    error = max(np.abs(g - numeric).max() for g in grads.values())
    return grads, spread, error


shown = [
    ("softmax", "cross_entropy"), ("log_softmax", "nll"), ("softmax", "mse"), ("sigmoid", "binary_cross_entropy"),
    ("sigmoid", "mse"), ("identity", "mse"), ("sparsemax", "sparsemax_loss"), ("entmax15", "entmax15_loss"),
]
heads = {pair: jac.Head(jac.ACTIVATIONS[pair[0]](), jac.LOSSES[pair[1]]()) for pair in shown}

print(f"{'activation':12} {'loss':21} {'auto':6} {'methods':20} {'max |Δ methods|':>16} {'max |Δ numeric|':>16}")
results = {}
for (a, lo), head in heads.items():
    grads, spread, error = compare(head, targets_for(head.loss_fn))
    results[a, lo] = grads[head.method]
    print(f"{a:12} {lo:21} {head.method:6} {'/'.join(grads):20} {spread:16.1e} {error:16.1e}")

# %% [markdown]
# And over every valid pair of the registries:

# %%
def inputs_for(head, draw=np.random.default_rng(1)):
    """The logits and targets for any head: a loss whose targets are shaped unlike its input
    (rankings; one target per mean of [μ | σ²]) draws its own, and its own input where z is
    that input (Identity: σ² > 0); every other head takes z and targets_for."""
    loss = head.loss_fn
    x = z
    if getattr(loss, "example_input", None) is not None and isinstance(head.activation, jac.Identity):
        x = loss.example_input(z.shape, draw)
    t = loss.example_targets(z.shape, draw) if getattr(loss, "example_targets", None) else targets_for(loss)
    return x, t


worst_spread = worst_error = 0.0
for p in valid:
    head = jac.Head(jac.ACTIVATIONS[p.activation](), jac.LOSSES[p.loss]())
    x, t = inputs_for(head)
    _, spread, error = compare(head, t, x)
    worst_spread, worst_error = max(worst_spread, spread), max(worst_error, error)
print(f"{len(valid)} pairs: methods agree within {worst_spread:.0e}; "
      f"finite differences within {worst_error:.0e}")

# %% [markdown]
# ## Same logits, different gradients
#
# The gradient each head sends back into the network, one panel per pair (rows are
# samples, columns are classes, the dot marks each sample's target). Colours are scaled
# per panel, with the largest |dE/dz| in the title. Softmax + cross-entropy pushes the
# target up and every other class down by its probability; sparsemax and 1.5-entmax give
# exact zeros; MSE through softmax or sigmoid is damped where the output saturates.

# %%
fig, axes = plt.subplots(2, 4, figsize=(10, 4.8), sharex=True, sharey=True)
for ax, ((a, lo), g) in zip(axes.flat, results.items()):
    lim = np.abs(g).max()
    ax.imshow(g, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.plot(y, np.arange(N), "k.", markersize=5)
    ax.set_title(f"{a} + {lo}\nmax |dE/dz| = {lim:.3f}", fontsize=9)
for ax in axes[-1]:
    ax.set_xlabel("class")
for ax in axes[:, 0]:
    ax.set_ylabel("sample")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## What the invalid pairs say
#
# A pair that makes no sense is refused when the head is built, with the reason and the
# activations that would fit. Asking for a method a head does not have is refused too.

# %%
for act, loss in [(jac.Tanh(), jac.CrossEntropy()), (jac.ReLU(), jac.NLLLoss()), (jac.Sparsemax(), jac.CrossEntropy())]:
    try:
        jac.Head(act, loss)
    except ValueError as err:
        print(f"Head({act!r}, {type(loss).__name__}()):\n  ValueError: {err}\n")

# %%
try:
    jac.Head(jac.Sigmoid(), jac.MeanSquaredError()).grad(z, Y, method="fused")
except ValueError as err:
    print("ValueError:", err)

# %% [markdown]
# ## Fenchel–Young pairs
#
# `SparsemaxLoss` and `Entmax15Loss` (Blondel et al.; the entmax paper) are *functions of
# the logits*, built so that the gradient is simply $p - y$ with $p$ = sparsemax(z) (or
# 1.5-entmax). They cannot be written as a loss of sparsemax's output, so
# `Head(Sparsemax(), SparsemaxLoss())` runs only the fused rule, and says so when asked
# for another method. Paired with `Identity()` the loss sees the logits directly and every
# method runs — and gives the same gradient.

# %%
fy = jac.Head(jac.Sparsemax(), jac.SparsemaxLoss())
try:
    fy.grad(z, y, method="vjp")
except ValueError as err:
    print("ValueError:", err, "\n")

g_fused = fy.grad(z, y)
g_identity = {m: jac.Head(jac.Identity(), jac.SparsemaxLoss()).grad(z, y, method=m) for m in ("vjp", "jacobian")}
p = jac.Sparsemax()(z)
print("Identity head agrees with the fused rule:", all(np.allclose(g, g_fused) for g in g_identity.values()))
print("gradient equals (sparsemax(z) − Y)/N:    ", np.allclose(g_fused, (p - Y) / N))
print("\nsparsemax(z), exact zeros included:\n", np.round(p, 3) + 0.0)
print("\nits gradient (p − y)/N, zero wherever p and y are both zero:\n", np.round(g_fused, 3) + 0.0)

# %% [markdown]
# ## From softmax to sparsemax: α-entmax
#
# `jac.Entmax(alpha)` is the whole family in one map, $p_i = [(\alpha - 1) z_i - \tau]_+^{1/(\alpha - 1)}$:
# α → 1 is softmax (every class keeps some mass), α = 1.5 is 1.5-entmax, α = 2 sparsemax,
# and the support shrinks as α grows. Its Fenchel–Young loss is `jac.EntmaxLoss(alpha)`
# (gradient $p - y$), and `act.alpha_vjp(z, g)` gives the gradient with respect to α itself,
# for models that learn it. Below, the mean number of classes with $p > 0$ over 2000 rows of
# standard normal logits (K = 10), as α goes from 1 to 2.

# %%
zs = np.random.default_rng(1).normal(size=(2000, 10))
alphas = np.linspace(1.001, 2.0, 100)
nonzeros = np.array([(jac.Entmax(a)(zs) > 0).sum(axis=-1).mean() for a in alphas])

fig, ax = plt.subplots(figsize=(6.4, 3.4))
ax.plot(alphas, nonzeros, color="#08519c")
ax.axhline(10, color="#999999", linestyle=":", linewidth=1)
ax.text(1.02, 9.6, "softmax: all 10 classes", fontsize=8, color="#666666", va="top")
for a, name in [(1.5, "1.5-entmax"), (2.0, "sparsemax")]:
    ax.axvline(a, color="#999999", linestyle=":", linewidth=1)
    ax.text(a - 0.01, 1.2, name, fontsize=8, color="#666666", ha="right")
ax.set_xlabel("α")
ax.set_ylabel("classes with p > 0 (mean)")
ax.set_ylim(0, 10.5)
ax.set_title("α-entmax: the support shrinks from softmax's to sparsemax's")
plt.show()

same15 = np.abs(jac.Entmax(1.5)(zs) - jac.Entmax15()(zs)).max()
same2 = np.abs(jac.Entmax(2.0)(zs) - jac.Sparsemax()(zs)).max()
print(f"Entmax(1.5) vs Entmax15: max |Δp| = {same15:.1e};  Entmax(2.0) vs Sparsemax: max |Δp| = {same2:.1e}")
head = jac.Head(jac.Entmax(1.3), jac.EntmaxLoss(1.3))
print("Head(Entmax(1.3), EntmaxLoss(1.3)) runs:", head.method)
try:
    jac.Head(jac.Entmax(1.3), jac.EntmaxLoss(2.0))
except ValueError as err:
    print("ValueError:", err)
