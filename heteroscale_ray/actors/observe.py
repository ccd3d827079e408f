"""Replica reports -> one `Observation` per service: the policy engine's metric source.

Pure: the replicas' `ReplicaStats` (serving/replica_stats.py) and the per-role counts come in,
no Ray calls. Rates add up over replicas; latency p99 takes the worst replica's p99 (a safe
upper bound, since per-replica percentiles cannot be merged exactly); utilisations average.
A service gets no timestamp (so the policy holds, never scales in) unless every ready
replica of both roles has a well-formed report: a sum over some replicas would under-count
the load. A malformed report (`stats_problem`: not a ReplicaStats, unknown role, a non-finite
number) is dropped with a log line and counts as missing.

Demand and the TTFT split (issue 10): the ingress's `IngressLoad` gives request_rate and
prompt_mean; decode replicas give output_mean (weighted by finished requests), decode_running
and decode_queue (sums), decode_step_s and decode_step_max_s (mean and slowest of the replicas
that stepped) and what the steps were taken at (decode_step_batch, the replicas' mean batch
per step, and decode_step_context, their KV tokens per sequence), and decode_token_step_s (the
step the replicas' tokens were made at, mean of the replicas'); prefill replicas
give prefill_queue_s (mean queued work per reporting instance, plus the prompts the ingress
holds at the handle spread over them), prefill_queue_peak_s (the mean of the replicas' window
peaks: prompts that land together reach every replica at once) and the TTFT wait/service p99
(worst replica). Each is None when no replica (or no ingress) reports it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping

from heteroscale_ray.control.types import Observation, PoolObservation
from heteroscale_ray.policy.types import RoleCounts, Signals
from heteroscale_ray.serving.replica_stats import (
    IngressLoad,
    ReplicaStats,
    ingress_problem,
    stats_problem,
)

logger = logging.getLogger(__name__)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _worst(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _pool(stats: list[ReplicaStats], ready: int, starting: int, role: str) -> PoolObservation:
    if not stats:
        return PoolObservation(ready=ready, starting=starting)
    tps = [s.prefill_tps if role == "prefill" else s.decode_tps for s in stats]
    return PoolObservation(
        ready=ready,
        starting=starting,
        gpu_util=_mean([float(s.busy_fraction) for s in stats]),
        sm_activity=_mean([float(s.compute_fraction) for s in stats]),
        ongoing_requests=float(sum(s.queue_length + s.running for s in stats)),
        tps=float(sum(tps)),
    )


def well_formed(stats: Iterable[object]) -> list[ReplicaStats]:
    """The reports the sums may use; every other one is dropped with a log line."""
    out = []
    for s in stats:
        problem = stats_problem(s)
        if problem is None and isinstance(s, ReplicaStats):
            out.append(s)
        else:
            replica = getattr(s, "replica_id", "?")
            logger.warning("ignoring stats report of replica %s: %s", replica, problem)
    return out


def miss_share(prefill_reports: list[ReplicaStats]) -> float | None:
    """The share of prompt tokens that missed the prefix cache in what prefill processed (all
    of them, before anything was processed); None when a report's rates are not finite."""
    miss = sum(float(s.prefill_tps) for s in prefill_reports)
    hit = sum(float(s.prefill_hit_tps) for s in prefill_reports)
    if not math.isfinite(miss + hit):
        return None
    return miss / (miss + hit) if miss + hit > 0 else 1.0


def offered_miss_tps(arrived: float | None, share: float | None) -> float | None:
    """Prompt tokens/s arriving at the ingress that will miss the prefix cache, at the miss
    `share` prefill measured."""
    if arrived is None or not math.isfinite(arrived) or arrived < 0 or share is None:
        return None
    return arrived * share


def missed_bursts(load: IngressLoad | None, share: float | None) -> tuple[float, ...] | None:
    """The ingress's heaviest bursts of prompt tokens, in tokens that will miss the cache."""
    if load is None or load.prompt_bursts is None or share is None:
        return None
    return tuple(a * share for a in load.prompt_bursts)


def ingress_load(name: str, arrival: IngressLoad | float | None) -> IngressLoad | None:
    """One service's ingress report as an `IngressLoad` (a bare float: prompt tokens/s); a
    malformed one is dropped with a log line."""
    if arrival is None:
        return None
    if isinstance(arrival, (int, float)) and not isinstance(arrival, bool):
        arrival = IngressLoad(float(arrival))
    problem = ingress_problem(arrival)
    if problem is not None or not isinstance(arrival, IngressLoad):
        logger.warning("ignoring ingress report of service %s: %s", name, problem)
        return None
    return arrival


def prefill_queue_s(prefill_reports: list[ReplicaStats], load: IngressLoad | None) -> float | None:
    """Queued prefill work per prefill replica, seconds: what each replica has queued, plus
    the prompts the ingress's handle holds because every replica is full, priced at the
    replicas' measured prompt tokens per busy second and spread over them. A queue that moved
    from the replicas to the handle is still demand."""
    queued = _mean([float(q) for s in prefill_reports if (q := s.prefill_queue_s) is not None])
    held = None if load is None else load.held_prompt_tokens
    if not held:
        return queued
    rates = [float(r) for s in prefill_reports if (r := s.prefill_tokens_per_busy_s)]
    if not rates:
        return queued
    # each replica's share of the held tokens at its replicas' mean rate: held / sum(rates)
    return (queued or 0.0) + held / sum(rates)


def output_mean(decode_reports: list[ReplicaStats]) -> float | None:
    """Mean output tokens of the requests finished in the window, over all decode replicas."""
    done = [(s.finished_requests, s.output_tokens_mean) for s in decode_reports]
    n = sum(k for k, m in done if m is not None and k > 0)
    if n <= 0:
        return None
    return sum(k * float(m) for k, m in done if m is not None and k > 0) / n


def decode_steps_at(dec: list[ReplicaStats]) -> tuple[float | None, float | None]:
    """Sequences per step and KV tokens per sequence over the decode replicas that stepped:
    the batch and context their mean step time was taken at. None unless every replica that
    stepped says (one that does not, e.g. an older version mid-rollout, would leave the step
    and what it is compared at from different replicas)."""
    stepped = [s for s in dec if s.step_mean_s is not None]
    if not stepped or any(
        s.step_batch_mean is None or s.step_context_mean is None for s in stepped
    ):
        return None, None
    at = [(float(s.step_batch_mean), float(s.step_context_mean)) for s in stepped]  # type: ignore[arg-type]
    total = sum(b for b, _ in at)
    return total / len(at), sum(b * c for b, c in at) / total if total > 0 else None


def build_observations(
    services: Iterable[str],
    stats: Iterable[ReplicaStats],
    counts: Mapping[str, RoleCounts],
    arrivals: Mapping[str, IngressLoad | float] | None = None,
) -> dict[str, Observation]:
    """One observation per service; ``observed_at`` is the oldest decode report's wall time.

    ``arrivals``: per service, what arrives at the ingress (`IngressLoad`), or prompt tokens/s
    alone as a float (then request_rate and prompt_mean stay None)."""
    by_role: dict[tuple[str, str], list[ReplicaStats]] = {}
    for s in well_formed(stats):
        by_role.setdefault((s.service, s.role), []).append(s)
    out: dict[str, Observation] = {}
    for name in services:
        pre = by_role.get((name, "prefill"), [])
        dec = by_role.get((name, "decode"), [])
        c = counts.get(name, RoleCounts())
        load = ingress_load(name, (arrivals or {}).get(name))
        prefill = _pool(pre, c.prefill_ready, c.prefill_starting, "prefill")
        decode = _pool(dec, c.decode_ready, c.decode_starting, "decode")
        complete = bool(dec) and len(dec) >= c.decode_ready and len(pre) >= c.prefill_ready
        steps = [float(t) for s in dec if (t := s.step_mean_s) is not None]
        batch, context = decode_steps_at(dec)
        missed = miss_share(pre)
        signals = Signals(
            observed_at=min(float(s.timestamp) for s in dec) if complete else None,
            decode_tps=decode.tps,
            prefill_tps=prefill.tps,
            prefill_offered_tps=offered_miss_tps(
                None if load is None else load.prompt_tokens_per_s, missed
            ),
            prompt_bursts=missed_bursts(load, missed),
            ttft_p99_s=_worst(s.ttft_p99 for s in dec + pre),
            tbt_p99_s=_worst(s.tbt_p99 for s in dec),
            prefill_busy=prefill.gpu_util,
            decode_busy=decode.gpu_util,
            kv_use=_mean([float(s.kv_use) for s in dec]),
            request_rate=None if load is None else load.requests_per_s,
            prompt_mean=None if load is None else load.prompt_mean,
            prompt_sd=None if load is None else load.prompt_sd,
            output_mean=output_mean(dec),
            prefill_queue_s=prefill_queue_s(pre, load),
            prefill_queue_peak_s=_mean(
                [float(q) for s in pre if (q := s.prefill_queue_peak_s) is not None]
            ),
            decode_running=float(sum(s.running_mean for s in dec)) if dec else None,
            decode_queue=float(sum(s.queue_length for s in dec)) if dec else None,
            ttft_wait_p99_s=_worst(s.ttft_wait_p99 for s in pre),
            ttft_service_p99_s=_worst(s.ttft_service_p99 for s in pre),
            decode_step_s=_mean(steps),
            decode_step_max_s=max(steps, default=None),
            decode_step_batch=batch,
            decode_step_context=context,
            decode_token_step_s=_mean(
                [float(t) for s in dec if (t := s.step_token_mean_s) is not None]
            ),
        )
        out[name] = Observation(service=name, signals=signals, prefill=prefill, decode=decode)
    return out
