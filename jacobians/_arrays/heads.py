"""A head's entry points and ``contract`` on generic arrays (filled in below)."""

from __future__ import annotations

from .inputs import namespace_of, unsupported

__all__ = [
    "contract",
    "head_loss",
    "head_value_and_grad",
    "head_blocks",
    "head_hvp",
    "head_sqrt_ggn_sampled",
    "head_fisher",
    "linear_gradient",
    "linear_curvature",
]


def contract(g, J):
    raise unsupported("contract", namespace_of(g, J))


def head_loss(head, z, y):
    raise unsupported("Head.loss", namespace_of(z, targets=(y,)))


def head_value_and_grad(head, z, y, method, *, max_bytes, workers, need):
    raise unsupported("Head.value_and_grad", namespace_of(z, targets=(y,)))


def head_blocks(head, name, z, y, *args, sizes=None):
    raise unsupported(f"Head.{name}", namespace_of(z, targets=(y,)))


def head_hvp(head, z, y, v, method):
    raise unsupported("Head.hvp", namespace_of(z, v, targets=(y,)))


def head_sqrt_ggn_sampled(head, z, mc_samples, seed, y=None):
    raise unsupported("Head.sqrt_ggn_sampled", namespace_of(z, targets=(y,)))


def head_fisher(head, z, y, kind, mc_samples, seed):
    raise unsupported("Head.fisher", namespace_of(z, targets=(y,)))


def linear_gradient(features, head, z, y, bias):
    raise unsupported("linear_gradient", namespace_of(features, z, targets=(y,)))


def linear_curvature(features, head, z, y, *, kind, structure, bias, max_bytes, mc_samples, seed):
    raise unsupported("linear_curvature", namespace_of(features, z, targets=(y,)))
