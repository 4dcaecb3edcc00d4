"""``python -m jacobians bench``: a smoke run of the suite at its quick sizes without peers
(no timing is asserted: only that every section runs and reports what it promises)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import jacobians as jac
from jacobians import bench

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_run_without_peers_reports_every_section(tmp_path, capsys):
    out = tmp_path / "bench.json"
    status = bench.main(["--quick", "--peers", "none", "--budget", "0", "--json", str(out), "--suite", str(REPO / "benchmarks")])
    assert status == 0
    text = capsys.readouterr().out
    header = text.splitlines()[1]
    assert header.startswith("# vector level: numpy SIMD ") and f"kernels: {jac.kernels()} " in header
    for section in bench.SECTIONS:
        assert f"== {section}:" in text  # a table, or "skipped: why" (dask without dask installed)
    assert "== targets" in text
    data = json.loads(out.read_text())
    assert data["peers"] == {}
    assert data["machine"]["kernels"].startswith(jac.kernels()) and data["machine"]["numpy_simd"]
    skipped = data["skipped_sections"]
    assert set(skipped) <= {"dask"} and all(f"== {s}: skipped: " in text for s in skipped)
    assert {r["section"] for r in data["results"]} == set(bench.SECTIONS) - set(skipped)
    assert {r["dtype"] for r in data["results"]} == {"float64", "float32"}
    for r in data["results"]:
        assert r["rounds"] >= 2 and all(t > 0 for t in r["times_s"]), r
        assert math.isfinite(r["median_s"])
        if r["kind"] == "ours" and r["section"] != "blocked":
            assert "limit" in r["ratios"], r
    blocked = [r for r in data["results"] if r["section"] == "blocked" and "extra" in r]
    assert blocked and all(0 < r["extra"]["peak_rss_bytes"] < 2**30 for r in blocked)
    memory = [r for r in data["results"] if r["section"] == "last_layer" and "extra" in r]
    assert memory and all(r["extra"]["baseline_rss_bytes"] < r["extra"]["peak_rss_bytes"] < 2**30 for r in memory)
    targets = [t for r in data["results"] for t in r.get("target_results", [])]
    assert targets and all(isinstance(t["met"], bool) for t in targets)


def test_a_section_whose_packages_are_missing_is_skipped_with_the_reason(tmp_path, capsys, monkeypatch):
    suite = bench.load_suite(REPO / "benchmarks")
    monkeypatch.setattr(suite, "dask_missing", lambda: "needs dask[array] and distributed (test)")
    monkeypatch.setattr(bench, "load_suite", lambda folder: suite)
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--sections", "dask", "--peers", "none", "--json", str(out), "--no-progress"]) == 0
    assert "== dask: skipped: needs dask[array] and distributed (test)" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["skipped_sections"] == {"dask": "needs dask[array] and distributed (test)"} and data["results"] == []


def test_a_missing_suite_is_a_clear_error(tmp_path, capsys):
    assert bench.main(["--suite", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "benchmark suite not found" in err and "--suite" in err


def test_arguments_are_checked(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--sections", "jacobian,nope"])
    assert "unknown section nope" in capsys.readouterr().err
    args = bench.parse_args(["--peers", "none", "--sections", "fused"])
    assert args.peers == () and args.sections == ("fused",)


@pytest.mark.slow
def test_the_dask_section_on_a_local_cluster():
    """The dask section's rows at the quick sizes with its LocalCluster (left out of --quick):
    every row timed, the 2-worker rows with their ratio to the 1-worker ones, the cluster
    closed at the end."""
    pytest.importorskip("dask.array", reason="the dask extra is not installed: python -m pip install -e '.[dask]'")
    pytest.importorskip("distributed", reason="the dask extra is not installed: python -m pip install -e '.[dask]'")
    suite = bench.load_suite(REPO / "benchmarks")
    groups = suite.dask_groups("float64", quick=True, cluster=True)
    assert {g.size.split(" ", 1)[1] for g in groups} == {"grad", "hessian", "hessian.sum()"}
    try:
        for g in groups[::2]:  # one size of each
            recs = bench.run_group(g.build(), budget=0, min_rounds=2, max_rounds=2, ref_ratios=g.ref_ratios)
            by_case = {r["case"]: r for r in recs}
            assert all(r["rounds"] == 2 and all(t > 0 for t in r["times_s"]) for r in recs), recs
            two = by_case["LocalCluster, 2 workers: client.compute(...).result()"]
            assert {"numpy", "1 worker .compute", "limit"} <= set(two["ratios"])
            assert "numpy" in by_case["LocalCluster, 1 worker: client.compute(...).result()"]["ratios"]
    finally:
        suite.close()
    assert suite._CLUSTER.client is None


@pytest.mark.slow
def test_the_laplace_section_at_a_tiny_size():
    """The ``laplace`` section's two groups (LastLayerLaplace against laplace-torch, influence against
    the torch reference) at 300 rows: every row timed, ours against the limit, the peers that are
    installed beside them with their answers agreeing with ours, a missing peer named in the note."""
    suite = bench.load_suite(REPO / "benchmarks")
    peers = suite.available_peers(("torch", "laplace_torch"))
    groups = suite.laplace_suite.groups("float64", quick=True, peers=peers, sizes=[(300, 4)])
    assert [g.size for g in groups] == ["300x16,K=4,M=30", "influence 300x16,K=4,M=30"]
    for g in groups:
        recs = bench.run_group(g.build(), budget=0, min_rounds=2, max_rounds=2)
        assert all(r["rounds"] == 2 and all(t > 0 for t in r["times_s"]) for r in recs), recs
        assert all("limit" in r["ratios"] for r in recs if r["kind"] == "ours"), recs
        peer_rows = [r for r in recs if r["kind"] == "peer"]
        wanted = "laplace_torch" if "influence" not in g.size else "torch"
        if wanted in peers:
            assert peer_rows
            for r in peer_rows:  # "(max |Δp| vs ours 1.3e-07)" / "(vs ours 1.7e-15 of the largest)"
                if "vs ours" in r["case"]:
                    assert float(r["case"].split("vs ours ")[1].split()[0].rstrip(")")) < 1e-5, r["case"]
            if wanted == "laplace_torch":
                assert any(t["met"] in (True, False) for r in recs for t in r.get("target_results", []))
        else:
            assert not peer_rows and wanted in g.note
    none = suite.laplace_suite.groups("float64", quick=True, peers={}, sizes=[(300, 4)])
    assert all("laplace_torch, torch" in g.note for g in none)


def test_warm_times_each_call_after_calls_of_the_same_case():
    """``warm``: every timed call of a case directly follows untimed calls of that case, for
    at least ``warm`` seconds (at least one); without it, only the two warm-up calls precede."""
    from jacobians.bench import Case, run_group

    log = []
    cases = [Case(name, lambda name=name: log.append(name)) for name in ("a", "b", "c")]
    run_group(cases, budget=1.0, min_rounds=4, max_rounds=4, warm=1e-9)
    calls = log[6:]  # after the two warm-up calls of each
    assert len(calls) == 4 * 3 * 2
    pairs = [calls[i:i + 2] for i in range(0, len(calls), 2)]
    assert all(p[0] == p[1] for p in pairs)  # (untimed, timed) of one case
    assert sorted(p[0] for p in pairs) == sorted("abc" * 4)
    log.clear()
    run_group(cases, budget=1.0, min_rounds=4, max_rounds=4)
    assert len(log) == 6 + 4 * 3
