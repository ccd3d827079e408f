"""Capacity the latency guard proved, held while the load it was measured at holds.

A guard step (or a KV-pressure step) that took a role to C instances while its sized need was
N, and was needed again at that load, shows that the role carries N with C instances, not with
the N the capacity estimate said: KV transfer, routing imbalance and long contexts cost what
the step-time model does not see. Without a memory of it, the scale-in window lets go of the
step after `peak_window_s`, the latency breaches again at the same load, and the guard steps
again: a direction change each window on a load that never moved. So the role is sized for at
least its need x C / N while its need is within the scale-out tolerance of N; above that the
proof is a floor, not a multiplier: the larger of the need and what it asked at the
tolerance's edge (a proof taken in a surge's transient would multiply the surge's peak, and
dropped, more load would ask for fewer instances).
A first step proves nothing yet: the window holds it, and only a second step while the load
still holds (the window let it go and the breach came back, or one step was not enough)
proves it; one step may answer a passing breach, such as a cluster of long prompts.
Either lapses once the need falls below the load it was taken at by the scale-in tolerance (a
different load, measured afresh) and stays there for a start-up horizon: one period's sample
of a need of 300 arrivals a period is noisy by about the tolerance, and a step let go on it is
stepped again once the dip has passed. That load is the highest need of the horizon before the
step where that is under the step's own: a breach comes likeliest with a sample that reads
high (the heaviest instant of a bunched load), and judged from it the next ordinary horizon
reads as a fall.
Pure: the caller passes the state.
"""

from __future__ import annotations

import math

from heteroscale_ray.config import Role, ServiceSpec
from heteroscale_ray.policy.types import PolicyState, evolve

MAX_PROOF = 2.0  # never more than double the estimate (as the burst headroom's default cap)


def remember_load(
    state: PolicyState, role: Role, need: float | None, now: float, horizon_s: float
) -> tuple[PolicyState, float | None]:
    """Add this period's sized need to the role's loads within `horizon_s`, and return the
    highest of them: the load steps and proofs are judged at (None without this period's:
    missing data lets nothing lapse)."""
    if need is None or not math.isfinite(need):
        return state, None
    name = f"{role.value}_loads"
    earlier = (x for x in getattr(state, name) if now - x[0] <= horizon_s and x[0] != now)
    kept = (*earlier, (now, float(need)))
    return evolve(state, **{name: kept}), max(n for _, n in kept)


def proof_of(state: PolicyState, role: Role) -> tuple[float, float] | None:
    """(sized need, instances) of the role's last proving step, or None."""
    held = getattr(state, f"{role.value}_proof")
    return None if held is None else (held[0], held[1])


def step_load(state: PolicyState, role: Role, need: float | None, now: float) -> float | None:
    """The load a step taken now at a sized need of `need` lapses from: the highest need of
    the horizon before this period where that is lower (the need without one). A lapse
    compares the highest need of a horizon with it, and a breach is likeliest when a sample
    reads high (a heavy instant of a bunched load): judged from the step's own period, the
    next horizon of ordinary samples read as a fall, and the step was let go and taken again.
    On a climb the period before reads about as high, so a surge's step lapses as it did."""
    before = [n for t, n in getattr(state, f"{role.value}_loads") if t < now]
    if need is None or not before:
        return need
    return min(need, max(before))


def record_step(
    state: PolicyState, role: Role, need: float | None, instances: int, load: float | None = None
) -> PolicyState:
    """A guard step took the role to `instances` at a sized need of `need` (lapsing from
    `load`, the need by default): the first is remembered, a second (before the first
    lapsed) proves it, and a proof is replaced by the latest step."""
    if not _added_capacity(need, instances):
        return state
    load = need if load is None else load
    if proof_of(state, role) is None and getattr(state, f"{role.value}_first_step") is None:
        first = (float(need), float(instances), float(load))
        return evolve(state, **{f"{role.value}_first_step": first})
    return evolve(prove(state, role, need, instances, load), **{f"{role.value}_first_step": None})


def prove(
    state: PolicyState, role: Role, need: float | None, instances: int, load: float | None = None
) -> PolicyState:
    """Remember that `instances` were needed for a sized need of `need` (lapsing from `load`)."""
    if not _added_capacity(need, instances):
        return state
    load = need if load is None else load
    held = (float(need), float(instances), float(load))
    return evolve(state, **{f"{role.value}_proof": held})


def _added_capacity(need: float | None, instances: int) -> bool:
    return need is not None and math.isfinite(need) and 0 < need < instances


def load_holds(spec: ServiceSpec, need: float, load: float) -> bool:
    """Whether a step taken at a sized need of `load` still stands at `need`: the need has not
    fallen below it by the scale-in tolerance (a different load, measured afresh)."""
    return need >= load * (1 - spec.policy.scale_in_tolerance)


def lapse(spec: ServiceSpec, state: PolicyState, role: Role, need: float | None) -> PolicyState:
    """Forget the proof and a first step once their load no longer holds (missing data changes
    nothing)."""
    if need is None or not math.isfinite(need):
        return state
    for name in (f"{role.value}_proof", f"{role.value}_first_step"):
        held = getattr(state, name)
        if held is not None and not load_holds(spec, need, held[2]):
            state = evolve(state, **{name: None})
    return state


def proven_need(
    state: PolicyState, role: Role, need: float, scale_out_tolerance: float
) -> tuple[float, float] | None:
    """(instances the proof asks for at `need`, its ratio), or None without a proof. Within
    the scale-out tolerance of the proved load the need is multiplied by the ratio; above it,
    the proof holds what it asked at that edge (never less as the need grows, never a multiple
    of a load it was not measured at)."""
    proof = proof_of(state, role)
    if proof is None:
        return None
    ratio = min(proof[1] / proof[0], MAX_PROOF)
    edge = proof[0] * (1 + scale_out_tolerance)
    return min(need * ratio, max(edge * ratio, need)), ratio
