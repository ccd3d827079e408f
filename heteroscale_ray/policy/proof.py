"""Capacity the latency guard proved, held while the load it was measured at holds.

A guard step (or a KV-pressure step) that took a role to C instances while its sized need was
N shows that the role carries N with C instances, not with the N the capacity estimate said:
KV transfer, routing imbalance and long contexts cost what the step-time model does not see.
Without a memory of it, the scale-in window lets go of the step after `peak_window_s`, the
latency breaches again at the same load, and the guard steps again: a direction change each
window on a load that never moved. So the role is sized for at least its need x C / N while
its need stays within the tolerances of N. A load further away, below or above, is a different
load, measured afresh: a step proved during a surge's transient (a queue draining at 35
instances) multiplied the surge's peak need by 1.5 on the m-large day.
Pure: the caller passes the state.
"""

from __future__ import annotations

import math
from dataclasses import replace

from heteroscale_ray.config import Role, ServiceSpec
from heteroscale_ray.policy.types import PolicyState

MAX_PROOF = 2.0  # as the burst headroom: never more than double the estimate


def proof_of(state: PolicyState, role: Role) -> tuple[float, float] | None:
    """(sized need, instances) of the role's last proving step, or None."""
    return getattr(state, f"{role.value}_proof")


def prove(state: PolicyState, role: Role, need: float | None, instances: int) -> PolicyState:
    """Remember that `instances` were needed for a sized need of `need` (the latest wins)."""
    if need is None or not math.isfinite(need) or need <= 0 or instances <= need:
        return state
    return replace(state, **{f"{role.value}_proof": (float(need), float(instances))})


def lapse(spec: ServiceSpec, state: PolicyState, role: Role, need: float | None) -> PolicyState:
    """Forget the proof once the need has left its load: below it by the scale-in tolerance,
    or above it by the scale-out tolerance (missing data changes nothing)."""
    proof = proof_of(state, role)
    if proof is None or need is None or not math.isfinite(need):
        return state
    tol = spec.policy
    if need < proof[0] * (1 - tol.scale_in_tolerance) or (
        need > proof[0] * (1 + tol.scale_out_tolerance)
    ):
        return replace(state, **{f"{role.value}_proof": None})
    return state


def proven_need(state: PolicyState, role: Role, need: float) -> tuple[float, float] | None:
    """(instances the proof asks for at `need`, its ratio), or None without a proof."""
    proof = proof_of(state, role)
    if proof is None:
        return None
    ratio = min(proof[1] / proof[0], MAX_PROOF)
    return need * ratio, ratio
