"""Routing table: which DGs serve which service, and their routing gates.

One named, detached actor (``heteroscale-routing`` in namespace ``heteroscale``) is the single
place the control plane writes routing intent to (draining, ratio gate, capacity weight) and
the ingress routers read from (cached for ~0.5 s). The same actor hosts the metrics hub
(serving/metrics_hub.py) that replicas and ingresses push their reports to, so everything
serving-side lives in one actor: `ServingDirectory` composes the two, each in its own module.

The DG choice itself (`choose_dg`) is a pure function so it can be tested without Ray.

The actor is pinned to the head node (like Serve's controller), so losing a GPU host never
takes it down; and it checkpoints its routes in the GCS KV store after every change and reads
them back when it starts, so a restarted table serves the routes it had, not 404s, before the
control plane's next cycle.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from heteroscale_ray.clock import Clock
from heteroscale_ray.config.services import DEFAULT_MIGRATION_LIMIT
from heteroscale_ray.serving.metrics_hub import MetricsHub
from heteroscale_ray.serving.model import ModelConfig

ROUTING_ACTOR_NAME = "heteroscale-routing"
ROUTING_NAMESPACE = "heteroscale"
ROUTING_KV_KEY = "routing"  # GCS KV key (namespace ROUTING_NAMESPACE) of the routes checkpoint

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DgRoute:
    """Routing view of one Deployment Group (one Serve application)."""

    service: str
    dg_id: str
    app_name: str
    prefill_replicas: int = 1
    decode_replicas: int = 1
    weight: float = 1.0  # relative capacity of one decode replica (e.g. by GPU type)
    draining: bool = False  # soft scale-in: no new requests
    ratio_gate_open: bool = True  # start-up skew gate: held back while closed
    # Prefill replicas Serve runs (None until the control plane has seen them: the target
    # count stands in). The ingress's gate lets calls out by these, not by ones still starting
    # nor by ones a scale-in is stopping.
    prefill_running: int | None = None

    @property
    def prefill_serving(self) -> int:
        """Prefill replicas that take calls now and will keep taking them: those running and
        wanted (the target until the running ones are known)."""
        if self.prefill_running is None:
            return self.prefill_replicas
        return min(self.prefill_running, self.prefill_replicas)

    @property
    def capacity(self) -> float:
        """Load units this DG can carry; the router compares in-flight requests against it."""
        return max(self.weight * self.decode_replicas, 1e-9)


@dataclass(frozen=True)
class ServiceRoute:
    """A service as the ingress sees it: model limits plus its DGs."""

    name: str
    engine: ModelConfig
    model_profile: str = "dense-8b"
    dgs: dict[str, DgRoute] = field(default_factory=dict)
    # Moves one request may make after replica failures (ServiceSpec.migration_limit).
    migration_limit: int = DEFAULT_MIGRATION_LIMIT
    # The service's TTFT SLO: the ingress's order for held prefill work (admission.py).
    ttft_slo_s: float | None = None


def choose_dg(dgs: Mapping[str, DgRoute], inflight: Mapping[str, int]) -> DgRoute | None:
    """Least loaded DG relative to capacity, preferring open gates over closed ones over draining.

    A closed ratio gate or a draining flag only holds a DG back while another DG can take the
    request; a request is never refused just because every DG is gated. A DG without prefill
    or without decode replicas is never chosen: it could not finish the request.
    """

    def tier(d: DgRoute) -> int:
        if d.draining:
            return 2
        return 0 if d.ratio_gate_open else 1

    whole = [d for d in dgs.values() if d.prefill_replicas > 0 and d.decode_replicas > 0]
    if not whole:
        return None
    return min(
        whole,
        key=lambda d: (tier(d), inflight.get(d.app_name, 0) / d.capacity, d.dg_id),
    )


def routes_to_json(version: int, services: Mapping[str, ServiceRoute]) -> dict[str, Any]:
    """The routes as plain JSON data (the checkpoint's format)."""
    return {
        "version": version,
        "services": [
            {
                "name": svc.name,
                "engine": asdict(svc.engine),
                "model_profile": svc.model_profile,
                "migration_limit": svc.migration_limit,
                "ttft_slo_s": svc.ttft_slo_s,
                "dgs": [asdict(dg) for dg in svc.dgs.values()],
            }
            for svc in services.values()
        ],
    }


def routes_from_json(data: Mapping[str, Any]) -> tuple[int, dict[str, ServiceRoute]]:
    """Inverse of `routes_to_json`; raises (KeyError, TypeError, ValueError) on a bad document."""
    services = {}
    for s in data["services"]:
        dgs = {d["dg_id"]: DgRoute(**d) for d in s["dgs"]}
        services[s["name"]] = ServiceRoute(
            name=s["name"],
            engine=ModelConfig(**s["engine"]),
            model_profile=s["model_profile"],
            dgs=dgs,
            migration_limit=int(s["migration_limit"]),
            ttft_slo_s=None if s.get("ttft_slo_s") is None else float(s["ttft_slo_s"]),
        )
    return int(data["version"]), services


class RouteStore(Protocol):
    """Where the table keeps its routes across restarts."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, data: dict[str, Any]) -> None: ...


class GcsRouteStore:
    """The routes checkpoint in Ray's GCS internal KV, which outlives every worker node."""

    def load(self) -> dict[str, Any] | None:
        from ray.experimental import internal_kv

        raw = internal_kv._internal_kv_get(ROUTING_KV_KEY, namespace=ROUTING_NAMESPACE)
        return None if raw is None else json.loads(raw)

    def save(self, data: dict[str, Any]) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(
            ROUTING_KV_KEY, json.dumps(data), overwrite=True, namespace=ROUTING_NAMESPACE
        )

    @staticmethod
    def clear() -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_del(ROUTING_KV_KEY, namespace=ROUTING_NAMESPACE)


class RoutingTable:
    """Services and their DG routes, versioned so readers can cache.

    With a `store`, every change is saved before the call returns and the constructor reads
    the saved routes back (version bumped, so every reader re-fetches); without one, state is
    in memory only. A lock keeps a change and its save together (the actor is threaded).
    """

    def __init__(self, store: RouteStore | None = None) -> None:
        self._services: dict[str, ServiceRoute] = {}
        self._version = 0
        self._store = store
        self._lock = threading.RLock()
        self.restored = 0  # services read back from the store at start
        data = None if store is None else store.load()
        if data is not None:
            try:
                version, self._services = routes_from_json(data)
            except (KeyError, TypeError, ValueError) as e:  # the control plane re-registers
                logger.warning("routing checkpoint unreadable, starting empty: %r", e)
                self._services = {}
            else:
                self._version = version + 1
                self.restored = len(self._services)
                logger.info("routing table restored %d services from its checkpoint", self.restored)

    def _changed(self) -> None:
        """Bump the version and save (call with the lock held)."""
        self._version += 1
        if self._store is not None:
            self._store.save(routes_to_json(self._version, self._services))

    # ---- routes (written by deployments.py / the control plane) ----
    def register_service(
        self,
        name: str,
        engine: ModelConfig,
        model_profile: str,
        migration_limit: int | None = None,
        ttft_slo_s: float | None = None,
    ) -> None:
        """Add or update a service; its DGs stay, and so do its migration limit and TTFT SLO
        when given as None (a DG re-deploy does not know the service's config)."""
        with self._lock:
            old = self._services.get(name)
            dgs = old.dgs if old else {}
            if migration_limit is None:
                migration_limit = old.migration_limit if old else DEFAULT_MIGRATION_LIMIT
            if ttft_slo_s is None and old is not None:
                ttft_slo_s = old.ttft_slo_s
            self._services[name] = ServiceRoute(
                name, engine, model_profile, dict(dgs), migration_limit, ttft_slo_s
            )
            self._changed()

    def remove_service(self, name: str) -> None:
        with self._lock:
            self._services.pop(name, None)
            self._changed()

    def upsert_dg(self, route: DgRoute) -> None:
        with self._lock:
            svc = self._services.get(route.service)
            if svc is None:
                raise KeyError(
                    f"service {route.service!r} not registered; call register_service first"
                )
            svc.dgs[route.dg_id] = route
            self._changed()

    def update_dg(self, service: str, dg_id: str, **changes: Any) -> DgRoute:
        """Change some fields of a DG route (draining, ratio_gate_open, weight, *_replicas)."""
        with self._lock:
            route = replace(self._services[service].dgs[dg_id], **changes)
            self._services[service].dgs[dg_id] = route
            self._changed()
            return route

    def remove_dg(self, service: str, dg_id: str) -> None:
        with self._lock:
            svc = self._services.get(service)
            if svc is not None:
                svc.dgs.pop(dg_id, None)
            self._changed()

    def snapshot(self) -> tuple[int, dict[str, ServiceRoute]]:
        with self._lock:
            return self._version, {
                name: replace(svc, dgs=dict(svc.dgs)) for name, svc in self._services.items()
            }

    def version(self) -> int:
        return self._version


class ServingDirectory(RoutingTable, MetricsHub):
    """The routing-table actor's body: the routes plus the metrics hub, one Ray actor.

    `clock` times the hub's reports (TTL); the routes themselves never read the time. The
    hub's reports are not checkpointed: replicas and ingresses re-send them every second.
    """

    def __init__(self, clock: Clock | None = None, store: RouteStore | None = None) -> None:
        RoutingTable.__init__(self, store)
        MetricsHub.__init__(self, clock)


def head_node_resources() -> dict[str, float]:
    """A sliver of the resource only the head node has: what Serve pins its controller with.

    The head carries no GPUs (local cluster, cluster.yaml, KubeRay), so what sits there is
    never lost with a GPU host."""
    from ray._common.constants import HEAD_NODE_RESOURCE_NAME

    return {HEAD_NODE_RESOURCE_NAME: 0.001}


def get_routing_table(create: bool = True) -> Any:
    """Handle to the routing-table actor, creating it (detached, restartable, on the head node,
    checkpointed in the GCS KV store) when missing."""
    import ray

    if not create:
        return ray.get_actor(ROUTING_ACTOR_NAME, namespace=ROUTING_NAMESPACE)
    actor_cls = ray.remote(ServingDirectory)
    return actor_cls.options(
        name=ROUTING_ACTOR_NAME,
        namespace=ROUTING_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        resources=head_node_resources(),
        max_restarts=-1,
        max_concurrency=64,
    ).remote(None, GcsRouteStore())


def request_migrations() -> dict[str, dict[str, int]] | None:
    """Requests the ingress moved off failed replicas, per service and reason (all ingress
    replicas, since they started); None when no routing table runs or it does not answer."""
    import ray
    from ray.exceptions import RayError

    try:
        table = get_routing_table(create=False)
        return ray.get(table.request_migrations.remote(), timeout=30)
    except (ValueError, RayError):  # no serving stack here, or its actor is restarting
        return None


def kill_routing_table() -> None:
    """Remove the detached actor and its checkpoint (tests and benchmarks/serve_e2e.py), so the
    next table starts empty; a no-op when absent."""
    import ray

    with contextlib.suppress(ValueError):
        ray.kill(get_routing_table(create=False), no_restart=True)
    GcsRouteStore.clear()
