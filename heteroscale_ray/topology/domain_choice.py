"""Choosing where a new Deployment Group goes, and reserving its GPUs there.

Candidates are (domain, prefill GPU type, decode GPU type) triples at the service's affinity
level. They are ranked, in order, by GPU-type preference (the preferred pair wherever any
domain has it free, else the next fallback), the least scarce capacity (subgroup class of the
domain, then of its big-pod), best fit (the tightest domain that still takes the whole
remaining request; failing that the one taking most of it), then name. Type preference comes
before scarcity on purpose: a service that prefers an L20/H20 pair in one S1 *needs* a mixed
S1, while a service content with H20/H20 never gets sent there.
"""

from __future__ import annotations

from collections.abc import Iterable

from heteroscale_ray.config.services import AffinityLevel, ServiceSpec
from heteroscale_ray.topology.capacity import FreeCapacity
from heteroscale_ray.topology.graph import ROOT_INDEX

NO_LIMIT = 1 << 62
"""Stands in for "unbounded" in instance arithmetic."""

Candidate = tuple[int, str, str]
"""(domain index, prefill GPU type, decode GPU type)."""


def ratio_unit(spec: ServiceSpec) -> tuple[int, int]:
    """The P/D step a DG grows and shrinks by: the ratio, scaled down to fit dg_max_instances."""
    p, d = spec.ratio
    cap = spec.dg_max_instances
    if cap is not None and p + d > cap:
        p_share = max(1, min(cap - 1, round(cap * p / (p + d))))
        return p_share, cap - p_share
    return p, d


def type_rank(
    spec: ServiceSpec, prefill_type: str, decode_type: str
) -> tuple[int, int, int] | None:
    """Preference of a type pair (lower is better), or None when the service no longer allows it.

    Pairs are ranked by the sum of both roles' preference positions, then decode's (the
    throughput-critical role the policy scales on), then prefill's.
    """
    try:
        i = spec.prefill.gpu_types.index(prefill_type)
        j = spec.decode.gpu_types.index(decode_type)
    except ValueError:
        return None
    return (i + j, j, i)


def reserve_chunk(
    capacity: FreeCapacity,
    domain: int,
    types: tuple[str, str],
    gpus: tuple[int, int],
    chunk: tuple[int, int],
    topology_aware: bool,
) -> list[tuple[int, int, tuple[int, ...]]] | None:
    """Reserve a chunk's instances in one domain, all or nothing: [(role, host, gpus)]."""
    taken: list[tuple[int, int, tuple[int, ...]]] = []
    for r in (0, 1):
        for _ in range(chunk[r]):
            got = capacity.take(domain, types[r], gpus[r], topology_aware)
            if got is None:
                for _, host, held in taken:
                    capacity.release(host, held)
                return None
            taken.append((r, got[0], got[1]))
    return taken


class DomainChooser:
    """Scores (domain, prefill type, decode type) candidates for a new DG of one service."""

    def __init__(self, capacity: FreeCapacity, spec: ServiceSpec, topology_aware: bool) -> None:
        self.capacity = capacity
        self.graph = capacity.graph
        self.spec = spec
        self.aware = topology_aware
        self.gpus = (spec.prefill.gpus_per_instance, spec.decode.gpus_per_instance)
        self.level = spec.affinity if topology_aware else AffinityLevel.NONE
        type_index = self.graph.type_index
        self.pairs = sorted(
            (rank, tp, td)
            for tp in spec.prefill.gpu_types
            for td in spec.decode.gpu_types
            if tp in type_index and td in type_index
            for rank in [type_rank(spec, tp, td)]
            if rank is not None
        )

    def domains_for(self, gpu_type: str) -> tuple[int, ...]:
        if self.level is AffinityLevel.NONE:
            return (ROOT_INDEX,)
        return self.graph.domains_with(self.level, gpu_type)

    def units_fitting(self, domain: int, types: tuple[str, str], chunk: tuple[int, int]) -> int:
        """How many chunks of this shape the domain still takes."""
        ti = self.graph.type_index
        if types[0] not in ti or types[1] not in ti:
            return 0  # every host of the type left the cluster (dead or not answering)
        cap = self.capacity
        gp, gd = self.gpus
        return units_fitting_in(
            cap.slot_table(gp)[domain],
            cap.slot_table(gd)[domain],
            cap.slot_table(1)[domain],
            (ti[types[0]], ti[types[1]]),
            self.gpus,
            chunk,
        )

    def best(
        self,
        chunk: tuple[int, int],
        units_wanted: int,
        excluded: Iterable[Candidate] = (),
        dg_room_units: int = NO_LIMIT,
    ) -> Candidate | None:
        """The best (domain, prefill type, decode type) for a new DG starting with ``chunk``."""
        up, ud = chunk
        paired = bool(up and ud)
        want = max(1, min(units_wanted, dg_room_units))
        need_gpus = want * (up * self.gpus[0] + ud * self.gpus[1])
        excluded = set(excluded)
        domains = self.graph.domains
        cap = self.capacity
        free = cap.slot_table(1)
        gp, gd = self.gpus
        tab_p, tab_d = cap.slot_table(gp), cap.slot_table(gd)
        ti = self.graph.type_index
        best_key: tuple | None = None
        best: Candidate | None = None
        candidates = (
            self.pairs if paired else sorted(self.pairs, key=lambda c: single_role_rank(c, up))
        )
        for rank, tp, td in candidates:
            primary, *secondary = rank if paired else single_role_rank((rank, tp, td), up)
            if best_key is not None and primary > best_key[0]:
                break
            tpi, tdi = ti[tp], ti[td]
            for d in self.domains_for(tp if up else td):
                units = units_fitting_in(tab_p[d], tab_d[d], free[d], (tpi, tdi), self.gpus, chunk)
                if units < 1 or (excluded and (d, tp, td) in excluded):
                    continue
                other_missing = 0
                if not paired:
                    other_missing = int((tab_d[d][tdi] if up else tab_p[d][tpi]) < 1)
                spare = free[d][tpi] + (free[d][tdi] if tdi != tpi else 0)
                fit = (0, spare - need_gpus) if units >= want else (1, -units)
                dom = domains[d]
                cost = dom.cost if self.aware else (0, 0)
                key = (primary, other_missing, secondary, cost, fit, dom.name, tp, td)
                if best_key is None or key < best_key:
                    best_key, best = key, (d, tp, td)
        return best


def units_fitting_in(
    slots_p: list[int],
    slots_d: list[int],
    free: list[int],
    types: tuple[int, int],
    gpus: tuple[int, int],
    chunk: tuple[int, int],
) -> int:
    """Chunks of (prefill, decode) instances a domain still takes, from its per-type slot rows.

    Exact, except when both roles share a GPU type with different instance sizes: then it is
    an upper bound and reservation may still roll back.
    """
    (tp, td), (gp, gd), (up, ud) = types, gpus, chunk
    by_prefill = slots_p[tp] // up if up else NO_LIMIT
    by_decode = slots_d[td] // ud if ud else NO_LIMIT
    if tp != td or not (up and ud):
        return min(by_prefill, by_decode)
    if gp == gd:
        return slots_p[tp] // (up + ud)
    return min(by_prefill, by_decode, free[tp] // (up * gp + ud * gd))


def single_role_rank(
    pair: tuple[tuple[int, int, int], str, str], prefill_only: int
) -> tuple[int, int]:
    """For a one-role chunk the placed role's preference leads, the other role's follows."""
    (_, j, i), _, _ = pair
    return (i, j) if prefill_only else (j, i)
