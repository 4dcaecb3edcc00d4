"""The command line: ``python -m jacobians {check,list,bench}``.

``check`` (the main job) runs every activation, every valid (activation, loss) pair and
every method against each other, against float64 finite differences and against the
per-sample loop references of :mod:`jacobians.testing`, on an embedded default — fixed
seed, several shapes including a ``(B, T, K)`` one, float32 and float64, and logits of
±1e4 checked against closed forms — for the default instances and for every variant the
classes declare (``variants``: temperatures, label smoothing, class weights,
``ignore_index``, ``pos_weight``, Huber's δ, LeakyReLU's slope), and prints one table with
the fused path's speed-up over the Jacobian path. Exit status: 0 when every check
passes, 1 when one fails, 2 for a bad option (one line on stderr).

``list`` prints the registries and the valid pairs; ``bench`` runs the benchmarks
(:mod:`jacobians.bench`).

Examples
--------
>>> from jacobians.cli import main
>>> main(["check", "--only", "sigmoid,binary_cross_entropy", "--n", "64", "--k", "8"])  # doctest: +ELLIPSIS
jacobians check (first and second order): seed 0; ...
0
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from typing import Callable

from . import checks
from .activations import ACTIVATIONS
from .checks.plan import (
    EXTREME_SHAPE,
    MC_SAMPLES,
    REPEATS,
    SHAPES,
    cpu_seconds,
    load_kernels,
    plan_entries,
    run_sections,
    time_entries,
    variant_labels,
)
from .checks.report import fmt_ratio, fmt_shape, json_float
from .head import pairs
from .losses import LOSSES
from .numerics import parallel

__all__ = ["main", "SHAPES", "EXTREME_SHAPE", "DEFAULT_N", "DEFAULT_K", "REPEATS"]

PROG = "python -m jacobians"

#: size of the timing run (the fused path's speed-up over the Jacobian path)
DEFAULT_N, DEFAULT_K = 1024, 100
#: columns of the table without --wide
WIDTH = 100


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (status 2) instead of usage + message."""

    def error(self, message):
        message = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def _build_parser() -> _Parser:
    parser = _Parser(prog=PROG, description="Check, list and benchmark the jacobians toolkit.")
    sub = parser.add_subparsers(dest="command", metavar="{check,list,bench}")
    check = sub.add_parser(
        "check",
        help="check every activation, pair and method against numerical references (the main job)",
        description=(
            "Compare every method (jacobian, operator, vjp, jvp, fused) of every registered activation and "
            "every valid (activation, loss) pair, with their defaults and with every variant the classes "
            "declare (python -m jacobians list shows them), with each other, with float64 central differences "
            "and with the per-sample loop references, on "
            f"generated inputs of shapes {' '.join(map(str, SHAPES))} in float64 and float32, plus logits of "
            "±1e4 checked against closed forms; print one table with the fused path's speed-up over the "
            "Jacobian path. Exit status 0 when all pass, 1 otherwise, 2 for a bad option."
        ),
    )
    check.add_argument("--seed", type=_positive_int(0), default=0, help="seed of the generated inputs (default 0)")
    check.add_argument("--n", type=_positive_int(1), default=DEFAULT_N,
                       help=f"batch size N of the timing run (default {DEFAULT_N})")
    check.add_argument("--k", type=_positive_int(2), default=DEFAULT_K,
                       help=f"number of classes K of the timing run (default {DEFAULT_K})")
    check.add_argument("--dtype", choices=("float32", "float64", "both"), default="both",
                       help="dtypes to check (default both; the timing run uses float64 unless float32 alone)")
    check.add_argument("--only", metavar="NAMES", default=None,
                       help="comma-separated activation and/or loss names, e.g. softmax,cross_entropy: "
                            "keep the rows of those activations and the pairs made of them")
    check.add_argument("--order", choices=("1", "2", "all"), default="all",
                       help="first-order checks (dE/dz), second-order checks (Hessian, GGN, Fisher), or both "
                            "(default all)")
    check.add_argument("--json", metavar="FILE", default=None, help="also write every comparison to FILE as JSON")
    check.add_argument("--wide", action="store_true",
                       help=f"the full table: methods compared and the error of each dtype (default: within {WIDTH} "
                            "columns)")
    check.add_argument("--jobs", type=_positive_int(1), default=None,
                       help="processes that check rows side by side (default: every available core)")
    sub.add_parser("list", help="list the activations, losses and valid pairs",
                   description="List the registered activations and losses and every valid pair.")
    sub.add_parser("bench", help="run the benchmarks (jacobians.bench; options: bench --help)", add_help=False)
    return parser


# -- entry point ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 a check failed, 2 usage error)."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="replace")
        except (AttributeError, ValueError):
            pass
    if argv and argv[0] == "bench":
        return _bench(argv[1:])
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad option (2, message already printed)
        return _status(exc.code)
    if args.command is None:
        print(f"{PROG}: error: choose a command: check, list or bench (see {PROG} --help)", file=sys.stderr)
        return 2
    try:
        if args.command == "list":
            return _list()
        return _check(args, parser)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except _UsageError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # never a traceback on the command line
        if os.environ.get("JACOBIANS_TRACEBACK"):
            raise
        print(f"{PROG} {args.command}: error: {type(exc).__name__}: {' '.join(str(exc).split())} "
              "(set JACOBIANS_TRACEBACK=1 for the traceback)", file=sys.stderr)
        return 1


class _UsageError(Exception):
    """A bad option value found after parsing (exit status 2)."""


def _status(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _bench(argv: list[str]) -> int:
    try:
        bench = importlib.import_module("jacobians.bench")
    except ImportError as exc:
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == "jacobians.bench"
        what = "jacobians.bench is not available in this installation" if missing else f"cannot import jacobians.bench: {exc}"
        print(f"{PROG} bench: error: {' '.join(what.split())}", file=sys.stderr)
        return 2
    try:
        return _status(bench.main(argv))
    except SystemExit as exc:
        return _status(exc.code)


# -- list -------------------------------------------------------------------------------------


def _list() -> int:
    from . import _kernels
    from .domains import domain

    lines = [f"kernels: {_kernels.describe()} (JACOBIANS_KERNELS=numpy for numpy's)", "", f"activations ({len(ACTIVATIONS)}):"]
    body = []
    for name, cls in ACTIVATIONS.items():
        body.append([name, cls.__name__, domain(getattr(cls, "output_domain", "real")).name])
    lines += ["  " + s for s in checks.format_table(["name", "class", "output domain"], body)]
    lines += ["", f"losses ({len(LOSSES)}):"]
    body = []
    for name, cls in LOSSES.items():
        body.append([name, cls.__name__, domain(getattr(cls, "input_domain", "real")).name,
                     str(getattr(cls, "target_kind", "real"))])
    lines += ["  " + s for s in checks.format_table(["name", "class", "input domain", "targets"], body)]
    ps = pairs()
    lines += ["", f"valid pairs ({len(ps)}, {sum(p.fused for p in ps)} with a fused rule):"]
    body = [[p.activation, p.loss, "yes" if p.fused else "-"] for p in ps]
    lines += ["  " + s for s in checks.format_table(["activation", "loss", "fused"], body)]
    labels = variant_labels()
    lines += ["", f"variants checked besides the defaults ({len(labels)}; each with every valid partner):"]
    lines += ["  " + s for s in labels]
    print("\n".join(lines))
    return 0


# -- check ------------------------------------------------------------------------------------

def _parse_only(text: str | None) -> tuple[set[str], set[str]] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise _UsageError("--only needs at least one activation or loss name")
    unknown = [n for n in names if n not in ACTIVATIONS and n not in LOSSES]
    if unknown:
        raise _UsageError(
            f"unknown name{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in --only; "
            f"activations: {', '.join(ACTIVATIONS)}; losses: {', '.join(LOSSES)}"
        )
    return {n for n in names if n in ACTIVATIONS}, {n for n in names if n in LOSSES}



def _say(text: str) -> None:
    """A progress line on stderr (stdout holds only the table and the summary)."""
    print(text, file=sys.stderr, flush=True)


def _fmt_err(x) -> str:
    return "—" if x is None else f"{x:.1e}"


def _check(args, parser) -> int:
    only = _parse_only(args.only)
    if args.json is not None:
        parent = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(parent):
            raise _UsageError(f"--json: directory {parent!r} does not exist")
        if os.path.isdir(args.json):
            raise _UsageError(f"--json: {args.json!r} is a directory; give a file name")
    dtypes = ["float64", "float32"] if args.dtype == "both" else [args.dtype]
    timing_dtype = "float32" if dtypes == ["float32"] else "float64"
    entries, skipped = plan_entries(only)
    orders = (1, 2) if args.order == "all" else (int(args.order),)
    for entry in entries:
        entry.orders = orders
    if not entries:
        raise _UsageError(f"nothing to check for --only {args.only}")

    start, cpu0 = time.perf_counter(), cpu_seconds()
    jobs = parallel.resolve_workers(args.jobs)
    if jobs > 1:
        load_kernels()  # in this process, before the workers fork: each would load them again
    _say(f"jacobians check: {len(entries)} rows, {', '.join(dtypes)}, {jobs} process{'es' if jobs > 1 else ''}")
    run_sections(entries, dtypes, orders, args.seed, jobs, _say)
    time_entries(entries, args.n, args.k, timing_dtype, args.seed, _say)
    elapsed = time.perf_counter() - start
    args.cpu_seconds, args.jobs_used = cpu_seconds() - cpu0, jobs

    print(_render(entries, dtypes, args, timing_dtype, skipped, elapsed))
    passed = all(e.report.passed for e in entries)
    if args.json is not None:
        try:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(_to_json(entries, dtypes, args, timing_dtype, skipped, elapsed, passed), fh, indent=1)
        except OSError as exc:
            raise _UsageError(f"--json: cannot write {args.json!r}: {exc.strerror or exc}") from None
    return 0 if passed else 1


def _render(entries, dtypes, args, timing_dtype, skipped, elapsed) -> str:
    shapes = " ".join(fmt_shape(s) for s in SHAPES)
    order = {"1": "first order", "2": "second order", "all": "first and second order"}[args.order]
    out = [
        f"jacobians check ({order}): seed {args.seed}; {', '.join(dtypes)};",
        f"shapes {shapes}; ±1e4 logits {fmt_shape(EXTREME_SHAPE)}",
        "every method vs each other, vs float64 central differences and vs the per-sample loop",
        "references (vs closed forms at ±1e4); every variant of the registries' classes",
        "(python -m jacobians list shows them)",
    ]
    if args.order != "1":
        out.append("second order: H (each method) and Σ g∇²a vs central differences of the exact gradient /")
        out.append(f"Jacobian, hvp, GGN (= H where canonical; PSD), sqrt, MC Fisher ({MC_SAMPLES} draws) vs exact")
    out.append("")
    out += _table(entries, dtypes, args.wide)
    n_checks = sum(len(e.report) for e in entries)
    failed = [e for e in entries if not e.report.passed]
    out += [
        "",
        "max err:  the largest max|x - ref| / max|ref| of the row's comparisons (ref: float64 central",
        "          differences, another method, a loop reference, or a closed form at ±1e4; |ref| floored",
        "          at the noise level), the Monte-Carlo Fisher left out (its error is statistical)",
        "err/tol:  the largest error of the row's comparisons over its own tolerance, the Monte-Carlo",
        f"          Fisher's included ({checks.second_order.MC_SIGMAS:g} standard errors of its draws): a comparison "
        "passes when <= 1",
        "speed-up: median time of head.grad(method='jacobian') / head.grad(method='fused'),",
        f"          N={args.n}, K={args.k}, {timing_dtype}, {REPEATS} runs each side by side; — : no fused rule to time",
    ]
    if not args.wide:
        out.append("--wide: also the methods compared and the max err of each dtype")
    notes = [f"{e.label}: timing failed: {e.timing_note}" for e in entries if e.timing_note]
    if skipped:
        notes.append(f"not checked (their classes need arguments): {', '.join(skipped)}")
    out += notes
    out.append("")
    if failed:
        rows = [r for e in failed for r in e.report.failures]
        shown = rows[:40]
        out.append(f"{len(failed)} of {len(entries)} rows FAILED ({len(rows)} of {n_checks} comparisons); the failures:")
        out.append("")
        out.append(checks.format_rows(shown))
        if len(rows) > len(shown):
            out.append(f"... and {len(rows) - len(shown)} more failures (all of them: --json FILE)")
    else:
        out.append(f"{len(entries)} rows, {n_checks} comparisons: all passed in {elapsed:.1f} s "
                   f"({args.cpu_seconds:.1f} s of CPU, {args.jobs_used} process{'es' if args.jobs_used > 1 else ''})")
    return "\n".join(out)


def _table(entries, dtypes, wide: bool) -> list[str]:
    """The rows' table; without ``wide`` within :data:`WIDTH` columns (long labels wrap)."""
    def speed(e):
        return f"{e.speedup:.1f}×" if e.speedup is not None else ("error" if e.timing_note else "—")

    def result(e):
        fails = len(e.report.failures)
        return "ok" if not fails else f"FAIL ({fails})"

    def worst(e, dt=None):
        return _fmt_err(e.report.max_rel(dt, statistical=False))

    if wide:
        header = ["pair", "methods compared", "checks"] + [f"max err {dt}" for dt in dtypes]
        header += ["err/tol", "result", "fused speed-up"]
        body = [[e.label, ", ".join(e.methods), str(len(e.report))] + [worst(e, dt) for dt in dtypes]
                + [fmt_ratio(e.report.max_err_over_tol()), result(e), speed(e)] for e in entries]
        return checks.format_table(header, body, right={2, *range(3, len(header) - 2), len(header) - 1})
    header = ["pair", "checks", "max err", "err/tol", "result", "speed-up"]
    body = [[e.label, str(len(e.report)), worst(e), fmt_ratio(e.report.max_err_over_tol()), result(e), speed(e)]
            for e in entries]
    others = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header) if i]
    room = max(24, WIDTH - sum(others) - 2 * len(others))
    wrapped = []
    for b in body:
        lines = _wrap(b[0], room)
        wrapped.append([lines[0]] + b[1:])
        wrapped += [["  " + ln] + [""] * (len(b) - 1) for ln in lines[1:]]
    return checks.format_table(header, wrapped, right={1, 2, 3, 5})


def _wrap(label: str, width: int) -> list[str]:
    """``label`` in lines of at most ``width`` characters (continuations are indented by
    two), broken after ' + ' or ', ' where possible."""
    lines, rest = [], label
    while len(rest) > width - (2 if lines else 0):
        room = width - (2 if lines else 0)
        cut = max(rest.rfind(" + ", 0, room - 1) + 2, rest.rfind(", ", 0, room - 1) + 1)
        if cut <= 1:
            cut = room
        lines.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    return lines + [rest]


def _to_json(entries, dtypes, args, timing_dtype, skipped, elapsed, passed) -> dict:
    return {
        "passed": passed,
        "seed": args.seed,
        "dtypes": dtypes,
        "shapes": [list(s) for s in SHAPES],
        "extreme_shape": list(EXTREME_SHAPE),
        "timing": {"n": args.n, "k": args.k, "dtype": timing_dtype, "repeats": REPEATS},
        "order": args.order,
        "mc_samples": MC_SAMPLES,
        "tolerances": checks.TOLERANCES,
        "kink_margin": checks.KINK_MARGIN,
        "skipped": skipped,
        "wall_time_s": elapsed,
        "cpu_time_s": getattr(args, "cpu_seconds", None),
        "jobs": getattr(args, "jobs_used", None),
        "rows": [
            {
                "pair": e.label,
                "activation": e.activation,
                "loss": e.loss,
                "methods": e.methods,
                "checks": len(e.report),
                "failed": len(e.report.failures),
                "passed": e.report.passed,
                "max_err": {dt: json_float(e.report.max_rel(dt, statistical=False)) for dt in dtypes},
                "max_err_over_tol": json_float(e.report.max_err_over_tol()),
                "fused_speedup": e.speedup,
                "t_fused_s": e.t_fused,
                "t_jacobian_s": e.t_jacobian,
                "timing_error": e.timing_note or None,
                "comparisons": [r.to_dict() for r in e.report],
            }
            for e in entries
        ],
    }
