"""Placement invariants on random small clusters, services, existing DGs and requests."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from topology_builders import counts, make_graph, make_service, services

from heteroscale_ray.config import AffinityLevel, Role, ServiceSpec
from heteroscale_ray.topology import (
    ClusterGraph,
    DeploymentGroup,
    PlacementPlan,
    ScaleRequest,
    UnplacedReason,
    plan_cycle,
)

TYPES = ("H20", "L20", "A100")
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def layouts(draw: st.DrawFn) -> dict[str, dict[str, list[str]]]:
    layout: dict[str, dict[str, list[str]]] = {}
    for i in range(draw(st.integers(1, 3))):
        s1s: dict[str, list[str]] = {}
        for j in range(draw(st.integers(1, 3))):
            hosts = draw(
                st.lists(
                    st.tuples(st.sampled_from(TYPES), st.integers(1, 8)), min_size=1, max_size=3
                )
            )
            s1s[f"s1-{i}-{j}"] = [f"{t}:{g}" for t, g in hosts]
        layout[f"s2-{i}"] = s1s
    return layout


@st.composite
def service_specs(draw: st.DrawFn, name: str) -> ServiceSpec:
    p, d = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    gpu_lists = st.lists(st.sampled_from(TYPES), min_size=1, max_size=2, unique=True)
    return make_service(
        name,
        priority=draw(st.integers(0, 3)),
        pd_ratio=f"{p}:{d}",
        prefill={
            "gpu_types": draw(gpu_lists),
            "gpus_per_instance": draw(st.sampled_from([1, 1, 2])),
        },
        decode={
            "gpu_types": draw(gpu_lists),
            "gpus_per_instance": draw(st.sampled_from([1, 1, 2])),
        },
        affinity=draw(st.sampled_from(["S1", "S2", "none"])),
        dg_max_instances=draw(st.one_of(st.none(), st.integers(p + d, 3 * (p + d)))),
    )


@dataclass(frozen=True)
class Scenario:
    layout: dict[str, dict[str, list[str]]]
    graph: ClusterGraph
    specs: dict[str, ServiceSpec]
    dgs: tuple[DeploymentGroup, ...]
    requests: tuple[ScaleRequest, ...]
    aware: bool


def _requests(draw: st.DrawFn, specs: dict[str, ServiceSpec], in_units: bool) -> tuple:
    out = []
    for name, spec in specs.items():
        if not draw(st.booleans()) and out:
            continue
        if in_units:
            k = draw(st.integers(0, 4))
            out.append(ScaleRequest(name, k * spec.ratio[0], k * spec.ratio[1]))
        else:
            out.append(ScaleRequest(name, draw(st.integers(0, 8)), draw(st.integers(0, 8))))
    return tuple(out)


@st.composite
def scenarios(draw: st.DrawFn, in_units: bool = False) -> Scenario:
    """A valid state (built by a first cycle, some DGs then marked draining) plus requests."""
    layout = draw(layouts())
    graph = make_graph(layout)
    names = ["alpha", "beta", "gamma"][: draw(st.integers(1, 3))]
    specs = services(*(draw(service_specs(n)) for n in names))
    aware = draw(st.booleans())
    first = plan_cycle(graph, specs, [], _requests(draw, specs, in_units), topology_aware=aware)
    state = first.apply([])
    draining = draw(st.lists(st.booleans(), min_size=len(state), max_size=len(state)))
    dgs = tuple(replace(dg, draining=flag) for dg, flag in zip(state, draining, strict=True))
    return Scenario(layout, graph, specs, dgs, _requests(draw, specs, in_units), aware)


def _plan(s: Scenario) -> PlacementPlan:
    return plan_cycle(s.graph, s.specs, s.dgs, s.requests, topology_aware=s.aware)


def _host_domains(graph: ClusterGraph, host: str) -> dict[AffinityLevel, str]:
    info = graph.host(host)
    return {AffinityLevel.S1: info.s1, AffinityLevel.S2: info.s2, AffinityLevel.NONE: "root"}


ROLES = (Role.PREFILL, Role.DECODE)


@SETTINGS
@given(scenarios())
def test_no_gpu_is_assigned_twice(s: Scenario) -> None:
    after = _plan(s).apply(s.dgs)
    gpus = [(i.host, g) for dg in after for i in dg.instances for g in i.gpus]
    assert len(gpus) == len(set(gpus))
    for host, gpu in gpus:
        assert 0 <= gpu < s.graph.host(host).gpus


@SETTINGS
@given(scenarios())
def test_every_dg_lives_in_one_domain_with_one_type_per_role(s: Scenario) -> None:
    for dg in _plan(s).apply(s.dgs):
        if not s.aware:
            assert (dg.level, dg.domain) == (AffinityLevel.NONE, "root")
        else:
            assert dg.level is s.specs[dg.service].affinity
        for inst in dg.instances:
            assert _host_domains(s.graph, inst.host)[dg.level] == dg.domain
            assert s.graph.host(inst.host).gpu_type == dg.gpu_type(inst.role)
            assert len(inst.gpus) == s.specs[dg.service].role(inst.role).gpus_per_instance
        spec = s.specs[dg.service]
        limit = spec.dg_max_instances
        if limit is not None and dg.size > limit:
            # Only a lone role overflows a DG (a new DG needs both roles): the growth asked
            # of the service was off its ratio. (Or the input DG was already over.)
            old = next((x for x in s.dgs if x.dg_id == dg.dg_id), None)
            req = next((r for r in s.requests if r.service == dg.service), None)
            have = [sum(x.count(r) for x in s.dgs if x.service == dg.service) for r in ROLES]
            if (old is None or old.size <= limit) and req is not None:
                grow_p, grow_d = req.prefill - have[0], req.decode - have[1]
                (p, d) = spec.ratio
                assert grow_p * d != grow_d * p
        assert dg.size > 0


@SETTINGS
@given(scenarios())
def test_new_dgs_always_hold_both_roles(s: Scenario) -> None:
    """A DG serves a request with its own prefill and decode: one role alone serves nothing."""
    before = {dg.dg_id for dg in s.dgs}
    for dg in _plan(s).apply(s.dgs):
        if dg.dg_id not in before:
            assert dg.count(Role.PREFILL) > 0 and dg.count(Role.DECODE) > 0, dg


@SETTINGS
@given(scenarios())
def test_targets_met_or_shortfall_reported_exactly(s: Scenario) -> None:
    plan = _plan(s)
    after = plan.apply(s.dgs)
    short = Counter()
    for u in plan.unplaced:
        assert u.reason in (UnplacedReason.NO_CAPACITY, UnplacedReason.HELD_FOR_RATIO)
        short[(u.service, u.role)] += u.count
    for req in s.requests:
        got = counts(after, req.service)
        assert got[0] + short[(req.service, Role.PREFILL)] == req.prefill
        assert got[1] + short[(req.service, Role.DECODE)] == req.decode
    untouched = {r.service for r in s.requests} ^ set(s.specs)
    for name in untouched:
        assert counts(after, name) == counts(s.dgs, name)


@st.composite
def scale_ins(draw: st.DrawFn) -> Scenario:
    """A valid state and, per service holding DGs, a target shrinking one role (the other
    may shrink, stay or grow)."""
    s = draw(scenarios())
    requests = []
    for name in s.specs:
        have = counts(s.dgs, name)
        if not any(have):
            continue
        shrunk = draw(st.sampled_from((0, 1)))
        top = [have[r] if r == shrunk else have[r] + 2 for r in (0, 1)]
        requests.append(
            ScaleRequest(name, draw(st.integers(0, top[0])), draw(st.integers(0, top[1])))
        )
    return replace(s, requests=tuple(requests))


@SETTINGS
@given(scale_ins())
def test_a_scale_in_never_leaves_a_dg_with_one_role(s: Scenario) -> None:
    """A DG that held both roles still holds both or is gone, whatever role shrinks; what a
    whole DG removal takes beyond the target is placed again or reported short."""
    plan = _plan(s)
    after = {dg.dg_id: dg for dg in plan.apply(s.dgs)}
    for dg in s.dgs:
        if dg.count(Role.PREFILL) and dg.count(Role.DECODE) and dg.dg_id in after:
            kept = after[dg.dg_id]
            assert kept.count(Role.PREFILL) and kept.count(Role.DECODE), (dg, kept)
    short = Counter()
    for u in plan.unplaced:
        short[(u.service, u.role)] += u.count
    for req in s.requests:
        got = counts(after.values(), req.service)
        assert got[0] + short[(req.service, Role.PREFILL)] == req.prefill, req
        assert got[1] + short[(req.service, Role.DECODE)] == req.decode, req


@SETTINGS
@given(scenarios(in_units=True))
def test_requests_in_ratio_units_keep_every_dg_on_its_ratio(s: Scenario) -> None:
    plan = _plan(s)
    for dg in plan.apply(s.dgs):
        p, d = s.specs[dg.service].ratio
        assert dg.count(Role.PREFILL) * d == dg.count(Role.DECODE) * p, dg
    for req in s.requests:  # a shortfall is whole units too, so the service keeps its ratio
        short = {u.role: u.count for u in plan.unplaced if u.service == req.service}
        p, d = s.specs[req.service].ratio
        assert short.get(Role.PREFILL, 0) * d == short.get(Role.DECODE, 0) * p


@SETTINGS
@given(scenarios())
def test_same_input_same_plan(s: Scenario) -> None:
    first = _plan(s)
    rebuilt = make_graph(s.layout)
    again = plan_cycle(rebuilt, s.specs, s.dgs, tuple(reversed(s.requests)), topology_aware=s.aware)
    assert first == again
