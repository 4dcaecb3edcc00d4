"""The GPU check: the generic path's walk and the bench on every GPU this machine has.

``python benchmarks/gpu_check.py`` finds the GPUs that CuPy, torch (CUDA) and JAX see and,
on each, prints the device, then

* the walk: every activation alone and every valid (activation, loss) pair of the
  registries, with their defaults (the walk of ``python -m jacobians check``), in float64
  and float32, each method computed on the device and compared with numpy's float64 result
  on the same values (normwise, in units of the dtype's epsilon, as the ``arrays`` tests
  do); a result must come back as the device's array type. Activations: ``act(z)``,
  ``jacobian``, ``vjp``, ``jvp``; pairs: ``value_and_grad`` by every method, ``loss``,
  ``hessian``, ``ggn``, ``hvp``. What the generic path does not compute yet (its clear
  ``NotImplementedError``) is counted as n/a, not as a failure;
* the bench: ``python -m jacobians bench --backend torch --device cuda`` (and ``--backend
  jax --device gpu``) in a subprocess; CuPy has no autodiff to compare with, so it has the
  walk only.

With no GPU it says so and exits 0. ``--device cpu`` runs the same walk (and bench) on
torch's CPU tensors, so the logic is exercised where no GPU is. Exit status: 0 when every
comparison passes, 1 when one fails.

Options: ``--device cpu`` (torch on the CPU), ``--only ACT[,LOSS]`` (the entries of those
registry names), ``--no-bench``, ``--quick`` (the bench's small sizes).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHAPE = (6, 5)
#: normwise error allowed against numpy's float64 result, in epsilons (×4 for second order)
ULPS = 64


@dataclass
class Target:
    """One framework on one device: how arrays get there and back."""

    framework: str
    device: str
    description: str
    to_device: Callable[[np.ndarray], Any]
    to_numpy: Callable[[Any], np.ndarray]
    array_type: type


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _torch_target(device: str) -> Target:
    import torch

    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.backends.cpu.get_cpu_capability()})"
    return Target("torch", str(dev), f"torch {torch.__version__} on {dev}: {name}",
                  lambda x: torch.from_numpy(np.ascontiguousarray(x)).to(dev),
                  lambda x: x.detach().cpu().numpy(), torch.Tensor)


def detect() -> list[Target]:
    """The GPUs CuPy, torch and JAX see (each framework imported only when installed)."""
    found = []
    if _has("cupy"):
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                props = cupy.cuda.runtime.getDeviceProperties(0)
                name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
                found.append(Target("cupy", "cuda:0", f"cupy {cupy.__version__} on cuda:0: {name}",
                                    cupy.asarray, cupy.asnumpy, cupy.ndarray))
        except Exception as exc:  # a CuPy without a driver: no GPU for it
            print(f"cupy: no usable GPU ({type(exc).__name__}: {exc})")
    if _has("torch"):
        import torch

        if torch.cuda.is_available():
            found.append(_torch_target("cuda"))
    if _has("jax"):
        import jax

        try:
            gpus = jax.devices("gpu")
        except RuntimeError:  # no GPU backend
            gpus = []
        if gpus:
            dev = gpus[0]
            found.append(Target("jax", "gpu", f"jax {jax.__version__} on {dev}: {dev.device_kind}",
                                lambda x, d=dev: jax.device_put(x, d), np.asarray, jax.Array))
    return found


# -- the walk -------------------------------------------------------------------------------


def _normwise(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    scale = max(float(np.abs(ref).max(initial=0.0)), np.finfo(np.float64).tiny)
    return float(np.abs(got - ref).max(initial=0.0)) / scale


def _calls(obj, z, y, v, is_head):
    """``{name: call}`` of the methods compared (one set on the device, one on numpy)."""
    if not is_head:
        return {"act(z)": lambda: obj(z), "jacobian": lambda: obj.jacobian(z), "vjp": lambda: obj.vjp(z, v),
                "jvp": lambda: obj.jvp(z, v)}
    methods = ["fused"] if obj.logits_loss else (["fused"] if obj.fused_rule is not None else []) + ["vjp", "jacobian"]
    calls = {f"value_and_grad({m})": (lambda m=m: obj.value_and_grad(z, y, m)) for m in methods}
    calls.update({"loss": lambda: obj.loss(z, y), "hessian": lambda: obj.hessian(z, y), "ggn": lambda: obj.ggn(z, y),
                  "hvp": lambda: obj.hvp(z, y, v)})
    return calls


def _flat(result):
    return result if isinstance(result, tuple) else (result,)


def walk(target: Target, only=None, out=print) -> dict[str, int]:
    """Every registry entry (defaults) on ``target``, float64 and float32: ``{'ok', 'n/a',
    'failed'}`` counts; one line per entry that failed or is not available."""
    import jacobians  # noqa: F401  (the registries)
    from jacobians.checks import example_inputs, plan

    if target.framework == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
    counts = {"ok": 0, "n/a": 0, "failed": 0}
    entries = [e for e in plan.plan_entries(only)[0] if "(" not in e.label]
    for entry in entries:
        obj = entry.build(SHAPE[-1])
        is_head = entry.loss is not None
        for dtype in ("float64", "float32"):
            eps = float(np.finfo(dtype).eps)
            if is_head:
                z, y = example_inputs(obj, shape=SHAPE, dtype=dtype, seed=1)
            else:
                z, y = np.random.default_rng(1).normal(size=SHAPE).astype(dtype), None
            v = np.random.default_rng(2).normal(size=SHAPE).astype(dtype)
            z64, v64 = z.astype(np.float64), v.astype(np.float64)
            y64 = y.astype(np.float64) if y is not None and y.dtype.kind == "f" else y
            yd = target.to_device(y) if y is not None and y.dtype.kind == "f" else y
            ref_calls = _calls(obj, z64, y64, v64, is_head)
            for name, call in _calls(obj, target.to_device(z), yd, target.to_device(v), is_head).items():
                try:
                    got = _flat(call())
                except NotImplementedError as exc:
                    counts["n/a"] += 1
                    out(f"  n/a     {entry.label:<44} {dtype:<8} {name}: {str(exc).splitlines()[0][:90]}")
                    continue
                ref = _flat(ref_calls[name]())
                tol = ULPS * eps * (4 if name in ("hessian", "ggn", "hvp") else 1)
                problems = [f"a {type(g).__name__}, not a {target.array_type.__name__}" for g in got
                            if not isinstance(g, target.array_type)]
                if not problems:
                    errs = [_normwise(target.to_numpy(g), r) for g, r in zip(got, ref)]
                    problems = [f"error {e / eps:.3g} eps > {tol / eps:.0f}" for e in errs if not e <= tol]
                if problems:
                    counts["failed"] += 1
                    out(f"  FAILED  {entry.label:<44} {dtype:<8} {name}: {'; '.join(problems)}")
                else:
                    counts["ok"] += 1
    return counts


# -- the command ----------------------------------------------------------------------------


def _bench(target: Target, quick: bool) -> int:
    if target.framework == "cupy":
        print("bench: CuPy has no autodiff to compare with: the walk only")
        return 0
    cmd = [sys.executable, "-m", "jacobians", "bench", "--backend", target.framework, "--device", target.device,
           "--no-progress", *(["--quick"] if quick else [])]
    print("bench:", " ".join(cmd[1:]), flush=True)
    return subprocess.run(cmd, cwd=REPO).returncode


def _only(text: str | None):
    if not text:
        return None
    names = [x.strip() for x in text.split(",") if x.strip()]
    return (set(names[:1]), set(names[1:2]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("gpu", "cpu"), default="gpu",
                   help="gpu (default): every GPU found; cpu: torch's CPU tensors (the logic, where no GPU is)")
    p.add_argument("--only", metavar="ACT[,LOSS]", help="the walk's entries of this activation (and loss) only")
    p.add_argument("--no-bench", action="store_true", help="the walk only")
    p.add_argument("--quick", action="store_true", help="the bench's small sizes")
    args = p.parse_args(argv)
    if args.device == "cpu":
        if not _has("torch"):
            print("--device cpu walks torch's CPU tensors: torch is not installed")
            return 2
        targets = [_torch_target("cpu")]
    else:
        targets = detect()
        if not targets:
            print("no GPU found (CuPy: no device or not installed; torch: CUDA not available or not installed; "
                  "JAX: no GPU backend or not installed): nothing to check. "
                  "--device cpu runs the same walk on torch's CPU tensors.")
            return 0
    status = 0
    for target in targets:
        print(f"== {target.description}", flush=True)
        counts = walk(target, _only(args.only))
        print(f"walk on {target.device}: {counts['ok']} ok, {counts['n/a']} n/a (no generic path yet), "
              f"{counts['failed']} failed", flush=True)
        status = status or (1 if counts["failed"] else 0)
        if not args.no_bench:
            status = status or (1 if _bench(target, args.quick) else 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
