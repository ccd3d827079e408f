"""The scale-in stabilisation window of `signal: demand` (HPA's downscale window): a role scales
in only as far as its highest need within `demand.peak_window_s` allows, and that need with its
burst margin for MARGIN_HOLD_HORIZONS burst horizons after it. A need is held the whole window
only while this role's traffic has come back from falls that deep, else a few start-up
horizons, and past the window while it came back after as long a lull to as high a need
(policy/falls.py). It bounds a scale-in: a peak it let go and holds again is restored above the
role's count only for crowds (`falls.restores`). The fleet found at the first decision enters
the window as a need, held the whole window as HPA stabilises a new autoscaler's initial size.
A latency guard's or KV guard's step enters it too, held like a need while the load it was
taken at holds: at a lower load it is a different fleet, measured afresh (as the guard's proof,
policy/proof.py); held regardless, a step outlives the load that needed it. The needs it holds
are levels: a need read from few arrivals is averaged until its noise is within the tolerances
(policy/sampled_level.py), so the window holds no sampling noise's top. Pure: time comes in as
`now`.
"""

from __future__ import annotations

import math

from heteroscale_ray.config import Role, ServiceSpec
from heteroscale_ray.policy import falls
from heteroscale_ray.policy.proof import load_holds
from heteroscale_ray.policy.startup import horizon_s
from heteroscale_ray.policy.types import PolicyState, RoleCounts, evolve

# The scale-in window holds a peak with its burst margin this many burst horizons, bare after.
# The margin insures a rise within one horizon above the level held; one that starts as a peak
# ends takes up to a horizon to rise, is seen as a climb within the next (policy/burst.py), and
# what that asks for lands a start-up later: three horizons. Diurnal surges also come in
# clusters minutes apart, which need a few horizons more (the log has the measurements); held
# the whole window, the margin would keep a surge's doubled peak long after the surge.
MARGIN_HOLD_HORIZONS = 5


def recent_peak(
    spec: ServiceSpec, state: PolicyState, role: Role, now: float, steps: bool = True
) -> float | None:
    """A role's highest need within the last `peak_window_s` (HPA's downscale window), with
    its burst margin while it is within MARGIN_HOLD_HORIZONS burst horizons; with `steps`
    False, of its needs alone (not the guard steps it holds, which are instance counts)."""
    margin_hold = MARGIN_HOLD_HORIZONS * horizon_s(spec, state)
    inside = [
        margined if now - t <= margin_hold else bare
        for t, margined, bare, held in _in_window(spec, state, role, now, steps)
        if held
    ]
    return max(inside, default=None)


def let_go(spec: ServiceSpec, state: PolicyState, role: Role, now: float) -> float | None:
    """The highest need within `peak_window_s` the window no longer holds: none of this
    role's falls that deep came back (policy/falls.py). None when it holds them all."""
    gone = [bare for _, _, bare, held in _in_window(spec, state, role, now) if not held]
    return max(gone, default=None)


def known_level(spec: ServiceSpec, state: PolicyState, role: Role, now: float) -> float | None:
    """The role's highest bare entry the window holds: a level its traffic reached in the
    last `peak_window_s` (or the found fleet, or a guard step at this load), which the window
    still holds it for. Read it before this period's need is added (raise_peak drops the older
    needs a new one matches). A level the learned window has let go is not one: the role is
    no longer held for it, and a climb back to it is a climb."""
    return max(
        (bare for _, _, bare, held in _in_window(spec, state, role, now) if held), default=None
    )


def _in_window(
    spec: ServiceSpec, state: PolicyState, role: Role, now: float, steps: bool = True
) -> list[tuple[float, float, float, bool]]:
    """The role's (time, margined, bare, held) needs within `peak_window_s`, and those past it
    a return still holds (`falls.kept_s`), its guard steps as needs; none when it is 0.
    Held: a guard step (it lapses when its load goes, `lapse_steps`) and the first
    decision's entries (the fleet found, a load not yet seen, as HPA holds a new
    autoscaler's initial size) for the whole window; a need as long as this role's traffic
    has come back from falls that deep (policy/falls.py)."""
    window = spec.policy.demand.peak_window_s
    if window <= 0:
        return []
    kept = falls.kept_s(spec, state)
    need = falls.current_need(state, role, now)
    started = -math.inf if state.started_at is None else state.started_at
    holds = falls.holder(spec, state, role)
    out = [
        (t, n, n, True)
        for t, n, _ in (getattr(state, f"{role.value}_steps") if steps else ())
        if now - t <= window
    ]
    for t, margined, bare in getattr(state, f"{role.value}_peaks"):
        if now - t > kept:
            continue
        depth = None if need is None or bare <= 0 else need / bare
        found = t <= started and now - t <= window
        held = found or holds(now - t, depth, bare)
        if held or now - t <= window:
            out.append((t, margined, bare, held))
    return out


def raise_peak(
    spec: ServiceSpec,
    state: PolicyState,
    role: Role,
    need: float | None,
    now: float,
    bare: float | None = None,
) -> PolicyState:
    """Add ``need`` (with its burst margin; ``bare`` without it, the same when not given) to
    the role's window. Only needs no later one matches in both are kept: they are all the
    window's maximum can come from."""
    if need is None or not math.isfinite(need) or spec.policy.demand.peak_window_s <= 0:
        return state
    bare = need if bare is None else min(bare, need)
    span = falls.kept_s(spec, state)
    kept = tuple(
        (t, m, b)
        for t, m, b in getattr(state, f"{role.value}_peaks")
        if now - t <= span and not (m <= need and b <= bare)
    )
    return evolve(state, **{f"{role.value}_peaks": (*kept, (now, need, bare))})


def raise_step(
    spec: ServiceSpec,
    state: PolicyState,
    role: Role,
    instances: int,
    load: float | None,
    now: float,
) -> PolicyState:
    """Add a guard step to `instances`, taken at a sized need of `load`, to the role's window.
    Without a load it is held as a need (it cannot lapse)."""
    if spec.policy.demand.peak_window_s <= 0:
        return state
    if load is None or not math.isfinite(load):
        return raise_peak(spec, state, role, float(instances), now)
    kept = tuple(s for s in getattr(state, f"{role.value}_steps") if s[1] > instances)
    return evolve(state, **{f"{role.value}_steps": (*kept, (now, float(instances), load))})


def lapse_steps(
    spec: ServiceSpec, state: PolicyState, role: Role, need: float | None, now: float
) -> PolicyState:
    """Let go of the guard steps past the window, and of those whose load no longer holds
    (`proof.load_holds`; missing data lets none of those go)."""
    steps = getattr(state, f"{role.value}_steps")
    window = spec.policy.demand.peak_window_s
    kept = tuple(s for s in steps if now - s[0] <= window)
    if need is not None and math.isfinite(need):
        kept = tuple(s for s in kept if load_holds(spec, need, s[2]))
    return evolve(state, **{f"{role.value}_steps": kept}) if len(kept) < len(steps) else state


def hold_found_fleet(
    spec: ServiceSpec, state: PolicyState, counts: RoleCounts, now: float
) -> PolicyState:
    """At its first decision a policy holds the fleet it found for one window, as HPA
    stabilises a new autoscaler's initial size: that fleet was sized for load this policy has
    not seen yet: a fill of minutes-long sequences reads low for minutes after a start. Like
    any need in the window, the found size is a level the traffic is held
    for (`known_level`): a climb back to it is not extrapolated as a rise."""
    if state.started_at is not None or counts.prefill + counts.decode == 0:
        return state
    found: dict[Role, float | None] = {role: float(counts.of(role)) for role in Role}
    return track_peaks(spec, state, found, now, found)


def track_peaks(
    spec: ServiceSpec,
    state: PolicyState,
    needs: dict[Role, float | None],
    now: float,
    bare: dict[Role, float | None],
) -> PolicyState:
    for role in Role:
        state = raise_peak(spec, state, role, needs[role], now, bare[role])
    return state
