"""`heteroscale demo`: local labelled cluster -> control plane -> rising and falling load.

Prints a live table every few seconds, then a summary table, and writes
``results/demo/demo.png`` (load vs instances vs latency), ``timeline.csv`` and
``summary.json``. Everything it started is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import csv
import json
import socket
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from heteroscale_ray.demo import scenario

HEADER = (
    f"{'time':>6} {'load':>6} {'decode':>7} {'P':>5} {'D':>5} {'DGs':>4} "
    f"{'TTFT p99':>9} {'TBT p99':>8} {'done':>6} {'fail':>5}  last decision"
)


@dataclass
class Row:
    t: float
    load_rps: float
    decode_tps: float | None
    prefill_running: int
    prefill_target: int
    decode_running: int
    decode_target: int
    dgs: int
    ttft_p99_s: float | None
    tbt_p99_s: float | None
    done: int
    failed: int
    reason: str

    def text(self) -> str:
        def ms(x: float | None) -> str:
            return "-" if x is None else f"{x * 1000:.0f}ms"

        tps = "-" if self.decode_tps is None else f"{self.decode_tps:.0f}"
        return (
            f"{self.t:>5.0f}s {self.load_rps:>5.1f}/s {tps:>7} "
            f"{self.prefill_running:>2}/{self.prefill_target:<2} "
            f"{self.decode_running:>2}/{self.decode_target:<2} {self.dgs:>4} "
            f"{ms(self.ttft_p99_s):>9} {ms(self.tbt_p99_s):>8} {self.done:>6} {self.failed:>5}  "
            f"{self.reason}"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _row(t: float, rate: float, st: dict[str, Any], load: Any) -> Row:
    obs = st.get("observations", {}).get(scenario.SERVICE, {})
    dgs = st.get("pre_scheduler", {}).get("dgs", [])
    reasons = [e for e in st.get("decisions", []) if e["service"] == scenario.SERVICE]
    return Row(
        t=t,
        load_rps=rate,
        decode_tps=obs.get("decode_tps"),
        prefill_running=sum(d["running"]["prefill"] for d in dgs),
        prefill_target=sum(d["prefill"] for d in dgs),
        decode_running=sum(d["running"]["decode"] for d in dgs),
        decode_target=sum(d["decode"] for d in dgs),
        dgs=len(dgs),
        ttft_p99_s=obs.get("ttft_p99_s"),
        tbt_p99_s=obs.get("tbt_p99_s"),
        done=sum(1 for r in load.records if r.ok) if load else 0,
        failed=len(load.failures()) if load else 0,
        reason=reasons[-1]["reason"] if reasons else "-",
    )


def run_demo(
    out_dir: Path,
    duration_s: float = 150.0,
    low_rps: float = 0.5,
    peak_rps: float = 3.0,
    period_s: float = 2.0,
    soft_window_s: float = 15.0,
    every_s: float = 5.0,
    trace_path: Path | None = None,
) -> dict[str, Any]:
    """Run the whole demo; returns the summary (also written to ``out_dir``)."""
    from heteroscale_ray.actors.control_plane import (
        ControlPlaneSettings,
        control_plane_status,
        start_control_plane,
        stop_control_plane,
    )
    from heteroscale_ray.actors.serving_adapter import ServingOptions
    from heteroscale_ray.demo.load import LoadGenerator
    from heteroscale_ray.local_cluster import start_local_cluster
    from heteroscale_ray.serving.emulation import EmulationConfig
    from heteroscale_ray.serving.model import ModelConfig

    wall0 = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    modulation = scenario.trace_modulation(trace_path) if trace_path else None
    rate = scenario.make_rate(duration_s, low_rps, peak_rps, modulation)
    shape = (
        "Azure conversation trace x rise-and-fall envelope"
        if modulation is not None
        else "rise-and-fall envelope"
    )
    print(
        "[demo] starting a local Ray cluster: 2 mini-pods x (H20 host + L20 host), 4 fake GPUs each"
    )
    local = start_local_cluster(scenario.topology(), cpus_per_host=8)
    load = None
    rows: list[Row] = []
    all_decisions: list[dict[str, Any]] = []
    final_capacity: dict[str, Any] = {}
    try:
        port = _free_port()
        options = ServingOptions(
            engine=ModelConfig(n_layers=2, d_model=64, n_heads=4, max_context=512),
            emulation=EmulationConfig(enabled=True, time_scale=scenario.TIME_SCALE),
            graceful_shutdown_timeout_s=60.0,
        )
        settings = ControlPlaneSettings(
            period_s=period_s, soft_window_s=soft_window_s, options=options
        )
        print(
            f"[demo] starting the control plane (period {period_s:g}s, soft scale-in window {soft_window_s:g}s) and Serve on port {port}"
        )
        start_control_plane(
            scenario.services(), settings=settings, http_host="127.0.0.1", http_port=port
        )
        deadline = time.monotonic() + 180
        while True:
            st = control_plane_status(5)
            dgs = st["pre_scheduler"].get("dgs", []) if "pre_scheduler" in st else []
            if dgs and all(d["gate_open"] for d in dgs):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the first DG did not come up in 180 s: {st.get('last_error')}")
            time.sleep(1.0)
        print(
            f"[demo] first DG ready after {time.monotonic() - wall0:.0f}s; driving {duration_s:.0f}s of load "
            f"({low_rps:g} -> {peak_rps:g} -> {low_rps:g} req/s, {shape}), ~{scenario.PROMPT_BYTES}-token "
            f"prompts, {scenario.OUTPUT_TOKENS} tokens out, emulated GPUs {scenario.TIME_SCALE:g}x "
            "slower than the capacity prior assumes"
        )
        load = LoadGenerator(
            f"http://127.0.0.1:{port}",
            scenario.SERVICE,
            rate,
            prompt_bytes=scenario.PROMPT_BYTES,
            max_tokens=scenario.OUTPUT_TOKENS,
        ).start()
        print(HEADER)
        next_at = 0.0
        while (t := load.elapsed()) < duration_s:
            time.sleep(max(0.0, next_at - t))
            t = load.elapsed()
            st = control_plane_status(50)
            row = _row(t, rate(t), st, load)
            rows.append(row)
            print(row.text(), flush=True)
            next_at += every_s
        load.stop(drain_s=90)
        st = control_plane_status(500)
        rows.append(_row(load.elapsed(), 0.0, st, load))
        all_decisions = st["decisions"]
        final_capacity = st.get("capacity", {}).get(scenario.SERVICE, {})
    finally:
        if load is not None:
            load.stop(drain_s=30)
        print("[demo] stopping the control plane, Serve and the local cluster")
        try:
            stop_control_plane(purge=True)
        finally:
            local.shutdown()
    summary = summarise(rows, load, all_decisions, time.monotonic() - wall0, duration_s, shape)
    summary["capacity_at_end"] = final_capacity
    write_outputs(out_dir, rows, summary)
    print()
    print(format_summary(summary))
    print(
        f"\n[demo] wrote {out_dir / 'demo.png'}, {out_dir / 'timeline.csv'}, {out_dir / 'summary.json'}"
    )
    return summary


def _pct(values: list[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if values else None


def summarise(
    rows: list[Row],
    load: Any,
    decisions: list[dict[str, Any]],
    wall_s: float,
    duration_s: float,
    shape: str,
) -> dict[str, Any]:
    records = load.records if load else []
    ok = [r for r in records if r.ok]
    lat = [r.latency_s for r in ok]
    reasons = Counter(e["reason"] for e in decisions)
    changes = [
        e for e in decisions if (e["prefill"], e["decode"]) != (e["had_prefill"], e["had_decode"])
    ]
    # instance-seconds actually held vs holding the peak the whole time
    inst_s = sum(
        (b.t - a.t) * (a.prefill_target + a.decode_target)
        for a, b in zip(rows[:-1], rows[1:], strict=True)
    )
    peak = max((r.prefill_target + r.decode_target for r in rows), default=0)
    span = rows[-1].t - rows[0].t if len(rows) > 1 else 0.0
    return {
        "wall_time_s": round(wall_s, 1),
        "load_duration_s": duration_s,
        "load_shape": shape,
        "requests_sent": len(records),
        "requests_ok": len(ok),
        "requests_failed": len(records) - len(ok),
        "client_latency_p50_s": _pct(lat, 50),
        "client_latency_p99_s": _pct(lat, 99),
        "tokens_generated": sum(r.tokens for r in ok),
        "peak_prefill": max((r.prefill_target for r in rows), default=0),
        "peak_decode": max((r.decode_target for r in rows), default=0),
        "min_prefill": min((r.prefill_target for r in rows), default=0),
        "min_decode": min((r.decode_target for r in rows), default=0),
        "peak_dgs": max((r.dgs for r in rows), default=0),
        "worst_ttft_p99_s": max(
            (r.ttft_p99_s for r in rows if r.ttft_p99_s is not None), default=None
        ),
        "worst_tbt_p99_s": max(
            (r.tbt_p99_s for r in rows if r.tbt_p99_s is not None), default=None
        ),
        "instance_seconds": round(inst_s, 1),
        "instance_seconds_at_static_peak": round(peak * span, 1),
        "scaling_decisions": len(changes),
        "failure_examples": [f"{r.status} {r.error}" for r in records if not r.ok][:3],
        "decisions_by_reason": dict(sorted(reasons.items())),
        # The first sentence of each reason: the numbers behind it and the capacity in force.
        "reason_examples": {
            r: next(e["message"] for e in decisions if e["reason"] == r) for r in sorted(reasons)
        },
    }


def format_summary(s: dict[str, Any]) -> str:
    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x * 1000:.0f} ms"

    saved = (
        1 - s["instance_seconds"] / s["instance_seconds_at_static_peak"]
        if s["instance_seconds_at_static_peak"]
        else 0.0
    )
    lines = [
        (
            "wall time",
            f"{s['wall_time_s']:.0f} s (load {s['load_duration_s']:.0f} s, {s['load_shape']})",
        ),
        ("requests ok / failed", f"{s['requests_ok']} / {s['requests_failed']}"),
        ("tokens generated", f"{s['tokens_generated']}"),
        (
            "client latency p50 / p99",
            f"{ms(s['client_latency_p50_s'])} / {ms(s['client_latency_p99_s'])}",
        ),
        ("prefill instances min -> peak", f"{s['min_prefill']} -> {s['peak_prefill']}"),
        ("decode instances min -> peak", f"{s['min_decode']} -> {s['peak_decode']}"),
        ("deployment groups at peak", f"{s['peak_dgs']}"),
        (
            "worst TTFT / TBT p99 (replicas)",
            f"{ms(s['worst_ttft_p99_s'])} / {ms(s['worst_tbt_p99_s'])}",
        ),
        (
            "instance-seconds vs static peak",
            f"{s['instance_seconds']:.0f} vs {s['instance_seconds_at_static_peak']:.0f} ({saved:.0%} fewer)",
        ),
        ("scaling decisions", f"{s['scaling_decisions']}"),
        ("decisions by reason", ", ".join(f"{k} {v}" for k, v in s["decisions_by_reason"].items())),
    ]
    cap = s.get("capacity_at_end") or {}
    if cap and "error" not in cap:
        lines.append(
            (
                "capacity in force at the end",
                f"{cap['text']} (at {cap['prompt_mean']:,.0f}-token prompts)",
            )
        )
    lines += [("failed request", f) for f in s.get("failure_examples", [])]
    width = max(len(k) for k, _ in lines)
    out = ["summary", "-" * (width + 40)]
    out += [f"{k:<{width}}  {v}" for k, v in lines]
    examples = s.get("reason_examples") or {}
    if examples:
        out.append("")
        out.append("one decision per reason (the sentence ends with the capacity in force):")
        out += [f"  {r}: {m}" for r, m in examples.items()]
    return "\n".join(out)


def write_outputs(out_dir: Path, rows: list[Row], summary: dict[str, Any]) -> None:
    with (out_dir / "timeline.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])) if rows else ["t"])
        w.writeheader()
        for r in rows:
            w.writerow(asdict(r))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(out_dir / "demo.png", rows)


def plot(path: Path, rows: list[Row]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r.t for r in rows]
    fig, ax = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    ax[0].plot(t, [r.load_rps for r in rows], label="offered load (req/s)", color="black")
    ax0b = ax[0].twinx()
    ax0b.plot(
        t, [r.decode_tps or 0 for r in rows], label="decode tokens/s", color="tab:blue", alpha=0.7
    )
    ax[0].set_ylabel("req/s")
    ax0b.set_ylabel("decode tokens/s")
    ax[0].legend(loc="upper left")
    ax0b.legend(loc="upper right")
    ax[1].step(
        t, [r.decode_target for r in rows], where="post", label="decode (target)", color="tab:blue"
    )
    ax[1].step(
        t,
        [r.prefill_target for r in rows],
        where="post",
        label="prefill (target)",
        color="tab:orange",
    )
    ax[1].plot(t, [r.decode_running for r in rows], ":", color="tab:blue", label="decode (running)")
    ax[1].plot(
        t, [r.prefill_running for r in rows], ":", color="tab:orange", label="prefill (running)"
    )
    ax[1].set_ylabel("instances")
    ax[1].legend(loc="upper left", fontsize=8)
    ax[2].plot(t, [(r.ttft_p99_s or 0) * 1000 for r in rows], label="TTFT p99", color="tab:red")
    ax[2].plot(t, [(r.tbt_p99_s or 0) * 1000 for r in rows], label="TBT p99", color="tab:green")
    ax[2].set_ylabel("ms")
    ax[2].set_xlabel("seconds since load start")
    ax[2].legend(loc="upper left")
    fig.suptitle("HeteroScale demo: coordinated P/D autoscaling (prefill L20, decode H20, 1:2)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
