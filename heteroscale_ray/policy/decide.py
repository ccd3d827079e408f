"""The policy tick: (spec, signals, counts, state, now) -> (decision, state). Pure: time is an argument.

Stages, each a small function: targets and ratio carried to today's lengths (`tuned_at`,
policy/transport.py) -> read the signal -> the P/D ratio (configured, carried or dynamic) ->
proportional target with dead-band, cooldowns and damping -> latency and KV-pressure guards
(policy/coordinated_guards.py) -> periodic table (periodic/hybrid) -> P/D split, bounds,
budget -> never shrink on missing data -> backlog and prefill demand
(policy/coordinated_demand.py) -> reason and sentence -> new state. A stage proposes a count
for one *anchor* role and a P/D ratio; the other role follows, so both move in one decision.
`signal: demand` has its own tick (policy/demand.py).
"""

from __future__ import annotations

import math
from dataclasses import replace

from heteroscale_ray.config import (
    DEFAULT_CATALOG,
    GpuCatalog,
    PdRatio,
    Role,
    ServiceSpec,
    parse_pd_ratio,
)
from heteroscale_ray.policy import backlog
from heteroscale_ray.policy.capacity import track_spread
from heteroscale_ray.policy.cooldown import cooldown_left
from heteroscale_ray.policy.coordinated_demand import backlog_override
from heteroscale_ray.policy.coordinated_guards import kv_guard_proposal, latency_guard_proposal
from heteroscale_ray.policy.demand import decide_demand
from heteroscale_ray.policy.dynamic_ratio import RatioStep, step_ratio
from heteroscale_ray.policy.fixable_latency import remember_guard, settle
from heteroscale_ray.policy.freshness import (
    SIGNAL_LABELS,
    Reading,
    read_signal,
    signal_role,
    snapshot_problem,
)
from heteroscale_ray.policy.limits import Fitted, clamp, fit_to_limits, gpus
from heteroscale_ray.policy.periodic import active_entry, clock_text
from heteroscale_ray.policy.proportional import (
    Direction,
    ceil_eps,
    damped_target,
    dead_band,
    required_instances,
)
from heteroscale_ray.policy.proposal import Proposal
from heteroscale_ray.policy.split import Ratio, ratio_text, split
from heteroscale_ray.policy.transport import carried, track_transport
from heteroscale_ray.policy.types import Decision, PolicyState, Reason, RoleCounts, Signals, evolve

# Reasons whose stage wanted the counts to move; if limits leave them unchanged, that is HOLD_AT_BOUND.
CHANGE_INTENTS = {
    Reason.SCALE_OUT,
    Reason.SCALE_IN,
    Reason.LATENCY_GUARD,
    Reason.KV_PRESSURE,
    Reason.PERIODIC,
}
# A breach the latency guard left alone: capacity cannot fix it. Holding, it is a hold.
NO_STEP = {Reason.LATENCY_FLOOR, Reason.LATENCY_NO_GAIN}
HOLDS = {
    Reason.HOLD_DEADBAND,
    Reason.HOLD_COOLDOWN,
    Reason.HOLD_MISSING_SIGNAL,
    Reason.HOLD_OUTSIDE_SCHEDULE,
}


def decide(
    spec: ServiceSpec,
    signals: Signals,
    counts: RoleCounts,
    state: PolicyState,
    now: float,
    catalog: GpuCatalog = DEFAULT_CATALOG,
) -> tuple[Decision, PolicyState]:
    """One policy tick for one service. Same inputs, same outputs.

    ``catalog`` (the services file's GPU types) gives `signal: demand` its roofline prior, and
    carries a target tuned at `policy.tuned_at` to today's lengths (`policy/transport.py`).

    A snapshot whose finite numbers are too large to compute with (an output mean of 1e82
    tokens overflowed a slope's squares) is held as missing data, with the error in the
    message, as HPA holds on a metric it cannot compute: raised, it stopped the whole tick,
    every other service's decision with it.
    """
    if not math.isfinite(now):
        raise ValueError(f"now must be a finite epoch time in seconds, got {now!r}")
    try:
        return _decide(spec, signals, counts, state, now, catalog)
    except (ArithmeticError, ValueError) as err:
        held, state = _decide(
            spec, Signals(observed_at=signals.observed_at), counts, state, now, catalog
        )
        why = f"signals out of computable range ({type(err).__name__}: {err}), held as missing"
        return replace(held, message=f"{why}; {held.message}"), state


def _decide(
    spec: ServiceSpec,
    signals: Signals,
    counts: RoleCounts,
    state: PolicyState,
    now: float,
    catalog: GpuCatalog,
) -> tuple[Decision, PolicyState]:
    if spec.policy.signal == "demand" and spec.policy.mode != "periodic":
        return decide_demand(spec, signals, counts, state, now, catalog)
    fresh = spec.policy.mode != "periodic" and not snapshot_problem(
        signals, now, spec.policy.stale_after_s
    )
    if fresh:
        state = backlog.track(spec, state, signals)
        state = settle(spec, signals, state, now)
        if spec.policy.tuned_at is not None:
            state = track_spread(spec, signals, state, now)
    move, state = track_transport(spec, signals, state, now, fresh, catalog)
    tuned_target = spec.policy.target_per_instance
    spec = carried(spec, move)
    reading = read_signal(spec, signals, now)
    ratio = step_ratio(spec, signals, state, now, None if move is None else move.ratio(spec.ratio))
    if ratio.changed and cooldown_left(now, state.last_scaled_at, spec.policy.scale_out_cooldown_s):
        ratio = ratio.held()  # a rebalance is a scaling action too: not straight after another
    proposal = propose(spec, signals, reading, counts, state, now, ratio.ratio)
    fitted = fit_to_limits(spec, proposal.anchor, proposal.count, proposal.ratio)
    target = (fitted.prefill, fitted.decode)
    if spec.policy.mode != "periodic" and reading.value is None:
        target = never_shrink(spec, target, counts)
    reason = final_reason(proposal, fitted, target, counts)
    target, reason, backlog_note = backlog_override(
        spec, state, signals, target, reason, counts, proposal.ratio, now
    )
    drives = ratio.changed and proposal.ratio == ratio.ratio  # not when a time-table row's won
    if reason is Reason.RATIO_REPAIR and drives:
        reason = Reason.RATIO_DRIFT
    message = sentence(proposal, fitted, target, counts, reason) + backlog_note
    if move is not None:
        message += f"; {move.describe(tuned_target, spec.policy.target_per_instance)}"  # type: ignore[arg-type]
    decision = Decision(
        service=spec.name,
        prefill=target[0],
        decode=target[1],
        reason=reason,
        message=f"{message}; {ratio.note}" if ratio.note and drives else message,
        signal_value=reading.value,
        pd_ratio=PdRatio(*proposal.ratio),
        **required_per_role(spec, reading, ratio.ratio),
    )
    return decision, advance_state(state, proposal, target, counts, reason, now, ratio)


def propose(
    spec: ServiceSpec,
    signals: Signals,
    reading: Reading,
    counts: RoleCounts,
    state: PolicyState,
    now: float,
    ratio: Ratio,
) -> Proposal:
    """Pick the stage(s) for the policy mode; hybrid takes the larger of periodic and metrics."""
    mode = spec.policy.mode
    periodic = periodic_proposal(spec, now, ratio) if mode != "metrics" else None
    if counts.prefill == 0 and counts.decode == 0:
        return initial_proposal(spec, reading, periodic, ratio)
    if mode == "periodic":
        if periodic is not None:
            return periodic
        why = f"periodic mode and no time-table row covers {clock_text(now)} UTC"
        return Proposal(Role.DECODE, counts.decode, ratio, Reason.HOLD_OUTSIDE_SCHEDULE, why)
    metrics = proportional_proposal(spec, reading, counts, state, now, ratio)
    metrics = latency_guard_proposal(spec, signals, counts, state, now, metrics)
    metrics = kv_guard_proposal(spec, signals, counts, state, now, metrics)
    if periodic is None or periodic.count_as(metrics.anchor) <= metrics.count:
        return metrics
    wanted = f"{metrics.count} {metrics.anchor.value}"
    return replace(periodic, why=f"{periodic.why}, above the {wanted} metrics alone want")


def initial_proposal(
    spec: ServiceSpec, reading: Reading, periodic: Proposal | None, ratio: Ratio
) -> Proposal:
    """No instances yet: start at what the load needs (or the table says), at least the minimums."""
    role = Role.DECODE if spec.policy.mode == "periodic" else signal_role(spec.policy)
    start = Proposal(role, 0, ratio, Reason.INITIAL, "no instances yet")
    if reading.value is not None and spec.policy.mode != "periodic":
        required = required_instances(reading.value, spec.policy.target_per_instance)
        label = SIGNAL_LABELS[spec.policy.signal]
        why = (
            f"no instances yet and {label} {reading.value:,.0f} needs {_num(required)} {role.value}"
        )
        start = replace(start, count=ceil_eps(required), why=why)
    if periodic is not None and periodic.count_as(role) > start.count:
        return replace(periodic, reason=Reason.INITIAL, why=f"no instances yet and {periodic.why}")
    return start


def proportional_proposal(
    spec: ServiceSpec,
    reading: Reading,
    counts: RoleCounts,
    state: PolicyState,
    now: float,
    ratio: Ratio,
) -> Proposal:
    """required = signal / target; dead-band, then cooldown, then damping of the step."""
    policy = spec.policy
    role = signal_role(policy)
    current = counts.of(role)
    label = SIGNAL_LABELS[policy.signal]
    if reading.value is None:
        why = f"{label} {reading.problem}, and missing data never scales in"
        return Proposal(role, current, ratio, Reason.HOLD_MISSING_SIGNAL, why)
    required = required_instances(reading.value, policy.target_per_instance)
    direction = dead_band(required, current, policy.scale_out_tolerance, policy.scale_in_tolerance)
    change = f", {required / current - 1:+.0%}" if current else ""
    why = (
        f"{label} {reading.value:,.0f} over target {policy.target_per_instance:,.0f}/instance "
        f"needs {_num(required)} {role.value} (now {current}{change}"
    )
    band = f"+{policy.scale_out_tolerance:.0%}/-{policy.scale_in_tolerance:.0%}"
    desired = ceil_eps(required)
    if direction is Direction.HOLD or (direction is Direction.IN and desired >= current):
        return Proposal(
            role, current, ratio, Reason.HOLD_DEADBAND, f"{why} within the {band} dead-band)"
        )
    out = direction is Direction.OUT
    tolerance = policy.scale_out_tolerance if out else policy.scale_in_tolerance
    why += f" {'>' if out else '<'} {'+' if out else '-'}{tolerance:.0%} tolerance)"
    cooldown_s = policy.scale_out_cooldown_s if out else policy.scale_in_cooldown_s
    wait = cooldown_left(now, state.last_scaled_at, cooldown_s)
    if wait > 0:
        why += f" but the scale-{direction.value} cooldown has {wait:,.1f} s left"
        count = state.held_ask(role, current, desired) if out else current
        if count > current:
            why += f", still asking for {count} ({count - current} not placed yet)"
        return Proposal(role, count, ratio, Reason.HOLD_COOLDOWN, why)
    damping = policy.scale_out_damping if out else policy.scale_in_damping
    target = damped_target(current, desired, damping)
    if target != desired:
        why += f", damped to {target} ({damping:.0%} of the gap)"
    return Proposal(role, target, ratio, Reason.SCALE_OUT if out else Reason.SCALE_IN, why)


def periodic_proposal(spec: ServiceSpec, now: float, ratio: Ratio) -> Proposal | None:
    """The time-table row for the UTC time of day, as a decode count and its ratio (the row's
    own, else ``ratio``: the service's current one)."""
    entry = active_entry(spec.policy.periodic, now)
    if entry is None:
        return None
    ratio = parse_pd_ratio(entry.pd_ratio) if entry.pd_ratio else ratio
    why = (
        f"time table {entry.start}-{entry.end} UTC asks for {entry.decode_instances} decode "
        f"at {ratio_text(ratio)}"
    )
    return Proposal(Role.DECODE, entry.decode_instances, ratio, Reason.PERIODIC, why)


def never_shrink(spec: ServiceSpec, target: tuple[int, int], counts: RoleCounts) -> tuple[int, int]:
    """Missing data: keep any growth, undo any shrinking, unless holding would break max or budget."""
    current = (
        clamp(counts.prefill, spec.prefill.min_instances, spec.prefill.max_instances),
        clamp(counts.decode, spec.decode.min_instances, spec.decode.max_instances),
    )
    grown = (max(target[0], current[0]), max(target[1], current[1]))
    budget = spec.policy.gpu_budget
    if budget is None or gpus(spec, *grown) <= budget:
        return grown
    return current if gpus(spec, *current) <= budget else target  # `target` fits the budget


def final_reason(
    proposal: Proposal, fitted: Fitted, target: tuple[int, int], counts: RoleCounts
) -> Reason:
    """The stage's reason, unless a limit changed the outcome or a hold turned into a ratio repair."""
    now_counts = (counts.prefill, counts.decode)
    wanted = split(proposal.anchor, proposal.count, proposal.ratio)
    if target == now_counts:
        if proposal.reason in CHANGE_INTENTS and wanted != now_counts:
            return Reason.HOLD_AT_BOUND
        return proposal.reason
    if proposal.reason is Reason.INITIAL:
        return Reason.INITIAL
    if fitted.clamp is not None and target == (fitted.prefill, fitted.decode):
        return fitted.clamp
    if proposal.reason is Reason.HOLD_COOLDOWN and proposal.count != counts.of(proposal.anchor):
        return Reason.HOLD_COOLDOWN  # asking again for what was not placed
    holding = proposal.reason in HOLDS or (
        proposal.reason in NO_STEP and proposal.count == counts.of(proposal.anchor)
    )
    return Reason.RATIO_REPAIR if holding else proposal.reason


def sentence(
    proposal: Proposal,
    fitted: Fitted,
    target: tuple[int, int],
    counts: RoleCounts,
    reason: Reason,
) -> str:
    """One readable sentence: why, then what, then which limit bit (if any)."""
    prefill, decode = target
    was = f"{counts.prefill} prefill / {counts.decode} decode"
    if reason is Reason.RATIO_REPAIR:
        action = f"{was} is off {ratio_text(proposal.ratio)}, rebalance to {prefill} prefill / {decode} decode"
    elif target == (counts.prefill, counts.decode):
        action = f"hold {prefill} prefill / {decode} decode"
    else:
        grow = prefill >= counts.prefill and decode >= counts.decode
        shrink = prefill <= counts.prefill and decode <= counts.decode
        verb = (
            "start"
            if reason is Reason.INITIAL
            else "scale out to"
            if grow
            else "scale in to"
            if shrink
            else "rebalance to"
        )
        action = f"{verb} {prefill} prefill / {decode} decode at {ratio_text(proposal.ratio)}"
    note = f" ({fitted.note})" if fitted.note and target == (fitted.prefill, fitted.decode) else ""
    sep = "; " if reason is Reason.RATIO_REPAIR else ": "
    return f"{proposal.why}{sep}{action}{note}"


def required_per_role(spec: ServiceSpec, reading: Reading, ratio: Ratio) -> dict[str, float | None]:
    """Fractional instances the signal asks for, in both roles at the current ratio."""
    if reading.value is None or spec.policy.mode == "periodic":
        return {"required_decode": None, "required_prefill": None}
    required = required_instances(reading.value, spec.policy.target_per_instance)
    p, d = ratio
    if signal_role(spec.policy) is Role.DECODE:
        return {"required_decode": required, "required_prefill": required * p / d}
    return {"required_decode": required * d / p, "required_prefill": required}


def advance_state(
    state: PolicyState,
    proposal: Proposal,
    target: tuple[int, int],
    counts: RoleCounts,
    reason: Reason,
    now: float,
    ratio: RatioStep,
) -> PolicyState:
    """Any decision that grows a role is a scale-out event, any that shrinks one a scale-in event;
    asking again for what could not be placed is neither (its cooldown has run). The dynamic
    ratio's active value and estimate, and the counts asked for, are remembered for the next tick."""
    grew = state.grows(Role.PREFILL, target[0], counts.prefill) or state.grows(
        Role.DECODE, target[1], counts.decode
    )
    shrank = target[0] < counts.prefill or target[1] < counts.decode
    guarded = grew and proposal.reason is Reason.LATENCY_GUARD
    kv_guarded = grew and proposal.reason is Reason.KV_PRESSURE
    mark = proposal.guard_mark if guarded else None
    if mark is not None:
        state = remember_guard(state, *mark)
    return evolve(
        state.after_decision(
            now, reason, grew=grew, shrank=shrank, guarded=guarded, kv_guarded=kv_guarded
        ),
        active_ratio=ratio.ratio if ratio.estimate is not None else None,
        ratio_estimate=ratio.estimate,
        ratio_estimate_at=ratio.estimate_at,
        prefill_asked=target[0],
        decode_asked=target[1],
    )


def _num(x: float) -> str:
    """20.0 -> '20', 11.46 -> '11.5', 48000 -> '48,000'."""
    return f"{round(x):,}" if abs(x - round(x)) < 0.05 else f"{x:,.1f}"
