"""A replay's report: what it cost (GPU-hours, cost), how it served (latency, SLO attainment
against the idle-fleet ceiling) and what it did (scaling actions, KV transfer, cache hits)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from heteroscale_ray.config import ServiceSpec
from heteroscale_ray.perf.network import SharedLevel
from heteroscale_ray.sim.actuator import SimActuator
from heteroscale_ray.sim.cluster import DECODE, PREFILL, ClusterSim
from heteroscale_ray.sim.observe import request_tbt

if TYPE_CHECKING:
    from heteroscale_ray.sim.replay import ReplayOptions


CEILING_BLOCK = 1 << 16  # requests per block of `slo_ceiling`


def role_kinds(sim: ClusterSim, spec: ServiceSpec) -> tuple[Any, Any]:
    """The instance kinds of a service's preferred prefill and decode GPU types."""
    p = sim.kinds[sim.kind_for(spec, spec.prefill.gpu_types[0], spec.prefill.gpus_per_instance)]
    d = sim.kinds[sim.kind_for(spec, spec.decode.gpu_types[0], spec.decode.gpus_per_instance)]
    return p, d


def slo_ceiling(sim: ClusterSim, specs: list[ServiceSpec]) -> float:
    """Share of requests that meet both SLOs on an idle cluster: no queueing, batch of one.

    TTFT is the request's own prefill (with the cache hits it got); TBT is its KV transfer
    (at the switch level it got, S1 if never routed) spread over its gaps plus a batch-of-one
    decode step. No policy can beat this; long prompts with 2-3 output tokens miss the TBT SLO
    on the transfer alone (Mooncake), which is why attainment there stays below 100%.
    """
    w = sim.w
    n = len(w)
    if not n:
        return float("nan")
    ok = np.zeros(n, dtype=bool)
    for s, spec in enumerate(specs):
        pk, dk = role_kinds(sim, spec)
        mine = np.flatnonzero(w.service == s)
        # elementwise, so in cache-sized blocks: the same values, far less memory traffic
        for b in range(0, len(mine), CEILING_BLOCK):
            m = mine[b : b + CEILING_BLOCK]
            inp = w.input_tokens[m].astype(float)
            out = w.output_tokens[m].astype(float)
            cached = np.minimum(sim.cached[m].astype(float), np.maximum(inp - 1, 0))
            own = pk.prefill_seconds(inp - cached, cached)
            kv = sim.kv_time[m]
            kv = np.where(
                np.isfinite(kv),
                kv,
                pk.kv_transfer_seconds(inp, np.full(len(m), int(SharedLevel.S1))),
            )
            gaps = np.maximum(out - 1, 1)
            tbt = kv / gaps + dk.step_seconds(np.ones(len(m)), inp + out / 2)
            ok[m] = (own <= spec.slo.ttft_s + 1e-12) & (
                (out <= 1) | (tbt <= spec.slo.tbt_s + 1e-12)
            )
    return float(ok.mean())


def summarize(
    sim: ClusterSim,
    specs: list[ServiceSpec],
    duration: float,
    opts: ReplayOptions,
    wall_s: float,
    scaling_actions: int,
    unplaced: int,
    actuator: SimActuator,
    rejected: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The report's numbers; resource metrics cover [0, trace duration), latency every request.

    `rejected`: requests per service the ingress turned away (sim/oversized.py). They are
    requests that missed their SLO, in the attainment and in its ceiling alike."""
    w = sim.w
    turned_away = sum((rejected or {}).values())
    n = len(w)
    asked = n + turned_away
    T = max(1, int(math.ceil(duration / sim.dt)))
    hours = sim.dt / 3600.0
    gpus = sim.ts_gpus[:T]
    held = float(gpus.sum())
    ids = np.arange(n)
    ttft = sim.t_first - w.arrival
    tbt = request_tbt(sim, ids)
    finished = np.isfinite(sim.t_done)
    slo_ttft = np.array([specs[s].slo.ttft_s for s in range(len(specs))])[w.service]
    slo_tbt = np.array([specs[s].slo.tbt_s for s in range(len(specs))])[w.service]
    ok = finished & (ttft <= slo_ttft + 1e-12) & (tbt <= slo_tbt + 1e-12)
    fin_ttft = ttft[np.isfinite(ttft)]
    fin_tbt = tbt[finished & (w.output_tokens > 1)]
    routed = sim.kv_level >= 0
    kv_bytes = np.zeros(n)
    for s, spec in enumerate(specs):
        m = routed & (w.service == s)
        if m.any():
            kind = sim.kinds[
                sim.kind_for(spec, spec.prefill.gpu_types[0], spec.prefill.gpus_per_instance)
            ]
            kv_bytes[m] = w.input_tokens[m] * kind.kv_bytes_per_token
    kv_time = np.where(routed, sim.kv_time, 0.0)
    ceiling = slo_ceiling(sim, specs) * n / asked if n else float("nan")
    levels = sim.kv_level[routed]
    per_level = np.bincount(levels, minlength=len(SharedLevel))
    level_share = {
        lvl.name: float(per_level[int(lvl)] / len(levels)) if len(levels) else 0.0
        for lvl in SharedLevel
    }

    def role_mean(arr: np.ndarray, role: int) -> float:
        g = float(gpus[:, :, role].sum())
        return float(arr[:T, :, role].sum()) / g if g > 0 else 0.0

    def pct(x: np.ndarray, qs: tuple[float, ...]) -> list[float]:
        """Percentiles of `x`, one partition for all of them (same values as one by one)."""
        return np.percentile(x, qs).tolist() if len(x) else [float("nan")] * len(qs)

    ttft_p50, ttft_p99 = pct(fin_ttft, (50, 99))
    tbt_p50, tbt_p99 = pct(fin_tbt, (50, 99))

    generated = float(np.maximum(w.output_tokens[finished], 0).sum())
    cost = float(sim.ts_cost[:T].sum()) * hours
    return {
        "policy": opts.policy,
        "topology_aware": opts.topology_aware,
        "requests": int(asked),
        "completed": int(finished.sum()),
        "rejected": int(turned_away),
        "duration_s": duration,
        "gpu_hours": held * hours,
        "prefill_gpu_hours": float(gpus[:, :, PREFILL].sum()) * hours,
        "decode_gpu_hours": float(gpus[:, :, DECODE].sum()) * hours,
        "avg_gpus": held / T,
        "peak_gpus": float(gpus.sum(axis=(1, 2)).max()),
        "cost": cost,
        "cost_per_mtok": cost / generated * 1e6 if generated > 0 else float("nan"),
        "avg_gpu_util": float(sim.ts_gpu_busy[:T].sum()) / held if held > 0 else 0.0,
        "avg_sm_activity": float(sim.ts_gpu_sm[:T].sum()) / held if held > 0 else 0.0,
        "prefill_gpu_util": role_mean(sim.ts_gpu_busy, PREFILL),
        "decode_gpu_util": role_mean(sim.ts_gpu_busy, DECODE),
        "prefill_sm_activity": role_mean(sim.ts_gpu_sm, PREFILL),
        "decode_sm_activity": role_mean(sim.ts_gpu_sm, DECODE),
        "ttft_p50_s": ttft_p50,
        "ttft_p99_s": ttft_p99,
        "tbt_p50_s": tbt_p50,
        "tbt_p99_s": tbt_p99,
        "slo_attainment": float(ok.sum()) / asked if n else float("nan"),
        "slo_ceiling": ceiling,
        "scaling_actions": int(scaling_actions),
        "instances_started": actuator.started,
        "instances_stopped": actuator.stopped,
        "unplaced_instances": int(unplaced),
        "kv_transfer_gbps": float(kv_bytes.sum() / kv_time.sum() / 1e9)
        if kv_time.sum() > 0
        else 0.0,
        "kv_transfer_p50_ms": pct(sim.kv_time[routed] * 1e3, (50,))[0],
        "kv_level_share": level_share,
        "prefix_cache_hit": float(sim.cached.sum() / max(1, w.input_tokens.sum())),
        "sim_time_s": float(sim.now),
        "wall_s": wall_s,
        "speedup": float(sim.now) / wall_s if wall_s > 0 else float("inf"),
        "options": {
            "control_period_s": opts.control_period_s,
            "window_s": opts.window_s,
            "tick_s": opts.tick_s,
            "startup_s": opts.startup_s,
        },
    }
