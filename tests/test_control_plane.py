"""The actor control plane on the shared local Ray cluster, with real HTTP load.

One control plane for the module (period 1.5 s, short cooldowns, 6 s soft scale-in window) and
one service, prefill on L20 and decode on H20 at 1:2 in one S1 domain. The tests run in order:
ramp (scale out together, right nodes, replicas of the resized DG kept), drop (soft scale-in),
a rejected config update, then killing the policy engine and a sub-cluster scheduler. A load
generator runs through all of them; no request may fail.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from heteroscale_ray.config import ServicesConfig, parse_yaml_text
from heteroscale_ray.config.topology import LABEL_GPU_TYPE, LABEL_S1

pytestmark = pytest.mark.slow

SERVICE = "chat"
SERVICES_YAML = f"""
services:
  - name: {SERVICE}
    slo: {{ttft_s: 5.0, tbt_s: 1.0}}
    pd_ratio: "1:2"
    prefill: {{gpu_types: [L20], min_instances: 1, max_instances: 2}}
    decode: {{gpu_types: [H20], min_instances: 2, max_instances: 4}}
    affinity: S1
    policy:
      target_per_instance: 30
      scale_out_tolerance: 0.1
      scale_in_tolerance: 0.2
      scale_out_cooldown_s: 3
      scale_in_cooldown_s: 8
      scale_in_damping: 1.0
      stale_after_s: 30
      latency_guard: {{enabled: false}}
"""
LOW, HIGH = 0.5, 4.0  # requests/s of 32 output tokens: ~16 vs ~128 decode tokens/s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Plane:
    url: str
    load: Any  # LoadGenerator
    level: list[float]  # mutable request rate the generator follows

    def status(self) -> dict[str, Any]:
        from heteroscale_ray.actors.control_plane import control_plane_status

        return control_plane_status(60)

    def dgs(self) -> list[dict[str, Any]]:
        return self.status()["pre_scheduler"]["dgs"]


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as e:  # actor restarting: try again
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every_s)
    raise AssertionError(
        f"timed out after {timeout_s:g}s waiting for {what}; last: {last!r}; {_debug()}"
    )


def _debug() -> str:
    """What the control plane saw and decided last, for a timeout's message."""
    try:
        from heteroscale_ray.actors.control_plane import control_plane_status

        st = control_plane_status(3)
        return repr({k: st.get(k) for k in ("last_error", "decisions", "observations")})
    except Exception as e:
        return f"(no status: {e})"


def _totals(dgs: list[dict[str, Any]]) -> tuple[int, int]:
    return sum(d["prefill"] for d in dgs), sum(d["decode"] for d in dgs)


def _running(dgs: list[dict[str, Any]]) -> tuple[int, int]:
    return (
        sum(d["running"]["prefill"] for d in dgs),
        sum(d["running"]["decode"] for d in dgs),
    )


@pytest.fixture(scope="module")
def plane(ray_cluster: object) -> Iterator[Plane]:
    from ray import serve

    from heteroscale_ray.actors.control_plane import (
        ControlPlaneSettings,
        start_control_plane,
        stop_control_plane,
    )
    from heteroscale_ray.actors.serving_adapter import ServingOptions
    from heteroscale_ray.demo.load import LoadGenerator
    from heteroscale_ray.serving.emulation import EmulationConfig
    from heteroscale_ray.serving.model import ModelConfig

    port = _free_port()
    options = ServingOptions(
        engine=ModelConfig(n_layers=2, d_model=64, n_heads=4, max_context=512),
        emulation=EmulationConfig(enabled=True),
        graceful_shutdown_timeout_s=60.0,
    )
    settings = ControlPlaneSettings(period_s=1.5, soft_window_s=6.0, options=options)
    level = [LOW]
    load = None
    try:
        config = parse_yaml_text(SERVICES_YAML, ServicesConfig, "test services")
        start_control_plane(config, settings=settings, http_host="127.0.0.1", http_port=port)
        plane = Plane(f"http://127.0.0.1:{port}", None, level)
        wait_for(
            "the first DG to run with its gate open",
            lambda: (dgs := plane.dgs()) and all(d["gate_open"] for d in dgs),
            120,
        )
        load = LoadGenerator(plane.url, SERVICE, lambda t: level[0], max_tokens=32).start()
        plane.load = load
        yield plane
    finally:
        if load is not None:
            load.stop()
        stop_control_plane(purge=True)
        serve.shutdown()


def test_ramp_scales_prefill_and_decode_together_on_the_right_nodes(plane: Plane) -> None:
    import ray

    from heteroscale_ray.serving.deployments import replica_details, replica_ids

    dgs = wait_for("1P/2D at low load", lambda: _totals(d := plane.dgs()) == (1, 2) and d, 60)
    assert len(dgs) == 1
    app = dgs[0]["app"]
    before = {r: replica_ids(app, r) for r in ("prefill", "decode")}

    plane.level[0] = HIGH
    dgs = wait_for(
        "scale-out to 2P/4D, all running",
        lambda: (d := plane.dgs()) and _totals(d) == (2, 4) and _running(d) == (2, 4) and d,
        150,
    )
    # The ingress's gate lets prefill calls out by the replicas running, which the sub-cluster
    # scheduler reports to the routing table as Serve starts them.
    from heteroscale_ray.serving.routing_table import get_routing_table

    def gated_by() -> list[int | None]:
        _, services = ray.get(get_routing_table().snapshot.remote())
        return [d.prefill_running for s in services.values() for d in s.dgs.values()]

    wait_for("the gate counts both running prefill replicas", lambda: gated_by() == [2], 30)
    # Prefill and decode moved in one decision each time, at the configured 1:2 ratio
    # (prefill rounded up), and ended exactly on it.
    outs = [e for e in plane.status()["decisions"] if e["reason"] == "scale_out"]
    assert outs and all(e["prefill"] == math.ceil(e["decode"] / 2) for e in outs)
    assert all(e["decode"] > e["had_decode"] and e["prefill"] >= e["had_prefill"] for e in outs)
    # The only DG was resized, not replaced: its original replicas still serve.
    assert [d["app"] for d in dgs] == [app]
    for role in ("prefill", "decode"):
        assert set(before[role]) <= set(replica_ids(app, role))
    # Every replica sits on a node of its role's GPU type inside the DG's S1 domain.
    labels = {n["NodeID"]: n["Labels"] for n in ray.nodes() if n["Alive"]}
    domain = dgs[0]["domain"].split(":", 1)[1]
    for rep in replica_details(app):
        if rep["state"] != "RUNNING":
            continue
        node = labels[rep["node_id"]]
        assert node[LABEL_GPU_TYPE] == {"prefill": "L20", "decode": "H20"}[rep["role"]]
        assert node[LABEL_S1] == domain
    assert not plane.load.failures(), plane.load.failures()[:3]


def test_load_drop_scales_in_softly_after_cooldown(plane: Plane) -> None:
    plane.level[0] = LOW
    saw_soft = wait_for(
        "a soft scale-in (instances out of routing, still running)",
        lambda: (st := plane.status())["pre_scheduler"]["pending_removals"] and st,
        120,
        every_s=0.5,
    )
    dgs = saw_soft["pre_scheduler"]["dgs"]
    target = _totals(dgs)
    assert target < (2, 4)
    assert _running(dgs)[1] > target[1], "removed replicas keep running during the window"
    assert dgs[0]["weight"] < 1.0, "the shrinking DG gets a smaller share of new requests"
    # The scale-in may end at the decode minimum (reason clamped_min_max) rather than plain
    # scale_in; either way both roles shrink in one decision and keep the 1:2 ratio.
    scale_in = [e for e in saw_soft["decisions"] if e["decode"] < e["had_decode"]]
    assert scale_in, [
        (e["reason"], e["had_prefill"], e["had_decode"], e["prefill"], e["decode"])
        for e in saw_soft["decisions"]
    ] + [saw_soft["pre_scheduler"]["pending_removals"]]
    assert scale_in[-1]["reason"] in ("scale_in", "clamped_min_max")
    assert scale_in[-1]["prefill"] == math.ceil(scale_in[-1]["decode"] / 2)
    wait_for(
        "the window to pass and replicas to stop",
        lambda: (
            (st := plane.status())["pre_scheduler"]["pending_removals"] == []
            and _running(st["pre_scheduler"]["dgs"]) == (1, 2)
        ),
        90,
    )
    assert not plane.load.failures(), plane.load.failures()[:3]


def test_malformed_update_is_rejected_and_old_config_keeps_serving(plane: Plane) -> None:
    import requests

    from heteroscale_ray.actors.control_plane import update_services

    bad = SERVICES_YAML.replace('pd_ratio: "1:2"', 'pd_ratio: "two to one"')
    ok, message = update_services(bad)
    assert not ok
    assert "pd_ratio" in message and "1:3" in message  # says what is wrong and how to write it
    ok, message = update_services("services: [ {name: chat")
    assert not ok and message
    st = plane.status()
    assert [s["pd_ratio"] for s in st["services"]] == ["1:2"]
    cycles = st["cycles"]
    wait_for("the loop to keep running", lambda: plane.status()["cycles"] > cycles + 1, 30)
    r = requests.post(
        f"{plane.url}/v1/completions",
        json={"model": SERVICE, "prompt": "still here", "max_tokens": 4},
        timeout=60,
    )
    assert r.status_code == 200, r.text


def _settled(plane: Plane) -> None:
    """Restart tests compare replica ids, so start them with no soft removal in flight."""
    wait_for(
        "no pending removals and every target replica running",
        lambda: (
            not (st := plane.status())["pre_scheduler"]["pending_removals"]
            and _running(st["pre_scheduler"]["dgs"]) == _totals(st["pre_scheduler"]["dgs"])
        ),
        120,
    )


def _serve_dg_apps() -> list[str]:
    from ray import serve

    return sorted(a for a in serve.status().applications if a.startswith(f"{SERVICE}-"))


def _all_replica_ids(apps: list[str]) -> set[str]:
    from heteroscale_ray.serving.deployments import replica_ids

    return {rid for app in apps for role in ("prefill", "decode") for rid in replica_ids(app, role)}


def test_policy_engine_restart_resumes_from_checkpoint(plane: Plane) -> None:
    import ray

    from heteroscale_ray.actors.checkpoint import NAMESPACE, POLICY_ENGINE

    _settled(plane)
    apps = _serve_dg_apps()
    replicas = _all_replica_ids(apps)
    before = plane.status()
    ray.kill(ray.get_actor(POLICY_ENGINE, namespace=NAMESPACE), no_restart=False)
    after = wait_for(
        "the policy engine to come back and run cycles",
        lambda: (st := plane.status())["restored"] and st["cycles"] > before["cycles"] + 1 and st,
        90,
    )
    # Resumed: the decision log and cycle count came from the checkpoint, not from zero.
    assert after["cycles"] > before["cycles"]
    assert {e["time"] for e in before["decisions"]} & {e["time"] for e in after["decisions"]}
    assert _serve_dg_apps() == apps
    assert _all_replica_ids(apps) == replicas
    assert [d["app"] for d in after["pre_scheduler"]["dgs"]] == apps
    assert not plane.load.failures(), plane.load.failures()[:3]


def test_sub_cluster_scheduler_restart_creates_nothing_twice(plane: Plane) -> None:
    import ray

    from heteroscale_ray.actors.checkpoint import NAMESPACE, sub_cluster_actor

    _settled(plane)
    apps = _serve_dg_apps()
    replicas = _all_replica_ids(apps)
    actor = ray.get_actor(sub_cluster_actor("s2-a"), namespace=NAMESPACE)
    cycles = plane.status()["cycles"]
    ray.kill(actor, no_restart=False)
    wait_for(
        "the scheduler to come back restored",
        lambda: ray.get(actor.status.remote(), timeout=10)["restored"],
        90,
    )
    wait_for("cycles after the restart", lambda: plane.status()["cycles"] > cycles + 2, 60)
    assert ray.get(actor.status.remote(), timeout=10)["owned_apps"] == apps
    assert _serve_dg_apps() == apps
    assert _all_replica_ids(apps) == replicas
    st = plane.status()
    assert st["last_error"] is None
    assert all(d["gate_open"] for d in st["pre_scheduler"]["dgs"])
    assert not plane.load.failures(), plane.load.failures()[:3]


def test_routing_table_restart_is_repaired_by_the_next_cycles(plane: Plane) -> None:
    """Ray restarts the routing table with the routes of its checkpoint, and the sub-cluster
    schedulers would put any running DG it lacks back (no redeploy): every DG is routed again,
    nothing is redeployed, and traffic flows under load afterwards."""
    import ray
    from ray._private import state

    from heteroscale_ray.serving.deployments import routed_apps
    from heteroscale_ray.serving.routing_table import get_routing_table

    _settled(plane)
    apps = _serve_dg_apps()
    replicas = _all_replica_ids(apps)
    table = get_routing_table(create=False)
    info = lambda: state.actors(table._actor_id.hex())  # noqa: E731
    restarts = info()["NumRestarts"]
    ray.kill(table, no_restart=False)
    # the restarted table must be the one answering below, not the old one before the kill
    wait_for(
        "the routing table restarted",
        lambda: info()["NumRestarts"] > restarts and info()["State"] == "ALIVE",
        60,
    )
    wait_for("every DG back in routing", lambda: routed_apps() == set(apps), 60)
    time.sleep(2)  # routers re-read the table every 0.5 s
    mark = len(plane.load.records)
    time.sleep(10)
    recent = plane.load.records[mark:]
    assert recent and all(r.ok for r in recent), [r for r in recent if not r.ok][:3]
    assert _serve_dg_apps() == apps
    assert _all_replica_ids(apps) == replicas
