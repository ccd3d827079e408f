"""The latency guard of `signal: demand`, on the latency capacity can change.

TTFT counts against prefill only through its queueing wait, and while prefill work is queued
now or was at any moment of the last period (a long prompt's own compute is a floor more
instances do not shorten, and a wait with no queue comes from elsewhere); TBT counts against
decode when the part of the busy instances' mean step more instances take away (at most its
per-sequence part: none at one sequence each) is a large part of it (the rest is KV transfer,
admission, or sequences pinned to a few instances that were slow before new ones landed), or
the step the window's tokens were made at is (requests landing together spike batches between
snapshots), or while sequences pile up waiting for a decode slot (more instances add slots). A
guard step that did not cut the fixable latency earns no other until that latency has stayed
under every tier for a start-up horizon, and prefill takes none while its queue drains. The
same floor test marks a role as strained for the learned burst headroom (policy/burst.py;
decode on its slowest instance's step there, not on the tokens' step) and decides whether soft
scale-in restores a removal (control/soft_scale_in.py).
"""

from __future__ import annotations

from dataclasses import replace

from heteroscale_ray.config import Role, ServiceSpec
from heteroscale_ray.policy import backlog, startup
from heteroscale_ray.policy.cooldown import cooldown_left
from heteroscale_ray.policy.freshness import snapshot_problem, value_problem
from heteroscale_ray.policy.guard_steps import guard_target, reached_tier
from heteroscale_ray.policy.role_plan import RolePlan
from heteroscale_ray.policy.types import PolicyState, Reason, RoleCounts, Signals, evolve

FLOOR_SHARE = 0.2  # queueing under this share of the TTFT SLO: more prefill cannot help
TBT_FLOOR_SHARE = (
    0.5  # the mean busy decode step under this share of TBT p99: batches are not the cause
)
MIN_GAIN = 0.1  # a guard step must cut the fixable latency by this share to earn another
RELIEVED = 0.95  # load per instance under this share of the step's: the step lowered it


def latency_guard(
    spec: ServiceSpec,
    s: Signals,
    counts: RoleCounts,
    state: PolicyState,
    now: float,
    plans: dict[Role, RolePlan],
) -> tuple[dict[Role, RolePlan], PolicyState]:
    """Step out the role whose latency breaks the SLO from a cause capacity can fix; stop when a
    step did not help.

    The tier is read from the observed p99. TTFT counts against prefill, but only while its
    queueing part is material (a long prompt's own compute is not shortened by more
    instances: that is a latency floor, reason latency_floor, which neither steps the role
    out nor holds it in). TBT counts against decode when batches are large enough that more
    instances shrink them, or while the queue of sequences waiting for a slot grows. A step
    that did not cut the fixable latency by MIN_GAIN earns no other (reason latency_no_gain)
    until latency stays below the lowest tier for a start-up horizon (`calm`). Prefill waits
    while its queue drains: the capacity in place already outruns arrivals.
    """
    guard = spec.policy.latency_guard
    if not guard.enabled or snapshot_problem(s, now, spec.policy.stale_after_s):
        return plans, state
    for role, name, observed, slo, fixable, floor in watched_latencies(spec, s):
        plan = plans[role]
        if value_problem(observed) is not None:
            continue
        if counts.starting_of(role):  # the last step has not landed yet: judge it once it has
            continue
        tier = reached_tier(observed / slo, guard.tiers)  # type: ignore[operator]
        state = calm(spec, state, role, now, under=tier is None)
        if tier is None:
            continue
        breach = f"{name} p99 {observed * 1000:,.0f} ms is {observed / slo:.2f}x the SLO"  # type: ignore[operator]
        if floor and role is Role.DECODE and state.decode_growth_streak:
            # Sequences piling up for a slot (KV or batch full) stretch TBT too, and more
            # instances add slots: fixable while the queue grows, before the backlog rule's
            # streak is long enough to act. (Not once it stops: the p99 then counts requests
            # that waited before, as a draining prefill queue's TTFT does.)
            floor = False
        if floor and role is Role.DECODE and spiky_batches(spec, s, state, now):
            # The busy instances' step now is one instant; the window's tokens were made at
            # larger steps: batches that spike between snapshots, which more instances shrink.
            breach += f", its tokens made at {s.decode_token_step_s * 1000:,.0f}-ms steps"  # type: ignore[operator]
            floor = False
        if floor:
            # A floor holds nothing either: demand alone sizes the role. Held through a TBT
            # floor, decode kept a surge's peak for the quarter hour the p99 counted requests
            # that had run through the overload or waited for a slot on the instances they
            # were pinned to, which no count shortens.
            if plan.target <= plan.current and plan.reason is not Reason.BACKLOG_GROWTH:
                why = f"{plan.why}; {breach} but not from queueing, which instances cannot fix"
                held = plan.target == plan.current
                reason = Reason.LATENCY_FLOOR if held else plan.reason
                plans[role] = replace(plan, reason=reason, why=why)
            continue
        fixable = observed if fixable is None else fixable
        wait_s = cooldown_left(now, state.last_guard_at, guard.cooldown_s)
        if wait_s > 0:
            if plan.target < plan.current:
                why = f"{plan.why}; {breach}, no scale-in during a breach"
                plans[role] = replace(
                    plan, target=plan.current, reason=Reason.HOLD_COOLDOWN, why=why
                )
            continue
        if role is Role.PREFILL and backlog.prefill_draining(state):
            # The p99 still counts requests that queued before the capacity in place landed:
            # a step now would answer the past.
            why = f"{plan.why}; {breach} but its queue is draining: no step"
            if plan.target < plan.current:
                why += " and no scale-in during a breach"
                plans[role] = replace(
                    plan, target=plan.current, reason=Reason.HOLD_COOLDOWN, why=why
                )
            else:
                plans[role] = replace(plan, why=why)
            continue
        load = plan.need / plan.current if plan.need is not None and plan.current else None
        before = unhelped(state, role, fixable, load)
        if before is not None:
            why = (
                f"{plan.why}; {breach} but the last guard step left it at "
                f"{fixable * 1000:,.0f} ms (was {before * 1000:,.0f} ms): no further step"
            )
            # Capacity did not move this latency, so demand alone sizes the role (no ratchet).
            if plan.target <= plan.current and plan.reason is not Reason.BACKLOG_GROWTH:
                plans[role] = replace(plan, reason=Reason.LATENCY_NO_GAIN, why=why)
            continue
        step = guard_target(plan.current, tier.step)
        if step > plan.target:
            why = f"{plan.why}; {breach} (tier {tier.at:g}x: +{tier.step:.0%})"
            plans[role] = replace(plan, target=step, reason=Reason.LATENCY_GUARD, why=why)
            state = remember_guard(state, role, fixable, load)
    return plans, state


def unhelped(state: PolicyState, role: Role, fixable: float, load: float | None) -> float | None:
    """The fixable latency the last guard step on `role` was taken at, if that step did not
    cut it by MIN_GAIN; else None. A step that load growth ate (load per instance not below
    RELIEVED x what it was when the step was taken) says nothing about whether capacity
    helps; only one that did lower the load does."""
    before = state.guard_fixable_s if state.guard_role == role.value else None
    relieved = load is None or state.guard_load is None or load < RELIEVED * state.guard_load
    if before is not None and relieved and fixable > (1 - MIN_GAIN) * before:
        return before
    return None


def spiky_batches(spec: ServiceSpec, s: Signals, state: PolicyState, now: float) -> bool:
    """Whether the window's decode tokens were made at steps past TBT_FLOOR_SHARE of the TBT
    p99 on a settled pool: requests landing together spike batches between snapshots, and
    the snapshot's step misses them. Not within a start-up horizon of the role's growth: the
    window then holds steps priced on the fleet before the new instances landed (a released
    queue's wave on the old instances), which adding more no longer shrinks."""
    token = s.decode_token_step_s
    if not _usable(token) or not _usable(s.tbt_p99_s):
        return False
    if token < TBT_FLOOR_SHARE * s.tbt_p99_s:  # type: ignore[operator]
        return False
    grew = state.decode_grew_at
    return grew is None or now - grew > startup.horizon_s(spec, state)


def settle(spec: ServiceSpec, s: Signals, state: PolicyState, now: float) -> PolicyState:
    """`calm` for the paper's guard, which reads its breaches elsewhere."""
    if state.guard_role is None:
        return state
    for role, _, observed, slo, _, _ in watched_latencies(spec, s):
        if role.value != state.guard_role or not _usable(observed):
            continue
        under = reached_tier(observed / slo, spec.policy.latency_guard.tiers) is None  # type: ignore[operator]
        return calm(spec, state, role, now, under)
    return state


def calm(spec: ServiceSpec, state: PolicyState, role: Role, now: float, under: bool) -> PolicyState:
    """Track whether the guarded role's latency is `under` every tier, and forget its last
    step once it has stayed there a start-up horizon: the next breach is then a new one, and
    its first step is always taken. One reading under the tiers is no recovery: from a few
    requests a p99 swings around the SLO. Forgotten at each such dip, a TBT floor (32k-token
    prompts with short answers, whose KV transfer is most of their TBT) earned a fresh step
    after each, and decode went from one instance to five in 13 minutes."""
    if state.guard_role != role.value:
        return state
    if not under:
        return state if state.guard_calm_since is None else evolve(state, guard_calm_since=None)
    since = now if state.guard_calm_since is None else state.guard_calm_since
    if now - since >= startup.horizon_s(spec, state):
        return forget_guard(state)
    return evolve(state, guard_calm_since=since)


def remember_guard(
    state: PolicyState, role: Role, fixable: float, load: float | None
) -> PolicyState:
    """A guard step on `role` taken at `fixable` latency and `load` per instance: the next
    breach is judged against it (`unhelped`)."""
    return evolve(
        state,
        guard_role=role.value,
        guard_fixable_s=fixable,
        guard_load=load,
        guard_calm_since=None,
    )


def forget_guard(state: PolicyState) -> PolicyState:
    """No guard step to judge the next breach against: its first step is always taken."""
    return evolve(
        state, guard_role=None, guard_fixable_s=None, guard_load=None, guard_calm_since=None
    )


def watched_latencies(
    spec: ServiceSpec, s: Signals, metric: str | None = None, slowest: bool = False
) -> list[tuple[Role, str, float | None, float, float | None, bool]]:
    """(role, name, observed p99, SLO, the part capacity can fix, is it a floor) per latency
    the guard watches (or `metric`: "ttft", "tbt" or "both"): TTFT for prefill (fixable: its
    queueing wait), TBT for decode. Decode is judged on its busy instances' mean step (would
    more instances now shrink batches?), or with `slowest` on the slowest instance's step (did
    capacity run short anywhere?)."""
    metric = spec.policy.latency_guard.metric if metric is None else metric
    watched: list[tuple[Role, str, float | None, float, float | None, bool]] = []
    if metric in ("ttft", "both"):
        wait = s.ttft_wait_p99_s if value_problem(s.ttft_wait_p99_s) is None else None
        # Queueing that more prefill shortens shows as queued prefill work, now or at its
        # peak over the last period (prompts landing together drain between snapshots); a
        # long wait with neither comes from elsewhere (routing around full decode instances,
        # or a queue that drained before the period: the p99 still counts its requests).
        queue = backlog.queue_of(s, Role.PREFILL)
        peak = s.prefill_queue_peak_s if _usable(s.prefill_queue_peak_s) else None
        queued = any(
            q is not None and backlog.material(spec, Role.PREFILL, q) for q in (queue, peak)
        )
        floor = (wait is not None and wait < FLOOR_SHARE * spec.slo.ttft_s) or (
            queue is not None and not queued
        )
        watched.append((Role.PREFILL, "TTFT", s.ttft_p99_s, spec.slo.ttft_s, wait, floor))
    if metric in ("tbt", "both"):
        # More decode instances shorten TBT only by shrinking batches, i.e. the step time; the
        # KV transfer they do not touch, and waiting for a slot is the backlog rule's (but see
        # `latency_guard`). The busy instances' mean step is compared, not the slowest's:
        # sequences never move, so a few instances slow with sequences admitted before new
        # ones landed stay slow whatever is added, while new sequences go to the light ones.
        # With no sequence running at the snapshot, the window's tokens say what steps were.
        steps = (s.decode_step_max_s, s.decode_step_s) if slowest else (s.decode_step_s,)
        step = next((x for x in (*steps, s.decode_token_step_s) if _usable(x)), None)
        if _usable(s.decode_step_s) and not slowest and _usable(s.decode_step_batch):
            # Of a step at batch b, more instances take away at most its per-sequence part,
            # (1 - 1/b) of it: a step is a weight read plus a cost per sequence, and a busy
            # instance runs at least one. At one sequence each TBT is a floor.
            step *= 1.0 - 1.0 / max(s.decode_step_batch, 1.0)  # type: ignore[arg-type]
        floor = (
            step is not None and _usable(s.tbt_p99_s) and step < TBT_FLOOR_SHARE * s.tbt_p99_s  # type: ignore[operator]
        )
        watched.append((Role.DECODE, "TBT", s.tbt_p99_s, spec.slo.tbt_s, s.tbt_p99_s, floor))
    return watched


def strained(spec: ServiceSpec, s: Signals) -> set[Role]:
    """Roles whose latency reached the guard's lowest tier from a cause capacity can fix (not
    a floor): capacity was short. Decode is judged on its slowest instance: a backlog pinned
    to a few instances is one more instances cannot shrink now, but it queued there because
    capacity ran short when it arrived, which is what the burst headroom insures against."""
    tiers = spec.policy.latency_guard.tiers
    out = set()
    for role, _, observed, slo, _, floor in watched_latencies(spec, s, slowest=True):
        if not floor and _usable(observed) and reached_tier(observed / slo, tiers) is not None:  # type: ignore[operator]
            out.add(role)
    return out


def _usable(x: float | None) -> bool:
    return value_problem(x) is None
