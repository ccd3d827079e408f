"""What the paper's coordinated rule cannot see, added on top of it: prefill demand.

The rule sizes both roles from decode TPS at a P/D ratio, and a saturated or prefill-heavy load
makes few decode tokens. Two rules repair that, each from what the pools report (no trace-tuned
number): the backlog rule (`policy/backlog.py`) steps a role whose queue grows, or whose prefill
queue stands over the TTFT SLO, and `prefill_demand` keeps prefill at what arriving prompts need
at its measured rate. Pure, like the rest of the decision core.
"""

from __future__ import annotations

import math
from dataclasses import replace

from heteroscale_ray.config import Role, ServiceSpec
from heteroscale_ray.perf.capacity import PREFILL_UTIL_TARGET
from heteroscale_ray.policy import backlog
from heteroscale_ray.policy.cooldown import cooldown_left
from heteroscale_ray.policy.limits import fit_to_limits
from heteroscale_ray.policy.split import Ratio
from heteroscale_ray.policy.types import PolicyState, Reason, RoleCounts, Signals


def backlog_override(
    spec: ServiceSpec,
    state: PolicyState,
    signals: Signals,
    target: tuple[int, int],
    reason: Reason,
    counts: RoleCounts,
    ratio: Ratio,
    now: float,
) -> tuple[tuple[int, int], Reason, str]:
    """The backlog rule on the paper's coordinated rule: a role whose queue keeps growing steps
    out (its partner follows by the ratio) instead of holding or shrinking; prefill at least to
    what the arriving tokens need at its measured rate, which decode TPS cannot show."""
    if spec.policy.mode == "periodic" or (counts.prefill == 0 and counts.decode == 0):
        return target, reason, ""
    p, d = target
    for role in Role:
        have, want = counts.of(role), target[0 if role is Role.PREFILL else 1]
        if not backlog.growing(spec, state, role) or want > have:
            continue
        starting = counts.starting_of(role)
        need = backlog.measured_need(signals, role, have - starting)
        step = backlog.backlog_target(have, starting, need)
        fitted = fit_to_limits(spec, role, step, ratio)
        if fitted.prefill < p or fitted.decode < d:  # never undo the other role's growth
            fitted = replace(fitted, prefill=max(fitted.prefill, p), decode=max(fitted.decode, d))
        if (fitted.prefill, fitted.decode) == (p, d):
            continue
        p, d = fitted.prefill, fitted.decode
        streak = getattr(state, f"{role.value}_growth_streak")
        reason = Reason.BACKLOG_GROWTH
        measured = "" if need is None else f" (arrivals need {need:.1f} at its measured rate)"
        note = (
            f"; {role.value} queue grew or stood over the SLO {streak} periods in a row"
            f"{measured}: {p} prefill / {d} decode"
        )
        return (p, d), reason, note
    return prefill_demand(spec, state, signals, target, reason, counts, ratio, now)


def prefill_demand(
    spec: ServiceSpec,
    state: PolicyState,
    signals: Signals,
    target: tuple[int, int],
    reason: Reason,
    counts: RoleCounts,
    ratio: Ratio,
    now: float,
) -> tuple[tuple[int, int], Reason, str]:
    """Prefill at least at what the arriving tokens need, at the rate it was measured to
    compute them, over its utilisation target. Decode TPS cannot see prefill demand
    (prefill-heavy traffic makes few decode tokens): without this the paper's rule shrank
    prefill into a backlog, the backlog rule grew it back, and the two saw-toothed. Within
    the rule's dead-band around the need it holds; it scales out only with every prefill
    instance up (the need is measured on ready ones) and outside the scale-out cooldown."""
    have, starting = counts.prefill, counts.prefill_starting
    need = backlog.measured_need(signals, Role.PREFILL, have - starting)
    if need is None:
        return target, reason, ""
    policy = spec.policy
    keep = need / PREFILL_UTIL_TARGET
    busy_need = math.ceil(keep - 1e-9)
    if target[0] >= busy_need:
        return target, reason, ""
    shrinking = target[0] < have
    if keep > have * (1 + policy.scale_out_tolerance):  # short, past the dead-band
        waiting = starting or cooldown_left(
            now, state.last_scale_out_at, policy.scale_out_cooldown_s
        )
        floor = have if waiting else busy_need
    elif shrinking:  # a scale-in stops at the need, and not at all within the dead-band
        floor = have if have * (1 - policy.scale_in_tolerance) <= keep else busy_need
    else:
        return target, reason, ""
    if floor <= target[0]:
        return target, reason, ""
    fitted = fit_to_limits(spec, Role.PREFILL, floor, ratio)
    p, d = fitted.prefill, max(fitted.decode, target[1])
    note = (
        f"; arriving prompts need {need:.1f} prefill at its measured rate "
        f"({busy_need} at {PREFILL_UTIL_TARGET:.0%} busy): {p} prefill / {d} decode"
    )
    return (p, d), Reason.PREFILL_DEMAND, note
