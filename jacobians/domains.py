"""Value domains: what an activation outputs and what a loss accepts.

A pair (activation, loss) makes sense when the activation's output domain lies inside
the loss's input domain. Domains form a small partial order (``simplex`` lies inside
``unit_interval``, which lies inside ``nonnegative``, ...). An activation or loss that
declares nothing is taken as ``real``: it outputs / accepts any real number.

Examples
--------
>>> from jacobians.domains import domain
>>> domain("open_simplex").issubset(domain("unit_interval"))
True
>>> domain("real").issubset(domain("simplex"))
False
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Domain", "domain", "DOMAINS", "register_domain"]


@dataclass(frozen=True)
class Domain:
    """A named set of values, with the larger domains it lies in.

    Parameters
    ----------
    name : str
        Registry name, e.g. ``'simplex'``.
    description : str
        Human-readable description used in error messages.
    parents : tuple of str
        Names of the domains that directly contain this one.
    """

    name: str
    description: str
    parents: tuple[str, ...] = field(default=())
    bounds: tuple[float, float] | None = None

    def check_values(self, x, name: str, owner: str) -> None:
        """Raise ``ValueError`` if ``x`` has values outside this domain's bounds.

        Only the bounds are checked (not, e.g., that simplex rows sum to 1); NaN passes
        through, as in numpy.
        """
        if self.bounds is None or x.size == 0:
            return
        lo, hi = self.bounds
        mn, mx = x.min(), x.max()
        if mn < lo or mx > hi:
            raise ValueError(
                f"{name} must hold {self.description} for {owner} (domain {self.name!r}, "
                f"values in [{lo}, {hi}]); got values in [{mn}, {mx}]"
            )

    def ancestors(self) -> set[str]:
        """Names of every domain containing this one, itself included."""
        seen = {self.name}
        todo = list(self.parents)
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(DOMAINS[name].parents)
        return seen

    def issubset(self, other: Domain | str) -> bool:
        """True when every value of this domain lies in ``other``."""
        return domain(other).name in self.ancestors()

    def __str__(self) -> str:
        return f"{self.name} ({self.description})"


DOMAINS: dict[str, Domain] = {}


def register_domain(
    name: str,
    description: str,
    parents: tuple[str, ...] = ("real",),
    bounds: tuple[float, float] | None = None,
) -> Domain:
    """Add a domain to the registry and return it.

    ``bounds`` (lower, upper), when given, is what a loss checks its input against.
    """
    for parent in parents:
        if parent not in DOMAINS:
            raise KeyError(f"parent domain {parent!r} is not registered; known: {sorted(DOMAINS)}")
    DOMAINS[name] = Domain(name, description, tuple(parents), bounds)
    return DOMAINS[name]


def domain(value: Domain | str | None) -> Domain:
    """Look a domain up by name (``None`` means ``'real'``)."""
    if value is None:
        return DOMAINS["real"]
    if isinstance(value, Domain):
        return value
    try:
        return DOMAINS[value]
    except (KeyError, TypeError):
        raise ValueError(f"unknown domain {value!r}; valid domains are {sorted(DOMAINS)}") from None


register_domain("real", "any real number", parents=())
register_domain("nonnegative", "real numbers >= 0", bounds=(0.0, np.inf))
register_domain("nonpositive", "real numbers <= 0", bounds=(-np.inf, 0.0))
register_domain("unit_interval", "values in [0, 1]", parents=("nonnegative",), bounds=(0.0, 1.0))
register_domain("open_unit_interval", "values in (0, 1)", parents=("unit_interval",), bounds=(0.0, 1.0))
register_domain("signed_unit_interval", "values in (-1, 1)", bounds=(-1.0, 1.0))
register_domain(
    "simplex", "probabilities (rows >= 0 summing to 1)", parents=("unit_interval",), bounds=(0.0, 1.0)
)
register_domain(
    "open_simplex",
    "strictly positive probabilities (rows summing to 1, as softmax gives)",
    parents=("simplex", "open_unit_interval"),
    bounds=(0.0, 1.0),
)
register_domain(
    "log_simplex", "log-probabilities (rows whose exp sums to 1)", parents=("nonpositive",), bounds=(-np.inf, 0.0)
)
