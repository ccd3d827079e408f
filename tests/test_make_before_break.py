"""Moves are make-before-break: a decode instance placement moves to another DG keeps serving,
counted in no target, until the DG its replacement went to runs its decode target; then it
leaves routing and waits out the soft window like any removal (`control/soft_scale_in.py`)."""

from __future__ import annotations

from dataclasses import replace

from test_actors_pure import SERVICES, _grown, _obs

from heteroscale_ray.actors.checkpoint import pending_from_json, pending_to_json
from heteroscale_ray.actors.dg_views import dg_targets
from heteroscale_ray.config import Role
from heteroscale_ray.control import ControlLoop, Desired, LoopState, RunningReplicas, TickInput
from heteroscale_ray.control.soft_scale_in import (
    MOVE_WAIT_S,
    PendingRemoval,
    pending_from_plan,
    settle,
)
from heteroscale_ray.policy import Reason
from heteroscale_ray.sim.actuator import SimActuator
from heteroscale_ray.sim.cluster import ClusterSim
from heteroscale_ray.sim.workload import Workload
from heteroscale_ray.topology import (
    AddInstances,
    CreateDG,
    Instance,
    PlacementPlan,
    RemoveInstances,
    ScaleRequest,
    plan_cycle,
    role_counts,
)
from heteroscale_ray.traces import Trace


def _moved() -> tuple:
    """chat-dg0 (2P+4D) gives one prefill and one decode to a new DG in the other mini-pod, as
    placement's `_move_partner` opens a DG: totals stay 2P+4D."""
    graph, dgs = _grown()
    (dg0,) = dgs
    dg1 = replace(dg0, dg_id="chat-dg1", domain="s1-a1", instances=())
    new = (
        Instance("chat-dg1-p0", Role.PREFILL, "a1-l20", (0,)),
        Instance("chat-dg1-d0", Role.DECODE, "a1-h20", (0,)),
    )
    plan = PlacementPlan(
        {
            "*": (
                CreateDG(dg1),
                AddInstances("chat-dg1", Role.PREFILL, new[:1]),
                AddInstances("chat-dg1", Role.DECODE, new[1:]),
                RemoveInstances("chat-dg0", Role.PREFILL, ("chat-dg0-p1",)),
                RemoveInstances("chat-dg0", Role.DECODE, ("chat-dg0-d3",)),
            )
        }
    )
    return graph, dgs, plan


def _settle(graph, dgs, pending, now: float, running, tbt: float = 0.05):
    return settle(
        dgs,
        pending,
        now=now,
        window_s=20.0,
        services=SERVICES.by_name(),
        observations=_obs(tbt),
        desired={"chat": Desired("chat", 2, 4, Reason.HOLD_DEADBAND)},
        graph=graph,
        running=running,
    )


def test_a_moved_decode_instance_is_marked_to_serve_until_replaced() -> None:
    _, dgs, plan = _moved()
    pending = pending_from_plan(plan, dgs, now=10.0)
    moving = [p for p in pending if p.moving]
    # into: the DG the replacement went to, with the decode it holds after the plan
    assert [(p.count(Role.DECODE), p.into) for p in moving] == [(1, (("chat-dg1", 1),))]
    # A moved prefill instance breaks at once: routing spreads requests by prefill.
    assert [p.count(Role.PREFILL) for p in pending if not p.moving] == [1]


def test_a_plain_scale_in_is_no_move() -> None:
    graph, dgs = _grown()
    plan = plan_cycle(graph, SERVICES.by_name(), dgs, [ScaleRequest("chat", 1, 2)])
    assert not any(p.moving for p in pending_from_plan(plan, dgs, now=10.0))


def test_the_move_leaves_routing_once_its_replacement_runs_then_waits_its_window() -> None:
    graph, dgs, plan = _moved()
    after = plan.apply(dgs)
    pending = pending_from_plan(plan, dgs, now=10.0)
    loading = {"chat-dg0": RunningReplicas(2, 4), "chat-dg1": RunningReplicas(1, 0)}
    # Past the window, the replacement still loading: the moved instance keeps serving.
    early = _settle(graph, after, pending, now=60.0, running=loading)
    assert [p.moving for p in early.pending] == [True]
    assert early.held_out == () and [p.count(Role.PREFILL) for p in early.stopped] == [1]
    # A breach does not restore a move: it serves already, and counted it would be scaled in.
    breached = _settle(graph, after, early.pending, now=61.0, running=loading, tbt=0.5)
    assert breached.restored == () and role_counts(breached.dgs, "chat") == (2, 4)
    up = {**loading, "chat-dg1": RunningReplicas(1, 1)}
    done = _settle(graph, after, early.pending, now=100.0, running=up)
    assert [(p.moving, p.since) for p in done.held_out] == [(False, 100.0)]
    assert done.pending == done.held_out and "replaced; out of routing" in done.events[0]
    later = _settle(graph, after, done.pending, now=121.0, running=up)
    assert later.pending == () and later.stopped == done.held_out


def test_a_replacement_dg_s_own_pending_replicas_are_not_its_replacement() -> None:
    # Serve counts replicas up, pending removals included: chat-dg1 running one decode that
    # is itself pending removal has not brought up the replacement.
    graph, dgs, plan = _moved()
    after = plan.apply(dgs)
    pending = pending_from_plan(plan, dgs, now=10.0)
    dg1 = next(dg for dg in after if dg.dg_id == "chat-dg1")
    own = PendingRemoval(dg1, (Instance("chat-dg1-d9", Role.DECODE, "a1-h20", (3,)),), 10.0, False)
    running = {"chat-dg0": RunningReplicas(2, 4), "chat-dg1": RunningReplicas(1, 1)}
    early = _settle(graph, after, [*pending, own], now=20.0, running=running)
    assert early.held_out == ()
    up = {**running, "chat-dg1": RunningReplicas(1, 2)}
    assert _settle(graph, after, [*pending, own], now=21.0, running=up).held_out != ()


def test_a_move_waits_for_the_replacement_it_was_matched_with_and_not_for_ever() -> None:
    graph, dgs, plan = _moved()
    after = plan.apply(dgs)
    moving = [p for p in pending_from_plan(plan, dgs, now=10.0) if p.moving]
    # chat-dg1 grew to 3 decode since: the move waits for the one it held after the move.
    grown = [
        dg.with_instances(
            dg.instances
            + tuple(Instance(f"chat-dg1-d{k}", Role.DECODE, "a1-h20", (k,)) for k in (1, 2))
        )
        if dg.dg_id == "chat-dg1"
        else dg
        for dg in after
    ]
    up = {"chat-dg0": RunningReplicas(1, 4), "chat-dg1": RunningReplicas(1, 1)}
    assert _settle(graph, grown, moving, now=30.0, running=up).held_out != ()
    # A replacement that never comes up holds the moved instance MOVE_WAIT_S at most.
    down = {**up, "chat-dg1": RunningReplicas(1, 0)}
    assert _settle(graph, after, moving, now=10.0 + MOVE_WAIT_S - 1, running=down).held_out == ()
    assert _settle(graph, after, moving, now=10.0 + MOVE_WAIT_S, running=down).held_out != ()


def test_without_replica_counts_a_move_breaks_at_the_next_tick() -> None:
    graph, dgs, plan = _moved()
    pending = [p for p in pending_from_plan(plan, dgs, now=10.0) if p.moving]
    assert _settle(graph, plan.apply(dgs), pending, now=25.0, running=None).held_out != ()


def test_the_control_loop_reports_the_hold_out() -> None:
    graph, dgs, plan = _moved()
    pending = tuple(p for p in pending_from_plan(plan, dgs, now=10.0) if p.moving)
    state = LoopState(plan.apply(dgs), pending)
    desired = {"chat": Desired("chat", 2, 4, Reason.HOLD_DEADBAND)}
    up = {"chat-dg0": RunningReplicas(1, 4), "chat-dg1": RunningReplicas(1, 1)}
    tick = TickInput(30.0, desired, _obs(0.05), SERVICES.by_name(), graph, running=up)
    result = ControlLoop(soft_window_s=20.0).step(state, tick)
    assert result.held_out and result.plan.is_empty


def test_serve_keeps_a_moving_decode_replica_at_full_weight() -> None:
    _, dgs, plan = _moved()
    after = plan.apply(dgs)
    pending = pending_from_plan(plan, dgs, now=10.0)
    targets = {t.dg_id: t for t in dg_targets(SERVICES.by_name(), after, pending, {}, ["sc"])["sc"]}
    assert (targets["chat-dg0"].decode, targets["chat-dg0"].weight) == (4, 1.0)
    held = [replace(p, into=()) for p in pending]
    targets = {t.dg_id: t for t in dg_targets(SERVICES.by_name(), after, held, {}, ["sc"])["sc"]}
    assert targets["chat-dg0"].weight == 0.75


def test_a_move_survives_a_checkpoint() -> None:
    _, dgs, plan = _moved()
    for p in pending_from_plan(plan, dgs, now=10.0):
        assert pending_from_json(pending_to_json(p)) == p


def test_the_simulator_serves_a_moved_instance_but_counts_it_in_no_target() -> None:
    graph, dgs, plan = _moved()
    trace = Trace.from_columns([0.0], [100], [10])
    sim = ClusterSim(
        [SERVICES.by_name()["chat"]],
        graph,
        Workload.from_traces({"chat": trace}, ["chat"]),
        catalog=SERVICES.catalog,
    )
    actuator = SimActuator(sim, startup_s=90.0)
    (dg0,) = dgs
    grow = (CreateDG(replace(dg0, instances=())),) + tuple(
        AddInstances(dg0.dg_id, role, tuple(i for i in dg0.instances if i.role is role))
        for role in Role
    )
    actuator.apply(PlacementPlan({"*": grow}), warm=True)
    actuator.apply(plan, soft=True, moving=frozenset({"chat-dg0-d3"}))
    # The moved decode serves and is counted in no target; the moved prefill is held out.
    assert sim.counts("chat") == (1, 1, 3, 1)
    # Running counts replicas up, as Serve does: the target plus pending removals.
    assert sim.running_by_dg()["chat-dg0"] == RunningReplicas(2, 4)
    sim.hold_out("chat-dg0-d3")
    assert sim.running_by_dg()["chat-dg0"] == RunningReplicas(2, 4)
    assert sim.counts("chat") == (1, 1, 3, 1)
    sim.drain_instance("chat-dg0-d3")
    assert sim.running_by_dg()["chat-dg0"] == RunningReplicas(2, 3)


def test_status_and_metrics_show_a_move_in_flight() -> None:
    from heteroscale_ray.actors.dg_views import status_snapshot
    from heteroscale_ray.actors.metrics import ControlPlaneMetrics

    _, dgs, plan = _moved()
    snapshot = status_snapshot(plan.apply(dgs), pending_from_plan(plan, dgs, now=10.0), {})
    assert [r["into"] for r in snapshot["pending_removals"]] == [["chat-dg1"], []]
    metrics = ControlPlaneMetrics(None)
    metrics.record({}, {}, snapshot, {}, 0.01)
    text = metrics.text()
    moving = 'dg="chat-dg0",role="decode",service="chat",state="moving"} 1.0'
    assert moving in text
    assert 'dg="chat-dg0",role="prefill",service="chat",state="soft_removed"} 1.0' in text


def test_a_move_that_cannot_be_restored_keeps_serving() -> None:
    # Wanted back but its GPUs taken (here: by another DG on the same GPU): it is not stopped
    # before its replacement serves, as a plain removal would be.
    graph, dgs, plan = _moved()
    after = plan.apply(dgs)
    moving = [p for p in pending_from_plan(plan, dgs, now=10.0) if p.moving]
    (gone,) = moving[0].instances
    squatter = replace(
        after[0], dg_id="other-dg0", service="other", instances=(replace(gone, instance_id="x"),)
    )
    more = {"chat": Desired("chat", 2, 5, Reason.SCALE_OUT)}
    out = settle(
        (*after, squatter),
        moving,
        now=11.0,
        window_s=20.0,
        services=SERVICES.by_name(),
        observations=_obs(0.05),
        desired=more,
        graph=graph,
        running={"chat-dg1": RunningReplicas(1, 0)},
    )
    assert out.stopped == () and out.restored == () and out.pending == tuple(moving)
    assert "could not be restored" in out.events[0]
