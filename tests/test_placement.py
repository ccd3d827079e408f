"""The placement cycle: grow vs open, affinity, type preference, scarcity, reservation,
priority under shortage, scale-in victims, DG deletion, deterministic ids, blind baseline."""

from __future__ import annotations

from typing import Any

import pytest
from topology_builders import (
    counts,
    make_dg,
    make_graph,
    make_service,
    make_topology,
    one_gpu_each,
    services,
    used_gpus,
)

from heteroscale_ray.config import DEFAULT_CATALOG, AffinityLevel, Role
from heteroscale_ray.topology import (
    CLUSTER_WIDE,
    ROOT,
    AddInstances,
    CreateDG,
    DeleteDG,
    DeploymentGroup,
    FreeCapacity,
    PlacementPlan,
    RemoveInstances,
    ScaleRequest,
    Unplaced,
    UnplacedReason,
    place_dg,
    plan_cycle,
)

P, D = Role.PREFILL, Role.DECODE

TWO_S1 = {"s2": {"s1-a": ["H20", "H20"], "s1-b": ["H20", "H20"]}}
THREE_SHAPES = {
    "s2-low": {"s1-low-0": ["H20", "H20"], "s1-low-1": ["H20", "H20"]},
    "s2-med": {"s1-med-0": ["H20", "H20"], "s1-med-1": ["L20", "L20"]},
    "s2-high": {"s1-high-0": ["H20", "L20"], "s1-high-1": ["H20"]},
}


def run(
    layout: Any,
    specs: list,
    dgs: list[DeploymentGroup],
    requests: list[ScaleRequest],
    **kwargs: Any,
) -> tuple[PlacementPlan, tuple[DeploymentGroup, ...]]:
    graph = make_graph(layout) if isinstance(layout, dict) else layout
    plan = plan_cycle(graph, services(*specs), dgs, requests, **kwargs)
    return plan, plan.apply(dgs)


def actions_of(plan: PlacementPlan, kind: type) -> list:
    return [a for a in plan.all_actions() if isinstance(a, kind)]


def by_id(dgs: tuple[DeploymentGroup, ...]) -> dict[str, DeploymentGroup]:
    return {dg.dg_id: dg for dg in dgs}


def host_s1(dg: DeploymentGroup) -> set[str]:
    """S1 names of a DG's hosts (builder hosts are named '<s1>-h<k>')."""
    return {inst.host.rpartition("-h")[0] for inst in dg.instances}


# -- grow vs open --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dg_max", "created", "sizes"),
    [
        (None, [], {"svc-dg0": 4}),
        (2, ["svc-dg1"], {"svc-dg0": 2, "svc-dg1": 2}),
    ],
    ids=["grows-existing", "opens-new-at-dg-max"],
)
def test_grow_existing_or_open_new(dg_max: int | None, created: list[str], sizes: dict) -> None:
    existing = make_dg("svc-dg0", "s1-a", [("p", "s1-a-h0", [0]), ("d", "s1-a-h0", [1])])
    spec = make_service(dg_max_instances=dg_max)
    plan, after = run(TWO_S1, [spec], [existing], [ScaleRequest("svc", 2, 2)])
    assert [a.dg.dg_id for a in actions_of(plan, CreateDG)] == created
    assert {dg.dg_id: dg.size for dg in after} == sizes
    assert counts(after, "svc") == (2, 2)


def test_new_dg_takes_the_tightest_domain_that_fits() -> None:
    # s1-a already has one GPU used, so it is the tighter fit for a 1+1 DG.
    other = make_dg("other-dg0", "s1-a", [("p", "s1-a-h0", [0])])
    plan, after = run(TWO_S1, [make_service()], [other], [ScaleRequest("svc", 1, 1)])
    assert by_id(after)["svc-dg0"].domain == "s1-a"


def test_new_dg_prefers_a_domain_taking_the_whole_request() -> None:
    busy = [make_dg("other-dg0", "s1-a", [("p", "s1-a-h0", range(8)), ("d", "s1-a-h1", range(4))])]
    # 6 + 6 instances: s1-a has only 4 GPUs left, s1-b takes them all.
    plan, after = run(TWO_S1, [make_service()], busy, [ScaleRequest("svc", 6, 6)])
    assert by_id(after)["svc-dg0"].domain == "s1-b"
    assert len(actions_of(plan, CreateDG)) == 1


# -- affinity ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("affinity", "n_dgs", "level"),
    [("S1", 2, AffinityLevel.S1), ("S2", 1, AffinityLevel.S2), ("none", 1, AffinityLevel.NONE)],
)
def test_affinity_keeps_each_dg_in_one_domain(
    affinity: str, n_dgs: int, level: AffinityLevel
) -> None:
    # 24 instances do not fit in one S1 (16 GPUs) but do fit in the S2 (32 GPUs).
    spec = make_service(affinity=affinity)
    plan, after = run(TWO_S1, [spec], [], [ScaleRequest("svc", 12, 12)])
    assert not plan.unplaced
    assert len(after) == n_dgs
    for dg in after:
        assert dg.level is level
        if level is AffinityLevel.S1:
            assert host_s1(dg) == {dg.domain}
    assert counts(after, "svc") == (12, 12)


# -- GPU type preference -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (2, {("L20", "H20"): (2, 2)}),
        (6, {("L20", "H20"): (4, 4), ("H20", "H20"): (2, 2)}),
    ],
    ids=["preferred-types", "fallback-when-preferred-runs-out"],
)
def test_type_preference_and_fallback(target: int, expected: dict) -> None:
    layout = {"s2": {"s1-l": ["L20:4"], "s1-h": ["H20:8", "H20:8"]}}
    spec = make_service(
        affinity="S2", prefill={"gpu_types": ["L20", "H20"]}, decode={"gpu_types": ["H20"]}
    )
    plan, after = run(layout, [spec], [], [ScaleRequest("svc", target, target)])
    assert not plan.unplaced
    got = {(dg.prefill_gpu_type, dg.decode_gpu_type): (dg.count(P), dg.count(D)) for dg in after}
    assert got == expected
    for dg in after:  # one GPU type per role inside a DG
        for inst in dg.instances:
            host_type = "L20" if inst.host.startswith("s1-l") else "H20"
            assert host_type == dg.gpu_type(inst.role)


# -- least high-priority capacity ----------------------------------------------------------


@pytest.mark.parametrize(
    ("affinity", "prefill", "decode", "domain"),
    [
        ("S1", ["H20"], ["H20"], "s1-low-0"),  # uniform need: a LOW S1, not the mixed one
        ("S2", ["H20"], ["H20"], "s2-low"),
        ("S2", ["L20"], ["H20"], "s2-med"),  # heterogeneous at S2: MEDIUM before HIGH
        ("S1", ["L20"], ["H20"], "s1-high-0"),  # only a mixed S1 offers L20 + H20 in one S1
        ("S1", ["L20", "H20"], ["H20"], "s1-high-0"),  # preferred pair first, where it exists
        ("S1", ["L20"], ["L20"], "s1-med-1"),  # uniform L20 S1 in a MEDIUM S2 before HIGH S2's
    ],
)
def test_least_high_priority_capacity(
    affinity: str, prefill: list[str], decode: list[str], domain: str
) -> None:
    spec = make_service(
        affinity=affinity, prefill={"gpu_types": prefill}, decode={"gpu_types": decode}
    )
    plan, after = run(THREE_SHAPES, [spec], [], [ScaleRequest("svc", 2, 2)])
    assert not plan.unplaced
    assert [dg.domain for dg in after] == [domain]


def test_low_service_does_not_take_the_only_mixed_s1() -> None:
    """A uniform-type service fills LOW capacity; a later mixed service still finds its S1."""
    uniform = make_service("uniform", priority=5)
    mixed = make_service("mixed", priority=1, prefill={"gpu_types": ["L20"]})
    plan, after = run(
        THREE_SHAPES,
        [uniform, mixed],
        [],
        [ScaleRequest("uniform", 4, 4), ScaleRequest("mixed", 4, 4)],
    )
    assert not plan.unplaced
    domains = {dg.service: dg.domain for dg in after}
    assert domains == {"uniform": "s1-low-0", "mixed": "s1-high-0"}


# -- virtual reservation and priority ------------------------------------------------------


def test_virtual_reservation_across_requests() -> None:
    layout = {"s2": {"s1": ["H20"]}}
    a, b = make_service("a"), make_service("b")
    plan, after = run(layout, [a, b], [], [ScaleRequest("b", 3, 3), ScaleRequest("a", 3, 3)])
    gpus = used_gpus(after)
    assert len(gpus) == len(set(gpus)) == 8
    assert counts(after, "a") == (3, 3)  # same priority: by name, 'a' first
    assert counts(after, "b") == (1, 1)
    assert plan.unplaced == (
        Unplaced("b", P, 2, UnplacedReason.NO_CAPACITY, plan.unplaced[0].detail),
        Unplaced("b", D, 2, UnplacedReason.NO_CAPACITY, plan.unplaced[1].detail),
    )


@pytest.mark.parametrize(
    ("layout", "request_", "placed", "unplaced"),
    [
        (
            {"s2": {"s1": ["H20", "L20:2"]}},
            ScaleRequest("low", 3, 3),
            (2, 2),
            [(P, 1, UnplacedReason.NO_CAPACITY), (D, 1, UnplacedReason.NO_CAPACITY)],
        ),
        (
            {"s2": {"s1": ["H20:14", "L20:2"]}},
            ScaleRequest("low", 4, 4),
            (2, 2),
            [(P, 2, UnplacedReason.NO_CAPACITY), (D, 2, UnplacedReason.HELD_FOR_RATIO)],
        ),
    ],
    ids=["both-roles-short", "prefill-short-decode-held-for-ratio"],
)
def test_priority_order_when_short(
    layout: dict, request_: ScaleRequest, placed: tuple, unplaced: list
) -> None:
    high = make_service("zeta", priority=10)  # sorts after 'low' by name, first by priority
    low = make_service(
        "low", priority=1, prefill={"gpu_types": ["L20"]}, decode={"gpu_types": ["H20", "L20"]}
    )
    plan, after = run(layout, [high, low], [], [request_, ScaleRequest("zeta", 3, 3)])
    assert counts(after, "zeta") == (3, 3)
    assert counts(after, "low") == placed
    assert [(u.role, u.count, u.reason) for u in plan.unplaced] == unplaced
    assert all(u.service == "low" and u.detail for u in plan.unplaced)


def test_unknown_service_is_reported() -> None:
    plan, after = run(TWO_S1, [make_service()], [], [ScaleRequest("ghost", 1, 2)])
    assert after == ()
    assert [(u.service, u.role, u.count, u.reason) for u in plan.unplaced] == [
        ("ghost", P, 1, UnplacedReason.UNKNOWN_SERVICE),
        ("ghost", D, 2, UnplacedReason.UNKNOWN_SERVICE),
    ]


def test_a_gpu_type_unknown_to_the_catalog_is_rejected() -> None:
    spec = make_service(decode={"gpu_types": ["Z99"]})
    with pytest.raises(ValueError, match=r"service 'svc' decode.gpu_types names unknown GPU 'Z99'"):
        plan_cycle(make_graph(TWO_S1), services(spec), [], [], DEFAULT_CATALOG)


# -- scale-in ------------------------------------------------------------------------------

LOW_DG = make_dg("svc-dg0", "s1-low-0", [("p", "s1-low-0-h0", [0]), ("d", "s1-low-0-h0", [1])])
HIGH_DG = make_dg("svc-dg1", "s1-high-0", [("p", "s1-high-0-h0", [0]), ("d", "s1-high-0-h0", [1])])
BIG_LOW_DG = make_dg(
    "svc-dg2",
    "s1-low-1",
    [("p", "s1-low-1-h0", [0]), ("d", "s1-low-1-h0", [1])]
    + [("p", "s1-low-1-h0", [2]), ("d", "s1-low-1-h0", [3])],
)
DRAINING_LOW_DG = make_dg(
    "svc-dg3", "s1-low-1", [("p", "s1-low-1-h1", [0]), ("d", "s1-low-1-h1", [1])], draining=True
)


@pytest.mark.parametrize(
    ("dgs", "target", "deleted", "left"),
    [
        ([LOW_DG, HIGH_DG], (1, 1), ["svc-dg1"], {"svc-dg0": 2}),
        ([HIGH_DG, LOW_DG], (1, 1), ["svc-dg1"], {"svc-dg0": 2}),
        ([LOW_DG, HIGH_DG, DRAINING_LOW_DG], (2, 2), ["svc-dg3"], {"svc-dg0": 2, "svc-dg1": 2}),
        ([BIG_LOW_DG, LOW_DG], (2, 2), ["svc-dg0"], {"svc-dg2": 4}),
        ([BIG_LOW_DG, LOW_DG], (0, 0), ["svc-dg2", "svc-dg0"], {}),
        ([BIG_LOW_DG], (1, 1), [], {"svc-dg2": 2}),
    ],
    ids=[
        "high-subgroup-first",
        "input-order-irrelevant",
        "draining-first",
        "smallest-first",
        "to-zero-deletes-all",
        "shrinks-in-ratio-units",
    ],
)
def test_scale_in_victims(dgs: list, target: tuple, deleted: list, left: dict) -> None:
    plan, after = run(THREE_SHAPES, [make_service()], dgs, [ScaleRequest("svc", *target)])
    assert sorted(a.dg_id for a in actions_of(plan, DeleteDG)) == sorted(deleted)
    assert {dg.dg_id: dg.size for dg in after} == left
    for dg in after:
        assert dg.count(P) == dg.count(D)  # ratio 1:1 kept in every DG


def test_scale_in_single_role_takes_from_the_dg_with_most_of_it() -> None:
    spec = make_service(pd_ratio="1:2")
    heavy = make_dg("svc-dg0", "s1-low-0", one_gpu_each("s1-low-0-h0", "pddd"))
    balanced = make_dg("svc-dg1", "s1-high-0", one_gpu_each("s1-high-0-h0", "pdd"))
    plan, after = run(THREE_SHAPES, [spec], [heavy, balanced], [ScaleRequest("svc", 2, 4)])
    removed = actions_of(plan, RemoveInstances)
    assert [(a.dg_id, a.role) for a in removed] == [("svc-dg0", D)]
    assert {dg.dg_id: (dg.count(P), dg.count(D)) for dg in after} == {
        "svc-dg0": (1, 2),
        "svc-dg1": (1, 2),
    }


def test_scale_in_of_one_role_takes_from_the_dg_that_keeps_one() -> None:
    """Both DGs are on ratio, so the smaller one sorts first; taking its only prefill would
    leave it decode-only, so the prefill comes from the 2P+2D DG instead."""
    big = make_dg("svc-dg0", "s1-low-0", one_gpu_each("s1-low-0-h0", "ppdd"))
    small = make_dg("svc-dg1", "s1-low-1", one_gpu_each("s1-low-1-h0", "pd"))
    plan, after = run(THREE_SHAPES, [make_service()], [big, small], [ScaleRequest("svc", 2, 3)])
    assert [(a.dg_id, a.role) for a in actions_of(plan, RemoveInstances)] == [("svc-dg0", P)]
    assert not actions_of(plan, DeleteDG) and not plan.unplaced
    assert {dg.dg_id: (dg.count(P), dg.count(D)) for dg in after} == {
        "svc-dg0": (1, 2),
        "svc-dg1": (1, 1),
    }


def test_a_scale_in_never_takes_the_only_prefill_of_a_dg_that_keeps_decode() -> None:
    """The 1P+3D DG sorts first (smaller), but a 1:2 unit from it takes its only prefill and
    leaves 2 decode that must be placed again, taking prefill from the other DG to open new
    ones: a 4P+50D fleet asked for 3P+47D lost three of its four ready prefill this way.
    The unit comes from the DG that keeps both roles."""
    spec = make_service(pd_ratio="1:2")
    big = make_dg("svc-dg0", "s1-low-0", one_gpu_each("s1-low-0-h0", "ppdddd"))
    small = make_dg("svc-dg1", "s1-low-1", one_gpu_each("s1-low-1-h0", "pddd"))
    plan, after = run(THREE_SHAPES, [spec], [big, small], [ScaleRequest("svc", 2, 6)])
    assert not actions_of(plan, DeleteDG) and not actions_of(plan, AddInstances)
    assert {(a.dg_id, a.role) for a in actions_of(plan, RemoveInstances)} == {
        ("svc-dg0", P),
        ("svc-dg0", D),
    }
    assert {dg.dg_id: (dg.count(P), dg.count(D)) for dg in after} == {
        "svc-dg0": (1, 3),
        "svc-dg1": (1, 3),
    }


def test_scale_in_removes_instances_on_scarce_hosts_first() -> None:
    spec = make_service(affinity="S2")
    dg = make_dg(
        "svc-dg0",
        "s2-high",
        [("d", "s1-high-1-h0", [0]), ("d", "s1-high-0-h0", [0]), ("p", "s1-high-1-h0", [1])],
        level=AffinityLevel.S2,
    )
    plan, _ = run(THREE_SHAPES, [spec], [dg], [ScaleRequest("svc", 1, 1)])
    assert actions_of(plan, RemoveInstances) == [RemoveInstances("svc-dg0", D, ("svc-dg0-d1",))]


def test_freed_capacity_is_not_reused_in_the_same_cycle() -> None:
    layout = {"s2": {"s1": ["H20:4"]}}
    full = make_dg("old-dg0", "s1", one_gpu_each("s1-h0", "ppdd"))
    old, new = make_service("old"), make_service("new", priority=-1)
    requests = [ScaleRequest("old", 1, 1), ScaleRequest("new", 1, 1)]
    plan, after = run(layout, [old, new], [full], requests)
    assert plan.removed() == 2 and plan.added() == 0
    assert {(u.service, u.reason) for u in plan.unplaced} == {("new", UnplacedReason.NO_CAPACITY)}
    # Next cycle rebuilds capacity from the new state: now it fits.
    plan2, after2 = run(layout, [old, new], list(after), requests)
    assert not plan2.unplaced
    assert counts(after2, "new") == (1, 1)


def test_mixed_request_grows_one_role_and_shrinks_the_other() -> None:
    dg = make_dg("svc-dg0", "s1-a", one_gpu_each("s1-a-h0", "pdd"))
    plan, after = run(TWO_S1, [make_service(pd_ratio="1:1")], [dg], [ScaleRequest("svc", 2, 1)])
    assert counts(after, "svc") == (2, 1)
    assert [type(a) for a in plan.all_actions()] == [AddInstances, RemoveInstances]
    assert len(after) == 1


# -- ratio-keeping growth ------------------------------------------------------------------


def test_single_role_growth_goes_where_it_restores_the_ratio() -> None:
    spec = make_service(pd_ratio="1:2")
    full = make_dg("svc-dg0", "s1-a", one_gpu_each("s1-a-h0", "pdd"))
    short = make_dg("svc-dg1", "s1-b", [("p", "s1-b-h0", [0]), ("d", "s1-b-h0", [1])])
    plan, after = run(TWO_S1, [spec], [full, short], [ScaleRequest("svc", 2, 4)])
    assert [(a.dg_id, a.role, len(a.instances)) for a in actions_of(plan, AddInstances)] == [
        ("svc-dg1", D, 1)
    ]


def test_a_dg_left_with_the_old_ratio_gives_instances_to_one_short_of_the_new() -> None:
    """The ratio moved from 2:1 to 5:8: the old DG still has 4 prefill for 2 decode (its
    decode carries twice its share), the new one 1 for 6. With the totals where they should
    be, one prefill moves per cycle from the old DG to the new; the totals stay."""
    spec = make_service(pd_ratio="5:8")
    old = make_dg("svc-dg0", "s1-a", one_gpu_each("s1-a-h0", "ppppdd"))
    new = make_dg("svc-dg1", "s1-b", one_gpu_each("s1-b-h0", "pdddddd"))
    plan, after = run(TWO_S1, [spec], [old, new], [ScaleRequest("svc", 5, 8)])
    assert [(a.dg_id, a.role) for a in actions_of(plan, RemoveInstances)] == [("svc-dg0", P)]
    assert [(a.dg_id, a.role) for a in actions_of(plan, AddInstances)] == [("svc-dg1", P)]
    assert counts(after, "svc") == (5, 8)
    shapes = {dg.dg_id: (dg.count(P), dg.count(D)) for dg in after}
    assert shapes == {"svc-dg0": (3, 2), "svc-dg1": (2, 6)}
    plan2, after2 = run(TWO_S1, [spec], list(after), [ScaleRequest("svc", 5, 8)])
    assert {dg.dg_id: (dg.count(P), dg.count(D)) for dg in after2} == {
        "svc-dg0": (2, 2),
        "svc-dg1": (3, 6),
    }


def test_dgs_within_an_instance_of_the_ratio_stay_as_they_are() -> None:
    spec = make_service(pd_ratio="1:2")
    a = make_dg("svc-dg0", "s1-a", one_gpu_each("s1-a-h0", "ppddd"))
    b = make_dg("svc-dg1", "s1-b", one_gpu_each("s1-b-h0", "pddd"))
    plan, _ = run(TWO_S1, [spec], [a, b], [ScaleRequest("svc", 3, 6)])
    assert not list(plan.all_actions())


def test_draining_dg_is_never_grown() -> None:
    draining = make_dg("svc-dg0", "s1-a", one_gpu_each("s1-a-h0", "pd"), draining=True)
    plan, after = run(TWO_S1, [make_service()], [draining], [ScaleRequest("svc", 2, 2)])
    assert [a.dg.dg_id for a in actions_of(plan, CreateDG)] == ["svc-dg1"]
    assert by_id(after)["svc-dg0"].size == 2


def test_multi_gpu_instances_stay_on_one_host() -> None:
    spec = make_service(prefill={"gpu_types": ["H20"], "gpus_per_instance": 4})
    plan, after = run({"s2": {"s1": ["H20:6", "H20:6"]}}, [spec], [], [ScaleRequest("svc", 2, 2)])
    assert not plan.unplaced
    prefill = [i for dg in after for i in dg.instances if i.role is P]
    assert sorted((i.host, len(i.gpus)) for i in prefill) == [("s1-h0", 4), ("s1-h1", 4)]
    gpus = used_gpus(after)
    assert len(gpus) == len(set(gpus)) == 10


# -- ids -----------------------------------------------------------------------------------


def test_dg_and_instance_ids_are_smallest_unused() -> None:
    spec = make_service(dg_max_instances=4)
    dg0 = make_dg("svc-dg0", "s1-a", [("p", "s1-a-h0", [0]), ("d", "s1-a-h0", [1])])
    dg2 = make_dg(
        "svc-dg2",
        "s1-a",
        [("p", "s1-a-h0", [2]), ("d", "s1-a-h0", [3])],
        ids=["svc-dg2-p0", "svc-dg2-d2"],
    )
    plan, after = run(TWO_S1, [spec], [dg0, dg2], [ScaleRequest("svc", 7, 7)])
    created = [a.dg.dg_id for a in actions_of(plan, CreateDG)]
    assert created == ["svc-dg1", "svc-dg3"]
    ids = sorted(i.instance_id for i in by_id(after)["svc-dg2"].instances)
    assert ids == ["svc-dg2-d0", "svc-dg2-d2", "svc-dg2-p0", "svc-dg2-p1"]
    assert [i.instance_id for i in by_id(after)["svc-dg1"].instances] == [
        "svc-dg1-p0",
        "svc-dg1-p1",
        "svc-dg1-d0",
        "svc-dg1-d1",
    ]


def test_same_input_same_plan() -> None:
    graph = make_graph(THREE_SHAPES)
    specs = services(
        make_service("a", priority=2, affinity="S2"),
        make_service("b", prefill={"gpu_types": ["L20", "H20"]}, pd_ratio="1:3"),
        make_service("c", affinity="none", decode={"gpu_types": ["L20", "H20"]}),
    )
    requests = [ScaleRequest("c", 3, 5), ScaleRequest("a", 4, 4), ScaleRequest("b", 2, 6)]
    first = plan_cycle(graph, specs, [], requests)
    again = plan_cycle(make_graph(THREE_SHAPES), specs, [], list(reversed(requests)))
    assert first == again


# -- blind baseline ------------------------------------------------------------------------


def test_topology_blind_placement_ignores_affinity_and_subgroups() -> None:
    # Tree order puts the HIGH big-pod first; blind first-fit takes it, aware does not.
    layout = {
        "s2-high": {"s1-high-0": ["H20", "L20"]},
        "s2-low": {"s1-low-0": ["H20", "H20"]},
    }
    spec = make_service(pd_ratio="1:1")
    aware_plan, aware = run(layout, [spec], [], [ScaleRequest("svc", 6, 6)])
    blind_plan, blind = run(layout, [spec], [], [ScaleRequest("svc", 6, 6)], topology_aware=False)
    assert [dg.domain for dg in aware] == ["s1-low-0"]
    assert [(dg.domain, dg.level) for dg in blind] == [(ROOT, AffinityLevel.NONE)]
    assert {i.host for i in blind[0].instances} == {"s1-high-0-h0", "s1-low-0-h0"}
    assert list(blind_plan.actions) == [CLUSTER_WIDE, "s2-high", "s2-low"]


# -- plan shape, apply, place_dg -----------------------------------------------------------


def test_actions_are_grouped_by_sub_cluster() -> None:
    split = {"east": ["s2-low", "s2-med"], "west": ["s2-high"]}
    topo = make_topology(THREE_SHAPES, sub_clusters=split)
    specs = [make_service("u"), make_service("m", prefill={"gpu_types": ["L20"]})]
    plan = plan_cycle(
        topo, services(*specs), [], [ScaleRequest("u", 1, 1), ScaleRequest("m", 1, 1)]
    )
    assert list(plan.actions) == ["east", "west"]
    assert {a.dg.service for a in plan.actions["east"] if isinstance(a, CreateDG)} == {"u"}
    assert {a.dg.service for a in plan.actions["west"] if isinstance(a, CreateDG)} == {"m"}
    created = [a.dg for a in plan.all_actions() if isinstance(a, CreateDG)]
    assert all(dg.instances == () for dg in created)  # shells; AddInstances carry the GPUs


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (AddInstances("nope", P, ()), "does not have"),
        (RemoveInstances("svc-dg0", P, ("svc-dg0-p9",)), "unknown instances"),
        (DeleteDG("svc-dg0"), "still has instances"),
        (CreateDG(LOW_DG), "already exists"),
    ],
)
def test_apply_rejects_plans_that_do_not_match_the_state(action: Any, message: str) -> None:
    plan = PlacementPlan(actions={"x": (action,)})
    with pytest.raises(ValueError, match=message):
        plan.apply([LOW_DG])


@pytest.mark.parametrize(
    ("requests", "message"),
    [
        (lambda: [ScaleRequest("svc", 1, 1), ScaleRequest("svc", 2, 2)], "two scale requests"),
        (lambda: [ScaleRequest("svc", -1, 1)], "negative targets"),
    ],
)
def test_bad_requests_are_rejected(requests: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_cycle(make_graph(TWO_S1), services(make_service()), [], requests())


def test_place_dg_reserves_and_returns_none_when_full() -> None:
    graph = make_graph({"s2": {"s1-a": ["H20:4"], "s1-b": ["H20:3"]}})
    capacity = FreeCapacity(graph)
    spec = make_service(pd_ratio="1:2")
    first = place_dg(capacity, spec, 1, 2, dg_id="svc-dg0")
    second = place_dg(capacity, spec, 1, 2, dg_id="svc-dg1")
    assert first is not None and second is not None
    assert (first.domain, second.domain) == ("s1-b", "s1-a")  # best fit first
    assert [i.instance_id for i in first.instances] == ["svc-dg0-p0", "svc-dg0-d0", "svc-dg0-d1"]
    assert place_dg(capacity, spec, 1, 2, dg_id="svc-dg2") is None
    third = place_dg(capacity, spec, 1, 0, dg_id="svc-dg2")
    assert third is not None and third.domain == "s1-a"
    gpus = used_gpus([first, second, third])
    assert len(gpus) == len(set(gpus)) == 7


# -- reserved instances (pending soft scale-in) --------------------------------------------

# A DG's live part and its reserved part (instances on their way out, same DG id).
LIVE_DG0 = make_dg("svc-dg0", "s1", one_gpu_each("s1-h0", "pd"))
PENDING_DG0 = make_dg(
    "svc-dg0", "s1", one_gpu_each("s1-h0", "pd", 2), ids=["svc-dg0-p1", "svc-dg0-d1"]
)
# A whole DG pending removal: gone from the live state, still running.
PENDING_WHOLE_DG0 = make_dg("svc-dg0", "s1", one_gpu_each("s1-h0", "pd"))


@pytest.mark.parametrize(
    ("host", "live", "reserved", "target", "created", "added", "removed", "unplaced"),
    [
        # Reserved GPUs are not handed out again: the only free ones are held.
        ("H20:4", [LIVE_DG0], [PENDING_DG0], (2, 2), [], [], 0, {P, D}),
        # ...the next free GPUs are used, and reserved instance ids are not reused.
        (
            "H20:6",
            [LIVE_DG0],
            [PENDING_DG0],
            (2, 2),
            [],
            [("svc-dg0-p2", (4,)), ("svc-dg0-d2", (5,))],
            0,
            set(),
        ),
        # A reserved DG id is not reused, and its instances do not count toward the target.
        (
            "H20:4",
            [],
            [PENDING_WHOLE_DG0],
            (1, 1),
            ["svc-dg1"],
            [("svc-dg1-p0", (2,)), ("svc-dg1-d0", (3,))],
            0,
            set(),
        ),
        # Reserved instances are not counted, so a target equal to the live DG removes nothing.
        ("H20:8", [LIVE_DG0], [PENDING_DG0], (1, 1), [], [], 0, set()),
        # ...and a shrink takes only live instances, never reserved ones.
        ("H20:8", [LIVE_DG0], [PENDING_DG0], (0, 0), [], [], 2, set()),
        # No reserved instances: the same request grows in place on the freed GPUs.
        (
            "H20:4",
            [LIVE_DG0],
            [],
            (2, 2),
            [],
            [("svc-dg0-p1", (2,)), ("svc-dg0-d1", (3,))],
            0,
            set(),
        ),
    ],
    ids=[
        "gpus-not-reused",
        "gpus-and-ids-skipped",
        "dg-id-not-reused",
        "not-counted",
        "never-victims",
        "control-without-reserved",
    ],
)
def test_reserved_instances_hold_gpus_and_ids_but_not_totals(
    host: str,
    live: list[DeploymentGroup],
    reserved: list[DeploymentGroup],
    target: tuple[int, int],
    created: list[str],
    added: list[tuple[str, tuple[int, ...]]],
    removed: int,
    unplaced: set[Role],
) -> None:
    graph = make_graph({"s2": {"s1": [host]}})
    request = [ScaleRequest("svc", *target)]
    plan = plan_cycle(graph, services(make_service()), live, request, reserved=reserved)
    after = plan.apply(live)
    assert [a.dg.dg_id for a in actions_of(plan, CreateDG)] == created
    assert [
        (i.instance_id, i.gpus) for a in actions_of(plan, AddInstances) for i in a.instances
    ] == (added)
    assert plan.removed() == removed
    assert {u.role for u in plan.unplaced} == unplaced
    assert all(u.reason is UnplacedReason.NO_CAPACITY for u in plan.unplaced)
    # Never a GPU held twice, counting the reserved instances.
    gpus = used_gpus([*after, *reserved])
    assert len(gpus) == len(set(gpus))


def test_reserved_overlapping_live_instances_does_not_stop_the_cycle() -> None:
    """A reserved instance on a GPU a live one holds (a leftover of older state) is skipped."""
    graph = make_graph({"s2": {"s1": ["H20:4"]}})
    plan = plan_cycle(
        graph,
        services(make_service()),
        [LIVE_DG0],
        [ScaleRequest("svc", 2, 2)],
        reserved=[PENDING_WHOLE_DG0.with_instances(PENDING_WHOLE_DG0.instances[:1])],
    )
    assert plan.added() == 2 and not plan.unplaced


def test_empty_reserved_changes_nothing() -> None:
    graph = make_graph(THREE_SHAPES)
    specs = services(make_service("a", affinity="S2"), make_service("b", pd_ratio="1:3"))
    requests = [ScaleRequest("a", 4, 4), ScaleRequest("b", 2, 6)]
    assert plan_cycle(graph, specs, [], requests) == plan_cycle(
        graph, specs, [], requests, reserved=()
    )


def test_a_role_whose_domain_is_full_opens_a_dg_elsewhere_with_a_moved_partner() -> None:
    """Decode must grow past what its DG's S1 holds: a new DG in another domain takes the
    growth and one prefill moved from the existing DG, so totals stay as asked and every DG
    holds both roles (demand-based scaling moves one role at a time)."""
    layout = {"s2": {"s1-a": ["H20:4"], "s1-b": ["H20:4"]}}
    full = make_dg("svc-dg0", "s1-a", one_gpu_each("s1-a-h0", "ppdd"))
    plan, after = run(layout, [make_service()], [full], [ScaleRequest("svc", 2, 4)])
    assert counts(after, "svc") == (2, 4) and not plan.unplaced
    assert {dg.dg_id: (dg.count(Role.PREFILL), dg.count(Role.DECODE)) for dg in after} == {
        "svc-dg0": (1, 2),
        "svc-dg1": (1, 2),
    }


def test_a_unit_past_the_grid_too_big_for_every_domain_goes_in_halves() -> None:
    # S1 domains of 8 GPUs (1 GPU per instance): a 12:1 unit (13 instances) fits none and was
    # placed nowhere; halved to 6:1 it makes a DG in each domain, each at about the ratio.
    layout = {"s2": {"s1-a": ["H20:8"], "s1-b": ["H20:8"]}}
    spec = make_service(pd_ratio="12:1", prefill={"gpu_types": ["H20"], "max_instances": 64})
    plan, after = run(layout, [spec], [], [ScaleRequest("svc", 12, 2)])
    assert not plan.unplaced
    assert sorted((dg.count(P), dg.count(D)) for dg in after) == [(6, 1), (6, 1)]


def test_rebalancing_never_grows_a_dg_past_its_max() -> None:
    """A 1:3 service at its totals: dg0 (1P+7D) holds too few prefill for its decode and dg1
    (4P+2D) too many, so a prefill instance moves; dg0 already holds `dg_max_instances`, and
    the move took it to 9."""
    g = make_graph({"S": {"m0": ["H20", "H20"], "m1": ["H20", "H20"]}})
    svc = make_service(pd_ratio="1:3", dg_max_instances=8)
    a = make_dg("svc-dg0", "m0", one_gpu_each("m0-h0", "pddddddd"))
    b = make_dg("svc-dg1", "m1", one_gpu_each("m1-h0", "ppppdd"))
    plan = plan_cycle(g, services(svc), [a, b], [ScaleRequest("svc", 5, 9)])
    assert {dg.dg_id: dg.size for dg in plan.apply([a, b])} == {"svc-dg0": 8, "svc-dg1": 6}
