"""Node failure: a host's Ray node dies, its instances are re-placed, and it is used again.

Pure part (fast): `topology.view.lost_hosts` decides which hosts are lost, and the control tick
(`ControlLoop.step` with `TickInput.lost_hosts`) drops their instances and re-places them on
the service's allowed GPU types and domains, with no GPU held twice and no duplicate DG.

Ray part (slow): two labelled fake-GPU hosts of their own (A100, one per S1 of a big-pod
nothing else uses) join the shared session cluster, so removing them disturbs no other test;
a control plane runs one service on them; the host holding it is removed with
`Cluster.remove_node`, then re-added with the same labels, and the other one removed; then the
pre-scheduler is restarted while a host is down and must still report it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from topology_builders import make_graph, make_service, make_topology

from heteroscale_ray.config import Role, ServiceSpec, parse_yaml_text
from heteroscale_ray.control import ControlLoop, Desired, LoopState, Observation, TickInput
from heteroscale_ray.control.node_loss import hosts_in_use
from heteroscale_ray.control.soft_scale_in import reserved_of
from heteroscale_ray.policy import Reason, Signals
from heteroscale_ray.topology import ClusterGraph, FreeCapacity, role_counts, without_hosts
from heteroscale_ray.topology.view import lost_hosts

# ---------------------------------------------------------------------------- pure helpers


def chat(**overrides: Any) -> ServiceSpec:
    base: dict[str, Any] = {
        "pd_ratio": "1:2",
        "prefill": {"gpu_types": ["L20"]},
        "decode": {"gpu_types": ["H20"]},
    }
    base.update(overrides)
    return make_service("chat", **base)


def tick(
    now: float,
    spec: ServiceSpec,
    graph: ClusterGraph,
    want: tuple[int, int],
    lost: frozenset[str] = frozenset(),
    tbt: float | None = None,
) -> TickInput:
    desired = {spec.name: Desired(spec.name, want[0], want[1], Reason.HOLD_DEADBAND)}
    obs = {spec.name: Observation(spec.name, Signals(observed_at=now, tbt_p99_s=tbt))}
    return TickInput(now, desired, obs, {spec.name: spec}, graph, lost)


def check_invariants(state: LoopState, graph: ClusterGraph, spec: ServiceSpec) -> None:
    """No GPU held twice (DGs and pending removals together), no duplicate DG id, every
    instance on a live host of its role's type inside its DG's domain, allowed types only."""
    ids = [dg.dg_id for dg in state.dgs] + [
        p.dg.dg_id for p in state.pending if all(p.dg.dg_id != d.dg_id for d in state.dgs)
    ]
    assert len(ids) == len(set(ids)), ids
    used = [
        (i.host, g)
        for group in (*state.dgs, *reserved_of(state.pending))
        for i in group.instances
        for g in i.gpus
    ]
    assert len(used) == len(set(used)), used
    FreeCapacity(graph, state.dgs, reserved_of(state.pending))  # raises on a GPU held twice
    for dg in state.dgs:
        assert dg.prefill_gpu_type in spec.prefill.gpu_types
        assert dg.decode_gpu_type in spec.decode.gpu_types
        for inst in dg.instances:
            host = graph.host(inst.host)  # KeyError: an instance on a host that is gone
            assert host.gpu_type == dg.gpu_type(inst.role)
            assert dg.domain in (host.s1, host.s2, "root")


def dg_hosts(state: LoopState) -> set[str]:
    return {i.host for dg in state.dgs for i in dg.instances}


# ------------------------------------------------------------------------------ lost_hosts


@pytest.mark.parametrize(
    ("placed", "alive", "seen", "lost"),
    [
        ({"h1", "h2"}, {"h1": "n1", "h2": "n2"}, {"h1": "n1", "h2": "n2"}, set()),
        ({"h1", "h2"}, {"h1": "n1"}, {"h1": "n1", "h2": "n2"}, {"h2"}),  # node gone
        ({"h1"}, {"h1": "n9"}, {"h1": "n1"}, {"h1"}),  # died and came back between two looks
        ({"h1"}, {"h1": "n1"}, {}, set()),  # first look after a restart: alive is alive
        ({"h1"}, {}, {}, {"h1"}),  # never seen, not alive: nothing of it can run
        (set(), {}, {"h1": "n1"}, set()),  # a dead host nothing is placed on loses nothing
    ],
)
def test_lost_hosts_are_placed_hosts_whose_node_is_gone_or_replaced(
    placed: set[str], alive: dict[str, str], seen: dict[str, str], lost: set[str]
) -> None:
    assert lost_hosts(placed, alive, seen) == lost


# ------------------------------------------------------------------------ the control tick


def test_a_lost_decode_host_dissolves_its_dg_and_the_whole_dg_is_re_placed() -> None:
    """The DG's S1 keeps only its L20 host: decode can never come back there. The prefill
    survivor drains (its GPU stays held) and a new 1P/2D DG opens in the other S1."""
    spec = chat()
    topo = make_topology({"s2": {"a": ["H20:4", "L20:4"], "b": ["H20:4", "L20:4"]}})
    loop = ControlLoop(soft_window_s=30.0)
    full = ClusterGraph.from_topology(topo)
    state = loop.step(LoopState(), tick(0.0, spec, full, (1, 2))).state
    (dg0,) = state.dgs
    decode_host = next(i.host for i in dg0.instances if i.role is Role.DECODE)
    graph = ClusterGraph.from_topology(without_hosts(topo, {decode_host}))

    result = loop.step(state, tick(5.0, spec, graph, (1, 2), frozenset({decode_host})))

    after = result.state
    assert role_counts(after.dgs, "chat") == (1, 2)
    assert decode_host not in dg_hosts(after)
    assert [dg.domain for dg in after.dgs] == ["b"] and after.dgs[0].dg_id != dg0.dg_id
    (drain,) = after.pending
    assert drain.dg.dg_id == dg0.dg_id and drain.whole_dg and drain.dg.draining
    assert [i.role for i in drain.instances] == [Role.PREFILL]
    assert {(lost.dg_id, lost.instance.role) for lost in result.lost} == {(dg0.dg_id, Role.DECODE)}
    assert result.plan.unplaced == ()
    check_invariants(after, graph, spec)
    # An SLO breach does not bring the dissolved DG back; it stops after its window.
    breach = loop.step(after, tick(10.0, spec, graph, (1, 2), tbt=9.0))
    assert breach.restored == () and breach.state.pending == after.pending
    done = loop.step(breach.state, tick(40.0, spec, graph, (1, 2)))
    assert [p.dg.dg_id for p in done.stopped] == [dg0.dg_id] and done.state.pending == ()


def test_an_emptied_dg_grows_back_in_place_when_its_domain_still_has_room() -> None:
    """Same DG id and domain: the Serve application stays, which is also where Serve itself
    restarts the dead replicas (its label selector names the domain, not the host)."""
    spec = make_service("chat", pd_ratio="1:1")
    topo = make_topology({"s2": {"a": ["H20:2", "H20:2"], "b": ["H20:4"]}})
    loop = ControlLoop()
    state = loop.step(LoopState(), tick(0.0, spec, ClusterGraph.from_topology(topo), (1, 1))).state
    (dg0,) = state.dgs
    (host,) = {i.host for i in dg0.instances}
    assert dg0.domain == "a"  # best fit: the S1 with the least room left over
    graph = ClusterGraph.from_topology(without_hosts(topo, {host}))

    result = loop.step(state, tick(5.0, spec, graph, (1, 1), frozenset({host})))

    (dg,) = result.state.dgs
    assert (dg.dg_id, dg.domain) == (dg0.dg_id, "a") and host not in dg_hosts(result.state)
    assert result.removed_dgs == () and len(result.lost) == 2
    check_invariants(result.state, graph, spec)


def test_an_emptied_dg_without_room_goes_and_its_id_is_not_reused_that_tick() -> None:
    spec = make_service("chat", pd_ratio="1:1")
    topo = make_topology({"s2": {"a": ["H20:2"], "b": ["H20:2"]}})
    loop = ControlLoop()
    state = loop.step(LoopState(), tick(0.0, spec, ClusterGraph.from_topology(topo), (1, 1))).state
    (dg0,) = state.dgs
    (host,) = {i.host for i in dg0.instances}
    graph = ClusterGraph.from_topology(without_hosts(topo, {host}))

    result = loop.step(state, tick(5.0, spec, graph, (1, 1), frozenset({host})))

    (dg,) = result.state.dgs
    assert dg.dg_id != dg0.dg_id and dg.domain != dg0.domain
    assert result.removed_dgs == (dg0.dg_id,)
    assert any("DG removed" in e for e in result.events)
    check_invariants(result.state, graph, spec)


def test_a_returning_host_is_used_again_and_its_gpus_counted_once() -> None:
    spec = make_service("chat", pd_ratio="1:1")
    topo = make_topology({"s2": {"a": ["H20:2"], "b": ["H20:2"]}})
    full = ClusterGraph.from_topology(topo)
    loop = ControlLoop()
    state = loop.step(LoopState(), tick(0.0, spec, full, (1, 1))).state
    (first,) = dg_hosts(state)
    graph = ClusterGraph.from_topology(without_hosts(topo, {first}))
    state = loop.step(state, tick(5.0, spec, graph, (1, 1), frozenset({first}))).state
    (second,) = dg_hosts(state)
    # Back with all its GPUs free (nothing of the dead node is still counted on it) ...
    free = FreeCapacity(full, state.dgs)
    assert free.free_indices(first) == (0, 1)
    # ... and used again: the other host dies, everything comes back to the first one.
    graph = ClusterGraph.from_topology(without_hosts(topo, {second}))
    result = loop.step(state, tick(10.0, spec, graph, (1, 1), frozenset({second})))
    assert dg_hosts(result.state) == {first}
    assert role_counts(result.state.dgs, "chat") == (1, 1)
    check_invariants(result.state, graph, spec)


def test_pending_removals_on_a_lost_host_are_forgotten() -> None:
    spec = make_service("chat", pd_ratio="1:1")
    topo = make_topology({"s2": {"a": ["H20:4"], "b": ["H20:4"]}})
    full = ClusterGraph.from_topology(topo)
    loop = ControlLoop(soft_window_s=60.0)
    state = loop.step(LoopState(), tick(0.0, spec, full, (2, 2))).state
    state = loop.step(state, tick(1.0, spec, full, (1, 1))).state  # 1P+1D pending removal
    assert sum(len(p.instances) for p in state.pending) == 2
    (host,) = dg_hosts(state)
    graph = ClusterGraph.from_topology(without_hosts(topo, {host}))

    result = loop.step(state, tick(5.0, spec, graph, (1, 1), frozenset({host})))

    assert result.state.pending == () and host not in hosts_in_use(result.state.dgs)
    assert role_counts(result.state.dgs, "chat") == (1, 1)
    check_invariants(result.state, graph, spec)


def test_no_lost_host_changes_nothing() -> None:
    spec = chat()
    graph = make_graph({"s2": {"a": ["H20:4", "L20:4"]}})
    loop = ControlLoop()
    state = loop.step(LoopState(), tick(0.0, spec, graph, (1, 2))).state
    result = loop.step(state, tick(5.0, spec, graph, (1, 2)))
    assert result.state == state and result.lost == () and result.plan.is_empty


@st.composite
def failures(draw: st.DrawFn) -> tuple[dict[str, dict[str, list[str]]], ServiceSpec, tuple]:
    layout: dict[str, dict[str, list[str]]] = {}
    for s2 in range(draw(st.integers(1, 2))):
        layout[f"p{s2}"] = {
            f"p{s2}m{s1}": [
                f"{draw(st.sampled_from(['H20', 'L20']))}:{draw(st.integers(1, 4))}"
                for _ in range(draw(st.integers(1, 3)))
            ]
            for s1 in range(draw(st.integers(1, 2)))
        }
    ratio = draw(st.sampled_from(["1:1", "1:2", "2:1"]))
    p_types = draw(st.sampled_from([["L20"], ["H20"], ["L20", "H20"]]))
    d_types = draw(st.sampled_from([["H20"], ["L20"], ["H20", "L20"]]))
    spec = make_service(
        "chat",
        pd_ratio=ratio,
        prefill={"gpu_types": p_types},
        decode={"gpu_types": d_types},
        affinity=draw(st.sampled_from(["S1", "S2", "none"])),
    )
    want = (draw(st.integers(1, 4)), draw(st.integers(1, 6)))
    return layout, spec, want


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(failures(), st.data())
def test_any_host_loss_keeps_the_state_sound_and_refills_what_fits(
    case: tuple[dict[str, dict[str, list[str]]], ServiceSpec, tuple[int, int]], data: st.DataObject
) -> None:
    layout, spec, want = case
    check_host_loss(
        layout,
        spec,
        want,
        lambda used: set(data.draw(st.lists(st.sampled_from(used), min_size=1, max_size=2))),
    )


def test_a_refill_then_a_restored_prefill_leaves_no_dg_with_one_role() -> None:
    """Found by the property above. The lost H20 decode came back as a new L20 DG with a
    prefill moved from the old DG (kept running, pending removal); the next tick restored it,
    and scale-in then took the new DG's only prefill, leaving it decode-only, rather than
    the old DG's second one."""
    check_host_loss(
        {"p0": {"p0m0": ["H20:1", "H20:1", "H20:1"]}, "p1": {"p1m0": ["L20:1", "L20:3"]}},
        chat(pd_ratio="1:1", decode={"gpu_types": ["H20", "L20"]}, affinity="none"),
        (2, 4),
        lambda used: {"p0m0-h0"},  # the H20 host of one of the DG's three decodes
    )


def check_host_loss(
    layout: dict[str, dict[str, list[str]]],
    spec: ServiceSpec,
    want: tuple[int, int],
    choose_dead: Callable[[list[str]], set[str]],
) -> None:
    """Place ``want``, lose the hosts ``choose_dead`` picks among the used ones, run two ticks:
    the state stays sound, the target is met or its shortfall reported exactly, and every DG
    holds both roles."""
    topo = make_topology(layout)
    loop = ControlLoop(soft_window_s=30.0)
    state = loop.step(LoopState(), tick(0.0, spec, ClusterGraph.from_topology(topo), want)).state
    used = sorted(dg_hosts(state))
    if not used:
        return
    names = [h.name for *_, h in topo.hosts()]
    dead = choose_dead(used)
    assert dead <= set(used), (dead, used)
    if set(names) <= dead:
        return  # nothing left to place on
    graph = ClusterGraph.from_topology(without_hosts(topo, dead))

    result = loop.step(state, tick(5.0, spec, graph, want, frozenset(dead)))

    check_invariants(result.state, graph, spec)
    assert not dead & hosts_in_use(result.state.dgs, result.state.pending)
    # Within the next tick (a DG that could not win back a lost role is dissolved after the
    # first one's planning), the target is met or its shortfall reported exactly, and every
    # DG holds both roles.
    after = loop.step(result.state, tick(6.0, spec, graph, want))
    check_invariants(after.state, graph, spec)
    have = role_counts(after.state.dgs, "chat")
    if after.requests:
        short = {r: sum(u.count for u in after.plan.unplaced if u.role is r) for r in Role}
        assert have[0] + short[Role.PREFILL] == want[0]
        assert have[1] + short[Role.DECODE] == want[1]
    else:
        assert have == want
    for dg in after.state.dgs:
        assert dg.count(Role.PREFILL) and dg.count(Role.DECODE), dg


# ------------------------------------------------------------------------ on a Ray cluster

NF_SERVICE = "nf"
NF_YAML = f"""
services:
  - name: {NF_SERVICE}
    slo: {{ttft_s: 5.0, tbt_s: 1.0}}
    pd_ratio: "1:1"
    prefill: {{gpu_types: [A100], min_instances: 1, max_instances: 1}}
    decode: {{gpu_types: [A100], min_instances: 1, max_instances: 1}}
    affinity: S1
    policy:
      target_per_instance: 30
      latency_guard: {{enabled: false}}
"""
PERIOD_S = 1.5
REFILL_CYCLES = 4  # the tick that sees the node dead re-places; allow a slow machine slack


def _nf_hosts() -> list[Any]:
    from heteroscale_ray.local_cluster import HostPlacement

    return [HostPlacement("s2-nf", f"s1-nf-{x}", f"s0-nf-{x}", f"nf-{x}", "A100", 2) for x in "ab"]


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as e:  # an actor restarting, a status read timing out: look again
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}; last: {last!r}")


def _status() -> dict[str, Any]:
    from heteroscale_ray.actors.control_plane import control_plane_status

    return control_plane_status(5)


def _dgs(st: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in st["pre_scheduler"]["dgs"] if d["service"] == NF_SERVICE]


def _placed_on(st: dict[str, Any]) -> set[str]:
    return {i["host"] for d in _dgs(st) for i in d["instances"]}


def _serving(st: dict[str, Any], host: str) -> bool:
    """1P+1D placed only on ``host``, running on Serve, and no other DG app of the service."""
    from ray import serve

    dgs = _dgs(st)
    apps = sorted(a for a in serve.status().applications if a.startswith(f"{NF_SERVICE}-"))
    return (
        _placed_on(st) == {host}
        and [(d["prefill"], d["decode"]) for d in dgs] == [(1, 1)]
        and [(d["running"]["prefill"], d["running"]["decode"]) for d in dgs] == [(1, 1)]
        and apps == [d["app"] for d in dgs]
        and not st["pre_scheduler"]["pending_removals"]
    )


def _host_report(st: dict[str, Any], host: str) -> dict[str, Any] | None:
    """The pre-scheduler's last report on ``host``; None when it reports nothing on it."""
    return next((h for h in st["pre_scheduler"]["hosts"] if h["host"] == host), None)


def _assert_sound(st: dict[str, Any]) -> None:
    """No GPU held twice (DGs and pending removals), no duplicate DG, and every RUNNING replica
    on a node of an allowed GPU type inside its DG's S1 domain."""
    import ray

    from heteroscale_ray.config.topology import LABEL_GPU_TYPE, LABEL_S1
    from heteroscale_ray.serving.deployments import replica_details

    pre = st["pre_scheduler"]
    gpus = [(i["host"], g) for d in pre["dgs"] for i in d["instances"] for g in i["gpus"]]
    gpus += [(h, g) for p in pre["pending_removals"] for h, g in p["gpus"]]
    assert len(gpus) == len(set(gpus)), gpus
    ids = [d["dg_id"] for d in pre["dgs"]]
    assert len(ids) == len(set(ids)), ids
    labels = {n["NodeID"]: n["Labels"] for n in ray.nodes() if n["Alive"]}
    for d in _dgs(st):
        assert (d["prefill_gpu_type"], d["decode_gpu_type"]) == ("A100", "A100")
        domain = d["domain"].split(":", 1)[1]
        for rep in replica_details(d["app"]):
            if rep["state"] == "RUNNING":
                assert labels[rep["node_id"]][LABEL_GPU_TYPE] == "A100"
                assert labels[rep["node_id"]][LABEL_S1] == domain


@pytest.fixture(scope="module")
def nf_plane(ray_cluster: Any) -> Iterator[Any]:
    """A control plane whose one service can only run on the two hosts added here."""
    from ray import serve

    from heteroscale_ray.actors.control_plane import (
        ControlPlaneSettings,
        start_control_plane,
        stop_control_plane,
    )
    from heteroscale_ray.actors.serving_adapter import ServingOptions
    from heteroscale_ray.config import ServicesConfig
    from heteroscale_ray.serving.emulation import EmulationConfig
    from heteroscale_ray.serving.model import ModelConfig

    try:
        for where in _nf_hosts():
            ray_cluster.add_host(where)
        options = ServingOptions(
            engine=ModelConfig(n_layers=2, d_model=64, n_heads=4, max_context=512),
            emulation=EmulationConfig(enabled=True),
            graceful_shutdown_timeout_s=5.0,
        )
        settings = ControlPlaneSettings(period_s=PERIOD_S, soft_window_s=6.0, options=options)
        config = parse_yaml_text(NF_YAML, ServicesConfig, "node-failure services")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        start_control_plane(config, settings=settings, http_host="127.0.0.1", http_port=port)
        yield ray_cluster
    finally:
        try:
            stop_control_plane(purge=True)
            serve.shutdown()
        finally:
            for where in _nf_hosts():
                if where.host in ray_cluster.nodes:
                    ray_cluster.remove_host(where.host)


def _refill(local: Any, victim: str, survivor: str) -> dict[str, float]:
    """Remove ``victim``; wait until the service runs on ``survivor``; return the refill."""
    import ray

    from heteroscale_ray.actors.checkpoint import NAMESPACE, gpu_node_actor

    before = _status()
    assert _placed_on(before) == {victim}
    gpu_node = ray.get_actor(gpu_node_actor(victim), namespace=NAMESPACE)
    t0 = time.monotonic()
    local.remove_host(victim)
    with pytest.raises((ray.exceptions.RayActorError, ray.exceptions.ActorUnschedulableError)):
        ray.get(gpu_node.report.remote(), timeout=30)  # the host's GpuNode is dead
    placed = wait_for(
        f"the instances lost with {victim} placed on {survivor}",
        lambda: (st := _status()) and _placed_on(st) == {survivor} and st,
        60,
        every_s=0.2,
    )
    t_placed = time.monotonic() - t0
    last = placed["pre_scheduler"]["last_cycle"]
    cycles = placed["cycles"] - before["cycles"]
    running = wait_for(
        f"1P+1D running on {survivor} and the old DG app gone",
        lambda: (st := _status()) and _serving(st, survivor) and st,
        120,
    )
    t_running = time.monotonic() - t0
    # The GpuNode was seen dead and the host left the view the placement core sees.
    host_report = _host_report(running, victim)
    assert host_report is not None, (victim, running["pre_scheduler"]["hosts"])
    assert not host_report["healthy"] and host_report["dead"], host_report
    assert running["last_error"] is None, running["last_error"]
    _assert_sound(running)
    print(  # noqa: T201 - the measurement the report quotes (pytest -s)
        f"\nrefill after removing {victim}: re-placed within {cycles} cycle(s) "
        f"(period {PERIOD_S:g} s) in {t_placed:.1f} s; running on {survivor} after "
        f"{t_running:.1f} s; lost {[x['instance'] for x in last['lost']]}"
    )
    assert cycles <= REFILL_CYCLES, (cycles, last)
    return {"cycles": cycles, "placed_s": t_placed, "running_s": t_running}


@pytest.mark.slow
def test_a_removed_node_s_instances_are_re_placed_and_the_node_is_used_again(
    nf_plane: Any,
) -> None:
    first = wait_for(
        "the first DG running",
        lambda: (
            (st := _status()) and len(_placed_on(st)) == 1 and _serving(st, *_placed_on(st)) and st
        ),
        180,
    )
    (x,) = _placed_on(first)
    (y,) = {h.host for h in _nf_hosts()} - {x}
    _assert_sound(first)

    _refill(nf_plane, x, y)

    # The node comes back with the same labels (a new Ray node): it rejoins the view ...
    node_id = nf_plane.restore_host(x)
    wait_for(
        f"{x} back in the topology with a live GpuNode",
        lambda: any(
            h["host"] == x and h.get("healthy") and h.get("node_id") == node_id
            for h in _status()["pre_scheduler"]["hosts"]
        ),
        90,
    )
    # ... and is used again: when the other host dies, everything comes back to it.
    _refill(nf_plane, y, x)


@pytest.mark.slow
def test_a_restarted_pre_scheduler_still_reports_a_host_that_died_before_it(
    nf_plane: Any,
) -> None:
    """The interleaving behind a flake: the pre-scheduler ran on a GPU host (soft affinity to
    the driver's node had fallen through), died with it, and came back knowing no host owner
    (those came from the reports it had held in memory), so the dead host vanished from its
    reports for good. A restart after a host died now still reports it dead, and changes no
    placement; and the control-plane actors sit on the head node, never on a GPU host."""
    import ray
    from ray._common.constants import HEAD_NODE_RESOURCE_NAME

    from heteroscale_ray.actors.checkpoint import (
        NAMESPACE,
        POLICY_ENGINE,
        PRE_SCHEDULER,
        sub_cluster_actor,
    )

    def _pid(_actor: Any) -> int:  # defined here: pickled by value, run in the actor
        import os

        return os.getpid()

    def _node_id(_actor: Any) -> str:
        return ray.get_runtime_context().get_node_id()

    st = wait_for(
        "the service running on one host",
        lambda: (
            (st := _status()) and len(_placed_on(st)) == 1 and _serving(st, *_placed_on(st)) and st
        ),
        180,
    )
    (x,) = _placed_on(st)
    (y,) = {h.host for h in _nf_hosts()} - {x}
    if y in nf_plane.nodes:  # run alone: the other host has not died yet
        nf_plane.remove_host(y)
    wait_for(f"{y} reported dead", lambda: (_host_report(_status(), y) or {}).get("dead"), 60)

    fps = ray.get_actor(PRE_SCHEDULER, namespace=NAMESPACE)
    pid = ray.get(fps.__ray_call__.remote(_pid), timeout=30)
    ray.kill(fps, no_restart=False)
    wait_for(
        "the pre-scheduler restarted",
        lambda: ray.get(fps.__ray_call__.remote(_pid), timeout=10) != pid,
        60,
    )
    cycles = _status()["cycles"]
    after = wait_for(
        "two cycles of the restarted pre-scheduler",
        lambda: (st := _status()) and st["cycles"] >= cycles + 2 and st,
        60,
    )
    report = _host_report(after, y)
    assert report is not None, (y, after["pre_scheduler"]["hosts"])
    assert report["dead"] and not report["healthy"], report
    assert after["pre_scheduler"]["restored"] and after["last_error"] is None, after["last_error"]
    assert _serving(after, x), _dgs(after)
    _assert_sound(after)

    head = next(
        n["NodeID"]
        for n in ray.nodes()
        if n["Alive"] and HEAD_NODE_RESOURCE_NAME in n.get("Resources", {})
    )
    names = [POLICY_ENGINE, PRE_SCHEDULER]
    names += [sub_cluster_actor(sc) for sc in ray.get(fps.scheduler_names.remote(), timeout=30)]
    where = {
        name: ray.get(
            ray.get_actor(name, namespace=NAMESPACE).__ray_call__.remote(_node_id), timeout=30
        )
        for name in names
    }
    assert where == dict.fromkeys(names, head), (head, where)
