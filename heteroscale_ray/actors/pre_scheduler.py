"""FederatedPreScheduler: the cluster-wide topology view, placement, and the fan-out of plans.

Every cycle it rebuilds the topology from Ray's node labels (or a given topology file), keeps
only hosts whose GpuNode actor answers its sub-cluster scheduler, and calls the shared core
`control.control_cycle` with the policy engine's desired counts: the very function the
simulator calls, so both substrates plan identically. It owns the Deployment Group state
(checkpointed before anything is actuated), runs soft scale-in on what plans remove (and on
every DG of a service no longer configured), and hands each sub-cluster scheduler the DG
targets it must reconcile Serve to. Instances in the soft scale-in window still hold their
GPUs and ids, so they are passed to the planner as ``reserved``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from heteroscale_ray.actors.checkpoint import (
    NAMESPACE,
    dgs_from_json,
    dgs_to_json,
    kv_get,
    kv_put,
    pending_from_json,
    pending_to_json,
    sub_cluster_actor,
)
from heteroscale_ray.actors.serving_adapter import DgTarget, ServingOptions
from heteroscale_ray.config import (
    Role,
    ServicesConfig,
    ServiceSpec,
    TopologySpec,
    parse_yaml_text,
    topology_from_ray_nodes,
)
from heteroscale_ray.control import Desired, FixedDesires, Observation, control_cycle
from heteroscale_ray.control.soft_scale_in import (
    PendingRemoval,
    pending_from_plan,
    reserved_of,
    serving_counts,
    settle,
)
from heteroscale_ray.policy import RoleCounts
from heteroscale_ray.topology import (
    CLUSTER_WIDE,
    AddInstances,
    ClusterGraph,
    CreateDG,
    DeleteDG,
    DeploymentGroup,
    PlacementPlan,
    RemoveInstances,
)

logger = logging.getLogger(__name__)
KEY = "pre-scheduler"
SERVICES_KEY = "services"
FAN_OUT_TIMEOUT_S = 60.0


def describe_plan(plan: PlacementPlan) -> list[str]:
    """One short line per action, for logs and `heteroscale status`."""
    lines = []
    for a in plan.all_actions():
        if isinstance(a, CreateDG):
            dg = a.dg
            lines.append(
                f"create {dg.dg_id} in {dg.level.value} {dg.domain} "
                f"(prefill {dg.prefill_gpu_type}, decode {dg.decode_gpu_type})"
            )
        elif isinstance(a, AddInstances):
            lines.append(f"add {len(a.instances)} {a.role.value} to {a.dg_id}")
        elif isinstance(a, RemoveInstances):
            lines.append(f"remove {len(a.instance_ids)} {a.role.value} from {a.dg_id} (soft)")
        elif isinstance(a, DeleteDG):
            lines.append(f"delete {a.dg_id} (soft)")
    for u in plan.unplaced:
        lines.append(f"unplaced {u.count} {u.role.value} of {u.service}: {u.reason.value}")
    return lines


def _without_hosts(spec: TopologySpec, gone: set[str]) -> TopologySpec:
    """The topology minus some hosts (and any switch left empty)."""
    data = spec.model_dump()
    pods = []
    for s2 in data["big_pods"]:
        minis = []
        for s1 in s2["mini_pods"]:
            leaves = [
                {**s0, "hosts": [h for h in s0["hosts"] if h["name"] not in gone]}
                for s0 in s1["leaves"]
            ]
            leaves = [s0 for s0 in leaves if s0["hosts"]]
            if leaves:
                minis.append({**s1, "leaves": leaves})
        if minis:
            pods.append({**s2, "mini_pods": minis})
    data["big_pods"] = pods
    if data.get("sub_clusters"):
        alive = {p["name"] for p in pods}
        data["sub_clusters"] = {
            k: [b for b in v if b in alive] for k, v in data["sub_clusters"].items()
        }
        data["sub_clusters"] = {k: v for k, v in data["sub_clusters"].items() if v}
    return TopologySpec.model_validate(data)


def domain_owners(spec: TopologySpec, previous: Mapping[str, str]) -> dict[str, str]:
    """Domain name (S1 and S2) -> the sub-cluster that owns its DGs.

    Built from the topology *before* unhealthy hosts are removed and merged over the previous
    mapping, so a domain that briefly vanishes (all its hosts miss a report, or its Ray nodes
    are not alive for a moment) keeps its owner: a DG never moves to another sub-cluster
    scheduler, which would delete and redeploy it, because of a transient outage.
    """
    out = dict(previous)
    sub_of = spec.sub_cluster_of()
    for s2 in spec.big_pods:
        sc = sub_of[s2.name]
        out[s2.name] = sc
        for s1 in s2.mini_pods:
            out[s1.name] = sc
    return out


def retire_unconfigured(
    dgs: Sequence[DeploymentGroup], services: Mapping[str, ServiceSpec], now: float
) -> tuple[tuple[DeploymentGroup, ...], tuple[PendingRemoval, ...]]:
    """DGs of services no longer configured leave the state as whole-DG soft removals.

    They drain like any deleted DG and `settle` stops them once the window ends (a service
    without a spec is never restored, unless it is configured again before then).
    """
    kept = tuple(dg for dg in dgs if dg.service in services)
    retired = tuple(
        PendingRemoval(dg, dg.instances, now, whole_dg=True)
        for dg in dgs
        if dg.service not in services
    )
    return kept, retired


def unroutable(
    candidates: Iterable[str],
    services: Mapping[str, ServiceSpec],
    dgs: Iterable[DeploymentGroup],
    pending: Iterable[PendingRemoval],
) -> list[str]:
    """Candidates that can leave the routing table: not configured, holding no DG any more."""
    holding = {dg.service for dg in dgs} | {p.service for p in pending}
    return sorted(s for s in set(candidates) if s not in services and s not in holding)


class FederatedPreScheduler:
    """Actor body (threaded; `run_cycle` is serialised by a lock)."""

    def __init__(
        self,
        services_yaml: str,
        topology_yaml: str | None,
        options: ServingOptions,
        soft_window_s: float = 60.0,
    ) -> None:
        self.options = options
        self.soft_window_s = soft_window_s
        self._lock = threading.Lock()
        text = kv_get(SERVICES_KEY) or services_yaml
        self.config = parse_yaml_text(text, ServicesConfig, "services")
        self.static_topology = (
            parse_yaml_text(topology_yaml, TopologySpec, "topology") if topology_yaml else None
        )
        saved = kv_get(KEY) or {}
        self.dgs: tuple[DeploymentGroup, ...] = dgs_from_json(saved.get("dgs", []))
        self.pending: tuple[PendingRemoval, ...] = tuple(
            pending_from_json(p) for p in saved.get("pending", [])
        )
        # Removed services whose routing-table entry goes once their last DG is stopped.
        self._unroute: set[str] = set(saved.get("unroute", []))
        self.restored = bool(saved)
        self._spec: TopologySpec | None = None
        self._graph: ClusterGraph | None = None
        self._schedulers: dict[str, Any] = {}
        # Domain -> owning sub-cluster, checkpointed so a restart during an outage keeps it.
        self._sub_cluster_of_domain: dict[str, str] = dict(saved.get("owners", {}))
        self._status: dict[str, dict[str, Any]] = {}
        self._hosts: list[dict[str, Any]] = []
        self._last: dict[str, Any] = {}

    def _checkpoint(self) -> None:
        kv_put(
            KEY,
            {
                "dgs": dgs_to_json(self.dgs),
                "pending": [pending_to_json(p) for p in self.pending],
                "unroute": sorted(self._unroute),
                "owners": dict(sorted(self._sub_cluster_of_domain.items())),
            },
        )

    def set_services(self, services_yaml: str) -> None:
        """Take a config the policy engine already validated (and checkpointed)."""
        with self._lock:
            old = set(self.config.by_name())
            self.config = parse_yaml_text(services_yaml, ServicesConfig, "services")
            removed = old - set(self.config.by_name())
            if removed - self._unroute:
                self._unroute |= removed
                self._checkpoint()

    # ---- topology ----
    def _scheduler(self, name: str) -> Any:
        import ray

        from heteroscale_ray.actors.sub_cluster import SubClusterScheduler

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
                    scheduling_strategy=_near_me(),
                )
                .remote(name, self.options)
            )
        return self._schedulers[name]

    def _refresh_topology(self) -> ClusterGraph:
        """Rebuild the view: Ray node labels (or the file), minus hosts that do not answer."""
        import ray

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        spec = self.static_topology or topology_from_ray_nodes(nodes)
        node_of = {}
        for n in nodes:
            host = (n.get("Labels") or {}).get("heteroscale.io/host")
            if host:
                node_of[host] = n["NodeID"]
        sub_of = spec.sub_cluster_of()
        # Owners come from the full view, before unhealthy hosts are dropped (see domain_owners).
        owners = domain_owners(spec, self._sub_cluster_of_domain)
        if owners != self._sub_cluster_of_domain:
            self._sub_cluster_of_domain = owners
            self._checkpoint()
        per_sc: dict[str, list[tuple[str, str]]] = {}
        for s2, _s1, _s0, host in spec.hosts():
            node_id = host.node_id or node_of.get(host.name)
            if node_id:
                per_sc.setdefault(sub_of[s2], []).append((host.name, node_id))
        refs = {sc: self._scheduler(sc).sync_hosts.remote(h) for sc, h in per_sc.items()}
        reports = [r for ref in refs.values() for r in ray.get(ref, timeout=30)]
        self._hosts = reports
        healthy = {r["host"] for r in reports if r.get("healthy")}
        gone = {h.name for *_, h in spec.hosts()} - healthy
        if gone:
            spec = _without_hosts(spec, gone)
        if spec != self._spec or self._graph is None:
            self._graph = ClusterGraph.from_topology(spec, self.config.catalog)
            self._spec = spec
        return self._graph

    # ---- the cycle ----
    def counts(self) -> dict[str, RoleCounts]:
        """Per service: target instances split into ready (running on Serve) and starting."""
        from heteroscale_ray.serving.deployments import dg_app_name

        with self._lock:
            out: dict[str, list[int]] = {}
            for dg in self.dgs:
                st = self._status.get(dg_app_name(dg.service, dg.dg_id), {})
                c = out.setdefault(dg.service, [0, 0, 0, 0])
                for k, role in ((0, Role.PREFILL), (2, Role.DECODE)):
                    want = dg.count(role)
                    running = int(st.get(role.value, (0, 0))[0])
                    ready = min(want, running)
                    c[k] += ready
                    c[k + 1] += want - ready
            return {s: RoleCounts(*c) for s, c in out.items()}

    def run_cycle(
        self,
        now: float,
        desired: Mapping[str, Desired],
        observations: Mapping[str, Observation],
        apply: bool = True,
    ) -> dict[str, Any]:
        """Settle soft removals, plan with the shared core, checkpoint, then actuate."""
        t0 = time.perf_counter()
        with self._lock:
            graph = self._refresh_topology()
            services = self.config.by_name()
            events: list[str] = []
            dgs, pending = self.dgs, self.pending
            if apply and pending:
                settled = settle(
                    dgs,
                    pending,
                    now=now,
                    window_s=self.soft_window_s,
                    services=services,
                    observations=observations,
                    desired=desired,
                    graph=graph,
                )
                dgs, pending, events = settled.dgs, settled.pending, list(settled.events)
            if apply:
                dgs, retired = retire_unconfigured(dgs, services, now)
                if retired:
                    pending = pending + retired
                    self._unroute |= {p.service for p in retired}
                    events += [
                        f"{p.dg.dg_id}: service {p.service} is no longer configured; "
                        "whole DG drains (soft)"
                        for p in retired
                    ]
            self._unroute -= services.keys()  # configured again: keep its route
            known = {k: v for k, v in desired.items() if k in services}
            result = control_cycle(
                FixedDesires(known),
                now,
                observations,
                graph=graph,
                services=services,
                dgs=dgs,
                catalog=self.config.catalog,
                reserved=reserved_of(pending),
            )
            plan_lines = describe_plan(result.plan)
            actuation_error: str | None = None
            if apply:
                pending = pending + tuple(pending_from_plan(result.plan, dgs, now))
                changed = (result.dgs, pending) != (self.dgs, self.pending)
                self.dgs, self.pending = result.dgs, pending
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
            self._last = {
                "at": now,
                "plan": plan_lines,
                "events": events,
                "unplaced": [
                    {
                        "service": u.service,
                        "role": u.role.value,
                        "count": u.count,
                        "reason": u.reason.value,
                        "detail": u.detail,
                    }
                    for u in result.plan.unplaced
                ],
                "applied": apply,
                "actuation_error": actuation_error,
                "seconds": time.perf_counter() - t0,
            }
            return dict(self._last)

    def _targets(self) -> dict[str, list[DgTarget]]:
        services = self.config.by_name()
        run = serving_counts(self.dgs, self.pending)
        snapshots = {dg.dg_id: dg for dg in self.dgs}
        whole = {p.dg.dg_id for p in self.pending if p.whole_dg}
        for p in self.pending:
            snapshots.setdefault(p.dg.dg_id, p.dg)
        out: dict[str, list[DgTarget]] = {}
        for dg_id, dg in snapshots.items():
            spec = services.get(dg.service)
            pre, dec = run[dg_id]
            live = next((d for d in self.dgs if d.dg_id == dg_id), None)
            target_dec = live.count(Role.DECODE) if live else 0
            sc = self._sub_cluster_of_domain.get(dg.domain, CLUSTER_WIDE)
            if sc == CLUSTER_WIDE:
                sc = min(self._schedulers) if self._schedulers else CLUSTER_WIDE
            out.setdefault(sc, []).append(
                DgTarget(
                    service=dg.service,
                    dg_id=dg_id,
                    domain=dg.domain,
                    level=dg.level,
                    prefill_gpu_type=dg.prefill_gpu_type,
                    decode_gpu_type=dg.decode_gpu_type,
                    prefill=pre,
                    decode=dec,
                    prefill_gpus=spec.prefill.gpus_per_instance if spec else 1,
                    decode_gpus=spec.decode.gpus_per_instance if spec else 1,
                    model_profile=spec.model if spec else "dense-8b",
                    draining=dg_id in whole and live is None,
                    weight=(target_dec / dec) if dec and target_dec < dec and live else 1.0,
                )
            )
        return out

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

        targets = self._targets()
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
        from heteroscale_ray.serving.deployments import dg_app_name

        with self._lock:
            dgs = []
            for dg in self.dgs:
                app = dg_app_name(dg.service, dg.dg_id)
                st = self._status.get(app, {})
                dgs.append(
                    {
                        "service": dg.service,
                        "dg_id": dg.dg_id,
                        "app": app,
                        "domain": f"{dg.level.value}:{dg.domain}",
                        "prefill_gpu_type": dg.prefill_gpu_type,
                        "decode_gpu_type": dg.decode_gpu_type,
                        "prefill": dg.count(Role.PREFILL),
                        "decode": dg.count(Role.DECODE),
                        "running": {r: st.get(r, (0, 0))[0] for r in ("prefill", "decode")},
                        "gate_open": st.get("gate_open"),
                        "weight": st.get("weight", 1.0),
                    }
                )
            pending = [
                {
                    "dg_id": p.dg.dg_id,
                    "service": p.service,
                    "whole_dg": p.whole_dg,
                    "prefill": p.count(Role.PREFILL),
                    "decode": p.count(Role.DECODE),
                    "since": p.since,
                }
                for p in self.pending
            ]
            return {
                "dgs": dgs,
                "pending_removals": pending,
                "hosts": list(self._hosts),
                "sub_clusters": sorted(self._schedulers),
                "last_cycle": dict(self._last),
                "restored": self.restored,
            }

    def delete_all(self) -> list[str]:
        """Delete every DG on Serve and forget them (``heteroscale stop --purge``)."""
        import ray

        with self._lock:
            gone = []
            for sc in list(self._schedulers):
                gone += ray.get(self._schedulers[sc].delete_all.remote(), timeout=60)
            self.dgs, self.pending = (), ()
            self._checkpoint()
            return gone

    def scheduler_names(self) -> list[str]:
        return sorted(self._schedulers)


def _near_me() -> Any:
    """Soft affinity to the caller's node: control-plane actors gather on the head."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
