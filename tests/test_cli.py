"""``python -m jacobians`` end to end: check (exit status, failures made visible, JSON,
filters, progress lines on stderr, the table's width), list, bench dispatch, and one-line
errors with status 2."""

import json
import subprocess
import sys
import types

import pytest
from conftest import TransposedJacobian

import jacobians as jac
from jacobians import cli

FAST = ["--n", "64", "--k", "8"]  # a small timing run keeps these tests quick


def run(capsys, *argv):
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def table_rows(out: str) -> dict[str, str]:
    """``{row label: line}`` of the check table (the lines between the rule and the blank line)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("----"))
    rows, label = {}, None
    for line in lines[start + 1:]:
        if not line.strip():
            break
        if line.startswith("  ") and label is not None:  # a long label's continuation
            sep = "" if label.endswith("(") else " "
            new = label + sep + line.split("  ")[1].strip()
            rows[new] = rows.pop(label)
            label = new
            continue
        label = line.split("  ")[0].strip()
        rows[label] = line
    return rows


class TransposedTanh(TransposedJacobian):
    """``a_i = tanh(z_i) · z_0`` with its Jacobian's layout transposed (a bug); its own class
    so that registering it under a name leaves the shared one untouched."""


# -- check ------------------------------------------------------------------------------------


def _labels(cls, K=5) -> set[str]:
    """Labels of a class's default instance and of each of its variants."""
    return {jac.checks.label(cls(**kw)) for kw in [{}] + cls.variants(K)}


def _pair_rows(acls, lcls) -> set[str]:
    """A pair's rows: defaults, each activation variant with the default loss, each loss
    variant with the default activation."""
    a0, l0 = jac.checks.label(acls()), jac.checks.label(lcls())
    losses = set()
    for kw in [{}] + lcls.variants(5):  # a loss variant that leaves the activation's domain has no row
        try:
            jac.Head(acls(), lcls(**kw))
        except ValueError:
            continue
        losses.add(jac.checks.label(lcls(**kw)))
    return {f"{a} + {l0}" for a in _labels(acls)} | {f"{a0} + {lo}" for lo in losses}


def test_check_only_a_pair_passes(capsys):
    status, out, err = run(capsys, "check", "--only", "softmax,cross_entropy", "--wide", *FAST)
    assert status == 0, out
    assert "first order, pairs: 7 rows" in err  # progress goes to stderr, a line per section
    assert "first order" not in out.split("\n\n")[-1]
    rows = table_rows(out)
    assert set(rows) == _labels(jac.Softmax) | _pair_rows(jac.Softmax, jac.CrossEntropy)
    assert {"softmax(temperature=0.5) + cross_entropy", "softmax + cross_entropy(weight)",
            "softmax + cross_entropy(ignore_index=-100)", "softmax + cross_entropy(label_smoothing=0.1)"} <= set(rows)
    assert "jacobian, vjp, operator, jvp, fused" in rows["softmax + cross_entropy"]
    assert rows["softmax + cross_entropy"].rstrip().endswith("×")  # the fused speed-up
    assert rows["softmax(temperature=0.5) + cross_entropy"].rstrip().endswith("—")  # timed once per pair
    assert rows["softmax"].rstrip().endswith("—")  # no fused rule for an activation alone
    assert " ok " in rows["softmax"] + " "
    assert "max err float64" in out and "max err float32" in out
    assert "all passed" in out
    assert "N=64, K=8" in out


def test_only_a_loss_keeps_every_pair_with_it(capsys):
    status, out, _ = run(capsys, "check", "--only", "mse", "--dtype", "float64", *FAST)
    assert status == 0
    expected = set().union(*(_pair_rows(jac.get_activation(p.activation), jac.MeanSquaredError)
                             for p in jac.pairs() if p.loss == "mse"))
    assert set(table_rows(out)) == expected
    assert "max err float32" not in out


def test_only_activations_keeps_them_and_their_pairs(capsys):
    status, out, _ = run(capsys, "check", "--only", "sigmoid,tanh", "--dtype", "float32", *FAST)
    assert status == 0
    expected = {"sigmoid", "tanh"} | set().union(*(
        _pair_rows(jac.get_activation(p.activation), jac.get_loss(p.loss))
        for p in jac.pairs() if p.activation in ("sigmoid", "tanh")))
    assert set(table_rows(out)) == expected
    assert "max err float64" not in out
    assert "float32" in out.splitlines()[0]


def _failing_rows(out: str) -> set[str]:
    return {label for label, line in table_rows(out).items() if "FAIL" in line}


def test_check_catches_a_temperature_factor_missing_from_a_fused_rule(capsys, monkeypatch):
    rule = jac.fused.FUSED[(jac.Softmax, jac.CrossEntropy)]

    def no_temperature(act, loss, z, y):  # the gradient without its 1/T
        value, grad = rule(act, loss, z, y)
        return value, grad * act.temperature

    monkeypatch.setitem(jac.fused.FUSED, (jac.Softmax, jac.CrossEntropy), no_temperature)
    status, out, _ = run(capsys, "check", "--only", "softmax,cross_entropy", *FAST)
    assert status == 1
    assert _failing_rows(out) == {"softmax(temperature=0.5) + cross_entropy", "softmax(temperature=3.0) + cross_entropy"}


def test_check_catches_a_pos_weight_term_shared_by_every_method(capsys, monkeypatch):
    """pos_weight applied to the negative term, in the loss and in the fused rule alike: the
    methods agree with each other and with finite differences; the loop reference does not."""
    monkeypatch.setattr(jac.BinaryCrossEntropy, "positive_weight", lambda self, dtype: None if self.pos_weight is None
                        else 1 / self.pos_weight.astype(dtype))
    status, out, _ = run(capsys, "check", "--only", "sigmoid,binary_cross_entropy", "--dtype", "float64", *FAST)
    assert status == 1
    assert _failing_rows(out) == {"sigmoid + binary_cross_entropy(pos_weight)",
                                  "sigmoid + binary_cross_entropy(label_smoothing=0.2, pos_weight)"}
    assert "vs loop" in out


def test_check_catches_an_ignore_index_denominator_shared_by_every_method(capsys, monkeypatch):
    """'mean' divided by every sample, ignored ones included, in the loss and in the fused
    rule alike: only the loop reference sees it."""
    from jacobians.losses import _targets, classification

    denominator = _targets.class_denominator  # the one expression of the class losses' denominator

    def count_ignored_too(t, dtype, **kw):
        denom = denominator(t, dtype, **kw)
        return float(t.indices.size) if t.is_index and t.valid is not None and kw.get("weight") is None else denom

    monkeypatch.setattr(_targets, "class_denominator", count_ignored_too)  # (class_coefficients reads it)
    monkeypatch.setattr(classification, "class_denominator", count_ignored_too)  # (Loss.reduction_scale)
    status, out, _ = run(capsys, "check", "--only", "softmax,cross_entropy", "--dtype", "float64", *FAST)
    assert status == 1
    assert _failing_rows(out) == {"softmax + cross_entropy(ignore_index=-100)"}
    assert "vs loop" in out


def test_broken_registered_activation_fails_check(capsys, restore_registries):
    jac.register_activation(TransposedTanh, name="transposed_tanh")
    status, out, _ = run(capsys, "check", "--only", "transposed_tanh", *FAST)
    assert status == 1
    rows = table_rows(out)
    assert "FAIL" in rows["transposed_tanh"]
    assert "FAIL" in rows["transposed_tanh + mse"]  # pairs made with it fail too
    assert "FAILED" in out
    assert "J: jacobian vs numerical" in out  # the failing comparisons are listed


def test_broken_activation_among_good_ones(capsys, restore_registries):
    jac.register_activation(TransposedTanh, name="transposed_tanh")
    status, out, _ = run(capsys, "check", "--only", "transposed_tanh,softmax,huber", "--dtype", "float64", *FAST)
    assert status == 1
    rows = table_rows(out)
    assert "FAIL" in rows["transposed_tanh"] and "FAIL" in rows["transposed_tanh + huber"]
    assert "FAIL" not in rows["softmax"] and "FAIL" not in rows["softmax + huber"]


def test_json_output(capsys, tmp_path):
    path = tmp_path / "report.json"
    status, out, _ = run(capsys, "check", "--only", "sigmoid,binary_cross_entropy", "--json", str(path), *FAST)
    assert status == 0
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["passed"] is True
    assert data["dtypes"] == ["float64", "float32"]
    assert data["timing"] == {"n": 64, "k": 8, "dtype": "float64", "repeats": cli.REPEATS}
    assert [r["pair"] for r in data["rows"]] == list(table_rows(out))
    pair = next(r for r in data["rows"] if r["pair"] == "sigmoid + binary_cross_entropy")
    assert pair["fused_speedup"] > 0 and pair["t_fused_s"] > 0 and pair["t_jacobian_s"] > 0
    assert pair["checks"] == len(pair["comparisons"]) > 0
    assert all(c["passed"] for c in pair["comparisons"])
    shapes = {tuple(c["shape"]) for c in pair["comparisons"]}
    assert {tuple(s) for s in data["shapes"]} | {tuple(data["extreme_shape"])} == shapes


def test_progress_on_stderr_table_alone_on_stdout(capsys):
    status, out, err = run(capsys, "check", "--only", "relu,mse", "--dtype", "float64", *FAST)
    assert status == 0
    lines = err.splitlines()
    assert lines[0].startswith("jacobians check: ") and "rows" in lines[0]
    # a row's orders run in one task (on the same inputs): activations, then pairs
    assert [ln.split(":")[0].strip() for ln in lines[1:]] == [
        "first order, activations", "second order, activations", "first order, pairs", "second order, pairs"]
    assert all(ln.rstrip().endswith(" s") for ln in lines[1:])  # each section says its CPU time
    assert " comparisons, 0 failed" in err
    # stdout: the heading, the table, the legend and the summary, nothing of the progress
    assert out.startswith("jacobians check (first and second order)")
    assert " comparisons, 0 failed" not in out
    last = out.rstrip().splitlines()[-1]
    assert last.startswith("2 rows, 160 comparisons: all passed in ") and " s of CPU, " in last


def test_table_within_100_columns_and_wide(capsys):
    argv = ["check", "--only", "softmax,cross_entropy,binary_cross_entropy", "--dtype", "float64", *FAST]
    status, out, _ = run(capsys, *argv)
    assert status == 0
    assert max(len(line) for line in out.splitlines()) <= cli.WIDTH  # heading, table, legend, summary
    rows = table_rows(out)
    long = "softmax + binary_cross_entropy(label_smoothing=0.2, pos_weight)"
    assert long in rows  # wrapped onto two lines, not cut
    assert "methods compared  " not in out and "err/tol" in out and "--wide" in out
    status, wide, _ = run(capsys, *argv, "--wide")
    assert status == 0
    assert "methods compared" in wide and "max err float64" in wide
    assert max(len(line) for line in wide.splitlines()[:40]) > cli.WIDTH
    wide_rows = table_rows(wide)
    assert set(wide_rows) == set(rows)
    assert long in wide_rows[long]  # one line


def test_err_over_tol_column(capsys, tmp_path):
    path = tmp_path / "r.json"
    status, out, _ = run(capsys, "check", "--only", "softmax,cross_entropy", "--order", "2", "--json", str(path),
                         *FAST)
    assert status == 0
    assert "err/tol" in out and "<= 1" in out  # the legend says what passes
    header = next(line for line in out.splitlines() if line.startswith("pair"))
    assert header.split()[-3] == "err/tol"
    data = json.loads(path.read_text(encoding="utf-8"))
    for row in data["rows"]:
        comps = [c for c in row["comparisons"] if c["err_over_tol"] is not None]
        worst = max(c["err_over_tol"] for c in comps)
        assert worst <= 1 and row["max_err_over_tol"] == worst
        # err/tol is each comparison's error over its own allowed error
        assert all(c["err_over_tol"] == pytest.approx(c["max_abs"] / c["allowed"]) for c in comps if c["allowed"])
        assert float(table_rows(out)[row["pair"]].split()[-3]) == pytest.approx(worst, abs=0.006)
    # the Monte-Carlo Fisher: a large relative error, within its statistical tolerance; max err leaves it out
    pair = next(r for r in data["rows"] if r["pair"] == "softmax + cross_entropy")
    mc = [c for c in pair["comparisons"] if c["compared"] == "F: mc vs exact"]
    assert mc and max(c["max_rel"] for c in mc) > 1e-3 and all(c["err_over_tol"] <= 1 for c in mc)
    assert pair["max_err"]["float64"] < 1e-6


def test_jobs_one_and_two_agree(tmp_path, capsys):
    reports = []
    for jobs in ("1", "2"):
        path = tmp_path / f"j{jobs}.json"
        assert cli.main(["check", "--only", "entmax,entmax_loss", "--jobs", jobs, "--json", str(path), *FAST]) == 0
        reports.append(json.loads(path.read_text(encoding="utf-8")))
    capsys.readouterr()
    strip = [[{k: v for k, v in c.items()} for r in d["rows"] for c in r["comparisons"]] for d in reports]
    assert strip[0] == strip[1]  # same rows, same inputs, same numbers, in the same order


def test_a_crash_inside_a_check_is_a_failed_row(capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("generator exploded")

    monkeypatch.setattr(jac.checks, "check_activation", boom)
    status, out, err = run(capsys, "check", "--only", "tanh", "--dtype", "float64", *FAST)
    assert status == 1
    assert "FAIL" in table_rows(out)["tanh"]
    assert "RuntimeError: generator exploded" in out
    assert "Traceback" not in out + err


def test_seed_changes_the_inputs(capsys, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for path, seed in ((a, "0"), (b, "1")):
        assert cli.main(["check", "--only", "softplus", "--seed", seed, "--json", str(path), *FAST]) == 0
    capsys.readouterr()
    errs = [[c["max_abs"] for c in json.loads(p.read_text())["rows"][0]["comparisons"]] for p in (a, b)]
    assert errs[0] != errs[1]


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check", "--dtype", "float16"], "invalid choice: 'float16'"),
        (["check", "--n", "0"], "--n: expected an integer >= 1, got 0"),
        (["check", "--k", "1"], "--k: expected an integer >= 2, got 1"),
        (["check", "--seed", "-1"], "--seed: expected an integer >= 0"),
        (["check", "--n", "many"], "--n: expected an integer >= 1, got 'many'"),
        (["check", "--only", "softmax,nope"], "unknown name 'nope' in --only; activations: softmax"),
        (["check", "--only", ","], "--only needs at least one"),
        (["check", "--bogus"], "unrecognized arguments: --bogus"),
        (["check", "--json", "/no/such/dir/out.json"], "does not exist"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "choose a command"),
    ],
)
def test_bad_options_exit_2_with_one_line(capsys, argv, message):
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1 and message in err
    assert "Traceback" not in err


def test_json_to_a_directory_is_a_usage_error(capsys, tmp_path):
    status, _, err = run(capsys, "check", "--only", "relu", "--json", str(tmp_path))
    assert status == 2 and "is a directory" in err and err.count("\n") == 1


def test_help(capsys):
    status, out, _ = run(capsys, "check", "--help")
    assert status == 0
    for option in ("--seed", "--n", "--k", "--dtype", "--only", "--json"):
        assert option in out


# -- list and bench ----------------------------------------------------------------------------


def test_list(capsys):
    status, out, _ = run(capsys, "list")
    assert status == 0
    assert out.splitlines()[0].startswith(f"kernels: {jac.kernels()} ")  # which kernel set runs
    for name in list(jac.ACTIVATIONS) + list(jac.LOSSES):
        assert f"  {name} " in out
    ps = jac.pairs()
    assert f"valid pairs ({len(ps)}, {sum(p.fused for p in ps)} with a fused rule)" in out
    lines = out.splitlines()
    for p in ps:
        assert any(line.split() == [p.activation, p.loss, "yes" if p.fused else "-"] for line in lines), p
    variants = [jac.checks.label(cls(**kw)) for reg in (jac.ACTIVATIONS, jac.LOSSES) for cls in reg.values()
                for kw in cls.variants(5)]
    assert f"variants checked besides the defaults ({len(variants)};" in out
    for v in ["softmax(temperature=0.5)", "leaky_relu(slope=0.2)", "cross_entropy(weight)", "nll(ignore_index=-100)",
              "binary_cross_entropy(pos_weight)", "huber(delta=0.3)", "cross_entropy(label_smoothing=0.1)"]:
        assert f"  {v}\n" in out, v


def test_bench_is_imported_lazily_and_given_its_arguments(capsys, monkeypatch):
    seen = []
    fake = types.ModuleType("jacobians.bench")
    fake.main = lambda argv: seen.append(argv) or 3
    monkeypatch.setitem(sys.modules, "jacobians.bench", fake)
    assert cli.main(["bench", "--quick", "--json", "x.json"]) == 3
    assert seen == [["--quick", "--json", "x.json"]]


def test_bench_missing_is_a_one_line_error(capsys, monkeypatch):
    def missing(name, *args):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(cli.importlib, "import_module", missing)
    status, out, err = run(capsys, "bench")
    assert status == 2
    assert err.count("\n") == 1 and "jacobians.bench is not available" in err


# -- as a program ------------------------------------------------------------------------------


def test_python_m_jacobians_check_subprocess():
    result = subprocess.run(
        [sys.executable, "-m", "jacobians", "check", "--only", "softmax,cross_entropy", *FAST],
        capture_output=True, text=True, encoding="utf-8", timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "softmax + cross_entropy" in result.stdout and "all passed" in result.stdout
    assert "second order, pairs: " in result.stderr and "second order" not in result.stdout.split("----")[-1]
    assert max(len(line) for line in result.stdout.splitlines()) <= cli.WIDTH  # through a pipe, too


def test_python_m_jacobians_bad_option_subprocess():
    result = subprocess.run(
        [sys.executable, "-m", "jacobians", "check", "--dtype", "half"],
        capture_output=True, text=True, encoding="utf-8", timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_check_orders(capsys):
    status, out, _ = run(capsys, "check", "--only", "softmax,cross_entropy", "--order", "1", "--wide", *FAST)
    assert status == 0 and "H:" not in out and "(first order)" in out
    status, out, _ = run(capsys, "check", "--only", "softmax,cross_entropy", "--order", "2", "--dtype", "float64",
                         "--wide", *FAST)
    assert status == 0 and "(second order)" in out
    rows = table_rows(out)
    assert "H: fused, chain, hvp, ggn, sqrt, fisher" in rows["softmax + cross_entropy"]
    assert "H: hessian, hessian_vjp" in rows["softmax"]
    assert "jacobian, vjp" not in rows["softmax + cross_entropy"]
    status, out, _ = run(capsys, "check", "--only", "sparsemax,sparsemax_loss", "--order", "2", "--wide", *FAST)
    assert status == 0 and "H: fused, hvp, ggn, sqrt" in table_rows(out)["sparsemax + sparsemax_loss"]


def test_check_catches_a_wrong_hessian_rule(capsys, monkeypatch):
    rule = jac.curvature.HESSIAN_RULES[(jac.Sigmoid, jac.BinaryCrossEntropy)]
    wrong = jac.curvature.HessianRule(lambda *args: rule.hessian(*args).scaled(2.0), True, rule.sqrt, rule.fisher)
    monkeypatch.setitem(jac.curvature.HESSIAN_RULES, (jac.Sigmoid, jac.BinaryCrossEntropy), wrong)
    status, out, _ = run(capsys, "check", "--only", "sigmoid,binary_cross_entropy", "--order", "2", *FAST)
    assert status == 1
    assert "H: fused vs numerical" in out


def test_kernels_are_loaded_before_the_workers_fork():
    """With numba's kernels, checks.plan.load_kernels loads the softmax / cross-entropy /
    sigmoid kernels in this process (the forked workers inherit them); with numpy's it does
    nothing."""
    from jacobians.checks import plan

    plan.load_kernels()
    if jac.kernels() != "numba":
        return
    from jacobians._kernels import numba_impl

    for name in ("_softmax", "_softmax_vjp", "_ce_index", "_bce_plain"):
        sigs = getattr(numba_impl, name).signatures
        assert {str(s[0].dtype) for s in sigs} >= {"float32", "float64"}, (name, sigs)
