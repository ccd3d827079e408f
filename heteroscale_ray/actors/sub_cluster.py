"""SubClusterScheduler: carries out placement plans for one sub-cluster on Ray Serve.

It receives the *level* its DGs should be at (`DgTarget`s) rather than a diff, and reconciles
Serve to it: a missing DG application is deployed (pinned by labels), a role whose replica
count differs is scaled through Serve's external-scaler path (running replicas survive), the
routing gates (draining, weight, start-up-skew ratio gate) are re-applied, and applications it
owns that no target names any more are deleted. Applying the same targets twice changes
nothing, so a restarted scheduler (or a retried call) never creates a DG twice; the set of
applications it owns is checkpointed so none is orphaned across a restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from heteroscale_ray.actors.checkpoint import kv_get, kv_put
from heteroscale_ray.actors.serving_adapter import (
    DgServeState,
    DgTarget,
    ReplicaCounts,
    RouteState,
    ServingOptions,
    live_replicas,
    serving_spec,
)
from heteroscale_ray.control.startup_skew import gate_open

logger = logging.getLogger(__name__)
REPORT_TIMEOUT_S = 5.0


class SubClusterScheduler:
    """Actor body (threaded: status calls run while a reconcile is in progress)."""

    def __init__(self, name: str, options: ServingOptions) -> None:
        self.name = name
        self.options = options
        self._key = f"sub-cluster/{name}"
        self._lock = threading.Lock()
        saved = kv_get(self._key) or {}
        self._owned: set[str] = set(saved.get("owned_apps", []))
        self._hosts: dict[str, str] = dict(saved.get("hosts", {}))  # host -> node id
        self._nodes: dict[str, Any] = {}
        self._applied: dict[str, tuple[int, int]] = {}  # app -> replicas last requested
        self._routes: dict[str, RouteState] = {}
        self._status: dict[str, DgServeState] = {}
        self.restored = bool(saved)

    def _checkpoint(self) -> None:
        kv_put(self._key, {"owned_apps": sorted(self._owned), "hosts": self._hosts})

    # ---- inventory ----
    def sync_hosts(
        self, hosts: Sequence[tuple[str, str]], down: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        """Ensure a GpuNode actor per (host, node id) and collect their reports.

        A host whose actor does not answer within a few seconds is reported unhealthy, and the
        pre-scheduler leaves it out of the topology until it answers again. ``down`` are hosts
        whose Ray node is no longer alive: no actor is created for them; a handle still held
        is asked once (a dead actor fails at once) so the report says how it died. A host back
        on a new node gets a new actor (the old one was pinned to the dead node).
        """
        import ray

        from heteroscale_ray.actors.gpu_node import gpu_node_handle

        with self._lock:
            wanted = dict(hosts)
            moved = {h for h, n in wanted.items() if self._hosts.get(h) not in (None, n)}
            if wanted != self._hosts:
                self._hosts = wanted
                self._checkpoint()
            for host in moved:
                self._nodes.pop(host, None)
            for host, node_id in wanted.items():
                if host not in self._nodes:
                    self._nodes[host] = gpu_node_handle(host, node_id)
            probe = {h: self._nodes.pop(h) for h in down if h in self._nodes}
            for host in [h for h in self._nodes if h not in wanted]:
                del self._nodes[host]
            nodes = dict(self._nodes)
        refs = {host: actor.report.remote() for host, actor in {**nodes, **probe}.items()}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=REPORT_TIMEOUT_S)
        done = set(ready)
        reports = []
        for host, ref in refs.items():
            try:
                if ref not in done:
                    raise TimeoutError(f"no answer within {REPORT_TIMEOUT_S:g}s")
                report = ray.get(ref)
                if host in probe:
                    raise RuntimeError("answered, but its Ray node is not alive")
                reports.append(report)
            except Exception as e:  # actor dead or node gone
                reports.append(
                    {
                        "host": host,
                        "node_id": wanted.get(host),
                        "healthy": False,
                        "dead": _is_dead(e) or host in probe,
                        "error": f"{type(e).__name__}: {_first_line(e)}",
                    }
                )
                if host not in probe and _is_dead(e):
                    logger.warning("%s: GpuNode of %s is dead: %s", self.name, host, reports[-1])
                with self._lock:
                    self._nodes.pop(host, None)  # recreate (or re-fetch) next time
        for host in down:
            if host not in probe:
                reports.append(
                    {
                        "host": host,
                        "node_id": None,
                        "healthy": False,
                        "dead": True,
                        "error": "its Ray node is not alive",
                    }
                )
        return reports

    # ---- plans ----
    def reconcile(self, targets: Sequence[DgTarget]) -> dict[str, DgServeState]:
        """Bring Serve to ``targets``; returns per-DG replica readiness and gate state."""
        from heteroscale_ray.serving import deployments as dep

        with self._lock:
            live = live_replicas()
            routed = dep.routed_apps()
            wanted = {t.app_name: t for t in targets}
            failed: dict[str, str] = {}
            for app in sorted(wanted):
                try:  # one failing DG must not stop the others from being reconciled
                    self._reconcile_one(wanted[app], live, routed)
                except Exception as e:
                    failed[app] = f"{type(e).__name__}: {e}"
                    logger.warning("%s: reconciling %s failed: %s", self.name, app, failed[app])
            for app in sorted(self._owned - wanted.keys()):
                try:
                    if app in live:
                        dep.delete_dg(app, wait=False)
                        logger.info("%s: deleted DG %s", self.name, app)
                except Exception as e:
                    failed[app] = f"{type(e).__name__}: {e}"
                    logger.warning("%s: deleting %s failed: %s", self.name, app, failed[app])
                    continue
                self._owned.discard(app)
                self._applied.pop(app, None)
                self._routes.pop(app, None)
                self._checkpoint()
            self._status = {
                app: DgServeState(
                    prefill=live.get(app, {}).get("prefill", ReplicaCounts()),
                    decode=live.get(app, {}).get("decode", ReplicaCounts()),
                    gate_open=app in self._routes and self._routes[app].gate_open,
                    draining=wanted[app].draining,
                    weight=wanted[app].weight,
                    error=failed.get(app),
                )
                for app in wanted
            }
            return dict(self._status)

    def _reconcile_one(
        self, t: DgTarget, live: dict[str, dict[str, ReplicaCounts]], routed: set[str]
    ) -> None:
        from heteroscale_ray.serving import deployments as dep

        app = t.app_name
        if app not in live:
            dep.deploy_dg(serving_spec(t, self.options), wait=False)
            self._owned.add(app)
            self._checkpoint()
            self._applied[app] = (t.prefill, t.decode)
            self._routes[app] = RouteState(False, t.weight, False)
            logger.info("%s: deployed DG %s (%dP+%dD)", self.name, app, t.prefill, t.decode)
            return
        if app not in self._owned:
            self._owned.add(app)
            self._checkpoint()
        if app not in routed:  # the routing table restarted empty: put the DG back, re-gate it
            dep.restore_route(serving_spec(t, self.options))
            self._routes.pop(app, None)
            logger.info("%s: restored routing for %s", self.name, app)
        self._scale(app, t)
        self._route(app, t, live[app])

    def _scale(self, app: str, t: DgTarget) -> None:
        from heteroscale_ray.serving import deployments as dep

        before = self._applied.get(app)
        for k, role, n in ((0, "prefill", t.prefill), (1, "decode", t.decode)):
            if before is None or before[k] != n:
                dep.scale_role(app, role, n)
        if before != (t.prefill, t.decode):
            if before is not None:
                logger.info("%s: scaled %s to %dP+%dD", self.name, app, t.prefill, t.decode)
            self._applied[app] = (t.prefill, t.decode)

    def _route(self, app: str, t: DgTarget, live: dict[str, ReplicaCounts]) -> None:
        from heteroscale_ray.serving import deployments as dep

        ready_p = live.get("prefill", ReplicaCounts()).running
        ready_d = live.get("decode", ReplicaCounts()).running
        gate = gate_open(ready_p, ready_d, t.prefill, t.decode, self.options.ratio_tolerance)
        old = self._routes.get(app)
        if old is None or old.draining != t.draining:
            dep.set_draining(app, t.draining)
        if old is None or old.weight != t.weight:
            dep.set_weight(app, t.weight)
        if old is None or old.gate_open != gate:
            dep.set_ratio_gate(app, gate)
        if old is None or old.prefill_running != ready_p:
            # While replicas start, the ingress's gate lets calls out by those running: the
            # rest wait in its SLO order, not at Serve's handle in arrival order.
            dep.set_prefill_running(app, ready_p)
        self._routes[app] = RouteState(t.draining, t.weight, gate, ready_p)

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "hosts": dict(self._hosts),
            "owned_apps": sorted(self._owned),
            "dgs": dict(self._status),
            "restored": self.restored,
        }

    def delete_all(self) -> list[str]:
        """Delete every DG application this scheduler owns (``heteroscale stop --purge``)."""
        from heteroscale_ray.serving import deployments as dep

        with self._lock:
            live = live_replicas()
            gone = sorted(self._owned)
            for app in gone:
                if app in live:
                    dep.delete_dg(app, wait=False)
            self._owned.clear()
            self._checkpoint()
            return gone


def _is_dead(e: BaseException) -> bool:
    """Whether a failed GpuNode call means the actor is gone (not merely slow)."""
    from ray.exceptions import ActorUnschedulableError, RayActorError

    return isinstance(e, (RayActorError, ActorUnschedulableError))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""
