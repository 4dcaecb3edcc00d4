"""``python -m jacobians bench``: run the benchmark suite and print one table per section.

The runner lives here, in the package (numpy only): argument parsing, timing, ratios,
tables, ``--json``, the progress bar. The suite itself — what is measured, the machine
limits and the peers (torch, JAX, autograd, BackPACK, the seed's numpy recipes, per-sample
loops) — lives in the repository's ``benchmarks/`` folder, which a wheel does not install:
peers are optional heavy packages and have no place in the runtime package. The runner finds the
suite with ``--suite DIR``, else ``$JACOBIANS_BENCHMARKS``, else the ``benchmarks/`` folder
beside the package's source tree (a clone with an editable install), else
``./benchmarks``; otherwise it says so and exits with status 2.

Timing: every case of a group (one size and dtype) is warmed up, then the cases run in
interleaved rounds (one call each per round) so that a busy moment of the machine hits
them alike; the figure reported is the median. Each ratio is this row's median over the
column's median in the same run (below 1: this row is faster).

Examples
--------
>>> from jacobians.bench import format_seconds, parse_args
>>> format_seconds(0.00123)
'1.23 ms'
>>> parse_args(["--quick", "--peers", "none"]).quick
True
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["Case", "Group", "main", "parse_args", "find_suite", "run_group", "format_seconds", "SuiteNotFound"]

PROG = "python -m jacobians bench"


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


class SuiteNotFound(RuntimeError):
    """The benchmark suite (the repository's ``benchmarks/`` folder) was not found."""


# -- the suite ------------------------------------------------------------------------------


def find_suite(path: str | os.PathLike | None = None) -> Path:
    """The folder holding ``suite.py``: ``path``, ``$JACOBIANS_BENCHMARKS``, the
    ``benchmarks/`` beside the package's source tree, or ``./benchmarks``."""
    candidates = []
    if path is not None:
        candidates.append(Path(path))
    elif os.environ.get("JACOBIANS_BENCHMARKS"):
        candidates.append(Path(os.environ["JACOBIANS_BENCHMARKS"]))
    else:
        candidates.append(Path(__file__).resolve().parent.parent / "benchmarks")
        candidates.append(Path.cwd() / "benchmarks")
    for c in candidates:
        if (c / "suite.py").is_file():
            return c.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise SuiteNotFound(
        f"benchmark suite not found (looked for suite.py in: {tried}). The suite lives in the "
        "repository's benchmarks/ folder, which a wheel does not install: run from a clone with an "
        "editable install (python -m pip install -e '.[bench]'), or pass --suite DIR "
        "(or set JACOBIANS_BENCHMARKS=DIR)."
    )


def load_suite(folder: Path):
    """Import ``folder/suite.py`` (its folder goes on ``sys.path`` for its own imports)."""
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("jacobians_benchmarks_suite", folder / "suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# -- command line ---------------------------------------------------------------------------

SECTIONS = ("jacobian", "contract", "vjp", "fused", "blocked", "second_order", "last_layer", "dask", "entmax")
PEERS = ("torch", "jax", "autograd", "backpack", "seed", "loop", "entmax_bisect")


def _csv(choices: tuple[str, ...], what: str):
    def parse(text: str) -> tuple[str, ...]:
        if text in ("all", ""):
            return choices
        if text == "none":
            return ()
        items = tuple(x.strip() for x in text.split(",") if x.strip())
        bad = [x for x in items if x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(bad)}; choose from {', '.join(choices)}")
        return items

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the ``bench`` arguments (see ``python -m jacobians bench --help``)."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Benchmark the toolkit against the machine's limits and the peers installed "
        "(torch, JAX, autograd, BackPACK, the entmax package's entmax_bisect, the seed's numpy recipes, "
        "per-sample loops).",
        epilog="Peers are optional: python -m pip install -e '.[bench]' for autograd/JAX/tqdm and a CPU "
        "build of torch (pip install torch --index-url https://download.pytorch.org/whl/cpu); BackPACK "
        "(pip install --no-deps backpack-for-pytorch einops unfoldNd, with torch in place). "
        "Ratios are this row's median over the column's median in the same run: below 1 is faster.",
    )
    p.add_argument("--quick", action="store_true", help="small sizes and few rounds (a minute or less)")
    p.add_argument("--json", metavar="FILE", help="also write every figure (all times, ratios, machine) to FILE")
    p.add_argument(
        "--sections", type=_csv(SECTIONS, "section"), default=SECTIONS, metavar="LIST",
        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})",
    )
    p.add_argument(
        "--peers", type=_csv(PEERS, "peer"), default=PEERS, metavar="LIST",
        help=f"peers to compare with, if installed: comma-separated from {','.join(PEERS)}, 'all' (default) or 'none'",
    )
    p.add_argument(
        "--dtypes", type=_csv(("float64", "float32"), "dtype"), default=("float64", "float32"), metavar="LIST",
        help="float64,float32 (default both)",
    )
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="time budget per case, which sets its number of rounds (default 1.0; --quick 0.2)")
    p.add_argument("--suite", metavar="DIR", help="folder of the suite (default: the repository's benchmarks/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it is off anyway when stderr is not a terminal)")
    return p.parse_args(argv)


# -- timing ---------------------------------------------------------------------------------


def _time_once(fn) -> float:
    t0 = time.perf_counter()
    result = fn()
    t = time.perf_counter() - t0
    del result
    return t


def run_group(cases: list[Case], *, budget: float, min_rounds: int, max_rounds: int, tick=lambda: None,
              ref_ratios: bool = False) -> list[dict]:
    """Time the cases of one group side by side; returns one record per case.

    Each timed case is called once to warm up (JIT compilation, first-touch of its
    buffers), and once more unless that took over a second; the last warm-up call sets its
    number of rounds (about ``budget`` seconds, within ``[min_rounds, max_rounds]``; 3
    for a case slower than five budgets). The
    cases then run in interleaved rounds, in a new (seeded) random order each round, so
    that neither a busy moment of the machine nor the case run just before favours one.
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


# -- output ---------------------------------------------------------------------------------


def format_seconds(t: float) -> str:
    """A duration with three significant digits and a unit."""
    if not math.isfinite(t):
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if t >= scale or unit == "µs":
            v = t / scale
            return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{t:.3g} s"  # pragma: no cover


def _ratio_cell(r: dict, col: str) -> str:
    v = r["ratios"].get(col)
    if v is None:
        return ""
    text = f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"
    mx = r.get("targets", {}).get(col if col != "limit" else "limit")
    if mx is not None:
        text += " ✓" if v <= mx else " ✗"
    return text


def format_section(section: str, title: str, groups: list[tuple[Group, list[dict]]]) -> str:
    """One table: a row per case, columns median, ×limit and × each peer of the section."""
    peer_cols: list[str] = []
    for _, recs in groups:
        for r in recs:
            if r["kind"] in ("peer", "ref") and r["column"] not in peer_cols:
                peer_cols.append(r["column"])
    header = ["size", "dtype", "case", "median", "×limit", *[f"×{c}" for c in peer_cols]]
    rows = []
    for g, recs in groups:
        for r in recs:
            label = r["case"] if r["kind"] == "ours" else f"[{r['kind']}] {r['case']}"
            extra = r.get("extra") or {}
            if "peak_rss_bytes" in extra:
                label += f"  (peak RSS {extra['peak_rss_bytes'] / 2**20:.0f} MiB"
                if "dense_bytes" in extra:
                    label += f"; dense J {extra['dense_bytes'] / 2**30:.1f} GiB"
                label += ")"
            if "label" in extra:
                label += f"  {extra['label']}"
            rows.append([g.size, g.dtype, label, format_seconds(r["median_s"]), _ratio_cell(r, "limit"),
                         *[_ratio_cell(r, c) if r["kind"] in ("ours", "ref") else "" for c in peer_cols]])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = [f"== {section}: {title}", "  ".join(h.ljust(w) for h, w in zip(header, widths))]
    prev = None
    for row in rows:
        if prev is not None and row[:2] != prev:
            lines.append("")
        prev = row[:2]
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
    notes = sorted({g.note for g, _ in groups if g.note})
    lines += [f"   {n}" for n in notes]
    return "\n".join(lines)


def format_targets(results: list[dict]) -> str:
    """The targets, each with its measured ratio, met or not."""
    lines = ["== targets (ratio = our median ÷ the reference's, same run)"]
    for r in results:
        for t in r.get("target_results", []):
            vs = "limit" if t["vs"] == "limit" else t["vs"]
            lines.append(
                f"{'met    ' if t['met'] else 'NOT met'}  {r['section']:<12} {r['size']:<14} {r['dtype']:<8} "
                f"{r['case']:<38} {t['ratio']:.2f} ≤ {t['max']:.2f} × {vs}"
            )
    return "\n".join(lines)


#: environment variables that change what is measured (shown in the header and --json)
ENV_SHOWN = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "NPY_DISABLE_CPU_FEATURES", "ATEN_CPU_CAPABILITY",
             "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "JACOBIANS_KERNELS")


def numpy_simd() -> str:
    """numpy's vector level: the SIMD targets it dispatches to that this CPU has (what
    ``np.show_runtime()`` reports as found), e.g. ``'X86_V4 (found X86_V3 X86_V4 AVX512_ICL;
    not found AVX512_SPR)'``; ``NPY_DISABLE_CPU_FEATURES`` removes targets."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:  # numpy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__
        except ImportError:
            return "unknown"
    found = [t for t in __cpu_dispatch__ if __cpu_features__.get(t)]
    missing = [t for t in __cpu_dispatch__ if not __cpu_features__.get(t)]
    levels = [t for t in found if t.startswith("X86_V") or t in ("ASIMD", "SVE", "VSX", "VX")]
    top = levels[-1] if levels else "baseline"
    return f"{top} (found {' '.join(found) or 'none'}; not found {' '.join(missing) or 'none'})"


def kernels_description() -> str:
    """Which kernel set runs (see :func:`jacobians.kernels`), with its version and target."""
    from . import _kernels

    return _kernels.describe()


def machine_info() -> dict:
    """What the figures were measured on."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "numpy": np.__version__,
        "env": {k: os.environ[k] for k in ENV_SHOWN if k in os.environ},
        "numpy_simd": numpy_simd(),
        "kernels": kernels_description(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(Exception):
        import threadpoolctl

        info["blas"] = [
            {k: d.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for d in threadpoolctl.threadpool_info()
        ]
    return info


class _Progress:
    """tqdm on stderr when it is a terminal (a plain counter without tqdm); silent otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        self.n, self.total = 0, total
        self.enabled = enabled and sys.stderr.isatty()
        if self.enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, file=sys.stderr, unit="group", leave=False)
            except ImportError:
                self.bar = None

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)
        elif self.enabled:
            print(f"\r[{self.n}/{self.total}] {text:<60}", end="", file=sys.stderr, flush=True)

    def update(self) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print("\r" + " " * 75 + "\r", end="", file=sys.stderr, flush=True)


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the suite; print the tables (and write ``--json``). Returns the exit status."""
    args = parse_args(argv)
    try:
        suite = load_suite(find_suite(args.suite))
    except SuiteNotFound as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    budget = args.budget if args.budget is not None else (0.2 if args.quick else 1.0)
    min_rounds, max_rounds = (3, 10) if args.quick else (5, 50)
    peers = suite.available_peers(args.peers)
    # sections whose packages are missing (dask): skipped with the reason, like an absent peer
    skipped = getattr(suite, "skipped_sections", lambda sections: {})(args.sections)
    groups = suite.plan(sections=args.sections, dtypes=args.dtypes, quick=args.quick, peers=peers)
    info = machine_info()
    print(f"# {PROG}{' --quick' if args.quick else ''}: {info['cpu']}, {info['cores']} cores, "
          f"numpy {np.__version__}; peers: {', '.join(f'{k} {v}' for k, v in peers.items()) or 'none'}")
    torch_level = ""
    if "torch" in peers:
        with contextlib.suppress(Exception):
            import torch

            torch_level = f"; torch {torch.backends.cpu.get_cpu_capability()}"
    env = " ".join(f"{k}={v}" for k, v in info["env"].items())
    print(f"# vector level: numpy SIMD {info['numpy_simd']}{torch_level}; kernels: {info['kernels']}"
          + (f"; env: {env}" if env else ""), flush=True)
    progress = _Progress(len(groups), enabled=not args.no_progress)
    results: list[dict] = []
    by_section: dict[str, list[tuple[Group, list[dict]]]] = {}
    try:
        for g in groups:
            progress.describe(f"{g.section} {g.size} {g.dtype}")
            with g.context() if g.context else contextlib.nullcontext():
                cases = g.build()
                recs = run_group(cases, budget=budget, min_rounds=min_rounds, max_rounds=max_rounds,
                                 ref_ratios=g.ref_ratios)
                del cases
            for r in recs:
                r.update(section=g.section, size=g.size, dtype=g.dtype)
            results += recs
            by_section.setdefault(g.section, []).append((g, recs))
            progress.update()
    finally:
        progress.close()
        getattr(suite, "close", lambda: None)()  # what the suite started (the dask section's cluster)
    for section in args.sections:
        if section in by_section:
            print()
            print(format_section(section, suite.TITLES.get(section, ""), by_section[section]))
        elif section in skipped:
            print()
            print(f"== {section}: skipped: {skipped[section]}")
    print()
    print(format_targets(results))
    if args.json:
        payload = {
            "command": " ".join([PROG, *(argv if argv is not None else sys.argv[1:])]),
            "machine": machine_info(),
            "peers": peers,
            "skipped_sections": skipped,
            "budget_s": budget,
            "results": results,
        }
        Path(args.json).write_text(json.dumps(payload, indent=1, default=str))
        print(f"\nwrote {args.json}")
    return 0
