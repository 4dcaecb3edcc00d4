"""The ``laplace`` section: ``jac.LastLayerLaplace`` against laplace-torch, ``jac.influence`` against torch.

``python -m jacobians bench --sections laplace`` times two groups per dtype:

* **Laplace** (N = 50,000 training rows, D = 128, K = 10, ``structure='full'``; ``--quick``:
  5,000 × 32): ``LastLayerLaplace(head).fit(X, W, b, y)`` followed by
  ``predictive(X_test, link='probit')`` on M = 10,000 held-out rows (``--quick``: 1,000), against
  laplace-torch's ``Laplace(model, 'classification', subset_of_weights='last_layer',
  hessian_structure='full')`` ``.fit(loader)`` followed by ``la(x, pred_type='glm',
  link_approx='probit')`` on the same weights and rows, the model an ``nn.Sequential(Identity,
  Linear)`` in the dtype measured, batches of 1,000 rows for both its fit and its predictive
  (its Jacobians are (rows, K, P)). Target: ours ≤ 0.5× laplace-torch. The fit alone and the
  predictive alone are rows too. laplace-torch's fit is a loop over batches (linear in N) and
  its predictive does not depend on N: at the full size its fit is timed on the first 10,000
  rows and scaled to N, its predictive timed as it is (the note says so); the row's name
  carries the largest difference of its probabilities from ours.
* **influence** (10⁵ training × 10³ test rows, D = 499, K = 10, so P = 5,000; ``--quick``:
  2,000 × 100, D = 63): ``jac.influence(head, X, y, X_test, y_test, W, b, damping=1e-3)``
  against a torch reference doing the same by autograd — the θ-Hessian of the mean loss by
  ``torch.func.hessian`` over row chunks, its Cholesky factor, per-row gradients by
  ``vmap(grad)`` — timed on the first 1,000 training rows (``--quick``: all) and scaled to N for
  the parts linear in N (the Hessian and the training gradients), the factorisation and the test
  gradients as they are. In float64, ``influence_bench.py`` adds its two fresh-process runs on
  one thread with their peak RSS: ``jac.influence`` and its torch reference with the Hessian
  in closed form (``python benchmarks/influence_bench.py --full`` runs them alone).

Peers are optional: without laplace-torch (peer ``laplace_torch``) or torch the rows of ours
still run and the missing peer is named in the group's note. The limit of both groups is one
O(N·D²) or O(N·M·D) product over the same features: the least any method must read.
"""

from __future__ import annotations

import functools
import importlib.util
import time
import warnings
from pathlib import Path

import numpy as np

import jacobians as jac
from jacobians.bench import Case, Group

TITLE = ("last-layer Laplace (softmax + CE, 'full'): fit + probit predictive against laplace-torch's last-layer "
         "fit + la(x, pred_type='glm', link_approx='probit'); exact influence against a torch autograd reference")

#: the issue's target: ours ≤ 0.5× laplace-torch's fit + probit predictive
TARGET_LAPLACE = 0.5
BATCH = 1000  # laplace-torch's loader and predictive batches


def _problem(N, M, D, K, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, D)).astype(dtype)
    X_test = rng.normal(size=(M, D)).astype(dtype)
    W = (rng.normal(size=(K, D)) / np.sqrt(D)).astype(dtype)
    b = (0.1 * rng.normal(size=K)).astype(dtype)
    z = X @ W.T + b
    y = np.argmax(z + rng.gumbel(size=z.shape), axis=1)   # labels the model explains in part
    y_test = np.argmax(X_test @ W.T + b + rng.gumbel(size=(M, K)), axis=1)
    return X, y, X_test, y_test, W, b


# -- laplace-torch ----------------------------------------------------------------------------


def _laplace_torch(X, y, W, b):
    """``(fit(rows), predict(X_test))``: laplace-torch's last-layer Laplace on our weights."""
    import torch
    from laplace import Laplace
    from torch.utils.data import DataLoader, TensorDataset

    D, K = X.shape[1], W.shape[0]
    dtype = torch.float64 if X.dtype == np.float64 else torch.float32
    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(D, K)).to(dtype)
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(W))
        model[1].bias.copy_(torch.from_numpy(b))
    tX, ty = torch.from_numpy(X), torch.from_numpy(y)

    def in_dtype(run):
        # its default backend (CurvlinopsGGN) builds part of the curvature in torch's default
        # dtype: a float64 model under the default float32 is 3e-8 off the exact curvature
        def wrapped(*args):
            old = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            try:
                return run(*args)
            finally:
                torch.set_default_dtype(old)
        return wrapped

    @in_dtype
    def fit(rows):
        la = Laplace(model, "classification", subset_of_weights="last_layer", hessian_structure="full")
        la.fit(DataLoader(TensorDataset(tX[:rows], ty[:rows]), batch_size=BATCH))
        return la

    @in_dtype
    def predict(la, X_test):
        tXt = torch.from_numpy(X_test)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.cat([la(tXt[s:s + BATCH], pred_type="glm", link_approx="probit")
                              for s in range(0, len(tXt), BATCH)]).numpy()

    return fit, predict


def _laplace_cases(N, M, D, K, dtype, peers, peer_rows):
    X, y, X_test, _, W, b = _problem(N, M, D, K, dtype)
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    Xt = np.concatenate([X, np.ones((N, 1), dtype)], axis=1)
    z = X @ W.T + b
    fitted = jac.LastLayerLaplace(head).fit(X, W, b, y)
    fitted.predictive(X_test[:1])  # the posterior's factor, made once: the predictive row times its own work

    def ours_both():
        return jac.LastLayerLaplace(head).fit(X, W, b, y).predictive(X_test, link="probit")

    peer_both, peer_fit, peer_pred = "laplace-torch fit + probit", "laplace-torch fit", "laplace-torch probit"
    cases = [
        Case("X̃.T @ X̃: one O(N·D²) pass over the features", lambda: Xt.T @ Xt, kind="limit", column="X̃ᵀX̃"),
        Case("jac.linear_curvature(X, head, z, y): the curvature alone",
             lambda: jac.linear_curvature(X, head, z, y), kind="ref", column="linear_curvature"),
        Case("LastLayerLaplace(head).fit(X, W, b, y) + predictive(X_test, 'probit')", ours_both,
             targets={peer_both: TARGET_LAPLACE} if "laplace_torch" in peers else {}),
        Case("LastLayerLaplace(head).fit(X, W, b, y)", lambda: jac.LastLayerLaplace(head).fit(X, W, b, y)),
        Case(f"la.predictive(X_test, 'probit'), M = {M:,}", lambda: fitted.predictive(X_test, link="probit")),
    ]
    if "laplace_torch" not in peers:
        return cases
    fit, predict = _laplace_torch(X, y, W, b)
    n = min(N, peer_rows)
    la_t = fit(N)
    ours = fitted.predictive(X_test, link="probit")
    diff = float(np.abs(predict(la_t, X_test) - ours).max())
    del la_t

    def measure(part, rounds):
        times = []
        for _ in range(rounds + 1):  # the first is a warm-up
            t0 = time.perf_counter()
            la = fit(n)
            t_fit = (time.perf_counter() - t0) * N / n
            t0 = time.perf_counter()
            if part != "fit":
                predict(la, X_test)  # a fresh fit: this call makes the posterior's factor too
            t_pred = time.perf_counter() - t0
            times.append({"both": t_fit + t_pred, "fit": t_fit, "pred": t_pred}[part])
        return {"times": times[1:]}

    scaled = "" if n == N else f", fit timed on {n:,} rows × {N / n:g}"
    cases += [
        Case(f"laplace-torch fit + la(x, 'glm', 'probit'){scaled} (max |Δp| vs ours {diff:.1e})", kind="peer",
             column=peer_both, measure=functools.partial(measure, "both")),
        Case(f"laplace-torch fit{scaled}", kind="peer", column=peer_fit, measure=functools.partial(measure, "fit")),
        Case("laplace-torch la(x, 'glm', 'probit') after a fresh fit", kind="peer", column=peer_pred,
             measure=functools.partial(measure, "pred")),
    ]
    return cases


# -- influence --------------------------------------------------------------------------------


def _torch_influence_parts(X, y, X_test, y_test, W, b, damping):
    """The torch reference in three timed parts: ``linear()`` (the Hessian of the mean loss over the
    rows given and their per-row gradients), ``solve(H)`` (Cholesky, the test rows' gradients and
    the solve, independent of N) and ``product(G, S)`` (the (M, N) result); the first and last
    are linear in N."""
    import torch
    import torch.nn.functional as F
    from torch.func import grad, hessian, vmap

    N, D = X.shape
    K = W.shape[0]
    P = K * (D + 1)
    theta = torch.from_numpy(np.concatenate([W, b[:, None]], axis=1).ravel())
    tX, ty, tXt, tyt = (torch.from_numpy(np.ascontiguousarray(a)) for a in (X, y, X_test, y_test))

    def summed(t, x, target):
        Wb = t.view(K, D + 1)
        return F.cross_entropy(x @ Wb[:, :D].T + Wb[:, D], target, reduction="sum")

    def one(t, x, target):
        return summed(t, x[None], target[None])

    h, per_row = hessian(summed), vmap(grad(one), in_dims=(None, 0, 0))
    rows = max(1, (64 << 20) // max(P * K * X.itemsize, 1))

    def linear():
        H = torch.zeros(P, P, dtype=theta.dtype)
        G = []
        for s in range(0, N, rows):
            H += h(theta, tX[s:s + rows], ty[s:s + rows])
            G.append(per_row(theta, tX[s:s + rows], ty[s:s + rows]))
        return H / N, torch.cat(G)

    def solve(H):
        L = torch.linalg.cholesky(H + damping * torch.eye(P, dtype=H.dtype))
        return torch.cholesky_solve(per_row(theta, tXt, tyt).T, L)   # (P, M)

    def product(G, S):
        return -(G @ S).T                                            # (M, N)

    return linear, solve, product


def _influence_bench():
    """``benchmarks/influence_bench.py`` (its fresh-process runs), or None where it is missing."""
    path = Path(__file__).with_name("influence_bench.py")
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("influence_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module if hasattr(module, "spawn") else None


def _fresh_process_cases(module, N, M, D, K, peers):
    """``influence_bench.py``'s two sides, each in a fresh one-thread process per round, with peak RSS."""
    import argparse
    import tempfile

    args = argparse.Namespace(n_train=N, n_test=M, d=D, k=K)

    def measure(side, rounds):
        runs = []
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(max(2, rounds)):
                runs.append(module.spawn(side, args, str(Path(tmp) / f"{side}.npy")))
        peak = max(r["peak_rss_bytes"] for r in runs)
        return {"times": [r["seconds"] for r in runs], "peak_rss_bytes": peak,
                "label": f"peak RSS {peak / 2**30:.2f} GiB (data included)"}

    cases = [Case("jac.influence, fresh process, 1 thread (influence_bench.py)",
                  measure=functools.partial(measure, "ours"))]
    if "torch" in peers:
        cases.append(Case("torch, H in closed form, fresh process, 1 thread (influence_bench.py)", kind="peer",
                          column="torch closed form 1 thread", measure=functools.partial(measure, "torch")))
    return cases


def _influence_cases(N, M, D, K, dtype, peers, peer_rows, damping=1e-3):
    X, y, X_test, y_test, W, b = _problem(N, M, D, K, dtype, seed=1)
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    Xt = np.concatenate([X, np.ones((N, 1), dtype)], axis=1)
    Xtt = np.concatenate([X_test, np.ones((M, 1), dtype)], axis=1)
    cases = [
        Case("X̃_test @ X̃.T: one O(M·N·D) product, the (M, N) output's size", lambda: Xtt @ Xt.T, kind="limit",
             column="X̃_test X̃ᵀ"),
        Case(f"jac.influence(..., damping={damping:g}), (M, N) = ({M:,}, {N:,}), P = {K * (D + 1):,}",
             lambda: jac.influence(head, X, y, X_test, y_test, W, b, damping=damping)),
        Case("jac.self_influence(head, X, y, W, b) on the training rows",
             lambda: jac.self_influence(head, X, y, W, b, damping=damping)),
    ]
    module = _influence_bench() if dtype == "float64" else None  # its data are float64
    if module is not None:
        cases += _fresh_process_cases(module, N, M, D, K, peers)
    if "torch" not in peers:
        return cases
    n = min(N, peer_rows)
    linear, solve, product = _torch_influence_parts(X[:n], y[:n], X_test, y_test, W, b, damping)
    H, G = linear()
    ours = jac.influence(head, X[:n], y[:n], X_test, y_test, W, b, damping=damping)
    diff = float(np.abs(product(G, solve(H)).numpy() - ours).max() / np.abs(ours).max())
    del H, G

    def measure(rounds):
        times = []
        for _ in range(rounds + 1):
            t0 = time.perf_counter()
            H, G = linear()
            t1 = time.perf_counter()
            S = solve(H)
            t2 = time.perf_counter()
            product(G, S)
            t3 = time.perf_counter()
            times.append((t1 - t0 + t3 - t2) * N / n + (t2 - t1))
        return {"times": times[1:]}

    scaled = "" if n == N else f", timed on {n:,} training rows × {N / n:g}"
    cases.append(Case(f"torch: func.hessian + Cholesky + vmap(grad){scaled} (vs ours {diff:.1e} of the largest)",
                      kind="peer", column="torch reference", measure=measure))
    return cases


# -- the plan ---------------------------------------------------------------------------------


def groups(dtype, *, quick, peers, sizes=None) -> list[Group]:
    """One Laplace and one influence group (``sizes``: ``[(N, K), ...]`` with D = 16 and M = N / 10,
    a smoke run)."""
    missing = [name for name, needed in (("laplace_torch", "laplace-torch"), ("torch", "torch")) if name not in peers]
    note = f"peers not installed or not requested: {', '.join(missing)}" if missing else ""
    if sizes:
        plans = [((N, max(1, N // 10), 16, K), (N, max(1, N // 10), 16, K), N, N) for N, K in sizes]
    elif quick:
        plans = [((5000, 1000, 32, 10), (2000, 100, 63, 10), 5000, 2000)]
    else:
        plans = [((50_000, 10_000, 128, 10), (100_000, 1000, 499, 10), 10_000, 1000)]
    out = []
    for (N, M, D, K), (Ni, Mi, Di, Ki), la_rows, infl_rows in plans:
        la_note = "" if la_rows >= N else f"laplace-torch's fit timed on {la_rows:,} rows and scaled to N. "
        out.append(Group(section="laplace", size=f"{N}x{D},K={K},M={M}", dtype=dtype,
                         build=functools.partial(_laplace_cases, N, M, D, K, dtype, peers, la_rows),
                         note=(la_note + note).strip()))
        infl_note = "" if infl_rows >= Ni else f"the torch reference timed on {infl_rows:,} training rows and scaled. "
        out.append(Group(section="laplace", size=f"influence {Ni}x{Di},K={Ki},M={Mi}", dtype=dtype,
                         build=functools.partial(_influence_cases, Ni, Mi, Di, Ki, dtype, peers, infl_rows),
                         note=(infl_note + note).strip()))
    return out
