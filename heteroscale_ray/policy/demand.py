"""`signal: demand`: each role sized on its own arrival-side demand over what one instance carries.

Demand is measured where work arrives, so a saturated role cannot hide it (`role_need.py`):
- prefill: cache-miss prompt tokens/s arriving, over one instance's learned tokens/s at the
  configured busy share, plus the queued work drained within `drain_s`;
- decode: the larger of the tokens/s arrivals will ask for (request rate x mean output, which
  sees demand while prefill still holds it back) over one instance's tokens/s, and the
  sequences running over one instance's batch plus the waiting ones' work drained within
  `drain_s`; plus the requests prefill's queue releases while it drains within `drain_s`
  (both roles' instances take one start-up to land).
Both roles move in one decision (the paper's coordinated action); the P/D ratio is whatever the
two needs make it, except that every Deployment Group holds both roles, so the smaller role is
raised to what the larger one's DGs need (`fit_dgs`). Then the backlog rule, the latency guard
on the latency capacity can fix, the KV guard, bounds and budget, and
never-shrink-on-missing-data, as for the paper's rule.
"""

from __future__ import annotations

import math
from dataclasses import replace

from heteroscale_ray.config import DEFAULT_CATALOG, GpuCatalog, PdRatio, Role, ServiceSpec
from heteroscale_ray.policy import arrival_bursts, backlog, burst, falls, proof, recurrence, startup
from heteroscale_ray.policy.capacity import capacity, learn, track_context, track_spread
from heteroscale_ray.policy.cooldown import cooldown_left
from heteroscale_ray.policy.dg_shape import PLACEMENT_MAX_N, placeable_within, placement_ratio
from heteroscale_ray.policy.fixable_latency import latency_guard, strained
from heteroscale_ray.policy.freshness import snapshot_problem, value_problem
from heteroscale_ray.policy.guard_steps import guard_target
from heteroscale_ray.policy.limits import clamp, gpus
from heteroscale_ray.policy.peak_window import (
    hold_found_fleet,
    known_level,
    lapse_steps,
    raise_step,
    track_peaks,
)
from heteroscale_ray.policy.proportional import ceil_eps
from heteroscale_ray.policy.role_need import (
    Need,
    PrefillRelease,
    decode_need,
    prefill_need,
    released_rps,
)
from heteroscale_ray.policy.role_plan import RolePlan, initial_plan, role_plan
from heteroscale_ray.policy.sampled_level import Sampled, sampled_level
from heteroscale_ray.policy.types import Decision, PolicyState, Reason, RoleCounts, Signals, evolve

# Steps that show demand is higher than the estimate: the stabilisation window keeps them. (A
# backlog step drains a queue, which is gone once drained: the window keeps only its arriving need.)
EVIDENCE = {Reason.LATENCY_GUARD, Reason.KV_PRESSURE}
# When several roles moved or held, the decision's one reason is the first in this order.
PRIORITY = (
    Reason.INITIAL,
    Reason.BACKLOG_GROWTH,
    Reason.LATENCY_GUARD,
    Reason.KV_PRESSURE,
    Reason.SURGE_DUE,
    Reason.ARRIVAL_BURST,
    Reason.SCALE_OUT,
    Reason.SCALE_IN,
    Reason.RATIO_REPAIR,
    Reason.CLAMPED_BUDGET,
    Reason.CLAMPED_MIN_MAX,
    Reason.LATENCY_NO_GAIN,
    Reason.LATENCY_FLOOR,
    Reason.HOLD_STARTING,
    Reason.HOLD_AT_BOUND,
    Reason.HOLD_COOLDOWN,
    Reason.HOLD_MISSING_SIGNAL,
    Reason.HOLD_DEADBAND,
)


def decide_demand(
    spec: ServiceSpec,
    signals: Signals,
    counts: RoleCounts,
    state: PolicyState,
    now: float,
    catalog: GpuCatalog = DEFAULT_CATALOG,
) -> tuple[Decision, PolicyState]:
    problem = snapshot_problem(signals, now, spec.policy.stale_after_s)
    state = hold_found_fleet(spec, state, counts, now)
    state = startup.observe(state, counts, now, spec.policy.stale_after_s)
    before_release = None  # read before this snapshot updates the queue's record
    if backlog.prefill_releasing(spec, state, signals):
        before_release = burst.last_need(state.decode_burst)
    if problem is None:
        state = backlog.track(spec, state, signals)
        state = track_spread(spec, signals, state, now)
        state = learn(spec, signals, state, counts.prefill_ready, counts.decode_ready, now, catalog)
    cap = capacity(spec, signals, state, catalog)
    state = track_context(signals, state)
    needs = {
        Role.PREFILL: prefill_need(spec, signals, counts, cap, problem),
        Role.DECODE: decode_need(
            spec,
            signals,
            cap,
            problem,
            backlog.growing(spec, state, Role.DECODE),
            counts.decode_ready,
            PrefillRelease(
                released_rps(spec, signals, counts, cap),
                before_release,
                backlog.prefill_draining(state),
            ),
        ),
    }
    steady = {role: need.steady for role, need in needs.items()}
    if problem is None:
        state = remember_needs(spec, state, steady, now, strained(spec, signals))
    # The window and the falls memory remember levels, not one period's sampling noise, and
    # the decision sizes for what the sample proves (policy/sampled_level.py).
    levels = dict(steady)
    horizon = startup.horizon_s(spec, state)
    for role, need in list(needs.items()):
        memory = burst.memory_of(state, role)
        steady_sample = need.steady if need.sampled else None
        sample = sampled_level(spec, memory, steady_sample, now, horizon, signals.request_rate)
        if sample is not None:
            levels[role] = sample.level
            needs[role] = within_noise(need, sample)
    # The stabilisation window holds the measured peak; headroom is for the rise to come. Both
    # guard against the same burst, so the role is sized for the larger, never their product.
    margined = {
        role: None if n is None else n * margin_factor(spec, state, role, now, n)
        for role, n in levels.items()
    }
    # A burst shorter than the period, which its mean hides (policy/arrival_bursts.py): the
    # window holds what it asks for, and its falls and returns as a level's, but no rise,
    # climb or timer is learned from it.
    bursty = (
        None if problem is not None else arrival_bursts.burst_need(spec, signals, cap.prefill_tps)
    )
    state = arrival_bursts.remember(spec, state, bursty, levels[Role.PREFILL], now)
    again = arrival_bursts.recurring(state)
    if again is not None and (bursty is None or again[0] > bursty[0]):
        bursty = again
    held = dict(levels)
    level = levels[Role.PREFILL]
    if bursty is not None and level is not None:
        held[Role.PREFILL] = max(level, bursty[0])
        margined[Role.PREFILL] = max(margined[Role.PREFILL] or 0.0, bursty[0])
    state = falls.observe(spec, state, held, now)  # before this period's needs enter
    state = recurrence.observe(spec, state, levels, now)
    known = {role: known_level(spec, state, role, now) for role in Role}
    state = track_peaks(spec, state, margined, now, held)
    # each role's need insured against the rise to come (burst headroom or the climb's trend)
    insured = {
        role: with_headroom(spec, state, role, need.value, need.why, now, need.steady, known[role])
        for role, need in needs.items()
    }
    need, why = insured[Role.PREFILL]
    burst_sized = False
    if bursty is not None and need is not None and bursty[0] > need:
        insured[Role.PREFILL] = (bursty[0], f"({why}); but {bursty[1]}")
        burst_sized = True
    for role in Role:
        state, load = proof.remember_load(state, role, insured[role][0], now, horizon)
        state = proof.lapse(spec, state, role, load)
        state = lapse_steps(spec, state, role, load, now)
    # a surge on a timer that is due: sized for before it comes (policy/recurrence.py)
    due = {role: recurrence.ahead(spec, state, role, now, *insured[role]) for role in Role}
    insured = {role: (need, why) for role, (need, why, _) in due.items()}
    initial = counts.prefill == 0 and counts.decode == 0
    plans = {
        role: initial_plan(role, *insured[role])
        if initial
        else role_plan(spec, role, counts.of(role), *insured[role], state, now)
        for role in Role
    }
    for role, (_, _, raised) in due.items():
        if raised and plans[role].reason is Reason.SCALE_OUT:
            plans[role] = replace(plans[role], reason=Reason.SURGE_DUE)
    if burst_sized and plans[Role.PREFILL].reason is Reason.SCALE_OUT:
        plans[Role.PREFILL] = replace(plans[Role.PREFILL], reason=Reason.ARRIVAL_BURST)
    guard_state = state
    if not initial:
        for role in Role:
            plans[role] = backlog_rule(spec, state, signals, plans[role], counts, now)
        plans, guard_state = latency_guard(spec, signals, counts, state, now, plans)
        plans[Role.DECODE] = kv_guard(spec, signals, state, now, plans[Role.DECODE])
    plans = fit_dgs(spec, bounded(spec, plans))
    for role, plan in plans.items():  # a latency or KV step: the window keeps it (proof.py)
        if plan.reason in EVIDENCE and plan.target > plan.current:
            load = proof.step_load(guard_state, role, plan.need, now)
            guard_state = raise_step(spec, guard_state, role, plan.target, load, now)
            guard_state = proof.record_step(guard_state, role, plan.need, plan.target, load)
    reason = next(r for r in PRIORITY if any(p.reason is r for p in plans.values()))
    p, d = plans[Role.PREFILL].target, plans[Role.DECODE].target
    ratio = placement_ratio(p, d)
    message = "; ".join(f"{pl.role.value}: {pl.why} -> {pl.target}" for pl in plans.values())
    decision = Decision(
        service=spec.name,
        prefill=p,
        decode=d,
        reason=reason,
        message=f"{message} [{cap.describe()}{startup.describe(state)}]",
        signal_value=insured[Role.DECODE][0],
        required_prefill=insured[Role.PREFILL][0],
        required_decode=insured[Role.DECODE][0],
        pd_ratio=PdRatio(*ratio),
    )
    return decision, advance(guard_state, counts, plans, reason, now)


def within_noise(need: Need, sample: Sampled) -> Need:
    """The need with its steady part cut to what the sample proves (the queued part as is)."""
    if need.value is None or need.steady is None or sample.proven >= need.steady:
        return need
    cut = need.steady - sample.proven
    why = need.why
    if cut >= 0.05:  # as printed: a tenth of an instance
        why += f"; {sample.arrivals:,.0f} arrivals a period: {cut:,.1f} of it may be their noise"
    return replace(need, value=need.value - cut, steady=sample.proven, why=why)


def remember_needs(
    spec: ServiceSpec,
    state: PolicyState,
    needs: dict[Role, float | None],
    now: float,
    strained_roles: set[Role],
) -> PolicyState:
    horizon = startup.horizon_s(spec, state)
    # At a horizon's start the stabilisation window (when it is at least that long) holds the
    # role at no less than the highest need of the horizon before: a rise above that level,
    # before instances asked for then can land, is what the fleet can be short by.
    held = min(spec.policy.demand.peak_window_s, horizon)
    for role in Role:
        memory = burst.remember(
            burst.memory_of(state, role),
            needs[role],
            now,
            horizon,
            role in strained_roles,
            held,
        )
        state = burst.with_memory(state, role, memory)
    return state


def with_headroom(
    spec: ServiceSpec,
    state: PolicyState,
    role: Role,
    need: float | None,
    why: str,
    now: float | None = None,
    steady: float | None = None,
    known: float | None = None,
) -> tuple[float | None, str]:
    """The need plus the rise this role's arriving need has shown within a start-up horizon.

    Headroom insures the arriving (`steady`) need only: a queued backlog is drained once, so
    it is added as it is, never multiplied. Prefill is already sized to be busy only
    `prefill_utilization` of the time: a rise up to that idle share is absorbed, so only the
    rest is added (steady traffic pays nothing twice). Decode's TBT margin is not spare in the
    same way: the most loaded instance uses it first. A climb is extrapolated a horizon ahead
    only past `known`, the highest level the scale-in window still holds the role at before
    this need: a climb back to it is a return the window and margin hold for, and
    extrapolating it would scale out past that level and back at every onset of traffic that
    comes and goes.
    """
    demand = spec.policy.demand
    horizon = startup.horizon_s(spec, state)
    if need is None or horizon <= 0:
        return need, why
    base = need if steady is None else min(steady, need)
    queued = need - base
    memory = burst.memory_of(state, role)
    factor = margin_factor(spec, state, role, now, base)
    rise = 0.0 if now is None else burst.trend(memory, now, horizon)
    if known is not None and base <= known:
        rise = 0.0
    ahead = base + rise * horizon
    if role is Role.PREFILL:  # as for the learned rise: the idle share absorbs part of it
        ahead = max(base, ahead * demand.prefill_utilization)
    if ahead > base * factor:
        return ahead + queued, f"({why}) + {ahead - base:,.1f} rising"
    if factor <= 1:
        return need, why
    return base * factor + queued, f"({why}) x {factor:.2f} burst headroom"


def margin_factor(
    spec: ServiceSpec,
    state: PolicyState,
    role: Role,
    now: float | None,
    level: float | None = None,
) -> float:
    """1 + the learned burst margin at need `level`, less the share prefill's idle time
    already absorbs. A rise as large as the cap, or recorded within a climb that reached it,
    insures the calm after it, not the level it reached (burst.margin)."""
    demand = spec.policy.demand
    if startup.horizon_s(spec, state) <= 0:
        return 1.0
    memory = burst.memory_of(state, role)
    factor = 1 + burst.margin(
        memory,
        demand.burst_quantile,
        gated=now is not None,
        cap=demand.max_burst_margin,
        level=level,
    )
    if role is Role.PREFILL:
        factor = max(1.0, factor * demand.prefill_utilization)
    return factor


def backlog_rule(
    spec: ServiceSpec,
    state: PolicyState,
    signals: Signals,
    plan: RolePlan,
    counts: RoleCounts,
    now: float,
) -> RolePlan:
    """A role whose queue grew `backlog_periods` periods in a row never shrinks, and holds only
    while the prefill instances starting will drain the queue before more could land."""
    if not backlog.growing(spec, state, plan.role) or plan.target > plan.current:
        return plan
    streak = getattr(state, f"{plan.role.value}_growth_streak")
    if plan.role is Role.PREFILL:
        covered = backlog.drained_by_starting(state, signals, counts, now)
        if covered is not None:
            why = f"{plan.why}; its queue grew {streak} periods in a row, but {covered}"
            return replace(plan, target=plan.current, reason=Reason.HOLD_STARTING, why=why)
    why = f"{plan.why}; but its queue grew {streak} periods in a row"
    target = backlog.backlog_target(plan.current, counts.starting_of(plan.role))
    if plan.need is not None:  # a held scale-out (cooldown) goes the whole way, not a step
        target = max(target, ceil_eps(plan.need))
    return replace(plan, target=target, reason=Reason.BACKLOG_GROWTH, why=why)


def kv_guard(
    spec: ServiceSpec, s: Signals, state: PolicyState, now: float, plan: RolePlan
) -> RolePlan:
    """Decode KV memory nearly full: step decode out, and never scale it in while it is."""
    guard = spec.policy.kv_guard
    if not guard.enabled or snapshot_problem(s, now, spec.policy.stale_after_s):
        return plan
    use = s.kv_use
    if value_problem(use) is not None or use < guard.high:  # type: ignore[operator]
        return plan
    pressure = f"decode KV use {use:.0%} >= {guard.high:.0%}"
    if cooldown_left(now, state.last_kv_guard_at, guard.cooldown_s) > 0:
        if plan.target < plan.current:
            return replace(plan, target=plan.current, reason=Reason.HOLD_COOLDOWN, why=pressure)
        return plan
    step = guard_target(plan.current, guard.step)
    if step <= plan.target:
        return plan
    return replace(plan, target=step, reason=Reason.KV_PRESSURE, why=f"{plan.why}; {pressure}")


def fit_dgs(spec: ServiceSpec, plans: dict[Role, RolePlan]) -> dict[Role, RolePlan]:
    """The smaller role raised (or held) to one instance per `PLACEMENT_MAX_N` of the larger,
    within its max: every DG holds both roles, so counts past that ratio would leave
    instances unplaced (what was asked and not placed is asked again, and never lands). Where
    that raise would break the GPU budget, the larger role is cut to what DGs can hold."""
    p, d = placeable_within(spec, plans[Role.PREFILL].target, plans[Role.DECODE].target)
    wanted = {Role.PREFILL: p, Role.DECODE: d}
    budget = spec.policy.gpu_budget
    out = dict(plans)
    for role, other in ((Role.PREFILL, Role.DECODE), (Role.DECODE, Role.PREFILL)):
        plan, want = plans[role], wanted[role]
        if want <= plan.target:
            continue
        if budget is not None and gpus(spec, p, d) > budget:
            larger, most = plans[other], PLACEMENT_MAX_N * plan.target
            why = (
                f"{larger.why}; at most {PLACEMENT_MAX_N} per {role.value} instance in a DG, "
                f"and more {role.value} would break the GPU budget ({budget})"
            )
            out[other] = replace(larger, target=most, reason=Reason.CLAMPED_BUDGET, why=why)
            continue
        why = (
            f"{plan.why}; but {plans[other].target} {other.value} need {want} DGs "
            f"(at most {PLACEMENT_MAX_N} per {role.value} instance)"
        )
        reason = Reason.RATIO_REPAIR if want > plan.current else Reason.HOLD_AT_BOUND
        out[role] = replace(plan, target=want, reason=reason, why=why)
    return out


def bounded(spec: ServiceSpec, plans: dict[Role, RolePlan]) -> dict[Role, RolePlan]:
    """Each role within its min/max, then both within the GPU budget (shrunk alike)."""
    out = {}
    for role, plan in plans.items():
        rs = spec.role(role)
        target = clamp(plan.target, rs.min_instances, rs.max_instances)
        if target == plan.target:
            out[role] = plan
            continue
        limit = "max" if target < plan.target else "min"
        why = f"{plan.why} ({role.value} {limit} {target})"
        reason = Reason.HOLD_AT_BOUND if target == plan.current else Reason.CLAMPED_MIN_MAX
        out[role] = replace(plan, target=target, reason=reason, why=why)
    budget = spec.policy.gpu_budget
    p, d = out[Role.PREFILL].target, out[Role.DECODE].target
    if budget is not None and gpus(spec, p, d) > budget:
        share = budget / gpus(spec, p, d)
        for role in Role:
            rs, plan = spec.role(role), out[role]
            target = max(rs.min_instances, math.floor(plan.target * share))
            why = f"{plan.why} (GPU budget {budget})"
            out[role] = replace(plan, target=target, reason=Reason.CLAMPED_BUDGET, why=why)
    return out


def advance(
    state: PolicyState,
    counts: RoleCounts,
    plans: dict[Role, RolePlan],
    reason: Reason,
    now: float,
) -> PolicyState:
    # Asking again for what could not be placed is no new growth: its cooldown has run.
    grows = {r: state.grows(r, p.target, counts.of(r)) for r, p in plans.items()}
    grew = any(grows.values())
    shrank = any(p.target < counts.of(r) for r, p in plans.items())
    guarded = any(
        p.reason is Reason.LATENCY_GUARD and p.target > counts.of(r) for r, p in plans.items()
    )
    kv = plans[Role.DECODE].reason is Reason.KV_PRESSURE
    after = state.after_decision(
        now, reason, grew=grew, shrank=shrank, guarded=guarded, kv_guarded=kv
    )
    after = startup.after_decision(
        after,
        counts,
        now,
        grew={r for r, g in grows.items() if g},
        shrank={r for r, p in plans.items() if p.target < counts.of(r)},
    )
    grew_at = {
        f"{r.value}_grew_at": now if grows[r] else getattr(state, f"{r.value}_grew_at")
        for r in plans
    }
    asks = {f"{r.value}_asked": p.target for r, p in plans.items()}
    return evolve(
        after,
        started_at=now if state.started_at is None else state.started_at,
        **grew_at,
        **asks,
    )
