"""The cluster graph: the switch tree as a NetworkX DiGraph, plus flat indexes for hot paths.

The DiGraph (root -> S2 -> S1 -> S0 -> host) is the readable model other code and tests can
walk. Placement at 100k GPUs cannot afford graph walks per instance, so the same facts are
also kept as tuples and dicts: hosts and domains by integer index, the hosts of every
(domain, GPU type) in placement order, and the domains at each level holding a GPU type.
The graph is static; free GPUs live per cycle in :class:`~.capacity.FreeCapacity`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import networkx as nx

from heteroscale_ray.config.gpus import GpuCatalog
from heteroscale_ray.config.services import AffinityLevel
from heteroscale_ray.config.topology import TopologySpec
from heteroscale_ray.topology.subgroups import SubgroupClass, classify_s1, classify_s2

ROOT = "root"
"""Domain name of a Deployment Group with affinity ``none``: the whole cluster."""

CLUSTER_WIDE = "*"
"""Sub-cluster key for actions on a root-domain DG, which belongs to no single sub-cluster."""

ROOT_INDEX = 0
"""Index of the root domain in :attr:`ClusterGraph.domains`."""


@dataclass(frozen=True, slots=True)
class HostInfo:
    """A GPU host with its place in the switch tree."""

    index: int
    name: str
    gpu_type: str
    gpus: int
    node_id: str | None
    s0: str
    s1: str
    s2: str
    sub_cluster: str
    s1_index: int
    s2_index: int
    subgroup: SubgroupClass
    """Cost of taking a GPU here: the subgroup class of the host's S1 domain."""


@dataclass(frozen=True, slots=True)
class Domain:
    """A network domain a Deployment Group can live in: one S1, one S2, or the root."""

    index: int
    level: AffinityLevel
    name: str
    parent: int | None
    subgroup: SubgroupClass
    parent_subgroup: SubgroupClass
    sub_cluster: str
    gpu_types: tuple[str, ...]
    hosts: tuple[int, ...]

    @property
    def cost(self) -> tuple[int, int]:
        """Placement cost key: own subgroup class, then the enclosing big-pod's."""
        return (int(self.subgroup), int(self.parent_subgroup))


def _node(level: str, name: str) -> tuple[str, str]:
    return (level, name)


@dataclass(frozen=True, eq=False)
class ClusterGraph:
    """The switch tree of one topology, built once and shared by every placement cycle."""

    graph: nx.DiGraph
    hosts: tuple[HostInfo, ...]
    domains: tuple[Domain, ...]
    gpu_types: tuple[str, ...]
    host_index: Mapping[str, int]
    domain_index: Mapping[tuple[AffinityLevel, str], int]
    type_index: Mapping[str, int]
    _by_level: Mapping[AffinityLevel, tuple[int, ...]] = field(repr=False)
    _with_type: Mapping[tuple[AffinityLevel, str], tuple[int, ...]] = field(repr=False)
    _order: Mapping[tuple[int, str, bool], tuple[int, ...]] = field(repr=False)

    @classmethod
    def from_topology(cls, spec: TopologySpec, catalog: GpuCatalog | None = None) -> ClusterGraph:
        """Build the graph and indexes; with a catalog, reject GPU types it does not know."""
        sub_cluster_of = spec.sub_cluster_of()
        hosts: list[HostInfo] = []
        domains: list[Domain | None] = [None]  # the root is filled in last
        for s2 in spec.big_pods:
            s1_types = [
                {h.gpu_type for leaf in s1.leaves for h in leaf.hosts} for s1 in s2.mini_pods
            ]
            s2_class = classify_s2(s1_types)
            sub_cluster = sub_cluster_of[s2.name]
            s2_index = len(domains)
            domains.append(None)  # filled in once its hosts are known
            s2_first = len(hosts)
            for s1, types in zip(s2.mini_pods, s1_types, strict=True):
                s1_class = classify_s1(types, s2_class)
                s1_index = len(domains)
                s1_first = len(hosts)
                for leaf in s1.leaves:
                    for host in leaf.hosts:
                        if catalog is not None and host.gpu_type not in catalog:
                            raise ValueError(
                                f"host {host.name!r} has GPU type {host.gpu_type!r} unknown to the "
                                f"catalog: use one of {catalog.names()} or add it to the catalog"
                            )
                        hosts.append(
                            HostInfo(
                                index=len(hosts),
                                name=host.name,
                                gpu_type=host.gpu_type,
                                gpus=host.gpus,
                                node_id=host.node_id,
                                s0=leaf.name,
                                s1=s1.name,
                                s2=s2.name,
                                sub_cluster=sub_cluster,
                                s1_index=s1_index,
                                s2_index=s2_index,
                                subgroup=s1_class,
                            )
                        )
                domains.append(
                    Domain(
                        index=s1_index,
                        level=AffinityLevel.S1,
                        name=s1.name,
                        parent=s2_index,
                        subgroup=s1_class,
                        parent_subgroup=s2_class,
                        sub_cluster=sub_cluster,
                        gpu_types=tuple(sorted(types)),
                        hosts=tuple(range(s1_first, len(hosts))),
                    )
                )
            domains[s2_index] = Domain(
                index=s2_index,
                level=AffinityLevel.S2,
                name=s2.name,
                parent=ROOT_INDEX,
                subgroup=s2_class,
                parent_subgroup=s2_class,
                sub_cluster=sub_cluster,
                gpu_types=tuple(sorted(set().union(*s1_types))),
                hosts=tuple(range(s2_first, len(hosts))),
            )
        domains[ROOT_INDEX] = Domain(
            index=ROOT_INDEX,
            level=AffinityLevel.NONE,
            name=ROOT,
            parent=None,
            subgroup=SubgroupClass.LOW,
            parent_subgroup=SubgroupClass.LOW,
            sub_cluster=CLUSTER_WIDE,
            gpu_types=tuple(sorted({h.gpu_type for h in hosts})),
            hosts=tuple(range(len(hosts))),
        )
        return cls._assemble(tuple(hosts), tuple(d for d in domains if d is not None))

    @classmethod
    def _assemble(cls, hosts: tuple[HostInfo, ...], domains: tuple[Domain, ...]) -> ClusterGraph:
        gpu_types = domains[ROOT_INDEX].gpu_types
        by_level: dict[AffinityLevel, list[int]] = {level: [] for level in AffinityLevel}
        with_type: dict[tuple[AffinityLevel, str], list[int]] = {}
        order: dict[tuple[int, str, bool], tuple[int, ...]] = {}
        for dom in domains:
            by_level[dom.level].append(dom.index)
            for t in dom.gpu_types:
                with_type.setdefault((dom.level, t), []).append(dom.index)
            per_type: dict[str, list[int]] = {}
            for h in dom.hosts:
                per_type.setdefault(hosts[h].gpu_type, []).append(h)
            for t, members in per_type.items():
                # Topology-aware: cheap subgroups first, then tree order (keeps a DG packed
                # under few leaf switches). Blind: tree order only.
                order[(dom.index, t, False)] = tuple(members)
                order[(dom.index, t, True)] = tuple(
                    sorted(members, key=lambda h: (hosts[h].subgroup, h))
                )
        return cls(
            graph=_build_digraph(hosts, domains),
            hosts=hosts,
            domains=domains,
            gpu_types=gpu_types,
            host_index={h.name: h.index for h in hosts},
            domain_index={(d.level, d.name): d.index for d in domains},
            type_index={t: i for i, t in enumerate(gpu_types)},
            _by_level={level: tuple(ix) for level, ix in by_level.items()},
            _with_type={key: tuple(ix) for key, ix in with_type.items()},
            _order=order,
        )

    def host(self, name: str) -> HostInfo:
        return self.hosts[self.host_index[name]]

    def domain(self, level: AffinityLevel, name: str) -> Domain:
        return self.domains[self.domain_index[(level, name)]]

    def domain_id(self, level: AffinityLevel, name: str) -> int | None:
        """Index of a domain, or None when the topology no longer has it."""
        return self.domain_index.get((level, name))

    def domains_at(self, level: AffinityLevel) -> tuple[int, ...]:
        return self._by_level[level]

    def domains_with(self, level: AffinityLevel, gpu_type: str) -> tuple[int, ...]:
        """Domains at ``level`` holding at least one host of ``gpu_type``."""
        return self._with_type.get((level, gpu_type), ())

    def hosts_in(self, domain: int, gpu_type: str, topology_aware: bool = True) -> tuple[int, ...]:
        """Hosts of one GPU type in a domain, in the order placement fills them."""
        return self._order.get((domain, gpu_type, topology_aware), ())

    def total_gpus(self) -> int:
        return sum(h.gpus for h in self.hosts)


def _build_digraph(hosts: tuple[HostInfo, ...], domains: tuple[Domain, ...]) -> nx.DiGraph:
    """root -> S2 -> S1 -> S0 -> host; nodes are (level, name) pairs, since names are unique
    per level only."""
    g = nx.DiGraph()
    root = _node("root", ROOT)
    g.add_node(root, level="root")
    nodes: list[tuple[tuple[str, str], dict[str, object]]] = []
    edges: list[tuple[tuple[str, str], tuple[str, str]]] = []

    def key_of(dom: Domain) -> tuple[str, str]:
        return root if dom.index == ROOT_INDEX else _node(dom.level.value, dom.name)

    for dom in domains:
        if dom.parent is not None:
            nodes.append((key_of(dom), {"level": dom.level.value, "subgroup": dom.subgroup}))
            edges.append((key_of(domains[dom.parent]), key_of(dom)))
    seen_leaves: set[str] = set()
    for h in hosts:
        leaf = _node("S0", h.s0)
        if h.s0 not in seen_leaves:
            seen_leaves.add(h.s0)
            nodes.append((leaf, {"level": "S0"}))
            edges.append((_node("S1", h.s1), leaf))
        key = _node("host", h.name)
        nodes.append(
            (key, {"level": "host", "gpu_type": h.gpu_type, "gpus": h.gpus, "node_id": h.node_id})
        )
        edges.append((leaf, key))
    g.add_nodes_from(nodes)
    g.add_edges_from(edges)
    return g
