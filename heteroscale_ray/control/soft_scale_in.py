"""Soft scale-in: removed instances leave routing first and are only stopped once SLOs held.

The placement plan says which instances go. They leave the DG ownership state at once (so the
policy sees its new target and does not shrink twice) but keep running as a `PendingRemoval`
for an observation window: a whole DG is marked draining (the router sends it nothing new),
a partly shrunk DG gets a lower routing weight. When the window ends with the service's p99
TTFT and TBT within SLO (or over it only by a floor capacity cannot fix), they are stopped. If
an SLO breaks during the window they are all restored at once; if the policy wants more of a
role they hold, as many of that role as are short come back (the rest keep waiting).

A decode move (placement takes a decode instance from one DG and starts one in another, to
open a DG or rebalance) is make-before-break: the moved instance keeps serving, at full weight
and out of the counts, until the DGs its replacement went to run their decode targets; only
then does it leave routing and wait out the window like any removal. Held out at once, each
move left decode an instance short for a start-up (`MAKE_BEFORE_BREAK`). Pure: no Ray, time is
an argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from heteroscale_ray.config import Role, ServiceSpec
from heteroscale_ray.control.counts import RunningReplicas
from heteroscale_ray.control.types import Desired, Observation
from heteroscale_ray.policy.fixable_latency import watched_latencies
from heteroscale_ray.topology import (
    AddInstances,
    CapacityError,
    ClusterGraph,
    CreateDG,
    DeleteDG,
    DeploymentGroup,
    FreeCapacity,
    Instance,
    PlacementPlan,
    RemoveInstances,
    role_counts,
)

ROLES = (Role.PREFILL, Role.DECODE)
# Roles whose moves are make-before-break. A moved decode instance held out at once leaves its
# old DG's prefill feeding one decode instance fewer for a start-up. Prefill is not: routing
# spreads requests by prefill, and a moved prefill instance kept serving in its old DG drew
# work to DGs whose decode was already full (the to-reasoning stress case, 95.8% -> 67.1%).
MAKE_BEFORE_BREAK = frozenset({Role.DECODE})
# A move whose replacement has not come up in this long breaks anyway (a replica that never
# starts must not hold the moved one and its GPUs for ever): minutes past any model's load.
MOVE_WAIT_S = 600.0


@dataclass(frozen=True)
class PendingRemoval:
    """Instances a plan removed from one DG that still run, out of routing, until settled."""

    dg: DeploymentGroup  # the DG as it was before the removal (types, domain, level)
    instances: tuple[Instance, ...]
    since: float
    whole_dg: bool  # the plan deleted the DG: it is drained rather than down-weighted
    # A move: (DG id, its decode target after the move's plan) for each DG the replacements
    # were started in. The instances keep serving until those run that many of their own (at
    # most their current target), then leave routing (`settle`); () once they have left.
    into: tuple[tuple[str, int], ...] = ()

    @property
    def service(self) -> str:
        return self.dg.service

    @property
    def moving(self) -> bool:
        return bool(self.into)

    def count(self, role: Role) -> int:
        return sum(1 for i in self.instances if i.role is role)


def pending_from_plan(
    plan: PlacementPlan,
    before: Sequence[DeploymentGroup],
    now: float,
    after: Sequence[DeploymentGroup] | None = None,
) -> list[PendingRemoval]:
    """The removals of one plan, grouped per DG, with the DG snapshot taken before the plan
    (`after`: the DGs once it is applied, when the caller has them).

    Removals of a `MAKE_BEFORE_BREAK` role from a DG the plan keeps are moves while the plan
    adds that role to the same service elsewhere (as many as it adds): those become separate,
    serving `PendingRemoval`s with `into` set. A deleted DG drains whole, as before."""
    by_id = {dg.dg_id: dg for dg in before}
    removed: dict[str, set[str]] = {}
    deleted: set[str] = set()
    for action in plan.all_actions():
        if isinstance(action, RemoveInstances):
            removed.setdefault(action.dg_id, set()).update(action.instance_ids)
        elif isinstance(action, DeleteDG):
            deleted.add(action.dg_id)
    added = _added(plan, by_id)
    if added and after is None:
        after = plan.apply(before)
    after_by_id = {dg.dg_id: dg for dg in after or ()}
    out = []
    for dg_id in sorted(removed.keys() | deleted):
        dg = by_id.get(dg_id)
        if dg is None:  # created and deleted in one plan: nothing runs
            continue
        gone = tuple(i for i in dg.instances if i.instance_id in removed.get(dg_id, set()))
        if dg_id in deleted:
            out.append(PendingRemoval(dg, gone, now, True))
            continue
        moved = []
        for inst in gone:
            new = added.get((dg.service, inst.role))
            if new is not None and new.unmatched > 0:
                new.unmatched -= 1
                moved.append(inst)
        left = tuple(i for i in gone if i not in moved)
        for role in ROLES:
            mine = tuple(i for i in moved if i.role is role)
            if mine:
                ids = added[(dg.service, role)].dg_ids
                into = tuple((i, after_by_id[i].count(role)) for i in ids if i in after_by_id)
                out.append(PendingRemoval(dg, mine, now, False, into=into))
        if left:
            out.append(PendingRemoval(dg, left, now, False))
    return out


@dataclass
class _Added:
    """Instances of one role one plan starts for one service: how many no removal has been
    matched with yet, and the DGs they go to."""

    unmatched: int = 0
    dg_ids: list[str] = field(default_factory=list)


def _added(
    plan: PlacementPlan, before: Mapping[str, DeploymentGroup]
) -> dict[tuple[str, Role], _Added]:
    service_of = {dg_id: dg.service for dg_id, dg in before.items()}
    out: dict[tuple[str, Role], _Added] = {}
    for action in plan.all_actions():
        if isinstance(action, CreateDG):
            service_of[action.dg.dg_id] = action.dg.service
        elif (
            isinstance(action, AddInstances)
            and action.role in MAKE_BEFORE_BREAK
            and action.dg_id in service_of
        ):
            entry = out.setdefault((service_of[action.dg_id], action.role), _Added())
            entry.unmatched += len(action.instances)
            if action.dg_id not in entry.dg_ids:
                entry.dg_ids.append(action.dg_id)
    return out


def made(
    p: PendingRemoval,
    now: float,
    dgs: Sequence[DeploymentGroup],
    pending: Iterable[PendingRemoval],
    running: Mapping[str, RunningReplicas] | None,
) -> bool:
    """A move's replacements serve: every DG they went to (still in the state) runs, besides
    its own pending removals, the decode instances it was to hold after the move (or its
    target now, if lower). Unknown (`running` None) counts as made, as does a move older than
    `MOVE_WAIT_S`. `running` counts replicas up, as Serve does: target plus pending removals."""
    if running is None or now - p.since >= MOVE_WAIT_S:
        return True
    by_id = {dg.dg_id: dg for dg in dgs}
    leaving = serving_counts((), pending)
    for role in ROLES:
        if not p.count(role):
            continue
        k = ROLES.index(role)
        for dg_id, target in p.into:
            dg = by_id.get(dg_id)
            if dg is None:
                continue
            up = running.get(dg_id, RunningReplicas()).of(role) - leaving.get(dg_id, (0, 0))[k]
            if up < min(target, dg.count(role)):
                return False
    return True


def slo_held(spec: ServiceSpec, obs: Observation | None) -> bool:
    """True unless a watched p99 latency is over its SLO by a part capacity can fix; no
    latency data counts as held.

    Watched: the latencies the service's latency guard watches (a service whose TBT p99 sits
    over its SLO at any size, e.g. from KV transfer of long prompts, watches TTFT only); both
    when the guard is off. A breach that is a latency floor (TTFT not from queueing, TBT not
    from batch size: `policy.fixable_latency`) was not caused by a removal and would not end
    with a restore: counted as a breach, it kept every removal of such a service from ever
    stopping, and its fleet only grew.
    """
    if obs is None:
        return True
    guard = spec.policy.latency_guard
    metric = guard.metric if guard.enabled else "both"
    for _, _, observed, slo, _, floor in watched_latencies(spec, obs.signals, metric):
        if observed is not None and observed > slo and not floor:
            return False
    return True


def restore(dgs: Sequence[DeploymentGroup], pending: PendingRemoval) -> tuple[DeploymentGroup, ...]:
    """Put a pending removal's instances back into the DG state (re-adding a deleted DG)."""
    out = list(dgs)
    for k, dg in enumerate(out):
        if dg.dg_id == pending.dg.dg_id:
            out[k] = dg.with_instances(dg.instances + pending.instances)
            return tuple(out)
    return (*out, replace(pending.dg, instances=pending.instances, draining=False))


@dataclass(frozen=True)
class Settled:
    """Outcome of one settle step: the new DG state, what is still pending, and what happened
    (``stopped``: removals to carry out now; ``restored``: instances back in routing)."""

    dgs: tuple[DeploymentGroup, ...]
    pending: tuple[PendingRemoval, ...]
    events: tuple[str, ...]
    stopped: tuple[PendingRemoval, ...] = ()
    restored: tuple[PendingRemoval, ...] = ()
    held_out: tuple[PendingRemoval, ...] = ()  # moves whose replacements serve: out of routing


def settle(
    dgs: Sequence[DeploymentGroup],
    pending: Iterable[PendingRemoval],
    *,
    now: float,
    window_s: float,
    services: Mapping[str, ServiceSpec],
    observations: Mapping[str, Observation],
    desired: Mapping[str, Desired],
    graph: ClusterGraph,
    running: Mapping[str, RunningReplicas] | None = None,
) -> Settled:
    """Finalise removals whose window passed with SLOs held; restore what is needed now; take
    moves out of routing once their replacements serve (`running`: replicas per DG)."""
    state = tuple(dgs)
    pending = tuple(pending)
    keep: list[PendingRemoval] = []
    events: list[str] = []
    stopped: list[PendingRemoval] = []
    restored: list[PendingRemoval] = []
    held_out: list[PendingRemoval] = []
    for p in pending:
        spec = services.get(p.service)
        held = spec is None or slo_held(spec, observations.get(p.service))
        # A DG dissolved because it lost its node (`node_loss`) is marked draining: it could
        # serve nothing if restored, so it only waits out its window.
        if spec is None or p.dg.draining:
            back, rest = None, p
        elif not held and not p.moving:  # all of it, if it can serve (see `_servable`); a
            # move still serves, and back in the counts it would only be scaled in again
            back, rest = (p, None) if _servable(p, state) else (None, p)
        else:
            back, rest = _wanted_part(p, state, desired.get(p.service))
        if back is not None:
            candidate = restore(state, back)
            try:
                FreeCapacity(graph, candidate)
                fits = True
            except (CapacityError, ValueError):
                fits = False
            if not fits and not p.moving:
                events.append(
                    f"{p.dg.dg_id}: {_describe(p)} could not be restored (GPUs taken); "
                    "stopping them"
                )
                stopped.append(p)
                continue
            if not fits:  # a move serves until replaced, as if never asked back
                events.append(f"{p.dg.dg_id}: moved {_describe(p)} could not be restored")
                back, rest = None, p
            else:
                state = candidate
                restored.append(back)
                why = "SLO breached" if not held else f"policy wants more {_roles_of(back)}"
                left = "" if rest is None else f"; {_describe(rest)} still pending"
                events.append(f"{p.dg.dg_id}: {_describe(back)} restored to routing ({why}){left}")
        if rest is None:
            continue
        if rest.moving:
            if made(rest, now, state, pending, running):
                rest = replace(rest, into=(), since=now)
                held_out.append(rest)
                events.append(f"{rest.dg.dg_id}: moved {_describe(rest)} replaced; out of routing")
            keep.append(rest)
        elif now - rest.since >= window_s:
            stopped.append(rest)
            events.append(
                f"{rest.dg.dg_id}: {_describe(rest)} stopped after {window_s:g}s"
                + (" with SLOs held" if held else " (SLOs breached, but it could not be restored)")
            )
        else:
            keep.append(rest)
    return Settled(
        state, tuple(keep), tuple(events), tuple(stopped), tuple(restored), tuple(held_out)
    )


def _wanted_part(
    p: PendingRemoval, dgs: Sequence[DeploymentGroup], want: Desired | None
) -> tuple[PendingRemoval | None, PendingRemoval | None]:
    """Split ``p`` into the part the policy wants back and the part that keeps waiting.

    Only roles the service is short of (wanted over what its DGs hold; pending removals do
    not count) come back, and no more of each than is short: an instance of a role nobody
    asked for would be removed again by the same tick's scale-in, and routing would flap
    every tick. A DG no longer in the state comes back with at least one of each role so
    it can serve; a part holding one role only stays pending rather than form such a DG.
    """
    if want is None:
        return None, p
    have = role_counts(dgs, p.service)
    short = (max(0, want.prefill - have[0]), max(0, want.decode - have[1]))
    take = [min(n, p.count(role)) for n, role in zip(short, ROLES, strict=True)]
    if not any(take):
        return None, p
    if all(dg.dg_id != p.dg.dg_id for dg in dgs):
        if not _servable(p, dgs):
            return None, p
        take = [max(1, n) for n in take]
    back: list[Instance] = []
    rest: list[Instance] = []
    for inst in p.instances:
        k = ROLES.index(inst.role)
        if take[k]:
            back.append(inst)
            take[k] -= 1
        else:
            rest.append(inst)
    if not rest:
        return p, None
    # What stays is a removal from a DG that routes again: down-weighted, not drained.
    return replace(p, instances=tuple(back)), replace(p, instances=tuple(rest), whole_dg=False)


def _servable(p: PendingRemoval, dgs: Sequence[DeploymentGroup]) -> bool:
    """Restoring ``p`` leaves a DG that can serve: its DG is still in the state, or ``p``
    brings both roles back (a DG re-added with one role would route to nothing)."""
    return any(dg.dg_id == p.dg.dg_id for dg in dgs) or all(p.count(role) for role in ROLES)


def _roles_of(p: PendingRemoval) -> str:
    return " and ".join(role.value for role in ROLES if p.count(role))


def _describe(p: PendingRemoval) -> str:
    pre, dec = p.count(Role.PREFILL), p.count(Role.DECODE)
    kind = "whole DG" if p.whole_dg else "instances"
    return f"{kind} {pre}P+{dec}D"


def serving_counts(
    dgs: Iterable[DeploymentGroup], pending: Iterable[PendingRemoval]
) -> dict[str, tuple[int, int]]:
    """Replicas each DG must keep running: its target plus its pending removals."""
    out = {dg.dg_id: (dg.count(Role.PREFILL), dg.count(Role.DECODE)) for dg in dgs}
    for p in pending:
        pre, dec = out.get(p.dg.dg_id, (0, 0))
        out[p.dg.dg_id] = (pre + p.count(Role.PREFILL), dec + p.count(Role.DECODE))
    return out


def reserved_of(pending: Iterable[PendingRemoval]) -> list[DeploymentGroup]:
    """Pending removals as the planner's ``reserved`` DGs: their GPUs and ids stay taken."""
    return [replace(p.dg, instances=p.instances) for p in pending]
