"""A linear last layer's gradient and curvature on generic arrays."""

from __future__ import annotations

from .inputs import namespace_of, unsupported

__all__ = ["linear_gradient", "linear_curvature"]


def linear_gradient(features, head, z, y, bias):
    raise unsupported("linear_gradient", namespace_of(features, z, targets=(y,)))


def linear_curvature(features, head, z, y, *, kind, structure, bias, max_bytes, mc_samples, seed):
    raise unsupported("linear_curvature", namespace_of(features, z, targets=(y,)))
