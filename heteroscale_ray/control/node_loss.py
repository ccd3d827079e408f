"""Instances lost with their node: dropped from the DG state so the same tick re-places them.

A host whose Ray node died took its replicas with it, and its GPUs already left the topology
view. This step drops what the DG state still placed there, and soft removals still running
there, so the placement the same tick runs sees the shortfall against the policy's target and
fills it on the service's allowed GPU types and domains (growing the same DG when its domain
still has room, which is also where Serve restarts the dead replicas, else a new DG), and no
GPU of the dead host stays counted: when the host comes back all its GPUs are free, once.

A DG left with no instance keeps its id during the tick (so a new DG cannot take the id of a
Serve application still being torn down) and is removed after it unless the tick refilled it.
A DG that lost a whole role its domain cannot take back is dissolved (see `drop_lost`).
Pure: no Ray, no clock.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from heteroscale_ray.config import Role, ServiceSpec
from heteroscale_ray.control.soft_scale_in import PendingRemoval, reserved_of
from heteroscale_ray.topology import ClusterGraph, DeploymentGroup, FreeCapacity, Instance


@dataclass(frozen=True)
class LostInstance:
    """One instance that ran on a host whose node died."""

    service: str
    dg_id: str
    instance: Instance


@dataclass(frozen=True)
class NodeLoss:
    """The DG state without the lost instances, and what was lost."""

    dgs: tuple[DeploymentGroup, ...]
    pending: tuple[PendingRemoval, ...]
    lost: tuple[LostInstance, ...] = ()
    emptied: frozenset[str] = frozenset()  # DGs that lost every instance
    events: tuple[str, ...] = ()


def hosts_in_use(
    dgs: Iterable[DeploymentGroup], pending: Iterable[PendingRemoval] = ()
) -> frozenset[str]:
    """Every host an instance of the DG state or a pending soft removal sits on."""
    hosts = {i.host for dg in dgs for i in dg.instances}
    hosts.update(i.host for p in pending for i in p.instances)
    return frozenset(hosts)


def drop_lost(
    dgs: Sequence[DeploymentGroup],
    pending: Sequence[PendingRemoval],
    lost_hosts: Collection[str],
    *,
    graph: ClusterGraph,
    services: Mapping[str, ServiceSpec],
    now: float,
) -> NodeLoss:
    """Remove every instance on ``lost_hosts`` from the DGs and from pending removals.

    ``graph`` is the cluster without the lost hosts. A DG left without any instance of a role
    it had, whose domain has no room for that role's lost instances any more, can serve
    nothing (a request's prefill and decode run in one DG) and never heal in place: it is
    dissolved, its survivors drain as a whole-DG soft removal that is never restored (their
    GPUs stay held until they stop), and the tick re-places all of it. A pending removal
    left with nothing is forgotten (nothing of it runs to stop or restore).
    """
    if not lost_hosts:
        return NodeLoss(tuple(dgs), tuple(pending))
    kept_pending = _drop_pending(pending, lost_hosts)
    events: list[str] = list(kept_pending[1])
    shrunk: list[DeploymentGroup] = []
    lost: list[LostInstance] = []
    lost_of: dict[str, list[Instance]] = {}
    for dg in dgs:
        gone = [i for i in dg.instances if i.host in lost_hosts]
        if gone:
            lost += [LostInstance(dg.service, dg.dg_id, i) for i in gone]
            lost_of[dg.dg_id] = gone
            dg = dg.with_instances(tuple(i for i in dg.instances if i.host not in lost_hosts))
        shrunk.append(dg)
    free = FreeCapacity(graph, shrunk, reserved_of(kept_pending[0]))
    out: list[DeploymentGroup] = []
    dissolved: list[PendingRemoval] = []
    emptied: set[str] = set()
    for dg in shrunk:
        gone = lost_of.get(dg.dg_id)
        if gone is None:
            out.append(dg)
            continue
        spec = services.get(dg.service)
        head = (
            f"{dg.dg_id}: lost {_count(gone, Role.PREFILL)}P+{_count(gone, Role.DECODE)}D with "
            f"dead host(s) {', '.join(sorted({i.host for i in gone}))}"
        )
        if not dg.instances:
            emptied.add(dg.dg_id)
            out.append(dg)
            events.append(
                f"{head}; none left, re-placed in its domain if it has room, else elsewhere"
            )
        elif spec is not None and _broken(dg, gone, spec, graph, free):
            dissolved.append(_dissolve(dg, now))
            events.append(
                f"{head}; its domain has no room to bring that role back, so the DG is dissolved: "
                f"its {dg.size} survivor(s) drain and the whole DG is re-placed"
            )
        else:
            out.append(dg)
            events.append(f"{head}; {dg.size} left, the lost ones are re-placed")
    return NodeLoss(
        tuple(out),
        kept_pending[0] + tuple(dissolved),
        tuple(lost),
        frozenset(emptied),
        tuple(events),
    )


def dissolve_unservable(
    dgs: Sequence[DeploymentGroup], touched: Collection[str], now: float
) -> tuple[tuple[DeploymentGroup, ...], tuple[PendingRemoval, ...], tuple[str, ...]]:
    """After planning: a DG a loss touched that still holds only one role is dissolved.

    `drop_lost` dissolves the DGs whose domain plainly has no room; this catches the rest (the
    room was there, but the placement could not use it, e.g. the paired chunk did not fit).
    Their instances are re-placed on the next tick, since the policy still wants them.
    """
    out: list[DeploymentGroup] = []
    dissolved: list[PendingRemoval] = []
    events: list[str] = []
    for dg in dgs:
        if (
            dg.dg_id in touched
            and dg.instances
            and not (dg.count(Role.PREFILL) and dg.count(Role.DECODE))
        ):
            dissolved.append(_dissolve(dg, now))
            events.append(
                f"{dg.dg_id}: could not get back the role it lost in its domain, so it is "
                f"dissolved: its {dg.size} instance(s) drain and are re-placed next tick"
            )
        else:
            out.append(dg)
    return tuple(out), tuple(dissolved), tuple(events)


def _dissolve(dg: DeploymentGroup, now: float) -> PendingRemoval:
    """The whole DG leaves routing and drains; `settle` never restores a draining DG."""
    return PendingRemoval(replace(dg, draining=True), dg.instances, now, whole_dg=True)


def _broken(
    dg: DeploymentGroup,
    gone: Sequence[Instance],
    spec: ServiceSpec,
    graph: ClusterGraph,
    free: FreeCapacity,
) -> bool:
    """Whether the DG lost every instance of a role and its domain cannot take them back."""
    domain = graph.domain_id(dg.level, dg.domain)
    for role in (Role.PREFILL, Role.DECODE):
        need = _count(gone, role)
        if not need or dg.count(role):
            continue
        if domain is None:
            return True
        if free.slots(domain, dg.gpu_type(role), spec.role(role).gpus_per_instance) < need:
            return True
    return False


def _drop_pending(
    pending: Sequence[PendingRemoval], lost_hosts: Collection[str]
) -> tuple[tuple[PendingRemoval, ...], tuple[str, ...]]:
    kept: list[PendingRemoval] = []
    events: list[str] = []
    for p in pending:
        rest = tuple(i for i in p.instances if i.host not in lost_hosts)
        if len(rest) == len(p.instances):
            kept.append(p)
            continue
        events.append(
            f"{p.dg.dg_id}: {len(p.instances) - len(rest)} instance(s) pending soft removal "
            "died with their host; nothing to stop or restore there"
        )
        if rest:
            kept.append(replace(p, instances=rest))
    return tuple(kept), tuple(events)


def remove_emptied(
    dgs: Sequence[DeploymentGroup], emptied: Collection[str]
) -> tuple[tuple[DeploymentGroup, ...], tuple[str, ...]]:
    """DGs without the ones a loss emptied and the tick did not refill; and the removed ids."""
    if not emptied:
        return tuple(dgs), ()
    removed = tuple(dg.dg_id for dg in dgs if dg.dg_id in emptied and not dg.instances)
    return tuple(dg for dg in dgs if dg.dg_id not in removed), removed


def _count(instances: Iterable[Instance], role: Role) -> int:
    return sum(1 for i in instances if i.role is role)
