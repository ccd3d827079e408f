"""What each role's arriving work asks for, in fractional instances of one role, and why.

Measured where work arrives, so a saturated role cannot hide it (see `demand.py`, which sizes
both roles on these): prefill's cache-miss prompt tokens/s and queue; decode's arriving output
tokens/s, its running and waiting sequences, and what prefill's queue releases to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from heteroscale_ray.config import Role, ServiceSpec
from heteroscale_ray.policy import backlog
from heteroscale_ray.policy.capacity import Capacity
from heteroscale_ray.policy.freshness import value_problem
from heteroscale_ray.policy.types import RoleCounts, Signals


@dataclass(frozen=True)
class Need:
    """Fractional instances one role asks for, and why. `steady` leaves out the queued backlog:
    a queue is drained once, so the scale-in window and the burst memory remember only the
    arriving demand, not a backlog that is gone once capacity lands. `sampled`: `steady` is
    read from this period's arrivals (a rate, a mean length), a sample as noisy as they are
    few (policy/sampled_level.py); a count of running sequences is not."""

    value: float | None
    why: str
    steady: float | None = None
    sampled: bool = False


def prefill_need(
    spec: ServiceSpec, s: Signals, counts: RoleCounts, cap: Capacity, problem: str | None
) -> Need:
    """Fractional prefill instances the arriving prompts and the queue ask for."""
    if problem is not None:
        return Need(None, f"signals {problem}")
    offered = s.prefill_offered_tps if _usable(s.prefill_offered_tps) else s.prefill_tps
    if not _usable(offered):
        return Need(None, "offered prompt tokens/s is missing")
    per = cap.prefill_tps * spec.policy.demand.prefill_utilization
    steady = offered / per  # type: ignore[operator]
    need, why = steady, f"{offered:,.0f} prompt tok/s / {per:,.0f} per instance"
    queue = backlog.queue_of(s, Role.PREFILL)
    if queue and counts.prefill_ready:
        need += queue * counts.prefill_ready / spec.policy.demand.drain_s
        if queue >= 0.05:  # as printed
            why += f" + {queue:,.1f} s queued"
    return Need(need, why, steady, sampled=True)


def released_rps(spec: ServiceSpec, s: Signals, counts: RoleCounts, cap: Capacity) -> float:
    """Requests/s the prefill queue releases to decode on top of arrivals while it drains
    within `drain_s`: prefill is sized to drain it that fast, so decode must take it as fast,
    and instances take the same start-up to land for both roles."""
    queue = backlog.queue_of(s, Role.PREFILL)
    if not queue or not counts.prefill_ready or not _usable(s.prompt_mean) or not s.prompt_mean:
        return 0.0
    tokens = queue * counts.prefill_ready * cap.prefill_tps
    return tokens / s.prompt_mean / spec.policy.demand.drain_s  # type: ignore[operator]


@dataclass(frozen=True)
class PrefillRelease:
    """What prefill's queue hands decode at this snapshot. `rps`: requests/s on top of arrivals
    while it drains within `drain_s`; `before`: decode's steady need remembered before the
    queue (None while no material queue reaches decode, and while the burst memory, which
    keeps that need, is off); `falling`: the queue fell at this snapshot, so what reached
    decode is a lump released at once, not prefill's own pace."""

    rps: float = 0.0
    before: float | None = None
    falling: bool = False


def decode_need(
    spec: ServiceSpec,
    s: Signals,
    cap: Capacity,
    problem: str | None,
    queue_growing: bool = False,
    ready: int = 0,
    release: PrefillRelease = PrefillRelease(),
) -> Need:
    """Fractional decode instances: arriving output tokens/s, or the sequences running plus
    the waiting ones' work drained within `drain_s` (a burst's queue empties in seconds once
    capacity lands; sized as concurrency it would ask for a fleet per queued sequence).

    The mean output comes from finished requests, so it lags a shift to longer outputs: those
    are still running or waiting. Once the queue has kept growing (`queue_growing`), the drain
    estimate is proven short and the waiting sequences count as concurrency, as running ones do.
    For the same lag, an instance's batch is never taken above what its KV memory holds at the
    running sequences' sizes (`kv_batch`).

    The steady need (what the scale-in window and burst memory keep) counts the running
    sequences at the pace a priced batch steps (Little's law): on an overloaded pool they step
    slower, so more of the same arrivals are running at once than the SLO's pace would hold.
    While prefill holds a material queue, the running sequences count in it at most at the need
    remembered before the queue (`release.before`): what it releases is a backlog that runs
    once, and remembered it would hold the window and teach the burst memory a surge. Once
    prefill's queue falls, nor is the release asked for as concurrency: like a decode queue it
    is its work drained within `drain_s`, since released sequences finish in seconds on the
    instances there, before new ones could land.
    """
    if problem is not None:
        return Need(None, f"signals {problem}")
    by_rate = by_seqs = running = None
    draining = 0.0
    lump_note = ""
    before_release = release.before
    if _usable(s.request_rate) and _usable(s.output_mean):
        per_request = max(s.output_mean - 1.0, 0.0)  # type: ignore[operator]
        offered = s.request_rate * per_request  # type: ignore[operator]
        by_rate = offered / cap.decode_tps
        draining = release.rps * per_request / cap.decode_tps
    elif _usable(s.decode_tps):
        offered = s.decode_tps
        by_rate = offered / cap.decode_tps  # type: ignore[operator]
    batch = cap.decode_batch
    if _usable(s.decode_running):
        held = kv_batch(s, ready)
        batch = batch if held is None else min(batch, held)
        drain = spec.policy.demand.drain_s * cap.decode_tps * batch / cap.decode_batch
        queued = backlog.queue_of(s, Role.DECODE) or 0.0
        seqs = s.decode_running + queued  # type: ignore[operator]
        running = by_seqs = s.decode_running / batch  # type: ignore[operator]
        if _usable(s.decode_step_s) and s.decode_step_s > 0:  # type: ignore[operator]
            running *= min(1.0, cap.decode_step_s / s.decode_step_s)  # type: ignore[operator]
        if (
            release.falling
            and before_release is not None
            and by_seqs > before_release
            and _usable(s.output_mean)
        ):
            # While prefill's queue falls, sequences past the level before it are that queue,
            # released at once: work that runs once, asked for as its tokens drained within
            # `drain_s` (never more than the concurrency they are), as a decode queue is. While
            # it grows, prefill releases only its own pace: more sequences are decode's load.
            lump_seqs = (by_seqs - before_release) * batch
            by_drain = lump_seqs * s.output_mean / drain  # type: ignore[operator]
            if by_drain < by_seqs - before_release:
                by_seqs = before_release + by_drain
                lump_note = f" ({lump_seqs:,.0f} of them prefill's released queue: {by_drain:,.1f})"
        if queued and queue_growing:
            by_seqs += queued / batch
        elif queued and _usable(s.output_mean):
            by_seqs += queued * s.output_mean / drain  # type: ignore[operator]
        elif queued:
            by_seqs += queued / batch
    if by_rate is None and by_seqs is None:
        return Need(None, "decode demand is missing")
    need = max(x for x in (by_rate, by_seqs) if x is not None) + draining
    lump = 0.0 if running is None or before_release is None else running - before_release
    if lump > 0:
        running -= lump
    steady = max(x for x in (by_rate, running) if x is not None)
    # Read from arrivals (not from the tokens the running sequences make) and the larger part.
    arrived = _usable(s.request_rate) and _usable(s.output_mean)
    sampled = arrived and by_rate is not None and (running is None or by_rate >= running)
    parts = []
    if by_rate is not None:
        parts.append(f"{offered:,.0f} tok/s / {cap.decode_tps:,.0f}")
    if by_seqs is not None:
        parts.append(f"{seqs:,.0f} seqs / {batch:,.0f}{lump_note}")
    why = " vs ".join(parts)
    if draining >= 0.05:  # as printed: a tenth of an instance
        why += f" + {draining:,.1f} for the prefill queue's release"
    if lump >= 0.05 and steady < need and not lump_note:
        why += f" (of which {lump:,.1f} is prefill's released queue: not remembered)"
    return Need(need, why, steady, sampled)


def kv_batch(s: Signals, ready: int) -> float | None:
    """Sequences one decode instance's KV memory holds at the running sequences' sizes: those
    running per instance over the share of memory they fill. The prior's batch is priced at
    the mean lengths of finished requests, which lag a surge of longer outputs or prompts by
    their whole decode time; memory in use does not. None when nothing is held or reported."""
    use, running = s.kv_use, s.decode_running
    if not ready or not _usable(running) or not _usable(use) or min(running, use) <= 0:  # type: ignore[type-var]
        return None
    return running / (ready * min(use, 1.0))  # type: ignore[operator]


def _usable(x: float | None) -> bool:
    return value_problem(x) is None
