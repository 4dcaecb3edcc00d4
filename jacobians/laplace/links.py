"""Predictive links: the logits' Gaussian ``N(f_mu, f_var)`` turned into predictions.

laplace-torch's formulas (``BaseLaplace._glm_forward_call``, laplace-torch 0.3):

* probit: ``softmax(κ ⊙ f_mu)`` with ``κ = (1 + π/8 · diag f_var)^(-1/2)`` (per output
  ``sigmoid(κ f_mu)`` for a sigmoid head);
* bridge: the Laplace bridge (Hobbhahn et al. 2022) after laplace-torch's zero-mean
  correction, its code with ``diagonal_output=False``;
* mc: the mean of the activation over ``mc_samples`` draws ``f ~ N(f_mu, f_var)`` (draws
  ``f_mu + S ε`` with ``S Sᵀ = f_var`` from an eigendecomposition, so a singular f_var is fine).
"""

from __future__ import annotations

import numpy as np

from ..activations import Sigmoid, Softmax
from .structures import row_blocks

__all__ = ["LINKS", "check_link", "probit", "bridge", "mc", "predict"]

LINKS = ("probit", "mc", "bridge")


def check_link(link) -> str:
    if not isinstance(link, str) or link not in LINKS:
        raise ValueError(f"link must be one of {LINKS}; got {link!r}")
    return link


def probit(f_mu, var, sigmoid: bool = False):
    """``softmax(κ ⊙ f_mu)`` (or ``sigmoid(κ ⊙ f_mu)``), κ = (1 + π/8 var)^(-1/2) for the logits'
    variances ``var`` = diag f_var (M, K)."""
    z = f_mu / np.sqrt(1.0 + np.pi / 8 * var)
    return Sigmoid()(z) if sigmoid else Softmax()(z)


def bridge(f_mu, f_var):
    """laplace-torch's Laplace bridge: Dirichlet α from the zero-mean-corrected moments, ``α/Σα``."""
    K = f_mu.shape[-1]
    row = f_var.sum(-1)  # (M, K)
    total = f_var.sum(axis=(1, 2))[:, None]
    mu = f_mu - row * f_mu.sum(-1, keepdims=True) / total
    var = f_var - np.einsum("bi,bj->bij", row, f_var.sum(-2)) / total[:, :, None]
    d = np.diagonal(var, axis1=1, axis2=2)
    sum_exp = np.exp(-mu).sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        alpha = (1 - 2 / K + np.exp(mu) / K**2 * sum_exp) / d
        return np.nan_to_num(alpha / alpha.sum(axis=1, keepdims=True), nan=1.0)


def mc(f_mu, f_var, activation, mc_samples: int, rng, budget: int):
    """The mean of ``activation(f)`` over ``mc_samples`` draws ``f ~ N(f_mu, f_var)`` per row."""
    M, K = f_mu.shape
    w, V = np.linalg.eigh(f_var)
    S = V * np.sqrt(np.clip(w, 0, None))[:, None, :]  # S Sᵀ = f_var
    eps = rng.standard_normal((mc_samples, M, K)).astype(f_mu.dtype, copy=False)
    out = None
    for rows in row_blocks(mc_samples, f_mu.itemsize * M * K * 4, budget):
        f = f_mu + np.einsum("mkc,smc->smk", S, eps[rows])
        part = np.asarray(activation(f)).sum(axis=0)
        out = part if out is None else out + part
    return out / mc_samples


def predict(lik, f_mu, f_var, link: str, mc_samples: int, rng, budget: int):
    """The predictive of likelihood ``lik`` (:class:`~jacobians.laplace.likelihood.Likelihood`);
    ``f_var`` is (M, K, K), or its diagonal (M, K) for ``link='probit'``."""
    family, act = lik.family, lik.head.activation
    if family == "categorical":
        T = lik.temperature
        mu, var = f_mu / T, f_var / T**2
        if link == "probit":
            return probit(mu, var)
        if link == "bridge":
            return bridge(mu, var)
        return mc(mu, var, Softmax(), mc_samples, rng, budget)
    if family == "bernoulli":
        if link == "bridge":
            raise ValueError("link='bridge' is for softmax heads; a sigmoid + BCE head takes link='probit' or 'mc'")
        if link == "probit":
            return probit(f_mu, f_var, sigmoid=True)
        return mc(f_mu, f_var, act, mc_samples, rng, budget)
    if family in ("gaussian", "gaussian_nll"):
        raise AssertionError("regression predictives are built by the posterior")  # pragma: no cover
    if link != "mc":
        raise ValueError(
            f"link={link!r} has no closed form for {lik.head!r}; this head supports link='mc' only "
            "(probit and bridge are for softmax heads, probit for sigmoid + BCE)"
        )
    return mc(f_mu, f_var, act, mc_samples, rng, budget)
