"""benchmarks/trace_loading.py: its synthetic week loads back whole, plain and gzipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from bench_modules import load_benchmark

from heteroscale_ray.traces import load_trace

bench = load_benchmark("trace_loading", "trace_loading_bench")


def test_the_synthetic_week_is_azure_2024_format_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "week.csv"
    bench.write_week(path, 5000)
    header, first = path.read_text().splitlines()[:2]
    assert header == "TIMESTAMP,ContextTokens,GeneratedTokens" and "+00:00," in first
    trace = load_trace(path)
    assert len(trace) == 5000
    assert 0.99 * bench.WEEK_S < trace.duration_s <= bench.WEEK_S
    assert np.all(np.asarray(trace.input_tokens) >= 1)


def test_the_benchmark_reports_both_files_in_fresh_processes(tmp_path: Path, capsys) -> None:
    assert bench.main(["--rows", "3000", "--out", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [f["file"] for f in summary["files"]] == ["plain", "gzip"]
    assert all(f["rows"] == 3000 and f["peak_rss_bytes"] > 0 for f in summary["files"])
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
