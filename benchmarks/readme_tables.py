"""Print a benchmark's `summary.json` as the README's table rows, one commit's run per table.

shapes.py, stress.py, made_up.py, drift.py and random_traffic.py replay each case under
heteroscale, static and oracle and write `results/<benchmark>/summary.json`. The README's
tables show one run of all of them at one commit; this prints their rows in that form, so a
table is measured again with two commands rather than row by row:

    .venv/bin/python benchmarks/shapes.py && .venv/bin/python benchmarks/readme_tables.py \\
        results/shapes/summary.json

Each row: the case, heteroscale's GPU-hours and SLO attainment with its GPU-hours over
static's and over the oracle's and its direction changes an hour (prefill / decode), static's
and the oracle's GPU-hours and attainment, and the goals heteroscale missed (issue 10's, as
the benchmark checked them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

GOAL_NAMES = {
    "attainment": "attainment",
    "gpu_hours_vs_static": "GPU-hours above static",
    "gpu_hours_diurnal": "diurnal GPU-hours",
    "gpu_hours_vs_oracle": "GPU-hours over the oracle's",
    "direction_changes": "direction changes",
    "speed": "replay speed",
}
HEADER = "| case | heteroscale | static | oracle | goals missed |\n|---|---|---|---|---|"


def cases_of(summary: dict[str, Any]) -> dict[str, Any]:
    """The per-case results: `cases` (stress.py, made_up.py, drift.py, random_traffic.py) or
    `shapes` (shapes.py)."""
    cases = summary.get("cases", summary.get("shapes"))
    if not isinstance(cases, dict):
        raise SystemExit(
            "no `cases` or `shapes` in this summary: pass a shapes.py, stress.py, made_up.py or drift.py summary.json"
        )
    return cases


def missed(goals: dict[str, Any]) -> str:
    """The goals a row failed, in words; "met" when none did (unchecked ones are not misses)."""
    names = [
        GOAL_NAMES.get(name, name)
        for name, goal in goals.items()
        if isinstance(goal, dict) and goal.get("ok") is False
    ]
    return ", ".join(names) or "met"


def row(name: str, case: dict[str, Any]) -> str:
    """One case as a README table row (see the module docstring)."""
    by = {r["policy"]: r for r in case["rows"]}
    if not {"heteroscale", "static", "oracle"} <= by.keys():
        raise SystemExit(
            f"{name}: the table needs heteroscale, static and oracle; run the benchmark with all three"
        )
    h, st, orc = by["heteroscale"], by["static"], by["oracle"]
    flips = h["direction_changes_per_h"]
    ours = (
        f"**{h['gpu_hours']:,.1f}, {100 * h['slo_attainment']:.2f}%** "
        f"({h['gpu_hours'] / st['gpu_hours']:.2f}x, {h['gpu_hours'] / orc['gpu_hours']:.2f}x; "
        f"{flips['prefill']:.1f} / {flips['decode']:.1f})"
    )
    about = "; ".join(
        x for x in (case.get("what"), case.get("rate_scale") and f"x{case['rate_scale']}") if x
    )
    cells = [
        f"{name} ({about})" if about else name,
        ours,
        f"{st['gpu_hours']:,.1f}, {100 * st['slo_attainment']:.2f}%",
        f"{orc['gpu_hours']:,.1f}, {100 * orc['slo_attainment']:.2f}%",
        missed(h.get("goals", {})),
    ]
    return "| " + " | ".join(cells) + " |"


def table(summary: dict[str, Any]) -> str:
    return "\n".join([HEADER, *(row(name, case) for name, case in cases_of(summary).items())])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "summary", type=Path, help="a shapes.py, stress.py, made_up.py or drift.py summary.json"
    )
    args = ap.parse_args(argv)
    try:
        summary = json.loads(args.summary.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"cannot read {args.summary}: {e}") from None
    print(table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
