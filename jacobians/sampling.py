"""Counter-based sampling and the built-in predictive distributions: the public path of
the bottom layer's ``jacobians.numerics.sampling``.

The uniforms are a function of (seed, global row, column) only, so any split of the rows
into chunks draws the same numbers for the same rows; a loss turns them into targets with
:meth:`jacobians.Loss.sample_targets`, whose default draws from the distribution of
:data:`PREDICTIVES` that :attr:`jacobians.Loss.predictive` names.
"""

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
