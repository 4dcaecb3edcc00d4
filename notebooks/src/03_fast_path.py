# %% [markdown]
# # 03 · The fast path: O(K) against O(K²)
#
# `head.grad(z, y, method=...)` computes dE/dz three ways that agree to round-off (notebook
# 02). They differ in cost: per sample, `'jacobian'` builds and contracts a K×K matrix,
# while `'vjp'` and `'fused'` touch each of the K entries a few times. This notebook
# measures that, looks at the memory of the Jacobian path, and revisits a timing from the
# book example in the seeds (`shared/seeds/000_*.txt`): combined softmax + cross-entropy
# was about 3.7× faster than the separate path there, on 3 samples of 3 classes.
#
# Timings depend on the machine and vary between runs: the figures below come from one
# run, and the text describes their shape, not their numbers.

# %%
import time
import tracemalloc

import matplotlib.pyplot as plt
import numpy as np

import jacobians as jac

plt.rcParams.update({"figure.dpi": 90})
rng = np.random.default_rng(0)


def best_time(f, repeat=3, min_time=2e-3):
    """Best time per call of ``f()`` (seconds) over ``repeat`` runs of at least ``min_time`` each."""
    f()                                                   # warm up
    t0 = time.perf_counter()
    f()
    number = max(1, int(min_time / max(time.perf_counter() - t0, 1e-9)))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            f()
        best = min(best, (time.perf_counter() - t0) / number)
    return best

# %% [markdown]
# ## Time against K
#
# Softmax + cross-entropy for K from 8 to 4096 classes. To keep every measurement on the
# same footing, the logits always hold N·K = 2¹⁷ entries (1 MiB of float64, so the CPU
# caches treat every point alike): N shrinks as K grows, and the plot shows the time *per
# sample*, which is O(K) for `'fused'` and `'vjp'` and O(K²) for `'jacobian'`. Everything
# runs on one thread (`workers=1`) so that the thread pool does not blur the picture. The
# Jacobian path stops at K = 512, where one call handles 6.7·10⁷ Jacobian entries; it
# builds and contracts the N×K×K array in row blocks, here within `max_bytes=32 MiB`.

# %%
SIZE = 2**17                                  # N·K, fixed
Ks = 2 ** np.arange(3, 13)                    # 8 ... 4096
K_JAC_MAX = 512
head = jac.Head(jac.Softmax(), jac.CrossEntropy())
per_sample = {"fused": {}, "vjp": {}, "jacobian": {}}
for K in Ks:
    N = SIZE // K
    z = rng.normal(size=(N, K))
    y = rng.integers(0, K, size=N)
    for method, t in per_sample.items():
        if method == "jacobian" and K > K_JAC_MAX:
            continue
        t[K] = best_time(lambda: head.grad(z, y, method=method, max_bytes=32 << 20, workers=1)) / N


def slope(t, k_min=64):
    """Least-squares slope of log(time) against log(K), for K >= k_min."""
    k = [x for x in sorted(t) if x >= k_min]
    return np.polyfit(np.log(k), np.log([t[x] for x in k]), 1)[0]


fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
styles = {"fused": "o-", "vjp": "s-", "jacobian": "^-"}
for method, t in per_sample.items():
    ax.plot(list(t), np.array(list(t.values())) * 1e6, styles[method], label=f"{method}: fitted slope {slope(t):.2f}")
for power, anchor in ((1, "fused"), (2, "jacobian")):     # dotted guides of slope 1 and 2, below the data
    k_ref = np.array([x for x in sorted(per_sample[anchor]) if x >= 64])
    ax.plot(k_ref, per_sample[anchor][64] * 1e6 * (k_ref / 64) ** power / 3, "k:", linewidth=1)
ax.set_title("dE/dz per sample, softmax + cross-entropy\n(slopes fitted for K ≥ 64; dotted: slopes 1 and 2)",
             fontsize=10)
ax.set_ylabel("µs per sample")
ax.legend(fontsize=8)

k = sorted(per_sample["jacobian"])
ax2.plot(k, [per_sample["jacobian"][x] / per_sample["fused"][x] for x in k], "^-", color="C2",
         label="jacobian / fused")
ax2.plot(Ks, [per_sample["vjp"][x] / per_sample["fused"][x] for x in Ks], "s-", color="C1", label="vjp / fused")
ax2.set_title("time relative to the fused path", fontsize=10)
ax2.set_ylabel("time ratio")
ax2.legend(fontsize=8)
for a in (ax, ax2):
    a.set_xscale("log", base=2)
    a.set_yscale("log")
    a.set_xticks(Ks, [str(k) for k in Ks], fontsize=8)
    a.set_xlabel("K (classes), with N = 2¹⁷ / K")
fig.tight_layout()
plt.show()

# %% [markdown]
# What to read in the plot:
#
# * at small K the curves are flatter (some may even fall): with thousands of short rows,
#   the work per *sample* (a maximum, a log-sum-exp, picking the target, a call per block)
#   weighs more than the work per *entry*;
# * from a few dozen classes on, `'fused'` and `'vjp'` follow slope 1: O(K) per sample;
# * `'jacobian'` follows a slope close to 2, approached from below: its time per sample is
#   a·K + b·K² — besides the K² entries of each Jacobian it does the same O(K) work as the
#   others (softmax, the loss gradient, per-row costs of building and contracting) — and
#   the local slope of a·K + b·K² is (a + 2bK)/(a + bK), which tends to 2 as bK outgrows a;
# * so the fused path's advantage over the Jacobian path grows with K (right), while
#   `'vjp'` stays within a small constant factor of `'fused'`: it computes the same product,
#   just not specialised to the pair.

# %% [markdown]
# ## Memory of the Jacobian path
#
# The dense Jacobian of a batch takes N·K²·8 bytes in float64: 8 GB at N = 1024, K = 1000.
# `act.jacobian(z)` builds exactly that array, because you asked for it. Inside
# `head.grad(..., method='jacobian')` nobody needs the whole array at once, so the head
# builds and contracts it in row blocks and its peak memory stays within `max_bytes`
# (default 256 MiB) plus O(N·K) for the inputs and the result. `'vjp'` and `'fused'` never
# build it at all. numpy reports its allocations to `tracemalloc`, so the peak of each
# call can be measured (N = 512, K = 128 here: the full Jacobian is 64 MiB).

# %%
z = rng.normal(size=(512, 128))
y = rng.integers(0, 128, size=512)


def peak_mib(f):
    """Peak traced memory of ``f()`` in MiB, as text (whole MiB above 10: thread start-up
    allocations make the last digits wobble)."""
    tracemalloc.start()
    f()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return f"{peak:6.0f}" if peak >= 10 else f"{peak:6.1f}"


print(f"{'dense Jacobian, N·K²·8 bytes:':55} {z.shape[0] * z.shape[1] ** 2 * 8 / 2**20:6.0f} MiB")
for label, f in [
    ("jac.Softmax().jacobian(z)", lambda: jac.Softmax().jacobian(z)),
    ("head.grad, method='jacobian'", lambda: head.grad(z, y, method="jacobian")),
    ("head.grad, method='jacobian', max_bytes=4 MiB", lambda: head.grad(z, y, method="jacobian", max_bytes=4 << 20)),
    ("head.grad, method='vjp'", lambda: head.grad(z, y, method="vjp")),
    ("head.grad, method='fused'", lambda: head.grad(z, y, method="fused")),
]:
    print(f"peak of {label:47} {peak_mib(f)} MiB")

# %% [markdown]
# ## The seed's 3×3 timing, reproduced and explained
#
# The book example combines softmax and cross-entropy by hand, on three samples of three
# classes, and times it against the separate path (cross-entropy's gradient, then a loop
# over samples that builds each Jacobian `diagflat(s) − s sᵀ` and multiplies). Here are the
# two recipes as the book writes them, without the classes around them; both print the
# seed's gradient matrix, and so do the toolkit's three methods on logits whose softmax is
# those outputs.

# %%
softmax_outputs = np.array([[0.7, 0.1, 0.2], [0.1, 0.5, 0.4], [0.02, 0.9, 0.08]])
class_targets = np.array([0, 1, 1])


def book_combined(y_pred, y_true):
    samples = len(y_true)
    dinputs = y_pred.copy()
    dinputs[range(samples), y_true] -= 1
    return dinputs / samples


def book_separate(y_pred, y_true):
    samples, labels = y_pred.shape
    y_true = np.eye(labels)[y_true]                       # cross-entropy backward
    dvalues = -y_true / y_pred / samples
    dinputs = np.empty_like(dvalues)                      # softmax backward, one sample at a time
    for index, (single_output, single_dvalues) in enumerate(zip(y_pred, dvalues)):
        single_output = single_output.reshape(-1, 1)
        jacobian_matrix = np.diagflat(single_output) - np.dot(single_output, single_output.T)
        dinputs[index] = np.dot(jacobian_matrix, single_dvalues)
    return dinputs


print("combined:\n", book_combined(softmax_outputs, class_targets))
print("separate:\n", book_separate(softmax_outputs, class_targets))
z3 = np.log(softmax_outputs)                              # softmax(log p) = p
print("toolkit, fused / vjp / jacobian agree with it:", all(
    np.allclose(head.grad(z3, class_targets, method=m), book_combined(softmax_outputs, class_targets))
    for m in ("fused", "vjp", "jacobian")))

# %% [markdown]
# Now the timing: on the left the 3×3 case, with one trivial numpy call on a 3×3 array
# (`np.add(a, a, out=b)`) as a unit; on the right the same recipes as the number of samples
# grows (K = 3 still).

# %%
a3, b3 = np.ones((3, 3)), np.empty((3, 3))
timings = {
    "one numpy call\n(np.add, 3×3)": best_time(lambda: np.add(a3, a3, out=b3), repeat=5),
    "book combined": best_time(lambda: book_combined(softmax_outputs, class_targets), repeat=5),
    "book separate": best_time(lambda: book_separate(softmax_outputs, class_targets), repeat=5),
}
for m in ("fused", "jacobian"):
    timings[f"toolkit {m}"] = best_time(lambda: head.grad(z3, class_targets, method=m), repeat=5)

Ns = [3, 30, 300, 3000]
over_n = {name: [] for name in ("book combined", "book separate", "toolkit fused", "toolkit jacobian")}
for n in Ns:
    p = jac.Softmax()(rng.normal(size=(n, 3)))
    t = rng.integers(0, 3, size=n)
    zn = np.log(p)
    over_n["book combined"].append(best_time(lambda: book_combined(p, t)))
    over_n["book separate"].append(best_time(lambda: book_separate(p, t)))
    over_n["toolkit fused"].append(best_time(lambda: head.grad(zn, t, method="fused")))
    over_n["toolkit jacobian"].append(best_time(lambda: head.grad(zn, t, method="jacobian")))

colors = {"book combined": "C0", "book separate": "C3", "toolkit fused": "C9", "toolkit jacobian": "C2"}
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1.2, 1]})
us = np.array(list(timings.values())) * 1e6
bars = ax.bar(range(len(us)), us, color=["0.6"] + [colors[k] for k in list(timings)[1:]])
ax.set_xticks(range(len(us)), list(timings), fontsize=8)
ax.set_ylabel("µs per call")
ratio = timings["book separate"] / timings["book combined"]
ax.set_title(f"N = 3, K = 3: book separate / combined = {ratio:.1f}×\n(3.7× in the seed; labels: in np.add calls)",
             fontsize=10)
for bar, t in zip(bars, us):
    ax.annotate(f"×{t / us[0]:.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center", va="bottom", fontsize=8)
for name, t in over_n.items():
    ax2.loglog(Ns, np.array(t) * 1e6, "o-", color=colors[name], label=name)
ax2.set_xlabel("N (samples), K = 3")
ax2.set_ylabel("µs per call")
ax2.set_title("the same recipes as N grows", fontsize=10)
ax2.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# The ratio is real, but it is not about arithmetic. On these 3×3 arrays the separate path
# does about 60 floating-point operations and the combined one about 10; a core does that
# many in a few nanoseconds, yet each recipe takes microseconds. The time is the cost of
# *calls*: every numpy call has a fixed overhead (parsing arguments, dispatching on dtype,
# allocating the result) that dwarfs the arithmetic on nine numbers — and a call that
# converts a Python `range` into an index array or builds a matrix with `diagflat` costs
# several times the cheapest one. The combined recipe makes three calls; the separate one
# makes about six per sample inside a Python loop. The 3.7× of the seed (and the ratio
# measured here) is the ratio of those overheads.
#
# The right panel shows it: up to a few hundred samples the vectorised recipes barely get
# slower with 100× more data (overhead dominates), while the separate recipe's loop grows
# linearly from the start, so its ratio to the combined one is not a constant 3.7 but
# grows with N. The toolkit sits higher at small N: every call validates its inputs
# (shapes, dtypes, target range) and dispatches through the head, a fixed cost paid once
# per batch. Its Jacobian path costs a few times its fused path here for the same reason
# — it takes more steps (the activation, the loss gradient, the Jacobian, the
# contraction), each with its fixed cost — not because 3×3 Jacobians are real work. At
# realistic N and K the overhead vanishes and what separates the methods is the O(K)
# against O(K²) work of the first plot.
