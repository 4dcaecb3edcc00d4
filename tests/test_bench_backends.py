"""``python -m jacobians bench --backend numpy|torch|jax``: a smoke run of each backend's
sections at a tiny size (no timing is asserted: only that the command succeeds and every
section reports its rows, with the framework's own autodiff beside ours)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jacobians import bench
from jacobians.cli import main as cli_main

REPO = Path(__file__).resolve().parent.parent
SUITE = str(REPO / "benchmarks")
TINY = ["--quick", "--sizes", "8x5", "--dtypes", "float64", "--budget", "0", "--no-progress", "--suite", SUITE]

pytestmark = [
    pytest.mark.arrays,
    # torch's own forward-mode decompositions (loaded by torch.func.hessian, the Hessian
    # section's peer) call torch.jit.script, which torch 2.13 deprecates: not this package's
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]

#: rows every backend run shows, by section: (our row, the framework's own column)
ROWS = {
    "torch": {
        "vjp": ("act.vjp(z, g)", "torch softmax + backward"),
        "fused": ("softmax+cross_entropy head.value_and_grad", "torch F.cross_entropy + backward"),
        "second_order": ("head.hessian(z, y)", "torch.func vmap(hessian(per-row CE / N))"),
    },
    "jax": {
        "vjp": ("jit(act.vjp(z, g))", "jit(vjp(jax.nn.softmax))"),
        "fused": ("softmax+cross_entropy jit(head.grad)", "jit(jax.grad(loss))"),
        "second_order": ("jit(head.hessian(z, y))", "jit(vmap(hessian(per-row CE / N)))"),
    },
}


@pytest.fixture
def jax_config_kept():
    """The JAX bench turns x64 on for the process: put it back for the other tests."""
    jax = sys.modules.get("jax")
    old = None if jax is None else jax.config.jax_enable_x64
    yield
    if "jax" in sys.modules:
        sys.modules["jax"].config.update("jax_enable_x64", bool(old))


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_tiny_run_on_each_framework_reports_every_section(backend, tmp_path, capsys, monkeypatch, jax_config_kept):
    extra = "torch (the test extra's CPU build)" if backend == "torch" else "jax (the test extra)"
    pytest.importorskip(backend, reason=f"{extra} is not installed")
    pytest.importorskip("array_api_compat", reason="the arrays extra (array-api-compat, array-api-extra) is not installed")
    suite = bench.load_suite(Path(SUITE))
    # the fused section's first pair only (the others are the same rows: JAX compiles each)
    monkeypatch.setattr(suite.backend_suite, "PAIRS", dict(list(suite.backend_suite.PAIRS.items())[:1]))
    monkeypatch.setattr(bench, "load_suite", lambda folder: suite)
    out = tmp_path / "bench.json"
    assert cli_main(["bench", "--backend", backend, *TINY, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"# python -m jacobians bench --backend {backend} --quick: ") and f"{backend} " in text.splitlines()[0]
    for section, (ours, theirs) in ROWS[backend].items():
        table = text.split(f"== {section}: ", 1)[1].split("\n\n==", 1)[0]
        assert ours in table and theirs in table and "[ref] numpy " in table, table
    assert "== targets" in text
    data = json.loads(out.read_text())
    assert data["backend"] == backend and data["device"] == "cpu"
    assert {r["section"] for r in data["results"]} == set(bench.BACKEND_SECTIONS)
    for r in data["results"]:
        assert r["rounds"] >= 3 and all(t > 0 for t in r["times_s"]), r
    targets = {t["vs"] for r in data["results"] for t in r.get("target_results", [])}
    assert targets == ({"torch", "torch vmap(hessian)"} if backend == "torch" else {"jax grad"})


def test_numpy_backend_is_the_suite_and_imports_no_framework():
    """``--backend numpy`` (the default) runs numpy's suite (its tables, its peers) and imports
    neither torch nor jax when no peer asks for them."""
    code = (
        "import sys; from jacobians import bench; "
        f"status = bench.main(['--backend', 'numpy', '--sections', 'vjp,fused', '--peers', 'seed', *{TINY!r}]); "
        "assert status == 0; print('imported:', sorted({'torch', 'jax'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("# python -m jacobians bench --quick: ") and "peers: seed numpy" in text
    assert "== vjp: softmax VJP" in text and "== fused: value and dE/dz" in text
    assert "act.vjp(z, g)" in text and "[peer] seed: einsum Jacobian, then einsum" in text
    assert "imported: []" in text


def test_backend_arguments_are_checked(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--backend", "torch", "--sections", "jacobian"])
    assert "runs the sections vjp,fused,second_order; got jacobian" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cuda"])
    assert "--device and --threads apply to --backend torch|jax" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--sizes", "8by5"])
    assert "sizes must be NxK" in capsys.readouterr().err
    args = bench.parse_args(["--backend", "jax"])
    assert args.sections == bench.BACKEND_SECTIONS and args.device == "cpu"
    assert bench.parse_args([]).sections == bench.SECTIONS
    assert bench.parse_args(["--sizes", "64x10,32X100"]).sizes == ((64, 10), (32, 100))


def test_a_missing_framework_is_a_clear_error(monkeypatch, capsys):
    suite = bench.load_suite(Path(SUITE))

    def absent(backend, **kw):
        raise ModuleNotFoundError(f"No module named '{backend}'")

    monkeypatch.setattr(suite, "backend_plan", absent)
    monkeypatch.setattr(bench, "load_suite", lambda folder: suite)
    assert bench.main(["--backend", "torch", *TINY]) == 2
    err = capsys.readouterr().err
    assert "--backend torch needs torch (CPU build" in err and "No module named 'torch'" in err


# -- benchmarks/gpu_check.py ------------------------------------------------------------------


def _gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("jacobians_gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclass looks its module up)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_without_a_gpu_says_so_and_exits_0(capsys, jax_config_kept):
    gpu_check = _gpu_check()
    if gpu_check.detect():
        pytest.skip("this machine has a GPU: the no-GPU path is not what runs here")
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no GPU found") and "nothing to check" in out


def test_gpu_check_walk_on_cpu_torch_compares_with_numpy(capsys, monkeypatch):
    """``--device cpu``: the GPU walk's logic on torch's CPU tensors (softmax + CE's entries);
    a wrong result (planted: the device's results negated on the way back) is reported."""
    pytest.importorskip("torch", reason="torch (the test extra's CPU build) is not installed")
    pytest.importorskip("array_api_compat", reason="the arrays extra (array-api-compat, array-api-extra) is not installed")
    gpu_check = _gpu_check()
    assert gpu_check.main(["--device", "cpu", "--only", "softmax,cross_entropy", "--no-bench"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("== torch ") and "on cpu: CPU" in out
    ok = int(out.split("walk on cpu: ", 1)[1].split(" ok", 1)[0])
    assert ok == 2 * (4 + 7) and ", 0 failed" in out  # the activation's 4 calls and the pair's 7, two dtypes
    real = gpu_check._torch_target
    monkeypatch.setattr(gpu_check, "_torch_target", lambda device: gpu_check.Target(
        **{**real(device).__dict__, "to_numpy": lambda x: -x.detach().cpu().numpy()}))
    assert gpu_check.main(["--device", "cpu", "--only", "softmax,cross_entropy", "--no-bench"]) == 1
    out = capsys.readouterr().out
    assert "FAILED  softmax + cross_entropy" in out and "eps >" in out
