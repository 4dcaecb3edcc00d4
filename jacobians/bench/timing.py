"""The timing of ``python -m jacobians bench``: the cases of a group, their interleaved
rounds and the ratios of each row to the group's limit and reference columns.

A suite (the repository's ``benchmarks/suite.py``) builds :class:`Group` s of
:class:`Case` s; :func:`run_group` times one group and returns one record per case (the
records the tables of :mod:`jacobians.bench.tables` and ``--json`` show).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["Case", "Group", "run_group"]


@dataclass
class Case:
    """One measured thing in a group.

    Attributes
    ----------
    name : str
        Row label, e.g. ``"act.jacobian(z)"``.
    fn : callable, optional
        The call to time (its result is discarded). Either ``fn`` or ``measure``.
    kind : {'ours', 'limit', 'peer', 'ref'}
        ``'ref'``: one of ours measured again as a column to compare our other rows with.
    column : str, optional
        For limits and peers: the column its ratios appear under (e.g. ``"torch vmap(jacrev)"``).
        Defaults to ``name``.
    limit : str, optional
        For our rows: the column of the limit to compare with (default: the group's first).
    targets : dict, optional
        ``{column: max ratio}``; the run reports each as met or not met.
    measure : callable, optional
        ``measure(rounds) -> {"times": [...], **extra}`` for cases timed elsewhere (in a
        subprocess, say); the extra items are reported with the row.
    """

    name: str
    fn: Callable[[], Any] | None = None
    kind: str = "ours"
    column: str | None = None
    limit: str | None = None
    targets: dict[str, float] = field(default_factory=dict)
    measure: Callable[[int], dict] | None = None

    @property
    def key(self) -> str:
        return self.column or self.name


@dataclass
class Group:
    """Cases measured side by side: one section, one size and dtype.

    ``build()`` makes the data and returns the cases (called when the group runs, so
    that only one group's arrays are alive at a time); ``context()`` is entered around
    the whole group (e.g. torch limited to one thread).
    """

    section: str
    size: str
    dtype: str
    build: Callable[[], list[Case]]
    context: Callable[[], contextlib.AbstractContextManager] | None = None
    note: str = ""
    #: also give the ``'ref'`` rows their ratios to the group's other reference columns
    #: (e.g. a 1-worker row shown against numpy while being the column of ×1 worker)
    ref_ratios: bool = False
    #: seconds of untimed calls of each case right before each of its timed calls (at
    #: least one call; 0: none), so that no case pays for what the one run before it left
    #: behind (see :func:`run_group`)
    warm: float = 0.0



def _time_once(fn) -> float:
    t0 = time.perf_counter()
    result = fn()
    t = time.perf_counter() - t0
    del result
    return t


def _warm_up(fn, seconds: float) -> None:
    """Call ``fn`` (untimed) until ``seconds`` have passed, at least once."""
    end = time.perf_counter() + seconds
    while True:
        fn()
        if time.perf_counter() >= end:
            return


def run_group(cases: list[Case], *, budget: float, min_rounds: int, max_rounds: int, tick=lambda: None,
              ref_ratios: bool = False, warm: float = 0.0) -> list[dict]:
    """Time the cases of one group side by side; returns one record per case.

    Each timed case is called once to warm up (JIT compilation, first-touch of its
    buffers), and once more unless that took over a second; the last warm-up call sets its
    number of rounds (about ``budget`` seconds, within ``[min_rounds, max_rounds]``; 3
    for a case slower than five budgets). The
    cases then run in interleaved rounds, in a new (seeded) random order each round, so
    that neither a busy moment of the machine nor the case run just before favours one.
    With ``warm`` > 0, each timed call follows untimed calls of the same case for at least
    ``warm`` seconds, so that each case is timed in its own steady state and pays nothing for
    what the case before it left running. torch on several threads leaves its OpenMP workers
    spinning on the other cores after each parallel region: on a 2-core machine our
    two-thread kernel's first two calls after a torch forward + backward took 1.3× and 2.6×
    its steady time (the third and later 1.0–1.1×), and torch right after ours 1.3× its own.
    Without ``warm``, each timed call follows whichever case the round's order put before it.
    With ``ref_ratios`` the ``'ref'`` rows also get their ratios to the other reference columns.
    """
    timed = [c for c in cases if c.fn is not None]
    times: dict[int, list[float]] = {id(c): [] for c in cases}
    rounds: dict[int, int] = {}
    for c in timed:
        t = _time_once(c.fn)
        if t < 1.0:
            t = _time_once(c.fn)
        lo = min_rounds if t <= 5 * budget else min(3, min_rounds)  # very slow peers: 3 rounds
        rounds[id(c)] = int(min(max_rounds, max(lo, math.ceil(budget / max(t, 1e-9)))))
    order = np.random.default_rng(0)
    for r in range(max(rounds.values(), default=0)):
        for i in order.permutation(len(timed)):
            c = timed[i]
            if r < rounds[id(c)]:
                if warm > 0:
                    _warm_up(c.fn, warm)
                times[id(c)].append(_time_once(c.fn))
        tick()
    records = []
    for c in cases:
        extra = {}
        if c.fn is None and c.measure is not None:
            out = dict(c.measure(min_rounds))
            times[id(c)] = list(out.pop("times"))
            extra = out
            tick()
        ts = times[id(c)]
        records.append(
            {
                "case": c.name,
                "kind": c.kind,
                "column": c.key,
                "limit": c.limit,
                "targets": dict(c.targets),
                "median_s": float(np.median(ts)) if ts else float("nan"),
                "min_s": float(np.min(ts)) if ts else float("nan"),
                "rounds": len(ts),
                "times_s": [float(t) for t in ts],
                **({"extra": extra} if extra else {}),
            }
        )
    _add_ratios(records, ref_ratios)
    return records


def _add_ratios(records: list[dict], ref_ratios: bool = False) -> None:
    refs = {r["column"]: r["median_s"] for r in records if r["kind"] in ("limit", "peer", "ref")}
    limits = [r["column"] for r in records if r["kind"] == "limit"]
    for r in records:
        ratios = {}
        if r["kind"] != "limit" and limits:
            lim = r["limit"] or limits[0]
            if lim in refs:
                ratios["limit"] = r["median_s"] / refs[lim]
        if r["kind"] == "ours" or (ref_ratios and r["kind"] == "ref"):
            for col, ref in refs.items():
                if col not in limits and col != r["column"]:
                    ratios[col] = r["median_s"] / ref
        if r["kind"] == "ours":
            r["target_results"] = [
                {"vs": col, "max": mx, "ratio": ratios.get(col), "met": (ratios.get(col) is not None and ratios[col] <= mx)}
                for col, mx in r["targets"].items()
                if col in ratios
            ]
        r["ratios"] = ratios

