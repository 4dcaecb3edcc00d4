"""What a head means as a likelihood for a Laplace posterior (laplace-torch's conventions).

The likelihood of a data set is the head's loss **summed** over the rows, whatever the head's
own reduction (the loss rebuilt with ``loss.with_reduction('sum')``): the curvature of a
Laplace posterior is that of ``−log p(D | θ)``, not of its mean.

* identity + MSE is the Gaussian ``N(f, σ²)`` with ``sigma_noise`` σ (a scalar, or a (K,)
  vector, one σ per output)::

      log p(D | θ) = −Σ_nk (f_nk − y_nk)² / (2 σ_k²) − N Σ_k log(σ_k √(2π))
      curvature    = GGN of the summed MSE / (2σ²) = Jᵀ diag(1/σ²) J

* every other head: ``log p(D | θ) = −(summed loss)``, its curvature the summed loss's; the
  noise must be 1 (laplace-torch refuses ``sigma_noise != 1`` for classification too). The
  loss's own constants stay as they are: GaussianNLL omits ``½ log 2π`` unless ``full=True``,
  PoissonNLL omits ``log y!`` unless ``full=True``, and a label-smoothed or class-weighted
  cross-entropy is not a normalised likelihood — the evidence then carries that offset.
"""

from __future__ import annotations

import numbers

import numpy as np

from ..activations import Identity, LogSoftmax, MeanVariance, Sigmoid, SimplexMapping, Softmax
from ..head import Head
from ..last_layer import Kron, linear_curvature
from ..losses import (
    BinaryCrossEntropy,
    CrossEntropy,
    FocalLoss,
    GaussianNLL,
    KLDivergence,
    MeanSquaredError,
    NLLLoss,
    PolyLoss,
)

__all__ = ["Likelihood", "check_positive"]

#: losses of class probabilities that make a softmax head a categorical likelihood
_CLASS_LOSSES = (CrossEntropy, NLLLoss, KLDivergence, FocalLoss, PolyLoss)


def check_positive(value, name: str, size: int | None = None, what: str = "P") -> float | np.ndarray:
    """``value`` as a float > 0 or a 1-D float64 array of positive finite entries (of length
    ``size`` when given); ``ValueError`` naming ``name`` otherwise. The array is a copy."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise ValueError(f"{name} must be a positive float or a 1-D array of positive floats; got {value!r}")
    if isinstance(value, numbers.Real) or (isinstance(value, np.ndarray) and value.ndim == 0):
        v = float(value)
        if not np.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be positive and finite; got {v!r}")
        return v
    try:
        arr = np.array(value, dtype=np.float64)
        if arr.ndim == 0:  # None, or an object that is not a real number
            raise TypeError
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive float or a 1-D array of positive floats; got {value!r}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a scalar or a 1-D array; got an array of shape {arr.shape}")
    if arr.shape[0] == 1 and size != 1:  # a length-1 vector is the scalar (as laplace-torch reads it)
        return check_positive(arr[0], name)
    if size is not None and arr.shape[0] != size:
        raise ValueError(f"{name} must have length {what} = {size}; got length {arr.shape[0]}")
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} must be positive and finite everywhere; entry {i} is {arr[i]!r}")
    return arr


class Likelihood:
    """A head read as a likelihood: its predictive family and its summed loss.

    Attributes
    ----------
    head : Head
        The user's head.
    summed : Head
        The same activation and loss with reduction ``'sum'``.
    family : {'gaussian', 'categorical', 'bernoulli', 'gaussian_nll', 'other'}
        ``'gaussian'``: identity + MSE; ``'categorical'``: softmax / log-softmax + a class
        loss; ``'bernoulli'``: sigmoid + BCE (multi-label); ``'gaussian_nll'``: identity or
        mean-variance + Gaussian NLL; ``'other'``: anything else (Monte-Carlo predictive).
    """

    def __init__(self, head: Head):
        if not isinstance(head, Head):
            raise TypeError(f"head must be a jacobians.Head; got {type(head).__name__}")
        self.head = head
        self.summed = Head(head.activation, head.loss_fn.with_reduction("sum"))
        act, loss = head.activation, head.loss_fn
        if isinstance(act, Identity) and isinstance(loss, MeanSquaredError):
            self.family = "gaussian"
        elif isinstance(act, (Softmax, LogSoftmax)) and isinstance(loss, _CLASS_LOSSES):
            self.family = "categorical"
        elif isinstance(act, Sigmoid) and isinstance(loss, BinaryCrossEntropy):
            self.family = "bernoulli"
        elif isinstance(act, (Identity, MeanVariance)) and isinstance(loss, GaussianNLL):
            self.family = "gaussian_nll"
        else:
            self.family = "other"

    @property
    def simplex(self) -> bool:
        """True when the activation's output is a probability vector (an NLL on it makes sense)."""
        return self.family == "categorical" or isinstance(self.head.activation, SimplexMapping)

    @property
    def temperature(self) -> float:
        """The softmax's temperature (1 for log-softmax): the probabilities are softmax(f / T)."""
        return float(getattr(self.head.activation, "temperature", 1.0))

    def check_sigma(self, sigma_noise, K: int | None = None):
        """``sigma_noise`` validated: a float > 0, or a (K,) vector for the Gaussian likelihood;
        exactly 1 for every other head."""
        sigma = check_positive(sigma_noise, "sigma_noise", K, what="K (the number of outputs)")
        if self.family != "gaussian" and not (np.ndim(sigma) == 0 and sigma == 1.0):
            raise ValueError(
                f"sigma_noise must be 1 for {self.head!r}: an observation noise applies only to identity + "
                f"MeanSquaredError (the Gaussian likelihood), as in laplace-torch; got {sigma_noise!r}"
            )
        return sigma

    # -- fit -----------------------------------------------------------------------------

    def curvature(self, X, z, y, *, kind: str, structure: str, bias: bool, max_bytes):
        """The curvature of the summed loss with unit noise: ``linear_curvature`` of the summed head
        (halved for the Gaussian: the summed MSE's GGN is 2 JᵀJ), as numpy (Dask computed)."""
        meaning = {"ggn": "ggn", "fisher": "fisher"}.get(kind) if isinstance(kind, str) else None
        if meaning is None:
            raise ValueError(f"kind must be 'ggn' or 'fisher'; got {kind!r}")
        try:
            H = linear_curvature(X, self.summed, z, y, kind=meaning, structure=structure, bias=bias,
                                 max_bytes=max_bytes)
        except ValueError as err:
            if kind == "fisher":
                raise ValueError(f"kind='fisher' does not apply to {self.head!r}: {err}") from err
            raise
        half = 0.5 if self.family == "gaussian" else 1.0
        if isinstance(H, Kron):
            return Kron(np.asarray(H.A) * half, np.asarray(H.B))
        return np.asarray(H) * half

    def statistic(self, z, y):
        """What the log-likelihood needs at the MAP: the (K,) residual sums of squares for the
        Gaussian, the summed loss (a float) otherwise."""
        if self.family == "gaussian":
            y = y if getattr(y, "ndim", None) is not None else np.asarray(y)
            r = z - (y[:, None] if y.ndim == 1 and z.shape[1] == 1 else y)
            return np.asarray((r * r).sum(axis=0), dtype=np.float64)
        return float(self.summed.loss(z, y))

    def log_likelihood(self, stat, n: int, sigma) -> float:
        """``log p(D | θ_MAP)`` from :meth:`statistic` for ``n`` rows and noise ``sigma``."""
        if self.family != "gaussian":
            return -float(stat)
        s2 = np.broadcast_to(np.asarray(sigma, dtype=np.float64) ** 2, stat.shape)
        return float(-(stat / (2 * s2)).sum() - n * (0.5 * np.log(2 * np.pi * s2)).sum())

    def scale(self, H, structure: str, sigma, K: int, D1: int):
        """The curvature with noise ``sigma``: ``H / σ²``, per output for a (K,) σ (rows and
        columns of output k times 1/σ_k: exact, the Gaussian's blocks are diagonal)."""
        if self.family != "gaussian" or (np.ndim(sigma) == 0 and sigma == 1.0):
            return H
        inv = np.broadcast_to(1.0 / np.asarray(sigma, dtype=np.float64) ** 2, (K,))
        if structure == "diag":
            return (H.reshape(K, D1) * inv[:, None].astype(H.dtype)).reshape(H.shape)
        if structure == "kron":
            r = np.sqrt(inv).astype(H.A.dtype)
            return Kron(H.A * r[:, None] * r[None, :], H.B)
        r = np.repeat(np.sqrt(inv), D1).astype(H.dtype)
        return H * r[:, None] * r[None, :]
