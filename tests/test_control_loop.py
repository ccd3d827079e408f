"""The one control tick both substrates run: `ControlLoop.step` (settle -> retire -> plan -> pending).

Each test drives the tick with plain values, as the pre-scheduler actor and the replay do.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import TEST_TOPOLOGY

from heteroscale_ray.config import Role, ServicesConfig, TopologySpec, parse_yaml_text
from heteroscale_ray.control import (
    ControlLoop,
    Desired,
    LoopState,
    Observation,
    RunningReplicas,
    TickInput,
    ready_and_starting,
)
from heteroscale_ray.policy import Reason, RoleCounts, Signals
from heteroscale_ray.topology import ClusterGraph, role_counts

SERVICES = parse_yaml_text(
    """
services:
  - name: chat
    slo: {ttft_s: 1.0, tbt_s: 0.1}
    pd_ratio: "1:2"
    prefill: {gpu_types: [L20], max_instances: 4}
    decode: {gpu_types: [H20], min_instances: 2, max_instances: 8}
    affinity: S1
    policy: {target_per_instance: 30}
""",
    ServicesConfig,
)
GRAPH = ClusterGraph.from_topology(TopologySpec.model_validate(TEST_TOPOLOGY))


def tick(
    now: float,
    prefill: int,
    decode: int,
    *,
    tbt: float | None = None,
    services: ServicesConfig = SERVICES,
) -> TickInput:
    desired = {"chat": Desired("chat", prefill, decode, Reason.SCALE_OUT)}
    obs = {"chat": Observation("chat", Signals(observed_at=now, tbt_p99_s=tbt))}
    return TickInput(now, desired, obs, services.by_name(), GRAPH)


def grown(loop: ControlLoop) -> LoopState:
    return loop.step(LoopState(), tick(0.0, 2, 4)).state


def test_a_scale_out_plans_and_commits_the_new_dgs() -> None:
    result = ControlLoop().step(LoopState(), tick(0.0, 2, 4))
    assert role_counts(result.state.dgs, "chat") == (2, 4)
    assert [r.service for r in result.requests] == ["chat"]
    assert not result.plan.is_empty and result.state.pending == ()


def test_a_quiet_tick_plans_nothing() -> None:
    loop = ControlLoop()
    state = grown(loop)
    result = loop.step(state, tick(5.0, 2, 4))
    assert result.plan.is_empty and result.requests == () and result.state == state


def test_soft_scale_in_pends_then_stops_after_the_window() -> None:
    loop = ControlLoop(soft_window_s=30.0)
    state = grown(loop)
    shrunk = loop.step(state, tick(10.0, 1, 2))
    assert role_counts(shrunk.state.dgs, "chat") == (1, 2)
    assert sum(p.count(Role.DECODE) for p in shrunk.state.pending) == 2
    early = loop.step(shrunk.state, tick(20.0, 1, 2, tbt=0.05))
    assert early.stopped == () and early.state.pending == shrunk.state.pending
    late = loop.step(early.state, tick(41.0, 1, 2, tbt=0.05))
    assert late.stopped == shrunk.state.pending and late.state.pending == ()
    assert any("stopped after 30s" in e for e in late.events)


def test_an_slo_breach_in_the_window_restores_the_removed_instances() -> None:
    loop = ControlLoop(soft_window_s=30.0)
    shrunk = loop.step(grown(loop), tick(10.0, 1, 2))
    breached = loop.step(shrunk.state, tick(15.0, 1, 2, tbt=0.5))
    assert breached.restored == shrunk.state.pending
    assert any("restored to routing (SLO breached)" in e for e in breached.events)
    # Restored instances count again, so the policy's 1P+2D is a new soft scale-in, timed anew.
    assert [p.since for p in breached.state.pending] == [15.0]


def test_without_soft_scale_in_removals_are_not_pending() -> None:
    loop = ControlLoop(soft_window_s=None)
    shrunk = loop.step(grown(loop), tick(10.0, 1, 2))
    assert role_counts(shrunk.state.dgs, "chat") == (1, 2)
    assert shrunk.state.pending == () and not loop.soft


def test_dgs_of_an_unconfigured_service_retire_and_drain() -> None:
    loop = ControlLoop(soft_window_s=30.0)
    state = grown(loop)
    other = parse_yaml_text(SERVICES.model_dump_json().replace('"chat"', '"other"'), ServicesConfig)
    result = loop.step(state, tick(10.0, 2, 4, services=other))
    assert result.state.dgs == () and [p.whole_dg for p in result.retired] == [True]
    assert result.state.pending == result.retired
    assert any("no longer configured" in e for e in result.events)


def test_ready_and_starting_split_each_dg_target() -> None:
    state = grown(ControlLoop())
    (dg,) = state.dgs
    counts = ready_and_starting(state.dgs, {dg.dg_id: RunningReplicas(prefill=1, decode=9)})
    # Replicas beyond the target (pending removals) are not counted as ready.
    assert counts == {"chat": RoleCounts(1, 1, 4, 0)}
    assert ready_and_starting(state.dgs, {}) == {"chat": RoleCounts(0, 2, 0, 4)}


def test_no_substrate_runs_the_tick_steps_itself() -> None:
    """Actors and the simulator fill TickInput and apply StepResult; the steps live in control/."""
    root = Path(__file__).resolve().parents[1] / "heteroscale_ray"
    steps = {"settle", "retire_unconfigured", "pending_from_plan", "control_cycle"}
    for folder in ("actors", "sim"):
        for path in (root / folder).glob("*.py"):
            tree = ast.parse(path.read_text())
            called = {
                node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                for node in ast.walk(tree)
                if isinstance(node, ast.Call)
            }
            assert not called & steps, f"{path.name} calls {sorted(called & steps)}"
