"""The chaos benchmark's faults: what each kill does on the running cluster, and how the
recovery of what it broke is measured (replica and node refills from Serve's own view,
control-plane actors until they answer with their checkpointed state)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from chaos_core import (
    DECODE_REPLICA,
    GPU_NODE,
    NODE,
    NODE_RESTORE,
    POLICY_ENGINE,
    PRE_SCHEDULER,
    PREFILL_REPLICA,
    ROUTING_TABLE,
    SERVICE,
    SUB_CLUSTER,
    Clock,
    Fault,
    Mode,
    pick,
)
from chaos_report import seconds_text


def cp_status(last: int = 40) -> dict[str, Any]:
    from heteroscale_ray.actors.control_plane import control_plane_status

    return control_plane_status(last)


def _serve_details() -> dict[str, Any]:
    """Serve's instance details (applications -> deployments -> replicas with node ids)."""
    import ray

    from heteroscale_ray.serving.deployments import _controller

    return ray.get(_controller().get_serve_instance_details.remote(), timeout=30)


def _service_apps(details: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: app
        for name, app in details.get("applications", {}).items()
        if name.startswith(f"{SERVICE}-")
    }


def _replicas(details: Mapping[str, Any], role: str) -> list[dict[str, Any]]:
    """RUNNING replicas of one role over the service's DG apps, with their app."""
    from heteroscale_ray.serving.deployments import ROLE_DEPLOYMENT

    out = []
    for name, app in _service_apps(details).items():
        dep = app.get("deployments", {}).get(ROLE_DEPLOYMENT[role], {})
        for rep in dep.get("replicas", []):
            if rep.get("state") == "RUNNING":
                out.append({**rep, "app": name})
    return out


def _roles_full(details: Mapping[str, Any], gone: frozenset[str] = frozenset()) -> bool:
    """Every role of every DG app runs at least its target of replicas, none of ``gone``
    (replica ids killed) still counted as running."""
    apps = _service_apps(details)
    if not apps:
        return False
    for app in apps.values():
        for dep in app.get("deployments", {}).values():
            running = [r for r in dep.get("replicas", []) if r.get("state") == "RUNNING"]
            if any(r["replica_id"] in gone for r in running):
                return False
            if len(running) < dep.get("target_num_replicas", 0):
                return False
    return True


def _restarts(actor: Any) -> int:
    """How many times Ray has restarted ``actor``, from the GCS actor table (Ray's debugging
    view; the state API would need the dashboard, which the local cluster runs without)."""
    from ray._private import state

    return int(state.actors(actor._actor_id.hex()).get("NumRestarts", 0))


def _node_of(actor: Any) -> str | None:
    """The Ray node an actor runs on (GCS actor table), None when unknown."""
    from ray._private import state

    if actor is None:
        return None
    return state.actors(actor._actor_id.hex()).get("Address", {}).get("NodeID")


def _routing_table() -> Any:
    from heteroscale_ray.serving.routing_table import get_routing_table

    try:
        return get_routing_table(create=False)
    except ValueError:
        return None


class Chaos:
    """Carries out the faults and measures the recovery of what it broke."""

    def __init__(self, local: Any, clock: Clock, mode: Mode) -> None:
        self.local, self.clock, self.mode = local, clock, mode
        self.faults: list[dict[str, Any]] = []

    def run(self, fault: Fault) -> None:
        action: dict[str, Callable[[Fault], None]] = {
            DECODE_REPLICA: lambda f: self.kill_replica(f, "decode"),
            PREFILL_REPLICA: lambda f: self.kill_replica(f, "prefill"),
            POLICY_ENGINE: self.kill_policy_engine,
            PRE_SCHEDULER: self.kill_pre_scheduler,
            SUB_CLUSTER: self.kill_sub_cluster,
            GPU_NODE: self.kill_gpu_node,
            ROUTING_TABLE: self.kill_routing_table,
            NODE: self.remove_node,
        }
        first = len(self.faults)
        action[fault.kind](fault)
        for entry in self.faults[first:]:
            measured = [
                f"{k} {seconds_text(entry[k])}"
                for k in ("recovery_s", "refill_s", "loop_resumed_s", "rejoin_s")
                if k in entry
            ]
            print(f"[chaos]         {entry['kind']}: {', '.join(measured) or '-'}", flush=True)

    def _record(self, kind: str, target: str, t: float, **extra: Any) -> dict[str, Any]:
        entry = {"kind": kind, "target": target, "t": round(t, 2), **extra}
        self.faults.append(entry)
        print(f"[chaos] {t:6.1f}s {kind}: {target}", flush=True)
        return entry

    def _until(self, check: Callable[[], bool], t0: float, every_s: float = 0.25) -> float | None:
        """Seconds from ``t0`` until ``check()`` holds (errors count as not yet); None at the cap."""
        while self.clock() - t0 < self.mode.refill_cap_s:
            try:
                if check():
                    return round(self.clock() - t0, 2)
            except Exception:  # an actor or Serve restarting: look again
                pass
            time.sleep(every_s)
        return None

    # ---- serving replicas ----
    def kill_replica(self, fault: Fault, role: str) -> None:
        import ray

        reps = {r["replica_id"]: r for r in _replicas(_serve_details(), role)}
        if not reps:
            self._record(f"{role}_replica", "none running: skipped", self.clock(), skipped=True)
            return
        rid = pick(list(reps), fault.pick)
        actor = ray.get_actor(reps[rid]["actor_name"], namespace="serve")
        t0 = self.clock()
        ray.kill(actor, no_restart=True)
        entry = self._record(f"{role}_replica", f"{reps[rid]['app']}/{rid}", t0)
        entry["refill_s"] = self._until(lambda: _roles_full(_serve_details(), frozenset({rid})), t0)

    # ---- control-plane actors ----
    def _actor_recovery(
        self,
        actor: Any,
        restarts: int,
        call: Callable[[], Any],
        ok: Callable[[Any], bool],
        t0: float,
    ) -> float | None:
        """Seconds until the restarted ``actor`` answers ``call()`` with something ``ok``.

        Calls go out only once Ray counts the restart (a call sent earlier could still reach
        the old instance before the kill lands), one at a time so a restarting actor is not
        flooded."""
        import ray

        ref = None
        while self.clock() - t0 < self.mode.refill_cap_s:
            if ref is None:
                if _restarts(actor) <= restarts:
                    time.sleep(0.05)
                    continue
                ref = call()
            ready, _ = ray.wait([ref], timeout=0.2)
            if not ready:
                continue
            try:
                if ok(ray.get(ref)):
                    return round(self.clock() - t0, 2)
            except Exception:  # died again or not back yet
                time.sleep(0.1)
            ref = None
        return None

    def _loop_resumed(self, cycles: int, t0: float) -> float | None:
        """Seconds until the control loop completed a cycle after ``cycles``."""
        return self._until(lambda: cp_status(1)["cycles"] > cycles, t0, every_s=0.5)

    def kill_policy_engine(self, fault: Fault) -> None:
        import ray

        from heteroscale_ray.actors.checkpoint import NAMESPACE, kv_get
        from heteroscale_ray.actors.checkpoint import POLICY_ENGINE as NAME
        from heteroscale_ray.actors.policy_engine import STATE_KEY

        pe = ray.get_actor(NAME, namespace=NAMESPACE)
        saved = kv_get(STATE_KEY) or {}
        cycles = int(saved.get("cycles", 0))
        restarts = _restarts(pe)
        t0 = self.clock()
        ray.kill(pe, no_restart=False)
        entry = self._record(POLICY_ENGINE, NAME, t0, checkpoint_cycles=cycles)
        entry["recovery_s"] = self._actor_recovery(
            pe,
            restarts,
            lambda: pe.status.remote(1),
            lambda st: st["restored"] and st["cycles"] >= cycles,
            t0,
        )
        entry["loop_resumed_s"] = self._loop_resumed(cycles, t0)

    def kill_pre_scheduler(self, fault: Fault) -> None:
        import ray

        from heteroscale_ray.actors.checkpoint import NAMESPACE, kv_get
        from heteroscale_ray.actors.checkpoint import PRE_SCHEDULER as NAME
        from heteroscale_ray.actors.pre_scheduler import KEY

        fps = ray.get_actor(NAME, namespace=NAMESPACE)
        saved_ids = sorted(d["dg_id"] for d in (kv_get(KEY) or {}).get("dgs", []))
        cycles = cp_status(1)["cycles"]
        wall = time.time()
        restarts = _restarts(fps)
        t0 = self.clock()
        ray.kill(fps, no_restart=False)
        entry = self._record(PRE_SCHEDULER, NAME, t0, checkpoint_dgs=saved_ids)

        def restored(snap: Mapping[str, Any]) -> bool:
            ids = sorted(d["dg_id"] for d in snap["dgs"])
            ran = snap.get("last_cycle", {}).get("at", 0.0) > wall  # a cycle since: state in use
            return bool(snap["restored"]) and (ids == saved_ids or ran)

        entry["recovery_s"] = self._actor_recovery(
            fps, restarts, lambda: fps.snapshot.remote(), restored, t0
        )
        entry["loop_resumed_s"] = self._loop_resumed(cycles, t0)

    def kill_sub_cluster(self, fault: Fault) -> None:
        import ray

        from heteroscale_ray.actors.checkpoint import NAMESPACE, kv_get, sub_cluster_actor

        names = cp_status(1)["pre_scheduler"]["sub_clusters"]
        name = pick(names, fault.pick)
        actor = ray.get_actor(sub_cluster_actor(name), namespace=NAMESPACE)
        owned = sorted((kv_get(f"sub-cluster/{name}") or {}).get("owned_apps", []))
        cycles = cp_status(1)["cycles"]
        restarts = _restarts(actor)
        t0 = self.clock()
        ray.kill(actor, no_restart=False)
        entry = self._record(SUB_CLUSTER, sub_cluster_actor(name), t0, checkpoint_apps=owned)
        entry["recovery_s"] = self._actor_recovery(
            actor,
            restarts,
            lambda: actor.status.remote(),
            lambda st: bool(st["restored"]) and st["owned_apps"] == owned,
            t0,
        )
        entry["loop_resumed_s"] = self._loop_resumed(cycles, t0)

    def kill_gpu_node(self, fault: Fault) -> None:
        import ray

        from heteroscale_ray.actors.checkpoint import NAMESPACE, gpu_node_actor

        host = pick(list(self.local.nodes), fault.pick)
        actor = ray.get_actor(gpu_node_actor(host), namespace=NAMESPACE)
        before = ray.get(actor.report.remote(), timeout=30)
        cycles = cp_status(1)["cycles"]
        restarts = _restarts(actor)
        t0 = self.clock()
        ray.kill(actor, no_restart=False)
        entry = self._record(GPU_NODE, gpu_node_actor(host), t0)
        same = ("host", "node_id", "gpu_type", "gpus", "s1")
        entry["recovery_s"] = self._actor_recovery(
            actor,
            restarts,
            lambda: actor.report.remote(),
            lambda r: all(r[k] == before[k] for k in same),
            t0,
        )
        entry["loop_resumed_s"] = self._loop_resumed(cycles, t0)

    # ---- the ingress's routing table ----
    def kill_routing_table(self, fault: Fault) -> None:
        """Ray restarts it on the head node and it reads its routes back from the checkpoint;
        the routers meanwhile serve from their last view (or wait for the table). Its refill:
        until the restarted table answers with the service's DG routes."""
        import ray

        from heteroscale_ray.serving.routing_table import ROUTING_ACTOR_NAME

        table = _routing_table()
        if table is None:
            self._record(ROUTING_TABLE, "none running: skipped", self.clock(), skipped=True)
            return
        _, services = ray.get(table.snapshot.remote(), timeout=30)
        svc = services.get(SERVICE)
        apps = sorted(dg.app_name for dg in svc.dgs.values()) if svc is not None else []
        restarts = _restarts(table)
        t0 = self.clock()
        ray.kill(table, no_restart=False)
        entry = self._record(
            ROUTING_TABLE, f"{ROUTING_ACTOR_NAME}: {len(apps)} DG routes", t0, checkpoint_apps=apps
        )

        def routes_back(snap: tuple[int, Mapping[str, Any]]) -> bool:
            svc = snap[1].get(SERVICE)  # a restart without the checkpoint would come back empty
            return svc is not None and bool(svc.dgs)

        entry["refill_s"] = self._actor_recovery(
            table, restarts, lambda: table.snapshot.remote(), routes_back, t0
        )

    # ---- a node ----
    def _victim(self, u: float) -> tuple[str, str]:
        """The GPU host running most of the service's replicas (seeded tie-break), avoiding the
        one running the ingress Router replica (a real cluster runs the ingress on CPU nodes)."""
        from heteroscale_ray.serving.deployments import INGRESS_APP

        details = _serve_details()
        per_host: Counter[str] = Counter()
        per_role: dict[str, Counter[str | None]] = {}
        for role in ("prefill", "decode"):
            per_role[role] = Counter(
                self.local.host_of(rep.get("node_id")) for rep in _replicas(details, role)
            )
            for host, n in per_role[role].items():
                if host is not None:
                    per_host[host] += n
        ingress = details.get("applications", {}).get(INGRESS_APP, {})
        router_hosts = {
            self.local.host_of(r.get("node_id"))
            for dep in ingress.get("deployments", {}).values()
            for r in dep.get("replicas", [])
        }
        candidates = [h for h in per_host if h not in router_hosts] or list(per_host)
        if not candidates:
            candidates = list(self.local.nodes)
        top = max(per_host.get(h, 0) for h in candidates)
        victim = pick([h for h in candidates if per_host.get(h, 0) == top], u)
        on_it = ", ".join(
            f"{role} {c[victim]}/{sum(c.values())}" for role, c in per_role.items() if c[victim]
        )
        where = ", ".join(sorted(h or "head" for h in router_hosts)) or "-"
        table = self.local.host_of(_node_of(_routing_table())) or "head"
        return (
            victim,
            f"{on_it or 'no replica'}; ingress {where}, routing table {table}",
        )

    def remove_node(self, fault: Fault) -> None:
        victim, note = self._victim(fault.pick)
        node_id = self.local.nodes[victim].node_id
        t0 = self.clock()
        self.local.remove_host(victim)
        entry = self._record(NODE, f"{victim}: {note}", t0)

        def refilled() -> bool:
            pre = cp_status(1)["pre_scheduler"]
            placed = {i["host"] for d in pre["dgs"] for i in d["instances"]}
            details = _serve_details()
            on_dead = [
                r
                for role in ("prefill", "decode")
                for r in _replicas(details, role)
                if r.get("node_id") == node_id
            ]
            return victim not in placed and not on_dead and _roles_full(details)

        entry["refill_s"] = self._until(refilled, t0, every_s=0.5)
        time.sleep(2.0)
        new_id = self.local.restore_host(victim)
        t1 = self.clock()
        back = self._record(NODE_RESTORE, victim, t1)

        def rejoined() -> bool:
            hosts = cp_status(1)["pre_scheduler"]["hosts"]
            return any(
                h["host"] == victim and h.get("healthy") and h.get("node_id") == new_id
                for h in hosts
            )

        back["rejoin_s"] = self._until(rejoined, t1, every_s=0.5)
