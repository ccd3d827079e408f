"""benchmarks/readme_tables.py: a benchmark's summary.json as the README's table rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_modules import load_benchmark

tables = load_benchmark("readme_tables")
made_up = load_benchmark("made_up")


def test_a_replayed_case_prints_as_the_readme_row(tmp_path: Path) -> None:
    # The made-up 5x step, replayed under all three policies (a few seconds): heteroscale pays
    # a start-up at the step and misses the attainment goal, which the row names.
    assert made_up.main(["--cases", "step-5x", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    lines = tables.table(summary).splitlines()
    assert lines[0] == "| case | heteroscale | static | oracle | goals missed |"
    assert len(lines) == 3
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[0] == "step-5x (chat, 5 -> 25 req/s at 20 min)"
    rows = {r["policy"]: r for r in summary["cases"]["step-5x"]["rows"]}
    h, st, orc = rows["heteroscale"], rows["static"], rows["oracle"]
    assert cells[1].startswith(f"**{h['gpu_hours']:,.1f}, {100 * h['slo_attainment']:.2f}%** (")
    assert (
        f"{h['gpu_hours'] / st['gpu_hours']:.2f}x, {h['gpu_hours'] / orc['gpu_hours']:.2f}x"
        in cells[1]
    )
    assert cells[2] == f"{st['gpu_hours']:,.1f}, {100 * st['slo_attainment']:.2f}%"
    assert cells[3] == f"{orc['gpu_hours']:,.1f}, {100 * orc['slo_attainment']:.2f}%"
    assert cells[4].split(", ")[0] == "attainment"


def test_goals_in_words_leave_out_unchecked_ones() -> None:
    goals = {
        "attainment": {"ok": True},
        "gpu_hours_vs_static": {"ok": False, "ratio": 1.02},
        "gpu_hours_diurnal": {"ok": None},
        "direction_changes": {"ok": False, "worst_per_h": 7.7},
        "all_ok": False,
    }
    assert tables.missed(goals) == "GPU-hours above static, direction changes"
    assert tables.missed({"attainment": {"ok": True}, "all_ok": True}) == "met"


def test_a_summary_without_the_three_policies_is_refused_with_the_fix() -> None:
    case = {"what": "x", "rows": [{"policy": "heteroscale"}]}
    with pytest.raises(SystemExit, match="heteroscale, static and oracle"):
        tables.table({"cases": {"one": case}})
    with pytest.raises(SystemExit, match="shapes.py, stress.py, made_up.py or drift.py"):
        tables.table({"traces": {}})
