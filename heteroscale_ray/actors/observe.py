"""Replica reports -> one `Observation` per service: the policy engine's metric source.

Pure: the replica stats dicts (serving.metrics.ReplicaStats) and the per-role counts come in,
no Ray calls. Rates add up over replicas; latency p99 takes the worst replica's p99 (a safe
upper bound, since per-replica percentiles cannot be merged exactly); utilisations average.
A service gets no timestamp (so the policy holds, never scales in) unless every ready
replica of both roles has a well-formed report: a sum over some replicas would under-count
the load. Malformed reports (missing keys, non-numbers) count as missing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from heteroscale_ray.control.types import Observation, PoolObservation
from heteroscale_ray.policy.types import RoleCounts, Signals


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _worst(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _pool(stats: list[dict[str, Any]], ready: int, starting: int, tps_key: str) -> PoolObservation:
    if not stats:
        return PoolObservation(ready=ready, starting=starting)
    return PoolObservation(
        ready=ready,
        starting=starting,
        gpu_util=_mean([float(s["busy_fraction"]) for s in stats]),
        sm_activity=_mean([float(s["compute_fraction"]) for s in stats]),
        ongoing_requests=float(sum(s["queue_length"] + s["running"] for s in stats)),
        tps=float(sum(s[tps_key] for s in stats)),
    )


_NUMERIC_KEYS = (
    "timestamp",
    "busy_fraction",
    "compute_fraction",
    "queue_length",
    "running",
    "prefill_tps",
    "decode_tps",
    "kv_use",
)


def _well_formed(report: Mapping[str, Any]) -> bool:
    """A report the sums may use: its identity and every numeric field finite numbers."""
    if not isinstance(report.get("service"), str) or report.get("role") not in (
        "prefill",
        "decode",
    ):
        return False
    try:
        return all(math.isfinite(float(report[k])) for k in _NUMERIC_KEYS)
    except (KeyError, TypeError, ValueError):
        return False


def offered_miss_tps(arrived: float | None, prefill_reports: list[dict[str, Any]]) -> float | None:
    """Prompt tokens/s arriving at the ingress, times the share that missed the prefix cache
    in what prefill processed (all of it, before anything was processed)."""
    if arrived is None or not math.isfinite(arrived) or arrived < 0:
        return None
    miss = sum(float(s["prefill_tps"]) for s in prefill_reports)
    try:
        hit = sum(float(s.get("prefill_hit_tps", 0.0)) for s in prefill_reports)
    except (TypeError, ValueError):
        hit = math.nan
    if not math.isfinite(miss + hit):
        return None
    return arrived * (miss / (miss + hit) if miss + hit > 0 else 1.0)


def build_observations(
    services: Iterable[str],
    stats: Iterable[Mapping[str, Any]],
    counts: Mapping[str, RoleCounts],
    arrivals: Mapping[str, float] | None = None,
) -> dict[str, Observation]:
    """One observation per service; ``observed_at`` is the oldest decode report's wall time.

    ``arrivals``: prompt tokens/s per service at the ingress (the offered prefill load)."""
    by_role: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in stats:
        if _well_formed(s):
            by_role.setdefault((s["service"], s["role"]), []).append(dict(s))
    out: dict[str, Observation] = {}
    for name in services:
        pre = by_role.get((name, "prefill"), [])
        dec = by_role.get((name, "decode"), [])
        c = counts.get(name, RoleCounts())
        prefill = _pool(pre, c.prefill_ready, c.prefill_starting, "prefill_tps")
        decode = _pool(dec, c.decode_ready, c.decode_starting, "decode_tps")
        complete = bool(dec) and len(dec) >= c.decode_ready and len(pre) >= c.prefill_ready
        signals = Signals(
            observed_at=min(float(s["timestamp"]) for s in dec) if complete else None,
            decode_tps=decode.tps,
            prefill_tps=prefill.tps,
            prefill_offered_tps=offered_miss_tps((arrivals or {}).get(name), pre),
            ttft_p99_s=_worst(s.get("ttft_p99") for s in dec + pre),
            tbt_p99_s=_worst(s.get("tbt_p99") for s in dec),
            prefill_busy=prefill.gpu_util,
            decode_busy=decode.gpu_util,
            kv_use=_mean([float(s["kv_use"]) for s in dec]),
        )
        out[name] = Observation(service=name, signals=signals, prefill=prefill, decode=decode)
    return out
