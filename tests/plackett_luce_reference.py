"""A long-double reference of the Plackett–Luce loss (Identity + PlackettLuce's fused rule), for
tests/test_edges.py's table of references (every fused rule has one) and
tests/test_plackett_luce.py."""

from __future__ import annotations

import numpy as np


def plackett_luce_longdouble(act, loss, z, y):
    """``(values, scale, grads, gscale, denominator)`` in long double, step by step as the
    softmax family's reference: each step's ``(m − x_π) + log1p(Σ_{k≠top} e^{x_k − m})`` over the
    candidates remaining, gradient ``s ⊙ [k ≠ π] − e_π Σ_{j≠π} s_j``; the scales add each step's
    terms and the rounding of ``x − m`` (a relative eps of every ``s_k (m − x_k)``)."""
    LD = np.longdouble
    M = z.shape[-1]
    z2 = np.asarray(z).astype(LD).reshape(-1, M)
    y2 = np.asarray(y).reshape(z2.shape[0], -1)
    values, scale = np.zeros(z2.shape[0], LD), np.zeros(z2.shape[0], LD)
    grads, gscale = np.zeros_like(z2), np.zeros_like(z2)
    for n in range(z2.shape[0]):
        left = np.ones(M, bool)
        for c in y2[n]:
            if c < 0:
                break
            x = np.where(left, z2[n], -np.inf)
            top = int(np.argmax(x))
            m = x[top]
            e = np.where(left, np.exp(np.where(left, x - m, 0)), 0)
            rest = np.where(np.arange(M) == top, 0, e).sum()  # (not e.sum() − 1: it would cancel)
            term = (m - z2[n, c]) + np.log1p(rest)
            values[n] += term
            scale[n] += term
            s = e / (1 + rest)
            others = s.sum() - s[c] if c != top else rest / (1 + rest)
            g = s.copy()
            g[c] = -others
            grads[n] += g
            gap = s * np.where(left, m - x, 0)
            gscale[n] += s + np.eye(M, dtype=LD)[c] * (others + gap.sum()) + gap
            left[c] = False
    shape = np.shape(z)
    return (values.reshape(shape[:-1]), scale.reshape(shape[:-1]), grads.reshape(shape), gscale.reshape(shape),
            LD(z2.shape[0]))
