"""Experiment 6: a fixed P/D ratio vs the dynamic ratio when the request mix drifts.

The paper leaves "a dynamic P/D ratio that follows workload drift" to future work. Workload:
one hour of the Azure conversation trace (x12 superposed) for the `assistant` service, with
Mooncake-trace long documents (~15k in / 149 out, stretched to the hour, superposed and thinned
by a ramp) arriving from minute 15, peaking from minute 30 to 45 and gone by minute 55. Chat
alone needs about 2:3 prefill:decode; at the peak the mix needs roughly 1:1.

Policies (all HeteroScale, same targets, TTFT latency guard on):
  fixed-chat   pd_ratio 2:3, the ratio an offline sweep on chat finds (the paper's rule)
  fixed-peak   pd_ratio 3:2, provisioned for the peak mix all day
  carried      pd_ratio 2:3 and targets carried from chat's lengths (policy.tuned_at)
  dynamic      pd_ratio 2:3 to start, policy.dynamic_ratio on (targets carried too)
  oracle       per-interval sizing from the future load (reference)

Writes results/exp6_dynamic_ratio/{summary.json, timeline.png, ratio.png} and prints the table.
Run: .venv/bin/python benchmarks/exp6_dynamic_ratio.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from heteroscale_ray.config import ServicesConfig, load_services  # noqa: E402
from heteroscale_ray.sim.cli_support import clean, progress  # noqa: E402
from heteroscale_ray.sim.fleet import fleet_for  # noqa: E402
from heteroscale_ray.sim.plots import _plt, timeline_png  # noqa: E402
from heteroscale_ray.sim.replay import ReplayOptions, run_replay  # noqa: E402
from heteroscale_ray.sim.report import table, timeline  # noqa: E402
from heteroscale_ray.traces import (  # noqa: E402
    Trace,
    load_trace,
    overlay,
    scale_rate,
    thin,
    time_compress,
)

TRACES = ROOT.parent / "shared" / "data" / "traces"
OUT = ROOT / "results" / "exp6_dynamic_ratio"
SERVICE = "assistant"
FLEET_GPUS = 1024
CHAT_SCALE = 12.0
DOC_SCALE = 10.0  # long documents at the peak: ~11 req/s next to ~65 req/s of chat


def doc_share(t: np.ndarray, span: float) -> np.ndarray:
    """0 until 25% of the span, ramp to 1 at 50%, hold to 75%, ramp to 0 at ~92%."""
    x = np.asarray(t) / span
    up = np.clip((x - 0.25) / 0.25, 0.0, 1.0)
    down = np.clip((0.917 - x) / 0.167, 0.0, 1.0)
    return np.minimum(up, down)


def workload(quick: bool) -> tuple[Trace, Trace, Trace, float]:
    chat = load_trace(TRACES / "AzureLLMInferenceTrace_conv.csv")
    docs = load_trace(TRACES / "synthetic_trace.jsonl")
    span = chat.duration_s
    docs = time_compress(docs, docs.duration_s / span)  # stretch the 17 minutes to the hour
    chat = scale_rate(chat, CHAT_SCALE, seed=0)
    docs = scale_rate(docs, DOC_SCALE, seed=1)
    docs = thin(docs, lambda t: doc_share(t, span), seed=2)
    mixed = overlay([chat, docs])
    if quick:  # the first 40 minutes: chat alone, the ramp, and the peak
        chat, docs, mixed = (t.slice(0, 0.667 * span) for t in (chat, docs, mixed))
    return chat, docs, mixed, span


def variants(base: ServicesConfig) -> dict[str, ServicesConfig]:
    data = base.model_dump(mode="json")
    spec = next(s for s in data["services"] if s["name"] == SERVICE)

    def with_policy(ratio: str, dynamic: bool, carried: bool = True) -> ServicesConfig:
        one = json.loads(json.dumps(spec))
        one["pd_ratio"] = ratio
        one["policy"]["dynamic_ratio"]["enabled"] = dynamic
        if not carried:
            one["policy"]["tuned_at"] = None
        return ServicesConfig.model_validate({"gpus": data["gpus"], "services": [one]})

    return {
        "fixed-chat": with_policy("2:3", False, carried=False),
        "fixed-peak": with_policy("3:2", False, carried=False),
        "carried": with_policy("2:3", False),
        "dynamic": with_policy("2:3", True),
        "oracle": with_policy("2:3", False, carried=False),
    }


def ratio_series(cycles: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """(minutes, prefill/decode of the decision) per control cycle."""
    t, r = [], []
    for c in cycles:
        p, d = c.get(f"{SERVICE}.prefill"), c.get(f"{SERVICE}.decode")
        if p is not None and d:
            t.append(c["t"] / 60.0)
            r.append(p / d)
    return t, r


def ratio_changes(cycles: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(second, new ratio) each time the policy's P/D ratio moved."""
    out: list[tuple[int, str]] = []
    last = None
    for c in cycles:
        ratio = c.get(f"{SERVICE}.pd_ratio")
        if ratio and ratio != last:
            out.append((round(c["t"]), ratio))
            last = ratio
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="first 40 minutes only")
    args = ap.parse_args()
    base = load_services(ROOT / "examples" / "sim_services.yaml")
    spec = base.by_name()[SERVICE]
    chat, docs, mixed, span = workload(args.quick)
    topo = fleet_for([spec], FLEET_GPUS)
    OUT.mkdir(parents=True, exist_ok=True)
    print(
        f"== {SERVICE}: {len(mixed)} requests over {mixed.duration_s:.0f} s: "
        f"{len(chat)} chat (Azure conv x{CHAT_SCALE:g}) + {len(docs)} long documents "
        f"(Mooncake x{DOC_SCALE:g}, ramped), fleet {topo.total_gpus()} GPUs",
        flush=True,
    )
    rows, lines, ratios, changes = [], {}, {}, {}
    for label, services in variants(base).items():
        opts = ReplayOptions(policy="oracle" if label == "oracle" else "heteroscale")
        res = run_replay(services, topo, {SERVICE: mixed}, opts, progress=progress(label))
        s = dict(res.summary, policy=label)
        print(
            f"\r[{label}] {s['sim_time_s']:.0f} s simulated in {s['wall_s']:.1f} s",
            file=sys.stderr,
        )
        rows.append(s)
        lines[label] = timeline(res.sim, mixed.duration_s)
        ratios[label] = ratio_series(res.cycles)
        changes[label] = ratio_changes(res.cycles)
    by = {r["policy"]: r for r in rows}
    print(table(rows))
    dyn, chat_fixed, peak = by["dynamic"], by["fixed-chat"], by["fixed-peak"]
    compare = {
        "gpu_hours_vs_fixed_chat": dyn["gpu_hours"] / chat_fixed["gpu_hours"] - 1,
        "gpu_hours_vs_fixed_peak": dyn["gpu_hours"] / peak["gpu_hours"] - 1,
        "gpu_hours_vs_oracle": dyn["gpu_hours"] / by["oracle"]["gpu_hours"] - 1,
        "slo_attainment_points_vs_fixed_chat": 100
        * (dyn["slo_attainment"] - chat_fixed["slo_attainment"]),
        "slo_attainment_points_vs_fixed_peak": 100
        * (dyn["slo_attainment"] - peak["slo_attainment"]),
    }
    print("\ndynamic ratio vs fixed")
    print(
        f"  GPU-hours          {compare['gpu_hours_vs_fixed_chat']:+.1%} vs fixed-chat, "
        f"{compare['gpu_hours_vs_fixed_peak']:+.1%} vs fixed-peak, "
        f"{compare['gpu_hours_vs_oracle']:+.1%} vs oracle"
    )
    print(
        f"  SLO attainment     {dyn['slo_attainment']:.1%} (fixed-chat "
        f"{chat_fixed['slo_attainment']:.1%}, fixed-peak {peak['slo_attainment']:.1%}, "
        f"oracle {by['oracle']['slo_attainment']:.1%})"
    )
    for label in ("dynamic", "carried"):
        moves = ", ".join(f"{r} at {t / 60:.0f} min" for t, r in changes[label])
        print(f"  {label + ' ratio':<18} {moves}")
    report = {
        "service": SERVICE,
        "requests": len(mixed),
        "chat_requests": len(chat),
        "doc_requests": len(docs),
        "chat_scale": CHAT_SCALE,
        "doc_scale": DOC_SCALE,
        "fleet_gpus": topo.total_gpus(),
        "quick": args.quick,
        "summaries": rows,
        "compare": compare,
        "ratio_changes": changes["dynamic"],
        "carried_ratio_changes": changes["carried"],
    }
    (OUT / "summary.json").write_text(json.dumps(clean(report), indent=2) + "\n")
    timeline_png(
        lines,
        OUT / "timeline.png",
        f"exp6 {SERVICE}: chat + drifting long documents",
        (spec.slo.ttft_s, spec.slo.tbt_s),
    )
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4))
    for label, (t, r) in ratios.items():
        ax.step(t, r, where="post", label=label)
    minutes = np.arange(0, mixed.duration_s, 60.0)
    ax2 = ax.twinx()
    ax2.fill_between(
        minutes / 60.0, doc_share(minutes, span), alpha=0.15, color="grey", step="post"
    )
    ax2.set_ylabel("long-document share of peak")
    ax.set_xlabel("minutes")
    ax.set_ylabel("prefill / decode instances")
    ax.legend(loc="upper left")
    ax.set_title("exp6: P/D ratio over time")
    fig.tight_layout()
    fig.savefig(OUT / "ratio.png", dpi=110)
    print(f"\nwrote {OUT}/summary.json, timeline.png, ratio.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
