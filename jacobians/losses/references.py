"""The built-in losses' plain references and kinks (what the checks compare with).

Each built-in loss points at two functions of this module (see
:class:`~jacobians.Loss`):

* ``loop_reference(loss, a, y) -> (values, grads, denominator)``: torch's definition of
  the loss, one sample at a time in float64 (``a`` float64 ``(..., K)``, ``y`` as
  given):
  ``values`` per sample ``(N,)`` (per entry ``(N, K)`` for an elementwise loss), each
  row's gradient ``(N, K)``, and what ``'mean'`` divides by. It shares no code with the
  losses' own methods: an independent referee, used by :mod:`jacobians.testing` and the
  checks;
* ``kinks(loss, a, y) -> distance (..., K)``: each entry's distance, in ``a``, to the
  nearest point where the loss is not differentiable.

The functions are public for the loss modules; they are not part of the API.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..activations.references import (
    entmax15_distance,
    entmax15_probs,
    entmax_distance,
    entmax_probs,
    row_objects,
    sparsemax_distance,
    sparsemax_probs,
)
from ..numerics.validation import alpha_rows

# ----------------------------------------------------------------------------------------
# plain-loop references, one sample at a time, torch's definitions
# ----------------------------------------------------------------------------------------


def class_rows(a: np.ndarray, y, ignore_index=None):
    """``(is_index, per sample (index or None, target row or None, ignored))`` from
    index or probability targets."""
    y = np.asarray(y)
    K = a.shape[-1]
    if y.shape == a.shape[:-1] and y.dtype.kind in "iu":
        out = []
        for t in y.reshape(-1):
            t = int(t)
            if ignore_index is not None and t == ignore_index:
                out.append((t, None, True))
                continue
            if not 0 <= t < K:
                raise ValueError(f"y: class index {t} is out of range for K = {K}")
            row = np.zeros(K)
            row[t] = 1.0
            out.append((t, row, False))
        return True, out
    if y.shape == a.shape:
        return False, [
            (None, row, False) for row in y.astype(np.float64).reshape(-1, K)
        ]
    raise ValueError(
        f"y must be int indices of shape {a.shape[:-1]} or rows of shape {a.shape}; "
        f"got {y.shape} {y.dtype}"
    )


def _weights(loss, K: int) -> np.ndarray:
    w = getattr(loss, "weight", None)
    return np.ones(K) if w is None else np.asarray(w, dtype=np.float64)


def cross_entropy_rows(loss, a, y):
    """torch ``cross_entropy`` (on ``log a``): smoothing, class weights, ignore_index."""
    K = a.shape[-1]
    eps = float(loss.label_smoothing)
    w = _weights(loss, K)
    is_index, targets = class_rows(a, y, loss.ignore_index)
    values, grads, denom = [], [], 0.0
    for a_n, (t, row, ignored) in zip(a.reshape(-1, K), targets):
        if ignored:
            values.append(0.0)
            grads.append(np.zeros(K))
            continue
        log_a = np.log(a_n)
        if is_index:
            # (1 − ε) · nll term + ε/K · Σ_k w_k (−log a_k)
            # (aten cross_entropy_loss_label_smoothing)
            value = (1 - eps) * w[t] * -log_a[t] + eps / K * np.sum(w * -log_a)
            grad = np.zeros(K)
            grad -= eps / K * w / a_n
            grad[t] -= (1 - eps) * w[t] / a_n[t]
            denom += w[t]
        else:
            q = row * (1 - eps) + eps / K  # aten cross_entropy_loss_prob_target
            value = -np.sum(w * q * log_a)
            grad = -w * q / a_n
            denom += 1.0
        values.append(value)
        grads.append(grad)
    return np.array(values), np.array(grads), denom


def nll_rows(loss, a, y):
    """torch ``nll_loss`` on log-probabilities ``a``; probability rows give ``−Σ w y a``
    over N."""
    K = a.shape[-1]
    w = _weights(loss, K)
    is_index, targets = class_rows(a, y, loss.ignore_index)
    values, grads, denom = [], [], 0.0
    for a_n, (t, row, ignored) in zip(a.reshape(-1, K), targets):
        grad = np.zeros(K)
        if ignored:
            values.append(0.0)
        elif is_index:
            values.append(-w[t] * a_n[t])
            grad[t] = -w[t]
            denom += w[t]
        else:
            values.append(-np.sum(w * row * a_n))
            grad = -w * row
            denom += 1.0
        grads.append(grad)
    return np.array(values), np.array(grads), denom


def kl_rows(loss, a, y):
    """torch ``kl_div(log a, y)`` summed per sample: ``Σ_k y_k (log y_k − log a_k)``,
    0 log 0 = 0."""
    K = a.shape[-1]
    _, targets = class_rows(a, y)
    values, grads = [], []
    for a_n, (_, row, _) in zip(a.reshape(-1, K), targets):
        pos = row > 0
        values.append(np.sum(row[pos] * (np.log(row[pos]) - np.log(a_n[pos]))))
        grads.append(-row / a_n)
    return np.array(values), np.array(grads), float(len(targets))


def elementwise_rows(per_sample: Callable):
    """``rows(loss, a, y)`` of an elementwise loss from ``per_sample(loss, a_n, y_n) ->
    (values (K,), grad (K,))``; 'mean' divides by the number of entries."""

    def rows(loss, a, y):
        y = np.asarray(y, dtype=np.float64)
        if y.shape != a.shape:
            raise ValueError(f"y must have the shape of a, {a.shape}; got {y.shape}")
        K = a.shape[-1]
        pairs = [
            per_sample(loss, a_n, y_n)
            for a_n, y_n in zip(a.reshape(-1, K), y.reshape(-1, K))
        ]
        values = np.array([v for v, _ in pairs]).reshape(-1, K)
        grads = np.array([g for _, g in pairs]).reshape(-1, K)
        return values, grads, float(values.size)

    return rows


def _bce_sample(loss, a, y):
    """torch ``binary_cross_entropy`` (logs clamped at −100, gradient's a(1 − a) at 1e-12),
    ``pos_weight`` as in ``binary_cross_entropy_with_logits``, Keras smoothing
    ``y(1 − ε) + ε/2``."""
    eps = float(loss.label_smoothing)
    y = y * (1 - eps) + eps / 2
    pw = (
        np.ones_like(a)
        if loss.pos_weight is None
        else np.broadcast_to(np.asarray(loss.pos_weight, np.float64), a.shape)
    )
    with np.errstate(divide="ignore"):
        log_a = np.maximum(np.log(a), -100.0)
        log_1ma = np.maximum(np.log1p(-a), -100.0)
    value = -(pw * y * log_a + (1 - y) * log_1ma)
    # d/da of −(p y log a + (1 − y) log(1 − a)) = (−p y (1 − a) + (1 − y) a) / (a (1 − a))
    floor = float(np.float32(1e-12))  # torch: 1e-12f
    grad = (-pw * y * (1 - a) + (1 - y) * a) / np.maximum(a * (1 - a), floor)
    return value, grad


def _huber_sample(loss, a, y):
    d = float(loss.delta)
    x = a - y
    small = np.abs(x) <= d
    value = np.where(small, 0.5 * x**2, d * (np.abs(x) - 0.5 * d))
    grad = np.where(small, x, d * np.sign(x))
    return value, grad


bce_rows = elementwise_rows(_bce_sample)
mse_rows = elementwise_rows(lambda loss, a, y: ((a - y) ** 2, 2 * (a - y)))
mae_rows = elementwise_rows(lambda loss, a, y: (np.abs(a - y), np.sign(a - y)))
huber_rows = elementwise_rows(_huber_sample)


def _tsallis(p: np.ndarray, alpha: float) -> float:
    return (1.0 - np.sum(p**alpha)) / (alpha * (alpha - 1.0))


def fenchel_young_rows(probs: Callable):
    """Rows of a Fenchel–Young loss whose mapping of one row is ``probs(z_1d, α)``."""

    def rows(loss, z, y):
        K = z.shape[-1]
        _, targets = class_rows(z, y, loss.ignore_index)
        values, grads = [], []
        for loss_n, z_n, (_, row, ignored) in zip(
            row_objects(loss, z), z.reshape(-1, K), targets
        ):
            if ignored:
                values.append(0.0)
                grads.append(np.zeros(K))
                continue
            alpha = float(loss_n.alpha)
            p = probs(z_n, alpha)
            # ⟨z, p − y⟩ with Σp = 1, written around m = max z so that huge logits stay exact
            m = z_n.max()
            values.append(
                (z_n - m) @ (p - row)
                + m * (1.0 - row.sum())
                + _tsallis(p, alpha)
                - _tsallis(row, alpha)
            )
            grads.append(p - row)
        return (
            np.array(values),
            np.array(grads),
            float(sum(not ignored for *_, ignored in targets)),
        )

    return rows


sparsemax_loss_rows = fenchel_young_rows(lambda z, alpha: sparsemax_probs(z))
entmax15_loss_rows = fenchel_young_rows(lambda z, alpha: entmax15_probs(z))
entmax_loss_rows = fenchel_young_rows(entmax_probs)

# ----------------------------------------------------------------------------------------
# kinks, in the loss's input
# ----------------------------------------------------------------------------------------


def mae_kinks(loss, a, y):
    """``|a − y|`` is not differentiable at a = y."""
    return np.abs(a - y)


def huber_kinks(loss, a, y):
    """Huber's second derivative jumps at ``|a − y| = δ``."""
    return np.abs(np.abs(a - y) - loss.delta)


def _on_simplex(a):
    """Rows on the simplex, ``(..., 1)``: sparsemax (α-entmax at α = 2) is the identity
    there, and an activation with simplex outputs keeps a on it (zeros of sparsemax/entmax
    stay exactly 0), so those rows cross no kink of it."""
    return ((a.min(axis=-1) >= 0) & (np.abs(a.sum(axis=-1) - 1) <= 1e-5))[..., None]


def sparsemax_loss_kinks(loss, a, y=None):
    return np.where(_on_simplex(a), np.inf, sparsemax_distance(a))


def entmax15_loss_kinks(loss, a, y=None):
    return entmax15_distance(a)


def entmax_loss_kinks(loss, a, y=None):
    alpha = alpha_rows(loss.alpha, a)
    return np.where(
        _on_simplex(a) & (np.asarray(alpha) == 2), np.inf, entmax_distance(a, alpha)
    )
