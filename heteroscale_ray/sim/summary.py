"""A replay's report: what it cost (GPU-hours, cost), how it served (latency, SLO attainment
against the idle-fleet ceiling) and what it did (scaling actions, KV transfer, cache hits)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from heteroscale_ray.config import ServiceSpec
from heteroscale_ray.perf.network import SharedLevel
from heteroscale_ray.sim.actuator import SimActuator
from heteroscale_ray.sim.cluster import DECODE, PREFILL, ClusterSim
from heteroscale_ray.sim.observe import request_tbt

if TYPE_CHECKING:
    from heteroscale_ray.sim.options import ReplayOptions


CEILING_BLOCK = 1 << 16  # requests per block of `slo_ceiling` and `_RequestTotals`


def within_slo(
    finished: np.ndarray,
    ttft: np.ndarray,
    tbt: np.ndarray,
    slo_ttft: float | np.ndarray,
    slo_tbt: float | np.ndarray,
) -> np.ndarray:
    """Which requests count toward SLO attainment: finished, their first token and their
    worst token gap within the SLOs (with a hair of float slack)."""
    return finished & (ttft <= slo_ttft + 1e-12) & (tbt <= slo_tbt + 1e-12)


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


@dataclass
class _RequestTotals:
    """What the report reads per request, gathered in blocks: whole-trace temporaries cost
    ~100 bytes a request, which a week's replay at scale does not have to spare."""

    finished: int = 0
    ok: int = 0
    generated: float = 0.0
    kv_bytes: float = 0.0
    kv_s: float = 0.0
    routed: int = 0
    per_level: np.ndarray = field(default_factory=lambda: np.zeros(len(SharedLevel), np.int64))
    ttft: list[np.ndarray] = field(default_factory=list)  # finite TTFTs, s
    tbt: list[np.ndarray] = field(default_factory=list)  # finished multi-token TBTs, s
    kv_ms: list[np.ndarray] = field(default_factory=list)  # routed KV transfer times, ms

    @classmethod
    def of(cls, sim: ClusterSim, specs: list[ServiceSpec]) -> _RequestTotals:
        w = sim.w
        slo_ttft = np.array([spec.slo.ttft_s for spec in specs])
        slo_tbt = np.array([spec.slo.tbt_s for spec in specs])
        kv_per_token = np.array(
            [
                sim.kinds[
                    sim.kind_for(spec, spec.prefill.gpu_types[0], spec.prefill.gpus_per_instance)
                ].kv_bytes_per_token
                for spec in specs
            ]
        )
        got = cls()
        for a in range(0, len(w), CEILING_BLOCK):
            ids = np.arange(a, min(a + CEILING_BLOCK, len(w)))
            svc = w.service[ids]
            ttft = sim.t_first[ids] - w.arrival[ids]
            tbt = request_tbt(sim, ids)
            finished = np.isfinite(sim.t_done[ids])
            ok = within_slo(finished, ttft, tbt, slo_ttft[svc], slo_tbt[svc])
            got.finished += int(finished.sum())
            got.ok += int(ok.sum())
            got.generated += float(np.maximum(w.output_tokens[ids][finished], 0).sum())
            got.ttft.append(ttft[np.isfinite(ttft)])
            got.tbt.append(tbt[finished & (w.output_tokens[ids] > 1)])
            routed = sim.kv_level[ids] >= 0
            kv = sim.kv_time[ids][routed]
            got.routed += int(routed.sum())
            got.per_level += np.bincount(sim.kv_level[ids][routed], minlength=len(SharedLevel))
            got.kv_bytes += float((w.input_tokens[ids][routed] * kv_per_token[svc[routed]]).sum())
            got.kv_s += float(kv.sum())
            got.kv_ms.append(kv * 1e3)
        return got


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """The parts as one array, emptying the list so the parts go as the whole comes."""
    whole = np.concatenate(parts) if parts else np.zeros(0)
    parts.clear()
    return whole


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
    """The report's numbers. Resource metrics cover the trace's span, [0, duration): a replay
    is a window onto a service that runs on, and the fleet held after traffic stops abruptly
    (for the longest outputs, up to the drain limit) is the replay's, not the policy's. What a
    policy left undone at the span's end shows as `drain_s` (its last request finished that
    long after) and `gpu_hours_after` (what it held meanwhile), and in every late request's
    latency. Cost per token is the span's cost over every token generated, a drain's too (so
    with a material drain it reads low).

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
    req = _RequestTotals.of(sim, specs)
    ceiling = slo_ceiling(sim, specs) * n / asked if n else float("nan")
    level_share = {
        lvl.name: float(req.per_level[int(lvl)] / req.routed) if req.routed else 0.0
        for lvl in SharedLevel
    }

    def role_mean(arr: np.ndarray, role: int) -> float:
        g = float(gpus[:, :, role].sum())
        return float(arr[:T, :, role].sum()) / g if g > 0 else 0.0

    def pct(x: np.ndarray, qs: tuple[float, ...]) -> list[float]:
        """Percentiles of `x`, one partition for all of them (same values as one by one),
        made in `x` itself: each is built for this and dropped after."""
        if not len(x):
            return [float("nan")] * len(qs)
        return np.percentile(x, qs, overwrite_input=True).tolist()

    # one whole array at a time: a week's replay holds ~100M requests
    ttft_p50, ttft_p99 = pct(_joined(req.ttft), (50, 99))
    tbt_p50, tbt_p99 = pct(_joined(req.tbt), (50, 99))
    (kv_p50,) = pct(_joined(req.kv_ms), (50,))

    cost = float(sim.ts_cost[:T].sum()) * hours
    ran = min(sim.tick, len(sim.ts_gpus))
    return {
        "policy": opts.policy,
        "topology_aware": opts.topology_aware,
        "requests": int(asked),
        "completed": req.finished,
        "rejected": int(turned_away),
        "duration_s": duration,
        "gpu_hours": held * hours,
        "prefill_gpu_hours": float(gpus[:, :, PREFILL].sum()) * hours,
        "decode_gpu_hours": float(gpus[:, :, DECODE].sum()) * hours,
        "avg_gpus": held / T,
        "peak_gpus": float(gpus.sum(axis=(1, 2)).max()),
        "cost": cost,
        "cost_per_mtok": cost / req.generated * 1e6 if req.generated > 0 else float("nan"),
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
        "slo_attainment": req.ok / asked if n else float("nan"),
        "slo_ceiling": ceiling,
        "scaling_actions": int(scaling_actions),
        "instances_started": actuator.started,
        "instances_stopped": actuator.stopped,
        "unplaced_instances": int(unplaced),
        "kv_transfer_gbps": req.kv_bytes / req.kv_s / 1e9 if req.kv_s > 0 else 0.0,
        "kv_transfer_p50_ms": kv_p50,
        "kv_level_share": level_share,
        "prefix_cache_hit": float(sim.cached.sum() / max(1, w.input_tokens.sum())),
        "sim_time_s": float(sim.now),
        "drain_s": max(0.0, float(sim.now) - duration),
        "gpu_hours_after": float(sim.ts_gpus[T:ran].sum()) * hours,
        "wall_s": wall_s,
        "speedup": float(sim.now) / wall_s if wall_s > 0 else float("inf"),
        "options": {
            "control_period_s": opts.control_period_s,
            "window_s": opts.window_s,
            "tick_s": opts.tick_s,
            "startup_s": opts.startup_s,
        },
    }
