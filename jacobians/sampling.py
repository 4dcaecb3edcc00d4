"""Counter-based sampling and the built-in predictive distributions: the public path of
:mod:`jacobians.numerics.sampling` (see there)."""

from .numerics.sampling import (
    MC_BLOCK_ENTRIES,
    PREDICTIVES,
    Predictive,
    check_mc_samples,
    predictive_of,
    row_uniforms,
    seed_key,
    uniforms_for_rows,
)

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
