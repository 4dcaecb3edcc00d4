"""The scoped memo of the simplex maps (jacobians.numerics.memo): same bits, own arrays, no
state."""

import numpy as np
import pytest

from jacobians.numerics import entmax, memo, sparse

MAPS = [("sparsemax", ()), ("entmax15", ()), ("entmax", (1.75,)), ("entmax", (3.0,))]


@pytest.mark.parametrize("name,params", MAPS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_memo_gives_the_same_bits_and_arrays_of_their_own(name, params, dtype):
    z = np.random.default_rng(3).normal(scale=2.0, size=(6, 7)).astype(dtype)
    fn = getattr(entmax if name == "entmax" else sparse, name)
    plain = fn(z, *params)
    with memo.memo():
        first = fn(z, *params)
        first[...] = np.nan  # a caller scribbling on its result changes no later result
        again = fn(z, *params)
        other = fn(z[::-1].copy(), *params)
    np.testing.assert_array_equal(again, plain)
    assert again.dtype == plain.dtype
    np.testing.assert_array_equal(other, fn(z[::-1].copy(), *params))


def test_memo_keys_on_the_parameters_and_dtype():
    z = np.random.default_rng(4).normal(size=(3, 5))
    with memo.memo():
        a = entmax.entmax(z, 1.5)
        b = entmax.entmax(z, 2.5)
        c = entmax.entmax(z.astype(np.float32), 1.5)
        d = entmax.entmax(z, np.full((3, 1), 2.5))
    np.testing.assert_array_equal(a, entmax.entmax(z, 1.5))
    np.testing.assert_array_equal(b, entmax.entmax(z, 2.5))
    assert c.dtype == np.float32
    np.testing.assert_array_equal(c, entmax.entmax(z.astype(np.float32), 1.5))
    np.testing.assert_array_equal(d, b)


def test_memo_holds_nothing_outside_a_block():
    z = np.zeros((2, 4))
    with memo.memo():
        with memo.memo():
            sparse.sparsemax(z)
        assert (
            len(memo._STATE.table) == 1
        )  # the inner block shares the outer one's memo
    assert memo._STATE.table is None
    sparse.sparsemax(z)
    assert memo._STATE.table is None
