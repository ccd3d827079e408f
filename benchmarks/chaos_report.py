"""The summary, goals, table and figure of a chaos run, pure.

A run's outcome is judged after the cluster is gone: from the request records, the faults
and a few counts (RunFacts) this computes per-fault recovery and lost requests, the per-kind
maxima and the goals, and renders them as a table and a timeline. Kept apart from
benchmarks/chaos_core.py (the scenario and the per-request and per-fault rules it applies)
so each stays one concept; no Ray here either, so tests/test_chaos_bench.py checks it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from chaos_core import (
    COMPLETED,
    FAILED,
    KILL_KINDS,
    NODE_RESTORE,
    RECOVERY_GOAL_S,
    SCALE_EVENTS_GOAL,
    SERVING_KINDS,
    TRUNCATED,
    RequestRecord,
    recovery_s,
    verdict,
)


def _max(values: Sequence[float | None]) -> float | None:
    """Max of per-fault times; None (never recovered) wins over any number."""
    if not values or any(v is None for v in values):
        return None
    return max(v for v in values if v is not None)


@dataclass(frozen=True)
class RunFacts:
    """What the run saw besides the requests and the faults."""

    scale_events: int
    duplicate_dgs: int  # DG ids ever held twice in a status snapshot
    double_booked_gpus: int  # (host, GPU) pairs ever held twice in a status snapshot
    migrations: int
    migrations_source: str
    good_latency_s: float
    end_t: float  # when the last arrival window closed (seconds since the load started)


def summarise(
    records: Sequence[RequestRecord], faults: Sequence[dict[str, Any]], facts: RunFacts
) -> dict[str, Any]:
    """The JSON summary; fills each fault's serving recovery and lost requests in place."""
    good_latency_s, end_t = facts.good_latency_s, facts.end_t
    outcomes = Counter(r.outcome for r in records)
    times = [f["t"] for f in faults]
    for k, f in enumerate(faults):
        until = times[k + 1] if k + 1 < len(times) else end_t
        sent_good = [
            (r.sent, verdict(r.sent, r.done, r.outcome == COMPLETED, good_latency_s, until))
            for r in records
        ]
        f["serving_recovery_s"] = recovery_s(f["t"], until, sent_good)
        f["lost"] = sum(1 for r in records if r.outcome != COMPLETED and f["t"] <= r.done < until)
        if f["kind"] in SERVING_KINDS:
            f["recovery_s"] = f["serving_recovery_s"]
    kills = Counter(f["kind"] for f in faults if f["kind"] in KILL_KINDS and not f.get("skipped"))
    kinds = [k for k in (*KILL_KINDS, NODE_RESTORE) if any(f["kind"] == k for f in faults)]
    recovery = {k: _max([f.get("recovery_s") for f in faults if f["kind"] == k]) for k in kinds}
    refill = {
        k: _max([f.get("refill_s") for f in faults if f["kind"] == k])
        for k in kinds
        if any("refill_s" in f for f in faults if f["kind"] == k)
    }
    failed, truncated = outcomes.get(FAILED, 0), outcomes.get(TRUNCATED, 0)
    summary: dict[str, Any] = {
        "requests": len(records),
        "completed": outcomes.get(COMPLETED, 0),
        "failed": failed,
        "truncated": truncated,
        "lost": failed + truncated,
        "migrations": facts.migrations,
        "migrations_source": facts.migrations_source,
        "kills": {k: kills.get(k, 0) for k in KILL_KINDS},
        "recovery_s_max": recovery,
        "refill_s_max": refill,
        "duplicate_dgs": facts.duplicate_dgs,
        "double_booked_gpus": facts.double_booked_gpus,
        "scale_events": facts.scale_events,
        "good_latency_s": good_latency_s,
    }
    summary["goals"] = goals(summary)
    return summary


def goals(s: Mapping[str, Any]) -> dict[str, Any]:
    """The issue's goals, plus coverage (a run that skipped a kind proves nothing about it)."""
    slow = sorted(k for k, v in s["recovery_s_max"].items() if v is None or v > RECOVERY_GOAL_S)
    missing = sorted(k for k in KILL_KINDS if s["kills"].get(k, 0) == 0)
    out = {
        "lost_zero": s["lost"] == 0,
        "recovery_le_10s": not slow,
        "recovery_over_goal": slow,
        "no_duplicate_dgs": s["duplicate_dgs"] == 0,
        "no_double_booked_gpus": s["double_booked_gpus"] == 0,
        "coverage": not missing and s["scale_events"] >= SCALE_EVENTS_GOAL,
        "kinds_not_killed": missing,
    }
    out["pass"] = all(
        out[k]
        for k in (
            "lost_zero",
            "recovery_le_10s",
            "no_duplicate_dgs",
            "no_double_booked_gpus",
            "coverage",
        )
    )
    return out


def seconds_text(x: float | None) -> str:
    return "never" if x is None else f"{x:.1f} s"


def format_table(summary: Mapping[str, Any], faults: Sequence[Mapping[str, Any]]) -> str:
    """Per-fault rows, then per-kind maxima, totals and the goals."""
    width = max([len(str(f.get("target", ""))) for f in faults] + [6])
    lines = [
        f"{'t':>6}  {'fault':<15} {'target':<{width}} {'recovery':>9} {'refill':>8} "
        f"{'migr':>5} {'lost':>5}"
    ]
    for f in faults:
        refill = seconds_text(f["refill_s"]) if "refill_s" in f else "-"
        lines.append(
            f"{f['t']:>5.0f}s  {f['kind']:<15} {str(f.get('target', '')):<{width}} "
            f"{seconds_text(f.get('recovery_s')):>9} {refill:>8} "
            f"{f.get('migrations', '-'):>5} {f.get('lost', 0):>5}"
        )
    lines.append("")
    lines.append(f"{'kind':<16}{'kills':>6}{'recovery max':>14}{'refill max':>12}")
    for k, v in summary["recovery_s_max"].items():
        refill = summary["refill_s_max"].get(k, "-")
        lines.append(
            f"{k:<16}{summary['kills'].get(k, 0):>6}{seconds_text(v):>14}"
            f"{seconds_text(refill) if refill != '-' else '-':>12}"
        )
    g = summary["goals"]
    mark = {True: "ok", False: "FAIL"}
    lines += [
        "",
        f"requests {summary['requests']}: completed {summary['completed']}, failed "
        f"{summary['failed']}, truncated {summary['truncated']} -> lost {summary['lost']}",
        f"migrations {summary['migrations']} ({summary['migrations_source']})",
        f"scale events {summary['scale_events']}; duplicate DGs {summary['duplicate_dgs']}; "
        f"double-booked GPUs {summary['double_booked_gpus']}; a request is good when it "
        f"completes within {summary['good_latency_s']:.1f} s"
        + (
            f"; control loop stood still {summary['control_cycle_stall_s_max']:.1f} s at most"
            if "control_cycle_stall_s_max" in summary
            else ""
        ),
        f"goals: lost = 0 {mark[g['lost_zero']]}; recovery <= {RECOVERY_GOAL_S:g} s per kind "
        f"{mark[g['recovery_le_10s']]}"
        + (f" (over: {', '.join(g['recovery_over_goal'])})" if g["recovery_over_goal"] else "")
        + f"; 0 duplicate DGs {mark[g['no_duplicate_dgs']]}; 0 double-booked GPUs "
        f"{mark[g['no_double_booked_gpus']]}; every kind killed and >= {SCALE_EVENTS_GOAL} "
        f"scale events {mark[g['coverage']]} -> {'PASS' if g['pass'] else 'FAIL'}",
    ]
    return "\n".join(lines)


def plot(
    path: Path,
    records: Sequence[RequestRecord],
    faults: Sequence[Mapping[str, Any]],
    samples: Sequence[Mapping[str, Any]],
    updates: Sequence[Mapping[str, Any]],
) -> bool:
    """Offered / completed / lost requests per 2 s with fault markers, and instance counts."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    end = max([r.done for r in records] + [1.0])
    bins = np.arange(0.0, end + 2.0, 2.0)
    offered, _ = np.histogram([r.sent for r in records], bins=bins)
    done, _ = np.histogram([r.done for r in records if r.outcome == COMPLETED], bins=bins)
    lost, _ = np.histogram([r.done for r in records if r.outcome != COMPLETED], bins=bins)
    fig, ax = plt.subplots(2, 1, figsize=(13, 7), sharex=True)
    mid = bins[:-1]
    ax[0].step(mid, offered / 2.0, where="post", label="offered (req/s)", color="black")
    ax[0].step(mid, done / 2.0, where="post", label="completed (req/s)", color="tab:green")
    ax[0].bar(
        mid,
        lost / 2.0,
        width=2.0,
        align="edge",
        label="failed + truncated (req/s)",
        color="tab:red",
        alpha=0.7,
    )
    colors = dict(zip((*KILL_KINDS, NODE_RESTORE), plt.get_cmap("tab10").colors, strict=False))
    for f in faults:
        for a in ax:
            a.axvline(f["t"], color=colors.get(f["kind"], "grey"), ls="--", lw=1)
        ax[0].text(
            f["t"],
            ax[0].get_ylim()[1] * 0.98,
            f["kind"],
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
            color=colors.get(f["kind"], "grey"),
        )
    ax[0].set_ylabel("requests/s")
    ax[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    t = [s["t"] for s in samples]
    for role, color, lw in (("prefill", "tab:orange", 3.5), ("decode", "tab:blue", 1.5)):
        target = [s[f"{role}_target"] for s in samples]
        running = [s[f"{role}_running"] for s in samples]
        ax[1].step(t, target, where="post", color=color, lw=lw, label=f"{role} target")
        ax[1].step(t, running, ":", where="post", color=color, label=f"{role} running")
    for u in updates:
        ax[1].axvline(u["t"], color="grey", alpha=0.25, lw=0.8)
    ax[1].set_ylabel("instances")
    ax[1].set_xlabel("seconds since the load started (grey: min-instance updates)")
    ax[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.suptitle("HeteroScale chaos benchmark: open-loop load through faults and scale events")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
