"""What burst insurance costs and buys: `general` with less headroom and a shorter window.

HeteroScale reacts: an instance it asks for serves a start-up later, so the `general` config
insures each role with learned burst headroom (demand.max_burst_margin caps it) and holds it at
its recent peak for up to demand.peak_window_s before scaling in (the whole window only while
its traffic has come back from falls that deep). On the diurnal traces both show up as
GPU-hours over the oracle, which sees the load before it comes. This benchmark replays the
same config with the insurance cut step by step, down to none at HPA's fixed 300-s window (a
reactive floor: what reacting alone can reach on this fleet), and with every peak held the
whole 900 s (the window before it was learned), against the oracle and static, so the trade
between GPU-hours and SLO attainment is measured rather than argued.

Traces: the two ServeGen production traces in ../shared/data/traces, rate-scaled as in
generalization.py. Writes results/headroom_frontier/summary.json and frontier.png; the last
stdout line is one JSON object. Run: .venv/bin/python benchmarks/headroom_frontier.py [--quick]
[--traces ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import generalization as G  # noqa: E402
from trace_scaling import fleet_gpus, rate_factor, static_counts  # noqa: E402

from heteroscale_ray.config import ServicesConfig, ServiceSpec, load_services  # noqa: E402
from heteroscale_ray.sim.cli_support import clean  # noqa: E402
from heteroscale_ray.sim.fleet import fleet_for  # noqa: E402
from heteroscale_ray.sim.replay import ReplayOptions, run_replay  # noqa: E402
from heteroscale_ray.traces import load_trace  # noqa: E402

TRACES = ("servegen-mlarge-day1", "servegen-mmid-days4-5")


class Knobs(NamedTuple):
    """The insurance a variant keeps: demand.max_burst_margin, demand.peak_window_s and
    demand.learn_window (False: every peak held the whole window, HPA's way)."""

    max_burst_margin: float
    peak_window_s: float
    learn_window: bool = True


# the first is `general` as shipped
VARIANTS: dict[str, Knobs] = {
    "general": Knobs(1.0, 900.0),
    "fixed 900-s window": Knobs(1.0, 900.0, False),
    "margin<=0.5": Knobs(0.5, 900.0),
    "no margin": Knobs(0.0, 900.0),
    "window 300 s": Knobs(1.0, 300.0, False),
    "reactive floor": Knobs(0.0, 300.0, False),
}
REFERENCES = ("oracle", "static")
QUICK_CUT_S = 6 * 3600.0


def variant(spec: ServiceSpec, knobs: Knobs) -> ServiceSpec:
    """`spec` with its burst-headroom cap and scale-in window replaced."""
    data = spec.model_dump(mode="json")
    policy = dict(data["policy"])
    policy["demand"] = {**dict(policy.get("demand") or {}), **knobs._asdict()}
    data["policy"] = policy
    return ServiceSpec.model_validate(data)


def _fmt(rows: list[dict[str, Any]]) -> str:
    head = f"{'variant':<20}{'GPU-h':>9}{'xoracle':>9}{'xstatic':>9}{'SLO':>9}{'flipP/h':>9}{'flipD/h':>9}"
    by = {r["variant"]: r for r in rows}
    orc, st = by["oracle"]["gpu_hours"], by["static"]["gpu_hours"]
    out = [head]
    for r in rows:
        fl = r["direction_changes_per_h"]
        out.append(
            f"{r['variant']:<20}{r['gpu_hours']:9.1f}{r['gpu_hours'] / orc:9.2f}"
            f"{r['gpu_hours'] / st:9.2f}{r['slo_attainment']:9.2%}"
            f"{fl.get('prefill', 0):9.1f}{fl.get('decode', 0):9.1f}"
        )
    return "\n".join(out)


def run_trace(label: str, services: ServicesConfig, quick: bool) -> dict[str, Any]:
    fname, diurnal, _ = G.TRACES[label]
    spec = services.by_name()[G.SERVICE]
    raw = load_trace(G.TRACES_DIR / fname)
    k, scaled, _, _ = rate_factor(services, spec, raw, diurnal=diurnal)
    trace = scaled.slice(0, QUICK_CUT_S) if quick else scaled
    topo = fleet_for([spec], fleet_gpus(spec, static_counts(services, spec, scaled)))
    hours = trace.duration_s / 3600.0
    print(f"\n== {label}: x{k}, {len(trace):,} requests over {hours:.1f} h", flush=True)
    rows = []
    runs = [(name, "heteroscale", variant(spec, knobs)) for name, knobs in VARIANTS.items()]
    runs += [(ref, ref, spec) for ref in REFERENCES]
    for name, pol, s in runs:
        svc = ServicesConfig(gpus=services.gpus, services=[s])
        t0 = time.perf_counter()
        res = run_replay(svc, topo, {G.SERVICE: trace}, ReplayOptions(policy=pol))
        row = G._row(pol, res, time.perf_counter() - t0, hours)
        row["variant"] = name
        if name in VARIANTS:
            row.update(VARIANTS[name]._asdict())
        rows.append(row)
        del res
    print(_fmt(rows), flush=True)
    return {"trace": fname, "rate_scale": k, "hours": hours, "rows": rows}


def _png(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), constrained_layout=True)
    for label, res in results.items():
        by = {r["variant"]: r for r in res["rows"]}
        orc = by["oracle"]["gpu_hours"]
        pts = [r for r in res["rows"] if r["variant"] in VARIANTS]
        xs = [r["gpu_hours"] / orc for r in pts]
        ys = [r["slo_attainment"] * 100 for r in pts]
        ax.plot(xs, ys, "o", label=label)
        for r, x, y in zip(pts, xs, ys, strict=True):
            ax.annotate(r["variant"], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.axhline(99.0, color="gray", ls="--", lw=0.8, label="99% attainment")
    ax.axvline(G.VS_ORACLE, color="gray", ls=":", lw=0.8, label=f"{G.VS_ORACLE}x oracle")
    ax.set_xlabel("GPU-hours / oracle's")
    ax.set_ylabel("SLO attainment (%)")
    ax.set_title("Burst insurance on the diurnal traces: cost against attainment")
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="replay each trace's first 6 h")
    ap.add_argument("--traces", help=f"comma-separated subset of {','.join(TRACES)}")
    ap.add_argument("--out", default=str(ROOT / "results" / "headroom_frontier"), help="folder")
    args = ap.parse_args(argv)
    labels = G.pick(args.traces, TRACES)
    bad = G.unknown(labels, TRACES)
    if bad:
        print(f"unknown trace {bad!r}", file=sys.stderr)
        return 2
    services = load_services(ROOT / "examples" / "sim_services.yaml")
    out = Path(args.out)
    t0 = time.perf_counter()
    results = {label: run_trace(label, services, args.quick) for label in labels}
    png = _png(results, out / "frontier.png")
    print(f"wrote {png}")
    report = {
        "benchmark": "headroom_frontier",
        "service": G.SERVICE,
        "quick": args.quick,
        "variants": {k: knobs._asdict() for k, knobs in VARIANTS.items()},
        "traces": results,
        "wall_s": time.perf_counter() - t0,
    }
    (out / "summary.json").write_text(json.dumps(clean(report), indent=2) + "\n")
    headline = {k: v for k, v in report.items() if k != "traces"}
    for label, res in results.items():
        orc = next(r["gpu_hours"] for r in res["rows"] if r["variant"] == "oracle")
        headline.setdefault("gpu_h_vs_oracle", {})[label] = {
            r["variant"]: round(r["gpu_hours"] / orc, 3) for r in res["rows"]
        }
        headline.setdefault("slo_attainment", {})[label] = {
            r["variant"]: round(r["slo_attainment"], 4) for r in res["rows"]
        }
    print(json.dumps(clean(headline)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
