"""The report of a check: one row per comparison, and the machinery that fills it."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ..head import Head
from ..registry import registry_name

#: (rtol, atol) by dtype of the inputs and kind of comparison (see :mod:`jacobians.checks`)
TOLERANCES: dict[str, dict[str, tuple[float, float]]] = {
    "float64": {"numerical": (1e-6, 1e-8), "methods": (1e-10, 1e-13), "closed_form": (1e-12, 1e-12)},
    "float32": {"numerical": (2e-4, 1e-6), "methods": (2e-4, 1e-6), "closed_form": (1e-6, 1e-6)},
}




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
        if self.reference in ("finite", "PSD", "symmetric"):
            return f"{self.quantity}: {self.method} is {self.reference}"
        return f"{self.quantity}: {self.method} vs {self.reference}"

    @property
    def err_over_tol(self) -> float | None:
        """``max_abs / allowed``: the error against this comparison's own tolerance (≤ 1
        passes); None for a row without a number (finiteness, an exception)."""
        if self.max_abs is None or self.allowed is None:
            return None
        if self.allowed > 0:
            return self.max_abs / self.allowed
        return 0.0 if self.max_abs == 0 else math.inf

    @property
    def statistical(self) -> bool:
        """True for the Monte-Carlo Fisher, whose tolerance is a number of standard errors
        of its draws rather than round-off: its relative error is large by design."""
        return self.quantity == "F" and self.method == "mc"

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (non-finite numbers become None)."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        for key in ("max_abs", "max_rel", "allowed", "rtol", "atol"):
            d[key] = json_float(d[key])
        d["err_over_tol"] = json_float(self.err_over_tol)
        d["compared"] = self.compared
        return d


def json_float(x):
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass
class CheckReport:
    """The rows of one or more checks; see :func:`check_activation`.

    ``report.passed`` is True when every row passed; ``str(report)`` is a table;
    ``report.raise_if_failed()`` raises ``AssertionError`` with that table;
    ``report.to_dict()`` is JSON-serialisable. Reports add up: ``r1 + r2``.

    ``report.missing`` lists, one line each, the classes checked that carry no plain
    reference (``loop_reference``, see :class:`~jacobians.Activation` and
    :class:`~jacobians.Loss`), so that no row compares them with a plain loop; the table
    prints them below it. They do not make the report fail.

    Examples
    --------
    >>> import jacobians as jac
    >>> report = jac.check_activation(jac.Sigmoid(), shape=(3, 4))
    >>> print(report.rows[0].compared, report.rows[0].passed)
    J: jacobian vs numerical True
    >>> report.raise_if_failed()       # nothing happens: every row passed
    """

    rows: list[CheckRow] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every row passed (and there is at least one row)."""
        return bool(self.rows) and all(r.passed for r in self.rows)

    @property
    def failures(self) -> list[CheckRow]:
        """The rows that failed."""
        return [r for r in self.rows if not r.passed]

    def max_rel(self, dtype: str | None = None, *, statistical: bool = True) -> float | None:
        """The largest relative error over the rows (of ``dtype``; without the Monte-Carlo
        rows when ``statistical`` is False), or None."""
        errs = [r.max_rel for r in self.rows if r.max_rel is not None and (dtype is None or r.dtype == dtype)
                and (statistical or not r.statistical)]
        return max(errs) if errs else None

    def max_err_over_tol(self, dtype: str | None = None) -> float | None:
        """The largest error against its own tolerance over the rows (of ``dtype``), or
        None: ≤ 1 when every comparison with a number passed."""
        errs = [r.err_over_tol for r in self.rows if r.err_over_tol is not None and (dtype is None or r.dtype == dtype)]
        return max(errs) if errs else None

    def __add__(self, other: CheckReport) -> CheckReport:
        if not isinstance(other, CheckReport):
            return NotImplemented
        return CheckReport(self.rows + other.rows,
                           self.missing + [m for m in other.missing if m not in self.missing])

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
        """``{'passed': bool, 'rows': [row dicts], 'missing': [str]}``, JSON-serialisable."""
        return {"passed": self.passed, "rows": [r.to_dict() for r in self.rows], "missing": list(self.missing)}

    def to_json(self, **kwargs) -> str:
        """``json.dumps(self.to_dict())``."""
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        missing = [""] + [f"missing: {m}" for m in self.missing] if self.missing else []
        return "\n".join([format_rows(self.rows)] + missing)

    def __repr__(self) -> str:
        return f"<CheckReport: {len(self.rows)} rows, {len(self.failures)} failed>"


def _fmt_err(x) -> str:
    if x is None:
        return "—"
    if math.isnan(x):
        return "nan"
    return f"{x:.1e}"


def fmt_ratio(x) -> str:
    """An error over its tolerance: two decimals (``'0.03'``, ``'1.20'``), ``'—'`` for None."""
    if x is None:
        return "—"
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf"
    return f"{x:.2f}" if x < 100 else f"{x:.1e}"


def fmt_shape(shape) -> str:
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
    header = ["subject", "dtype", "shape", "compared", "max abs err", "allowed", "max rel err", "err/tol", "result"]
    body = [
        [r.subject, r.dtype, fmt_shape(r.shape), r.compared, _fmt_err(r.max_abs), _fmt_err(r.allowed),
         _fmt_err(r.max_rel), fmt_ratio(r.err_over_tol), "ok" if r.passed else "FAIL"]
        for r in rows
    ]
    out = format_table(header, body, right={4, 5, 6, 7})
    groups: dict[tuple, list[str]] = {}
    for r in rows:
        if r.note and not r.passed:
            groups.setdefault((r.subject, r.dtype, fmt_shape(r.shape), r.note), []).append(r.compared)
    if groups:
        out.append("")
        out += [f"FAIL {subj} {dt} {shape} [{', '.join(what)}]: {note}" for (subj, dt, shape, note), what in groups.items()]
    n_fail = sum(not r.passed for r in rows)
    out.append("")
    out.append(f"{len(rows)} checks, {n_fail} failed" if n_fail else f"{len(rows)} checks, all passed")
    return "\n".join(out)




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
        self._dtype_name = self.dtype.name  # read for every row (numpy computes it each time)
        self.kink_note = kink_note
        self.rows: list[CheckRow] = []
        # what atol is relative to, per kind of comparison (see _floors)
        self.floors = {"numerical": 1.0, "methods": 1.0, "closed_form": 1.0}

    def _add(self, quantity, method, reference, max_abs, max_rel, tol, passed, note="", allowed=None):
        if not passed and self.kink_note and not note.startswith("raised"):
            note = f"{note}; {self.kink_note}" if note else self.kink_note
        self.rows.append(
            CheckRow(self.subject, self._dtype_name, self.shape, quantity, method, reference,
                     max_abs, max_rel, allowed, tol[0], tol[1], bool(passed), note)
        )

    def tol(self, kind: str, floor: float | None = None) -> tuple[float, float]:
        """``(rtol, atol)`` for ``kind``, with atol scaled by the comparison's noise floor."""
        rtol, atol = TOLERANCES[self._dtype_name][kind]
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
        r64 = ref.astype(np.float64, copy=False)
        with np.errstate(all="ignore"):
            diff = np.abs(x.astype(np.float64, copy=False) - r64)
            max_abs = float(diff.max()) if diff.size else 0.0
            ref_max = float(np.abs(r64).max()) if ref.size else 0.0
        scale = ref_max if scale is None else scale
        # both finite when max |ref| and max |x − ref| are (else look: NaN, ±inf, or an overflow)
        for val, who in () if math.isfinite(max_abs) and math.isfinite(ref_max) else ((x, method), (ref, reference)):
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


def label(obj) -> str:
    """The registry name of an activation or loss, with the parameters that differ from its
    class's defaults: ``'softmax(temperature=0.5)'``, ``'cross_entropy(weight)'`` (arrays
    show by name); a head is ``'<activation> + <loss>'``.

    Examples
    --------
    >>> import jacobians as jac
    >>> label(jac.Head(jac.Softmax(temperature=2.0), jac.CrossEntropy(reduction="sum")))
    "softmax(temperature=2.0) + cross_entropy(reduction='sum')"
    """
    if isinstance(obj, Head):
        return f"{label(obj.activation)} + {label(obj.loss_fn)}"
    try:
        default = vars(type(obj)())
    except TypeError:
        default = {}
    params = []
    for key, value in vars(obj).items():
        if key.startswith("_"):
            continue
        if key in default and _same(value, default[key]):
            continue
        params.append(key if isinstance(value, np.ndarray) else f"{key}={value!r}")
    name = registry_name(type(obj))
    return f"{name}({', '.join(params)})" if params else name


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    return a == b


_subject = label


def _require(obj, cls, name):
    if isinstance(obj, type) and issubclass(obj, cls):
        raise TypeError(f"{name} must be an instance; got the class {obj.__name__} (write {obj.__name__}())")
    if not isinstance(obj, cls):
        raise TypeError(f"{name} must be a jacobians.{cls.__name__} instance; got {type(obj).__name__}")


def _batched_vjp(g, J):
    return np.einsum("...i,...ij->...j", g, J)


def _batched_jvp(J, v):
    return np.einsum("...ij,...j->...i", J, v)


def _safe_call(fn, *args):
    try:
        with np.errstate(all="ignore"):
            return fn(*args)
    except Exception:
        return None


