"""FederatedPreScheduler: the cluster-wide topology view, placement, and the fan-out of plans.

Every cycle it rebuilds the topology from Ray's node labels (or a given topology file), keeps
only hosts whose GpuNode actor answers its sub-cluster scheduler, tells the tick which hosts
the DG state uses are lost (their Ray node is dead, or was replaced: `topology.view.lost_hosts`)
so their instances are re-placed, and runs the shared tick
`control.ControlLoop.step` on the policy engine's decisions: the very tick the simulator runs
(settle soft removals -> retire unconfigured services -> plan -> pending removals), so both
substrates plan identically. This actor only gathers the tick's input and applies its result:
it checkpoints the new DG state before anything is actuated, and hands each sub-cluster
scheduler the DG targets it must reconcile Serve to.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from heteroscale_ray.actors.checkpoint import (
    NAMESPACE,
    dgs_from_json,
    dgs_to_json,
    kv_get,
    kv_put,
    load_services,
    pending_from_json,
    pending_to_json,
    sub_cluster_actor,
)
from heteroscale_ray.actors.dg_views import (
    cycle_report,
    dg_targets,
    status_snapshot,
    with_dead_hosts,
)
from heteroscale_ray.actors.serving_adapter import DgServeState, ServingOptions
from heteroscale_ray.config import (
    ServicesConfig,
    ServiceSpec,
    TopologySpec,
    topology_from_ray_nodes,
)
from heteroscale_ray.control import (
    ControlLoop,
    Desired,
    LoopState,
    Observation,
    RunningReplicas,
    TickInput,
    ready_and_starting,
)
from heteroscale_ray.control.node_loss import hosts_in_use
from heteroscale_ray.control.retire import unroutable
from heteroscale_ray.control.soft_scale_in import PendingRemoval
from heteroscale_ray.policy import RoleCounts
from heteroscale_ray.topology import (
    ClusterGraph,
    DeploymentGroup,
    describe_plan,
    domain_owners,
    without_hosts,
)
from heteroscale_ray.topology.view import lost_hosts

logger = logging.getLogger(__name__)
KEY = "pre-scheduler"
FAN_OUT_TIMEOUT_S = 60.0
SYNC_TIMEOUT_S = 15.0  # all sub-cluster host syncs of one cycle (each waits <= 5 s on nodes)
HOST_FORGET_S = 3600.0  # a dead host holding nothing stays in status this long


class FederatedPreScheduler:
    """Actor body (threaded; `run_cycle` is serialised by a lock)."""

    def __init__(
        self,
        config: ServicesConfig,
        topology: TopologySpec | None,
        options: ServingOptions,
        soft_window_s: float = 60.0,
    ) -> None:
        self.options = options
        self._lock = threading.Lock()
        self.config = load_services() or config  # a restart keeps the last accepted update
        self.loop = ControlLoop(catalog=self.config.catalog, soft_window_s=soft_window_s)
        self.static_topology = topology
        saved = kv_get(KEY) or {}
        self.state = LoopState(
            dgs_from_json(saved.get("dgs", [])),
            tuple(pending_from_json(p) for p in saved.get("pending", [])),
        )
        # Removed services whose routing-table entry goes once their last DG is stopped.
        self._unroute: set[str] = set(saved.get("unroute", []))
        self.restored = bool(saved)
        self._spec: TopologySpec | None = None
        self._graph: ClusterGraph | None = None
        self._schedulers: dict[str, Any] = {}
        # Domain -> owning sub-cluster, checkpointed so a restart during an outage keeps it.
        self._sub_cluster_of_domain: dict[str, str] = dict(saved.get("owners", {}))
        # Host -> Ray node id it ran on when the DG state was last committed; a host back on
        # another node lost what ran on the old one. Checkpointed with the DG state.
        self._seen_nodes: dict[str, str] = dict(saved.get("nodes", {}))
        # Host -> sub-cluster holding its GpuNode, checkpointed: a host whose node died while
        # this actor was down (or died with it) is still probed by, and reported as, its owner.
        self._sub_cluster_of_host: dict[str, str] = dict(saved.get("host_owners", {}))
        self._reports: dict[str, list[dict[str, Any]]] = {}  # last host reports per sub-cluster
        self._status: dict[str, DgServeState] = {}
        self._hosts: list[dict[str, Any]] = []
        self._bad_nodes: set[str] = set()  # why nodes were left out of the view (logged once)
        self._gone_since: dict[str, float] = {}  # host -> tick it was first seen gone and idle
        self._last: dict[str, Any] = {}

    @property
    def dgs(self) -> tuple[DeploymentGroup, ...]:
        return self.state.dgs

    @property
    def pending(self) -> tuple[PendingRemoval, ...]:
        return self.state.pending

    def _checkpoint(self) -> None:
        kv_put(
            KEY,
            {
                "dgs": dgs_to_json(self.dgs),
                "pending": [pending_to_json(p) for p in self.pending],
                "unroute": sorted(self._unroute),
                "owners": dict(sorted(self._sub_cluster_of_domain.items())),
                "nodes": dict(sorted(self._seen_nodes.items())),
                "host_owners": dict(sorted(self._sub_cluster_of_host.items())),
            },
        )

    def set_services(self, config: ServicesConfig) -> None:
        """Take a config the policy engine already validated (and checkpointed)."""
        with self._lock:
            old = set(self.config.by_name())
            self.config = config
            self.loop = replace(self.loop, catalog=config.catalog)
            removed = old - set(self.config.by_name())
            if removed - self._unroute:
                self._unroute |= removed
                self._checkpoint()

    # ---- topology ----
    def _scheduler(self, name: str) -> Any:
        import ray

        from heteroscale_ray.actors.sub_cluster import SubClusterScheduler
        from heteroscale_ray.serving.routing_table import head_node_resources

        if name not in self._schedulers:
            self._schedulers[name] = (
                ray.remote(SubClusterScheduler)
                .options(
                    name=sub_cluster_actor(name),
                    namespace=NAMESPACE,
                    lifetime="detached",
                    get_if_exists=True,
                    num_cpus=0,
                    max_restarts=-1,
                    max_task_retries=-1,
                    max_concurrency=4,
                    resources=head_node_resources(),
                )
                .remote(name, self.options)
            )
        return self._schedulers[name]

    def _refresh_topology(self) -> tuple[ClusterGraph, frozenset[str], dict[str, str]]:
        """Rebuild the view: Ray node labels (or the file), minus hosts that do not answer.

        Returns the graph, the hosts of the DG state that are lost (their Ray node died; not
        merely slow), and host -> node id of every host on a live node. Bounded: one
        `ray.nodes()` and one report round per sub-cluster (GpuNode calls time out after 5 s;
        a dead actor fails at once), and a sub-cluster that does not answer keeps its last
        reports rather than failing the cycle.
        """
        import ray

        nodes = ray.nodes()
        alive_nodes = [n for n in nodes if n.get("Alive")]
        alive_ids = {n["NodeID"] for n in alive_nodes}
        skipped: list[str] = []
        spec = self.static_topology or topology_from_ray_nodes(alive_nodes, skipped)
        strange = [h for *_, h in spec.hosts() if h.gpu_type not in self.config.catalog]
        unknown = {h.name for h in strange}
        skipped += [
            f"host {h.name} has GPU type {h.gpu_type!r}, which the catalog does not know: fix "
            "its heteroscale.io/gpu-type label or add the type to the catalog"
            for h in strange
        ]
        for why in sorted(set(skipped) - self._bad_nodes):  # the cycle plans on the others
            logger.warning("left out of the topology: %s", why)
        self._bad_nodes = set(skipped)
        node_of = {}
        for n in alive_nodes:
            host = (n.get("Labels") or {}).get("heteroscale.io/host")
            if host:
                node_of[host] = n["NodeID"]
        sub_of = spec.sub_cluster_of()
        # Owners come from the full view, before unhealthy hosts are dropped (see domain_owners).
        owners = domain_owners(spec, self._sub_cluster_of_domain)
        host_owners = {
            **self._sub_cluster_of_host,
            **{h.name: sub_of[s2] for s2, *_, h in spec.hosts()},
        }
        if owners != self._sub_cluster_of_domain or host_owners != self._sub_cluster_of_host:
            self._sub_cluster_of_domain = owners
            self._sub_cluster_of_host = host_owners
            self._checkpoint()
        alive: dict[str, str] = dict(node_of)
        per_sc: dict[str, list[tuple[str, str]]] = {}
        for s2, _s1, _s0, host in spec.hosts():
            node_id = host.node_id or node_of.get(host.name)
            if node_id and node_id in alive_ids:  # never pin a GpuNode to a dead node
                alive[host.name] = node_id
                per_sc.setdefault(sub_of[s2], []).append((host.name, node_id))
        # Hosts seen before whose node is gone: their sub-cluster looks at its GpuNode handle
        # once more (a dead actor answers at once), so the report says the actor died.
        gone_nodes = set(self._seen_nodes) - set(alive)
        down: dict[str, list[str]] = {}
        for host in sorted(gone_nodes):
            owner = self._sub_cluster_of_host.get(host)
            if owner is not None:
                down.setdefault(owner, []).append(host)
        names = sorted(set(per_sc) | set(down))
        refs = {
            sc: self._scheduler(sc).sync_hosts.remote(per_sc.get(sc, []), down.get(sc, []))
            for sc in names
        }
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=SYNC_TIMEOUT_S)
        done = set(ready)
        for sc, ref in refs.items():
            try:
                if ref not in done:
                    raise TimeoutError(f"no answer within {SYNC_TIMEOUT_S:g}s")
                self._reports[sc] = ray.get(ref)
            except Exception as e:  # restarting scheduler: keep its last reports this cycle
                logger.warning("sub-cluster %s did not report its hosts: %s", sc, e)
        for sc in set(self._reports) - set(names):
            del self._reports[sc]
        reports = with_dead_hosts(
            [r for sc in sorted(self._reports) for r in self._reports[sc]], gone_nodes
        )
        lost = lost_hosts(hosts_in_use(self.dgs, self.pending), alive, self._seen_nodes)
        self._hosts = reports
        healthy = {r["host"] for r in reports if r.get("healthy") and r["host"] in alive}
        every = {h.name for *_, h in spec.hosts()}
        gone = (every - healthy) | unknown
        if gone == every:
            raise RuntimeError(
                f"no healthy GPU host to plan on ({len(every)} in the topology): see "
                "`heteroscale status` for each host's health"
            )
        if gone:
            spec = without_hosts(spec, gone)
        if spec != self._spec or self._graph is None:
            self._graph = ClusterGraph.from_topology(spec, self.config.catalog)
            self._spec = spec
        return self._graph, lost, alive

    # ---- the cycle ----
    def _running(self) -> dict[str, RunningReplicas]:
        """DG id -> replicas Serve runs, from the last reconcile's status."""
        from heteroscale_ray.serving.deployments import dg_app_name

        out = {}
        for dg in self.dgs:
            st = self._status.get(dg_app_name(dg.service, dg.dg_id))
            if st is not None:
                out[dg.dg_id] = RunningReplicas(st.prefill.running, st.decode.running)
        return out

    def counts(self) -> dict[str, RoleCounts]:
        """Per service: target instances split into ready (running on Serve) and starting."""
        with self._lock:
            return ready_and_starting(self.dgs, self._running())

    def run_cycle(
        self,
        now: float,
        desired: Mapping[str, Desired],
        observations: Mapping[str, Observation],
        apply: bool = True,
    ) -> dict[str, Any]:
        """One tick of the shared control loop; commit and actuate its result unless advisory.

        The report carries what the policy engine needs next (counts for the next period, the
        snapshot for its metrics), so one round trip per period suffices.
        """
        t0 = time.perf_counter()
        with self._lock:
            services = self.config.by_name()
            graph, lost, alive = self._refresh_topology()
            tick = TickInput(
                now, desired, observations, services, graph, lost, running=self._running()
            )
            result = self.loop.step(self.state, tick)
            plan_lines = describe_plan(result.plan)
            events = list(result.events)
            actuation_error: str | None = None
            self._unroute -= services.keys()  # configured again: keep its route
            if apply:
                self._unroute |= {p.service for p in result.retired}
                changed = result.state != self.state or any(
                    self._seen_nodes.get(h) != n for h, n in alive.items()
                )
                self.state = result.state
                self._seen_nodes.update(alive)  # the lost ones keep their last node id
                # A host gone from Ray and holding nothing is reported dead for HOST_FORGET_S,
                # then forgotten, or every replaced node stays in status and checkpoints.
                in_use = hosts_in_use(self.dgs, self.pending)
                for host in list(self._seen_nodes):
                    if host in alive or host in in_use:
                        self._gone_since.pop(host, None)
                    elif now - self._gone_since.setdefault(host, now) > HOST_FORGET_S:
                        del self._seen_nodes[host], self._gone_since[host]
                        self._sub_cluster_of_host.pop(host, None)
                        changed = True
                if changed:
                    self._checkpoint()  # before actuating: a crash re-applies, never forgets
                # The plan is committed from here on, so actuation errors must not surface as a
                # failed cycle (the policy engine would roll its decision back): reconciling is
                # idempotent and the next cycle applies whatever did not land this time.
                try:
                    self._fan_out()
                    self._unroute_services(services)
                except Exception as e:
                    actuation_error = f"{type(e).__name__}: {e}"
                    logger.warning("actuation incomplete, retried next cycle: %s", actuation_error)
            for line in events + plan_lines:
                logger.info("%s", line)
            self._last = cycle_report(
                result,
                now=now,
                plan_lines=plan_lines,
                lost_hosts=lost,
                applied=apply,
                actuation_error=actuation_error,
                seconds=time.perf_counter() - t0,
            )
            return {
                **self._last,
                "counts": ready_and_starting(self.dgs, self._running()),
                "snapshot": self._snapshot(),
            }

    def _unroute_services(self, services: Mapping[str, ServiceSpec]) -> None:
        """Remove services that are gone from the config and hold no DG from the routing table."""
        import ray

        from heteroscale_ray.serving.routing_table import get_routing_table

        names = unroutable(self._unroute, services, self.dgs, self.pending)
        if not names:
            return
        try:
            table = get_routing_table(create=False)
        except ValueError:  # no routing table: nothing routes to them
            table = None
        for name in names:
            if table is not None:
                try:
                    ray.get(table.remove_service.remote(name), timeout=FAN_OUT_TIMEOUT_S)
                except Exception as e:  # retried next cycle
                    logger.warning("could not remove service %s from routing: %s", name, e)
                    continue
                logger.info("service %s removed from routing", name)
            self._unroute.discard(name)
        self._checkpoint()

    def _fan_out(self) -> None:
        import ray

        targets = dg_targets(
            self.config.by_name(),
            self.dgs,
            self.pending,
            self._sub_cluster_of_domain,
            self._schedulers,
        )
        names = set(self._schedulers) | set(targets)
        refs = {sc: self._scheduler(sc).reconcile.remote(targets.get(sc, [])) for sc in names}
        status: dict[str, dict[str, Any]] = {}
        for sc, ref in refs.items():
            try:
                status.update(ray.get(ref, timeout=FAN_OUT_TIMEOUT_S))
            except Exception as e:  # a scheduler restarting: its DGs are retried next cycle
                logger.warning("sub-cluster %s did not apply its targets: %s", sc, e)
        self._status = status

    # ---- reporting ----
    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        return status_snapshot(
            self.dgs,
            self.pending,
            self._status,
            hosts=list(self._hosts),
            sub_clusters=sorted(self._schedulers),
            last_cycle=dict(self._last),
            restored=self.restored,
        )

    def delete_all(self) -> list[str]:
        """Delete every DG on Serve and forget them (``heteroscale stop --purge``). Every
        sub-cluster the checkpoint names is asked, not only those this incarnation has called
        yet: just after a restart it had none, and the DGs stayed on Serve with no owner."""
        import ray

        with self._lock:
            gone = []
            known = (
                set(self._schedulers)
                | set(self._sub_cluster_of_host.values())
                | set(self._sub_cluster_of_domain.values())
            )
            for sc in sorted(known):
                gone += ray.get(self._scheduler(sc).delete_all.remote(), timeout=60)
            self.state = LoopState()
            self._checkpoint()
            return gone

    def scheduler_names(self) -> list[str]:
        return sorted(self._schedulers)
