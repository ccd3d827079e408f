"""The placement cycle: turn "how many instances" into "which GPUs, in which Deployment Group".

One cycle (the paper's federated pre-scheduling layer):

1. rebuild free capacity from the topology minus every current DG instance and every
   reserved one (instances still running on their way out, e.g. in the soft scale-in
   window: they hold GPUs and ids but no longer count toward a service's totals);
2. serve scale requests by service priority (descending, then name);
3. scale-in first, per service: victims come from draining DGs, then DGs in scarce (HIGH)
   subgroups, then small DGs, removing whole P/D units so each DG keeps its ratio; a DG left
   empty is deleted. Freed GPUs are *not* handed out again before the next rebuild;
4. scale-out in P/D units: grow an existing DG of the service when its domain still has GPUs
   of the DG's types and the DG is below ``dg_max_instances``; otherwise open a DG in the
   best compatible domain at the service's affinity level. Every reservation is subtracted
   from free capacity at once, so later requests in the cycle cannot take it;
5. rebalance: where DGs opened at an old P/D ratio hold a whole instance more of the scarcer
   role than the ratio gives them, and others a whole instance less, move one at a time (at
   most a tenth of the role per cycle): routing spreads requests by prefill, so a DG's decode
   carries its prefill's share of the load.

Where a new DG goes is decided in :mod:`.domain_choice`; the cycle's working state (steps 2-5)
is :mod:`.placement_cycle`, one DG under edit is :mod:`.working_dg`.

Everything here is deterministic: the same inputs give the same plan, ids included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from heteroscale_ray.config.gpus import GpuCatalog
from heteroscale_ray.config.services import ServiceSpec
from heteroscale_ray.config.topology import TopologySpec
from heteroscale_ray.topology.capacity import FreeCapacity
from heteroscale_ray.topology.dg import DeploymentGroup, Instance, instance_id_for
from heteroscale_ray.topology.domain_choice import Candidate, DomainChooser, reserve_chunk
from heteroscale_ray.topology.graph import ClusterGraph
from heteroscale_ray.topology.placement_cycle import PlacementCycle, ScaleRequest
from heteroscale_ray.topology.plan import PlacementPlan
from heteroscale_ray.topology.working_dg import ROLES

__all__ = ["ScaleRequest", "place_dg", "plan_cycle"]


def plan_cycle(
    topology: TopologySpec | ClusterGraph,
    services: Mapping[str, ServiceSpec],
    dgs: Sequence[DeploymentGroup],
    requests: Sequence[ScaleRequest],
    catalog: GpuCatalog | None = None,
    *,
    topology_aware: bool = True,
    reserved: Sequence[DeploymentGroup] = (),
) -> PlacementPlan:
    """Plan one placement cycle; pure and deterministic.

    Pass a prebuilt :class:`ClusterGraph` to skip rebuilding the switch tree every cycle.
    ``topology_aware=False`` is the baseline for experiments: affinity and subgroups are
    ignored, new DGs span the whole cluster and hosts are taken first-fit in tree order.
    Draining DGs count toward a service's current totals, are never grown and shrink first.

    ``reserved`` are instances that still run but are no longer part of ``dgs`` (pending soft
    scale-in): their GPUs are not handed out, their DG ids and instance ids are not reused
    (a reserved DG may share its id with a live DG it was removed from), and they count
    toward no service's totals; the plan never touches them.
    """
    graph = (
        topology
        if isinstance(topology, ClusterGraph)
        else ClusterGraph.from_topology(topology, catalog)
    )
    if catalog is not None:
        _check_catalog(services, catalog)
    seen: set[str] = set()
    for req in requests:
        if req.service in seen:
            raise ValueError(f"two scale requests for {req.service!r}: send one per service")
        seen.add(req.service)
    cycle = PlacementCycle(graph, dgs, topology_aware, reserved)
    known = [r for r in requests if r.service in services]
    for req in sorted(known, key=lambda r: (-services[r.service].priority, r.service)):
        cycle.serve(services[req.service], req)
    for req in sorted((r for r in requests if r.service not in services), key=lambda r: r.service):
        cycle.reject_unknown(req)
    return cycle.plan()


def place_dg(
    capacity: FreeCapacity,
    service: ServiceSpec,
    prefill: int,
    decode: int,
    *,
    dg_id: str,
    topology_aware: bool = True,
) -> DeploymentGroup | None:
    """Open one new DG of ``prefill`` + ``decode`` instances in the best compatible domain.

    Reserves its GPUs in ``capacity`` (so successive calls never overlap) and returns the
    DG, or None when no domain at the service's affinity level can take it whole.
    """
    if prefill < 0 or decode < 0 or prefill + decode == 0:
        raise ValueError(f"place_dg needs a non-empty DG, got prefill={prefill}, decode={decode}")
    chooser = DomainChooser(capacity, service, topology_aware)
    excluded: set[Candidate] = set()
    while True:
        choice = chooser.best((prefill, decode), units_wanted=1, excluded=excluded)
        if choice is None:
            return None
        domain, prefill_type, decode_type = choice
        taken = reserve_chunk(
            capacity,
            domain,
            (prefill_type, decode_type),
            chooser.gpus,
            (prefill, decode),
            topology_aware,
        )
        if taken is not None:
            break
        excluded.add(choice)
    dom = capacity.graph.domains[domain]
    hosts = capacity.graph.hosts
    next_k = [0, 0]
    instances = []
    for r, host, gpus in taken:
        instances.append(
            Instance(instance_id_for(dg_id, ROLES[r], next_k[r]), ROLES[r], hosts[host].name, gpus)
        )
        next_k[r] += 1
    return DeploymentGroup(
        dg_id=dg_id,
        service=service.name,
        domain=dom.name,
        level=dom.level,
        prefill_gpu_type=prefill_type,
        decode_gpu_type=decode_type,
        instances=tuple(instances),
    )


def _check_catalog(services: Mapping[str, ServiceSpec], catalog: GpuCatalog) -> None:
    for spec in services.values():
        for role in ROLES:
            catalog.check_known(
                spec.role(role).gpu_types, f"service {spec.name!r} {role.value}.gpu_types"
            )
