"""The backlog rule: a role whose queue keeps growing is short of capacity, whatever the
throughput signal says (a saturated role caps its own processed throughput, so throughput alone
hides demand exactly when it matters). After `backlog_periods` periods of growth in a row, that
role is never scaled in; it steps out until the queue stops growing (on the demand signal it
holds while the instances starting drain the queue before more could land). A prefill queue
that alone breaks the TTFT SLO counts as growing until it falls: a backlog standing that high is
as short of capacity as a growing one, whatever its last snapshot added. A prefill queue
that fell from a material level since the last snapshot is draining: the TTFT guard waits on it
(policy/fixable_latency.py)."""

from __future__ import annotations

import math

from heteroscale_ray.config import Role, ServiceSpec
from heteroscale_ray.policy.guard_steps import guard_target
from heteroscale_ray.policy.startup import timed_startup
from heteroscale_ray.policy.types import PolicyState, RoleCounts, Signals, evolve

# A queue must grow by more than this share (and be material, below) to count: bursty arrivals
# and one long prompt must not start a streak.
GROWTH_SHARE = 0.1
# Material: prefill work queued for more than this share of the TTFT SLO; decode sequences
# waiting for a slot, more than this many.
MATERIAL_TTFT_SHARE = 0.2
MATERIAL_DECODE_SEQS = 1.0
STEP = 0.10  # share of the role's instances added per period while the streak lasts


def queue_of(signals: Signals, role: Role) -> float | None:
    value = signals.prefill_queue_s if role is Role.PREFILL else signals.decode_queue
    return value if value is not None and math.isfinite(value) and value >= 0 else None


def material(spec: ServiceSpec, role: Role, value: float) -> bool:
    if role is Role.PREFILL:
        return value > MATERIAL_TTFT_SHARE * spec.slo.ttft_s
    return value > MATERIAL_DECODE_SEQS


def track(spec: ServiceSpec, state: PolicyState, signals: Signals) -> PolicyState:
    """Update each role's last queue, growth streak and (prefill) whether it fell from this
    snapshot. Missing data resets no streak (it waits for the next real value), but a fall
    is only ever the last snapshot's."""
    out = state
    for role in Role:
        value = queue_of(signals, role)
        if value is None:
            continue
        last = getattr(state, f"{role.value}_queue_last")
        streak = getattr(state, f"{role.value}_growth_streak")
        grew = last is not None and material(spec, role, value)
        grew = grew and (value > last * (1 + GROWTH_SHARE) or standing(spec, role, value, last))
        out = evolve(
            out,
            **{
                f"{role.value}_queue_last": value,
                f"{role.value}_growth_streak": streak + 1 if grew else 0,
            },
        )
    value, last = queue_of(signals, Role.PREFILL), state.prefill_queue_last
    fell = (
        value is not None
        and last is not None
        and material(spec, Role.PREFILL, last)
        and value < last * (1 - GROWTH_SHARE)
    )
    return evolve(out, prefill_queue_fell=fell)


def standing(spec: ServiceSpec, role: Role, value: float, last: float) -> bool:
    """A prefill queue over the whole TTFT SLO that did not fall: every request it holds is
    already late, so it counts as growing. (Decode's queue is counted in sequences, which has
    no such SLO level; it counts by growth alone.)"""
    return role is Role.PREFILL and value > spec.slo.ttft_s and value >= last * (1 - GROWTH_SHARE)


def prefill_draining(state: PolicyState) -> bool:
    """The prefill queue fell from a material level by more than GROWTH_SHARE at the last
    snapshot: the capacity in place already outruns arrivals. (Decode has no such rule:
    waiting sequences that drain into batches make steps slower, not faster.)"""
    return state.prefill_queue_fell


def prefill_releasing(spec: ServiceSpec, state: PolicyState, signals: Signals) -> bool:
    """Prefill's queue is material now or was at the last snapshot (read before `track`): what
    it holds reaches decode as one lump once drained, and runs there for its outputs' length."""
    queues = (queue_of(signals, Role.PREFILL), state.prefill_queue_last)
    return any(q is not None and material(spec, Role.PREFILL, q) for q in queues)


def growing(spec: ServiceSpec, state: PolicyState, role: Role) -> bool:
    """The role's queue grew `backlog_periods` periods in a row."""
    streak = getattr(state, f"{role.value}_growth_streak")
    return streak >= spec.policy.demand.backlog_periods


def measured_need(signals: Signals, role: Role, ready: int) -> float | None:
    """Prefill instances the arriving cache-miss tokens need at the rate the ready instances
    were measured to compute them per busy second; None unmeasured (and for decode).

    This is the throughput signal's blind spot made visible: a saturated prefill pool
    processes only what it can, while the ingress counts what arrives.
    """
    offered, done, busy = signals.prefill_offered_tps, signals.prefill_tps, signals.prefill_busy
    if role is not Role.PREFILL or ready <= 0:
        return None
    if not all(x is not None and math.isfinite(x) and x > 0 for x in (offered, done, busy)):
        return None
    return offered * min(busy, 1.0) * ready / done  # type: ignore[operator]


def backlog_target(current: int, starting: int = 0, need: float | None = None) -> int:
    """Where a growing role goes this period: one step out (at least one instance); only one
    more instance while earlier ones are still starting (the queue grows until they land).
    With a measured `need`, at least that plus a step's share, to drain the queue."""
    step = current + 1 if starting else guard_target(current, STEP)
    if need is None:
        return step
    return max(step, math.ceil(need * (1 + STEP) - 1e-9))


def drained_by_starting(
    state: PolicyState, signals: Signals, counts: RoleCounts, now: float
) -> str | None:
    """Why more prefill would not help a growing queue: the instances already starting drain
    it before any asked now could land (those would land after it is gone and be scaled back).
    The queue grows until they land at the arrivals' excess over the ready ones, then drains
    at the excess of all of them over the arrivals, both at the pool's measured rate. None
    when that is not shown: nothing starting, no start-up timed, no measured rate, or
    instances already later than timed."""
    ready, starting = counts.prefill_ready, counts.prefill_starting
    startup_s, grew = timed_startup(state), state.prefill_grew_at
    queue, need = queue_of(signals, Role.PREFILL), measured_need(signals, Role.PREFILL, ready)
    if not starting or startup_s is None or grew is None or queue is None or need is None:
        return None
    lands_in = grew + startup_s - now
    surplus = ready + starting - need
    if lands_in < 0 or surplus <= 0:
        return None
    queued = queue * ready + max(need - ready, 0.0) * lands_in  # instance-seconds as they land
    drained_in = lands_in + queued / surplus
    if drained_in > startup_s:
        return None
    return (
        f"the {starting} starting drain it within {drained_in:,.0f} s, before more could land "
        f"({startup_s:,.0f} s)"
    )
