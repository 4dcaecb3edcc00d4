"""``python -m jacobians {check,list,bench}``: see :mod:`jacobians.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
