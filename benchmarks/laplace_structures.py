"""How far the ``'kron'`` and ``'diag'`` structures are from ``'full'`` (the table of docs/laplace.md).

``python benchmarks/laplace_structures.py`` fits a softmax + cross-entropy last layer (the MAP
of the summed loss plus ½ δ |θ|², by Newton's method) on two problems and prints, for each
approximate structure, its error against the exact ``'full'`` one:

* ``LastLayerLaplace``: the relative error of ``f_var`` on held-out rows (Frobenius over all
  rows), the largest difference of the probit probabilities, the error of the log evidence at
  the prior used, and the prior precision the evidence picks (``optimize_prior_precision``);
* ``influence``: the relative error of the (N_test, N_train) matrix, the Pearson correlation
  of its entries with the exact ones, and the share of each test row's 10 most influential
  training rows that the approximation also ranks in its top 10; ``self_influence``: the
  Spearman correlation with the exact scores.

numpy only; float64; deterministic.
"""

from __future__ import annotations

import numpy as np

import jacobians as jac


def _map(F, y, K, delta, steps=25):
    N, D = F.shape
    summed = jac.Head(jac.Softmax(), jac.CrossEntropy(reduction="sum"))
    theta = np.zeros((K, D + 1))
    for _ in range(steps):
        z = F @ theta[:, :D].T + theta[:, D]
        g = jac.linear_gradient(F, summed, z, y) + delta * theta
        H = jac.linear_curvature(F, summed, z, y) + delta * np.eye(theta.size)
        theta -= np.linalg.solve(H, g.ravel()).reshape(theta.shape)
    return theta[:, :D], theta[:, D]


def spirals(rng, n):
    K = 3
    y = rng.integers(0, K, n)
    r = rng.uniform(0.2, 1.0, n)
    angle = 2 * np.pi * y / K + 2.5 * r + 0.5 * rng.normal(size=n)
    return np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1), y


def problems():
    """``{name: (F_train, y_train, F_test, y_test, K, delta)}``."""
    rng = np.random.default_rng(0)
    x, y = spirals(rng, 300)
    xt, yt = spirals(rng, 500)
    centres = x[:30]

    def bumps(v):
        return np.exp(-((v[:, None, :] - centres) ** 2).sum(-1) / (2 * 0.25**2))

    out = {"spirals: N=300, D=30 bumps, K=3, δ=0.14": (bumps(x), y, bumps(xt), yt, 3, 0.137)}
    N, D, K = 3000, 32, 10
    teacher = rng.normal(size=(D, K))
    F = np.abs(rng.normal(size=(N + 500, D)))            # ReLU-like features (non-negative)
    labels = np.argmax(F @ teacher + 2.0 * rng.gumbel(size=(N + 500, K)), axis=1)
    out[f"teacher: N={N}, D={D} ReLU-like, K={K}, δ=1"] = (F[:N], labels[:N], F[N:], labels[N:], K, 1.0)
    return out


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _ranks(v):
    r = np.empty(len(v))
    r[np.argsort(v)] = np.arange(len(v))
    return r


def measure():
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    rows = []
    for name, (F, y, Ft, yt, K, delta) in problems().items():
        W, b = _map(F, y, K, delta)
        ref = {}
        for structure in ("full", "kron", "diag"):
            la = jac.LastLayerLaplace(head, structure=structure, prior_precision=delta).fit(F, W, b, y)
            _, f_var = la.logits(Ft)
            p = la.predictive(Ft, link="probit")
            lml = la.log_marginal_likelihood()
            tuned = la.optimize_prior_precision()
            damping = delta / len(F)
            infl = jac.influence(head, F, y, Ft[:100], yt[:100], W, b, damping=damping, structure=structure)
            s = jac.self_influence(head, F, y, W, b, damping=damping, structure=structure)
            if structure == "full":
                ref = dict(f_var=f_var, p=p, lml=lml, I=infl, s=s)
                rows.append((name, structure, "—", "—", f"{lml:.2f}", f"{tuned:.3g}", "—", "—", "—", "—"))
                continue
            top = np.argsort(-ref["I"], axis=1)[:, :10]
            top_s = np.argsort(-infl, axis=1)[:, :10]
            overlap = np.mean([len(set(a) & set(c)) / 10 for a, c in zip(top, top_s)])
            rows.append((
                name, structure,
                f"{_rel(f_var, ref['f_var']):.2f}",
                f"{np.abs(p - ref['p']).max():.3f}",
                f"{lml:.2f}",
                f"{tuned:.3g}",
                f"{_rel(infl, ref['I']):.2f}",
                f"{np.corrcoef(infl.ravel(), ref['I'].ravel())[0, 1]:.3f}",
                f"{overlap:.2f}",
                f"{np.corrcoef(_ranks(s), _ranks(ref['s']))[0, 1]:.3f}",
            ))
    return rows


HEADER = ("problem", "structure", "f_var rel. error", "max Δ probit p", "log evidence", "δ by evidence",
          "influence rel. error", "influence corr.", "top-10 overlap", "self-infl. Spearman")


def main():
    rows = measure()
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
