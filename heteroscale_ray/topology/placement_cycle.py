"""One placement cycle's working state: scale-in, scale-out and the resulting plan.

`plan_cycle` (in :mod:`.placement`) builds a `PlacementCycle`, calls `serve` per scale request
in priority order and returns `plan()`. The steps are described in :mod:`.placement`; where a
new DG goes is decided in :mod:`.domain_choice`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from heteroscale_ray.config.services import AffinityLevel, ServiceSpec
from heteroscale_ray.topology.capacity import FreeCapacity
from heteroscale_ray.topology.dg import DeploymentGroup, Instance, dg_id_for, dg_numbers
from heteroscale_ray.topology.domain_choice import (
    NO_LIMIT,
    Candidate,
    DomainChooser,
    ratio_unit,
    reserve_chunk,
)
from heteroscale_ray.topology.graph import ROOT, ClusterGraph
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
from heteroscale_ray.topology.working_dg import ROLES, WorkingDG

GRID_TERM = 8  # the largest term of a ratio on the placement grid (policy/dg_shape.py's)
MOVE_SHARE = 0.1  # at most this share of a role's instances move between DGs per cycle


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


class PlacementCycle:
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
        self.touched: list[list[WorkingDG]] = []
        self.unplaced: list[Unplaced] = []

    # -- per request ---------------------------------------------------------------------

    def serve(self, spec: ServiceSpec, req: ScaleRequest) -> None:
        dgs = [
            WorkingDG(
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
            moved = self._scale_in(spec, dgs, shrink)
            grow = [grow[r] + moved[r] for r in (0, 1)]
        if grow[0] or grow[1]:
            self._scale_out(spec, dgs, grow)
        self._rebalance(spec, dgs)

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

    def _scale_in(
        self, spec: ServiceSpec, dgs: list[WorkingDG], shrink: list[int]
    ) -> tuple[int, int]:
        """Remove ``shrink`` instances per role; return the instances per role to re-place.

        A DG serves a request with its own prefill and decode, so a DG that held both roles
        never keeps only one: a lone instance of a role is taken from a DG only when no other
        DG can spare one, and then the whole DG goes and what it still held of the other role
        is grown again elsewhere (placed, or reported unplaced), so totals stay as asked.
        """
        p, d = ratio_unit(spec)
        whole = {w.dg_id for w in dgs if w.counts[0] and w.counts[1]}
        order = sorted(dgs, key=lambda w: (not w.draining, -w.cost[0], -w.cost[1], w.size, w.dg_id))
        position = {w.dg_id: k for k, w in enumerate(order)}
        # Whole P/D units, emptying victims one after another so whole DGs go away; never one
        # that leaves a DG one role (re-placing that role opens DGs with the rest's partners).
        for w in order:
            while shrink[0] and shrink[1]:
                take = (min(p, shrink[0], w.counts[0]), min(d, shrink[1], w.counts[1]))
                left = (w.counts[0] - take[0], w.counts[1] - take[1])
                if take == (0, 0) or (w.dg_id in whole and (left[0] == 0) != (left[1] == 0)):
                    break
                for r in (0, 1):
                    if take[r]:
                        w.pop_victims(self.graph, r, take[r])
                        shrink[r] -= take[r]
        # One role left: one instance at a time from the DG with the most of that role, among
        # the DGs that keep one of it (or hold nothing else); else the DG with least to move.
        for r in (0, 1):
            sign = 1 if r == 0 else -1
            while shrink[r]:
                holders = [w for w in order if w.counts[r] > 0]
                if not holders:
                    break
                spare = [w for w in holders if w.counts[r] > 1 or not w.counts[1 - r]]
                if spare:
                    w = min(spare, key=lambda w: (-sign * w.imbalance(p, d), position[w.dg_id]))
                else:
                    w = min(holders, key=lambda w: (w.counts[1 - r], position[w.dg_id]))
                w.pop_victims(self.graph, r, 1)
                shrink[r] -= 1
        moved = [0, 0]
        for w in dgs:
            if w.dg_id in whole and w.size and not (w.counts[0] and w.counts[1]):
                r = 0 if w.counts[0] else 1
                moved[r] += w.counts[r]
                w.pop_victims(self.graph, r, w.counts[r])
            if w.size == 0 and (w.removed[0] or w.removed[1]):
                w.deleted = True
        return moved[0], moved[1]

    # -- rebalance -----------------------------------------------------------------------

    def _rebalance(self, spec: ServiceSpec, dgs: list[WorkingDG]) -> None:
        """Move instances of the scarcer role from the DGs that hold too many of it for the
        service's P/D ratio (the one growth and shrinkage keep, so none undoes another) to
        those that hold too few: soft-removed there, added here.

        A request runs its prefill and decode in one DG, and routing spreads requests by
        prefill: a DG's decode carries its prefill's share of the load. DGs opened when the
        ratio was 1:1 keep that shape after the ratio moves to 1:8, so their decode carries
        eight times the load of a new DG's while the new DGs' decode idles. Growth and shrinkage
        pick DGs to narrow this, but a ratio move with the totals near their target leaves it.
        A move goes only where it narrows the gap by a whole instance at both ends, into a DG
        below `dg_max_instances`; at most `MOVE_SHARE` of the role's instances move a cycle."""
        live = [w for w in dgs if not (w.draining or w.deleted) and w.counts[0] and w.counts[1]]
        if len(live) < 2:
            return
        p, d = ratio_unit(spec)
        r = 0 if p <= d else 1  # the scarcer role: a move shifts the gap least

        def excess(w: WorkingDG) -> float:
            """Instances of role r over the ratio's share of the DG's other role."""
            return w.imbalance(p, d) / d if r == 0 else -w.imbalance(p, d) / p

        chooser = DomainChooser(self.capacity, spec, self.aware)
        chunk = (1, 0) if r == 0 else (0, 1)
        full: set[str] = set()  # DGs whose domain had no room for a move
        limit = spec.dg_max_instances or NO_LIMIT
        for _ in range(max(1, int(MOVE_SHARE * sum(w.counts[r] for w in live)))):
            givers = [w for w in live if w.can_give(r) and excess(w) >= 1]
            takers = [
                w for w in live if w.dg_id not in full and w.can_take(limit) and excess(w) <= -1
            ]
            if not givers or not takers:
                return
            src = max(givers, key=lambda w: (excess(w), w.dg_id))
            dst = min(takers, key=lambda w: (excess(w), w.dg_id))
            if not self._allocate(dst, dst.grow_domain, chooser, chunk):
                full.add(dst.dg_id)
                continue
            src.pop_victims(self.graph, r, 1)

    # -- scale-out -----------------------------------------------------------------------

    def _scale_out(self, spec: ServiceSpec, dgs: list[WorkingDG], grow: list[int]) -> None:
        up, ud = ratio_unit(spec)
        chooser = DomainChooser(self.capacity, spec, self.aware)
        while grow[0] and grow[1]:
            chunk = (min(up, grow[0]), min(ud, grow[1]))
            units_left = max(-(-grow[0] // up), -(-grow[1] // ud))
            # A unit past the ratio grid that no domain has room for goes in halves (12:1 as
            # 6:1, 6:1): each DG keeps near the ratio, where the whole unit placed nothing.
            while not self._place_chunk(spec, dgs, chooser, chunk, units_left):
                if chunk == (half := _halved(chunk)):
                    self._report_short(spec, dgs, chooser, chunk, grow)
                    return
                chunk = half
            grow[0] -= chunk[0]
            grow[1] -= chunk[1]
        for r in (0, 1):
            chunk = (1, 0) if r == 0 else (0, 1)
            while grow[r]:
                if not self._grow_one_role(spec, dgs, chooser, chunk) and not self._move_partner(
                    spec, dgs, chooser, r
                ):
                    self.unplaced.append(
                        Unplaced(
                            spec.name,
                            ROLES[r],
                            grow[r],
                            UnplacedReason.NO_CAPACITY,
                            f"no DG of {spec.name} has room for another {ROLES[r].value} in "
                            "its domain, and no DG can spare an instance of the other role "
                            "to open a new one",
                        )
                    )
                    break
                grow[r] -= 1

    def _grow_one_role(
        self,
        spec: ServiceSpec,
        dgs: list[WorkingDG],
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

    def _move_partner(
        self, spec: ServiceSpec, dgs: list[WorkingDG], chooser: DomainChooser, r: int
    ) -> bool:
        """Role r must grow but every DG's domain is full of it: open a new DG elsewhere with
        one instance of r and one instance of the other role moved from the DG that has the
        most of it (soft-removed there). Totals stay exactly what was asked, and the new DG
        holds both roles; later growth of r fills it."""
        other = 1 - r
        donors = [w for w in dgs if w.can_give(other)]
        if not donors:
            return False
        donor = max(donors, key=lambda w: (w.counts[other], w.dg_id))
        chunk = (1, 1)
        room = NO_LIMIT if spec.dg_max_instances is None else max(1, spec.dg_max_instances // 2)
        excluded: set[Candidate] = set()
        while (choice := chooser.best(chunk, 1, excluded, room)) is not None:
            w = self._new_dg(spec, choice)
            if self._allocate(w, choice[0], chooser, chunk):
                dgs.append(w)
                donor.pop_victims(self.graph, other, 1)
                return True
            excluded.add(choice)
        return False

    def _place_chunk(
        self,
        spec: ServiceSpec,
        dgs: list[WorkingDG],
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
        dgs: list[WorkingDG],
        chooser: DomainChooser,
        chunk: tuple[int, int],
        skip: set[str],
        respect_limit: bool = True,
    ) -> WorkingDG | None:
        p, d = ratio_unit(spec)
        limit = spec.dg_max_instances if spec.dg_max_instances is not None else NO_LIMIT
        if not respect_limit:
            limit = NO_LIMIT
        extra = chunk[0] + chunk[1]
        best_key: tuple | None = None
        best: WorkingDG | None = None
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

    def _new_dg(self, spec: ServiceSpec, choice: Candidate) -> WorkingDG:
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
        return WorkingDG(self.graph, spec, shell, self.aware, created=True)

    def _next_dg_id(self, service: str) -> str:
        """Smallest unused DG number of the service; ids taken earlier this cycle stay taken."""
        taken = self.dg_numbers.setdefault(service, set())
        k = 0
        while k in taken:
            k += 1
        taken.add(k)
        return dg_id_for(service, k)

    def _allocate(
        self, w: WorkingDG, domain: int, chooser: DomainChooser, chunk: tuple[int, int]
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
        dgs: list[WorkingDG],
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


def _halved(chunk: tuple[int, int]) -> tuple[int, int]:
    """Half of a unit with a term past `GRID_TERM` (the n:1 shapes past the ratio grid, as the
    demand policy places beyond 8:1); a grid unit stays whole, so a service that asks in whole
    units keeps its exact ratio in every DG and in what is left unplaced."""
    if max(chunk) <= GRID_TERM:
        return chunk
    return (max(1, chunk[0] // 2), max(1, chunk[1] // 2))


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
