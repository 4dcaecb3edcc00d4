"""``python -m jacobians bench``: run the benchmark suite and print one table per section.

The runner lives in the package (numpy only): here the command (arguments, finding the
suite, ``--json``); :mod:`jacobians.bench.timing` the cases, their rounds and ratios;
:mod:`jacobians.bench.tables` the tables; :mod:`jacobians.bench.machine` what the figures
were measured on and the progress bar. The suite itself — what is measured, the machine
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

``--backend torch|jax`` runs the sections ``vjp``, ``fused`` and ``second_order`` on that
framework's arrays (the generic path) against its own autodiff of the same loss (the
suite's ``backend_suite.py``; the framework is imported then, and only then);
``--backend numpy`` (the default) is the suite above, unchanged.

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
import os
import sys
from pathlib import Path

import numpy as np

# (ENV_SHOWN, kernels_description, numpy_simd: importable from here as before the split)
from .machine import ENV_SHOWN, _Progress, kernels_description, machine_info, numpy_simd  # noqa: F401
from .tables import format_seconds, format_section, format_targets
from .timing import Case, Group, run_group

__all__ = ["Case", "Group", "main", "parse_args", "find_suite", "run_group", "format_seconds", "SuiteNotFound"]

PROG = "python -m jacobians bench"


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
        candidates.append(Path(__file__).resolve().parents[2] / "benchmarks")
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

SECTIONS = ("jacobian", "contract", "vjp", "fused", "blocked", "second_order", "last_layer", "dask", "entmax", "heads",
            "laplace")
#: ``--backend``: numpy (the suite), or the framework whose arrays the sections below run on
BACKENDS = ("numpy", "torch", "jax")
BACKEND_SECTIONS = ("vjp", "fused", "second_order")
PEERS = ("torch", "jax", "autograd", "backpack", "seed", "loop", "entmax_bisect", "laplace_torch")


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


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    try:
        sizes = tuple(tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(len(s) != 2 or min(s) < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be NxK[,NxK...] with N, K ≥ 1 (e.g. 64x10,32x100); got {text!r}")
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the ``bench`` arguments (see ``python -m jacobians bench --help``)."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Benchmark the toolkit against the machine's limits and the peers installed "
        "(torch, JAX, autograd, BackPACK, the entmax package's entmax_bisect, laplace-torch, the seed's numpy recipes, "
        "per-sample loops).",
        epilog="Peers are optional: python -m pip install -e '.[bench]' for autograd/JAX/tqdm and a CPU "
        "build of torch (pip install torch --index-url https://download.pytorch.org/whl/cpu); BackPACK "
        "(pip install --no-deps backpack-for-pytorch einops unfoldNd, with torch in place). "
        "Ratios are this row's median over the column's median in the same run: below 1 is faster.",
    )
    p.add_argument("--quick", action="store_true", help="small sizes and few rounds (a minute or less)")
    p.add_argument("--json", metavar="FILE", help="also write every figure (all times, ratios, machine) to FILE")
    p.add_argument(
        "--sections", type=_csv(SECTIONS, "section"), default=None, metavar="LIST",
        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)}; with --backend torch|jax: "
        f"{','.join(BACKEND_SECTIONS)})",
    )
    p.add_argument(
        "--backend", choices=BACKENDS, default="numpy",
        help="numpy (default): the suite on numpy arrays, its peers beside; torch or jax: the sections "
        f"{','.join(BACKEND_SECTIONS)} on that framework's arrays against its own autodiff of the same loss",
    )
    p.add_argument("--device", default=None, metavar="DEVICE",
                   help="with --backend torch|jax: where the arrays live (default cpu; e.g. cuda, cuda:1, gpu)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="with --backend torch: torch's threads while the groups run (default torch's own; on a "
                   "busy machine 1 keeps a stalled thread pool out of the figures)")
    p.add_argument("--sizes", type=_sizes, default=None, metavar="NxK,...",
                   help="these sizes for the vjp, fused and second_order sections (and jacobian, contract, entmax) "
                   "in place of their own: a smoke run")
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
    args = p.parse_args(argv)
    if args.backend == "numpy":
        if args.device is not None or args.threads is not None:
            p.error("--device and --threads apply to --backend torch|jax (numpy's suite sets its peers' threads)")
        if args.sections is None:
            args.sections = SECTIONS
    else:
        if args.sections is None:
            args.sections = BACKEND_SECTIONS
        other = [s for s in args.sections if s not in BACKEND_SECTIONS]
        if other:
            p.error(f"--backend {args.backend} runs the sections {','.join(BACKEND_SECTIONS)}; got {','.join(other)}")
        args.device = args.device or "cpu"
    return args


# -- main -----------------------------------------------------------------------------------


def _plan_backend(suite, args):
    """``(description, groups, titles)`` of a ``--backend torch|jax`` run, or an error message."""
    try:
        description, groups = suite.backend_plan(args.backend, sections=args.sections, dtypes=args.dtypes,
                                                 quick=args.quick, sizes=args.sizes, device=args.device,
                                                 threads=args.threads)
    except ImportError as exc:
        extra = "torch (CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu)" \
            if args.backend == "torch" else "jax (pip install jax)"
        return f"--backend {args.backend} needs {extra}: {exc}"
    except (RuntimeError, ValueError) as exc:  # no such device
        return f"--backend {args.backend} (--device {args.device}): {exc}"
    return description, groups, suite.backend_titles(args.backend)


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
    info = machine_info()
    if args.backend == "numpy":
        peers = suite.available_peers(args.peers)
        # sections whose packages are missing (dask): skipped with the reason, like an absent peer
        skipped = getattr(suite, "skipped_sections", lambda sections: {})(args.sections)
        sizes = {} if args.sizes is None else {"sizes": args.sizes}
        groups = suite.plan(sections=args.sections, dtypes=args.dtypes, quick=args.quick, peers=peers, **sizes)
        titles = suite.TITLES
        print(f"# {PROG}{' --quick' if args.quick else ''}: {info['cpu']}, {info['cores']} cores, "
              f"numpy {np.__version__}; peers: {', '.join(f'{k} {v}' for k, v in peers.items()) or 'none'}")
    else:
        planned = _plan_backend(suite, args)
        if isinstance(planned, str):
            print(f"{PROG}: error: {planned}", file=sys.stderr)
            return 2
        description, groups, titles = planned
        peers, skipped = {}, {}
        print(f"# {PROG} --backend {args.backend}{' --quick' if args.quick else ''}: {info['cpu']}, "
              f"{info['cores']} cores, numpy {np.__version__}; {description}")
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
                                 ref_ratios=g.ref_ratios, warm=g.warm)
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
            print(format_section(section, titles.get(section, ""), by_section[section]))
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
        if args.backend != "numpy":
            payload.update(backend=args.backend, device=args.device, framework=description)
        Path(args.json).write_text(json.dumps(payload, indent=1, default=str))
        print(f"\nwrote {args.json}")
    return 0
