"""The tables of ``python -m jacobians bench``: one per section (a row per case, its
median and its ratios) and the list of targets met or not.

Examples
--------
>>> from jacobians.bench.tables import format_seconds
>>> format_seconds(2.5e-05)
'25 µs'
"""

from __future__ import annotations

import math

from .timing import Group

__all__ = ["format_seconds", "format_section", "format_targets"]


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

