# %% [markdown]
# # 05 · Numerics: overflow, clipping, and extreme logits
#
# Three things that go wrong when softmax and cross-entropy are computed the obvious way,
# and what the toolkit does instead:
#
# 1. `exp` of a large logit overflows, unless the row maximum is subtracted first;
# 2. clipping probabilities with an `eps` keeps the logarithm finite but kills the gradient
#    exactly where the model is most wrong;
# 3. `log-sum-exp(z) − z_y` cancels catastrophically in float32 when the logits are large;
#    the fused rule works with the shifted logits throughout and stays exact.

# %%
import matplotlib.pyplot as plt
import numpy as np

import jacobians as jac

plt.rcParams.update({"figure.dpi": 90})
rng = np.random.default_rng(0)
head = jac.Head(jac.Softmax(), jac.CrossEntropy())

# %% [markdown]
# ## 1 · Why the maximum is subtracted
#
# $e^{z}$ overflows float64 beyond $z \approx 709.8$ and float32 beyond $z \approx 88.7$.
# The naive softmax $e^{z_i}/\sum_k e^{z_k}$ then computes $\infty/\infty$ = `nan`. numpy
# would warn ("overflow encountered in exp", "invalid value encountered in divide"); the
# demo silences those warnings with `np.errstate` so the output stays readable.
#
# Softmax does not change when the same constant is added to every logit (notebook 01: its
# Jacobian's rows sum to 0), so subtracting the row maximum $m$ is free, and afterwards the
# largest exponent is $e^0 = 1$: nothing overflows, and the denominator is at least 1.

# %%
def naive_softmax(z):
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


for dtype, z in ((np.float64, [1000.0, 999.0, 998.0]), (np.float32, [100.0, 99.0, 98.0])):
    z = np.array(z, dtype=dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        naive = naive_softmax(z)
    print(f"{np.dtype(dtype).name}, z = {z}:")
    print("  naive             ", naive)
    print("  max subtracted    ", naive_softmax(z - z.max()))
    print("  jac.Softmax()(z)  ", jac.Softmax()(z), jac.Softmax()(z).dtype)

# %% [markdown]
# ## 2 · What clipping with eps does near saturation
#
# A common separate-path recipe computes the probabilities, clips them to
# $[\epsilon, 1-\epsilon]$ with $\epsilon = 10^{-7}$ so that $\log$ and $1/a$ stay finite,
# and back-propagates $\partial E/\partial a = -y/a_{\text{clipped}}$ through the softmax
# Jacobian. Take two classes, logits $z = (0, -m)$ and target class 1: the model is wrong
# with margin $m$. The exact loss is $\log(1 + e^{m})$ and the exact gradient on the target
# logit is $s_1 - 1 = -\sigma(m) \to -1$ — the harder the mistake, the firmer the push.
#
# Once $s_1 = \sigma(-m)$ drops below $\epsilon$ (at $m \approx 16$), the clipped recipe
# caps the loss at $-\log\epsilon \approx 16.1$, and its gradient
# $-s_1 (1 - s_1)/\epsilon$ shrinks like $e^{-m}$: the example is silently dropped from
# training. (Differentiating through the clip instead gives exactly 0 there; same effect.)
#
# The toolkit's own separate path (`method='vjp'`) never clips; it only reads an
# *underflowed* $a = 0$ as the smallest normal number, so it is exact until $s_1$
# underflows (at $m \approx 745$ in float64). The fused rule works from the logits and is
# exact at every margin. The reference below is the closed form, computed independently.

# %%
EPS = 1e-7
softmax = jac.Softmax()


def clipped_separate(z, y):
    """Value and dE/dz of softmax + cross-entropy with probabilities clipped to [eps, 1 − eps]."""
    s = softmax(z)
    a = np.clip(s, EPS, 1 - EPS)
    onehot = np.eye(z.shape[-1])[y]
    value = -np.log(a[np.arange(len(y)), y]).mean()
    dE_da = -onehot / a / len(y)
    return value, jac.contract(dE_da, softmax.jacobian(z))


margins = np.logspace(0, 4, 81)
curves = {name: {"value": [], "grad": []} for name in ("clipped, eps = 1e-7", "toolkit 'vjp'", "toolkit 'fused'")}
exact_value = np.logaddexp(0.0, margins)                    # log(1 + e^m)
exact_grad = -1.0 / (1.0 + np.exp(-margins))                # −σ(m)
for m in margins:
    z, y = np.array([[0.0, -m]]), np.array([1])
    for name, (value, grad) in zip(curves, (clipped_separate(z, y), head.value_and_grad(z, y, method="vjp"),
                                             head.value_and_grad(z, y, method="fused"))):
        curves[name]["value"].append(value)
        curves[name]["grad"].append(grad[0, 1])

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.9))
styles = {"clipped, eps = 1e-7": ("C3", "-"), "toolkit 'vjp'": ("C1", "--"), "toolkit 'fused'": ("C0", ":")}
ax1.loglog(margins, exact_value, color="0.75", linewidth=5, label="exact log(1 + eᵐ)")
for name, c in curves.items():
    ax1.loglog(margins, c["value"], color=styles[name][0], linestyle=styles[name][1], label=name)
    err = np.abs(np.array(c["grad"]) - exact_grad)
    ax2.loglog(margins, np.maximum(err, 1e-17), color=styles[name][0], linestyle=styles[name][1], label=name)
ax1.set_xlabel("margin m of the mistake")
ax1.set_ylabel("loss value")
ax1.set_title("loss: clipping caps it at −log eps")
ax2.set_xlabel("margin m of the mistake")
ax2.set_ylabel("|dE/dz₁ − exact|  (0 drawn at 1e-17)")
ax2.set_title("gradient error on the target logit")
ax2.axhline(1.0, color="0.5", linewidth=0.8)
for ax in (ax1, ax2):
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# An error of 1 (grey line) means the gradient has vanished: the clipped recipe loses it
# from $m \approx 16$, the toolkit's separate path from $m \approx 745$, and the fused rule
# not at all.

# %% [markdown]
# ## 3 · Extreme logits, and float32 far from zero
#
# The fused softmax + cross-entropy rule computes, per sample, with $m$ the row maximum,
#
# $$E = \log\sum_k e^{z_k - m} - (z_y - m), \qquad \frac{\partial E}{\partial z} = s - e_y,$$
#
# so it only ever exponentiates non-positive numbers and only ever subtracts numbers of
# the size of the *differences* between logits. Logits of ±10⁴ are no problem, in float64
# or float32 (and the dtype is kept):

# %%
z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [3.0, 1.0, 0.2]])
y = np.array([1, 1, 0])                                    # wrong by 2·10⁴, right by 2·10⁴, a plain row
for dtype in (np.float64, np.float32):
    value, grad = head.value_and_grad(z.astype(dtype), y)
    print(f"{value.dtype}: value {float(value):.4f} (exact: {(2e4 + np.logaddexp.reduce(z[2] - 3.0)) / 3:.4f}), "
          f"dE/dz ({grad.dtype}):")
    print(np.round(grad, 4) + 0.0)

# %% [markdown]
# Subtracting the maximum is not the whole story in float32. The textbook value
# $\operatorname{lse}(z) - z_y$, even with the overflow-safe
# $\operatorname{lse}(z) = m + \log\sum_k e^{z_k - m}$, adds $m$ back and then subtracts
# $z_y$: two numbers near $10^6$ whose difference is a few units. float32 keeps about 7
# significant digits, so near $10^6$ it resolves steps of $0.0625$, and that is the error
# of the result. The fused rule never forms $m + \dots$: its error stays at float32's
# relative precision whatever the offset. Below, 64 samples of 10 logits $c + \mathcal N(0, 1)$,
# float32, against a float64 reference computed from the same float32 numbers.

# %%
def reference_loss(z32, y):
    """Mean cross-entropy in float64 from the float32 logits (the shift is exact in float64)."""
    z = z32.astype(np.float64)
    shifted = z - z.max(axis=-1, keepdims=True)
    return np.mean(np.log(np.exp(shifted).sum(axis=-1)) - shifted[np.arange(len(y)), y])


def textbook_loss(z32, y):
    """lse(z) − z_y in float32, with the overflow-safe lse."""
    m = z32.max(axis=-1)
    lse = m + np.log(np.exp(z32 - m[:, None]).sum(axis=-1))
    return np.mean(lse - z32[np.arange(len(y)), y])


offsets = np.logspace(0, 7, 29)
y = rng.integers(0, 10, size=64)
noise = rng.normal(size=(64, 10))
err_textbook, err_fused = [], []
for c in offsets:
    z32 = (c + noise).astype(np.float32)
    ref = reference_loss(z32, y)
    err_textbook.append(abs(textbook_loss(z32, y) - ref) / ref)
    err_fused.append(abs(head.loss(z32, y) - ref) / ref)

fig, ax = plt.subplots(figsize=(6.4, 3.8))
ax.loglog(offsets, np.maximum(err_textbook, 1e-9), "o-", color="C3", markersize=3, label="textbook lse(z) − z_y")
ax.loglog(offsets, np.maximum(err_fused, 1e-9), "o-", color="C0", markersize=3, label="toolkit fused rule")
ax.axhline(np.finfo(np.float32).eps, color="0.5", linewidth=0.8, linestyle="--")
ax.annotate("float32 eps", (offsets[0], np.finfo(np.float32).eps * 1.4), fontsize=8, color="0.4")
ax.set_xlabel("offset c of the logits")
ax.set_ylabel("relative error of the loss (0 drawn at 1e-9)")
ax.set_title("cross-entropy in float32, logits c + N(0, 1)")
ax.legend(fontsize=8)
plt.show()

# %%
z32 = (1e6 + noise).astype(np.float32)
print("near 1e6 in float32, dtype kept:", head.loss(z32, y).dtype, head.grad(z32, y).dtype)
print(f"relative error of the loss:  textbook {abs(textbook_loss(z32, y) / reference_loss(z32, y) - 1):.1e}, "
      f"fused {abs(head.loss(z32, y) / reference_loss(z32, y) - 1):.1e}")
grad_ref = jac.Softmax()(z32.astype(np.float64) - z32.max(axis=-1, keepdims=True)) - np.eye(10)[y]
print(f"max error of the fused gradient vs float64: {np.abs(head.grad(z32, y) * 64 - grad_ref).max():.1e}")
