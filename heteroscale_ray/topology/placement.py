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
   from free capacity at once, so later requests in the cycle cannot take it.

Where a new DG goes is decided in :mod:`.domain_choice`.

Everything here is deterministic: the same inputs give the same plan, ids included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from heteroscale_ray.config.gpus import GpuCatalog
from heteroscale_ray.config.services import AffinityLevel, Role, ServiceSpec
from heteroscale_ray.config.topology import TopologySpec
from heteroscale_ray.topology.capacity import FreeCapacity
from heteroscale_ray.topology.dg import (
    DeploymentGroup,
    Instance,
    dg_id_for,
    dg_numbers,
    instance_id_for,
    taken_suffixes,
)
from heteroscale_ray.topology.domain_choice import (
    NO_LIMIT,
    Candidate,
    DomainChooser,
    ratio_unit,
    reserve_chunk,
    type_rank,
)
from heteroscale_ray.topology.graph import CLUSTER_WIDE, ROOT, ROOT_INDEX, ClusterGraph
from heteroscale_ray.topology.plan import (
    Action,
    AddInstances,
    CreateDG,
    DeleteDG,
    PlacementPlan,
    RemoveInstances,
    Unplaced,
    UnplacedReason,
)

ROLES = (Role.PREFILL, Role.DECODE)
_GONE_COST = (3, 3)  # a DG whose domain left the topology: first to shrink, never grown


@dataclass(frozen=True, slots=True)
class ScaleRequest:
    """Target instance totals per role for one service, across all its DGs."""

    service: str
    prefill: int
    decode: int

    def __post_init__(self) -> None:
        if self.prefill < 0 or self.decode < 0:
            raise ValueError(
                f"scale request for {self.service!r} has negative targets "
                f"(prefill={self.prefill}, decode={self.decode}): targets are instance totals >= 0"
            )


# -- public entry points -------------------------------------------------------------------


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
    cycle = _Cycle(graph, dgs, topology_aware, reserved)
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


# -- shared helpers ------------------------------------------------------------------------


def _check_catalog(services: Mapping[str, ServiceSpec], catalog: GpuCatalog) -> None:
    for spec in services.values():
        for role in ROLES:
            for gpu in spec.role(role).gpu_types:
                if gpu not in catalog:
                    raise ValueError(
                        f"service {spec.name!r} {role.value}.gpu_types names {gpu!r}, unknown to "
                        f"the catalog: use one of {catalog.names()}"
                    )


# -- the cycle -----------------------------------------------------------------------------


class _WorkingDG:
    """A DG being edited during one cycle: counts, additions and removals so far."""

    __slots__ = (
        "base",
        "dg_id",
        "spec",
        "level",
        "domain_name",
        "home",
        "grow_domain",
        "types",
        "draining",
        "counts",
        "added",
        "removed",
        "deleted",
        "cost",
        "rank",
        "_removal_queue",
        "_used_k",
        "_reserved_ids",
    )

    def __init__(
        self,
        graph: ClusterGraph,
        spec: ServiceSpec,
        base: DeploymentGroup,
        topology_aware: bool,
        created: bool = False,
        reserved_ids: Sequence[str] = (),
    ) -> None:
        self.base = None if created else base
        self.dg_id = base.dg_id
        self.spec = spec
        self.level = base.level
        self.domain_name = base.domain
        self.types = (base.prefill_gpu_type, base.decode_gpu_type)
        self.draining = base.draining
        real = graph.domain_id(base.level, base.domain)
        self.home = CLUSTER_WIDE if real is None else graph.domains[real].sub_cluster
        if real is None:
            self.grow_domain, self.cost = None, _GONE_COST
        elif topology_aware:
            self.grow_domain, self.cost = real, graph.domains[real].cost
        else:
            self.grow_domain, self.cost = ROOT_INDEX, (0, 0)
        prefill = sum(1 for inst in base.instances if inst.role is Role.PREFILL)
        self.counts = [prefill, len(base.instances) - prefill]
        self.added: tuple[list[Instance], list[Instance]] = ([], [])
        self.removed: tuple[list[Instance], list[Instance]] = ([], [])
        self.deleted = False
        self.rank = type_rank(spec, *self.types)
        self._removal_queue: list[list[Instance] | None] = [None, None]
        self._used_k: list[set[int] | None] = [None, None]
        self._reserved_ids = reserved_ids

    @property
    def size(self) -> int:
        return self.counts[0] + self.counts[1]

    def imbalance(self, p: int, d: int, extra: tuple[int, int] = (0, 0)) -> int:
        """How far from the P/D ratio, in cross-multiplied instances (0 = exactly on ratio)."""
        return (self.counts[0] + extra[0]) * d - (self.counts[1] + extra[1]) * p

    def next_instance_id(self, r: int) -> str:
        """Smallest unused k for this DG and role; ids removed this cycle, and ids of reserved
        instances of this DG, stay taken."""
        used = self._used_k[r]
        if used is None:
            prefix = f"{self.dg_id}-{ROLES[r].value[0]}"
            existing = self.base.instances if self.base is not None else ()
            ids = [i.instance_id for i in existing]
            ids.extend(self._reserved_ids)
            used = taken_suffixes(prefix, ids)
            self._used_k[r] = used
        k = 0
        while k in used:
            k += 1
        used.add(k)
        return instance_id_for(self.dg_id, ROLES[r], k)

    def pop_victims(self, graph: ClusterGraph, r: int, n: int) -> None:
        """Remove n instances of role r: those on scarce (or vanished) hosts first, newest first."""
        queue = self._removal_queue[r]
        if queue is None:
            own = [i for i in self.base.instances if i.role is ROLES[r]] if self.base else []
            hosts, host_index = graph.hosts, graph.host_index

            def host_cost(inst: Instance) -> int:
                h = host_index.get(inst.host)
                return 3 if h is None else int(hosts[h].subgroup)

            # Kept in reverse so pop() yields the next victim.
            order = sorted(range(len(own)), key=lambda k: (host_cost(own[k]), k))
            queue = [own[k] for k in order]
            self._removal_queue[r] = queue
        for _ in range(n):
            self.removed[r].append(queue.pop())
        self.counts[r] -= n


class _Cycle:
    """Mutable working state of one plan_cycle call; nothing outlives the call."""

    def __init__(
        self,
        graph: ClusterGraph,
        dgs: Sequence[DeploymentGroup],
        topology_aware: bool,
        reserved: Sequence[DeploymentGroup] = (),
    ) -> None:
        self.graph = graph
        self.aware = topology_aware
        self.capacity = FreeCapacity(graph, dgs, reserved)
        self.base_by_service: dict[str, list[DeploymentGroup]] = {}
        for dg in dgs:
            self.base_by_service.setdefault(dg.service, []).append(dg)
        self.dg_numbers = dg_numbers([*(dg.dg_id for dg in dgs), *(dg.dg_id for dg in reserved)])
        self.reserved_ids: dict[str, list[str]] = {}
        for dg in reserved:
            self.reserved_ids.setdefault(dg.dg_id, []).extend(i.instance_id for i in dg.instances)
        self.touched: list[list[_WorkingDG]] = []
        self.unplaced: list[Unplaced] = []

    # -- per request ---------------------------------------------------------------------

    def serve(self, spec: ServiceSpec, req: ScaleRequest) -> None:
        dgs = [
            _WorkingDG(
                self.graph,
                spec,
                base,
                self.aware,
                reserved_ids=self.reserved_ids.get(base.dg_id, ()),
            )
            for base in self.base_by_service.get(spec.name, ())
        ]
        self.touched.append(dgs)
        current = (sum(w.counts[0] for w in dgs), sum(w.counts[1] for w in dgs))
        target = (req.prefill, req.decode)
        shrink = [max(0, current[r] - target[r]) for r in (0, 1)]
        grow = [max(0, target[r] - current[r]) for r in (0, 1)]
        if shrink[0] or shrink[1]:
            self._scale_in(spec, dgs, shrink)
        if grow[0] or grow[1]:
            self._scale_out(spec, dgs, grow)

    def reject_unknown(self, req: ScaleRequest) -> None:
        for r, count in enumerate((req.prefill, req.decode)):
            if count:
                self.unplaced.append(
                    Unplaced(
                        req.service,
                        ROLES[r],
                        count,
                        UnplacedReason.UNKNOWN_SERVICE,
                        f"no service spec named {req.service!r}: add it to services.yaml",
                    )
                )

    # -- scale-in ------------------------------------------------------------------------

    def _scale_in(self, spec: ServiceSpec, dgs: list[_WorkingDG], shrink: list[int]) -> None:
        p, d = ratio_unit(spec)
        order = sorted(dgs, key=lambda w: (not w.draining, -w.cost[0], -w.cost[1], w.size, w.dg_id))
        position = {w.dg_id: k for k, w in enumerate(order)}
        # Whole P/D units, emptying victims one after another so whole DGs go away.
        for w in order:
            if not (shrink[0] and shrink[1]):
                break
            while shrink[0] and shrink[1]:
                take = (min(p, shrink[0], w.counts[0]), min(d, shrink[1], w.counts[1]))
                if take == (0, 0):
                    break
                for r in (0, 1):
                    if take[r]:
                        w.pop_victims(self.graph, r, take[r])
                        shrink[r] -= take[r]
        # One role left: one instance at a time from the DG with the most of that role.
        for r in (0, 1):
            sign = 1 if r == 0 else -1
            while shrink[r]:
                holders = [w for w in order if w.counts[r] > 0]
                if not holders:
                    break
                w = min(holders, key=lambda w: (-sign * w.imbalance(p, d), position[w.dg_id]))
                w.pop_victims(self.graph, r, 1)
                shrink[r] -= 1
        for w in dgs:
            if w.size == 0 and (w.removed[0] or w.removed[1]):
                w.deleted = True

    # -- scale-out -----------------------------------------------------------------------

    def _scale_out(self, spec: ServiceSpec, dgs: list[_WorkingDG], grow: list[int]) -> None:
        up, ud = ratio_unit(spec)
        chooser = DomainChooser(self.capacity, spec, self.aware)
        while grow[0] and grow[1]:
            chunk = (min(up, grow[0]), min(ud, grow[1]))
            units_left = max(-(-grow[0] // up), -(-grow[1] // ud))
            if not self._place_chunk(spec, dgs, chooser, chunk, units_left):
                self._report_short(spec, dgs, chooser, chunk, grow)
                return
            grow[0] -= chunk[0]
            grow[1] -= chunk[1]
        for r in (0, 1):
            chunk = (1, 0) if r == 0 else (0, 1)
            while grow[r]:
                if not self._grow_one_role(spec, dgs, chooser, chunk):
                    self.unplaced.append(
                        Unplaced(
                            spec.name,
                            ROLES[r],
                            grow[r],
                            UnplacedReason.NO_CAPACITY,
                            f"no DG of {spec.name} has room for another {ROLES[r].value} in "
                            "its domain, and a new DG needs both roles",
                        )
                    )
                    break
                grow[r] -= 1

    def _grow_one_role(
        self,
        spec: ServiceSpec,
        dgs: list[_WorkingDG],
        chooser: DomainChooser,
        chunk: tuple[int, int],
    ) -> bool:
        """One instance of one role (the ratio moved, or rounding): into an existing DG only,
        past ``dg_max_instances`` if need be. A new DG holding a single role could serve
        nothing (prefill and decode of a request run in the same DG)."""
        for respect_limit in (True, False):
            skip: set[str] = set()
            while (
                w := self._best_growth(spec, dgs, chooser, chunk, skip, respect_limit)
            ) is not None:
                if self._allocate(w, w.grow_domain, chooser, chunk):
                    return True
                skip.add(w.dg_id)
        return False

    def _place_chunk(
        self,
        spec: ServiceSpec,
        dgs: list[_WorkingDG],
        chooser: DomainChooser,
        chunk: tuple[int, int],
        units_left: int,
    ) -> bool:
        """Grow the best existing DG by ``chunk``, else open a new DG with it."""
        skip: set[str] = set()
        while (w := self._best_growth(spec, dgs, chooser, chunk, skip)) is not None:
            if self._allocate(w, w.grow_domain, chooser, chunk):
                return True
            skip.add(w.dg_id)
        room = NO_LIMIT
        if spec.dg_max_instances is not None:
            room = max(1, spec.dg_max_instances // (chunk[0] + chunk[1]))
        excluded: set[Candidate] = set()
        while (choice := chooser.best(chunk, units_left, excluded, room)) is not None:
            w = self._new_dg(spec, choice)
            if self._allocate(w, choice[0], chooser, chunk):
                dgs.append(w)
                return True
            excluded.add(choice)
        return False

    def _best_growth(
        self,
        spec: ServiceSpec,
        dgs: list[_WorkingDG],
        chooser: DomainChooser,
        chunk: tuple[int, int],
        skip: set[str],
        respect_limit: bool = True,
    ) -> _WorkingDG | None:
        p, d = ratio_unit(spec)
        limit = spec.dg_max_instances if spec.dg_max_instances is not None else NO_LIMIT
        if not respect_limit:
            limit = NO_LIMIT
        extra = chunk[0] + chunk[1]
        best_key: tuple | None = None
        best: _WorkingDG | None = None
        for w in dgs:
            if w.draining or w.deleted or w.grow_domain is None or w.rank is None:
                continue
            if w.size + extra > limit or w.dg_id in skip:
                continue
            if chooser.units_fitting(w.grow_domain, w.types, chunk) < 1:
                continue
            ratio_change = abs(w.imbalance(p, d, chunk)) - abs(w.imbalance(p, d))
            key = (ratio_change, w.rank, w.cost, w.dg_id)
            if best_key is None or key < best_key:
                best_key, best = key, w
        return best

    def _new_dg(self, spec: ServiceSpec, choice: Candidate) -> _WorkingDG:
        domain, prefill_type, decode_type = choice
        dom = self.graph.domains[domain]
        shell = DeploymentGroup(
            dg_id=self._next_dg_id(spec.name),
            service=spec.name,
            domain=dom.name if self.aware else ROOT,
            level=dom.level if self.aware else AffinityLevel.NONE,
            prefill_gpu_type=prefill_type,
            decode_gpu_type=decode_type,
        )
        return _WorkingDG(self.graph, spec, shell, self.aware, created=True)

    def _next_dg_id(self, service: str) -> str:
        """Smallest unused DG number of the service; ids taken earlier this cycle stay taken."""
        taken = self.dg_numbers.setdefault(service, set())
        k = 0
        while k in taken:
            k += 1
        taken.add(k)
        return dg_id_for(service, k)

    def _allocate(
        self, w: _WorkingDG, domain: int, chooser: DomainChooser, chunk: tuple[int, int]
    ) -> bool:
        taken = reserve_chunk(self.capacity, domain, w.types, chooser.gpus, chunk, self.aware)
        if taken is None:
            return False
        hosts = self.graph.hosts
        for r, host, gpus in taken:
            w.added[r].append(Instance(w.next_instance_id(r), ROLES[r], hosts[host].name, gpus))
            w.counts[r] += 1
        return True

    # -- shortfalls ----------------------------------------------------------------------

    def _report_short(
        self,
        spec: ServiceSpec,
        dgs: list[_WorkingDG],
        chooser: DomainChooser,
        chunk: tuple[int, int],
        grow: list[int],
    ) -> None:
        alone = [
            self._best_growth(spec, dgs, chooser, single, set()) is not None
            or chooser.best(single, 1) is not None
            for single in ((chunk[0], 0), (0, chunk[1]))
        ]
        if alone[0] and alone[1]:
            detail = (
                f"no {_level_text(chooser)} has room for {chunk[0]} prefill + {chunk[1]} decode "
                "instances together"
            )
            for r in (0, 1):
                self.unplaced.append(
                    Unplaced(spec.name, ROLES[r], grow[r], UnplacedReason.NO_CAPACITY, detail)
                )
            return
        for r in (0, 1):
            if not alone[r]:
                self._unplaced(spec, r, grow[r], UnplacedReason.NO_CAPACITY, chooser)
            else:
                other = ROLES[1 - r].value
                self.unplaced.append(
                    Unplaced(
                        spec.name,
                        ROLES[r],
                        grow[r],
                        UnplacedReason.HELD_FOR_RATIO,
                        f"held back to keep the P/D ratio: no room for {other}",
                    )
                )

    def _unplaced(
        self, spec: ServiceSpec, r: int, count: int, reason: UnplacedReason, chooser: DomainChooser
    ) -> None:
        role = spec.role(ROLES[r])
        detail = (
            f"no free {'/'.join(role.gpu_types)} GPUs ({role.gpus_per_instance} per instance) "
            f"in any {_level_text(chooser)}"
        )
        self.unplaced.append(Unplaced(spec.name, ROLES[r], count, reason, detail))

    # -- output --------------------------------------------------------------------------

    def plan(self) -> PlacementPlan:
        per_sub: dict[str, list[Action]] = {}
        hosts, host_index = self.graph.hosts, self.graph.host_index
        for dgs in self.touched:
            for w in dgs:
                if w.base is None:
                    shell = DeploymentGroup(
                        dg_id=w.dg_id,
                        service=w.spec.name,
                        domain=w.domain_name,
                        level=w.level,
                        prefill_gpu_type=w.types[0],
                        decode_gpu_type=w.types[1],
                    )
                    per_sub.setdefault(w.home, []).append(CreateDG(shell))
                for r in (0, 1):
                    if w.added[r]:
                        for sub, group in _by_sub_cluster(w.added[r], hosts, host_index, w.home):
                            per_sub.setdefault(sub, []).append(
                                AddInstances(w.dg_id, ROLES[r], tuple(group))
                            )
                for r in (0, 1):
                    if w.removed[r]:
                        for sub, group in _by_sub_cluster(w.removed[r], hosts, host_index, w.home):
                            per_sub.setdefault(sub, []).append(
                                RemoveInstances(
                                    w.dg_id, ROLES[r], tuple(i.instance_id for i in group)
                                )
                            )
                if w.deleted:
                    per_sub.setdefault(w.home, []).append(DeleteDG(w.dg_id))
        return PlacementPlan(
            actions={sub: tuple(per_sub[sub]) for sub in sorted(per_sub)},
            unplaced=tuple(self.unplaced),
        )


def _by_sub_cluster(
    instances: list[Instance],
    hosts: Sequence,
    host_index: Mapping[str, int],
    home: str,
) -> list[tuple[str, list[Instance]]]:
    """Group instances by the sub-cluster of their host, in first-seen order."""
    groups: dict[str, list[Instance]] = {}
    for inst in instances:
        h = host_index.get(inst.host)
        sub = home if h is None else hosts[h].sub_cluster
        groups.setdefault(sub, []).append(inst)
    return list(groups.items())


def _level_text(chooser: DomainChooser) -> str:
    if chooser.level is AffinityLevel.NONE:
        return "part of the cluster"
    return f"{chooser.level.value} domain"
