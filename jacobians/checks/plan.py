"""The plan of ``python -m jacobians check``: its rows, the checks each row runs, and
the engine that runs them side by side (parsing and printing stay in
:mod:`jacobians.cli`).

A row (:class:`Entry`) is an activation alone or an (activation, loss) pair, with its
defaults or one variant of a class (:func:`plan_entries`). Each row runs, for each
order asked for, the checks of :func:`jacobians.check_activation` /
:func:`~jacobians.check_head` (first order) or the second-order checks, on every
shape of :data:`SHAPES` and dtype, plus logits of ±1e4 (:data:`EXTREME_SHAPE`)
(:func:`run_entry`). :func:`run_sections` runs the rows of each section on forked
workers (:class:`jacobians.numerics.parallel.ForkedTasks`); :func:`time_entry` times the fused
path against the Jacobian path.
"""

from __future__ import annotations

import itertools
import statistics
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import checks
from ..activations import ACTIVATIONS
from ..head import Head, pairs
from ..losses import LOSSES
from ..numerics import memo, parallel
from .inputs import make_targets, reuse_inputs
from .report import CheckReport, CheckRow, label

__all__ = [
    "SHAPES",
    "EXTREME_SHAPE",
    "REPEATS",
    "LABEL_K",
    "MC_SAMPLES",
    "Entry",
    "default_instance",
    "options",
    "variant_labels",
    "plan_entries",
    "run_entry",
    "run_sections",
    "time_entry",
    "time_entries",
    "load_kernels",
    "cpu_seconds",
]

#: shapes of the generated inputs of ``check`` (the last one is a single sample)
SHAPES = ((6, 5), (2, 3, 4), (4, 10), (7,))
#: shape of the ±1e4 logits
EXTREME_SHAPE = (2, 3, 5)
#: timed calls per method (median reported), after one warm-up call each
REPEATS = 5
#: number of classes the rows' labels and method lists are read from
LABEL_K = 5
#: draws of the Monte-Carlo Fisher in the second-order checks
MC_SAMPLES = 500


def default_instance(cls):
    """``cls()``, or None when the class needs arguments."""
    try:
        return cls()
    except TypeError:
        return None


@dataclass
class Entry:
    """One row of the table: an activation alone, or a pair, with its parameters.

    ``build(K)`` makes the object for inputs of K classes (class weights are shaped by
    K); ``activation`` and ``loss`` are the registry names (what ``--only`` selects).
    """

    activation: str
    loss: str | None
    build: Callable[[int], object]
    label: str = ""
    report: CheckReport = field(default_factory=CheckReport)
    t_fused: float | None = None
    t_jacobian: float | None = None
    timing_note: str = ""

    def __post_init__(self):
        self.obj = self.build(LABEL_K)
        self.label = self.label or label(self.obj)

    orders: tuple = (1, 2)

    @property
    def methods(self) -> list[str]:
        out = []
        if 1 in self.orders:
            out += self._first_order()
        if 2 in self.orders:
            out += ["H: " + ", ".join(self._second_order())]
        return out

    def _first_order(self) -> list[str]:
        if self.loss is None:
            return ["jacobian", "operator", "vjp", "jvp"]
        head = self.obj
        if head.logits_loss:
            return ["fused"]
        return ["jacobian", "vjp", "operator", "jvp"] + (
            ["fused"] if head.fused_rule is not None else []
        )

    def _second_order(self) -> list[str]:
        if self.loss is None:
            return ["hessian", "hessian_vjp"]
        head = self.obj
        methods = [] if head.hessian_rule is None else ["fused"]
        if not head.logits_loss:
            methods.append("chain")
        extra = ["hvp", "ggn", "sqrt"]
        if (
            getattr(head.loss_fn, "predictive", None) is not None
            and not head.logits_loss
        ):
            extra.append("fisher")
        return methods + extra

    @property
    def timed(self) -> bool:
        default = "(" not in self.label  # the fused speed-up is timed once per pair
        return (
            default
            and self.loss is not None
            and self.obj.fused_rule is not None
            and not self.obj.logits_loss
        )

    @property
    def speedup(self) -> float | None:
        if self.t_fused and self.t_jacobian:
            return self.t_jacobian / self.t_fused
        return None


def options(cls) -> list[Callable[[int], dict]]:
    """The keyword sets of a class's checks, as functions of K: the defaults, then each
    of ``cls.variants(K)``."""
    n = len(cls.variants(LABEL_K))
    return [lambda K: {}] + [lambda K, i=i: cls.variants(K)[i] for i in range(n)]


def variant_labels() -> list[str]:
    """Labels of the non-default instances that ``check`` runs (listed by ``list``)."""
    return [
        label(cls(**opt(LABEL_K)))
        for reg in (ACTIVATIONS, LOSSES)
        for cls in reg.values()
        for opt in options(cls)[1:]
    ]


def plan_entries(only) -> tuple[list[Entry], list[str]]:
    """The rows to check (filtered by --only) and the classes skipped (need arguments).

    Every activation alone, with its defaults and with each of its variants; every valid
    pair with both defaults, then with each variant of the activation (default loss) and
    each variant of the loss (default activation).
    """
    acts, losses = only if only is not None else (None, None)
    entries, skipped = [], []
    for name, cls in ACTIVATIONS.items():
        if default_instance(cls) is None:
            skipped.append(name)
            continue
        if acts is None or name in acts:
            entries += [
                Entry(name, None, lambda K, c=cls, o=opt: c(**o(K)))
                for opt in options(cls)
            ]
    skipped += [name for name, cls in LOSSES.items() if default_instance(cls) is None]
    # every valid pair of pairs(), and a pair whose defaults refuse each other but whose
    # variants pair (Exp + PoissonNLL(log_input=False)): _combos finds the rows of both
    listed = {(p.activation, p.loss) for p in pairs()}
    for aname, lname in itertools.product(ACTIVATIONS, LOSSES):
        acls, lcls = ACTIVATIONS[aname], LOSSES[lname]
        if (aname, lname) not in listed and (default_instance(acls) is None or default_instance(lcls) is None):
            continue
        if only is not None and not ((not acts or aname in acts) and (not losses or lname in losses)):
            continue
        for aopt, lopt in _combos(acls, lcls):

            def build(K, aopt=aopt, lopt=lopt, acls=acls, lcls=lcls):
                m = max(int(getattr(c, "width_multiple", 1)) for c in (acls, lcls))
                K += -K % m  # the width the inputs get (inputs.fit_width): per-class options of that K
                return Head(acls(**aopt(K)), lcls(**lopt(K)))

            entries.append(Entry(aname, lname, build))
    return entries, skipped


def _combos(acls, lcls) -> list[tuple]:
    """The (activation options, loss options) of a pair's rows: each activation variant
    with the default loss and each loss variant with the default activation. A variant
    that its default partner refuses (``Entmax(alpha=3.0)`` and the default
    ``EntmaxLoss()``: their α differ) is paired instead with each variant of the partner
    that accepts it; a variant that leaves the pair's domain has no row."""
    A, L = options(acls), options(lcls)

    def valid(a, lo) -> bool:
        try:
            Head(acls(**a(LABEL_K)), lcls(**lo(LABEL_K)))
        except ValueError:
            return False
        return True

    out = []
    for a in A:
        out += (
            [(a, L[0])] if valid(a, L[0]) else [(a, lo) for lo in L[1:] if valid(a, lo)]
        )
    for lo in L[1:]:
        partners = [A[0]] if valid(A[0], lo) else [a for a in A[1:] if valid(a, lo)]
        out += [(a, lo) for a in partners if (a, lo) not in out]
    return out


def _seed(seed: int, label: str, *more: int) -> np.random.SeedSequence:
    """Inputs depend on the row's name, not on its position: --only reproduces them."""
    return np.random.SeedSequence([seed, zlib.crc32(label.encode()), *more])


def _guarded(entry: Entry, dtype: str, shape, fn) -> CheckReport:
    try:
        return fn()
    except (
        Exception
    ) as exc:  # e.g. inputs could not be generated: a failed row, not a crash
        row = CheckRow(
            entry.label,
            dtype,
            tuple(shape),
            "setup",
            "check",
            "inputs",
            None,
            None,
            None,
            0.0,
            0.0,
            False,
            f"raised {type(exc).__name__}: {' '.join(str(exc).split())}",
        )
        return CheckReport([row])


def _checks(entry: Entry, orders) -> list[tuple[Callable, Callable | None]]:
    """``(check on generated inputs, check at ±1e4 or None)`` for each order asked for
    (looked up on :mod:`jacobians.checks` when the row runs)."""
    out = []
    if 1 in orders:
        out.append(
            (
                checks.check_activation if entry.loss is None else checks.check_head,
                checks.check_extreme,
            )
        )
    if 2 in orders:
        if entry.loss is None:
            out.append((checks.check_activation_second_order, None))
        else:

            def second(obj, **kw):
                return checks.check_second_order(obj, mc_samples=MC_SAMPLES, **kw)

            out.append((second, checks.check_second_order_extreme))
    return out


def run_entry(entry: Entry, dtypes, seed: int, orders=(1, 2)) -> dict:
    """The checks of each order of one row, every dtype and shape (and ±1e4 logits):
    ``{order: (CheckReport, CPU seconds)}``. Every order checks the same objects on the
    same inputs, drawn once, and the methods' forward passes over one input are solved
    once (:func:`~jacobians.numerics.memo.memo`)."""
    plan = _checks(entry, orders)
    out = {}
    with memo.memo(), reuse_inputs():
        built = {}
        for order, (run, extreme) in zip(orders, plan):
            t0 = time.process_time()
            report = _run_checks(entry, dtypes, seed, run, extreme, built)
            out[order] = (report, time.process_time() - t0)
    return out


def _run_checks(entry: Entry, dtypes, seed: int, run, extreme, built: dict) -> CheckReport:
    """One order's checks of a row (:func:`run_entry`); ``built``: K -> the row's object,
    built once for every order (the inputs drawn for it are reused)."""

    def build(K):
        if K not in built:
            built[K] = entry.build(K)
        return built[K]

    report = CheckReport()
    for di, dt in enumerate(dtypes):
        for si, shape in enumerate(SHAPES):
            s = _seed(seed, entry.label, di, si)
            report += _guarded(
                entry, dt, shape,
                lambda shape=shape, dt=dt, s=s: run(
                    build(shape[-1]), shape=shape, dtype=dt, seed=s),
            )
        if extreme is not None:
            s = _seed(seed, entry.label, di, len(SHAPES))
            report += _guarded(
                entry, dt, EXTREME_SHAPE,
                lambda dt=dt, s=s: extreme(
                    build(EXTREME_SHAPE[-1]), shape=EXTREME_SHAPE, dtype=dt, seed=s),
            )
    return report


def time_entry(entry: Entry, n: int, k: int, dtype: str, seed: int) -> None:
    """Median time of head.grad with method='fused' and 'jacobian', called
    alternately."""
    head = entry.build(k)
    rng = np.random.default_rng(_seed(seed, entry.label, 99))
    z = rng.normal(scale=1.5, size=(n, k)).astype(dtype)
    y = make_targets(head.loss_fn, (n, k), rng)
    if y.dtype.kind == "f":
        y = y.astype(dtype)
    try:
        head.grad(z, y, "fused")
        head.grad(z, y, "jacobian")
        tf, tj = [], []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            head.grad(z, y, "fused")
            t1 = time.perf_counter()
            head.grad(z, y, "jacobian")
            t2 = time.perf_counter()
            tf.append(t1 - t0)
            tj.append(t2 - t1)
        entry.t_fused, entry.t_jacobian = statistics.median(tf), statistics.median(tj)
    except (
        Exception
    ) as exc:  # timing is informational; the checks above decide pass/fail
        entry.timing_note = f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def load_kernels() -> None:
    """Load the compiled kernels (numba's, from its cache) in this process before the
    workers fork: each worker would otherwise import numba and load them again on first
    use. A few calls of every fused pair in both dtypes, on writable and read-only
    inputs (each a signature of its own); nothing is kept but the loaded code."""
    from .. import _kernels

    if _kernels.kernels() != "numba":
        return
    rng = np.random.default_rng(0)
    # every pair with a fused rule (the kernels' callers), its loss with each variant
    heads = []
    for p in pairs():
        lcls = LOSSES[p.loss]
        for kw in [{}] + lcls.variants(4) if p.fused else []:
            try:
                heads.append(Head(ACTIVATIONS[p.activation](), lcls(**kw)))
            except (
                ValueError
            ):  # a variant that does not pair with the default activation
                continue
    acts = [
        a
        for a in (default_instance(cls) for cls in ACTIVATIONS.values())
        if a is not None
    ]
    for dt in (np.float64, np.float32):
        z = rng.normal(size=(3, 4)).astype(dt)
        frozen = z.copy()
        frozen.flags.writeable = False
        for x, y_writeable in itertools.product(
            (z, frozen), (True, False)
        ):  # each a signature
            for head in heads:
                y = make_targets(head.loss_fn, x.shape, rng)
                y = y.astype(dt) if y.dtype.kind == "f" else y
                y.flags.writeable = y_writeable
                try:
                    for method in ("fused", "jacobian"):
                        head.value_and_grad(x, y, method)
                    head.hessian(x, y)
                except (
                    Exception
                ):  # loading is an optimization: a failure here shows in the checks
                    pass
            for act in acts:
                for g in (z, frozen):
                    try:
                        act.vjp(x, g)
                    except Exception:
                        pass


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished workers."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on a POSIX system
        return time.process_time()
    return sum(
        u.ru_utime + u.ru_stime
        for u in (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
    )


def run_sections(
    entries: list[Entry],
    dtypes,
    orders,
    seed: int,
    jobs: int,
    say: Callable[[str], None],
) -> None:
    """Run every row's checks of each order (:func:`run_entry`: one task a row, its orders
    on the same inputs), the activations then the pairs, on ``jobs`` forked processes,
    adding each row's reports to ``entry.report``; ``say`` gets a progress line per
    section (order and kind) with the CPU seconds its checks took over every process."""
    names = {1: "first order", 2: "second order"}
    kinds = [
        (kind, [e for e in entries if keep(e)])
        for kind, keep in (
            ("activations", lambda e: e.loss is None),
            ("pairs", lambda e: e.loss is not None),
        )
    ]
    kinds = [(kind, part) for kind, part in kinds if part]
    tasks = [
        lambda e=e: run_entry(e, dtypes, seed, orders) for _, part in kinds for e in part
    ]
    with parallel.ForkedTasks(tasks, jobs) as pool:
        first = 0
        for kind, part in kinds:
            results = pool.run(range(first, first + len(part)))
            first += len(part)
            for entry, result in zip(part, results):
                for order in orders:
                    entry.report += result[order][0]
            for order in orders:
                reports = [r[order][0] for r in results]
                n = sum(len(r) for r in reports)
                failed = sum(len(r.failures) for r in reports)
                cpu = sum(r[order][1] for r in results)
                say(
                    f"  {names[order]}, {kind}: {len(part)} rows, {n} comparisons, "
                    f"{failed} failed, CPU {cpu:.1f} s"
                )


def time_entries(
    entries: list[Entry],
    n: int,
    k: int,
    dtype: str,
    seed: int,
    say: Callable[[str], None],
) -> None:
    """:func:`time_entry` for each row that is timed (:attr:`Entry.timed`), one after
    the other."""
    timed = [e for e in entries if e.timed]
    if timed:
        t0 = time.perf_counter()
        for entry in timed:
            time_entry(entry, n, k, dtype, seed)
        took = time.perf_counter() - t0
        say(f"  fused speed-up: {len(timed)} pairs timed, N={n} K={k}, {took:.1f} s")
