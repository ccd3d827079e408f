"""The ingress survives a GPU host's loss: the Router replicas and the routing-table actor sit on
the head node, and a restarted routing table reads its routes back from the GCS KV store, so it
never answers a registered service with 404 (issue 11's chaos run lost 9 requests that way).

A router answers from a view of the table up to one refresh old, and that view is frozen while
the table restarts (Ray fails calls to a restarting actor rather than queueing them). So before a
404 or 503 it asks the table again until the restarted one answers: the reverted first version of
this change failed here with a 503 'no deployment group ready' from a router whose view predated
the DG.

Pure part: the checkpoint format and a table over an in-memory store. Ray part (slow): on the
shared local cluster, where they land, a killed routing table that keeps serving, and a route no
router has seen that must be served while the table restarts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from heteroscale_ray.serving.model import ModelConfig
from heteroscale_ray.serving.routing_table import (
    DgRoute,
    RoutingTable,
    ServiceRoute,
    routes_from_json,
    routes_to_json,
)

ENGINE = ModelConfig(n_layers=2, d_model=64, n_heads=4, max_context=512, kv_capacity_tokens=8192)


class MemoryStore:
    """An in-memory RouteStore; keeps the JSON text, as the GCS KV store does."""

    def __init__(self, text: str | None = None) -> None:
        self.text = text
        self.saves = 0

    def load(self) -> dict[str, Any] | None:
        return None if self.text is None else json.loads(self.text)

    def save(self, data: dict[str, Any]) -> None:
        self.text = json.dumps(data)
        self.saves += 1


def make_dg(dg_id: str, service: str = "chat", **kw: Any) -> DgRoute:
    return DgRoute(service=service, dg_id=dg_id, app_name=f"{service}-{dg_id}", **kw)


@pytest.mark.parametrize(
    "services",
    [
        {},
        {"chat": ServiceRoute("chat", ENGINE)},
        {
            "chat": ServiceRoute(
                "chat",
                ENGINE,
                "dense-70b",
                {
                    "dg0": make_dg("dg0", prefill_replicas=2, decode_replicas=3, weight=0.5),
                    "dg1": make_dg("dg1", draining=True, ratio_gate_open=False),
                },
                migration_limit=0,
            ),
            "code": ServiceRoute("code", ModelConfig(), dgs={"a": make_dg("a", "code")}),
        },
    ],
)
def test_routes_round_trip_through_json(services: dict[str, ServiceRoute]) -> None:
    text = json.dumps(routes_to_json(7, services))
    assert routes_from_json(json.loads(text)) == (7, services)


def test_a_table_restarted_on_its_store_has_its_routes_and_limits() -> None:
    store = MemoryStore()
    t = RoutingTable(store)
    t.register_service("chat", ENGINE, "dense-8b", migration_limit=5)
    t.upsert_dg(make_dg("dg0"))
    t.update_dg("chat", "dg0", draining=True, decode_replicas=2)
    t.register_service("gone", ENGINE, "dense-8b")
    t.remove_service("gone")
    assert store.saves == 5  # every change is saved before the call returns
    version, services = t.snapshot()

    again = RoutingTable(store)  # what the actor's constructor does after a restart
    v2, restored = again.snapshot()
    assert restored == services and again.restored == 1
    assert restored["chat"].migration_limit == 5
    assert restored["chat"].dgs["dg0"] == make_dg("dg0", draining=True, decode_replicas=2)
    assert v2 > version  # readers that cached the old version re-fetch
    again.register_service("chat", ENGINE, "dense-8b")  # a DG re-deploy keeps the limit
    assert again.snapshot()[1]["chat"].migration_limit == 5


def test_an_unreadable_checkpoint_starts_empty_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="heteroscale_ray.serving.routing_table"):
        t = RoutingTable(MemoryStore(json.dumps({"version": 3, "services": [{"name": "x"}]})))
    assert t.snapshot()[1] == {} and t.restored == 0
    assert "routing checkpoint unreadable" in caplog.text


def test_a_table_without_a_store_keeps_routes_in_memory_only() -> None:
    t = RoutingTable()
    t.register_service("chat", ENGINE, "dense-8b")
    assert "chat" in t.snapshot()[1]  # routed in memory...
    assert RoutingTable().snapshot()[1] == {}  # ...and nowhere a new table could restore it


# ---- on the shared local Ray cluster ----

SERVICE = "pinned"
LIMIT = 3


@dataclass
class Stack:
    url: str
    app: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _head_node_id() -> str:
    import ray
    from ray._common.constants import HEAD_NODE_RESOURCE_NAME

    return next(
        n["NodeID"] for n in ray.nodes() if n["Alive"] and HEAD_NODE_RESOURCE_NAME in n["Resources"]
    )


def _actor_info(actor: Any) -> dict[str, Any]:
    from ray._private import state

    return state.actors(actor._actor_id.hex())


@pytest.fixture(scope="module")
def stack(ray_cluster: object) -> Iterator[Stack]:
    from ray import serve

    from heteroscale_ray.serving.deployments import (
        DgServingSpec,
        RoleServing,
        deploy_dg,
        deploy_ingress,
        register_service,
    )
    from heteroscale_ray.serving.emulation import EmulationConfig
    from heteroscale_ray.serving.routing_table import kill_routing_table

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        deploy_ingress(replicas=2, max_inflight=64, token_timeout_s=20.0)
        register_service(SERVICE, ENGINE, "dense-8b", migration_limit=LIMIT)
        app = deploy_dg(
            DgServingSpec(
                service=SERVICE,
                dg_id="a0",
                prefill=RoleServing(gpu_type="L20"),
                decode=RoleServing(gpu_type="H20"),
                domain="s1-a0",
                engine=ENGINE,
                emulation=EmulationConfig(enabled=True, time_scale=1.0),
            )
        )
        yield Stack(url=f"http://127.0.0.1:{port}", app=app)
    finally:
        serve.shutdown()
        kill_routing_table()


def _complete(stack: Stack, model: str = SERVICE, prefix: str = "") -> requests.Response:
    return requests.post(
        f"{stack.url}{prefix}/v1/completions",
        json={"model": model, "prompt": "hello there", "max_tokens": 4, "seed": 1},
        timeout=60,
    )


def _kill_and_wait_until_down(table: Any) -> int:
    """Kill the table (Ray restarts it) and return once it is seen down; its restart count before."""
    import ray

    restarts = _actor_info(table)["NumRestarts"]
    ray.kill(table, no_restart=False)
    deadline = time.monotonic() + 30  # a bound on the wait, not a timing assertion
    while (info := _actor_info(table))["State"] == "ALIVE" and info["NumRestarts"] == restarts:
        assert time.monotonic() < deadline, "the killed routing table never went down"
        time.sleep(0.02)
    return restarts


@pytest.mark.slow
def test_router_and_routing_table_run_on_the_head_node(stack: Stack) -> None:
    import ray

    from heteroscale_ray.serving.deployments import INGRESS_APP, _controller
    from heteroscale_ray.serving.routing_table import get_routing_table

    head = _head_node_id()
    details = ray.get(_controller().get_serve_instance_details.remote())
    routers = details["applications"][INGRESS_APP]["deployments"]["Router"]["replicas"]
    assert len(routers) == 2
    assert {r["node_id"] for r in routers} == {head}
    assert _actor_info(get_routing_table(create=False))["Address"]["NodeID"] == head
    head_resources = next(n["Resources"] for n in ray.nodes() if n["NodeID"] == head)
    assert "GPU" not in head_resources


@pytest.mark.slow
def test_a_killed_routing_table_comes_back_with_its_routes(stack: Stack) -> None:
    import ray

    from heteroscale_ray.serving.routing_table import get_routing_table

    assert _complete(stack).status_code == 200
    table = get_routing_table(create=False)
    restarts = _kill_and_wait_until_down(table)

    # Requests while the table restarts: the routers answer from their last view, or wait for
    # the restarted table when that view cannot; once back it serves what it had. No request
    # may see 404 (or any error).
    statuses = []
    deadline = time.monotonic() + 120  # a bound on the wait, not a timing assertion
    while True:
        statuses.append(_complete(stack).status_code)
        info = _actor_info(table)
        if info["State"] == "ALIVE" and info["NumRestarts"] > restarts and len(statuses) >= 5:
            break
        assert time.monotonic() < deadline, f"routing table did not restart: {info['State']}"
    time.sleep(1.0)  # the routers refresh their view every 0.5 s: now from the restarted table
    statuses += [_complete(stack).status_code for _ in range(3)]
    assert statuses == [200] * len(statuses)

    _, services = ray.get(table.snapshot.remote())
    assert services[SERVICE].migration_limit == LIMIT
    assert [dg.app_name for dg in services[SERVICE].dgs.values()] == [stack.app]
    assert _actor_info(table)["Address"]["NodeID"] == _head_node_id()


@pytest.mark.slow
def test_a_route_no_router_has_seen_is_served_while_the_table_restarts(stack: Stack) -> None:
    """A router whose view lacks the model waits for the restarting table, not a 404.

    A second ingress whose router refreshes only on a miss (period one hour) holds a view
    without the service 'late' (its DG the stack's application) that is written just before the
    table dies: the request reaches it while the table is down, so only the restarted table,
    with the route read back from its checkpoint, can answer it."""
    import ray
    from ray import serve

    from heteroscale_ray.serving.deployments import deploy_ingress, register_service
    from heteroscale_ray.serving.routing_table import DgRoute, get_routing_table

    lazy = deploy_ingress(name="lazy-ingress", route_prefix="/lazy", refresh_s=3600.0)
    table = get_routing_table(create=False)
    try:
        assert _complete(stack, prefix="/lazy").status_code == 200  # its view: 'pinned' only
        register_service("late", ENGINE, "dense-8b")
        ray.get(table.upsert_dg.remote(DgRoute("late", "a0", stack.app)))
        restarts = _kill_and_wait_until_down(table)

        r = _complete(stack, model="late", prefix="/lazy")
        assert r.status_code == 200, r.text
        assert _actor_info(table)["NumRestarts"] > restarts
        models = requests.get(f"{stack.url}/lazy/v1/models", timeout=10).json()["data"]
        assert {"late", SERVICE} <= {m["id"] for m in models}  # the view it adopted
    finally:
        serve.delete(lazy)
        ray.get(table.remove_service.remote("late"))


@pytest.mark.slow
def test_a_silent_routing_table_gets_a_retryable_503_not_a_404(stack: Stack) -> None:
    """A router whose view cannot answer and whose table stays silent longer than it waits
    (`refresh_on_miss_s`, 1 s here, 10 s by default) refuses with a retryable 503
    `routing_unavailable`, never a 404 for a model it could not check, names nothing internal,
    and stays healthy; once a table answers again, it serves and 404s from a confirmed view.

    The silent table is an actor holding the table's name whose `snapshot` never returns (a hung
    or swamped table): the real one is killed without restart and the name taken over, again
    if a router re-created the real one in between."""
    import ray
    from ray import serve

    from heteroscale_ray.serving.deployments import deploy_ingress
    from heteroscale_ray.serving.routing_table import (
        ROUTING_ACTOR_NAME,
        ROUTING_NAMESPACE,
        get_routing_table,
    )

    class SilentTable:
        async def snapshot(self) -> None:
            import asyncio

            await asyncio.sleep(3600)

    quick = deploy_ingress(name="quick-ingress", route_prefix="/quick", refresh_on_miss_s=1.0)
    real_id = get_routing_table(create=False)._actor_id.hex()
    silent = None
    try:
        deadline = time.monotonic() + 30  # a bound on the wait, not a timing assertion
        while silent is None:
            assert time.monotonic() < deadline, "could not take over the routing table's name"
            with contextlib.suppress(ValueError):  # ValueError: the name is free
                ray.kill(ray.get_actor(ROUTING_ACTOR_NAME, ROUTING_NAMESPACE), no_restart=True)
            try:
                silent = (
                    ray.remote(SilentTable)
                    .options(name=ROUTING_ACTOR_NAME, namespace=ROUTING_NAMESPACE, num_cpus=0)
                    .remote()
                )
            except ValueError:  # name still held (not yet released, or a router re-created it)
                time.sleep(0.02)
        ray.get(silent.__ray_ready__.remote(), timeout=30)

        t0 = time.monotonic()
        r = _complete(stack, model="never-registered", prefix="/quick")
        waited = time.monotonic() - t0
        assert r.status_code == 503, r.text
        body = r.json()
        assert set(body) == {"error"}
        assert body["error"]["type"] == "service_unavailable"
        assert body["error"]["code"] == "routing_unavailable"
        assert body["error"]["message"] == "the routing table is not answering; retry later"
        for internal in (real_id, silent._actor_id.hex(), "SilentTable", "ServingDirectory"):
            assert internal not in r.text
        assert 1.0 <= waited < 10.0, waited  # it waited for the table, not the 10 s default
        assert requests.get(f"{stack.url}/quick/health", timeout=10).status_code == 200
    finally:
        if silent is not None:
            ray.kill(silent, no_restart=True)
        get_routing_table()  # the real table again, its routes read back from the checkpoint
    try:
        r = _complete(stack, prefix="/quick")  # its view had the service: served all along
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 30
        while (r := _complete(stack, model="never-registered", prefix="/quick")).status_code == 503:
            assert time.monotonic() < deadline, "the router never heard from the table again"
            time.sleep(0.25)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
        assert requests.get(f"{stack.url}/quick/health", timeout=10).status_code == 200
    finally:
        serve.delete(quick)
