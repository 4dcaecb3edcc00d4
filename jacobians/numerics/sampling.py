"""Counter-based sampling: uniforms that are a function of (seed, row, column) only, and the
built-in predictive distributions a loss draws its targets from.

The Monte-Carlo Fisher draws targets ``ŷ`` from the model's own predictive distribution
(:attr:`jacobians.Loss.predictive`). The uniforms behind the draws come from SplitMix64 of a
Weyl sequence indexed by the global row and column, so any split of the rows into chunks —
one chunk, Dask blocks along any batch axes — draws the same numbers for the same rows.

A loss turns uniforms into targets with :meth:`jacobians.Loss.sample_targets`; the default
reads :data:`PREDICTIVES`, and a loss with a predictive of its own writes
``sample_targets`` and ``predictive_uniforms`` in its own class.
"""

from __future__ import annotations

import numbers
from typing import Callable, NamedTuple

import numpy as np

__all__ = [
    "PREDICTIVES",
    "Predictive",
    "seed_key",
    "row_uniforms",
    "uniforms_for_rows",
    "check_mc_samples",
    "MC_BLOCK_ENTRIES",
    "predictive_of",
]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
#: the Monte-Carlo columns are computed for blocks of rows of about this many entries (N·M·K)
MC_BLOCK_ENTRIES = 1 << 21


def seed_key(seed) -> int:
    """The integer key of ``seed`` (a non-negative int, a numpy Generator, or None: fresh)."""
    if seed is None:
        return int(np.random.default_rng().integers(2**63))
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(2**63))
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(f"seed must be a non-negative int, a numpy.random.Generator or None; got {seed!r}")
    return int(seed) % 2**64


def check_mc_samples(mc_samples) -> int:
    """``mc_samples`` as an int >= 1 (``ValueError`` otherwise)."""
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, (int, np.integer)) or mc_samples < 1:
        raise ValueError(f"mc_samples must be an int >= 1; got {mc_samples!r}")
    return int(mc_samples)


def row_uniforms(key: int, row_start: int, n_rows: int, per_row: int) -> np.ndarray:
    """Uniforms in [0, 1), shape ``(n_rows, per_row)``, for the global rows ``row_start`` ...
    (see :func:`uniforms_for_rows`)."""
    return uniforms_for_rows(key, np.arange(row_start, row_start + n_rows), per_row)


def uniforms_for_rows(key: int, row_ids, per_row: int) -> np.ndarray:
    """Uniforms in [0, 1), shape ``(len(row_ids), per_row)``, a function of (key, global row,
    column) only: SplitMix64 of a Weyl sequence. Any split of the rows into chunks — one
    chunk, Dask blocks along any batch axes — draws the same numbers for the same rows, so
    sampling is reproducible from the seed whatever the chunking."""
    rows = np.asarray(row_ids, dtype=np.uint64).reshape(-1)
    idx = (rows[:, None] * np.uint64(per_row) + np.arange(per_row, dtype=np.uint64)).reshape(-1)
    x = idx * _GOLDEN + np.uint64(key % 2**64)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return ((x >> np.uint64(11)).astype(np.float64) * 2.0**-53).reshape(rows.size, per_row)


def _categorical(a2: np.ndarray, u: np.ndarray, log: bool) -> np.ndarray:
    p = np.exp(a2) if log else a2
    K = a2.shape[-1]
    cdf = np.cumsum(p, axis=-1)
    # the first k with cdf_k >= u·Σp, for u in (0, 1]: a class of probability 0 is never drawn
    k = (cdf < (1 - u[:, :1]) * cdf[:, -1:]).sum(axis=-1)
    return np.minimum(k, K - 1)


def _bernoulli(a2: np.ndarray, u: np.ndarray) -> np.ndarray:
    return (u[:, : a2.shape[-1]] < a2).astype(a2.dtype)


def _gaussian(a2: np.ndarray, u: np.ndarray) -> np.ndarray:
    # Box–Muller: variance ½ per entry
    K = a2.shape[-1]
    u1, u2 = 1 - u[:, :K], u[:, K : 2 * K]
    noise = np.sqrt(-np.log(u1)) * np.cos(2 * np.pi * u2)  # N(0, 1/2): sqrt(-2 log u)/sqrt(2)
    return a2 + noise.astype(a2.dtype)


class Predictive(NamedTuple):
    """A built-in predictive distribution: what it is, how many uniforms a row of K entries
    takes, and ``draw(a2, u)`` → targets for the rows ``a2`` (N, K) from uniforms ``u``
    (N, per_row): class indices (N,) or an array of a2's shape."""

    description: str
    per_row: Callable[[int], int]
    draw: Callable[[np.ndarray, np.ndarray], np.ndarray]
    indices: bool


#: what ``Loss.predictive`` may name for the default ``Loss.sample_targets``
PREDICTIVES: dict[str, Predictive] = {
    "categorical": Predictive(
        "class indices drawn from the probabilities a", lambda K: 1, lambda a2, u: _categorical(a2, u, False), True
    ),
    "categorical_log": Predictive(
        "class indices drawn from the probabilities exp(a)", lambda K: 1, lambda a2, u: _categorical(a2, u, True), True
    ),
    "bernoulli": Predictive(
        "targets of a's shape, each 1 with probability a (independently)", lambda K: K, _bernoulli, False
    ),
    "gaussian": Predictive(
        "targets a + N(0, ½) (the distribution whose Fisher is the Hessian of (a − y)²)", lambda K: 2 * K, _gaussian,
        False,
    ),
}


def predictive_of(loss) -> Predictive:
    """The predictive distribution ``loss.predictive`` names (or is): ``ValueError`` for a
    loss that is no negative log-likelihood (None) or an unknown name."""
    kind = getattr(loss, "predictive", None)
    if isinstance(kind, Predictive):
        return kind
    if kind is None:
        raise ValueError(
            f"{type(loss).__name__} is no negative log-likelihood: it declares no predictive distribution "
            "(Loss.predictive), so there is no Fisher to sample or take the expectation of; use kind='empirical' "
            "or the GGN"
        )
    if kind not in PREDICTIVES:
        raise ValueError(
            f"{type(loss).__name__}.predictive must be one of {sorted(PREDICTIVES)} or a "
            f"jacobians.sampling.Predictive; got {kind!r}"
        )
    return PREDICTIVES[kind]
