"""The finite-difference referees against closed forms, in both dtypes and all methods.

Every expected value here is a textbook derivative (cos for sin, ``A + Aᵀ`` for a
quadratic form, the matrix of a linear map), never the toolkit's own output.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jacobians as jac
from jacobians.numerical import FD_METHODS, default_step

DTYPES = (np.float64, np.float32)

#: attainable accuracy (relative to the derivative's size) of each method per dtype:
#: central ~eps^(2/3), forward ~eps^(1/2), Richardson ~eps^(4/5), with a safety factor
ACCURACY = {
    (np.float64, "central"): 1e-8,
    (np.float64, "forward"): 1e-6,
    (np.float64, "richardson"): 1e-10,
    (np.float32, "central"): 2e-3,
    (np.float32, "forward"): 2e-2,
    (np.float32, "richardson"): 1e-3,
}


def _err(x, ref):
    return np.abs(np.asarray(x, dtype=np.float64) - ref).max() / np.abs(ref).max()


# -- numerical_jacobian --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", FD_METHODS)
def test_jacobian_of_sin_is_diag_cos(rng, dtype, method):
    z = rng.uniform(-3, 3, size=(7, 5)).astype(dtype)
    J = jac.numerical_jacobian(np.sin, z, method=method)
    expected = np.zeros((7, 5, 5))
    np.einsum("nkk->nk", expected)[...] = np.cos(z.astype(np.float64))
    assert J.shape == (7, 5, 5)
    assert J.dtype == dtype
    assert _err(J, expected) < ACCURACY[(dtype, method)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", FD_METHODS)
def test_jacobian_of_nonsymmetric_linear_map_is_its_matrix(rng, dtype, method):
    """``a = M z`` per row: J[n, i, j] = M[i, j] — the layout is row = output, column = input."""
    M = np.arange(1.0, 13.0).reshape(3, 4) * np.array([1, -1, 2, 0.5])  # 3 outputs, 4 inputs
    z = rng.normal(size=(2, 5, 4)).astype(dtype)
    J = jac.numerical_jacobian(lambda x: x @ M.T.astype(x.dtype), z, method=method)
    assert J.shape == (2, 5, 3, 4)
    assert J.dtype == dtype
    assert _err(J, np.broadcast_to(M, J.shape)) < ACCURACY[(dtype, method)]
    # the transposed layout is far off: the test can tell them apart
    assert not np.allclose(J[0, 0, :, :3], M[:, :3].T, atol=0.1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", FD_METHODS)
def test_jacobian_of_coupled_map(rng, dtype, method):
    """``a_i = z_i · Σ_j z_j²``: J = diag(s) + 2 z zᵀ, s = Σ z² (rows coupled, not diagonal)."""
    z = rng.uniform(-1, 1, size=(6, 3)).astype(dtype)
    J = jac.numerical_jacobian(lambda x: x * (x * x).sum(axis=-1, keepdims=True), z, method=method)
    z64 = z.astype(np.float64)
    s = (z64 * z64).sum(axis=-1)
    expected = 2 * np.einsum("ni,nj->nij", z64, z64)
    np.einsum("nkk->nk", expected)[...] += s[:, None]
    assert _err(J, expected) < ACCURACY[(dtype, method)]


@pytest.mark.parametrize("method", FD_METHODS)
def test_jacobian_single_sample_and_int_input(method):
    J = jac.numerical_jacobian(np.exp, np.array([0, 1, 2]), method=method)  # ints -> float64
    assert J.dtype == np.float64 and J.shape == (3, 3)
    np.testing.assert_allclose(J, np.diag(np.exp([0.0, 1.0, 2.0])), rtol=ACCURACY[(np.float64, method)])


@pytest.mark.parametrize(("method", "calls"), [("central", 2 * 6), ("forward", 6 + 1), ("richardson", 4 * 6)])
def test_jacobian_calls_f_on_whole_batches(rng, method, calls):
    """2K calls (K + 1 forward, 4K Richardson) on the whole batch: never N·K calls."""
    shapes = []

    def f(x):
        shapes.append(x.shape)
        return np.tanh(x)

    z = rng.normal(size=(50, 6))
    jac.numerical_jacobian(f, z, method=method)
    assert len(shapes) == calls
    assert set(shapes) == {(50, 6)}


def test_richardson_beats_central_at_a_coarse_step(rng):
    """At eps = 1e-2 central differences err by ~h²/6·f''', Richardson by O(h⁴)."""
    z = rng.uniform(-1, 1, size=(4, 3))
    expected = np.zeros((4, 3, 3))
    np.einsum("nkk->nk", expected)[...] = np.exp(z)
    central = _err(jac.numerical_jacobian(np.exp, z, eps=1e-2, method="central"), expected)
    richardson = _err(jac.numerical_jacobian(np.exp, z, eps=1e-2, method="richardson"), expected)
    assert 1e-6 < central < 1e-4
    assert richardson < central / 100


def test_jacobian_of_softmax_matches_closed_form(rng):
    """An activation as ``f``: J = diag(s) − s sᵀ, written out here from s alone."""
    z = rng.normal(size=(3, 4))
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    s = e / e.sum(axis=-1, keepdims=True)
    expected = -np.einsum("ni,nj->nij", s, s)
    np.einsum("nkk->nk", expected)[...] += s
    np.testing.assert_allclose(jac.numerical_jacobian(jac.Softmax(), z), expected, atol=1e-10)


def test_jacobian_does_not_modify_a_readonly_input(rng):
    z = rng.normal(size=(3, 4))
    z.flags.writeable = False
    before = z.copy()
    jac.numerical_jacobian(np.sin, z)
    np.testing.assert_array_equal(z, before)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 4),
    k=st.integers(1, 5),
    m=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from(DTYPES),
)
def test_jacobian_recovers_any_affine_map(n, k, m, seed, dtype):
    """For ``a = M z + b`` central differences are exact up to round-off, at any shape."""
    r = np.random.default_rng(seed)
    M, b = r.normal(size=(m, k)), r.normal(size=m)
    z = r.normal(size=(n, k)).astype(dtype)
    J = jac.numerical_jacobian(lambda x: x @ M.T.astype(x.dtype) + b.astype(x.dtype), z)
    assert J.shape == (n, m, k) and J.dtype == dtype
    tol = 1e-8 if dtype == np.float64 else 2e-3
    np.testing.assert_allclose(J, np.broadcast_to(M, J.shape), atol=tol * max(1.0, np.abs(M).max()))


# -- numerical_grad ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", FD_METHODS)
def test_grad_of_quadratic_form(rng, dtype, method):
    """∇ zᵀ A z = (A + Aᵀ) z for a non-symmetric A."""
    A = rng.normal(size=(6, 6))
    z = rng.normal(size=6).astype(dtype)
    g = jac.numerical_grad(lambda x: x.astype(np.float64) @ A @ x.astype(np.float64), z, method=method)
    assert g.shape == (6,) and g.dtype == dtype
    assert _err(g, (A + A.T) @ z.astype(np.float64)) < ACCURACY[(dtype, method)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", FD_METHODS)
def test_grad_of_sum_of_sines_batched(rng, dtype, method):
    z = rng.uniform(-3, 3, size=(2, 3, 4)).astype(dtype)
    g = jac.numerical_grad(lambda x: np.sin(x).sum(), z, method=method)
    assert g.shape == z.shape and g.dtype == dtype
    assert _err(g, np.cos(z.astype(np.float64))) < ACCURACY[(dtype, method)]


def test_grad_of_logsumexp_is_softmax(rng):
    """A function that couples every entry: ∇ Σ_n lse(z_n) = softmax(z) row by row."""
    z = rng.normal(size=(3, 5))
    g = jac.numerical_grad(lambda x: np.log(np.exp(x).sum(axis=-1)).sum(), z)
    e = np.exp(z)
    np.testing.assert_allclose(g, e / e.sum(axis=-1, keepdims=True), atol=1e-9)


def test_grad_of_scalar_input():
    g = jac.numerical_grad(lambda x: x**3, np.float64(2.0))
    assert g.shape == ()
    assert abs(float(g) - 12.0) < 1e-7


@pytest.mark.parametrize(("method", "calls"), [("central", 2 * 12), ("forward", 12 + 1), ("richardson", 4 * 12)])
def test_grad_call_count(method, calls):
    count = [0]

    def fun(x):
        count[0] += 1
        return float((x**2).sum())

    jac.numerical_grad(fun, np.ones((3, 4)), method=method)
    assert count[0] == calls


# -- steps and errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_default_step_balances_truncation_and_round_off(dtype):
    eps = np.finfo(dtype).eps
    assert default_step(dtype, "central") == pytest.approx(eps ** (1 / 3))
    assert default_step(dtype, "forward") == pytest.approx(eps ** (1 / 2))
    assert default_step(dtype, "richardson") == pytest.approx(eps ** (1 / 5))


@pytest.mark.parametrize("fn", [jac.numerical_jacobian, jac.numerical_grad])
def test_bad_method_is_a_value_error_naming_it(fn):
    with pytest.raises(ValueError, match=r"method must be one of .*'backward'"):
        fn(np.sin if fn is jac.numerical_jacobian else np.sum, np.ones((2, 3)), method="backward")


@pytest.mark.parametrize("fn", [jac.numerical_jacobian, jac.numerical_grad])
@pytest.mark.parametrize("eps", [0.0, -1e-3, float("inf"), float("nan")])
def test_bad_eps_value(fn, eps):
    f = np.sin if fn is jac.numerical_jacobian else np.sum
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        fn(f, np.ones((2, 3)), eps=eps)


@pytest.mark.parametrize("fn", [jac.numerical_jacobian, jac.numerical_grad])
@pytest.mark.parametrize("eps", [True, "1e-3", [1e-3]])
def test_bad_eps_type(fn, eps):
    f = np.sin if fn is jac.numerical_jacobian else np.sum
    with pytest.raises(TypeError, match="eps must be a positive real number"):
        fn(f, np.ones((2, 3)), eps=eps)


def test_numpy_scalar_eps_is_accepted():
    J = jac.numerical_jacobian(np.sin, np.zeros((1, 2)), eps=np.float32(1e-4))
    np.testing.assert_allclose(J[0], np.eye(2), atol=1e-7)


def test_f_changing_the_batch_shape_is_an_error():
    with pytest.raises(ValueError, match="same batch axes"):
        jac.numerical_jacobian(lambda x: x.sum(axis=0), np.ones((3, 2)))


def test_non_scalar_fun_is_an_error():
    with pytest.raises(ValueError, match="fun must return a scalar"):
        jac.numerical_grad(lambda x: x, np.ones(3))


def test_non_numeric_input_is_a_type_error():
    with pytest.raises(TypeError, match="z must be a real numeric array"):
        jac.numerical_jacobian(np.sin, np.array(["a", "b"]))


# -- stack=True: every perturbed copy in one call ------------------------------------------------


def _loop_jacobian(f, z, eps, method):
    """The plain reference: one sample, one coordinate, one call of f at a time."""
    flat = z.reshape(-1, z.shape[-1])
    out = []
    for row in flat:
        cols = []
        for j in range(len(row)):
            def at(step, row=row, j=j):
                x = row.copy()
                x[j] += step
                return np.asarray(f(x[None]))[0], x[j] - row[j]

            h = eps * max(1.0, abs(row[j]))
            if method == "forward":
                (fp, hp), f0 = at(h), np.asarray(f(row[None]))[0]
                cols.append((fp - f0) / hp)
                continue
            (fp, hp), (fm, hm) = at(h), at(-h)
            col = (fp - fm) / (hp - hm)
            if method == "richardson":
                (fp2, hp2), (fm2, hm2) = at(h / 2), at(-h / 2)
                fine = (fp2 - fm2) / (hp2 - hm2)
                col = fine + (fine - col) / 3
            cols.append(col)
        out.append(np.stack(cols, axis=-1))
    return np.array(out).reshape(z.shape[:-1] + out[0].shape)


class _Skewed(jac.Activation):
    """A user's non-symmetric map: ``a_i = tanh(z_i) · z_0 + z_{i+1}²`` (cyclic)."""

    def forward(self, z):
        return np.tanh(z) * z[..., :1] + np.roll(z, -1, axis=-1) ** 2


@pytest.mark.parametrize("method", FD_METHODS)
@pytest.mark.parametrize("act", [_Skewed(), jac.Entmax(alpha=1.7), jac.Entmax(alpha=2.5, temperature=0.5),
                                 jac.Softmax()], ids=["skewed", "entmax1.7", "entmax2.5", "softmax"])
@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 4), (7,)])
def test_stacked_equals_one_at_a_time(rng, act, method, shape):
    z = rng.normal(size=shape)
    eps = default_step(np.float64, method)
    stacked = jac.numerical_jacobian(act, z, method=method, stack=True)
    columns = jac.numerical_jacobian(act, z, method=method)
    loop = _loop_jacobian(act, z, eps, method)
    assert stacked.shape == columns.shape == loop.shape == shape + shape[-1:]
    # the same points and steps: the column-at-a-time result to the bit, the plain loop to
    # round-off of the function values over the step
    np.testing.assert_array_equal(stacked, columns)
    scale = np.abs(loop).max()
    assert np.abs(stacked - loop).max() <= 1e-12 / eps * max(scale, 1.0)


@pytest.mark.parametrize("method", FD_METHODS)
def test_stacked_calls_f_once_on_all_copies(rng, method):
    shapes = []

    def f(x):
        shapes.append(x.shape)
        return np.tanh(x)

    z = rng.normal(size=(50, 6))
    J = jac.numerical_jacobian(f, z, method=method, stack=True)
    expected = {"central": [(12, 50, 6)], "forward": [(50, 6), (6, 50, 6)], "richardson": [(24, 50, 6)]}[method]
    assert shapes == expected
    np.testing.assert_allclose(J, jac.numerical_jacobian(np.tanh, z, method=method), rtol=0, atol=0)


def test_stacked_keeps_dtype_and_input(rng):
    z = rng.normal(size=(3, 4)).astype(np.float32)
    z.flags.writeable = False
    before = z.copy()
    J = jac.numerical_jacobian(jac.Sigmoid(), z, stack=True)
    assert J.dtype == np.float32
    np.testing.assert_array_equal(z, before)


def test_stacked_f_that_drops_the_stack_axis_is_an_error(rng):
    z = rng.normal(size=(3, 4))
    with pytest.raises(ValueError, match="stack=True"):
        jac.numerical_jacobian(lambda x: x.sum(axis=0), z, stack=True)
    with pytest.raises(TypeError, match="stack"):
        jac.numerical_jacobian(np.tanh, z, stack="yes")
