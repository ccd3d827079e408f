"""One draw or a trend: the same policy replayed on several superposition seeds.

The benchmarks rate-scale a trace by superposing time-shifted copies of it, drawn with seed 0.
On the diurnal cases one replay moves by up to 10% on a one-instance difference before a surge
(docs/generalization_log.md, 2026-12-05), so a change of a few percent measured on seed 0
alone can be the draw: one was left out on seed 0 and adopted on seeds 1-3. This replays each
case on seeds 0..N-1 and prints each seed's GPU-hours and attainment with their mean and
range; run it at two commits (or on two services files) and compare seed by seed.

Cases, each built as its own benchmark builds it with only the seed changed: the ServeGen
day (generalization.py), the diurnal shapes (shapes.py) and diurnal-decode-heavy (stress.py);
and any made-up case (made_up.py, drift.py, random_traffic.py), whose seed is its generator's
draw (draw 0 is the one its table shows), replayed on the CLI's fleet as made_up.py replays it.
Writes results/seed_spread/summary.json; the last stdout line is one JSON object.
Run: .venv/bin/python benchmarks/seed_spread.py [--seeds 4] [--cases ...] [--policy P]
[--hours H] [--services YAML] (a services file with its own `general`: a config change,
compared seed by seed against the shipped one)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import drift  # noqa: E402
import generalization as G  # noqa: E402
import made_up as MU  # noqa: E402
import random_traffic  # noqa: E402
import shapes as S  # noqa: E402
import stress as ST  # noqa: E402
import trace_scaling  # noqa: E402

from heteroscale_ray.config import ServicesConfig, load_services  # noqa: E402
from heteroscale_ray.sim.cli_support import clean  # noqa: E402
from heteroscale_ray.sim.commands import REPLAY_POLICIES  # noqa: E402
from heteroscale_ray.sim.fleet import fleet_for  # noqa: E402
from heteroscale_ray.sim.replay import ReplayOptions, run_replay  # noqa: E402
from heteroscale_ray.traces import Trace, load_trace  # noqa: E402

DAY = "servegen-mlarge-day1"
# label -> the unscaled trace (each is diurnal: shifts of at most 600 s keep its shape)
CASES: dict[str, Callable[[], Trace]] = {
    DAY: lambda: load_trace(G.TRACES_DIR / G.TRACES[DAY][0]),
    "diurnal-12h": S.diurnal_12h,
    "diurnal-long-context": S.diurnal_long_context,
    "diurnal-prefill-heavy": S.diurnal_prefill_heavy,
    "diurnal-decode-heavy": ST.decode_heavy_day,
}
DEFAULT_CASES = (DAY, "diurnal-12h", "diurnal-long-context", "diurnal-decode-heavy")


def replay_seed(
    services: ServicesConfig, raw: Trace, seed: int, policy: str, hours: float | None
) -> dict[str, Any]:
    """One seed's row: the trace scaled as the other benchmarks scale it, with this seed."""
    spec = services.by_name()[G.SERVICE]
    k, trace, _, _ = trace_scaling.rate_factor(services, spec, raw, diurnal=True, seed=seed)
    if hours:
        trace = trace.slice(0, hours * 3600.0)
    counts = trace_scaling.static_counts(services, spec, trace)
    topo = fleet_for([spec], trace_scaling.fleet_gpus(spec, counts))
    return _row(services, trace, topo, seed, k, policy)


# The made-up rules by case name: each builder draws its rule anew for another draw.
RULES = {**MU.CASES, **drift.CASES, **random_traffic.CASES}


def replay_draw(
    services: ServicesConfig, label: str, draw: int, policy: str, hours: float | None
) -> dict[str, Any]:
    """One draw's row of made-up case `label`, on the fleet made_up.py replays it on."""
    spec = services.by_name()[G.SERVICE]
    trace = MU.build(label, draw, RULES)
    if hours:
        trace = trace.slice(0, hours * 3600.0)
    _, topo = MU.fleet(spec, services, trace)
    return _row(services, trace, topo, draw, 1, policy)


def _row(
    services: ServicesConfig, trace: Trace, topo: Any, seed: int, scale: int, policy: str
) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = run_replay(services, topo, {G.SERVICE: trace}, ReplayOptions(policy=policy))
    return {
        "seed": seed,
        "rate_scale": scale,
        "requests": len(trace),
        "gpu_hours": res.summary["gpu_hours"],
        "slo_attainment": res.summary["slo_attainment"],
        "wall_s": time.perf_counter() - t0,
    }


def spread(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    values = [r[key] for r in rows]
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def run_case(
    label: str, services: ServicesConfig, seeds: int, policy: str, hours: float | None
) -> dict[str, Any]:
    made_up = label not in CASES
    raw = None if made_up else CASES[label]()
    rows = []
    kind = "draws" if made_up else "seeds"
    print(f"\n== {label}: {policy}, {kind} 0-{seeds - 1}", flush=True)
    print(f"{kind[:-1]:>4} {'scale':>6} {'GPU-h':>10} {'SLO':>8} {'wall s':>7}")
    for seed in range(seeds):
        if raw is None:
            row = replay_draw(services, label, seed, policy, hours)
        else:
            row = replay_seed(services, raw, seed, policy, hours)
        rows.append(row)
        print(
            f"{seed:>4} {'x' + str(row['rate_scale']):>6} {row['gpu_hours']:>10,.1f} "
            f"{row['slo_attainment']:>8.2%} {row['wall_s']:>7.1f}",
            flush=True,
        )
    gpu, slo = spread(rows, "gpu_hours"), spread(rows, "slo_attainment")
    print(
        f"mean {gpu['mean']:,.1f} GPU-h ({gpu['min']:,.1f}-{gpu['max']:,.1f}, "
        f"{(gpu['max'] - gpu['min']) / gpu['mean']:.1%} of the mean), attainment "
        f"{slo['mean']:.2%} ({slo['min']:.2%}-{slo['max']:.2%})"
    )
    return {"rows": rows, "gpu_hours": gpu, "slo_attainment": slo}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, default=4, help="replay seeds 0..N-1 (default 4)")
    ap.add_argument(
        "--cases",
        help=f"comma-separated, of {','.join(CASES)} or any case of made_up.py, drift.py or "
        "random_traffic.py",
    )
    ap.add_argument(
        "--policy",
        default="heteroscale",
        help=f"one of {', '.join(REPLAY_POLICIES)} (paper-fixed needs a per-trace tune: not here)",
    )
    ap.add_argument("--hours", type=float, help="replay each case's first H hours only")
    ap.add_argument(
        "--services",
        default=str(ROOT / "examples" / "sim_services.yaml"),
        help="services YAML whose `general` is replayed",
    )
    ap.add_argument("--out", default=str(ROOT / "results" / "seed_spread"), help="folder")
    args = ap.parse_args(argv)
    labels = G.pick(args.cases, DEFAULT_CASES)
    bad = G.unknown(labels, {**CASES, **RULES}) or G.unknown([args.policy], REPLAY_POLICIES)
    if bad or args.seeds < 1:
        print(f"unknown case or policy {bad!r}, or --seeds below 1", file=sys.stderr)
        return 2
    services = load_services(args.services)
    if G.SERVICE not in services.by_name():
        print(f"{args.services} has no service {G.SERVICE!r} to replay", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    results = {
        label: run_case(label, services, args.seeds, args.policy, args.hours) for label in labels
    }
    report = {
        "benchmark": "seed_spread",
        "service": G.SERVICE,
        "policy": args.policy,
        "services": args.services,
        "seeds": args.seeds,
        "hours": args.hours,
        "cases": results,
        "wall_s": time.perf_counter() - t0,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(clean(report), indent=2) + "\n")
    print(f"\nwrote {out / 'summary.json'}")
    last = {
        "benchmark": "seed_spread",
        "policy": args.policy,
        "cases": {
            label: {"gpu_hours": r["gpu_hours"], "slo_attainment": r["slo_attainment"]}
            for label, r in results.items()
        },
    }
    print(json.dumps(clean(last)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
