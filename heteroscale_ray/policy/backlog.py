"""The backlog rule: a role whose queue keeps growing is short of capacity, whatever the
throughput signal says (a saturated role caps its own processed throughput, so throughput alone
hides demand exactly when it matters). After `backlog_periods` periods of growth in a row, that
role is never held or scaled in; it steps out until the queue stops growing. A prefill queue
that fell from a material level since the last snapshot is draining: the TTFT guard waits on it
(policy/fixable_latency.py)."""

from __future__ import annotations

import math
from dataclasses import replace

from heteroscale_ray.config import Role, ServiceSpec
from heteroscale_ray.policy.latency_guard import guard_target
from heteroscale_ray.policy.types import PolicyState, Signals

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
        grew = (
            last is not None and value > last * (1 + GROWTH_SHARE) and material(spec, role, value)
        )
        out = replace(
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
    return replace(out, prefill_queue_fell=fell)


def prefill_draining(state: PolicyState) -> bool:
    """The prefill queue fell from a material level by more than GROWTH_SHARE at the last
    snapshot: the capacity in place already outruns arrivals. (Decode has no such rule:
    waiting sequences that drain into batches make steps slower, not faster.)"""
    return state.prefill_queue_fell


def growing(spec: ServiceSpec, state: PolicyState, role: Role) -> bool:
    """The role's queue grew `backlog_periods` periods in a row."""
    streak = getattr(state, f"{role.value}_growth_streak")
    return streak >= spec.policy.demand.backlog_periods


def backlog_target(current: int, starting: int = 0) -> int:
    """Where a growing role goes this period: one step out (at least one instance); only one
    more instance while earlier ones are still starting (the queue grows until they land)."""
    return current + 1 if starting else guard_target(current, STEP)
