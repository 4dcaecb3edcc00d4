"""``python -m jacobians bench``: a smoke run of the suite at its quick sizes without peers
(no timing is asserted: only that every section runs and reports what it promises)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from jacobians import bench

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_run_without_peers_reports_every_section(tmp_path, capsys):
    out = tmp_path / "bench.json"
    status = bench.main(["--quick", "--peers", "none", "--budget", "0", "--json", str(out), "--suite", str(REPO / "benchmarks")])
    assert status == 0
    text = capsys.readouterr().out
    for section in bench.SECTIONS:
        assert f"== {section}:" in text
    assert "== targets" in text
    data = json.loads(out.read_text())
    assert data["peers"] == {}
    assert {r["section"] for r in data["results"]} == set(bench.SECTIONS)
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
