"""The cluster graph, RDMA subgroup classes and the per-cycle free-capacity ledger."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest
from topology_builders import make_dg, make_graph, make_topology

from heteroscale_ray.config import AffinityLevel, load_topology, synthetic_topology
from heteroscale_ray.topology import (
    CLUSTER_WIDE,
    CapacityError,
    ClusterGraph,
    FreeCapacity,
    SubgroupClass,
    classify_s1,
    classify_s2,
    classify_topology,
)

ROOT_DIR = Path(__file__).resolve().parents[1]
LOW, MEDIUM, HIGH = SubgroupClass.LOW, SubgroupClass.MEDIUM, SubgroupClass.HIGH

# One S2 per subgroup shape: uniform, mixed-per-S1, mixed-inside-an-S1.
THREE_SHAPES = {
    "s2-low": {"s1-low-0": ["H20", "H20"], "s1-low-1": ["H20"]},
    "s2-med": {"s1-med-0": ["H20", "H20"], "s1-med-1": ["L20"]},
    "s2-high": {"s1-high-0": ["H20", "L20"], "s1-high-1": ["L20"]},
}


# -- graph ---------------------------------------------------------------------------------


def test_graph_from_example_yaml() -> None:
    graph = ClusterGraph.from_topology(load_topology(ROOT_DIR / "examples/topology.yaml"))
    g = graph.graph
    assert nx.is_arborescence(g)
    assert len(graph.hosts) == 8
    assert graph.total_gpus() == 64
    assert graph.gpu_types == ("H20", "L20")
    host = g.nodes[("host", "b0")]
    assert (host["gpu_type"], host["gpus"]) == ("L20", 8)
    assert nx.shortest_path(g, ("root", "root"), ("host", "b2")) == [
        ("root", "root"),
        ("S2", "s2-b"),
        ("S1", "s1-b0"),
        ("S0", "s0-b0-1"),
        ("host", "b2"),
    ]
    assert graph.domain(AffinityLevel.S2, "s2-a").subgroup is LOW
    assert graph.domain(AffinityLevel.S2, "s2-b").subgroup is HIGH
    assert graph.domain(AffinityLevel.S1, "s1-b0").subgroup is HIGH
    assert graph.domain(AffinityLevel.S1, "s1-b0").sub_cluster == "s2-b"
    assert graph.domain(AffinityLevel.NONE, "root").sub_cluster == CLUSTER_WIDE


def test_graph_from_synthetic_topology_matches_spec() -> None:
    spec = synthetic_topology(20_000, seed=3)
    graph = ClusterGraph.from_topology(spec)
    assert graph.total_gpus() == spec.total_gpus()
    assert len(graph.hosts) == sum(1 for _ in spec.hosts())
    assert nx.is_arborescence(graph.graph)
    # Every host's indexes agree with the tree, and domain classes agree with classify_topology.
    classes = classify_topology(spec)
    for s2, s1, _, host in spec.hosts():
        info = graph.host(host.name)
        assert graph.domains[info.s1_index].name == s1
        assert graph.domains[info.s2_index].name == s2
        assert info.subgroup is classes.s1[s1]
    for name, cls in classes.s2.items():
        assert graph.domain(AffinityLevel.S2, name).subgroup is cls
    assert {LOW, MEDIUM, HIGH} <= set(classes.s2.values())


def test_domains_with_type_and_placement_order() -> None:
    graph = make_graph(THREE_SHAPES)
    s1_with_l20 = [graph.domains[d].name for d in graph.domains_with(AffinityLevel.S1, "L20")]
    assert s1_with_l20 == ["s1-med-1", "s1-high-0", "s1-high-1"]
    high = graph.domain_id(AffinityLevel.S2, "s2-high")
    names = [graph.hosts[h].name for h in graph.hosts_in(high, "L20", topology_aware=True)]
    # The uniform S1 (cheaper) comes before the mixed S1 it shares the big-pod with.
    assert names == ["s1-high-1-h0", "s1-high-0-h1"]
    blind = [graph.hosts[h].name for h in graph.hosts_in(high, "L20", topology_aware=False)]
    assert blind == ["s1-high-0-h1", "s1-high-1-h0"]


def test_sub_clusters_follow_the_spec() -> None:
    spec = make_topology(
        THREE_SHAPES, sub_clusters={"east": ["s2-low", "s2-med"], "west": ["s2-high"]}
    )
    graph = ClusterGraph.from_topology(spec)
    assert graph.host("s1-med-1-h0").sub_cluster == "east"
    assert graph.domain(AffinityLevel.S1, "s1-high-1").sub_cluster == "west"


def test_unknown_gpu_type_rejected_with_catalog() -> None:
    from heteroscale_ray.config import DEFAULT_CATALOG

    spec = make_topology({"s2": {"s1": ["Z99"]}})
    with pytest.raises(ValueError, match="Z99.*unknown to the catalog"):
        ClusterGraph.from_topology(spec, DEFAULT_CATALOG)


# -- subgroups -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("s1_types", "expected"),
    [
        ([{"H20"}], LOW),
        ([{"H20"}, {"H20"}, {"H20"}], LOW),
        ([{"H20"}, {"L20"}], MEDIUM),
        ([{"H20"}, {"L20"}, {"A100"}], MEDIUM),
        ([{"H20", "L20"}], HIGH),
        ([{"H20"}, {"H20", "L20"}], HIGH),
        ([{"H20"}, {"L20"}, {"A100", "H800"}], HIGH),
    ],
    ids=[
        "one-s1-uniform",
        "uniform-s2",
        "per-s1-uniform-mixed-s2",
        "three-types-per-s1",
        "mixed-s1",
        "one-mixed-s1-among-uniform",
        "mixed-s1-in-medium-s2",
    ],
)
def test_classify_s2(s1_types: list[set[str]], expected: SubgroupClass) -> None:
    assert classify_s2(s1_types) is expected


@pytest.mark.parametrize(
    ("types", "s2_class", "expected"),
    [
        ({"H20"}, LOW, LOW),
        ({"H20"}, MEDIUM, MEDIUM),
        ({"H20"}, HIGH, MEDIUM),  # a uniform S1 is never the scarce mixed S1 itself
        ({"H20", "L20"}, HIGH, HIGH),
    ],
)
def test_classify_s1(types: set[str], s2_class: SubgroupClass, expected: SubgroupClass) -> None:
    assert classify_s1(types, s2_class) is expected


def test_classify_topology_three_shapes() -> None:
    classes = classify_topology(make_topology(THREE_SHAPES))
    assert dict(classes.s2) == {"s2-low": LOW, "s2-med": MEDIUM, "s2-high": HIGH}
    assert dict(classes.s1) == {
        "s1-low-0": LOW,
        "s1-low-1": LOW,
        "s1-med-0": MEDIUM,
        "s1-med-1": MEDIUM,
        "s1-high-0": HIGH,
        "s1-high-1": MEDIUM,
    }


def test_classify_example_yaml() -> None:
    classes = classify_topology(load_topology(ROOT_DIR / "examples/topology.yaml"))
    assert dict(classes.s2) == {"s2-a": LOW, "s2-b": HIGH}
    assert classes.s1["s1-b0"] is HIGH


# -- free capacity -------------------------------------------------------------------------


def test_free_capacity_subtracts_current_instances() -> None:
    graph = make_graph(THREE_SHAPES)
    dg = make_dg(
        "svc-dg0", "s1-high-0", [("p", "s1-high-0-h1", [0, 1]), ("d", "s1-high-0-h0", [3])]
    )
    cap = FreeCapacity(graph, [dg])
    high0 = graph.domain_id(AffinityLevel.S1, "s1-high-0")
    s2_high = graph.domain_id(AffinityLevel.S2, "s2-high")
    assert cap.free_gpus(high0, "L20") == 6
    assert cap.free_gpus(high0, "H20") == 7
    assert cap.free_gpus(s2_high, "L20") == 14
    assert cap.free_gpus(0, "H20") == 8 * 6 - 1
    assert cap.free_indices("s1-high-0-h1") == (2, 3, 4, 5, 6, 7)
    assert cap.slots(high0, "L20", 4) == 1
    assert cap.slots(high0, "A100", 1) == 0


@pytest.mark.parametrize(
    ("placements", "message"),
    [
        ([("p", "s1-low-1-h0", [0]), ("d", "s1-low-1-h0", [0])], "already holds"),
        ([("p", "s1-low-1-h0", [8])], "has 8 GPUs"),
        ([("p", "s1-low-1-h0", [-1])], "has 8 GPUs"),
    ],
    ids=["gpu-used-twice", "index-too-high", "negative-index"],
)
def test_free_capacity_rejects_inconsistent_state(placements: list, message: str) -> None:
    graph = make_graph(THREE_SHAPES)
    with pytest.raises(CapacityError, match=message):
        FreeCapacity(graph, [make_dg("svc-dg0", "s1-low-1", placements)])


def test_free_capacity_ignores_hosts_that_left() -> None:
    graph = make_graph(THREE_SHAPES)
    cap = FreeCapacity(graph, [make_dg("svc-dg0", "s1-low-1", [("p", "gone-host", [0])])])
    assert cap.free_gpus(0, "H20") == 8 * 6


def test_take_is_first_fit_and_release_restores() -> None:
    graph = make_graph({"s2": {"s1": ["H20:4", "H20:4"]}})
    cap = FreeCapacity(graph)
    s1 = graph.domain_id(AffinityLevel.S1, "s1")
    first = cap.take(s1, "H20", 3)
    assert first is not None
    assert (graph.hosts[first[0]].name, first[1]) == ("s1-h0", (0, 1, 2))
    second = cap.take(s1, "H20", 3)  # only one GPU left on h0: moves on to h1
    assert second is not None
    assert (graph.hosts[second[0]].name, second[1]) == ("s1-h1", (0, 1, 2))
    assert cap.take(s1, "H20", 3) is None
    assert cap.slots(s1, "H20", 1) == 2
    cap.release(*first)
    assert cap.slots(s1, "H20", 3) == 1
    again = cap.take(s1, "H20", 3)
    assert again is not None
    assert graph.hosts[again[0]].name == "s1-h0"
