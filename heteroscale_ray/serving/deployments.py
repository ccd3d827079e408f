"""The serving layer's actuator API: what the control plane calls to change the Serve substrate.

- `deploy_dg(spec)`: one Deployment Group = one Serve application with a PrefillServer and a
  DecodeServer deployment, each pinned by `label_selector` to its GPU type and the DG's
  network domain, deployed in external-scaler mode.
- `scale_role(app, role, n)`: set a role's replica count through the Serve controller's
  `update_deployment_replicas` (the external-scaler path): running replicas keep running,
  unlike a second `serve.run` which would roll out a new version.
- `set_draining` / `set_ratio_gate` / `set_weight` / `set_prefill_running`: routing intent, read
  by the ingress.
- `delete_dg`: stop routing to a DG, then delete its application (replicas drain first).
- `replica_ids`, `replica_details`, `replica_stats`: what runs where, and its metrics.
- `prompt_arrival_rates`, `ingress_loads`: what arrives at the ingress per service.
- `request_migrations` (in `routing_table`, so `heteroscale status` need not import Serve's
  router): requests moved off failed replicas, per service and reason.
- `deploy_ingress`: the OpenAI-compatible router application, pinned to the head node.

All functions are synchronous (ray.get) and work from a driver or from inside an actor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from heteroscale_ray.config.topology import LABEL_GPU_TYPE, LABEL_S1, LABEL_S2
from heteroscale_ray.serving.emulation import EmulationConfig
from heteroscale_ray.serving.model import ModelConfig
from heteroscale_ray.serving.replica import ReplicaSpec
from heteroscale_ray.serving.replica_stats import IngressLoad, ReplicaStats
from heteroscale_ray.serving.router import (
    DECODE_DEPLOYMENT,
    PREFILL_DEPLOYMENT,
    REFRESH_ON_MISS_S,
)
from heteroscale_ray.serving.routing_table import DgRoute, get_routing_table, head_node_resources

INGRESS_APP = "heteroscale-ingress"
ROLE_DEPLOYMENT = {"prefill": PREFILL_DEPLOYMENT, "decode": DECODE_DEPLOYMENT}
DomainLevel = Literal["s1", "s2"]


@dataclass(frozen=True)
class RoleServing:
    """Placement and size of one role inside a DG."""

    gpu_type: str
    replicas: int = 1
    gpus_per_instance: int = 1
    max_ongoing_requests: int | None = None  # None: role default (prefill 32, decode 256)


@dataclass(frozen=True)
class DgServingSpec:
    """Everything needed to run one DG on Ray Serve."""

    service: str
    dg_id: str
    prefill: RoleServing
    decode: RoleServing
    domain: str | None = None  # S1 or S2 switch name the DG is confined to; None: anywhere
    domain_level: DomainLevel = "s1"
    model_profile: str = "dense-8b"
    engine: ModelConfig = field(default_factory=ModelConfig)
    emulation: EmulationConfig = field(default_factory=EmulationConfig)
    weight: float = 1.0  # relative decode capacity per replica, for the router's load balance
    ratio_gate_open: bool = True
    graceful_shutdown_timeout_s: float = 120.0

    @property
    def app_name(self) -> str:
        return dg_app_name(self.service, self.dg_id)

    def role(self, role: str) -> RoleServing:
        return self.prefill if role == "prefill" else self.decode

    def replica_spec(self, role: str) -> ReplicaSpec:
        r = self.role(role)
        return ReplicaSpec(
            service=self.service,
            dg_id=self.dg_id,
            app_name=self.app_name,
            role=role,
            gpu_type=r.gpu_type,
            gpus_per_instance=r.gpus_per_instance,
            model_profile=self.model_profile,
            engine=self.engine,
            emulation=self.emulation,
        )


def dg_app_name(service: str, dg_id: str) -> str:
    return f"{service}-{dg_id}"


def label_selector(gpu_type: str, domain: str | None, level: DomainLevel) -> dict[str, str]:
    """Ray 2.60 `label_selector`: exact-match values on our node labels."""
    sel = {LABEL_GPU_TYPE: gpu_type}
    if domain is not None:
        sel[LABEL_S1 if level == "s1" else LABEL_S2] = domain
    return sel


def _role_options(spec: DgServingSpec, role: str) -> dict[str, Any]:
    r = spec.role(role)
    default_ongoing = 32 if role == "prefill" else 256
    return {
        "name": ROLE_DEPLOYMENT[role],
        "num_replicas": r.replicas,
        "max_ongoing_requests": r.max_ongoing_requests or default_ongoing,
        "graceful_shutdown_timeout_s": spec.graceful_shutdown_timeout_s,
        "graceful_shutdown_wait_loop_s": 0.5,
        "health_check_period_s": 5.0,
        "ray_actor_options": {
            "num_cpus": 0,
            "num_gpus": r.gpus_per_instance,
            "label_selector": label_selector(r.gpu_type, spec.domain, spec.domain_level),
        },
    }


def build_dg_app(spec: DgServingSpec) -> Any:
    """The Serve application of a DG: decode is the ingress and holds the prefill handle."""
    from ray import serve

    from heteroscale_ray.serving.decode import DecodeServer
    from heteroscale_ray.serving.prefill import PrefillServer

    prefill = serve.deployment(PrefillServer).options(**_role_options(spec, "prefill"))
    decode = serve.deployment(DecodeServer).options(**_role_options(spec, "decode"))
    return decode.bind(spec.replica_spec("decode"), prefill.bind(spec.replica_spec("prefill")))


def register_service(
    name: str,
    engine: ModelConfig,
    model_profile: str = "dense-8b",
    migration_limit: int | None = None,
    ttft_slo_s: float | None = None,
) -> None:
    """Make a service known to the ingress (it lists it in /v1/models and checks its limits);
    `migration_limit` and `ttft_slo_s` None keep the ones already registered (else the
    default migration limit, and no SLO: held prefill work then leaves first come, first
    served)."""
    import ray

    table = get_routing_table()
    ray.get(table.register_service.remote(name, engine, model_profile, migration_limit, ttft_slo_s))


def deploy_dg(spec: DgServingSpec, *, wait: bool = True) -> str:
    """Deploy (or update) a DG and add it to routing; returns the Serve application name.

    With `wait`, returns once every replica is running, so the router never sees a DG
    without replicas. Re-deploying an existing DG with a changed spec rolls its replicas.
    """
    import ray
    from ray import serve

    register_service(spec.service, spec.engine, spec.model_profile)
    serve._run(
        build_dg_app(spec),
        name=spec.app_name,
        route_prefix=None,
        external_scaler_enabled=True,
        _blocking=wait,
    )
    ray.get(get_routing_table().upsert_dg.remote(_route(spec)))
    return spec.app_name


def _route(spec: DgServingSpec) -> DgRoute:
    return DgRoute(
        service=spec.service,
        dg_id=spec.dg_id,
        app_name=spec.app_name,
        prefill_replicas=spec.prefill.replicas,
        decode_replicas=spec.decode.replicas,
        weight=spec.weight,
        ratio_gate_open=spec.ratio_gate_open,
    )


def routed_apps() -> set[str]:
    """Application names the routing table knows; after the table restarts this is empty."""
    import ray

    _, services = ray.get(get_routing_table().snapshot.remote())
    return {dg.app_name for svc in services.values() for dg in svc.dgs.values()}


def restore_route(spec: DgServingSpec) -> None:
    """Put a running DG back into routing (e.g. after the routing table restarted), no redeploy."""
    import ray

    register_service(spec.service, spec.engine, spec.model_profile)
    ray.get(get_routing_table().upsert_dg.remote(_route(spec)))


def _controller() -> Any:
    from ray.serve.context import _get_global_client

    return _get_global_client()._controller


def _split_app(app_name: str) -> tuple[str, str]:
    """(service, dg_id) of a DG application, from the routing table."""
    import ray

    _, services = ray.get(get_routing_table().snapshot.remote())
    for svc in services.values():
        for dg in svc.dgs.values():
            if dg.app_name == app_name:
                return svc.name, dg.dg_id
    raise KeyError(f"no DG with application name {app_name!r} in the routing table")


def scale_role(app_name: str, role: str, n: int) -> None:
    """Set the replica target of one role of a DG without touching its running replicas."""
    import ray
    from ray.serve._private.common import DeploymentID

    if role not in ROLE_DEPLOYMENT:
        raise ValueError(f"role must be 'prefill' or 'decode', got {role!r}")
    if n < 0:
        raise ValueError(f"replica count must be >= 0, got {n}")
    dep = DeploymentID(name=ROLE_DEPLOYMENT[role], app_name=app_name)
    ray.get(_controller().update_deployment_replicas.remote(dep, n))
    service, dg_id = _split_app(app_name)
    ray.get(get_routing_table().update_dg.remote(service, dg_id, **{f"{role}_replicas": n}))


def _update_route(app_name: str, **changes: Any) -> None:
    import ray

    service, dg_id = _split_app(app_name)
    ray.get(get_routing_table().update_dg.remote(service, dg_id, **changes))


def set_draining(app_name: str, draining: bool = True) -> None:
    """Soft scale-in: a draining DG gets no new requests; its in-flight ones finish."""
    _update_route(app_name, draining=draining)


def set_ratio_gate(app_name: str, open_: bool) -> None:
    """Start-up skew gate: while closed, the router sends this DG work only if no other can."""
    _update_route(app_name, ratio_gate_open=open_)


def set_prefill_running(app_name: str, running: int) -> None:
    """Prefill replicas Serve runs now: the ingress's gate lets calls out by these."""
    _update_route(app_name, prefill_running=running)


def set_weight(app_name: str, weight: float) -> None:
    _update_route(app_name, weight=weight)


def delete_dg(app_name: str, *, wait: bool = True) -> None:
    """Remove the DG from routing first, then delete its application (replicas drain)."""
    import ray
    from ray import serve

    try:
        service, dg_id = _split_app(app_name)
        ray.get(get_routing_table().remove_dg.remote(service, dg_id))
    except KeyError:
        pass
    serve.delete(app_name, _blocking=wait)


def replica_details(app_name: str, role: str | None = None) -> list[dict[str, Any]]:
    """Replicas the Serve controller knows for a DG: replica_id, state, node_id, actor_id, role."""
    import ray

    details = ray.get(_controller().get_serve_instance_details.remote())
    app = details.get("applications", {}).get(app_name)
    if app is None:
        return []
    out = []
    for r, dep_name in ROLE_DEPLOYMENT.items():
        if role is not None and r != role:
            continue
        dep = app.get("deployments", {}).get(dep_name, {})
        for rep in dep.get("replicas", []):
            out.append({**rep, "role": r})
    return out


def replica_ids(app_name: str, role: str) -> list[str]:
    """Ids of the RUNNING replicas of one role, sorted."""
    return sorted(
        r["replica_id"] for r in replica_details(app_name, role) if r["state"] == "RUNNING"
    )


def wait_for_replicas(app_name: str, role: str, n: int, timeout_s: float = 60.0) -> list[str]:
    """Block until exactly `n` replicas of the role run (scale events settle asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        running = [r for r in replica_details(app_name, role) if r["state"] == "RUNNING"]
        if len(running) == n and len(replica_details(app_name, role)) == n:
            return sorted(r["replica_id"] for r in running)
        if time.monotonic() > deadline:
            states = [(r["replica_id"], r["state"]) for r in replica_details(app_name, role)]
            raise TimeoutError(f"{app_name}/{role}: want {n} running replicas, have {states}")
        time.sleep(0.2)


def replica_stats(app_name: str | None = None, role: str | None = None) -> list[ReplicaStats]:
    """Latest `ReplicaStats` pushed by replicas (about 1 s old at most)."""
    import ray

    return ray.get(get_routing_table().replica_stats.remote(app_name, role))


def prompt_arrival_rates() -> dict[str, float]:
    """Prompt tokens/s per service arriving at the ingress (offered prefill load)."""
    import ray

    return ray.get(get_routing_table().arrival_rates.remote(), timeout=30)


def ingress_loads() -> dict[str, IngressLoad]:
    """Per service, prompt tokens/s and requests/s arriving at the ingress (all replicas)."""
    import ray

    return ray.get(get_routing_table().ingress_loads.remote(), timeout=30)


def deploy_ingress(
    *,
    name: str = INGRESS_APP,
    route_prefix: str = "/",
    replicas: int = 1,
    max_inflight: int = 256,
    prefill_timeout_s: float = 60.0,
    token_timeout_s: float = 30.0,
    refresh_s: float = 0.5,
    refresh_on_miss_s: float = REFRESH_ON_MISS_S,
    wait: bool = True,
) -> str:
    """Deploy the OpenAI-compatible router application, its replicas on the head node (no GPUs
    there), so losing a GPU host never takes the ingress down with it. Each replica re-reads the
    routing table every `refresh_s` and whenever its view cannot answer a request; a table that
    stays silent for `refresh_on_miss_s` then gets the client a retryable 503."""
    from ray import serve

    from heteroscale_ray.serving.router import Router

    get_routing_table()  # create it before replicas look it up
    dep = serve.deployment(Router).options(
        name="Router",
        num_replicas=replicas,
        max_ongoing_requests=max_inflight * 2,
        graceful_shutdown_timeout_s=120.0,
        graceful_shutdown_wait_loop_s=0.5,
        ray_actor_options={"num_cpus": 0, "resources": head_node_resources()},
    )
    serve._run(
        dep.bind(max_inflight, prefill_timeout_s, token_timeout_s, refresh_s, refresh_on_miss_s),
        name=name,
        route_prefix=route_prefix,
        external_scaler_enabled=True,
        _blocking=wait,
    )
    return name
