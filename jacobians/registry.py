"""Registries of classes by name: the rule for a class's name and the registration that
refuses a taken name. The activation and loss registries are built on it (see
:func:`jacobians.register_activation` and :func:`jacobians.register_loss`).

Examples
--------
>>> from jacobians.registry import register_class, registry_name
>>> class Base: ...
>>> class MSELoss(Base): ...
>>> registry_name(MSELoss)
'mse_loss'
>>> table = {}
>>> register_class(table, "thing", Base, MSELoss) is MSELoss
True
>>> list(table)
['mse_loss']
"""

from __future__ import annotations

import re

__all__ = ["registry_name", "register_class"]


def registry_name(cls: type) -> str:
    """The registry name of a class: its ``name`` attribute, else its name in snake_case.

    An acronym stays one word: ``GCE`` → ``gce``, ``MSELoss`` → ``mse_loss``,
    ``KLDivergence`` → ``kl_divergence``, ``Entmax15Loss`` → ``entmax15_loss``.
    """
    name = getattr(cls, "name", None)
    if isinstance(name, str) and name:
        return name
    # split an acronym from the capitalised word after it (MSE|Loss), then a lower-case
    # letter or digit from the capital after it (Cross|Entropy, 15|Loss)
    snake = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", cls.__name__)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", snake).lower()


def register_class(
    registry: dict,
    kind: str,
    base: type,
    cls: type | None = None,
    name: str | None = None,
    replace: bool = False,
):
    """Add ``cls`` (a subclass of ``base``) to ``registry`` under its name.

    Parameters
    ----------
    registry : dict
        ``name -> class``, in registration order; updated in place.
    kind : str
        What a registered class is, for the messages (``'activation'``, ``'loss'``).
    base : type
        The class every registered class derives from.
    cls : type, optional
        The class; omit it to get a decorator.
    name : str, optional
        Registry name; default :func:`registry_name` of the class. When given, it is also
        set as ``cls.name``.
    replace : bool
        Allow replacing a different class registered under the same name.

    Returns
    -------
    type or callable
        ``cls``, or the decorator when ``cls`` is None.

    Raises
    ------
    TypeError
        ``cls`` is not a subclass of ``base``.
    ValueError
        The name is taken by another class and ``replace`` is False.
    """

    def add(cls):
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise TypeError(f"only {base.__name__} subclasses can be registered as {kind}s; got {cls!r}")
        key = name or registry_name(cls)
        if key in registry and registry[key] is not cls and not replace:
            raise ValueError(
                f"{kind} name {key!r} is already taken by {registry[key].__name__}; "
                f"pass another name= or replace=True"
            )
        registry[key] = cls
        if name is not None:
            cls.name = name
        return cls

    return add if cls is None else add(cls)
