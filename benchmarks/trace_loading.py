"""Trace loading at week scale: time and peak memory to load a large Azure-format CSV.

Writes a synthetic Azure 2024-style file (`TIMESTAMP,ContextTokens,GeneratedTokens`, zoned
stamps spread over a week) of `--rows` rows, plain and gzipped, then loads each in a fresh
process (so peak memory is the load's own) and reports seconds, rows per second and peak RSS
per row. The baseline row is the same process importing the package and loading nothing.

Prints a table and, as its last line, a JSON summary, also written to `--out`/summary.json.
Usage: .venv/bin/python benchmarks/trace_loading.py [--rows 2000000] [--out results/trace_loading]
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WEEK_S = 7 * 86400
SEED = 20261204

# Loads the file named in argv[1] ("" loads nothing) and prints rows, seconds and peak RSS
# (VmHWM: unlike getrusage's maxrss it starts afresh at exec, not at the parent's peak).
_CHILD = """
import sys, time
from heteroscale_ray.traces import load_trace
t0 = time.perf_counter()
n = len(load_trace(sys.argv[1])) if sys.argv[1] else 0
seconds = time.perf_counter() - t0
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(n, seconds, int(hwm.split()[1]) * 1024)
"""


def write_week(path: Path, rows: int) -> None:
    """`rows` requests over a week, Azure 2024's zoned format, lengths like its conversations."""
    rng = np.random.default_rng(SEED)
    start = np.datetime64("2024-05-10T00:00:00.000000")
    stamps = start + np.sort(rng.integers(0, WEEK_S * 10**6, rows)).astype("timedelta64[us]")
    prompts = rng.lognormal(6.8, 1.0, rows).astype(np.int64).clip(1, 32_000)
    outputs = rng.lognormal(5.0, 0.9, rows).astype(np.int64).clip(1, 4_000)
    text = np.datetime_as_string(stamps)
    with path.open("w") as f:
        f.write("TIMESTAMP,ContextTokens,GeneratedTokens\n")
        for k in range(0, rows, 1 << 16):
            part = slice(k, k + (1 << 16))
            chunk = zip(text[part], prompts[part], outputs[part], strict=True)
            f.write("".join(f"{t}+00:00,{p},{o}\n" for t, p, o in chunk))


def measure(path: str) -> tuple[int, float, int]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, path], check=True, capture_output=True, text=True, cwd=ROOT
    )
    n, seconds, peak = out.stdout.split()
    return int(n), float(seconds), int(peak)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "trace_loading")
    args = ap.parse_args(argv)
    if args.rows < 1:
        ap.error("--rows must be at least 1")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "week.csv"
        write_week(plain, args.rows)
        packed = Path(tmp) / "week.csv.gz"
        packed.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=6))
        _, _, base = measure("")
        for label, path in (("plain", plain), ("gzip", packed)):
            n, seconds, peak = measure(str(path))
            rows.append(
                {
                    "file": label,
                    "bytes": path.stat().st_size,
                    "rows": n,
                    "seconds": seconds,
                    "rows_per_s": n / seconds,
                    "peak_rss_bytes": peak,
                    "bytes_per_row_over_baseline": (peak - base) / n,
                }
            )
    print(f"{args.rows:,} rows over a week; baseline process {base / 2**20:,.0f} MiB")
    print(f"{'file':<6} {'MiB':>7} {'s':>7} {'rows/s':>11} {'peak MiB':>9} {'B/row':>7}")
    for r in rows:
        print(
            f"{r['file']:<6} {r['bytes'] / 2**20:7.1f} {r['seconds']:7.1f} {r['rows_per_s']:11,.0f}"
            f" {r['peak_rss_bytes'] / 2**20:9,.0f} {r['bytes_per_row_over_baseline']:7.0f}"
        )
    summary = {"benchmark": "trace_loading", "baseline_rss_bytes": base, "files": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out / 'summary.json'}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
