"""The names every kernel set defines: the contract between :mod:`jacobians._kernels` (the
selector) and its implementations (:mod:`.numpy_impl`, :mod:`.numba_impl`), which import
it from here and never the selector."""

from __future__ import annotations

__all__ = ["INTERFACE"]

#: the functions each kernel set (numpy_impl, numba_impl) defines, with one signature and meaning
INTERFACE = (
    "describe",
    "softmax",
    "log_softmax",
    "softmax_vjp",
    "simplex_vjp",
    "ce_index",
    "ce_coefficients",
    "sigmoid_bce_plain",
    "sigmoid_bce_weighted",
    "focal_index",
    "focal_coefficients",
    "binary_focal",
    "poly_index",
    "plackett_luce",
    "plackett_luce_hvp",
    "ranking_flaw",
    "poisson_log",
    "dense_diag_minus_rank_one",
    "dense_diagonal",
)
