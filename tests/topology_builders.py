"""Small builders shared by the topology and placement tests (this module holds no tests)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from heteroscale_ray.config import AffinityLevel, Role, ServiceSpec, TopologySpec, parse_model
from heteroscale_ray.topology import ClusterGraph, DeploymentGroup, Instance

# s2 name -> s1 name -> hosts as "TYPE" or "TYPE:gpus" (8 GPUs by default), one leaf per S1.
Layout = Mapping[str, Mapping[str, Sequence[str]]]


def make_topology(layout: Layout, sub_clusters: dict[str, list[str]] | None = None) -> TopologySpec:
    """A topology from a compact layout; host k of S1 ``x`` is named ``x-h{k}``."""
    big_pods = []
    for s2, s1s in layout.items():
        mini_pods = []
        for s1, hosts in s1s.items():
            host_specs = []
            for k, text in enumerate(hosts):
                gpu_type, _, gpus = text.partition(":")
                host_specs.append(
                    {"name": f"{s1}-h{k}", "gpu_type": gpu_type, "gpus": int(gpus or 8)}
                )
            mini_pods.append({"name": s1, "leaves": [{"name": f"s0-{s1}", "hosts": host_specs}]})
        big_pods.append({"name": s2, "mini_pods": mini_pods})
    data: dict[str, Any] = {"big_pods": big_pods}
    if sub_clusters is not None:
        data["sub_clusters"] = sub_clusters
    return parse_model(TopologySpec, data, "test layout")


def make_graph(layout: Layout) -> ClusterGraph:
    return ClusterGraph.from_topology(make_topology(layout))


def make_service(name: str = "svc", **overrides: Any) -> ServiceSpec:
    """A valid service; override any field, e.g. ``prefill={"gpu_types": ["L20"]}``."""
    data: dict[str, Any] = {
        "name": name,
        "priority": 0,
        "slo": {"ttft_s": 1.0, "tbt_s": 0.05},
        "pd_ratio": "1:1",
        "prefill": {"gpu_types": ["H20"]},
        "decode": {"gpu_types": ["H20"]},
        "affinity": "S1",
        "policy": {"target_per_instance": 1000},
    }
    data.update(overrides)
    return parse_model(ServiceSpec, data, "test service")


def services(*specs: ServiceSpec) -> dict[str, ServiceSpec]:
    return {s.name: s for s in specs}


def make_dg(
    dg_id: str,
    domain: str,
    placements: Iterable[tuple[str, str, Sequence[int]]],
    *,
    level: AffinityLevel = AffinityLevel.S1,
    types: tuple[str, str] = ("H20", "H20"),
    draining: bool = False,
    ids: Sequence[str] | None = None,
) -> DeploymentGroup:
    """A DG from (role letter 'p'/'d', host, GPU indices) triples; instance ids follow the
    core's scheme unless given."""
    instances = []
    counters = {"p": 0, "d": 0}
    for k, (letter, host, gpus) in enumerate(placements):
        role = Role.PREFILL if letter == "p" else Role.DECODE
        ident = ids[k] if ids is not None else f"{dg_id}-{letter}{counters[letter]}"
        instances.append(Instance(ident, role, host, tuple(gpus)))
        counters[letter] += 1
    service = dg_id.rpartition("-dg")[0]
    return DeploymentGroup(
        dg_id=dg_id,
        service=service,
        domain=domain,
        level=level,
        prefill_gpu_type=types[0],
        decode_gpu_type=types[1],
        instances=tuple(instances),
        draining=draining,
    )


def one_gpu_each(host: str, roles: str, first_gpu: int = 0) -> list[tuple[str, str, list[int]]]:
    """Placements for ``make_dg``: ``"pdd"`` on a host = p on GPU 0, d on GPU 1, d on GPU 2."""
    return [(letter, host, [first_gpu + k]) for k, letter in enumerate(roles)]


def counts(dgs: Iterable[DeploymentGroup], service: str) -> tuple[int, int]:
    p = d = 0
    for dg in dgs:
        if dg.service == service:
            p += dg.count(Role.PREFILL)
            d += dg.count(Role.DECODE)
    return p, d


def used_gpus(dgs: Iterable[DeploymentGroup]) -> list[tuple[str, int]]:
    return [(i.host, g) for dg in dgs for i in dg.instances for g in i.gpus]
