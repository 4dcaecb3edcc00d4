"""Gradient checks: every method against the others and against a float64 reference.

:func:`check_activation` and :func:`check_head` run every way the toolkit computes a
derivative — ``jacobian``, ``operator`` (the structured Jacobian), ``vjp``, ``jvp`` and,
for a head, ``fused`` — on given or generated inputs, compare them with each other and
with a finite-difference reference computed in float64, and return a
:class:`CheckReport`: one row per comparison, with the largest absolute and relative
error, the tolerance and pass/fail. :func:`check_extreme` checks logits of ±1e4, where
finite differences say nothing: every method must stay finite and the fused rules must
match their closed forms.

Tolerances
----------
A comparison passes when ``max |x − ref| <= rtol · max |ref| + atol`` (normwise: the
error of the worst entry against the size of the largest reference entry). ``rtol`` and
``atol`` depend on the dtype of the inputs and on what is compared (:data:`TOLERANCES`):

* ``'numerical'`` — a method against the finite-difference reference. The reference is
  always computed in float64 (float32 inputs are promoted exactly), with central
  differences, step ``eps64^(1/3) · max(1, |z|)`` ≈ 6e-6·max(1, |z|), relative error
  ≈ 1e-10; the tolerance covers that and, for float32 inputs, float32 round-off.
  ``atol`` is relative to the size of the function differenced (``max |act(z)|``, or
  the largest per-sample loss), which the reference's round-off scales with.
* ``'methods'`` — two analytic methods in the inputs' dtype (round-off only: tighter).
  ``atol`` is relative to the terms the product adds up (``max |g|·|J|``).
* ``'closed_form'`` — a fused rule at ±1e4 logits against its closed form.

The scaled ``atol`` keeps a reference of exact zeros (a gradient that vanishes) from
failing on round-off, without waving through a function that is merely small.

Kinks
-----
Finite differences are wrong within one step of a kink (ReLU at 0, sparsemax's and
1.5-entmax's support boundaries — also inside the Fenchel–Young losses —, MAE at
``a = y``, Huber at ``|a − y| = δ``). Generated inputs (:func:`example_inputs`) are
resampled row by row until every entry is at least :data:`KINK_MARGIN` = 1e-2 from a
known kink, measured in the kink's own coordinate (``z`` for an activation, the loss's
input for a loss; 1.5-entmax asks for 10× that, since ``p = (z/2 − τ)²`` makes log-losses
steep near its support boundary). Logits are clipped to ``|z| <= 6``, so the largest step
is 6e-6·6 < 4e-5 in ``z``, and at most twice that in ``a`` (every built-in activation is
2-Lipschitz): the margin is over 100 times the step. The kinks are looked up in
:data:`KINKS` by class (subclasses included); add an entry for your own class with a
kink, or pass inputs yourself. Given inputs are used as they are; a failing row then
notes when they lie within the margin of a kink.

Examples
--------
>>> import numpy as np
>>> import jacobians as jac
>>> report = jac.check_activation(jac.Softmax())
>>> report.passed
True
>>> head = jac.Head(jac.Softmax(), jac.CrossEntropy())
>>> z = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
>>> jac.check_head(head, z, np.array([0, 2, 1, 1])).passed
True
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from . import _math
from ._validation import as_float_array
from .activations import Activation, Entmax15, Identity, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Sparsemax
from .activations.base import registry_name
from .head import Head
from .losses import (
    BinaryCrossEntropy,
    CrossEntropy,
    Entmax15Loss,
    Huber,
    KLDivergence,
    MeanAbsoluteError,
    MeanSquaredError,
    NLLLoss,
    SparsemaxLoss,
)
from .numerical import numerical_grad, numerical_jacobian

__all__ = [
    "CheckReport",
    "CheckRow",
    "check_activation",
    "check_head",
    "check_extreme",
    "example_inputs",
    "extreme_inputs",
    "TOLERANCES",
    "KINKS",
    "KINK_MARGIN",
    "TARGET_KINDS",
    "DEFAULT_SHAPE",
    "EXTREME",
    "EXTREME_CLOSED_FORMS",
    "format_rows",
]

#: (rtol, atol) by dtype of the inputs and kind of comparison (see the module docstring)
TOLERANCES: dict[str, dict[str, tuple[float, float]]] = {
    "float64": {"numerical": (1e-6, 1e-8), "methods": (1e-10, 1e-13), "closed_form": (1e-12, 1e-12)},
    "float32": {"numerical": (2e-4, 1e-6), "methods": (2e-4, 1e-6), "closed_form": (1e-6, 1e-6)},
}

#: generated inputs keep every entry this far from a known kink (see the module docstring)
KINK_MARGIN = 1e-2

#: shape of generated inputs when none is given
DEFAULT_SHAPE = (6, 5)

#: magnitude of the extreme logits of :func:`check_extreme`
EXTREME = 1e4

#: what ``loss.target_kind`` may say, and the targets generated for it
TARGET_KINDS = {
    "class": "integer class indices (...,) in [0, K)",
    "probability": "values of a's shape, uniform in [0, 1]",
    "real": "values of a's shape, standard normal",
}

# logits are drawn N(0, 1.5²) and clipped to this range
_Z_SCALE = 1.5
_Z_CLIP = 6.0
_MAX_RESAMPLE = 200
# above this many entries the gradient reference is taken along random directions
_FULL_GRAD_MAX = 2048
_N_DIRECTIONS = 4


# -- the report ---------------------------------------------------------------------------


@dataclass
class CheckRow:
    """One comparison of a :class:`CheckReport`.

    Attributes
    ----------
    subject : str
        What was checked, e.g. ``'softmax'`` or ``'softmax + cross_entropy'``.
    dtype : str
        dtype of the inputs.
    shape : tuple of int
        Shape of ``z``.
    quantity : str
        ``'J'``, ``'vjp'``, ``'jvp'``, ``'dE/dz'``, ``'value'``, ...
    method : str
        The method checked, e.g. ``'vjp'``.
    reference : str
        What it was compared with, e.g. ``'numerical'``, ``'jacobian'``, ``'closed form'``,
        or ``'finite'`` (finiteness only).
    max_abs : float or None
        ``max |x − ref|`` (None when no number could be computed).
    max_rel : float or None
        ``max |x − ref| / max(max |ref|, atol/rtol)``: relative to the reference, but
        not to a size below the noise floor (a reference of exact zeros).
    allowed : float or None
        The largest ``max_abs`` that passes: ``rtol · max |ref| + atol``.
    rtol, atol : float
        The tolerances (``atol`` already scaled by the comparison's noise floor).
    passed : bool
    note : str
        Why a row failed when it is not a number (an exception, a wrong shape or dtype,
        inputs near a kink), else ''.
    """

    subject: str
    dtype: str
    shape: tuple
    quantity: str
    method: str
    reference: str
    max_abs: float | None
    max_rel: float | None
    allowed: float | None
    rtol: float
    atol: float
    passed: bool
    note: str = ""

    @property
    def compared(self) -> str:
        """``'<quantity>: <method> vs <reference>'`` (``'... is finite'`` for finiteness rows)."""
        if self.reference == "finite":
            return f"{self.quantity}: {self.method} is finite"
        return f"{self.quantity}: {self.method} vs {self.reference}"

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (non-finite numbers become None)."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        for key in ("max_abs", "max_rel", "allowed", "rtol", "atol"):
            d[key] = _json_float(d[key])
        d["compared"] = self.compared
        return d


def _json_float(x):
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass
class CheckReport:
    """The rows of one or more checks; see :func:`check_activation`.

    ``report.passed`` is True when every row passed; ``str(report)`` is a table;
    ``report.raise_if_failed()`` raises ``AssertionError`` with that table;
    ``report.to_dict()`` is JSON-serialisable. Reports add up: ``r1 + r2``.

    Examples
    --------
    >>> import jacobians as jac
    >>> report = jac.check_activation(jac.Sigmoid(), shape=(3, 4))
    >>> print(report.rows[0].compared, report.rows[0].passed)
    J: jacobian vs numerical True
    >>> report.raise_if_failed()       # nothing happens: every row passed
    """

    rows: list[CheckRow] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every row passed (and there is at least one row)."""
        return bool(self.rows) and all(r.passed for r in self.rows)

    @property
    def failures(self) -> list[CheckRow]:
        """The rows that failed."""
        return [r for r in self.rows if not r.passed]

    def max_rel(self, dtype: str | None = None) -> float | None:
        """The largest relative error over the rows (of ``dtype``), or None."""
        errs = [r.max_rel for r in self.rows if r.max_rel is not None and (dtype is None or r.dtype == dtype)]
        return max(errs) if errs else None

    def __add__(self, other: CheckReport) -> CheckReport:
        if not isinstance(other, CheckReport):
            return NotImplemented
        return CheckReport(self.rows + other.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __bool__(self) -> bool:
        return True

    def raise_if_failed(self) -> None:
        """Raise ``AssertionError`` with the table when a row failed."""
        if not self.passed:
            n = len(self.failures)
            raise AssertionError(f"{n} of {len(self.rows)} gradient checks failed:\n{self}")

    def to_dict(self) -> dict:
        """``{'passed': bool, 'rows': [row dicts]}``, JSON-serialisable."""
        return {"passed": self.passed, "rows": [r.to_dict() for r in self.rows]}

    def to_json(self, **kwargs) -> str:
        """``json.dumps(self.to_dict())``."""
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        return format_rows(self.rows)

    def __repr__(self) -> str:
        return f"<CheckReport: {len(self.rows)} rows, {len(self.failures)} failed>"


def _fmt_err(x) -> str:
    if x is None:
        return "—"
    if math.isnan(x):
        return "nan"
    return f"{x:.1e}"


def _fmt_shape(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def format_table(header: list[str], body: list[list[str]], right: set[int] = frozenset()) -> list[str]:
    """Lines of a plain-text table: header, rule, rows (columns in ``right`` right-aligned)."""
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(header), line(["-" * w for w in widths])] + [line(b) for b in body]


def format_rows(rows: list[CheckRow]) -> str:
    """The rows as a text table (what ``str(report)`` prints), failures explained below it."""
    if not rows:
        return "(no checks)"
    header = ["subject", "dtype", "shape", "compared", "max abs err", "allowed", "max rel err", "result"]
    body = [
        [r.subject, r.dtype, _fmt_shape(r.shape), r.compared, _fmt_err(r.max_abs), _fmt_err(r.allowed),
         _fmt_err(r.max_rel), "ok" if r.passed else "FAIL"]
        for r in rows
    ]
    out = format_table(header, body, right={4, 5, 6})
    groups: dict[tuple, list[str]] = {}
    for r in rows:
        if r.note and not r.passed:
            groups.setdefault((r.subject, r.dtype, _fmt_shape(r.shape), r.note), []).append(r.compared)
    if groups:
        out.append("")
        out += [f"FAIL {subj} {dt} {shape} [{', '.join(what)}]: {note}" for (subj, dt, shape, note), what in groups.items()]
    n_fail = sum(not r.passed for r in rows)
    out.append("")
    out.append(f"{len(rows)} checks, {n_fail} failed" if n_fail else f"{len(rows)} checks, all passed")
    return "\n".join(out)


# -- kinks and generated inputs -------------------------------------------------------------


def _abs_distance(obj, z, y=None):
    return np.abs(z)


def _sparsemax_distance(x):
    # on the support p = x − τ, elsewhere x <= τ: τ = max(x − p)
    tau = (x - _math.sparsemax(x)).max(axis=-1, keepdims=True)
    return np.abs(x - tau)


def _entmax15_distance(x):
    # on the support √p = x/2 − τ, elsewhere x/2 <= τ; the kink is at x = 2τ
    tau = (x / 2 - np.sqrt(_math.entmax15(x))).max(axis=-1, keepdims=True)
    return np.abs(x - 2 * tau)


def _sparsemax_loss_distance(loss, a, y=None):
    # sparsemax is the identity on the simplex, and an activation with simplex outputs
    # keeps a on it (zeros of sparsemax/entmax stay exactly 0): rows there cross no kink
    on_simplex = (a.min(axis=-1) >= 0) & (np.abs(a.sum(axis=-1) - 1) <= 1e-5)
    return np.where(on_simplex[..., None], np.inf, _sparsemax_distance(a))


#: class -> ``distance(obj, x, y)`` of every entry of ``x`` to its nearest kink, ``(..., K)``
#: (``x`` is ``z`` for an activation, the loss's input for a loss; ``y`` the targets or None)
KINKS: dict[type, Callable] = {
    ReLU: _abs_distance,
    LeakyReLU: _abs_distance,
    Sparsemax: lambda act, z, y=None: _sparsemax_distance(z),
    # p = (z/2 − τ)² near its support boundary makes log-losses (BCE) steep there: 10× the margin
    Entmax15: lambda act, z, y=None: _entmax15_distance(z) / 10,
    MeanAbsoluteError: lambda loss, a, y: np.abs(a - y),
    Huber: lambda loss, a, y: np.abs(np.abs(a - y) - loss.delta),
    SparsemaxLoss: _sparsemax_loss_distance,
    Entmax15Loss: lambda loss, a, y=None: _entmax15_distance(a),
}


def _kink_fn(obj):
    for cls in type(obj).__mro__:
        if cls in KINKS:
            return KINKS[cls], cls.__name__
    return None, None


def _row_distance(obj, x, y=None) -> tuple[np.ndarray | None, str | None]:
    """Per-row minimum distance ``(...,)`` of ``x`` to ``obj``'s kinks, or (None, None)."""
    fn, where = _kink_fn(obj)
    if fn is None:
        return None, None
    with np.errstate(all="ignore"):
        d = np.broadcast_to(np.asarray(fn(obj, x, y), dtype=np.float64), x.shape)
    return np.nan_to_num(d, nan=0.0).min(axis=-1), where


def _head_distance(head: Head, z64, y) -> tuple[np.ndarray, list[str]]:
    """Per-row distance of ``(z, y)`` to the head's kinks (activation in z, loss in its input)."""
    dist = np.full(z64.shape[:-1], np.inf)
    names = []
    d, name = _row_distance(head.activation, z64)
    if d is not None:
        dist, names = np.minimum(dist, d), [name]
    x = z64 if head.logits_loss else _safe_call(head.activation, z64)
    if x is not None:
        yl = y.astype(np.float64) if np.asarray(y).dtype.kind == "f" else y
        d, name = _row_distance(head.loss_fn, x, yl)
        if d is not None:
            dist, names = np.minimum(dist, d), names + [name]
    return dist, names


def _safe_call(fn, *args):
    try:
        with np.errstate(all="ignore"):
            return fn(*args)
    except Exception:
        return None


def _target_kind(loss) -> str:
    kind = getattr(loss, "target_kind", "real")
    if kind not in TARGET_KINDS:
        raise ValueError(
            f"{type(loss).__name__}.target_kind must be one of {sorted(TARGET_KINDS)} to generate targets; "
            f"got {kind!r} (or pass y yourself)"
        )
    return kind


def _make_targets(loss, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """Targets for ``loss`` and logits of ``shape``, from ``loss.target_kind`` (float64 or int)."""
    kind = _target_kind(loss)
    if kind == "class":
        return rng.integers(0, shape[-1], size=shape[:-1])
    if kind == "probability":
        return rng.uniform(0.0, 1.0, size=shape)
    return rng.normal(size=shape)


def _draw_logits(shape, rng):
    return np.clip(rng.normal(scale=_Z_SCALE, size=shape), -_Z_CLIP, _Z_CLIP)


def _check_shape(shape) -> tuple:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of ints, (..., K); got {shape!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive ints, (..., K); got {shape}")
    return shape


def _check_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64; got {dt}")
    return dt


def example_inputs(obj, shape=DEFAULT_SHAPE, dtype=np.float64, seed=0, *, y=None):
    """Generated inputs for a check, clear of kinks.

    Logits are drawn from N(0, 1.5²) (clipped to ±6); targets follow
    ``loss.target_kind``: ``'class'`` → integer indices, ``'probability'`` → uniform in
    [0, 1], ``'real'`` (also what a loss that declares nothing gets) → standard normal.
    Rows whose entries lie within :data:`KINK_MARGIN` of a kink of the activation (in
    ``z``) or of the loss (in its input) are drawn again.

    Parameters
    ----------
    obj : Activation or Head
    shape : tuple of int
        Shape ``(..., K)`` of ``z``.
    dtype : {float64, float32}
    seed : int, SeedSequence or Generator
        Passed to ``np.random.default_rng``.
    y : array_like, optional
        Targets to keep (a Head only): only ``z`` is drawn, clear of the kinks for them.

    Returns
    -------
    z : ndarray of ``shape`` and ``dtype`` (an Activation), or ``(z, y)`` (a Head), with
        ``y`` integer indices ``shape[:-1]`` or floats of ``shape`` in ``dtype``.

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> z = example_inputs(jac.ReLU(), shape=(100, 10))
    >>> bool(np.abs(z).min() >= KINK_MARGIN)
    True
    >>> z, y = example_inputs(jac.Head(jac.Softmax(), jac.CrossEntropy()), shape=(4, 3), dtype=np.float32)
    >>> z.dtype, y.shape, y.dtype.kind
    (dtype('float32'), (4,), 'i')
    """
    shape, dt = _check_shape(shape), _check_dtype(dtype)
    rng = np.random.default_rng(seed)
    is_head = isinstance(obj, Head)
    if not (is_head or isinstance(obj, Activation)):
        raise TypeError(f"obj must be a jacobians.Activation or jacobians.Head instance; got {type(obj).__name__}")
    z = _draw_logits(shape, rng)
    keep_y = y is not None
    if is_head:
        y = np.array(y, copy=True) if keep_y else _make_targets(obj.loss_fn, shape, rng)
    elif keep_y:
        raise TypeError("y is for a Head; an activation takes no targets")
    for _ in range(_MAX_RESAMPLE):
        zc = z.astype(dt).astype(np.float64)  # what the check will see
        yc = y.astype(dt) if y is not None and y.dtype.kind == "f" else y
        if is_head:
            dist, _ = _head_distance(obj, zc, yc)
        else:
            dist, _ = _row_distance(obj, zc)
        bad = np.zeros(shape[:-1], dtype=bool) if dist is None else ~(dist >= KINK_MARGIN)
        if not bad.any():
            break
        n_bad = int(bad.sum())
        z[bad] = _draw_logits((n_bad, shape[-1]), rng)
        if y is not None and not keep_y:
            y[bad] = _make_targets(obj.loss_fn, (n_bad, shape[-1]), rng)
    else:
        raise RuntimeError(
            f"could not draw inputs of shape {shape} at least {KINK_MARGIN} from the kinks of {obj!r}; "
            "pass inputs yourself"
        )
    z = z.astype(dt)
    if not is_head:
        return z
    return z, (y.astype(dt) if y.dtype.kind == "f" else y)


def extreme_inputs(obj, shape=(2, 3, 5), dtype=np.float64, seed=0):
    """Logits of ±1e4 (and targets for a Head) where every fused rule has a closed form.

    Each row has one maximum, ``+1e4`` (or ``0``), every other entry lies ``1e4`` or
    more below it (entries in ``{−1e4, 0, 1e4}``), so softmax, sparsemax and 1.5-entmax
    are exactly one-hot. Targets as in :func:`example_inputs`.

    Examples
    --------
    >>> import jacobians as jac
    >>> z = extreme_inputs(jac.Softmax(), shape=(3, 4))
    >>> sorted(set(z.ravel().tolist())) <= [-1e4, 0.0, 1e4]
    True
    """
    shape, dt = _check_shape(shape), _check_dtype(dtype)
    if shape[-1] < 2:
        raise ValueError(f"extreme inputs need K >= 2 classes; got shape {shape}")
    rng = np.random.default_rng(seed)
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    K = shape[-1]
    z = np.empty((rows, K))
    for r in range(rows):
        top = rng.integers(K)
        if r % 2 == 0:  # max +1e4, others in {0, −1e4}
            z[r] = rng.choice([0.0, -EXTREME], size=K)
            z[r, top] = EXTREME
        else:  # max 0, others −1e4
            z[r] = -EXTREME
            z[r, top] = 0.0
    z = z.reshape(shape).astype(dt)
    if not isinstance(obj, Head):
        return z
    y = _make_targets(obj.loss_fn, shape, rng)
    return z, (y.astype(dt) if y.dtype.kind == "f" else y)


# -- running and comparing ------------------------------------------------------------------


class _Failed:
    """What a method produced when it raised."""

    def __init__(self, exc: BaseException):
        self.note = f"raised {type(exc).__name__}: {exc}"


def _run(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # a check reports failures, it does not raise them
        return _Failed(exc)


def _readonly(x: np.ndarray) -> np.ndarray:
    x = np.array(x, copy=True)
    x.flags.writeable = False
    return x


_SAME = object()


class _Rows:
    """Collects the rows of one check (one subject, dtype and shape)."""

    def __init__(self, subject: str, dtype: np.dtype, shape: tuple, kink_note: str = ""):
        self.subject, self.dtype, self.shape = subject, np.dtype(dtype), tuple(shape)
        self.kink_note = kink_note
        self.rows: list[CheckRow] = []
        # what atol is relative to, per kind of comparison (see _floors)
        self.floors = {"numerical": 1.0, "methods": 1.0, "closed_form": 1.0}

    def _add(self, quantity, method, reference, max_abs, max_rel, tol, passed, note="", allowed=None):
        if not passed and self.kink_note and not note.startswith("raised"):
            note = f"{note}; {self.kink_note}" if note else self.kink_note
        self.rows.append(
            CheckRow(self.subject, self.dtype.name, self.shape, quantity, method, reference,
                     max_abs, max_rel, allowed, tol[0], tol[1], bool(passed), note)
        )

    def tol(self, kind: str, floor: float | None = None) -> tuple[float, float]:
        """``(rtol, atol)`` for ``kind``, with atol scaled by the comparison's noise floor."""
        rtol, atol = TOLERANCES[self.dtype.name][kind]
        return rtol, atol * (self.floors[kind] if floor is None else floor)

    def compare(self, quantity, method, reference, x, ref, kind, *, dtype_of=_SAME, scale=None, floor=None):
        """One row: ``x`` (a method's result) against ``ref``.

        ``dtype_of`` must have the inputs' dtype (default ``x``; None: not checked);
        ``scale`` replaces ``max |ref|`` in the tolerance and the relative error;
        ``floor`` replaces the kind's noise floor that atol is relative to.
        """
        tol = self.tol(kind, floor)
        for val in (x, ref, dtype_of):
            if isinstance(val, _Failed):
                who = reference if val is ref else method
                self._add(quantity, method, reference, None, None, tol, False, f"{who} {val.note}")
                return
        x, ref = np.asarray(x), np.asarray(ref)
        if x.shape != ref.shape:
            self._add(quantity, method, reference, None, None, tol, False,
                      f"shape {x.shape}, expected {ref.shape}")
            return
        dtype_of = x if dtype_of is _SAME else dtype_of
        if dtype_of is not None and np.asarray(dtype_of).dtype != self.dtype:
            self._add(quantity, method, reference, None, None, tol, False,
                      f"dtype {np.asarray(dtype_of).dtype}, expected {self.dtype} (the inputs' dtype)")
            return
        with np.errstate(all="ignore"):
            diff = np.abs(x.astype(np.float64) - ref.astype(np.float64))
            max_abs = float(diff.max()) if diff.size else 0.0
            if scale is None:
                scale = float(np.abs(ref.astype(np.float64)).max()) if ref.size else 0.0
        for val, who in ((x, method), (ref, reference)):
            if not np.isfinite(val).all():
                self._add(quantity, method, reference, None, None, tol, False,
                          f"{who} has {int((~np.isfinite(val)).sum())} non-finite entries")
                return
        # relative to the reference, but never to a size below the noise floor atol/rtol
        denom = max(scale, tol[1] / tol[0] if tol[0] > 0 else 0.0)
        max_rel = max_abs / denom if denom > 0 else (0.0 if max_abs == 0 else math.inf)
        allowed = tol[0] * scale + tol[1]
        self._add(quantity, method, reference, max_abs, max_rel, tol, max_abs <= allowed, allowed=allowed)

    def finite(self, quantity, method, x):
        """One row: every entry of ``x`` is finite (and of the inputs' dtype)."""
        tol = (0.0, 0.0)
        if isinstance(x, _Failed):
            self._add(quantity, method, "finite", None, None, tol, False, x.note)
            return
        x = np.asarray(x)
        bad = int((~np.isfinite(x)).sum())
        note = f"{bad} non-finite entries" if bad else ""
        if not bad and x.dtype != self.dtype:
            note = f"dtype {x.dtype}, expected {self.dtype} (the inputs' dtype)"
        self._add(quantity, method, "finite", None, None, tol, not note, note)


def _subject(obj) -> str:
    if isinstance(obj, Head):
        return f"{registry_name(type(obj.activation))} + {registry_name(type(obj.loss_fn))}"
    return registry_name(type(obj))


def _kink_note(names, dist) -> str:
    if dist is None or not np.any(dist < KINK_MARGIN):
        return ""
    return (
        f"the inputs lie within {KINK_MARGIN:g} of a kink of {'/'.join(names)}, where finite differences "
        "are unreliable (use generated inputs, or move them)"
    )


def _require(obj, cls, name):
    if isinstance(obj, type) and issubclass(obj, cls):
        raise TypeError(f"{name} must be an instance; got the class {obj.__name__} (write {obj.__name__}())")
    if not isinstance(obj, cls):
        raise TypeError(f"{name} must be a jacobians.{cls.__name__} instance; got {type(obj).__name__}")


def _batched_vjp(g, J):
    return np.einsum("...i,...ij->...j", g, J)


def _batched_jvp(J, v):
    return np.einsum("...ij,...j->...i", J, v)


# -- check_activation -----------------------------------------------------------------------


def check_activation(act: Activation, z=None, *, shape=DEFAULT_SHAPE, dtype=None, seed=0) -> CheckReport:
    """Check every derivative of an activation against the others and a float64 reference.

    The reference ``J_num`` is :func:`~jacobians.numerical_jacobian` (central
    differences) of ``act`` at ``z`` promoted to float64. With random ``g`` and ``v``
    (seeded) the rows are::

        J:   jacobian vs numerical,  operator vs numerical,  operator vs jacobian
        vjp: vjp vs numerical (g·J_num),  operator vs numerical,  vjp vs jacobian
        jvp: jvp vs numerical (J_num·v),  operator vs numerical,  jvp vs jacobian

    where ``operator`` is ``act.jacobian_operator(z)`` (``.dense()``, ``g @ op``,
    ``op @ v``). Every result must also keep the dtype of ``z``. The methods are called
    on read-only arrays; an exception becomes a failed row, not an error.

    Parameters
    ----------
    act : Activation
    z : array_like, shape (..., K), optional
        Logits; default: :func:`example_inputs` (clear of kinks).
    shape : tuple of int
        Shape of generated logits.
    dtype : {None, float64, float32}
        dtype of generated logits (default float64), or to cast given ``z`` to.
    seed : int, SeedSequence or Generator
        Seeds the generated ``z``, ``g`` and ``v``.

    Returns
    -------
    CheckReport

    Examples
    --------
    A Jacobian with its layout transposed is caught:

    >>> import numpy as np
    >>> import jacobians as jac
    >>> class Transposed(jac.Activation):
    ...     def forward(self, z):
    ...         return z * z[..., :1]                      # a_i = z_i z_0: not symmetric
    ...     def jacobian(self, z):
    ...         J = np.zeros(z.shape + z.shape[-1:])
    ...         jac.diagonal(J)[...] = z[..., :1]
    ...         J[..., :, 0] += z
    ...         return np.swapaxes(J, -1, -2)              # wrong: J[j, i]
    >>> report = jac.check_activation(Transposed())
    >>> report.passed
    False
    >>> [r.compared for r in report.failures][:2]
    ['J: jacobian vs numerical', 'J: operator vs numerical']
    """
    _require(act, Activation, "act")
    rng = np.random.default_rng(seed)
    if z is None:
        z = example_inputs(act, shape=shape, dtype=np.float64 if dtype is None else dtype, seed=rng)
        kink = ""
    else:
        z = as_float_array(z, "z")
        if dtype is not None:
            z = z.astype(_check_dtype(dtype))
        dist, where = _row_distance(act, z.astype(np.float64))
        kink = _kink_note([where], dist)
    z = _readonly(z)
    dt = z.dtype
    g = _readonly(rng.normal(size=z.shape).astype(dt))
    v = _readonly(rng.normal(size=z.shape).astype(dt))
    rows = _Rows(_subject(act), dt, z.shape, kink)

    z64 = z.astype(np.float64)
    Jn = _run(lambda: numerical_jacobian(act, z64))
    if isinstance(Jn, _Failed):
        rows.compare("J", "numerical", "float64 forward", Jn, None, "numerical")
        return CheckReport(rows.rows)
    # finite differences of f carry round-off ~ eps·|f|/h: atol is relative to max |f|
    a64 = _safe_call(act, z64)
    if a64 is not None and np.size(a64):
        rows.floors["numerical"] = float(np.nanmax(np.abs(a64)))
    gJn = _batched_vjp(g.astype(np.float64), Jn)
    Jnv = _batched_jvp(Jn, v.astype(np.float64))
    # two methods differ by round-off of the terms they add up: |g|·|J|, |J|·|v|
    absJ = np.abs(Jn)
    rows.floors["methods"] = max(
        float(absJ.max(initial=0.0)),
        float(_batched_vjp(np.abs(g.astype(np.float64)), absJ).max(initial=0.0)),
        float(_batched_jvp(absJ, np.abs(v.astype(np.float64))).max(initial=0.0)),
    )

    J = _run(act.jacobian, z)
    op = _run(act.jacobian_operator, z)

    def from_op(name, *args):
        if isinstance(op, _Failed):
            return op
        return _run(getattr(op, name), *args)

    J_op = from_op("dense")
    rows.compare("J", "jacobian", "numerical", J, Jn, "numerical")
    rows.compare("J", "operator", "numerical", J_op, Jn, "numerical")
    rows.compare("J", "operator", "jacobian", J_op, J, "methods")

    vjp = _run(act.vjp, z, g)
    vjp_op = from_op("vjp", g)
    vjp_J = J if isinstance(J, _Failed) else _run(_batched_vjp, g, J)
    rows.compare("vjp", "vjp", "numerical", vjp, gJn, "numerical")
    rows.compare("vjp", "operator", "numerical", vjp_op, gJn, "numerical")
    rows.compare("vjp", "vjp", "jacobian", vjp, vjp_J, "methods")

    jvp = _run(act.jvp, z, v)
    jvp_op = from_op("jvp", v)
    jvp_J = J if isinstance(J, _Failed) else _run(_batched_jvp, J, v)
    rows.compare("jvp", "jvp", "numerical", jvp, Jnv, "numerical")
    rows.compare("jvp", "operator", "numerical", jvp_op, Jnv, "numerical")
    rows.compare("jvp", "jvp", "jacobian", jvp, jvp_J, "methods")
    return CheckReport(rows.rows)


# -- check_head -----------------------------------------------------------------------------


def _head_methods(head: Head) -> list[str]:
    if head.logits_loss:
        return ["fused"]
    return ["jacobian", "vjp", "operator"] + (["fused"] if head.fused_rule is not None else [])


def _prepare_targets(y, z: np.ndarray):
    y = np.array(y, copy=True)
    if y.dtype.kind == "f" or y.dtype.kind == "b":
        y = y.astype(z.dtype)
    y.flags.writeable = False
    return y


def check_head(head: Head, z=None, y=None, *, shape=DEFAULT_SHAPE, dtype=None, seed=0) -> CheckReport:
    """Check dE/dz of every method of a head against the others and a float64 reference.

    The reference is :func:`~jacobians.numerical_grad` of ``head.loss`` (the fused value
    where the pair has a rule) at ``z`` promoted to float64 — along a few random
    directions when ``z`` has more than 2048 entries. The methods are ``jacobian``,
    ``vjp``, ``operator`` (``dE/da @ act.jacobian_operator(z)``) and ``fused`` where a
    rule exists; a Fenchel–Young loss with its own mapping (``Sparsemax`` +
    ``SparsemaxLoss``) has only ``fused``. Rows::

        dE/dz:   <method> vs numerical,  <method> vs jacobian
        dE/dz·v: jvp vs numerical        (Σ dE/da · act.jvp(z, v) = Σ dE/dz · v)
        value:   <method> vs fused       (when there is a fused rule)

    Results must keep the dtype of ``z``; exceptions become failed rows.

    Parameters
    ----------
    head : Head
    z : array_like, shape (..., K), optional
        Logits; default: generated (:func:`example_inputs`).
    y : array_like, optional
        Targets in the loss's form; default: generated from ``loss.target_kind``.
    shape, dtype, seed
        As in :func:`check_activation`.

    Returns
    -------
    CheckReport

    Examples
    --------
    A loss whose gradient is off by a factor is caught:

    >>> import numpy as np
    >>> import jacobians as jac
    >>> class Off(jac.Loss):
    ...     def per_sample(self, a, y):
    ...         return ((a - y) ** 2).sum(axis=-1)
    ...     def per_sample_grad(self, a, y):
    ...         return 3 * (a - y)                           # should be 2 (a − y)
    >>> report = jac.check_head(jac.Head(jac.Tanh(), Off()))
    >>> report.passed, report.failures[0].compared
    (False, 'dE/dz: jacobian vs numerical')
    """
    _require(head, Head, "head")
    rng = np.random.default_rng(seed)
    loss = head.loss_fn
    if z is None:
        dt = np.dtype(np.float64) if dtype is None else _check_dtype(dtype)
        if y is not None:
            ya = np.asarray(y)
            shape = ya.shape + (_check_shape(shape)[-1],) if ya.dtype.kind in "iu" else ya.shape
        z, y = example_inputs(head, shape=shape, dtype=dt, seed=rng, y=y)
        kink = ""
    else:
        z = as_float_array(z, "z")
        if dtype is not None:
            z = z.astype(_check_dtype(dtype))
        if y is None:
            y = _make_targets(loss, z.shape, rng)
        dist, names = _head_distance(head, z.astype(np.float64), np.asarray(y))
        kink = _kink_note(names, dist)
    z = _readonly(z)
    y = _prepare_targets(y, z)
    dt = z.dtype
    rows = _Rows(_subject(head), dt, z.shape, kink)

    z64 = z.astype(np.float64)
    y64 = y.astype(np.float64) if y.dtype.kind == "f" else y
    v = _readonly(rng.normal(size=z.shape).astype(dt))
    full = z.size <= _FULL_GRAD_MAX

    def ref_loss(x):
        return np.sum(head.loss(x, y64))  # reduction 'none': each row's gradient is that of the sum

    # round-off of the finite differences scales with the loss: atol is relative to the
    # largest per-sample (or per-entry) loss
    per_sample = _safe_call(lambda: head.loss_fn.with_reduction("none")(
        z64 if head.logits_loss else head.activation(z64), y64))
    value64 = _safe_call(ref_loss, z64)
    sizes = [abs(float(value64))] if value64 is not None else []
    if per_sample is not None and np.size(per_sample) and np.isfinite(per_sample).all():
        sizes.append(float(np.abs(per_sample).max()))
    if sizes:
        rows.floors["numerical"] = max(sizes)
    if not head.logits_loss:
        rows.floors["methods"] = _chain_rule_scale(head, z64, y64)

    if full:
        ref = _run(lambda: numerical_grad(ref_loss, z64))
        directions = None
    else:
        directions = rng.normal(size=(_N_DIRECTIONS,) + z.shape)
        ref = _run(lambda: np.array([numerical_grad(lambda t, d=d: ref_loss(z64 + t[0] * d), np.zeros(1))[0]
                                     for d in directions]))

    def project(grad):
        if directions is None or isinstance(grad, _Failed):
            return grad
        grad = np.asarray(grad, dtype=np.float64)
        if grad.shape != z.shape:
            return _Failed(ValueError(f"dE/dz has shape {grad.shape}, expected {z.shape}"))
        return directions.reshape(len(directions), -1) @ grad.reshape(-1)

    what = "dE/dz" if full else f"dE/dz·v ({_N_DIRECTIONS} directions)"
    results = {}
    for method in _head_methods(head):
        if method == "operator":
            results[method] = _run(_operator_value_and_grad, head, z, y)
        else:
            results[method] = _run(head.value_and_grad, z, y, method)
    grads = {m: (r if isinstance(r, _Failed) else r[1]) for m, r in results.items()}

    for method, grad in grads.items():
        rows.compare(what, method, "numerical", project(grad), ref, "numerical", dtype_of=grad)
    first = next(iter(grads))
    for method, grad in grads.items():
        if method != first:
            rows.compare("dE/dz", method, first, grad, grads[first], "methods")

    if not head.logits_loss and full:
        # the JVP in the chain rule: Σ dE/da · (J v) = Σ dE/dz · v
        jvp_proj = _run(_jvp_projection, head, z, y, v)
        if isinstance(ref, _Failed):
            rows.compare("dE/dz·v", "jvp", "numerical", jvp_proj, ref, "numerical", dtype_of=None)
        else:
            prod = ref * v.astype(np.float64)
            rows.compare("dE/dz·v", "jvp", "numerical", jvp_proj, np.array(prod.sum()), "numerical",
                         dtype_of=None, scale=float(np.abs(prod).sum()))

    if "fused" in results and len(results) > 1:
        fused = results["fused"]
        for method, r in results.items():
            if method == "fused":
                continue
            val = r if isinstance(r, _Failed) else np.asarray(r[0])
            ref_val = fused if isinstance(fused, _Failed) else np.asarray(fused[0])
            rows.compare("value", method, "fused", val, ref_val, "methods", dtype_of=None,
                         floor=rows.floors["numerical"])
    return CheckReport(rows.rows)


def _chain_rule_scale(head: Head, z64, y64) -> float:
    """Size of the terms the chain rule adds up, ``max |dE/da| @ |J|`` (what round-off
    scales with); ``max |dE/da|`` when the dense Jacobian would be large."""
    with np.errstate(all="ignore"):
        dE_da = _safe_call(lambda: head.loss_fn.grad(head.activation(z64), y64))
        if dE_da is None or not np.size(dE_da) or not np.isfinite(dE_da).all():
            return 1.0
        dE_da = np.abs(np.asarray(dE_da, dtype=np.float64))
        if z64.size * z64.shape[-1] <= 4_000_000:
            J = _safe_call(head.activation.jacobian, z64)
            if J is not None and np.shape(J) == z64.shape + z64.shape[-1:] and np.isfinite(J).all():
                return float(_batched_vjp(dE_da, np.abs(J)).max())
        return float(dE_da.max())


def _operator_value_and_grad(head: Head, z, y):
    act, loss = head.activation, head.loss_fn
    value, g = loss.value_and_grad(act(z), y)
    return value, act.jacobian_operator(z).vjp(g)


def _jvp_projection(head: Head, z, y, v):
    act, loss = head.activation, head.loss_fn
    g = loss.grad(act(z), y)
    jv = act.jvp(z, v)
    return np.array((np.asarray(g, dtype=np.float64) * np.asarray(jv, dtype=np.float64)).sum())


# -- extreme logits -------------------------------------------------------------------------


def _reduce(loss, values, grads, denom):
    red = loss.reduction
    if red == "none":
        return values, grads
    if red == "sum":
        return values.sum(), grads
    return values.sum() / denom, grads / denom


def _onehot(idx, K):
    return np.eye(K)[idx]


def _class_closed_form(act, loss, z, y):
    """softmax/log-softmax + CE/KL/NLL at one-hot-separated logits: ``Σ c (z_max − z)/T``."""
    if getattr(loss, "weight", None) is not None or getattr(loss, "ignore_index", None) is not None:
        return None
    if getattr(loss, "label_smoothing", 0.0):
        return None
    T = getattr(act, "temperature", 1.0)
    K = z.shape[-1]
    y = np.asarray(y)
    c = _onehot(y, K) if y.shape == z.shape[:-1] else y.astype(np.float64)
    top = _onehot(z.argmax(axis=-1), K)
    zmax = z.max(axis=-1, keepdims=True)
    values = (c * (zmax - z)).sum(axis=-1) / T
    if isinstance(loss, KLDivergence) and y.shape == z.shape:
        with np.errstate(divide="ignore", invalid="ignore"):
            values = values + np.where(c > 0, c * np.log(np.where(c > 0, c, 1)), 0).sum(axis=-1)
    grads = (top * c.sum(axis=-1, keepdims=True) - c) / T
    return _reduce(loss, values, grads, values.size)


def _sigmoid_bce_closed_form(act, loss, z, y):
    """``relu(z) − y z (+ log 2 at z = 0)``, gradient ``step(z) − y`` (step(0) = 1/2)."""
    if loss.label_smoothing or loss.pos_weight is not None:
        return None
    y = np.asarray(y, dtype=np.float64)
    values = np.maximum(z, 0) - y * z + np.where(z == 0, np.log(2.0), 0.0)
    grads = np.where(z > 0, 1.0, np.where(z < 0, 0.0, 0.5)) - y
    return _reduce(loss, values, grads, values.size)


def _identity_mse_closed_form(act, loss, z, y):
    d = z - np.asarray(y, dtype=np.float64)
    return _reduce(loss, d * d, 2 * d, d.size)


def _fenchel_young_closed_form(act, loss, z, y):
    """Sparsemax/1.5-entmax are one-hot at gaps >= 2: value ``z_max − z_y``, grad ``e_max − e_y``."""
    y = np.asarray(y)
    if y.shape != z.shape[:-1]:
        return None
    K = z.shape[-1]
    c = _onehot(y, K)
    values = (c * (z.max(axis=-1, keepdims=True) - z)).sum(axis=-1)
    grads = _onehot(z.argmax(axis=-1), K) - c
    return _reduce(loss, values, grads, values.size)


#: (activation class, loss class) -> closed form ``(value, dE/dz)`` at :func:`extreme_inputs`
#: (None when the loss's parameters leave the closed form)
EXTREME_CLOSED_FORMS: dict[tuple[type, type], Callable] = {
    (Softmax, CrossEntropy): _class_closed_form,
    (Softmax, KLDivergence): _class_closed_form,
    (LogSoftmax, NLLLoss): _class_closed_form,
    (Sigmoid, BinaryCrossEntropy): _sigmoid_bce_closed_form,
    (Identity, MeanSquaredError): _identity_mse_closed_form,
    (Sparsemax, SparsemaxLoss): _fenchel_young_closed_form,
    (Entmax15, Entmax15Loss): _fenchel_young_closed_form,
}


def check_extreme(obj, z=None, y=None, *, shape=(2, 3, 5), dtype=np.float64, seed=0) -> CheckReport:
    """Check an activation or head at logits of ±1e4 (:func:`extreme_inputs`).

    Finite differences say nothing there, so: every method's output must be finite
    (and keep the dtype), an activation's VJP/JVP must agree with its Jacobian, and a
    fused rule must match the pair's closed form (:data:`EXTREME_CLOSED_FORMS`) in value
    and gradient. The separate path (``vjp``/``jacobian``) of a loss of probabilities
    reads an underflowed ``a = 0`` as ``max(a, tiny)``: it is checked for finiteness
    only — the fused rule is the exact one.

    Examples
    --------
    >>> import jacobians as jac
    >>> check_extreme(jac.Head(jac.Softmax(), jac.CrossEntropy()), dtype="float32").passed
    True
    """
    is_head = isinstance(obj, Head)
    if not is_head:
        _require(obj, Activation, "obj")
    if z is None:
        gen = extreme_inputs(obj, shape=shape, dtype=dtype, seed=seed)
        z, y_gen = gen if is_head else (gen, None)
        y = y_gen if y is None else y
    z = _readonly(as_float_array(z, "z"))
    dt = z.dtype
    rows = _Rows(_subject(obj) + " (±1e4)", dt, z.shape)
    rng = np.random.default_rng(seed)
    if not is_head:
        act = obj
        g = rng.normal(size=z.shape).astype(dt)
        v = rng.normal(size=z.shape).astype(dt)
        J = _run(act.jacobian, z)
        rows.finite("a", "forward", _run(act, z))
        rows.finite("J", "jacobian", J)
        op = _run(act.jacobian_operator, z)
        rows.finite("J", "operator", op if isinstance(op, _Failed) else _run(op.dense))
        vjp, jvp = _run(act.vjp, z, g), _run(act.jvp, z, v)
        rows.finite("vjp", "vjp", vjp)
        rows.finite("jvp", "jvp", jvp)
        rows.compare("vjp", "vjp", "jacobian", vjp, J if isinstance(J, _Failed) else _run(_batched_vjp, g, J), "methods")
        rows.compare("jvp", "jvp", "jacobian", jvp, J if isinstance(J, _Failed) else _run(_batched_jvp, J, v), "methods")
        return CheckReport(rows.rows)

    head = obj
    y = _prepare_targets(y, z)
    results = {}
    for method in _head_methods(head):
        if method == "operator":
            results[method] = _run(_operator_value_and_grad, head, z, y)
        else:
            results[method] = _run(head.value_and_grad, z, y, method)
    for method, r in results.items():
        value, grad = (r, r) if isinstance(r, _Failed) else (np.asarray(r[0]), r[1])
        rows.finite("value", method, value if isinstance(value, _Failed) else value.astype(dt))
        rows.finite("dE/dz", method, grad)
    closed = EXTREME_CLOSED_FORMS.get((type(head.activation), type(head.loss_fn)))
    if closed is not None and "fused" in results:
        yc = y.astype(np.float64) if y.dtype.kind == "f" else y
        expected = _run(closed, head.activation, head.loss_fn, z.astype(np.float64), yc)
        if expected is not None:
            fused = results["fused"]
            exp_val = expected if isinstance(expected, _Failed) else np.asarray(expected[0])
            exp_grad = expected if isinstance(expected, _Failed) else expected[1]
            val = fused if isinstance(fused, _Failed) else np.asarray(fused[0])
            grad = fused if isinstance(fused, _Failed) else fused[1]
            rows.compare("value", "fused", "closed form", val, exp_val, "closed_form", dtype_of=None)
            rows.compare("dE/dz", "fused", "closed form", grad, exp_grad, "closed_form")
    return CheckReport(rows.rows)
