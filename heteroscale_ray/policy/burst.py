"""Burst headroom, learned: how much a role's arriving need rises within one start-up horizon.

A reactive policy sees a burst only once it has arrived, and the instances it then asks for
serve only after the start-up delay. So each role is sized for its need now plus the rise this
service's traffic has shown over such a horizon: from its own recent history, the `quantile` of

    (highest need within the horizon - held) / max(held, 1 instance)

where `held` is the highest need of the horizon before it, which the scale-in stabilisation
window still holds the role at (the need at the horizon's start when that window is off), and
`highest` is counted above what the climb seen before the horizon, carried on, foresaw: the
trend (below) sizes for that part, and the margin is for what it did not see (learned in
full, each horizon-long step of one surge would teach a rise just under the cap). Each
rise also keeps its `span`: the largest climb, over a remembered span (horizon and held window)
from that span's first need, of any span it was recorded in; a climb that reaches the cap is
one surge, whichever horizon-long steps it was measured in (`margin`). (With the window off the
span is one horizon, and tells nothing the rise does not.)

Smooth traffic learns a margin near 0 and pays nothing; bursty traffic learns how bursty it
is. The margin applies once the role has been short (its latency reached the latency guard's
lowest tier, from a cause capacity can fix): rises the sizing's own slack absorbs cost nothing, and a service whose
fleet never strains needs no insurance against them; one that has strained keeps it, since its
calm hours are when the next surge finds the fleet lean.
Neither rises nor strain are learned while the need is still in the climb the policy started
into (its least-squares slope tells it from noise): that is the fleet filling, after a launch or
at a replay's empty start. Long requests take minutes to fill a fleet: a fill is no burst, and
the strain a cold start brings is not the service's.
No trace-specific number: the horizon is a property of the deployment (instance start-up
plus one control period), the quantile one of the SLO target. Pure: time comes in as `now`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from heteroscale_ray.config import DemandSpec, Role
from heteroscale_ray.policy.types import BurstMemory, PolicyState, evolve

HISTORY_HORIZONS = 30  # rises remembered: 30 horizons (an hour at a 120-s horizon)
# Default cap (demand.max_burst_margin): at most double the need; a larger rise is an outage.
MAX_MARGIN = DemandSpec().max_burst_margin
CLIMB_T = 2.0  # a slope counts as a climb when it is this many standard errors above 0
COVERED = 0.75  # a rise is measured once the remembered needs span this share of a horizon


def remember(
    memory: BurstMemory,
    need: float | None,
    now: float,
    horizon_s: float,
    strained: bool = False,
    window_s: float = 0.0,
) -> BurstMemory:
    """Add this period's need; once (most of) a horizon since the memory settled is covered,
    record the rise over it. Until a covered horizon shows no climb, only the needs are kept.

    A rise is measured from the highest need within `window_s` before the horizon (a level
    the scale-in stabilisation window still holds the role at), or from the need at the
    horizon's start when `window_s` is 0: a need back to a level the fleet was held at is no
    rise it is short for, and measured from the start alone the need's tick-to-tick noise
    would be insured twice (the window already holds its maximum)."""
    if horizon_s <= 0:
        return memory
    if need is None or not math.isfinite(need) or need < 0:
        if strained and memory.settled_at is not None:
            return replace(memory, strained_at=now)
        return memory
    kept_s = horizon_s + max(window_s, 0.0)
    # a decision retried at the same `now` replaces that period's need and rise, not adds more
    needs = tuple((t, n) for t, n in memory.needs if now - t <= kept_s and t != now)
    needs += ((now, need),)
    recent = [(t, n) for t, n in needs if now - t <= horizon_s]
    settled_at = memory.settled_at
    if settled_at is None:
        if now - recent[0][0] < COVERED * horizon_s or _climb(recent) > 0:
            return replace(memory, needs=needs)  # still the climb the policy started into
        settled_at = now
    rises, rises_at, tops, spans = memory.rises, memory.rises_at, memory.tops, memory.spans
    since = [(t, n) for t, n in recent if t >= settled_at]  # no rise from the fill's tail
    oldest_t, base = since[0]
    if now - oldest_t >= COVERED * horizon_s:
        held = [n for t, n in needs if settled_at <= t < oldest_t]
        base = max([base, *held])
        top = max(n for _, n in since)
        # What the climb seen before this horizon, carried on, foresaw: the trend sizes for it.
        foreseen = _climb([(t, n) for t, n in needs if settled_at <= t <= oldest_t])
        foreseen *= now - oldest_t
        rise = max(top - base - foreseen, 0.0) / max(base, 1.0)
        first_t, first = next((t, n) for t, n in needs if t >= settled_at)
        span = max(rise, (top - first) / max(first, 1.0))
        keep_after = now - HISTORY_HORIZONS * horizon_s
        kept = [
            # A rise recorded since this span's first need is a step of the same climb: it
            # insures as the climb does, up to the climb's top.
            (r, t, max(n, top), max(sp, span)) if t >= first_t else (r, t, n, sp)
            for r, t, n, sp in zip(rises, rises_at, tops, spans, strict=True)
            if t >= keep_after and t != now
        ]
        kept.append((rise, now, top, span))
        rises, rises_at, tops, spans = (tuple(x) for x in zip(*kept, strict=True))
    strained_at = now if strained else memory.strained_at
    return BurstMemory(needs, rises, rises_at, tops, strained_at, settled_at, spans)


def margin(
    memory: BurstMemory,
    quantile: float,
    gated: bool = False,
    cap: float = MAX_MARGIN,
    level: float | None = None,
) -> float:
    """The learned headroom share: the `quantile` of the remembered rises (0 before any), at
    most `cap`. With `gated`, 0 until the role has strained.

    A rise of at least `cap` (one no headroom covers: a surge) insures the need at `level`
    only up to the top it reached: below it, the calm after a surge is when the next one
    finds the fleet lean; at it, the surge that brought the need there says nothing of
    another above it. So does a rise recorded within the remembered span of a climb of at
    least `cap` (its `span`), up to that climb's top: a surge the need shows over minutes
    (longer outputs reach the finished requests' mean as they finish) is measured in
    horizon-long steps, the first under the cap, and is still one surge. Smaller rises always
    insure in proportion: a diurnal ramp lifts the level past their tops within minutes."""
    if not memory.rises or (gated and memory.strained_at is None):
        return 0.0
    rises = memory.rises
    spans = memory.spans if len(memory.spans) == len(rises) else rises
    if level is not None and level > 0:
        rises = tuple(
            min(r, max(top / level - 1.0, 0.0)) if span >= cap else r
            for r, top, span in zip(rises, memory.tops, spans, strict=True)
        )
    ordered = sorted(rises)
    k = min(len(ordered) - 1, max(0, math.ceil(quantile * len(ordered)) - 1))
    return min(ordered[k], cap)


def trend(memory: BurstMemory, now: float, horizon_s: float) -> float:
    """How fast the need is climbing now (instances per second): the least-squares slope of
    the needs within the horizon, while the newest is their highest; else 0, as before most
    of a horizon is covered. A surge larger than any remembered rise is still sized for
    where it will be once the instances asked for now are up. Like the margin, it applies
    once the role has strained: a fleet that never ran short needs no insurance, and a climb
    its own slack absorbs would otherwise hold extra instances for nothing."""
    if memory.strained_at is None:
        return 0.0
    pts = [(t, n) for t, n in memory.needs if now - t <= horizon_s]
    if len(pts) < 3 or now - pts[0][0] < COVERED * horizon_s:
        return 0.0
    if pts[-1][1] < max(n for _, n in pts):  # a spike that has passed is not a climb
        return 0.0
    return _climb(pts)


def _climb(pts: Sequence[tuple[float, float]]) -> float:
    """The least-squares slope of (time, need) points when it is `CLIMB_T` standard errors above
    0 (a climb the fit tells from noise); else 0."""
    if len(pts) < 3:
        return 0.0
    t_mean = sum(t for t, _ in pts) / len(pts)
    n_mean = sum(n for _, n in pts) / len(pts)
    var = sum((t - t_mean) ** 2 for t, _ in pts)
    if var <= 0:
        return 0.0
    slope = sum((t - t_mean) * (n - n_mean) for t, n in pts) / var
    residual = sum((n - n_mean - slope * (t - t_mean)) ** 2 for t, n in pts)
    stderr = math.sqrt(residual / (len(pts) - 2) / var)
    return slope if slope > CLIMB_T * stderr else 0.0


def last_need(memory: BurstMemory) -> float | None:
    """The need remembered at the last period, None before any."""
    return memory.needs[-1][1] if memory.needs else None


def memory_of(state: PolicyState, role: Role) -> BurstMemory:
    return state.prefill_burst if role is Role.PREFILL else state.decode_burst


def with_memory(state: PolicyState, role: Role, memory: BurstMemory) -> PolicyState:
    field = "prefill_burst" if role is Role.PREFILL else "decode_burst"
    return evolve(state, **{field: memory})
