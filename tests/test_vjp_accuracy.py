"""The simplex maps' VJP and JVP are exact to 16 ulp on every row, confident rows included.

On a confident row (one probability near 1) the plain softmax VJP ``s ⊙ (g − s·g)`` keeps
only the round-off of ``g − s·g``: eps·|g| against a result of size (1 − s_max)·|g|. The
kernels centre g on the entry of the largest probability first (see
:func:`jacobians.numerics.softmax.softmax_vjp`). Each product is compared with a long-double reference
written without cancellation, ``(w_k/Σw) Σ_j w_j (v_k − v_j) / T``, normwise per row: the
largest error of a row over the largest exact entry of that row, in units of the dtype's eps.

Softmax is checked from the logits (its forward is a few ulp from exact on every entry).
The sparse maps (sparsemax, 1.5-entmax, α-entmax) are checked against their own output p:
their forward is ill-conditioned near the support's edge (a small ``u = x − τ`` carries
the absolute error of τ), and that is the forward's, not the product's, to answer for.
The maps are found by walking the registry (every :class:`~jacobians.SimplexMapping`, with
its variants).
"""

from __future__ import annotations

import numpy as np
import pytest

import jacobians as jac
from jacobians import _kernels
from jacobians._kernels import numpy_impl
from jacobians.activations.simplex import SimplexMapping

LD = np.longdouble
MAX_ULPS = 16
DTYPES = (np.float64, np.float32)
#: the α of each registered simplex map whose Jacobian weights are ``p^{2−α}`` on the support
ALPHA = {"softmax": 1.0, "sparsemax": 2.0, "entmax15": 1.5}


def _maps():
    """Every registered simplex map, with each of its variants, as (id, instance)."""
    out = []
    for name, cls in sorted(jac.ACTIVATIONS.items()):
        if isinstance(cls, type) and issubclass(cls, SimplexMapping):
            for kw in [{}, *cls.variants(33)]:
                out.append(pytest.param(cls(**kw), id=f"{name}-{kw}"))
    return out


def _batches(rng, dtype, n=257, K=33):
    """Batches of confident rows (each its own call: a batch holding a large logit is
    computed shifted by the row max)."""
    hot = np.arange(K) == rng.integers(0, K, size=(n, 1))
    rows = {
        "N(0, 3²)": rng.normal(size=(n, K)) * 3,
        "N(0, 10²)": rng.normal(size=(n, K)) * 10,
        "one far above": hot * rng.uniform(5, 40, size=(n, 1)) + rng.normal(size=(n, K)),
        "±1e4": rng.choice([1e4, -1e4], size=(n, K)) + rng.normal(size=(n, K)) * 3,
    }
    return {name: z.astype(dtype) for name, z in rows.items()}


def _ld_softmax(x):
    xl = np.asarray(x, LD)
    e = np.exp(xl - xl.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _ld_weights(act, p):
    """The Jacobian's weights ``p^{2−α}`` on the support (0 off it), in long double, from p."""
    alpha = LD(ALPHA[act.name] if act.name in ALPHA else act.alpha)
    pl = np.asarray(p, LD)
    on = pl > 0
    return np.where(on, np.where(on, pl, 1) ** (2 - alpha), 0)


def _ld_product(w, v, T):
    """``(diag(w) − w wᵀ/Σw) v / T`` as ``(w_k/Σw) Σ_j w_j (v_k − v_j) / T``: no two large
    terms cancel."""
    vl = np.asarray(v, LD)
    diff = vl[..., :, None] - vl[..., None, :]
    return (w / w.sum(axis=-1, keepdims=True)) * np.einsum("...j,...kj->...k", w, diff) / LD(T)


def _row_ulps(got, exact, dtype):
    """Per row: max |got − exact| / (eps · max |exact|) (the smallest normal number as the
    floor of the row's scale: a row that underflows is measured in subnormal units)."""
    fi = np.finfo(dtype)
    err = np.abs(np.asarray(got, LD) - exact).max(axis=-1)
    return err / (LD(fi.eps) * np.maximum(np.abs(exact).max(axis=-1), LD(fi.tiny)))


def _assert_rows(got, exact, dtype, what):
    assert got.dtype == dtype, f"{what}: {got.dtype}, not {np.dtype(dtype)}"
    ulps = _row_ulps(got, exact, dtype)
    worst = int(np.argmax(ulps))
    assert ulps[worst] <= MAX_ULPS, f"{what}: {float(ulps[worst]):.1f} ulp on row {worst} (max {MAX_ULPS})"


def _gradients(rng, z):
    g = rng.normal(size=z.shape)
    g[::3] += 100  # an offset: J 1 = 0, the products must not see it
    return g.astype(z.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", _maps())
def test_every_route_is_exact_to_16_ulp_on_every_row(act, dtype, rng):
    T = act.temperature
    confident = 0
    for name, z in _batches(rng, dtype).items():
        g = _gradients(rng, z)
        p = act(z)
        if act.name == "softmax":  # from the (scaled) logits: T = 3 rounds z/T, the map's input
            w = _ld_softmax(act.scaled_logits(z))
            confident += int(np.count_nonzero(w.max(axis=-1) > 0.999))
        else:  # from the map's own output (see the module's docstring)
            w = _ld_weights(act, p)
        exact = _ld_product(w, g, T)
        op = act.jacobian_operator(z)
        routes = {
            "act.vjp(z, g)": act.vjp(z, g),
            "act.jvp(z, v)": act.jvp(z, g),
            "g @ act.jacobian_operator(z)": g @ op,
            "act.jacobian_operator(z) @ v": op @ g,
            "from the output (Head method='vjp')": act.vjp_from_output(z, p, g),
        }
        for route, got in routes.items():
            _assert_rows(got, exact, dtype, f"{act.name} T={T} {name}: {route} ({_kernels.kernels()} kernels)")
    assert act.name != "softmax" or confident >= 20, f"only {confident} confident rows: the test would not bite"


def _kernel_sets():
    sets = [pytest.param(numpy_impl, id="numpy")]
    try:
        from jacobians._kernels import numba_impl
    except ImportError:
        sets.append(pytest.param(None, id="numba", marks=pytest.mark.skip(reason="the fast extra (numba) is not installed")))
    else:
        sets.append(pytest.param(numba_impl, id="numba"))
    return sets


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", _kernel_sets())
def test_both_kernel_sets_are_exact_to_16_ulp_on_every_row(impl, dtype, rng):
    """Both implementations called directly, whichever set the package runs: the fused
    softmax VJP (with a temperature and a per-row factor, as the softmax + CE HVP calls it)
    and the product of a given Jacobian (``simplex_vjp``)."""
    for name, z in _batches(rng, dtype).items():
        g = _gradients(rng, z)
        for T in (1.0, 0.5):
            x = (z / dtype(T)).astype(dtype)
            s = _ld_softmax(x)
            _assert_rows(impl.softmax_vjp(x, g, T), _ld_product(s, g, T), dtype, f"softmax_vjp T={T} {name}")
            f = rng.uniform(0.5, 2.0, size=z.shape[0]).astype(dtype)
            exact = np.asarray(f, LD)[:, None] * _ld_product(s, g, T)  # T = 1, 0.5: f/T is exact
            _assert_rows(impl.softmax_vjp(x, g, T, f), exact, dtype, f"softmax_vjp T={T}, factor {name}")
        p = numpy_impl.softmax(z)
        _assert_rows(impl.simplex_vjp(p, p, g), _ld_product(np.asarray(p, LD), g, 1.0), dtype, f"simplex_vjp {name}")
        on = (p > 1e-3).astype(dtype)  # a support indicator: sparsemax's weights
        _assert_rows(impl.simplex_vjp(on, on / on.sum(axis=-1, keepdims=True), g), _ld_product(np.asarray(on, LD), g, 1.0),
                     dtype, f"simplex_vjp, indicator weights {name}")
