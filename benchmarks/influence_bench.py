"""Exact last-layer influence: ``jac.influence`` against a torch reference, time and peak memory.

The problem: softmax + cross-entropy (``'mean'``), N_train training rows, N_test test rows,
features D, K classes, P = K·(D+1), damping 1e-3 (softmax's Hessian is singular without).
Both sides compute the same exact answer, ``I = −G_test (H + λI)⁻¹ G_trainᵀ``:

* ours: ``jac.influence(head, X_train, y_train, X_test, y_test, W, b, damping=1e-3)``
  (the dense curvature from ``linear_curvature``, Cholesky, blocked triangular solves, one
  GEMM per block of training rows; nothing of shape (N_train, P));
* torch: H from the per-sample closed form ``Σ_n (diag p_n − p_n p_nᵀ) ⊗ φ̃_n φ̃_nᵀ / N`` in
  row blocks, ``torch.linalg.cholesky`` + ``torch.cholesky_solve`` for the test gradients,
  the per-sample training gradients by ``torch.func.vmap(torch.func.grad(row loss))`` in row
  blocks, and their product with the solved test gradients.

(torch-influence, the issue's first choice of peer, is not installable from this machine's
package index: ``pip download torch-influence`` finds no distribution. Its direct method is
the same computation with autograd Hessians.)

Each side runs in a fresh process, one BLAS thread (``OMP/OPENBLAS/MKL_NUM_THREADS=1``,
``torch.set_num_threads(1)``), and reports its wall time (data generation excluded) and
its peak resident set size (``VmHWM``, the data included: the features alone are
N_train·D·8 bytes). The parent checks the two answers agree (8 test rows) and prints the
ratios::

    python benchmarks/influence_bench.py                 # small: 20,000 × 200, D = 127
    python benchmarks/influence_bench.py --full          # 100,000 × 1,000, D = 499 (P = 5,000)
    python benchmarks/influence_bench.py --n-train 50000 --n-test 500 --d 255 --k 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peak_memory import peak_rss_bytes  # noqa: E402  (the same VmHWM reader as the memory bench)

DAMPING = 1e-3
CHECK_ROWS = 8


def make_data(n_train: int, n_test: int, d: int, k: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_train + n_test, d))
    W = rng.standard_normal((k, d)) / np.sqrt(d)
    b = 0.1 * rng.standard_normal(k)
    logits = X @ W.T + b
    y = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)  # labels drawn from the model
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:], W, b


def run_ours(args) -> tuple[float, object]:
    import jacobians as jac

    Xtr, ytr, Xte, yte, W, b = make_data(args.n_train, args.n_test, args.d, args.k)
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    t0 = time.perf_counter()
    out = jac.influence(head, Xtr, ytr, Xte, yte, W, b, damping=DAMPING)
    return time.perf_counter() - t0, out


def run_torch(args) -> tuple[float, object]:
    import torch

    torch.set_num_threads(1)
    F = torch.nn.functional
    Xtr_np, ytr_np, Xte_np, yte_np, W_np, b_np = make_data(args.n_train, args.n_test, args.d, args.k)
    Xtr, ytr = torch.from_numpy(Xtr_np), torch.from_numpy(ytr_np)
    Xte, yte = torch.from_numpy(Xte_np), torch.from_numpy(yte_np)
    K, D = W_np.shape
    D1, P = D + 1, K * (D + 1)
    theta = torch.cat([torch.from_numpy(W_np), torch.from_numpy(b_np)[:, None]], 1).reshape(-1)
    block = max(1, (256 << 20) // (8 * P * 3))

    def row_loss(th, x, y):
        Wb = th.reshape(K, D1)
        return F.cross_entropy((Wb[:, :D] @ x + Wb[:, D])[None], y[None])

    per_sample_grad = torch.func.vmap(torch.func.grad(row_loss), in_dims=(None, 0, 0))

    t0 = time.perf_counter()
    with torch.no_grad():
        H = torch.zeros(P, P, dtype=torch.float64)
        H4 = H.view(K, D1, K, D1)
        Wb = theta.reshape(K, D1)
        N = Xtr.shape[0]
        for s in range(0, N, block):
            x = Xtr[s:s + block]
            x1 = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
            p = torch.softmax(x @ Wb[:, :D].T + Wb[:, D], dim=1)
            U = (p[:, :, None] * x1[:, None, :]).reshape(-1, P)
            H.sub_(U.T @ U)  # − Σ (p ⊗ φ̃)(p ⊗ φ̃)ᵀ
            for c in range(K):  # + Σ diag(p) ⊗ φ̃φ̃ᵀ
                H4[c, :, c, :] += x1.T @ (p[:, c, None] * x1)
        H /= N
        H.diagonal().add_(DAMPING)
        L = torch.linalg.cholesky(H)
        del H, H4
    G_test = per_sample_grad(theta, Xte, yte)  # (M, P)
    V = torch.cholesky_solve(G_test.T.contiguous(), L)  # (P, M)
    out = torch.empty(Xte.shape[0], N, dtype=torch.float64)
    for s in range(0, N, block):
        G = per_sample_grad(theta, Xtr[s:s + block], ytr[s:s + block])  # (n, P)
        out[:, s:s + block] = -(G @ V).T
    return time.perf_counter() - t0, out.numpy()


def child(args) -> None:
    import numpy as np

    seconds, out = (run_ours if args.child == "ours" else run_torch)(args)
    np.save(args.save, np.ascontiguousarray(out[:CHECK_ROWS]))
    print(json.dumps({"seconds": seconds, "peak_rss_bytes": peak_rss_bytes(), "shape": list(out.shape)}))


def spawn(side: str, args, save: str) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout's jacobians
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=path)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", side, "--save", save,
           "--n-train", str(args.n_train), "--n-test", str(args.n_test), "--d", str(args.d), "--k", str(args.k)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{side} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="10⁵ train × 10³ test rows, D = 499, K = 10")
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--d", type=int, default=127)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--sides", default="ours,torch", help="which sides to run, comma-separated")
    parser.add_argument("--child", choices=("ours", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.full:
        args.n_train, args.n_test, args.d, args.k = 100_000, 1_000, 499, 10
    if args.child:
        child(args)
        return
    import numpy as np

    P = args.k * (args.d + 1)
    print(f"influence of {args.n_test} test × {args.n_train} train rows, D = {args.d}, K = {args.k}, P = {P}; "
          f"one thread; features {args.n_train * args.d * 8 / 2**20:.0f} MiB, "
          f"result {args.n_test * args.n_train * 8 / 2**20:.0f} MiB", flush=True)
    results, answers = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in args.sides.split(","):
            save = os.path.join(tmp, f"{side}.npy")
            results[side] = r = spawn(side, args, save)
            answers[side] = np.load(save)
            print(f"{side:>6}: {r['seconds']:8.2f} s, peak RSS {r['peak_rss_bytes'] / 2**30:.3f} GiB", flush=True)
    if len(results) == 2:
        ours, peer = results["ours"], results["torch"]
        diff = np.max(np.abs(answers["ours"] - answers["torch"])) / np.max(np.abs(answers["torch"]))
        print(f"ratio ours/torch: time {ours['seconds'] / peer['seconds']:.2f}×, "
              f"peak memory {ours['peak_rss_bytes'] / peer['peak_rss_bytes']:.2f}×; "
              f"answers agree to {diff:.1e} (max relative, {CHECK_ROWS} test rows)")
    if "ours" in results:
        peak = results["ours"]["peak_rss_bytes"] / 2**30
        print(f"ours within 2 GiB: {'yes' if peak <= 2 else 'NO'} ({peak:.3f} GiB)")


if __name__ == "__main__":
    main()
