"""One role's plan inside a demand decision: where it goes and the sentence that says why, and
the paper's proportional rule that makes it (dead-band, then cooldown, then damping). Pure:
time comes in as `now`."""

from __future__ import annotations

from dataclasses import dataclass

from heteroscale_ray.config import Role, ServiceSpec
from heteroscale_ray.policy import falls, proof
from heteroscale_ray.policy.cooldown import cooldown_left
from heteroscale_ray.policy.peak_window import let_go, recent_peak
from heteroscale_ray.policy.proportional import Direction, ceil_eps, damped_target, dead_band
from heteroscale_ray.policy.types import PolicyState, Reason

STEP_CHANGE = 2.0  # a need over this x a role's count is a step in the load, not noise


@dataclass(frozen=True)
class RolePlan:
    """What one role should be, and why (the sentence part for this role)."""

    role: Role
    current: int
    target: int
    reason: Reason
    why: str
    need: float | None = None


def initial_plan(role: Role, need: float | None, why: str) -> RolePlan:
    start = ceil_eps(need) if need is not None else 0
    return RolePlan(role, 0, start, Reason.INITIAL, f"no instances yet; {why}", need)


def role_plan(
    spec: ServiceSpec,
    role: Role,
    current: int,
    need: float | None,
    why: str,
    state: PolicyState,
    now: float,
) -> RolePlan:
    """Dead-band, then cooldown, then damping: the paper's proportional rule, per role."""
    policy = spec.policy
    if need is None:
        why = f"{why}, and missing data never scales in"
        return RolePlan(role, current, current, Reason.HOLD_MISSING_SIGNAL, why)
    peak = recent_peak(spec, state, role, now)
    why = f"{why} = {need:,.1f} (now {current})"
    sized = need  # what the role is sized for; `need` stays the need with its headroom
    if peak is not None and peak > need and need < current:
        # Scale in only as far as the recent peak allows (stabilisation window). Like HPA's,
        # the window bounds a scale-in; it asks for more than the role has (or asked for,
        # not placed yet) only where a peak it let go is worth restoring (falls.restores).
        why += f", recent peak {peak:,.1f}"
        sized = peak
        if not falls.restores(spec, state, role):
            sized = min(peak, max(current, state.asked(role)))
    gone = let_go(spec, state, role, now) if need < current else None
    if gone is not None and ceil_eps(gone) > ceil_eps(sized):  # the window would hold more
        why += f", peak {gone:,.1f} let go: no fall this deep came back"
    # The proof multiplies the need level the window holds (one period's dip under it is no
    # new load), not the guard steps it holds: the proof's ratio is already in those.
    level = need
    if need < current:
        level = max(need, recent_peak(spec, state, role, now, steps=False) or 0.0)
    proven = proof.proven_need(state, role, level, policy.scale_out_tolerance)
    if proven is not None and proven[0] > sized:
        why += f", x {proven[0] / level:.2f} as the latency guard proved = {proven[0]:,.1f}"
        sized = proven[0]
    direction = dead_band(sized, current, policy.scale_out_tolerance, policy.scale_in_tolerance)
    desired = ceil_eps(sized)
    if direction is Direction.HOLD or (direction is Direction.IN and desired >= current):
        why = f"{why} in the dead-band"
        # An ask the fleet could not place stands while the need is in ITS dead-band (as
        # Kubernetes keeps Pending pods): judged on the placed count, a need at the band's
        # edge dropped it and asked again, a direction change each period.
        asked = state.asked(role)
        if (
            asked > current
            and dead_band(sized, asked, policy.scale_out_tolerance, policy.scale_in_tolerance)
            is Direction.HOLD
        ):
            why += f", still asking for {asked} ({asked - current} not placed yet)"
            return RolePlan(role, current, asked, Reason.HOLD_DEADBAND, why, need)
        return RolePlan(role, current, current, Reason.HOLD_DEADBAND, why, need)
    out = direction is Direction.OUT
    cooldown = policy.scale_out_cooldown_s if out else policy.scale_in_cooldown_s
    if out:  # from this role's own last growth, or any scale-in
        stamps = (getattr(state, f"{role.value}_grew_at"), state.last_scale_in_at)
        since = max((t for t in stamps if t is not None), default=None)
    else:  # no scale-in before one cooldown of observation, even on the first tick
        started = now if state.started_at is None else state.started_at
        since = state.last_scaled_at
        since = started if since is None else max(since, started)
    wait = cooldown_left(now, since, cooldown)
    if out and wait > 0 and sized > STEP_CHANGE * current:
        # The cooldown lets the last step land before judging it; a need over twice every
        # instance placed (starting ones too) is a step in the load that step never sized
        # for: traffic back after an idle spell, or a cold start.
        why += f", over {STEP_CHANGE:g}x the count: no cooldown"
        wait = 0.0
    if wait > 0:
        why += f", scale-{direction.value} cooldown {wait:,.0f} s left"
        target = state.held_ask(role, current, desired) if out else current
        if target > current:
            why += f", still asking for {target} ({target - current} not placed yet)"
        return RolePlan(role, current, target, Reason.HOLD_COOLDOWN, why, need)
    damping = policy.scale_out_damping if out else policy.scale_in_damping
    target = damped_target(current, desired, damping)
    return RolePlan(role, current, target, Reason.SCALE_OUT if out else Reason.SCALE_IN, why, need)
