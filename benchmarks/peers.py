"""Peers measured beside the toolkit, each optional and detected when installed.

Every ``make_*`` returns a zero-argument callable doing the same work as ours, on data
converted before timing (zero-copy for torch). JAX calls are jitted (compiled during the
warm-up) and block until ready; JAX runs in 64-bit mode so float64 is float64.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import warnings

import numpy as np

NUMPY_PEERS = ("seed", "loop")
#: peers whose distribution is not named like their module
DISTRIBUTIONS = {"backpack": "backpack-for-pytorch", "laplace_torch": "laplace-torch"}

#: peer name -> the module that provides it (default: the peer's own name)
MODULES = {"entmax_bisect": "entmax", "laplace_torch": "laplace"}


def available(names) -> dict[str, str]:
    """``{name: version}`` of the requested peers that can be imported."""
    found = {}
    for name in names:
        if name in NUMPY_PEERS:
            found[name] = "numpy"
            continue
        module_name = MODULES.get(name, name)
        if importlib.util.find_spec(module_name) is not None:
            try:
                module = __import__(module_name)
            except Exception:  # a broken install (or torch missing under entmax) is a missing peer
                continue
            if name == "jax":
                module.config.update("jax_enable_x64", True)
            try:
                found[name] = importlib.metadata.version(DISTRIBUTIONS.get(name, module_name))
            except importlib.metadata.PackageNotFoundError:
                found[name] = getattr(module, "__version__", "?")
    return found


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch limited to ``n`` threads inside the block (None: unchanged)."""
    import torch

    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# -- torch ----------------------------------------------------------------------------------


def torch_jacobian_vmap(z):
    import torch
    from torch.func import jacrev, vmap

    f = vmap(jacrev(lambda x: torch.softmax(x, -1)))
    tz = torch.from_numpy(z)
    return lambda: f(tz)


def torch_jacobian_hand(z):
    import torch

    tz = torch.from_numpy(z)

    def run():
        s = torch.softmax(tz, -1)
        J = -s[:, :, None] * s[:, None, :]
        J.diagonal(dim1=1, dim2=2).add_(s)
        return J

    return run


def torch_contract(g, J):
    import torch

    tg, tJ = torch.from_numpy(g), torch.from_numpy(J)
    return lambda: torch.bmm(tg[:, None, :], tJ)[:, 0, :]


def torch_vjp(z, g):
    """softmax forward + autograd backward."""
    import torch

    tz, tg = torch.from_numpy(z), torch.from_numpy(g)

    def run():
        x = tz.detach().requires_grad_(True)
        torch.softmax(x, -1).backward(tg)
        return x.grad

    return run


def torch_backward(z, g):
    """The backward alone, through a graph built once (retain_graph)."""
    import torch

    x = torch.from_numpy(z).detach().requires_grad_(True)
    s = torch.softmax(x, -1)
    tg = torch.from_numpy(g)
    return lambda: torch.autograd.grad(s, x, tg, retain_graph=True)[0]


def torch_fused(pair, z, y):
    """``F.cross_entropy`` / ``nll_loss(log_softmax)`` / ``binary_cross_entropy_with_logits``,
    forward + backward."""
    import torch
    import torch.nn.functional as F

    tz, ty = torch.from_numpy(z), torch.from_numpy(y)
    loss = {
        "softmax+cross_entropy": lambda x: F.cross_entropy(x, ty),
        "log_softmax+nll": lambda x: F.nll_loss(F.log_softmax(x, -1), ty),
        "sigmoid+binary_cross_entropy": lambda x: F.binary_cross_entropy_with_logits(x, ty),
    }[pair]

    return torch_value_and_grad(tz, loss)


def torch_value_and_grad(z, fn):
    """A callable giving ``(fn(x), ∂fn/∂x)`` by ``backward()``, with ``x`` a fresh leaf copy of
    the torch tensor ``z`` each call (the forward + backward a training step runs)."""

    def run():
        x = z.detach().requires_grad_(True)
        value = fn(x)
        value.backward()
        return value.detach(), x.grad

    return run


def _in_threads(fn, n: int | None):
    """``fn`` run with torch limited to ``n`` threads for the call (None: ``fn`` itself)."""
    if n is None:
        return fn
    import torch

    def run():
        old = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(old)

    return run


def torch_hessian_vmap(z, y, threads: int | None = None):
    """``vmap(hessian(per-sample cross-entropy / N))``: the (N, K, K) blocks of the mean
    loss, as ``head.hessian`` returns them."""
    import torch
    import torch.nn.functional as F
    from torch.func import hessian, vmap

    scale = 1.0 / z.shape[0]
    f = vmap(hessian(lambda x, t: F.cross_entropy(x, t) * scale))
    tz, ty = torch.from_numpy(z), torch.from_numpy(y)
    return _in_threads(lambda: f(tz, ty), threads)


def backpack_sqrt_hessian(z, y):
    """BackPACK's ``sqrt_hessian`` of ``CrossEntropyLoss`` (mean): the exact factor, ``[K, N, K]``
    (``np.moveaxis`` of ``head.sqrt_ggn``'s ``(N, K, K)``), from the module's stored input."""
    import torch
    from backpack.core.derivatives.crossentropyloss import CrossEntropyLossDerivatives

    module = torch.nn.CrossEntropyLoss()
    tz, ty = torch.from_numpy(z), torch.from_numpy(y)
    module.input0, module.output = tz, module(tz, ty)  # what BackPACK's forward hook stores
    derivatives = CrossEntropyLossDerivatives()
    return lambda: derivatives.sqrt_hessian(module, None, None)


# -- torch: the last layer -------------------------------------------------------------------
#
# E(θ) = mean cross-entropy of z = X Wᵀ + b over N rows, θ = vec([W | b]) in C order (row k:
# class k's weights, then its bias), as ``jacobians.linear_curvature`` orders it. E is a sum
# over rows, so both peers take it over row chunks (their intermediates are P-fold or K-fold
# the chunk's logits, far larger than the data) and add the chunks' (P, P) matrices.


def _chunk_rows(per_row_bytes: int, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // max(per_row_bytes, 1))


def torch_linear_hessian(X, W, b, y, threads: int | None = None, chunk_bytes: int = 256 << 20):
    """``torch.func.hessian`` of E with respect to θ, shape (P, P), P = K·(D+1): forward-over-reverse
    with P tangents, summed over row chunks of about ``chunk_bytes`` of (P, rows, K) tangents."""
    import torch
    import torch.nn.functional as F
    from torch.func import hessian

    N, D = X.shape
    K = W.shape[0]
    P = K * (D + 1)
    tX, ty = torch.from_numpy(X), torch.from_numpy(y)
    theta = torch.from_numpy(np.concatenate([W, b[:, None]], axis=1).ravel())
    scale = 1.0 / N

    def E(t, x, target):
        Wb = t.view(K, D + 1)
        return F.cross_entropy(x @ Wb[:, :D].T + Wb[:, D], target, reduction="sum") * scale

    h = hessian(E)
    rows = _chunk_rows(P * K * X.itemsize, chunk_bytes)

    def run():
        H = torch.zeros(P, P, dtype=tX.dtype)
        for s in range(0, N, rows):
            H += h(theta, tX[s:s + rows], ty[s:s + rows])
        return H

    return _in_threads(run, threads)


def backpack_linear_ggn(X, W, b, y, chunk_bytes: int = 256 << 20):
    """BackPACK's ``SqrtGGNExact`` on a ``torch.nn.Linear`` + ``CrossEntropyLoss``: the factor
    ``[C, rows, K, D]`` (weight) and ``[C, rows, K]`` (bias), C = K, joined in θ's order and
    summed as ``Sᵀ S`` (P, P) over row chunks of about ``chunk_bytes`` of factor; the loss
    summed, the GGN divided by N (the mean's factor)."""
    import torch
    from backpack import backpack, extend
    from backpack.extensions import SqrtGGNExact

    N, D = X.shape
    K = W.shape[0]
    P = K * (D + 1)
    tX, ty = torch.from_numpy(X), torch.from_numpy(y)
    layer = torch.nn.Linear(D, K, dtype=tX.dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(W))
        layer.bias.copy_(torch.from_numpy(b))
    layer = extend(layer)
    loss_fn = extend(torch.nn.CrossEntropyLoss(reduction="sum"))
    rows = _chunk_rows(K * P * X.itemsize, chunk_bytes)
    # the input needs no gradient; torch says its full backward hooks then fire on the outputs
    warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)

    def run():
        G = torch.zeros(P, P, dtype=tX.dtype)
        for s in range(0, N, rows):
            layer.zero_grad(set_to_none=True)
            loss = loss_fn(layer(tX[s:s + rows]), ty[s:s + rows])
            with backpack(SqrtGGNExact()):
                loss.backward()
            S = torch.cat([layer.weight.sqrt_ggn_exact, layer.bias.sqrt_ggn_exact[..., None]], dim=-1)
            S = S.reshape(-1, P)  # rows (c, n), columns θ
            G.addmm_(S.T, S)
        G *= 1.0 / N
        return G
def entmax_bisect_vjp(z, g, alpha, n_iter=50):
    """The entmax package's ``entmax_bisect`` (Peters et al., torch) forward + autograd
    backward: its default 50 bisection steps, then p normalised to sum to 1."""
    import torch
    from entmax import entmax_bisect

    tz, tg = torch.from_numpy(z), torch.from_numpy(g)

    def run():
        x = tz.detach().requires_grad_(True)
        entmax_bisect(x, alpha=alpha, n_iter=n_iter).backward(tg)
        return x.grad

    return run


# -- JAX ------------------------------------------------------------------------------------


def _jax():
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    return jax, jnp


def jax_jacobian(z):
    jax, jnp = _jax()
    f = jax.jit(jax.vmap(jax.jacrev(jax.nn.softmax)))
    jz = jnp.asarray(z)
    return lambda: f(jz).block_until_ready()


def jax_contract(g, J):
    jax, jnp = _jax()
    f = jax.jit(lambda g, J: jnp.einsum("ij,ijk->ik", g, J))
    jg, jJ = jnp.asarray(g), jnp.asarray(J)
    return lambda: f(jg, jJ).block_until_ready()


def jax_vjp(z, g):
    jax, jnp = _jax()
    f = jax.jit(lambda z, g: jax.vjp(jax.nn.softmax, z)[1](g)[0])
    jz, jg = jnp.asarray(z), jnp.asarray(g)
    return lambda: f(jz, jg).block_until_ready()


def jax_fused(pair, z, y):
    jax, jnp = _jax()

    def ce(z, y):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], axis=-1))

    def bce(z, y):
        return jnp.mean(jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z))))

    loss = bce if pair == "sigmoid+binary_cross_entropy" else ce
    f = jax.jit(jax.value_and_grad(loss))
    jz, jy = jnp.asarray(z), jnp.asarray(y)

    def run():
        v, g = f(jz, jy)
        return v.block_until_ready(), g.block_until_ready()

    return run


def jax_hessian_vmap(z, y):
    """``jit(vmap(hessian(per-sample cross-entropy / N)))``."""
    jax, jnp = _jax()
    scale = 1.0 / z.shape[0]

    def ce(x, t):
        return (jax.nn.logsumexp(x) - x[t]) * scale

    f = jax.jit(jax.vmap(jax.hessian(ce)))
    jz, jy = jnp.asarray(z), jnp.asarray(y)
    return lambda: f(jz, jy).block_until_ready()


# -- autograd -------------------------------------------------------------------------------


def _ag_softmax(z):
    import autograd.numpy as anp

    e = anp.exp(z - anp.max(z, axis=1, keepdims=True))
    return e / anp.sum(e, axis=1, keepdims=True)


def autograd_jacobian(z):
    """All N Jacobians from K reverse passes: the Jacobian of ``Σ_n softmax(z)_n``
    (rows are independent), then moved to (N, K, K)."""
    from autograd import jacobian

    f = jacobian(lambda z: _ag_softmax(z).sum(axis=0))
    return lambda: np.ascontiguousarray(np.transpose(f(z), (1, 0, 2)))


def autograd_vjp(z, g):
    from autograd import make_vjp

    def run():
        vjp, _ = make_vjp(_ag_softmax)(z)
        return vjp(g)

    return run


def autograd_fused(pair, z, y):
    import autograd.numpy as anp
    from autograd import value_and_grad

    N = z.shape[0]
    if pair == "sigmoid+binary_cross_entropy":
        def loss(z):
            return anp.mean(anp.maximum(z, 0) - z * y + anp.log1p(anp.exp(-anp.abs(z))))
    else:
        rows = np.arange(N)

        def loss(z):
            m = anp.max(z, axis=1, keepdims=True)
            ls = z - m - anp.log(anp.sum(anp.exp(z - m), axis=1, keepdims=True))
            return -anp.mean(ls[rows, y])

    f = value_and_grad(loss)
    return lambda: f(z)
