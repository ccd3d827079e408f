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
  records when, how deep the fall went (the lowest need within it over the need back), how
  long the need stayed below the level (the lull), the need it came back to and, once it
  falls again, how long it stayed; it is remembered as long as the burst memory's rises;
- a peak is held the whole window while a remembered return within the window came back
  from a fall at least as deep as the need is now below it (a need's noise says nothing of a
  surge's end), and otherwise for FLOOR_HORIZONS start-up horizons: a rise that starts as a
  peak ends takes a horizon to rise, one to be seen as a climb and one for what it asks for
  to land;
- past the window, a need is held while a return that deep came back after a lull as long (plus
  the floor), to a need as high, and stayed no longer than the floor, from a fall past what the
  burst margin covers: flash crowds every 20 minutes (a 2-minute 10x spike) each found the
  fleet scaled in and lost their requests, 30% of all, since a window shorter than the lull
  never saw them come back. Once two of the role's last three surges came and went within the
  floor (crowds, policy/recurrence.py), such a return holds for as long as it is remembered,
  whatever its lull: crowds drawn 10-40 minutes apart found the fleet scaled in after every
  lull longer than any before, and stepped out at its onset and back. Only such returns are
  worth a lull's hold: a surge that stays longer is served by the instances its onset asks for,
  short one start-up as the first one was (the ServeGen days' 10-minute prompt surges, half an
  hour apart, held through their lulls, cost 1.6% more GPU-hours and bought no attainment); one
  the margin covers is ridden out by the margin once scaled in. A return says traffic comes
  back to the level it reached, not above it: a surge 22 minutes after a smaller one holds the
  smaller one's level.
  Surges that recur on a timer at least twice the window apart, once one came when due, are
  not held so: the next is sized for before it comes (policy/recurrence.py), and the role
  scales in between.

A peak let go and held again (a return that deep came since) is restored above the role's
count only for crowds, as above (`restores`); otherwise the window bounds a scale-in, as
HPA's does, and a ramp back from a lull is sized by its need.

Held for less than the whole window, traffic that comes and goes is held at the highest of
its last peak or two, and their noise scaled it in and out (on-off-2m's decode, 8.2 direction
changes an hour where the whole window gives 2.1). No trace-specific number: the floor is the
deployment's start-up, the tolerances the dead-band's. Pure: time comes in as `now`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

from heteroscale_ray.config import Role, ServiceSpec
from heteroscale_ray.policy import recurrence
from heteroscale_ray.policy.burst import HISTORY_HORIZONS
from heteroscale_ray.policy.startup import horizon_s
from heteroscale_ray.policy.types import PolicyState, Return, evolve

FLOOR_HORIZONS = 3  # a peak is held at least this many start-up horizons (see above)


def learning(spec: ServiceSpec, state: PolicyState) -> bool:
    """Whether the window is learned: configured so, with a window, and with a start-up
    horizon to measure the floor and the memory in (0 turns burst headroom off, and with it
    this: every peak is held the whole window)."""
    demand = spec.policy.demand
    return demand.learn_window and demand.peak_window_s > 0 and horizon_s(spec, state) > 0


def memory_s(spec: ServiceSpec, state: PolicyState) -> float:
    """How long a return is remembered: as long as the burst memory's rises."""
    return HISTORY_HORIZONS * horizon_s(spec, state)


def kept_s(spec: ServiceSpec, state: PolicyState) -> float:
    """How far back the window's needs and lows are kept: `peak_window_s`, and while the
    window is learned, as long as a return is remembered (a lull can outlast the window)."""
    window = spec.policy.demand.peak_window_s
    return max(window, memory_s(spec, state)) if learning(spec, state) else window


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
    kept = kept_s(spec, state)
    remembered = memory_s(spec, state)
    returns = tuple(r for r in getattr(state, f"{role.value}_returns") if now - r.at <= remembered)
    lows = tuple(low for low in getattr(state, f"{role.value}_lows") if now - low[0] <= kept)
    if need is not None and math.isfinite(need) and need >= 0:
        # a return that fell again stayed this long (0 while it has not)
        gone = 1 - policy.scale_in_tolerance
        returns = tuple(
            r if r.stay or need >= r.back * gone else r._replace(stay=now - r.at) for r in returns
        )
        level = need / (1 + policy.scale_out_tolerance)
        # The window keeps every need no later one matches, so the last need at `level` is in
        # it; `lows` keeps every need no later one is under, so the first after it is the
        # lowest since. The first decision's entries (the fleet found) are no level traffic
        # fell from: a fill back up to it is no return.
        started = -math.inf if state.started_at is None else state.started_at
        peaks = getattr(state, f"{role.value}_peaks")
        left = max(
            (t for t, _, bare in peaks if bare >= level and started < t and now - t <= kept),
            default=None,
        )
        lowest = None if left is None else next((n for t, n in lows if t > left), None)
        if lowest is not None and lowest < need * (1 - policy.scale_in_tolerance):
            back = Return(now, lowest / need, now - left, need)  # type: ignore[operator]
            # a later return as deep, after as long a lull, to as high a need, says all an
            # earlier one did, for longer
            returns = (*(r for r in returns if not _covers(back, r)), back)
        lows = (*(low for low in lows if low[1] < need), (now, need))
    return evolve(state, **{f"{role.value}_returns": returns, f"{role.value}_lows": lows})


def current_need(state: PolicyState, role: Role, now: float) -> float | None:
    """This period's need as `observe` recorded it (None when it recorded none now)."""
    lows = getattr(state, f"{role.value}_lows")
    return lows[-1][1] if lows and lows[-1][0] == now else None


def _covers(new: Return, old: Return) -> bool:
    """Whether return `new` holds all `old` does: as deep, after as long, to as high."""
    return new.depth <= old.depth and new.lull >= old.lull and new.back >= old.back


def holds(
    spec: ServiceSpec,
    state: PolicyState,
    role: Role,
    age: float,
    depth: float | None,
    bare: float = 0.0,
) -> bool:
    """Whether the window still holds a need `bare` seen `age` seconds ago while the need is
    `depth` of it (None: not known, held within `peak_window_s`). Within `peak_window_s`, as
    any return that deep taught; past it, while a return that deep came back after as long a
    lull, to that need (a return says traffic comes back to the level it reached), from a
    fall deeper than the burst margin covers, and gone again within the floor (see above);
    not while the role's next surge is predicted far enough away to be sized for before it
    comes (policy/recurrence.py: `apart`)."""
    return holder(spec, state, role)(age, depth, bare)


def holder(
    spec: ServiceSpec, state: PolicyState, role: Role
) -> Callable[[float, float | None, float], bool]:
    """`holds` for many of one role's needs at one decision: what does not depend on the need
    is read once (the window judges every need it keeps, several times a decision)."""
    policy = spec.policy
    window = policy.demand.peak_window_s
    if not learning(spec, state):
        return lambda age, depth, bare=0.0: age <= window
    floor = _floor_s(spec, state)
    band_in = 1 - policy.scale_in_tolerance
    band_out = 1 + policy.scale_out_tolerance
    surge = 1 / (1 + policy.demand.max_burst_margin)  # a return no burst margin covers
    memory = memory_s(spec, state)
    returns = getattr(state, f"{role.value}_returns")

    # Read only when a need is past the window's own test, and then once.
    @cache
    def due() -> bool:  # the next surge is sized for before it comes instead
        return recurrence.apart(spec, state, role)

    @cache
    def crowds() -> bool:  # came and went twice: the longest lull seen does not bound the next
        return _crowds(spec, state, role)

    def held(age: float, depth: float | None, bare: float = 0.0) -> bool:
        within = age <= window
        if depth is None:
            return within
        if within and (age <= floor or depth >= band_in):
            return True
        for r in returns:
            if r.depth > depth:
                continue
            if within and r.lull <= window:
                return True
            high = bare <= r.back * band_out
            if not (0 < r.stay <= floor and r.depth <= surge and high):
                continue
            lull = age <= r.lull + floor or (crowds() and age <= memory)
            if lull and not due():
                return True
        return False

    return held


def restores(spec: ServiceSpec, state: PolicyState, role: Role) -> bool:
    """Whether the window may ask for more than the role has, to a peak it let go and holds
    again: only for crowds (two of the last three surges came and went within the floor),
    whose peak the next one needs at its onset, within a period. A surge that stays longer is
    served by what its onset asks for; restored at the first rise back (sawtooth ramps: each
    rising need is a return from the lull), its peak was a scale-out no need asked for and a
    scale-in once it aged out, two direction changes. An unlearned window lets no peak go."""
    return not learning(spec, state) or _crowds(spec, state, role)


def _floor_s(spec: ServiceSpec, state: PolicyState) -> float:
    return FLOOR_HORIZONS * horizon_s(spec, state)


def _crowds(spec: ServiceSpec, state: PolicyState, role: Role) -> bool:
    """Whether two of the role's last onsets came and went within the floor."""
    return recurrence.short_surges(state, role, _floor_s(spec, state)) >= 2


def holds_down_to(spec: ServiceSpec, state: PolicyState, role: Role) -> float:
    """The share of a peak the need may fall to and still be held the whole window: the
    deepest fall a remembered return came back from (1.0 with none: no fall is held past the
    floor; 0.0 when the window is not learned, so any fall is held)."""
    if not learning(spec, state):
        return 0.0
    return min((r.depth for r in getattr(state, f"{role.value}_returns")), default=1.0)
