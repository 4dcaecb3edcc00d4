# %% [markdown]
# # 04 · Your own loss: a focal loss, checked, paired and fused
#
# The focal loss (Lin et al., 2017, the RetinaNet paper) down-weights the examples a model
# already gets right, so that training focuses on the hard ones. Per output $k$, with
# probability $a_k \in (0, 1)$, binary target $y_k$ and focusing parameter $\gamma \ge 0$:
#
# $$e_k = -\,y_k\,(1-a_k)^\gamma \log a_k \;-\; (1-y_k)\,a_k^\gamma \log(1-a_k).$$
#
# With $\gamma = 0$ it is binary cross-entropy. This notebook writes it as a `jac.Loss`,
# checks it against finite differences, plugs it into heads with sigmoid and with softmax,
# and registers a fused rule that stays exact where the separate path breaks down. (The
# library has its own `jac.BinaryFocalLoss` and `jac.FocalLoss` since notebook 08; this one
# is registered as `my_binary_focal`, a different name, to show how a loss of your own plugs in.)

# %%
import matplotlib.pyplot as plt
import numpy as np

import jacobians as jac

plt.rcParams.update({"figure.dpi": 90})
rng = np.random.default_rng(0)

# %% [markdown]
# ## The loss: two methods
#
# A `jac.Loss` subclass writes `per_sample(a, y)`, the loss of each sample (shape `(N,)`),
# and `per_sample_grad(a, y)`, the gradient of each sample's loss with respect to its own
# row (shape `(N, K)`). The base class supplies `value`, `grad`, `value_and_grad` and the
# reductions (`'mean'` divides by the number of samples). Differentiating $e_k$:
#
# $$\frac{\partial e_k}{\partial a_k} = y_k\Big[\gamma(1-a_k)^{\gamma-1}\log a_k - \frac{(1-a_k)^\gamma}{a_k}\Big]
#   + (1-y_k)\Big[-\gamma a_k^{\gamma-1}\log(1-a_k) + \frac{a_k^\gamma}{1-a_k}\Big].$$
#
# Two class attributes tell the toolkit how to use it: `input_domain` (what `a` must be —
# here any values strictly between 0 and 1) and `target_kind` (how to make example
# targets: `'probability'`, an array like `a` with values in [0, 1]).

# %%
class FocalLoss(jac.Loss):
    """Binary focal loss, summed over the K outputs of each sample, on probabilities."""

    name = "my_binary_focal"
    input_domain = "open_unit_interval"
    target_kind = "probability"

    def __init__(self, gamma=2.0, reduction="mean"):
        super().__init__(reduction)
        self.gamma = gamma

    def check_targets(self, a, y):
        y = np.asarray(y, dtype=a.dtype)
        if y.shape != a.shape:
            raise ValueError(f"y must have the shape of a, {a.shape}; got shape {y.shape}")
        return y

    def per_sample(self, a, y):
        g = self.gamma
        return -(y * (1 - a) ** g * np.log(a) + (1 - y) * a**g * np.log1p(-a)).sum(axis=-1)

    def per_sample_grad(self, a, y):
        g = self.gamma
        d_pos = g * (1 - a) ** (g - 1) * np.log(a) - (1 - a) ** g / a
        d_neg = -g * a ** (g - 1) * np.log1p(-a) + a**g / (1 - a)
        return y * d_pos + (1 - y) * d_neg


N, K = 8, 5
z = rng.normal(scale=2.0, size=(N, K))                    # logits
Y = (rng.random((N, K)) < 0.3).astype(float)              # binary targets, a few positives per row
a = jac.Sigmoid()(z)                                      # probabilities in (0, 1)
focal = FocalLoss(gamma=2.0)
print("loss:", round(float(focal(a, Y)), 6), "| grad shape:", focal.grad(a, Y).shape)

# %% [markdown]
# ## Check it
#
# Hand-derived gradients are where bugs live, so compare with the numerical gradient of
# the loss value (`jac.numerical_grad`, central differences), and with a case we know:
# at $\gamma = 0$ the focal loss is binary cross-entropy summed over the K outputs, i.e.
# K × `jac.BinaryCrossEntropy()` (which averages over all N·K entries, as torch does).

# %%
numeric = jac.numerical_grad(lambda x: focal(x, Y), a)
rel = np.abs(focal.grad(a, Y) - numeric).max() / np.abs(numeric).max()
print(f"grad vs finite differences, max relative error: {rel:.0e}")

bce_times_k = K * jac.BinaryCrossEntropy()(a, Y)
print("gamma = 0 equals K × BCE:", np.isclose(FocalLoss(gamma=0.0)(a, Y), bce_times_k),
      "| gradients too:", np.allclose(FocalLoss(gamma=0.0).grad(a, Y), K * jac.BinaryCrossEntropy().grad(a, Y)))

# %% [markdown]
# ## Plug it into heads
#
# The focal loss accepts anything in (0, 1). Sigmoid outputs `'open_unit_interval'` and
# softmax `'open_simplex'` (strictly positive probabilities, a subset), so both heads are
# valid; tanh's outputs can be negative and the pair is refused. With no fused rule, `'auto'`
# uses the activation's vector–Jacobian product, and `'jacobian'` works as well.
#
# `jac.check_head` runs every method the head has (`jacobian`, `vjp`, the structured
# `operator`, and `fused` once there is a rule) on generated logits and targets, and
# compares them with each other and with a float64 finite-difference gradient of
# `head.loss`, against tolerances set by the dtype. `report.raise_if_failed()` turns a
# failure into an `AssertionError` with the same table — the line to put in a test.

# %%
for act in (jac.Sigmoid(), jac.Softmax()):
    head = jac.Head(act, focal)
    print(f"{head!r}: auto -> {head.method!r}")
    report = jac.check_head(head)
    print(report, "\n")
    report.raise_if_failed()

try:
    jac.Head(jac.Tanh(), focal)
except ValueError as err:
    print("Tanh:", err)

# %% [markdown]
# Registering the class makes it part of the registries, so `jac.pairs()` (and the
# tests and checks that walk them) pick it up. It pairs with exactly the activations whose
# output lies in (0, 1): the sparse maps (sparsemax, 1.5- and α-entmax) are out, since they
# produce exact zeros.

# %%
jac.register_loss(FocalLoss)
print([p for p in jac.pairs() if p.loss == "my_binary_focal"])

# %% [markdown]
# ## A fused rule for sigmoid + focal
#
# Through the sigmoid, $a = \sigma(z)$ and $\partial a/\partial z = a(1-a)$, so the chain
# rule multiplies $\partial e/\partial a$ by $a(1-a)$. Writing $p = \sigma(z)$ and
# $q = 1 - p = \sigma(-z)$, the divisions by $a$ and $1 - a$ cancel:
#
# $$\frac{\partial e}{\partial z} = y\,\big[\gamma\,p\,q^{\gamma}\log p - q^{\gamma+1}\big]
#   + (1-y)\,\big[p^{\gamma+1} - \gamma\,p^{\gamma}\,q\,\log q\big],$$
#
# and the value is $e = -y\,q^\gamma \log p - (1-y)\,p^\gamma \log q$. Every piece can be
# computed from $z$ without cancellation: $p$ and $q$ as $\sigma(z)$ and $\sigma(-z)$,
# $\log p = -\log(1 + e^{-z})$ and $\log q = -\log(1 + e^{z})$ with `np.logaddexp`. At
# $\gamma = 0$ the gradient is $p - y$, the sigmoid + BCE rule.
#
# `@jac.register_fused(Sigmoid, FocalLoss)` registers it: the rule is called as
# `rule(activation, loss, z, y)` and returns `(value, dE/dz)` with the loss's reduction
# applied. (`replace=True` lets this cell run twice.) Then `'auto'` picks it, and
# `check_head` compares it with the other methods and with finite differences, here on the
# logits and targets from above, in float64 and in float32.

# %%
@jac.register_fused(jac.Sigmoid, FocalLoss, replace=True)
def sigmoid_focal(activation, loss, z, y):
    y = loss.check_targets(z, y)
    g = loss.gamma
    p, q = jac.Sigmoid()(z), jac.Sigmoid()(-z)
    log_p, log_q = -np.logaddexp(0, -z), -np.logaddexp(0, z)
    values = -(y * q**g * log_p + (1 - y) * p**g * log_q).sum(axis=-1)
    grad = y * (g * p * q**g * log_p - q ** (g + 1)) + (1 - y) * (p ** (g + 1) - g * p**g * q * log_q)
    if loss.reduction == "none":
        return values, grad
    if loss.reduction == "sum":
        return values.sum(), grad
    return values.mean(), grad / values.size              # 'mean' over samples


head = jac.Head(jac.Sigmoid(), focal)
print("auto picks:", head.method)
for reduction in ("mean", "sum", "none"):
    h = jac.Head(jac.Sigmoid(), FocalLoss(reduction=reduction))
    fused_v, fused_g = h.value_and_grad(z, Y, method="fused")
    sep_v, sep_g = h.value_and_grad(z, Y, method="vjp")
    print(f"reduction={reduction!r:7} value agrees: {np.allclose(fused_v, sep_v)}, "
          f"grad agrees with vjp: {np.allclose(fused_g, sep_g)}, "
          f"with jacobian: {np.allclose(fused_g, h.grad(z, Y, method='jacobian'))}")
for dtype in (np.float64, np.float32):
    report = jac.check_head(head, z.astype(dtype), Y.astype(dtype))
    print(report)
    report.raise_if_failed()

# %% [markdown]
# ## Why bother: confident logits
#
# The separate path computes $a = \sigma(z)$ first. In float64, $\sigma(z)$ rounds to exactly
# 1 once $z \gtrsim 37$, and from there $\log(1 - a) = -\infty$ and $1/(1 - a) = \infty$:
# the value and gradient become `inf`/`nan` (the warnings numpy would print are silenced
# here with `np.errstate`; they say the same). Even before that, at $z = 30$, $1 - a$ has
# lost most of its digits. The fused rule never forms $1 - \sigma(z)$ by subtraction and
# stays exact: for a confident wrong answer the gradient is ±1, the loss grows like $|z|$.

# %%
y_row = np.array([[0.0, 1.0, 1.0, 0.0]])                 # wrong, wrong, right, right
print(f"{'|z|':>7} {'separate value':>16} {'fused value':>14}   fused dE/dz")
for s in (10.0, 30.0, 40.0, 1e4):
    z_row = np.array([[s, -s, s, -s]])
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        sep_value = head.value_and_grad(z_row, y_row, method="vjp")[0]
    value, grad = head.value_and_grad(z_row, y_row)
    print(f"{s:7.0f} {sep_value:16.6f} {value:14.6f}   {np.array2string(grad[0], formatter={'float_kind': '{:+.3g}'.format})}")

# %% [markdown]
# What the focal term does, seen through the fused gradient: for one output with target
# 1, the magnitude of dE/dz against the logit, for several γ. Binary cross-entropy (γ = 0)
# keeps pushing examples that are already right ($z > 0$); the focal loss lets go of them
# quickly, and still gives confidently wrong ones ($z \ll 0$) a gradient of about 1, as BCE does.

# %%
zs = np.linspace(-8, 8, 401)[:, None]
fig, ax = plt.subplots(figsize=(6.4, 3.6))
for gamma in (0.0, 0.5, 1.0, 2.0, 5.0):
    h = jac.Head(jac.Sigmoid(), FocalLoss(gamma=gamma, reduction="sum"))
    ax.plot(zs[:, 0], -h.grad(zs, np.ones_like(zs))[:, 0], label=f"γ = {gamma:g}" + (" (BCE)" if gamma == 0 else ""))
ax.set_xlabel("logit z (target y = 1)")
ax.set_ylabel("−dE/dz")
ax.set_title("sigmoid + focal loss: gradient on a positive example")
ax.legend(fontsize=8)
plt.show()
