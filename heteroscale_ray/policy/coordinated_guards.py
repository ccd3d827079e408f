"""The paper's rule's guards: latency and KV pressure step its anchor role out.

The latency guard steps only for a breach capacity can fix (the floor test and the
marginal-gain check of `policy/fixable_latency.py`, shared with `signal: demand`); the KV guard
steps decode out while its KV memory is nearly full. Inside their cooldowns both only block a
scale-in. Pure, like the rest of the decision core.
"""

from __future__ import annotations

from dataclasses import replace

from heteroscale_ray.config import Role, ServiceSpec
from heteroscale_ray.policy.cooldown import cooldown_left
from heteroscale_ray.policy.fixable_latency import MIN_GAIN, unhelped, watched_latencies
from heteroscale_ray.policy.freshness import snapshot_problem, value_problem
from heteroscale_ray.policy.guard_steps import guard_target, reached_tier
from heteroscale_ray.policy.proportional import EPS
from heteroscale_ray.policy.proposal import Proposal
from heteroscale_ray.policy.types import PolicyState, Reason, RoleCounts, Signals


def latency_guard_proposal(
    spec: ServiceSpec,
    signals: Signals,
    counts: RoleCounts,
    state: PolicyState,
    now: float,
    proposal: Proposal,
) -> Proposal:
    """A fresh latency breach steps out by the reached tier, overriding holds and scale-ins,
    unless capacity cannot fix it: a latency that is not queueing (a long prompt's own
    compute, the KV transfer) is a floor (reason latency_floor), and a breach the last guard
    step left flat (within a tenth, while the role's load per instance fell) earns no other
    (latency_no_gain); one that rose was too small. Either way demand alone sizes the
    service, so a latency floor never ratchets the fleet up."""
    guard = spec.policy.latency_guard
    if not guard.enabled or snapshot_problem(signals, now, spec.policy.stale_after_s):
        return proposal
    breaches = []
    for role, name, observed, slo, fixable, floor in watched_latencies(spec, signals):
        if value_problem(observed) is None:
            tier = reached_tier(observed / slo, guard.tiers)  # type: ignore[operator]
            if tier is not None:
                breaches.append((observed / slo, role, name, observed, slo, fixable, floor, tier))  # type: ignore[operator]
    if not breaches:
        return proposal
    held = []
    for ratio, role, name, observed, slo, fixable, floor, tier in sorted(
        breaches, key=lambda b: -b[0]
    ):
        breach = (
            f"{name} p99 {observed * 1000:,.0f} ms is {ratio:.2f}x the {slo * 1000:,.0f} ms SLO"
        )
        if floor:
            held.append(
                (
                    Reason.LATENCY_FLOOR,
                    f"{breach} but not from queueing, which instances cannot fix",
                )
            )
            continue
        fixable = observed if fixable is None else fixable
        before = unhelped(state, role, fixable, role_load(signals, counts, role))
        if before is not None and fixable <= (1 + MIN_GAIN) * before:  # flat, not rising
            held.append(
                (
                    Reason.LATENCY_NO_GAIN,
                    f"{breach} but the last guard step left it at {fixable * 1000:,.0f} ms "
                    f"(was {before * 1000:,.0f} ms): no further step",
                )
            )
            continue
        wait = cooldown_left(now, state.last_guard_at, guard.cooldown_s)
        stepped = guard_step(
            proposal,
            proposal.anchor,
            counts,
            tier.step,
            wait,
            Reason.LATENCY_GUARD,
            f"{breach} (tier at {tier.at:g}x: +{tier.step:.0%})",
            "the guard cooldown",
            "during a breach",
        )
        if stepped.reason is Reason.LATENCY_GUARD:
            stepped = replace(stepped, guard_mark=(role, fixable, role_load(signals, counts, role)))
        return stepped
    if proposal.count_as(proposal.anchor) > counts.of(proposal.anchor):
        return proposal  # already scaling out on its signal
    reason, why = held[0]
    return replace(proposal, reason=reason, why=f"{proposal.why}; {why}")


def role_load(signals: Signals, counts: RoleCounts, role: Role) -> float | None:
    """What one instance of `role` carries now: prompt tokens arriving per prefill instance,
    decode tokens per decode instance (None unmeasured)."""
    have = counts.of(role)
    if role is Role.PREFILL:
        measured = (signals.prefill_offered_tps, signals.prefill_tps)
        load = next((x for x in measured if value_problem(x) is None and x), None)
    else:
        load = signals.decode_tps
    if have <= 0 or value_problem(load) is not None:
        return None
    return load / have  # type: ignore[operator]


def guard_step(
    proposal: Proposal,
    anchor: Role,
    counts: RoleCounts,
    step: float,
    wait: float,
    reason: Reason,
    why: str,
    cooldown_name: str,
    while_: str,
) -> Proposal:
    """The guards' common tail: inside their cooldown they only block a scale-in; otherwise they
    step ``anchor`` out by ``step``, unless the proposal already asks for more."""
    current = counts.of(anchor)
    wanted = proposal.count_as(anchor)
    if wait > 0:
        if wanted >= current:
            return proposal
        hold = f"{why} and {cooldown_name} has {wait:,.1f} s left, but no scale-in {while_}"
        return Proposal(anchor, current, proposal.ratio, Reason.HOLD_COOLDOWN, hold)
    target = guard_target(current, step)
    if wanted >= target:
        return proposal
    return Proposal(anchor, target, proposal.ratio, reason, why)


def kv_guard_proposal(
    spec: ServiceSpec,
    signals: Signals,
    counts: RoleCounts,
    state: PolicyState,
    now: float,
    proposal: Proposal,
) -> Proposal:
    """Decode KV memory nearly full: step decode out, and never scale in while it is."""
    guard = spec.policy.kv_guard
    if not guard.enabled or snapshot_problem(signals, now, spec.policy.stale_after_s):
        return proposal
    use = signals.kv_use
    if value_problem(use) is not None or use < guard.high - EPS:  # type: ignore[operator]
        return proposal
    pressure = f"decode KV use {use:.0%} >= {guard.high:.0%} (+{guard.step:.0%})"
    wait = cooldown_left(now, state.last_kv_guard_at, guard.cooldown_s)
    return guard_step(
        proposal,
        Role.DECODE,
        counts,
        guard.step,
        wait,
        Reason.KV_PRESSURE,
        pressure,
        "the KV-guard cooldown",
        "while memory is short",
    )
