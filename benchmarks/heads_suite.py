"""The ``heads`` section: the heads added for issue 21 against torch autograd of the same loss.

``python -m jacobians bench --sections heads`` times, for each new head, ``head.value_and_grad``
(the fused rule where the pair has one, the chain rule otherwise) against torch's forward +
``backward()`` of the same loss written with torch's own functions, once with torch on one
thread and once with its default threads (two groups per size). Targets: every new fused
gradient ≤ 1.0× torch autograd; the Plackett–Luce HVP ≤ 2× its own gradient. Without torch
the rows of ours still run (the ratios to torch are then missing).

Every group but ``--quick``'s is timed with ``Group(warm=…)``: each timed call after 20 ms (2 ms with
torch on one thread) of untimed calls of the same case, so that each side is timed in its own steady state, as a loop of its own
calls runs it. torch's OpenMP workers spin on the other cores after each parallel region
(libgomp's active wait), and whatever runs next on those cores pays for it: interleaved
without warm-up, our two-thread kernels ran at up to 1.7× their own time right after torch
(2-core Intel Xeon, AVX-512), and torch at 1.3× its own right after ours; and a call after
another case's found the second core idle more often (a wake-up of about 0.1 ms on a VM).
(The cost of the first call after a torch op: ``docs/performance.md``.)
"""

from __future__ import annotations

import functools

import numpy as np

import jacobians as jac
from jacobians.bench import Case, Group

TITLE = ("the new heads: value and dE/dz from the logits, forward + backward, against torch autograd of the "
         "same loss (one thread, then torch's default threads); Plackett–Luce H·v against its gradient")

#: the fused ones carry the issue's target (≤ 1.0× torch)
TARGET_FUSED = 1.0
TARGET_PL_HVP = 2.0
#: seconds of untimed calls of a case before each of its timed calls, by torch's threads (1
#: or its default, None): libgomp's idle workers spin up to about 17 ms after torch's last
#: parallel region here (300,000 pauses); one thread starts none
WARM = {1: 0.002, None: 0.02}
PL_STEPS = 5  # the rankings' length R


def _heads():
    """``{name: (head, fused?)}``, built when the section runs."""
    return {
        "softmax+focal(γ=2)": (jac.Head(jac.Softmax(), jac.FocalLoss(gamma=2.0)), True),
        "softmax+focal(γ=2), soft targets": (jac.Head(jac.Softmax(), jac.FocalLoss(gamma=2.0)), True),
        "sigmoid+binary_focal(γ=2, α=0.25)": (jac.Head(jac.Sigmoid(), jac.BinaryFocalLoss()), True),
        "softmax+poly1(ε=1)": (jac.Head(jac.Softmax(), jac.PolyLoss()), True),
        "identity+poisson_nll": (jac.Head(jac.Identity(), jac.PoissonNLL()), True),
        "identity+plackett_luce(R=5)": (jac.Head(jac.Identity(), jac.PlackettLuce()), True),
        "mean_variance+gaussian_nll": (jac.Head(jac.MeanVariance(), jac.GaussianNLL()), False),
        "identity+multi_margin(p=1)": (jac.Head(jac.Identity(), jac.MultiMargin()), False),
    }


def _inputs(name, N, K, dtype):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(N, K)).astype(dtype)
    if name.startswith("sigmoid"):
        return z, (rng.random((N, K)) < 0.5).astype(dtype)
    if name.endswith("soft targets"):
        return z, rng.dirichlet(np.ones(K), N).astype(dtype)
    if name.startswith("identity+poisson"):
        return z, rng.poisson(np.exp(z)).astype(dtype)
    if name.startswith("identity+plackett"):
        return z, np.argsort(rng.random((N, K)), axis=1)[:, :PL_STEPS]
    if name.startswith("mean_variance"):
        return z, rng.normal(size=(N, K // 2)).astype(dtype)
    return z, rng.integers(0, K, size=N)


def _torch_loss(name, y):
    """The same loss in torch's own functions, ``'mean'`` as ours."""
    import torch
    import torch.nn.functional as F

    if name.startswith("softmax+focal") and name.endswith("soft targets"):
        def soft_focal(x):
            logp = F.log_softmax(x, -1)
            return -(y * (1 - logp.exp()) ** 2 * logp).sum(-1).mean()
        return soft_focal
    if name.startswith("softmax+focal"):
        def focal(x):
            logp = F.log_softmax(x, -1).gather(-1, y[:, None])[:, 0]
            return -((1 - logp.exp()) ** 2 * logp).mean()
        return focal
    if name.startswith("sigmoid"):
        def binary_focal(x):  # torchvision.ops.sigmoid_focal_loss
            p = torch.sigmoid(x)
            ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
            p_t = p * y + (1 - p) * (1 - y)
            return ((0.25 * y + 0.75 * (1 - y)) * ce * (1 - p_t) ** 2).mean()
        return binary_focal
    if name.startswith("softmax+poly1"):
        return lambda x: F.cross_entropy(x, y) + (1 - F.softmax(x, -1).gather(-1, y[:, None])[:, 0]).mean()
    if name.startswith("identity+poisson"):
        return lambda x: F.poisson_nll_loss(x, y, log_input=True)
    if name.startswith("identity+plackett"):
        def plackett_luce(x):
            taken = torch.zeros_like(x, dtype=torch.bool)
            total = x.new_zeros(())
            for i in range(y.shape[1]):
                rest = x.masked_fill(taken, -torch.inf)
                total = total + (torch.logsumexp(rest, -1) - x.gather(-1, y[:, i:i + 1])[:, 0]).sum()
                taken = taken.scatter(-1, y[:, i:i + 1], True)
            return total / x.shape[0]
        return plackett_luce
    if name.startswith("mean_variance"):
        half = y.shape[-1]
        return lambda x: F.gaussian_nll_loss(x[:, :half], y, F.softplus(x[:, half:]))
    return lambda x: F.multi_margin_loss(x, y)


def _cases(name, N, K, dtype, peers, threads):
    import peers as P

    column = "torch 1 thread" if threads == 1 else "torch"
    head, fused = _heads()[name]
    z, y = _inputs(name, N, K, dtype)
    out = np.empty_like(z)
    cases = [
        Case("one pass: np.exp(z, out=)", lambda: np.exp(z, out=out), kind="limit", column="1 exp pass"),
        Case(f"{name} head.value_and_grad", lambda: head.value_and_grad(z, y),
             targets={column: TARGET_FUSED} if fused and "torch" in peers else {}),
    ]
    if name.startswith("identity+plackett") and threads == 1:  # ours alone: once
        v = np.random.default_rng(2).normal(size=z.shape).astype(dtype)
        cases += [
            Case("head.hvp(z, y, v)", lambda: head.hvp(z, y, v), targets={"head.grad": TARGET_PL_HVP}),
            Case("head.grad(z, y): the reference of ×head.grad", lambda: head.grad(z, y), kind="ref", column="head.grad"),
        ]
    if "torch" in peers:
        import torch

        zt, yt = torch.from_numpy(z), torch.from_numpy(np.ascontiguousarray(y))
        cases.append(Case(f"torch forward + backward() ({'one thread' if threads == 1 else 'default threads'})",
                          P.torch_value_and_grad(zt, _torch_loss(name, yt)), kind="peer", column=column))
    return cases


def groups(dtype, *, quick, peers, sizes=None) -> list[Group]:
    """Two groups per head and size: torch on one thread, then on its default threads (``quick``:
    one small size, one thread)."""
    import peers as P

    shapes = list(sizes) if sizes else [(256, 10)] if quick else [(4096, 10), (4096, 100), (1024, 1000)]
    out = []
    for name in _heads():
        for N, K in shapes:
            K = K + K % 2 if name.startswith("mean_variance") else K  # [μ | s]: an even width
            for threads in (1,) if quick else (1, None):
                context = functools.partial(P.torch_threads, threads) if "torch" in peers else None
                out.append(Group(section="heads", size=f"{N}x{K}", dtype=dtype, context=context, warm=0.0 if quick else WARM[threads],
                                 build=functools.partial(_cases, name, N, K, dtype, peers, threads)))
    return out
