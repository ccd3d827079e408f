"""Routing table: which DGs serve which service, and their routing gates.

One named, detached actor (``heteroscale-routing`` in namespace ``heteroscale``) is the single
place the control plane writes routing intent to (draining, ratio gate, capacity weight) and
the ingress routers read from (cached for ~0.5 s). The same actor hosts the metrics hub
(serving/metrics_hub.py) that replicas and ingresses push their reports to, so everything
serving-side lives in one actor: `ServingDirectory` composes the two, each in its own module.

The DG choice itself (`choose_dg`) is a pure function so it can be tested without Ray.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from heteroscale_ray.clock import Clock
from heteroscale_ray.config.services import DEFAULT_MIGRATION_LIMIT
from heteroscale_ray.serving.metrics_hub import MetricsHub
from heteroscale_ray.serving.model import ModelConfig

ROUTING_ACTOR_NAME = "heteroscale-routing"
ROUTING_NAMESPACE = "heteroscale"


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


class RoutingTable:
    """Services and their DG routes, versioned so readers can cache. State is in memory; the
    control plane re-applies its intent after a restart."""

    def __init__(self) -> None:
        self._services: dict[str, ServiceRoute] = {}
        self._version = 0

    # ---- routes (written by deployments.py / the control plane) ----
    def register_service(
        self,
        name: str,
        engine: ModelConfig,
        model_profile: str,
        migration_limit: int | None = None,
    ) -> None:
        """Add or update a service; its DGs stay, and so does its migration limit when
        `migration_limit` is None (a DG re-deploy does not know the service's config)."""
        old = self._services.get(name)
        dgs = old.dgs if old else {}
        if migration_limit is None:
            migration_limit = old.migration_limit if old else DEFAULT_MIGRATION_LIMIT
        self._services[name] = ServiceRoute(name, engine, model_profile, dict(dgs), migration_limit)
        self._version += 1

    def remove_service(self, name: str) -> None:
        self._services.pop(name, None)
        self._version += 1

    def upsert_dg(self, route: DgRoute) -> None:
        svc = self._services.get(route.service)
        if svc is None:
            raise KeyError(f"service {route.service!r} not registered; call register_service first")
        svc.dgs[route.dg_id] = route
        self._version += 1

    def update_dg(self, service: str, dg_id: str, **changes: Any) -> DgRoute:
        """Change some fields of a DG route (draining, ratio_gate_open, weight, *_replicas)."""
        route = replace(self._services[service].dgs[dg_id], **changes)
        self._services[service].dgs[dg_id] = route
        self._version += 1
        return route

    def remove_dg(self, service: str, dg_id: str) -> None:
        svc = self._services.get(service)
        if svc is not None:
            svc.dgs.pop(dg_id, None)
        self._version += 1

    def snapshot(self) -> tuple[int, dict[str, ServiceRoute]]:
        return self._version, dict(self._services)

    def version(self) -> int:
        return self._version


class ServingDirectory(RoutingTable, MetricsHub):
    """The routing-table actor's body: the routes plus the metrics hub, one Ray actor.

    `clock` times the hub's reports (TTL); the routes themselves never read the time.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        RoutingTable.__init__(self)
        MetricsHub.__init__(self, clock)


def get_routing_table(create: bool = True) -> Any:
    """Handle to the routing-table actor, creating it (detached, restartable) when missing."""
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
        max_restarts=-1,
        max_concurrency=64,
    ).remote()


def kill_routing_table() -> None:
    """Remove the detached actor (tests, `heteroscale down`); a no-op when absent."""
    import ray

    with contextlib.suppress(ValueError):
        ray.kill(get_routing_table(create=False), no_restart=True)
