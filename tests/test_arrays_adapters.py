"""``jacobians.torch.loss(head)`` under ``torch.func``: ``grad``, ``vmap``, ``jacrev``,
``jacfwd``, ``hessian``, ``jvp`` and their compositions, each against the same transform of
plain torch autograd of the same loss (torch's ``cross_entropy``, ``binary_cross_entropy_with_logits``,
the mean squared error) to 1e-12 in float64; ``gradcheck`` with forward mode and ``gradgradcheck``
forward-over-reverse as well as reverse-over-reverse. Forward-over-forward, which torch
cannot run through an ``autograd.Function``, raises instead of returning zeros.
"""

from __future__ import annotations

import numpy as np
import pytest

import jacobians as jac

pytestmark = [
    pytest.mark.arrays,
    # torch's own forward-mode decompositions (torch._decomp.decompositions_for_jvp, loaded by
    # the first jacfwd) call torch.jit.script, which torch 2.13 deprecates: not this package's
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]
pytest.importorskip("array_api_compat", reason="the arrays extra (array-api-compat, array-api-extra) is not installed")
torch = pytest.importorskip("torch", reason="torch (the test extra's CPU build) is not installed")

from torch.func import grad, hessian, jacfwd, jacrev, jvp, vjp, vmap  # noqa: E402

import jacobians.torch  # noqa: E402  (after the skip: it imports torch)

F = torch.nn.functional
ATOL = 1e-12

HEADS = {
    "softmax_ce": (lambda r: jac.Head(jac.Softmax(), jac.CrossEntropy(reduction=r)), "class",
                   lambda z, y, r: F.cross_entropy(z, y, reduction=r)),
    "sigmoid_bce": (lambda r: jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy(reduction=r)), "probability",
                    lambda z, y, r: F.binary_cross_entropy_with_logits(z, y, reduction=r)),
    "identity_mse": (lambda r: jac.Head(jac.Identity(), jac.MeanSquaredError(reduction=r)), "real",
                     lambda z, y, r: _mse(z, y, r)),
    "tanh_mse_chain": (lambda r: jac.Head(jac.Tanh(), jac.MeanSquaredError(reduction=r)), "real",
                       lambda z, y, r: _mse(torch.tanh(z), y, r)),
}


def _mse(a, y, reduction):
    """``F.mse_loss`` written out: torch's own fails forward-over-reverse ("ZeroTensors are
    immutable", torch 2.13)."""
    e = (a - y) ** 2
    return {"mean": torch.mean, "sum": torch.sum, "none": lambda x: x}[reduction](e)


def _inputs(kind, shape=(5, 4), seed=3):
    rng = np.random.default_rng(seed)
    z = torch.tensor(rng.normal(size=shape))
    K = shape[-1]
    y = {
        "class": lambda: torch.tensor(rng.integers(0, K, size=shape[:-1])),
        "probability": lambda: torch.tensor(rng.uniform(size=shape)),
        "real": lambda: torch.tensor(rng.normal(size=shape)),
    }[kind]()
    return z, y


def _pair(name, reduction="mean"):
    build, kind, reference = HEADS[name]
    f = jacobians.torch.loss(build(reduction))
    return f, (lambda z, y: reference(z, y, reduction)), kind


def _close(got, ref):
    assert got.shape == ref.shape and got.dtype == ref.dtype
    assert float((got - ref).abs().max()) <= ATOL, float((got - ref).abs().max())


@pytest.mark.parametrize("name", sorted(HEADS))
def test_torch_func_transforms_match_plain_autograd(name):
    f, ref, kind = _pair(name)
    z, y = _inputs(kind)
    u = torch.randn_like(z, generator=torch.Generator().manual_seed(1))
    _close(f(z, y), ref(z, y))
    _close(grad(f)(z, y), grad(ref)(z, y))
    _close(jacrev(f)(z, y), jacrev(ref)(z, y))
    _close(jacfwd(f)(z, y), jacfwd(ref)(z, y))
    H = hessian(ref)(z, y)
    _close(hessian(f)(z, y), H)  # forward over reverse
    _close(jacrev(jacrev(f))(z, y), H)
    _close(jacrev(jacfwd(f))(z, y), H)
    value, tangent = jvp(lambda x: f(x, y), (z,), (u,))
    _close(tangent, jvp(lambda x: ref(x, y), (z,), (u,))[1])
    _close(value, ref(z, y))
    # the HVP by forward over reverse, and by reverse over reverse
    hvp = jvp(lambda x: grad(f)(x, y), (z,), (u,))[1]
    _close(hvp, jvp(lambda x: grad(ref)(x, y), (z,), (u,))[1])
    _close(vjp(lambda x: grad(f)(x, y), z)[1](u)[0], hvp)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_vmap_gives_per_sample_gradients_and_per_batch_losses(name):
    f, ref, kind = _pair(name)
    z, y = _inputs(kind)
    # per-sample gradients: each row (K,) a batch of one
    _close(vmap(grad(f))(z, y), vmap(grad(ref))(z, y))
    # a leading axis of batches, each reduced on its own (and their Hessian blocks)
    zb, yb = _inputs(kind, shape=(3, 5, 4), seed=4)
    _close(vmap(f)(zb, yb), vmap(ref)(zb, yb))
    _close(vmap(f)(zb, yb), torch.stack([f(zb[b], yb[b]) for b in range(3)]))
    _close(vmap(hessian(f))(zb, yb), vmap(hessian(ref))(zb, yb))
    # the batch axis elsewhere than first
    _close(vmap(grad(f), in_dims=(1, 1))(zb, yb), vmap(grad(ref), in_dims=(1, 1))(zb, yb))


@pytest.mark.parametrize("name", ["softmax_ce", "identity_mse"])
def test_reduction_none_jacobians_and_gradchecks_with_forward_mode(name):
    """(``'mean'``'s reverse-over-reverse gradgradcheck is in test_arrays_heads.)"""
    f, ref, kind = _pair(name, "none")
    z, y = _inputs(kind)
    _close(jacrev(f)(z, y), jacrev(ref)(z, y))
    _close(jacfwd(f)(z, y), jacfwd(ref)(z, y))
    z, y = _inputs(kind, shape=(3, 3))
    for reduction in ("none", "mean"):
        f, _, _ = _pair(name, reduction)
        x = z.clone().requires_grad_(True)
        def loss(t, f=f):
            return f(t, y)

        assert torch.autograd.gradcheck(loss, (x,), check_forward_ad=True)
        rev = reduction == "none"
        assert torch.autograd.gradgradcheck(loss, (x,), check_fwd_over_rev=True,
                                            check_rev_over_rev=rev, check_undefined_grad=rev)


def test_forward_over_forward_raises_instead_of_returning_zeros():
    f, _, kind = _pair("softmax_ce")
    z, y = _inputs(kind)
    with pytest.raises(NotImplementedError, match=r"forward-over-forward.*torch\.func\.hessian"):
        jacfwd(jacfwd(f))(z, y)


def test_float32_stays_float32_under_transforms():
    f, ref, kind = _pair("softmax_ce")
    z, y = _inputs(kind)
    z = z.float()
    g, H = grad(f)(z, y), hessian(f)(z, y)
    assert g.dtype == H.dtype == torch.float32
    assert float((g - grad(ref)(z, y)).abs().max()) <= 1e-6
    assert float((H - hessian(ref)(z, y)).abs().max()) <= 1e-6
