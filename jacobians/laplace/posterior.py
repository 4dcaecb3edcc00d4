"""``LastLayerLaplace``: a Laplace posterior on a linear last layer, for any head.

θ = vec([W | b]) in C order: row k of the (K, D+1) matrix holds class k's D weights, then its
bias (P = K·(D+1); K·D without a bias). laplace-torch orders its last layer as
``[W.ravel(), b]``: the same numbers, permuted.
"""

from __future__ import annotations

import numpy as np

from ..backend import backend_of
from ..last_layer import STRUCTURES, check_max_bytes
from . import evidence, links
from .layer import check_weights
from .likelihood import Likelihood, check_positive
from .structures import build

__all__ = ["LastLayerLaplace"]

#: laplace-torch's default grid of prior precisions for ``method='gridsearch'``
DEFAULT_GRID = np.logspace(-4, 4, 100)


class LastLayerLaplace:
    """Laplace approximation ``N(θ_MAP, (H + P_prior)⁻¹)`` of a linear last layer ``z = φ Wᵀ + b``.

    Parameters
    ----------
    head : Head
        The final activation and loss. Its loss is **summed** over the rows whatever its
        reduction (the likelihood of the data set, as laplace-torch). identity +
        ``MeanSquaredError`` is the Gaussian ``N(f, σ²)``; any other head's log-likelihood is
        minus its summed loss.
    structure : {'full', 'kron', 'diag'}
        The curvature H: dense (P, P); one Kronecker product ``A ⊗ B`` over the augmented
        ``[W | b]`` (:class:`jacobians.Kron`, ``A = Σ_n B_n``, ``B`` = mean ``φ̃φ̃ᵀ``) with the
        prior added exactly in its eigenbasis (laplace-torch's ``KronLaplace`` with its default
        ``damping=False`` does the same, but keeps W and b as two separate Kronecker blocks);
        or its diagonal (P,).
    kind : {'ggn', 'fisher'}
        The generalised Gauss-Newton matrix or the exact Fisher (heads with a predictive only).
    prior_precision : float or array_like (P,), default 1.0
        δ of the prior ``N(0, diag(δ)⁻¹)`` on all of θ, the biases included (as laplace-torch).
    sigma_noise : float or array_like (K,), default 1.0
        The Gaussian likelihood's σ (identity + MSE only; must be 1 for every other head).
    bias : bool, default True
        Whether the layer has a bias ``b``.
    max_bytes : int, optional
        Budget of the row blocks' intermediates (default 256 MiB).

    Attributes
    ----------
    mean : ndarray (P,)
        θ_MAP (this and the attributes below are set by :meth:`fit`).
    H : ndarray (P, P), ndarray (P,) or Kron
        The curvature of ``−log p(D | θ)`` at the MAP (σ included).
    log_likelihood : float
        ``log p(D | θ_MAP)``.
    n_data, n_outputs, n_params : int
        N, K, P.

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(40, 3)), rng.integers(0, 4, size=40)
    >>> W, b = rng.normal(size=(4, 3)), np.zeros(4)
    >>> la = jac.LastLayerLaplace(jac.Head(jac.Softmax(), jac.CrossEntropy())).fit(X, W, b, y)
    >>> la.n_params, la.predictive(X[:2]).shape
    (16, (2, 4))
    """

    def __init__(self, head, *, structure: str = "full", kind: str = "ggn", prior_precision=1.0,
                 sigma_noise=1.0, bias: bool = True, max_bytes: int | None = None):
        self._lik = Likelihood(head)
        if not isinstance(structure, str) or structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}; got {structure!r}")
        if kind not in ("ggn", "fisher"):
            raise ValueError(f"kind must be 'ggn' or 'fisher'; got {kind!r}")
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"bias must be a bool; got {bias!r}")
        self._budget = check_max_bytes(max_bytes)
        self.head, self.structure, self.kind, self.bias = head, structure, kind, bool(bias)
        self.max_bytes = max_bytes
        self._fitted = False
        self._prior = self._check_prior(prior_precision)
        self._sigma = self._lik.check_sigma(sigma_noise)
        self._post = None

    def __repr__(self) -> str:
        return (f"LastLayerLaplace({self.head!r}, structure={self.structure!r}, kind={self.kind!r}, "
                f"bias={self.bias}, fitted={self._fitted})")

    # -- state ------------------------------------------------------------------------------

    def _need_fit(self, what: str) -> None:
        if not self._fitted:
            raise RuntimeError(f"LastLayerLaplace.{what} needs a fitted posterior: call fit(features, W, b, y) first")

    def _check_prior(self, value):
        size = self.n_params if self._fitted else None
        prior = check_positive(value, "prior_precision", size)
        if np.ndim(prior) and self.structure == "kron":
            raise ValueError("structure='kron' takes a scalar prior_precision only (the prior is added exactly "
                             f"in the Kronecker eigenbasis); got a vector of length {prior.shape[0]}")
        return prior

    @property
    def prior_precision(self):
        """δ: a float, or a (P,) array over θ = vec([W | b]) (a copy)."""
        return self._prior if np.ndim(self._prior) == 0 else self._prior.copy()

    @prior_precision.setter
    def prior_precision(self, value) -> None:
        self._prior = self._check_prior(value)
        self._post = None

    @property
    def sigma_noise(self):
        """σ of the Gaussian likelihood: a float, or a (K,) array (a copy)."""
        return self._sigma if np.ndim(self._sigma) == 0 else self._sigma.copy()

    @sigma_noise.setter
    def sigma_noise(self, value) -> None:
        self._sigma = self._lik.check_sigma(value, self.n_outputs if self._fitted else None)
        self._post = None

    @property
    def H(self):
        """The curvature of ``−log p(D | θ)`` at the MAP, the noise σ included."""
        self._need_fit("H")
        return self._scaled(self._sigma)

    @property
    def log_likelihood(self) -> float:
        """``log p(D | θ_MAP)`` at the current σ."""
        self._need_fit("log_likelihood")
        return self._lik.log_likelihood(self._stat, self.n_data, self._sigma)

    def _scaled(self, sigma):
        return self._lik.scale(self._H_unit, self.structure, sigma, self.n_outputs, self._D1)

    def _posterior(self, prior=None, sigma=None):
        if prior is None and sigma is None:
            if self._post is None:
                self._post = build(self.structure, self._scaled(self._sigma), self._prior, self.n_outputs, self._D1)
            return self._post
        prior = self._prior if prior is None else prior
        sigma = self._sigma if sigma is None else sigma
        return build(self.structure, self._scaled(sigma), prior, self.n_outputs, self._D1)

    @property
    def posterior_precision(self):
        """``H + diag(δ)``: (P, P) for 'full', (P,) for 'diag', a
        :class:`~jacobians.laplace.structures.KronPrecision` (eigen form) for 'kron'."""
        self._need_fit("posterior_precision")
        return self._posterior().precision

    @property
    def posterior_covariance(self):
        """``(H + diag(δ))⁻¹``: (P, P) for 'full' and 'kron' (dense, P² numbers), (P,) for 'diag'."""
        self._need_fit("posterior_covariance")
        post = self._posterior()
        return post.covariance_diagonal() if self.structure == "diag" else post.covariance()

    # -- fit --------------------------------------------------------------------------------

    def fit(self, features, W, b, y):
        """Accumulate the curvature of the summed loss at the MAP ``(W, b)``; returns ``self``.

        Parameters
        ----------
        features : array_like or dask array, shape (N, D)
            The layer's inputs φ (a Dask array is reduced chunk by chunk).
        W : array_like, shape (K, D)
        b : array_like (K,), or None when ``bias=False``
        y : array_like
            Targets in the loss's form.

        Examples
        --------
        >>> import numpy as np
        >>> import jacobians as jac
        >>> rng = np.random.default_rng(0)
        >>> X, W = rng.normal(size=(30, 2)), rng.normal(size=(1, 2))
        >>> y = X @ W.T + 0.1 * rng.normal(size=(30, 1))
        >>> la = jac.LastLayerLaplace(jac.Head(jac.Identity(), jac.MeanSquaredError()), sigma_noise=0.1)
        >>> la.fit(X, W, np.zeros(1), y).mean.shape
        (3,)
        """
        dask = backend_of(features) is not None
        X = features if dask else np.asarray(features)
        if X.ndim != 2:
            raise ValueError(f"features must be 2-D (N, D); got shape {X.shape}")
        if not dask and X.dtype.kind not in "fiub":
            raise TypeError(f"features must be a real numeric array; got dtype {X.dtype}")
        W, b = check_weights(W, b, self.bias, D=X.shape[1])
        K, D = W.shape
        dtype = np.result_type(X.dtype, W.dtype, np.float32)
        W = W.astype(dtype, copy=False)
        z = X @ W.T + (b.astype(dtype, copy=False) if self.bias else 0)
        sigma = self._lik.check_sigma(self._sigma, K)
        self._D1 = D + self.bias
        P = K * self._D1
        prior = check_positive(self._prior, "prior_precision", P)
        H = self._lik.curvature(X, z, y, kind=self.kind, structure=self.structure, bias=self.bias,
                                max_bytes=self.max_bytes)
        stat = self._lik.statistic(z, y)
        self._H_unit = H.ravel() if self.structure == "diag" else H
        self._stat = np.asarray(stat) if self._lik.family == "gaussian" else stat
        Wb = np.concatenate([W, b.astype(dtype, copy=False)[:, None]], axis=1) if self.bias else W
        self.mean = Wb.ravel().copy()
        self.n_data, self.n_outputs, self.n_params = int(X.shape[0]), K, P
        self._W, self._b = W.copy(), (b.astype(dtype, copy=True) if self.bias else None)
        self._sigma, self._prior = sigma, prior
        self._post = None
        self._fitted = True
        return self

    # -- predictions ------------------------------------------------------------------------

    def _features(self, features, what):
        X = np.asarray(features)
        if X.ndim != 2 or X.shape[1] != self._W.shape[1]:
            raise ValueError(f"{what}: features must have shape (M, D) with D = {self._W.shape[1]}; got shape {X.shape}")
        X = X.astype(np.result_type(X.dtype, self._W.dtype), copy=False)
        return X, (np.concatenate([X, np.ones((X.shape[0], 1), X.dtype)], axis=1) if self.bias else X)

    def logits(self, features):
        """The logits' Gaussian under the posterior (the GLM linearisation, exact for a linear layer).

        ``f_mu = X Wᵀ + b`` at the MAP; ``f_var[m] = J_m Σ J_mᵀ`` with ``J_m = I_K ⊗ φ̃_mᵀ``, i.e.
        ``f_var[m, k, l] = φ̃_mᵀ Σ_{kl} φ̃_m`` (Σ's (k, l) block), without observation noise.

        Returns
        -------
        f_mu : ndarray (M, K)
        f_var : ndarray (M, K, K)

        Examples
        --------
        >>> import numpy as np
        >>> import jacobians as jac
        >>> rng = np.random.default_rng(0)
        >>> X, y = rng.normal(size=(40, 3)), rng.integers(0, 4, size=40)
        >>> la = jac.LastLayerLaplace(jac.Head(jac.Softmax(), jac.CrossEntropy()), structure="diag")
        >>> f_mu, f_var = la.fit(X, rng.normal(size=(4, 3)), np.zeros(4), y).logits(X[:5])
        >>> f_mu.shape, f_var.shape
        ((5, 4), (5, 4, 4))
        """
        self._need_fit("logits")
        return self._logits(features, "logits", diagonal=False)

    def _logits(self, features, what, diagonal):
        X, Phi = self._features(features, what)
        f_mu = X @ self._W.T + (self._b if self.bias else 0)
        return f_mu, self._posterior().f_var(Phi, self._budget, diagonal=diagonal)

    def predictive(self, features, link: str = "probit", mc_samples: int = 100, seed=None):
        """The posterior predictive at ``features`` (M, D).

        * softmax heads (softmax / log-softmax + a class loss): probabilities (M, K); probit
          ``softmax(κ ⊙ f_mu)``, κ = (1 + π/8 · diag f_var)^(-1/2); ``'bridge'`` laplace-torch's
          Laplace bridge; ``'mc'`` the mean softmax over ``mc_samples`` logit draws;
        * sigmoid + BCE: independent probabilities (M, K) (``sigmoid(κ f_mu)``, or ``'mc'``);
        * identity + MSE: ``(mean, var)``, ``(f_mu, diag f_var + σ²)`` (exact, any link; laplace-torch
          returns ``f_var`` without σ², the observation noise is added here);
        * identity / mean-variance + Gaussian NLL (outputs ``[μ | s]``, 2K): ``(μ, diag f_var[μ] +
          σ²)`` with σ² the head's variance at the MAP logits (clamped at the loss's eps);
        * any other head (sparsemax, entmax, Poisson, ...): ``link='mc'``, the mean activation.

        ``seed`` (an int, a numpy Generator or None) drives the Monte-Carlo draws.

        Examples
        --------
        >>> import numpy as np
        >>> import jacobians as jac
        >>> rng = np.random.default_rng(0)
        >>> X, y = rng.normal(size=(40, 3)), rng.integers(0, 4, size=40)
        >>> la = jac.LastLayerLaplace(jac.Head(jac.Softmax(), jac.CrossEntropy())).fit(X, rng.normal(size=(4, 3)), np.zeros(4), y)
        >>> p = la.predictive(X[:3], link="mc", mc_samples=200, seed=0)
        >>> p.shape, bool(np.allclose(p.sum(axis=1), 1))
        ((3, 4), True)
        """
        self._need_fit("predictive")
        links.check_link(link)
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, (int, np.integer)) or mc_samples < 1:
            raise ValueError(f"mc_samples must be an int >= 1; got {mc_samples!r}")
        family = self._lik.family
        regression = family in ("gaussian", "gaussian_nll")
        # the probit and the regressions need the logits' variances only: M·K·D1², not M·K²·D1²
        f_mu, f_var = self._logits(features, "predictive", diagonal=regression or link == "probit")
        if family == "gaussian":
            return f_mu, f_var + np.broadcast_to(np.asarray(self._sigma, dtype=f_mu.dtype) ** 2, f_mu.shape[-1:])
        if family == "gaussian_nll":
            K = f_mu.shape[-1] // 2
            var = np.maximum(np.asarray(self.head.activation(f_mu))[:, K:], self.head.loss_fn.eps)
            return f_mu[:, :K], f_var[:, :K] + var
        return links.predict(self._lik, f_mu, f_var, link, int(mc_samples), np.random.default_rng(seed), self._budget)

    # -- evidence ---------------------------------------------------------------------------

    def log_marginal_likelihood(self, prior_precision=None, sigma_noise=None, *, return_grad: bool = False):
        """The Laplace evidence, laplace-torch's definition, at the given values (the object
        is not changed)::

            log Z = log p(D | θ) − ½ (log det P_post − log det P_prior) − ½ θᵀ P_prior θ

        With ``return_grad=True``: ``(log Z, ∂ log Z / ∂δ)``, the gradient in closed form
        ``½ (1/δ_i − [P_post⁻¹]_ii − θ_i²)``, a (P,) array for a vector δ, summed (a float)
        for a scalar.

        Examples
        --------
        >>> import numpy as np
        >>> import jacobians as jac
        >>> rng = np.random.default_rng(0)
        >>> X, y = rng.normal(size=(40, 3)), rng.integers(0, 4, size=40)
        >>> la = jac.LastLayerLaplace(jac.Head(jac.Softmax(), jac.CrossEntropy())).fit(X, rng.normal(size=(4, 3)), np.zeros(4), y)
        >>> value, grad = la.log_marginal_likelihood(prior_precision=2.0, return_grad=True)
        >>> la.prior_precision, isinstance(grad, float)
        (1.0, True)
        """
        self._need_fit("log_marginal_likelihood")
        prior = self._prior if prior_precision is None else self._check_prior(prior_precision)
        sigma = self._sigma if sigma_noise is None else self._lik.check_sigma(sigma_noise, self.n_outputs)
        post = self._posterior(None if prior_precision is None else prior, None if sigma_noise is None else sigma)
        log_lik = self._lik.log_likelihood(self._stat, self.n_data, sigma)
        return evidence.evidence(log_lik, self.mean, post, prior, return_grad=return_grad)

    def optimize_prior_precision(self, method: str = "marglik", *, vector: bool | None = None, features_val=None,
                                 y_val=None, grid=None, loss="nll", link: str = "probit", mc_samples: int = 100,
                                 seed=None):
        """Set ``prior_precision`` to the evidence's maximiser (``'marglik'``) or to the grid value with
        the smallest validation loss (``'gridsearch'``); returns it.

        * ``'marglik'`` with a scalar prior (``vector=False``; the default ``None`` keeps the
          current prior's shape): the root of ``d log Z / d log δ`` by safeguarded Newton on
          log δ (the evidence is concave in δ), to 1e-12 relative, O(P) a step from the
          spectrum of H. ``vector=True`` (not 'kron'): a (P,) prior, in closed form per
          coordinate for 'diag', for 'full' by Newton on log δ with the exact Hessian (MacKay's
          fixed point where the evidence is not concave) until ``|∂ log Z / ∂ log δ_i| < 1e-9``.
        * ``'gridsearch'``: every δ of ``grid`` (default laplace-torch's ``logspace(-4, 4, 100)``),
          the predictive on ``features_val`` with ``link``, scored by ``loss``: ``'nll'`` (the
          mean negative log predictive of ``y_val``) or a callable ``loss(pred, y_val)``; the first
          minimiser wins (a δ whose posterior fails scores +inf).

        Examples
        --------
        >>> import numpy as np
        >>> import jacobians as jac
        >>> rng = np.random.default_rng(0)
        >>> X, y = rng.normal(size=(40, 3)), rng.integers(0, 4, size=40)
        >>> la = jac.LastLayerLaplace(jac.Head(jac.Softmax(), jac.CrossEntropy())).fit(X, rng.normal(size=(4, 3)), np.zeros(4), y)
        >>> delta = la.optimize_prior_precision()
        >>> abs(la.log_marginal_likelihood(return_grad=True)[1]) < 1e-8
        True
        """
        self._need_fit("optimize_prior_precision")
        if method == "marglik":
            H = self._scaled(self._sigma)
            if vector is None:
                vector = np.ndim(self._prior) == 1
            if vector:
                value = evidence.maximise_vector(self.structure, H, self.mean, self._prior, self.n_outputs, self._D1)
            else:
                value = evidence.maximise_scalar(self.structure, H, self.mean)
        elif method == "gridsearch":
            value = self._gridsearch(features_val, y_val, grid, loss, link, mc_samples, seed)
        else:
            raise ValueError(f"method must be 'marglik' or 'gridsearch'; got {method!r}")
        self.prior_precision = value
        return self.prior_precision

    def _gridsearch(self, features_val, y_val, grid, loss, link, mc_samples, seed):
        if features_val is None or y_val is None:
            raise ValueError("method='gridsearch' needs the validation data features_val and y_val")
        grid = DEFAULT_GRID if grid is None else np.asarray(grid, dtype=np.float64).ravel()
        if grid.size == 0 or not np.all(np.isfinite(grid) & (grid > 0)):
            raise ValueError(f"grid must be a non-empty array of positive prior precisions; got {grid!r}")
        if not callable(loss):
            if loss != "nll":
                raise ValueError(f"loss must be 'nll' or a callable loss(pred, y_val); got {loss!r}")
            loss = self._nll
        links.check_link(link)
        saved = self._prior, self._post
        scores = []
        try:
            for delta in grid:
                self._prior, self._post = float(delta), None
                try:
                    pred = self.predictive(features_val, link=link, mc_samples=mc_samples, seed=seed)
                    scores.append(float(loss(pred, y_val)))
                except (ValueError, np.linalg.LinAlgError):
                    scores.append(np.inf)
        finally:
            self._prior, self._post = saved
        return float(grid[int(np.argmin(scores))])

    def _nll(self, pred, y):
        """The mean negative log predictive of ``y``."""
        family = self._lik.family
        if family in ("gaussian", "gaussian_nll"):
            mean, var = pred
            y = np.asarray(y, dtype=mean.dtype).reshape(mean.shape)
            return float(np.mean(0.5 * np.log(2 * np.pi * var) + (y - mean) ** 2 / (2 * var)))
        with np.errstate(divide="ignore"):
            if family == "bernoulli":
                y = np.asarray(y, dtype=pred.dtype).reshape(pred.shape)
                return float(-np.mean(y * np.log(pred) + (1 - y) * np.log1p(-pred)))
            if self._lik.simplex:
                y = np.asarray(y)
                logp = np.log(pred)
                if y.shape == pred.shape:
                    return float(-np.mean((np.where(y > 0, y * logp, 0.0)).sum(axis=1)))
                return float(-np.mean(logp[np.arange(len(y)), y.astype(np.intp)]))
        raise ValueError(f"loss='nll' has no closed form for {self.head!r}: pass a callable loss(pred, y_val)")

    # -- samples ----------------------------------------------------------------------------

    def sample(self, n: int, seed=None):
        """Posterior weight samples ``[W | b] ~ N(θ_MAP, P_post⁻¹)``, shape (n, K, D + 1)
        ((n, K, D) without a bias); ``seed``: an int, a numpy Generator or None.

        Examples
        --------
        >>> import numpy as np
        >>> import jacobians as jac
        >>> rng = np.random.default_rng(0)
        >>> X, y = rng.normal(size=(40, 3)), rng.integers(0, 4, size=40)
        >>> la = jac.LastLayerLaplace(jac.Head(jac.Softmax(), jac.CrossEntropy())).fit(X, rng.normal(size=(4, 3)), np.zeros(4), y)
        >>> la.sample(5, seed=0).shape
        (5, 4, 4)
        """
        self._need_fit("sample")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative int; got {n!r}")
        eps = np.random.default_rng(seed).standard_normal((int(n), self.n_params)).astype(self.mean.dtype, copy=False)
        theta = self.mean + self._posterior().sample(eps)
        return theta.reshape(int(n), self.n_outputs, self._D1)
