"""Instance start-up, timed: how long the instances this policy asks for take to serve.

The burst horizon (policy/burst.py) is the time from asking for instances to their serving:
start-up plus one control period. Configured (`demand.burst_horizon_s`), it is a guess about
the deployment, and a wrong guess costs attainment (too short) or GPU-hours (too long). So
the policy times its own asks: from the last decision that grew a role, once that role's
instances were seen starting, to the first snapshot with none of its instances starting; a
scale-in while they start voids the timing (cancelled start-ups end early), and an ask nothing
was placed for, or one the soft scale-in window's held instances met at once, is never timed.
The median of the last few timings plus the control period replaces the configured horizon,
which stays the prior until one is timed.
Pure: time comes in as `now`.
"""

from __future__ import annotations

import math
import statistics

from heteroscale_ray.config import Role, ServiceSpec
from heteroscale_ray.policy.types import PolicyState, RoleCounts, evolve

KEPT = 5  # timings the median is taken over: one slow node does not move the horizon


def horizon_s(spec: ServiceSpec, state: PolicyState) -> float:
    """The burst horizon in force: the timed start-up plus one control period once one is
    timed, else the configured one (0 keeps burst headroom off)."""
    configured = spec.policy.demand.burst_horizon_s
    if configured <= 0 or state.startup_horizon_s is None:
        return configured
    return state.startup_horizon_s


def timed_startup(state: PolicyState) -> float | None:
    """The start-up the burst horizon is timed on (s); None before one is timed."""
    return statistics.median(state.startups) if state.startups else None


def describe(state: PolicyState) -> str:
    """For a decision's message: the start-up the burst horizon is timed on, once timed."""
    timed = timed_startup(state)
    return "" if timed is None else f", instances start in {timed:,.0f} s (timed)"


def observe(
    state: PolicyState, counts: RoleCounts, now: float, stale_after_s: float = math.inf
) -> PolicyState:
    """Fold this snapshot's counts into each role's timing of its last ask (before deciding).
    An ask that landed while no snapshot came for over `stale_after_s` (the control plane
    away) times nothing: it landed somewhere in the gap, and a six-hour outage had timed a
    six-hour start-up and made it the burst horizon."""
    for role in Role:
        at = getattr(state, f"{role.value}_launch_at")
        before = getattr(state, f"{role.value}_launch_from")
        if at is None:
            continue
        if before is not None:  # not yet seen placed: has the role grown past it?
            if counts.of(role) <= before:
                continue
            # Grown with nothing starting: instances held by the soft scale-in window came
            # back at once; that ask has no start-up to time.
            landed = counts.starting_of(role) == 0
            state = evolve(
                state,
                **{f"{role.value}_launch_from": None},
                **({f"{role.value}_launch_at": None} if landed else {}),
            )
            continue
        if counts.starting_of(role) > 0:
            continue
        last = state.last_decision_at
        period = 0.0 if last is None else max(now - last, 0.0)
        if now <= at or period > stale_after_s:  # a clock that went back, or a gap
            state = evolve(state, **{f"{role.value}_launch_at": None})
            continue
        timings = (*state.startups, now - at)[-KEPT:]
        state = evolve(
            state,
            startups=timings,
            startup_horizon_s=statistics.median(timings) + period,
            **{f"{role.value}_launch_at": None},
        )
    return state


def after_decision(
    state: PolicyState, counts: RoleCounts, now: float, grew: set[Role], shrank: set[Role]
) -> PolicyState:
    """A role that grew starts timing (its newest ask: the earlier ones land before it) once
    it is seen grown past `counts`; one that shrank while starting voids its timing."""
    for role in Role:
        if role in shrank and counts.starting_of(role) > 0:
            at, before = None, None
        elif role in grew:
            at, before = now, counts.of(role)
        else:
            continue
        state = evolve(
            state, **{f"{role.value}_launch_at": at, f"{role.value}_launch_from": before}
        )
    return state
