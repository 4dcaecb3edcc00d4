"""The operators' algebra against the same operations on explicit dense blocks."""

from __future__ import annotations

import numpy as np
import pytest

from jacobians import operators as O


@pytest.mark.parametrize("batch", [(2, 3), (5,), (0,)])
def test_rank_zero_low_rank_builds_and_takes_rows(batch, rng):
    """``diag(d) − U Vᵀ`` with r = 0 columns (a diagonal's low-rank form) is ``diag(d)``:
    its dense blocks and its row blocks (``reshape(-1, K, 0)`` cannot infer -1)."""
    K = 4
    d = rng.normal(size=batch + (K,))
    empty = np.zeros(batch + (K, 0))
    for op in (O.DiagonalPlusLowRank(d, empty, empty), O.as_low_rank(O.DiagonalJacobian(d))):
        assert op.rank == 0
        expected = np.eye(K) * d[..., None, :]
        np.testing.assert_array_equal(op.dense(), expected)
        np.testing.assert_array_equal(op[0:1].dense(), expected.reshape(-1, K, K)[0:1])
