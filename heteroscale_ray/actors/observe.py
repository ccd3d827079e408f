"""Replica reports -> one `Observation` per service: the policy engine's metric source.

Pure: the replica stats dicts (serving.metrics.ReplicaStats) and the per-role counts come in,
no Ray calls. Rates add up over replicas; latency p99 takes the worst replica's p99 (a safe
upper bound, since per-replica percentiles cannot be merged exactly); utilisations average.
A service whose decode replicas sent nothing gets no timestamp, so the policy holds.
"""

from __future__ import annotations

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


def build_observations(
    services: Iterable[str],
    stats: Iterable[Mapping[str, Any]],
    counts: Mapping[str, RoleCounts],
) -> dict[str, Observation]:
    """One observation per service; ``observed_at`` is the oldest decode report's wall time."""
    by_role: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in stats:
        by_role.setdefault((s["service"], s["role"]), []).append(dict(s))
    out: dict[str, Observation] = {}
    for name in services:
        pre = by_role.get((name, "prefill"), [])
        dec = by_role.get((name, "decode"), [])
        c = counts.get(name, RoleCounts())
        prefill = _pool(pre, c.prefill_ready, c.prefill_starting, "prefill_tps")
        decode = _pool(dec, c.decode_ready, c.decode_starting, "decode_tps")
        signals = Signals(
            observed_at=min(float(s["timestamp"]) for s in dec) if dec else None,
            decode_tps=decode.tps,
            prefill_tps=prefill.tps,
            ttft_p99_s=_worst(s.get("ttft_p99") for s in dec + pre),
            tbt_p99_s=_worst(s.get("tbt_p99") for s in dec),
            prefill_busy=prefill.gpu_util,
            decode_busy=decode.gpu_util,
            kv_use=_mean([float(s["kv_use"]) for s in dec]),
        )
        out[name] = Observation(service=name, signals=signals, prefill=prefill, decode=decode)
    return out
