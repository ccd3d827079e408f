"""A Deployment Group being edited during one placement cycle: counts, additions, removals.

Holds what the cycle needs per DG: where it may grow, how scarce its domain is (shrink order),
its P/D imbalance, fresh instance ids that never reuse a live or reserved one, and which
instances go first on scale-in.
"""

from __future__ import annotations

from collections.abc import Sequence

from heteroscale_ray.config.services import Role, ServiceSpec
from heteroscale_ray.topology.dg import DeploymentGroup, Instance, instance_id_for, taken_suffixes
from heteroscale_ray.topology.domain_choice import type_rank
from heteroscale_ray.topology.graph import CLUSTER_WIDE, ROOT_INDEX, ClusterGraph

ROLES = (Role.PREFILL, Role.DECODE)
_GONE_COST = (3, 3)  # a DG whose domain left the topology: first to shrink, never grown


class WorkingDG:
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

    def can_give(self, r: int) -> bool:
        """Whether one running instance of role r can leave and still leave one behind."""
        if self.draining or self.deleted or self.counts[r] < 2 or self.base is None:
            return False
        own = sum(1 for i in self.base.instances if i.role is ROLES[r])
        return own - len(self.removed[r]) > 0

    def can_take(self, limit: int) -> bool:
        """Whether one more instance fits: below the DG size `limit`, in a domain still there."""
        return self.size < limit and self.grow_domain is not None

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
