"""Whether a role's traffic comes back after it falls: the scale-in window, learned.

The scale-in window (policy/peak_window.py) holds a role at its highest need of the last
`peak_window_s`, so traffic that comes and goes is not scaled in at each lull and out again at
each return (a start-up late, and two direction changes). Held the whole window after a surge
that does not come back, it keeps the surge's peak a quarter of an hour for nothing (on the
ServeGen day, hour 15's decode held 83 instances to 15:30 and came down over 30 minutes where
the oracle held 14). So the window holds a peak only while this role's traffic has shown that
it comes back from a fall that deep:

- a *return* is a need back within the scale-out tolerance of a level the role fell from by
  more than the scale-in tolerance (a fall a shorter window would have scaled in for). It
  records when, and how deep the fall went (the lowest need within it over the need back),
  and is remembered as long as the burst memory's rises;
- a peak is held the whole window while a remembered return came back from a fall at least
  as deep as the need is now below it (a need's noise says nothing of a surge's end), and
  otherwise for FLOOR_HORIZONS start-up horizons: a rise that starts as a peak ends takes a
  horizon to rise, one to be seen as a climb and one for what it asks for to land.

Held for less than the whole window, traffic that comes and goes is held at the highest of
its last peak or two, and their noise scaled it in and out (on-off-2m's decode, 8.2 direction
changes an hour where the whole window gives 2.1). No trace-specific number: the floor is the
deployment's start-up, the tolerances the dead-band's. Pure: time comes in as `now`.
"""

from __future__ import annotations

import math
from dataclasses import replace

from heteroscale_ray.config import Role, ServiceSpec
from heteroscale_ray.policy.burst import HISTORY_HORIZONS
from heteroscale_ray.policy.startup import horizon_s
from heteroscale_ray.policy.types import PolicyState

FLOOR_HORIZONS = 3  # a peak is held at least this many start-up horizons (see above)


def learning(spec: ServiceSpec, state: PolicyState) -> bool:
    """Whether the window is learned: configured so, with a window, and with a start-up
    horizon to measure the floor and the memory in (0 turns burst headroom off, and with it
    this: every peak is held the whole window)."""
    demand = spec.policy.demand
    return demand.learn_window and demand.peak_window_s > 0 and horizon_s(spec, state) > 0


def observe(
    spec: ServiceSpec, state: PolicyState, needs: dict[Role, float | None], now: float
) -> PolicyState:
    """Record the returns this period's needs make; read the window before they are added."""
    if not learning(spec, state):
        return state
    for role in Role:
        state = _observe(spec, state, role, needs[role], now)
    return state


def _observe(
    spec: ServiceSpec, state: PolicyState, role: Role, need: float | None, now: float
) -> PolicyState:
    policy = spec.policy
    window_s = policy.demand.peak_window_s
    memory_s = HISTORY_HORIZONS * horizon_s(spec, state)
    returns = tuple(r for r in getattr(state, f"{role.value}_returns") if now - r[0] <= memory_s)
    lows = tuple(low for low in getattr(state, f"{role.value}_lows") if now - low[0] <= window_s)
    if need is not None and math.isfinite(need) and need >= 0:
        level = need / (1 + policy.scale_out_tolerance)
        # The window keeps every need no later one matches, so the last need at `level` is in
        # it; `lows` keeps every need no later one is under, so the first after it is the
        # lowest since. The first decision's entries (the fleet found) are no level traffic
        # fell from: a fill back up to it is no return.
        started = -math.inf if state.started_at is None else state.started_at
        peaks = getattr(state, f"{role.value}_peaks")
        left = max(
            (t for t, _, bare in peaks if bare >= level and started < t and now - t <= window_s),
            default=None,
        )
        lowest = None if left is None else next((n for t, n in lows if t > left), None)
        if lowest is not None and lowest < need * (1 - policy.scale_in_tolerance):
            deep = lowest / need
            # a later return at least as deep says all an earlier one did, for longer
            returns = (*(r for r in returns if r[1] < deep), (now, deep))
        lows = (*(low for low in lows if low[1] < need), (now, need))
    return replace(state, **{f"{role.value}_returns": returns, f"{role.value}_lows": lows})


def current_need(state: PolicyState, role: Role, now: float) -> float | None:
    """This period's need as `observe` recorded it (None when it recorded none now)."""
    lows = getattr(state, f"{role.value}_lows")
    return lows[-1][1] if lows and lows[-1][0] == now else None


def holds(
    spec: ServiceSpec, state: PolicyState, role: Role, age: float, depth: float | None
) -> bool:
    """Whether the window still holds a peak `age` seconds old while the need is `depth` of it
    (None: not known, held). `peak_window_s` bounds the age (peak_window.py)."""
    if not learning(spec, state) or depth is None:
        return True
    if age <= FLOOR_HORIZONS * horizon_s(spec, state):
        return True
    if depth >= 1 - spec.policy.scale_in_tolerance:  # no fall a scale-in would act on
        return True
    return any(deep <= depth for _, deep in getattr(state, f"{role.value}_returns"))


def holds_down_to(spec: ServiceSpec, state: PolicyState, role: Role) -> float:
    """The share of a peak the need may fall to and still be held the whole window: the
    deepest fall a remembered return came back from (1.0 with none: no fall is held past the
    floor; 0.0 when the window is not learned, so any fall is held)."""
    if not learning(spec, state):
        return 0.0
    return min((deep for _, deep in getattr(state, f"{role.value}_returns")), default=1.0)
