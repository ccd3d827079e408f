"""Serving directory: which DGs serve which service, their routing gates, and replica reports.

One named, detached actor (``heteroscale-routing`` in namespace ``heteroscale``) is the single
place the control plane writes routing intent to (draining, ratio gate, capacity weight) and
the ingress routers read from (cached for ~0.5 s). Replicas push their stats here too, so the
policy engine polls one actor instead of fanning out to every replica.

The DG choice itself (`choose_dg`) is a pure function so it can be tested without Ray.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from heteroscale_ray.serving.engine import ModelConfig

ROUTING_ACTOR_NAME = "heteroscale-routing"
ROUTING_NAMESPACE = "heteroscale"
STATS_TTL_S = 10.0  # replica reports older than this are dropped (replica gone or stuck)


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
    """Actor body. State is in memory; the control plane re-applies its intent after a restart."""

    def __init__(self) -> None:
        self._services: dict[str, ServiceRoute] = {}
        self._version = 0
        self._stats: dict[str, tuple[float, dict[str, Any]]] = {}
        self._arrivals: dict[str, tuple[float, dict[str, float]]] = {}

    # ---- routes (written by deployments.py / the control plane) ----
    def register_service(self, name: str, engine: ModelConfig, model_profile: str) -> None:
        old = self._services.get(name)
        dgs = old.dgs if old else {}
        self._services[name] = ServiceRoute(name, engine, model_profile, dict(dgs))
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

    # ---- replica reports (pushed by replicas about once a second) ----
    def report_stats(self, replica_id: str, stats: dict[str, Any]) -> None:
        self._stats[replica_id] = (time.monotonic(), stats)

    def report_arrivals(self, ingress_id: str, rates: dict[str, float]) -> None:
        """One ingress replica's prompt tokens/s per service (its `ArrivalMeter`)."""
        self._arrivals[ingress_id] = (time.monotonic(), dict(rates))

    def arrival_rates(self) -> dict[str, float]:
        """Prompt tokens/s per service, summed over ingress replicas with a fresh report."""
        now = time.monotonic()
        out: dict[str, float] = {}
        for t, rates in list(self._arrivals.values()):
            if now - t <= STATS_TTL_S:
                for name, rate in rates.items():
                    out[name] = out.get(name, 0.0) + rate
        return out

    def forget_replica(self, replica_id: str) -> None:
        self._stats.pop(replica_id, None)

    def replica_stats(
        self, app_name: str | None = None, role: str | None = None
    ) -> list[dict[str, Any]]:
        """Fresh reports, optionally filtered by application (DG) and role."""
        now = time.monotonic()
        # Threaded actor: a concurrent call may prune or add reports, so copy and pop safely.
        for rid in [r for r, (t, _) in list(self._stats.items()) if now - t > STATS_TTL_S]:
            self._stats.pop(rid, None)
        return [
            s
            for _, s in list(self._stats.values())
            if (app_name is None or s.get("app_name") == app_name)
            and (role is None or s.get("role") == role)
        ]


def get_routing_table(create: bool = True) -> Any:
    """Handle to the routing-table actor, creating it (detached, restartable) when missing."""
    import ray

    if not create:
        return ray.get_actor(ROUTING_ACTOR_NAME, namespace=ROUTING_NAMESPACE)
    actor_cls = ray.remote(RoutingTable)
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
