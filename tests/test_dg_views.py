"""What the pre-scheduler sends and shows of its DG state (actors/dg_views.py): pure, so the
targets a soft scale-in implies and the host reports are checked without Ray."""

from __future__ import annotations

from heteroscale_ray.actors.dg_views import (
    cycle_report,
    dg_targets,
    status_snapshot,
    with_dead_hosts,
)
from heteroscale_ray.control import ControlLoop, LoopState, TickInput
from heteroscale_ray.control.soft_scale_in import pending_from_plan
from heteroscale_ray.topology import ScaleRequest, plan_cycle
from tests.test_actors_pure import SERVICES, _grown


def _shrunk(prefill: int, decode: int) -> tuple:
    graph, dgs = _grown()
    plan = plan_cycle(graph, SERVICES.by_name(), dgs, [ScaleRequest("chat", prefill, decode)])
    return dgs, plan.apply(dgs), pending_from_plan(plan, dgs, now=10.0)


def test_a_soft_removal_keeps_its_replicas_and_lowers_the_dg_weight() -> None:
    """2P+4D shrunk to 1P+2D: Serve keeps all six running until the window ends, and routing
    sends the DG half its share (2 of its 4 decode replicas are wanted)."""
    before, after, pending = _shrunk(1, 2)
    out = dg_targets(SERVICES.by_name(), after, pending, {}, ["sc-a", "sc-b"])
    assert list(out) == ["sc-a"]  # no owner known: the first sub-cluster
    (target,) = out["sc-a"]
    assert (target.prefill, target.decode, target.draining) == (2, 4, False)
    assert target.weight == 0.5 and target.dg_id == before[0].dg_id


def test_a_deleted_dg_drains_out_of_routing_until_its_window_ends() -> None:
    before, after, pending = _shrunk(0, 0)
    assert after == ()
    owners = {before[0].domain: "sc-b"}
    (target,) = dg_targets(SERVICES.by_name(), after, pending, owners, ["sc-a", "sc-b"])["sc-b"]
    assert (target.prefill, target.decode, target.draining) == (2, 4, True)
    snap = status_snapshot(after, pending, {}, restored=False)
    assert snap["dgs"] == [] and snap["restored"] is False
    (removal,) = snap["pending_removals"]
    assert (removal["prefill"], removal["decode"], removal["whole_dg"]) == (2, 4, True)


def test_a_cycle_report_is_plain_json() -> None:
    import json

    graph, _ = _grown()
    tick = TickInput(0.0, {}, {}, SERVICES.by_name(), graph, frozenset())
    result = ControlLoop().step(LoopState(), tick)
    report = cycle_report(
        result,
        now=0.0,
        plan_lines=[],
        lost_hosts={"h2", "h1"},
        applied=True,
        actuation_error=None,
        seconds=0.1,
    )
    assert report["lost_hosts"] == ["h1", "h2"] and report["applied"] is True
    assert json.loads(json.dumps(report)) == report


def test_a_host_whose_node_died_is_reported_dead_once() -> None:
    reports = [
        {"host": "h1", "node_id": "n1", "healthy": True},
        {"host": "h2", "node_id": "n2", "healthy": True},  # stale: its node is gone
        {"host": "h3", "node_id": None, "healthy": False, "dead": True, "error": "probe"},
    ]
    out = with_dead_hosts(reports, {"h2", "h3", "h4"})
    by_host = {r["host"]: r for r in out}
    assert len(out) == len(by_host) == 4
    assert by_host["h1"]["healthy"] and by_host["h3"]["error"] == "probe"
    assert not by_host["h2"]["healthy"] and by_host["h2"]["dead"]
    assert by_host["h4"]["error"] == "its Ray node is not alive"
