"""Property tests (hypothesis): random batch shapes (0–2 batch axes, K = 1..8), float32
and float64, logits up to ±1e4, over every activation and every valid pair."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import activation_cases, head_input_like, head_methods, head_targets, widen
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import jacobians as jac
from jacobians import checks

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

ACTIVATIONS = activation_cases()
PAIRS = [pytest.param(p, id=f"{p.activation}+{p.loss}") for p in jac.pairs()]

shapes = st.tuples(
    st.lists(st.integers(1, 4), min_size=0, max_size=2),
    st.integers(1, 8),
).map(lambda bk: (*bk[0], bk[1]))
dtypes = st.sampled_from([np.float32, np.float64])


@st.composite
def logits(draw, max_abs=1e4):
    """Logits of a random shape and dtype: hypothesis picks every entry (0, ±max_abs,
    tiny and huge values, ties), scaled to at most ``max_abs``."""
    dtype = draw(dtypes)
    shape = draw(shapes)
    width = 32 if dtype is np.float32 else 64
    return draw(arrays(dtype, shape, elements=st.floats(-max_abs, max_abs, allow_nan=False, width=width)))


def _eps(dtype) -> float:
    return float(np.finfo(dtype).eps)


def _close(actual, expected, dtype, terms: int = 1):
    """|actual − expected| within round-off of a sum of ``terms`` products, relative to the
    largest entry of ``expected``."""
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    tol = 64 * terms * _eps(dtype) * scale
    err = float(np.max(np.abs(np.asarray(actual, np.float64) - expected), initial=0.0))
    assert err <= tol, f"max error {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("act", ACTIVATIONS)
@SETTINGS
@given(z=logits(), data=st.data())
def test_activation_properties(act, z, data):
    big = checks.inputs.extreme_magnitude(act, z.dtype)  # 1e4, or less where e^z overflows (Exp)
    z = widen(np.clip(z, -big, big), act)
    K = z.shape[-1]
    a = act(z)
    J = act.jacobian(z)
    assert a.shape == z.shape and a.dtype == z.dtype and np.all(np.isfinite(a))
    assert J.shape == z.shape + (K,) and J.dtype == z.dtype and np.all(np.isfinite(J))
    g = data.draw(arrays(z.dtype, z.shape, elements=st.floats(-3, 3, width=32)))
    vjp, jvp = act.vjp(z, g), act.jvp(z, g)
    assert vjp.dtype == z.dtype and jvp.dtype == z.dtype
    J64, g64 = J.astype(np.float64), g.astype(np.float64)
    _close(vjp, np.einsum("...i,...ij->...j", g64, J64), z.dtype, K)
    _close(jvp, np.einsum("...ij,...j->...i", J64, g64), z.dtype, K)
    _close(act.jacobian_operator(z).dense(), J64, z.dtype)
    if isinstance(act, (jac.SimplexMapping, jac.LogSoftmax)):
        p = np.exp(a.astype(np.float64)) if isinstance(act, jac.LogSoftmax) else a.astype(np.float64)
        assert np.all(p >= 0)
        _close(p.sum(axis=-1), np.ones(z.shape[:-1]), z.dtype, K)
    if isinstance(act, jac.SimplexMapping):  # J = diag(g) − g gᵀ/Σg: rows sum to 0, symmetric
        _close(J64.sum(axis=-1), np.zeros(z.shape), z.dtype, K)
        _close(J64, np.swapaxes(J64, -1, -2), z.dtype)
    if isinstance(act, jac.ElementwiseActivation):
        d = act.derivative(z)
        assert d.dtype == z.dtype
        np.testing.assert_array_equal(np.einsum("...ii->...i", J), d)


@pytest.mark.parametrize("pair", PAIRS)
@FEW
@given(z=logits(), seed=st.integers(0, 2**32 - 1))
def test_every_method_is_finite_and_keeps_shape_and_dtype(pair, z, seed):
    head = jac.Head(jac.get_activation(pair.activation)(), jac.get_loss(pair.loss)())
    big = checks.inputs.extreme_magnitude(head, z.dtype)  # 1e4, or less where e^z overflows
    z = head_input_like(head, np.clip(z, -big, big), seed)
    y = head_targets(head, np.random.default_rng(seed), z.shape, z.dtype)
    assert np.isfinite(head.loss(z, y))
    for m in head_methods(head):
        value, grad = head.value_and_grad(z, y, method=m)
        assert np.asarray(value).dtype == z.dtype and np.isfinite(value), m
        assert grad.shape == z.shape and grad.dtype == z.dtype and np.all(np.isfinite(grad)), m


@pytest.mark.parametrize("pair", PAIRS)
@FEW
@given(z=logits(max_abs=3.0), seed=st.integers(0, 2**32 - 1))
def test_methods_agree(pair, z, seed):
    """Every method gives the same dE/dz, on well-conditioned inputs. The separate path of
    cross-entropy, KL and BCE divides by a and 1 − a, so where a nears 0 or 1 (a sparse
    mapping's entry just inside its support, an output rounded to 1 in float32) the
    rounding of a is amplified without bound and the methods differ by more than
    round-off of the result; the fused paths have no such loss (see the extreme-logit
    tests). Hence logits within ±3 and, for those losses, nonzero outputs in [1e-3, 1 − 1e-3]."""
    head = jac.Head(jac.get_activation(pair.activation)(), jac.get_loss(pair.loss)())
    z = head_input_like(head, z, seed)
    if not head.logits_loss and head.loss_fn.domain.issubset("unit_interval"):
        a = head.activation(z)
        inner = a[a != 0]
        assume(np.all((inner >= 1e-3) & (inner <= 1 - 1e-3)))
    y = head_targets(head, np.random.default_rng(seed), z.shape, z.dtype)
    methods = head_methods(head)
    grads = [head.grad(z, y, method=m).astype(np.float64) for m in methods]
    for g in grads[1:]:
        _close(g, grads[0], z.dtype, 10 * z.shape[-1])


@SETTINGS
@given(z=logits(), seed=st.integers(0, 2**32 - 1), smoothing=st.sampled_from([0.0, 0.1]))
def test_softmax_cross_entropy_fused_gradient_rows_sum_to_zero(z, seed, smoothing):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, z.shape[-1], size=z.shape[:-1])
    head = jac.Head(jac.Softmax(), jac.CrossEntropy(label_smoothing=smoothing, reduction="sum"))
    value, grad = head.value_and_grad(z, y)
    assert value >= 0 and np.isfinite(value)
    _close(grad.sum(axis=-1), np.zeros(z.shape[:-1]), z.dtype, z.shape[-1])
    assert np.all(np.abs(grad) <= 1 + 8 * _eps(z.dtype))
