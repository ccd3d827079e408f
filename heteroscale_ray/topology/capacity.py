"""Free GPUs of one placement cycle: the topology minus current instances minus reservations.

Built fresh every cycle (the paper's "rebuild the topology tree"), then only ever shrinks:
scale-out reserves GPUs virtually so later requests in the cycle cannot take them, and
scale-in does not give any back until the next rebuild. Because free capacity only shrinks
within a cycle, a first-fit cursor per (domain, GPU type, GPUs per instance) never has to look
back, so finding a host costs amortised O(1) instead of a scan over the cluster.

Per host the free GPUs are a bit mask; per domain and GPU type we keep free GPU counts and,
for each instance size g in use, the number of g-GPU instances that still fit ("slots").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from heteroscale_ray.topology.dg import DeploymentGroup
from heteroscale_ray.topology.graph import ROOT_INDEX, ClusterGraph


class CapacityError(ValueError):
    """The given Deployment Groups are inconsistent with the topology (e.g. a GPU used twice)."""


class FreeCapacity:
    """Mutable free-GPU ledger for one cycle over an immutable :class:`ClusterGraph`."""

    def __init__(
        self,
        graph: ClusterGraph,
        dgs: Iterable[DeploymentGroup] = (),
        reserved: Iterable[DeploymentGroup] = (),
    ) -> None:
        """Free GPUs = every GPU minus those of ``dgs`` and of ``reserved``.

        ``dgs`` must not overlap (a GPU held twice is a :class:`CapacityError`). ``reserved``
        instances (still running but on their way out, e.g. pending soft scale-in) only take
        GPUs away: one already held, or no longer on its host, is skipped rather than raised,
        so an inconsistent leftover cannot stop the cycle.
        """
        self.graph = graph
        hosts = graph.hosts
        host_index = graph.host_index
        mask = [(1 << h.gpus) - 1 for h in hosts]
        full = list(mask)
        for dg in dgs:
            for inst in dg.instances:
                i = host_index.get(inst.host)
                if i is None:
                    continue  # host left the cluster: holds no capacity we could hand out
                bits = 0
                for gpu in inst.gpus:
                    bits |= 1 << gpu if gpu >= 0 else full[i] + 1
                if bits & ~mask[i]:
                    _raise_conflict(graph, dg, inst.instance_id, inst.host, inst.gpus, mask[i])
                mask[i] &= ~bits
        for dg in reserved:
            for inst in dg.instances:
                i = host_index.get(inst.host)
                if i is None:
                    continue
                for gpu in inst.gpus:
                    if 0 <= gpu < hosts[i].gpus:
                        mask[i] &= ~(1 << gpu)
        self._mask = mask
        self._free_n = [m.bit_count() for m in mask]
        self._type_of = [graph.type_index[h.gpu_type] for h in hosts]
        self._chain = [(h.s1_index, h.s2_index, ROOT_INDEX) for h in hosts]
        self._free = self._aggregate(lambda n: n)
        self._slots: dict[int, list[list[int]]] = {1: self._free}
        self._cursor: dict[tuple[int, int, int, bool], int] = {}

    def _aggregate(self, per_host: Callable[[int], int]) -> list[list[int]]:
        """Sum ``per_host(free_n)`` per (domain, type): hosts into S1s, S1s into S2s, S2s into root."""
        graph = self.graph
        n_types = len(graph.gpu_types)
        table = [[0] * n_types for _ in graph.domains]
        free_n, type_of = self._free_n, self._type_of
        for h in graph.hosts:
            i = h.index
            n = free_n[i]
            if n:
                table[h.s1_index][type_of[i]] += per_host(n)
        root = table[ROOT_INDEX]
        # S1 -> S2 -> root, relying on S1 domains having an S2 parent and S2 the root.
        for dom in graph.domains:
            if dom.parent is not None and dom.parent != ROOT_INDEX:
                row, parent = table[dom.index], table[dom.parent]
                for t in range(n_types):
                    parent[t] += row[t]
        for dom in graph.domains:
            if dom.parent == ROOT_INDEX:
                row = table[dom.index]
                for t in range(n_types):
                    root[t] += row[t]
        return table

    def slot_table(self, g: int) -> list[list[int]]:
        """Instances of g GPUs that fit, as table[domain][type index]; read-only, for hot loops."""
        table = self._slots.get(g)
        if table is None:
            table = self._aggregate(lambda n: n // g)
            self._slots[g] = table
        return table

    # -- queries ---------------------------------------------------------------------------

    def free_gpus(self, domain: int, gpu_type: str) -> int:
        """Free GPUs of one type in a domain (by index, see ``ClusterGraph.domain_id``)."""
        t = self.graph.type_index.get(gpu_type)
        return 0 if t is None else self._free[domain][t]

    def slots(self, domain: int, gpu_type: str, gpus_per_instance: int) -> int:
        """How many instances of ``gpus_per_instance`` GPUs of a type still fit in a domain."""
        t = self.graph.type_index.get(gpu_type)
        return 0 if t is None else self.slot_table(gpus_per_instance)[domain][t]

    def free_indices(self, host: str) -> tuple[int, ...]:
        """Free GPU indices of a host."""
        mask = self._mask[self.graph.host_index[host]]
        return tuple(i for i in range(mask.bit_length()) if mask >> i & 1)

    def host_free(self, host_index: int) -> int:
        return self._free_n[host_index]

    # -- reservation -----------------------------------------------------------------------

    def take(
        self, domain: int, gpu_type: str, gpus_per_instance: int, topology_aware: bool = True
    ) -> tuple[int, tuple[int, ...]] | None:
        """Reserve one instance's GPUs on the first host in the domain's placement order that
        has enough of them free; returns (host index, GPU indices) or None when none fits."""
        g = gpus_per_instance
        order = self.graph.hosts_in(domain, gpu_type, topology_aware)
        key = (domain, self.graph.type_index.get(gpu_type, -1), g, topology_aware)
        pos = self._cursor.get(key, 0)
        free_n = self._free_n
        n = len(order)
        while pos < n and free_n[order[pos]] < g:
            pos += 1
        self._cursor[key] = pos
        if pos == n:
            return None
        host = order[pos]
        mask = self._mask[host]
        picked = []
        for _ in range(g):
            low = mask & -mask
            picked.append(low.bit_length() - 1)
            mask ^= low
        self._set_free(host, mask)
        return host, tuple(picked)

    def release(self, host: int, gpus: Iterable[int]) -> None:
        """Undo a :meth:`take` (used to roll back a chunk that did not fit as a whole)."""
        mask = self._mask[host]
        for gpu in gpus:
            mask |= 1 << gpu
        self._set_free(host, mask)
        # Capacity came back behind some cursors: let the affected ones look again.
        t = self._type_of[host]
        for key in [k for k in self._cursor if k[1] == t and k[0] in self._chain[host]]:
            del self._cursor[key]

    def _set_free(self, host: int, mask: int) -> None:
        old = self._free_n[host]
        new = mask.bit_count()
        self._mask[host] = mask
        self._free_n[host] = new
        t = self._type_of[host]
        chain = self._chain[host]
        for g, table in self._slots.items():
            delta = old // g - new // g
            if delta:
                for d in chain:
                    table[d][t] -= delta


def _raise_conflict(
    graph: ClusterGraph,
    dg: DeploymentGroup,
    instance_id: str,
    host: str,
    gpus: tuple[int, ...],
    free_mask: int,
) -> None:
    size = graph.host(host).gpus
    bad = [g for g in gpus if g < 0 or g >= size]
    if bad:
        raise CapacityError(
            f"instance {instance_id!r} of DG {dg.dg_id!r} uses GPU indices {bad} on host "
            f"{host!r}, which has {size} GPUs (0..{size - 1}): fix the DG state"
        )
    taken = [g for g in gpus if not free_mask >> g & 1]
    raise CapacityError(
        f"instance {instance_id!r} of DG {dg.dg_id!r} uses GPUs {taken} on host {host!r} that "
        "another instance already holds: one GPU cannot serve two instances; fix the DG state"
    )
