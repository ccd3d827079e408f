"""Surges on a timer: seen to recur at a steady interval, the next is sized for before it comes.

A reactive policy serves a surge one start-up after it arrives. A batch job every hour or a push
every 40 minutes sends a 2-minute crowd that is over before what its onset asks for lands. The
learned window can hold a crowd's level through the lull that follows (policy/falls.py), at
nearly a static fleet's GPU-hours: 2-minute 10x crowds every hour (made-up flash-hourly) were
held at 0.87x static, where the oracle, knowing when they come, holds 0.21x. Traffic on a timer
says when it comes back:

- an *onset* is a role's need (its level, no backlog, and this period's raw need too: a thin
  level averages over up to a horizon and lags a drop) rising past what the burst margin covers
  over the lowest need of the start-up horizon before (to over 1 + `max_burst_margin` times it,
  and at least one instance over); it records when, the need it rose from, and the highest need
  the surge reaches until the need falls back under the line and stays a horizon (a surge's
  tail crosses the line more than once), and whether it came when one was due (below);
- when the last two intervals between three onsets agree within two start-up horizons, the
  next is due their mean after the last. If it is at least twice the scale-in window
  (`peak_window_s`) away, then from two start-up horizons before it (one for what
  it asks for to land, one since an onset is timed when it is seen) until one after, each
  widened by the intervals' disagreement, the role is sized for the last surge's top (times
  how much its base has grown since: a surge on a rising day), and a scale-out for it says so
  (reason `surge_due`). One that does not come is not asked for again until two intervals
  agree again;
- once a surge has come when it was due, such surges are not held through their lulls
  (policy/falls.py): the role scales in after each and out before the next, two direction
  changes a period, within the four an hour the window is sized for. Until then, and for closer
  ones, the lulls are held as the window learned. Two intervals agree by chance: crowds drawn
  15-45 minutes apart came 37 and 40 minutes apart, the next was due at 38.5 minutes and came
  at 32, and the fleet, let go before it, met it with a third of the instances it needed.

Random surges rarely space themselves within two horizons twice running, and one that does
costs about three horizons at its top (diurnal-long-context's prompt surges did once: 1.6%
more GPU-hours that day). No trace-specific number: the horizon is the deployment's
start-up, the line the burst margin's. Pure: time comes in as `now`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from heteroscale_ray.config import Role, ServiceSpec
from heteroscale_ray.policy.burst import memory_of
from heteroscale_ray.policy.startup import horizon_s
from heteroscale_ray.policy.types import Onset, PolicyState, evolve

KEPT = 3  # onsets kept per role: two intervals
AGREE_HORIZONS = 2.0  # two intervals agree within this many start-up horizons: the lead


class Due(NamedTuple):
    """The next surge a role's onsets predict: when; the last one's base and top; the
    interval and how far its last two disagreed."""

    at: float
    base: float
    top: float
    every: float
    spread: float

    def size(self, base: float | None) -> float:
        """What the surge will need from today's `base`: its top, and as many times today's
        base as it was of its own when that is more (a surge on a rising day)."""
        if base is None or not math.isfinite(base) or base <= self.base:
            return self.top
        return self.top * base / self.base


def on(spec: ServiceSpec, state: PolicyState) -> bool:
    """Whether surges are predicted: configured so, with a burst margin to draw the line and a
    start-up horizon to time the lead."""
    demand = spec.policy.demand
    return demand.predict_recurring and demand.max_burst_margin > 0 and horizon_s(spec, state) > 0


def observe(
    spec: ServiceSpec, state: PolicyState, needs: dict[Role, float | None], now: float
) -> PolicyState:
    """Record the onsets this period's needs (levels, no backlog) start, and the surges' tops."""
    if not on(spec, state):
        return state
    for role in Role:
        state = _observe(spec, state, role, needs[role], now)
    return state


def _observe(
    spec: ServiceSpec, state: PolicyState, role: Role, need: float | None, now: float
) -> PolicyState:
    if need is None or not math.isfinite(need) or need < 0:
        return state
    onsets = _onsets(state, role)
    last = onsets[-1] if onsets else None
    horizon = horizon_s(spec, state)
    # a surge under way, or back within a horizon of falling (its tail is noisy): its top, or
    # its end
    if last is not None and (last.end == 0 or now - last.end <= horizon):
        if need >= _line(spec, last.base):
            last = last._replace(top=max(last.top, need), end=0.0)
        elif last.end == 0:
            last = last._replace(end=now)
        return _with(state, role, (*onsets[:-1], last))
    memory = memory_of(state, role)
    if memory.settled_at is None:  # the fleet still filling: no surge
        return state
    base = _base(spec, state, role, now)
    if base is None:
        return state
    # The level averages thin samples over up to a horizon, so it lags a drop; the base is
    # read from the raw needs. Both past the line: a drop is no surge.
    raw = memory.needs[-1][1] if memory.needs and memory.needs[-1][0] == now else need
    if min(need, raw) < max(_line(spec, base), base + 1.0):
        return state
    coming = due(spec, state, role)
    foreseen = coming is not None and _near(spec, state, coming, now)
    return _with(state, role, (*onsets, Onset(now, base, need, foreseen=foreseen))[-KEPT:])


def short_surges(state: PolicyState, role: Role, within_s: float) -> int:
    """How many of the role's last onsets fell back within `within_s` of starting: crowds that
    came and went, not a new level (none are recorded while prediction is off)."""
    return sum(1 for o in _onsets(state, role) if 0 < o.end - o.at <= within_s)


def _base(spec: ServiceSpec, state: PolicyState, role: Role, now: float) -> float | None:
    """The lowest need of the start-up horizon before `now` (at least one instance)."""
    horizon = horizon_s(spec, state)
    before = [n for t, n in memory_of(state, role).needs if t < now and now - t <= horizon]
    return max(min(before), 1.0) if before else None


def _line(spec: ServiceSpec, base: float) -> float:
    """The need a surge from `base` rises past: more than the burst margin covers."""
    return base * (1 + spec.policy.demand.max_burst_margin)


def due(spec: ServiceSpec, state: PolicyState, role: Role) -> Due | None:
    """The next surge the role's last three onsets predict (two intervals that agree), or None."""
    if not on(spec, state):
        return None
    onsets = _onsets(state, role)
    if len(onsets) < KEPT:
        return None
    first, second = (b.at - a.at for a, b in zip(onsets, onsets[1:], strict=False))
    spread = abs(second - first)
    if spread > AGREE_HORIZONS * horizon_s(spec, state):
        return None
    every = (first + second) / 2
    last = onsets[-1]
    return Due(last.at + every, last.base, last.top, every, spread)


def apart(spec: ServiceSpec, state: PolicyState, role: Role) -> bool:
    """Whether the role's next surge is predicted far enough away to scale in before it: out
    before each surge and in after is two direction changes a period, and the scale-in window
    (`peak_window_s`) is sized to keep traffic that comes and goes to four an hour. Only once
    the last surge came when due: until a timer has proved itself, and for closer surges, the
    lulls are held as the window learned (policy/falls.py)."""
    # a prediction needs three onsets, so the last is there to ask
    return _apart(spec, due(spec, state, role)) and _onsets(state, role)[-1].foreseen


def _apart(spec: ServiceSpec, coming: Due | None) -> bool:
    return coming is not None and coming.every >= 2 * spec.policy.demand.peak_window_s


def ahead(
    spec: ServiceSpec,
    state: PolicyState,
    role: Role,
    now: float,
    need: float | None,
    why: str,
) -> tuple[float | None, str, bool]:
    """The role's need raised to what a due surge will need (`Due.size`) while it is due, with
    why; and whether it was raised. Only for surges at least twice the window apart
    (`_apart`; the window holds closer ones), whether or not one has yet come when due (that
    only decides whether their lulls are let go, `apart`); due from two start-up horizons
    before (one for what it asks for to land, one since an onset is timed when it is seen) to
    one after, each widened by the intervals' spread."""
    coming = due(spec, state, role)
    if need is None or coming is None or not _apart(spec, coming):
        return need, why, False
    size = coming.size(_base(spec, state, role, now))
    if size <= need or not _near(spec, state, coming, now):
        return need, why, False
    why += (
        f"; a surge every {coming.every / 60:,.0f} min is due in {coming.at - now:,.0f} s:"
        f" sized for its last top {coming.top:,.1f}"
    )
    if size > coming.top:
        why += f" x {size / coming.top:,.2f} as its base grew since = {size:,.1f}"
    return size, why, True


def _near(spec: ServiceSpec, state: PolicyState, coming: Due, now: float) -> bool:
    """Whether `now` is within the surge's lead: from two start-up horizons before it to one
    after, each widened by the intervals' spread."""
    horizon = horizon_s(spec, state)
    return coming.at - 2 * horizon - coming.spread <= now <= coming.at + horizon + coming.spread


def _onsets(state: PolicyState, role: Role) -> tuple[Onset, ...]:
    return getattr(state, f"{role.value}_onsets")


def _with(state: PolicyState, role: Role, onsets: tuple[Onset, ...]) -> PolicyState:
    return evolve(state, **{f"{role.value}_onsets": onsets})
