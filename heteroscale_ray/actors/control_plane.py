"""Start, inspect and stop the control plane from a driver connected to a Ray cluster.

`start_control_plane` makes sure Serve and the ingress run, then creates the detached actors
(pre-scheduler first, policy engine last, which starts the loop). `stop_control_plane` stops
the loop first, then kills the actors; by default the DG applications keep serving at their
current size and the checkpoint stays, so a later `start` adopts them; ``purge`` deletes the
DGs, the ingress, the routing table and the checkpoints too. `update_services` switches the
policy engine to a new services config and, as `start` does, registers each service's
`migration_limit` with the ingress.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from heteroscale_ray.actors.checkpoint import (
    KV_NAMESPACE,
    NAMESPACE,
    POLICY_ENGINE,
    PRE_SCHEDULER,
    kv_clear,
    save_services,
)
from heteroscale_ray.actors.serving_adapter import ServingOptions
from heteroscale_ray.config import ConfigError, ServicesConfig, TopologySpec, parse_yaml_text
from heteroscale_ray.policy.arrival_bursts import BURST_SPANS_S, usable
from heteroscale_ray.serving.model import ModelConfig

if TYPE_CHECKING:
    from heteroscale_ray.serving.routing_table import ServiceRoute


class ControlPlaneError(RuntimeError):
    """A control-plane command cannot go on; the message says what to do."""


@dataclass(frozen=True)
class ControlPlaneSettings:
    period_s: float = 5.0
    soft_window_s: float = 60.0
    advisory: bool = False
    metrics_port: int | None = None
    options: ServingOptions = field(default_factory=ServingOptions)


def _actor(name: str) -> Any | None:
    import ray

    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None


def _options(name: str, concurrency: int) -> dict[str, Any]:
    """Detached, restartable, and on the head node (as Serve pins its controller): a soft
    affinity to the driver's node can land a control-plane actor on a GPU host, which then
    takes it down when it dies, exactly when the control plane has to act."""
    from heteroscale_ray.serving.routing_table import head_node_resources

    return {
        "name": name,
        "namespace": NAMESPACE,
        "lifetime": "detached",
        "num_cpus": 0,
        "resources": head_node_resources(),
        "max_restarts": -1,
        "max_task_retries": -1,
        "max_concurrency": concurrency,
    }


def start_control_plane(
    config: ServicesConfig,
    *,
    topology: TopologySpec | None = None,
    settings: ControlPlaneSettings = ControlPlaneSettings(),
    http_host: str = "0.0.0.0",
    http_port: int = 8000,
) -> Any:
    """Start everything on the connected cluster; returns the PolicyEngine handle.

    ``config`` and ``topology`` were validated where they entered (the CLI parses the YAML
    files); the actors receive the models, never YAML text. Raises ControlPlaneError when a
    control plane already runs.
    """
    import ray
    from ray import serve

    from heteroscale_ray.actors.policy_engine import PolicyEngine
    from heteroscale_ray.actors.pre_scheduler import FederatedPreScheduler
    from heteroscale_ray.serving.deployments import INGRESS_APP, deploy_ingress, register_service

    if _actor(POLICY_ENGINE) is not None:
        raise ControlPlaneError(
            "a HeteroScale control plane already runs on this cluster: `heteroscale status` "
            "shows it, `heteroscale stop` stops it"
        )
    serve.start(http_options={"host": http_host, "port": http_port})
    if INGRESS_APP not in serve.status().applications:
        deploy_ingress()
    for spec in config.services:
        register_service(
            spec.name, settings.options.engine, spec.model, spec.migration_limit, spec.slo.ttft_s
        )
    save_services(config)  # an explicit start wins over an older checkpoint
    fps = (
        ray.remote(FederatedPreScheduler)
        .options(**_options(PRE_SCHEDULER, 8))
        .remote(config, topology, settings.options, settings.soft_window_s)
    )
    ray.get(fps.scheduler_names.remote())  # constructed (its config parsed) before the loop
    return (
        ray.remote(PolicyEngine)
        .options(**_options(POLICY_ENGINE, 8))
        .remote(config, settings.period_s, settings.advisory, settings.metrics_port)
    )


def policy_engine() -> Any:
    pe = _actor(POLICY_ENGINE)
    if pe is None:
        raise ControlPlaneError(
            "no HeteroScale control plane runs on this cluster: start it with "
            "`heteroscale start --services services.yaml`"
        )
    return pe


def control_plane_status(last: int = 10) -> dict[str, Any]:
    import ray

    return ray.get(policy_engine().status.remote(last), timeout=60)


@dataclass(frozen=True)
class IngressRegistration:
    """One service as the ingress's routing table registers it (`register_service`)."""

    name: str
    engine: ModelConfig
    model_profile: str
    migration_limit: int
    ttft_slo_s: float | None = None


def ingress_registrations(
    config: ServicesConfig, registered: Mapping[str, ServiceRoute]
) -> list[IngressRegistration]:
    """What an update registers with the ingress so the router moves each request at most its
    service's `migration_limit` times and orders held prefill work by its TTFT SLO, as after
    `start`.

    A registered service whose limit or TTFT SLO changed keeps the engine and model profile it
    has (its DGs registered them) and takes the new ones; an unchanged one is left alone. A service
    new in this config is registered as `start` registers it, with the engine the control plane
    serves every service with (that of the registered ones; the default when there are none),
    so the limit is in place before its first DG deploys (a DG keeps a registered limit)."""
    engines = [registered[n].engine for n in sorted(registered)]
    default_engine = engines[0] if engines else ModelConfig()
    out = []
    for spec in config.services:
        route = registered.get(spec.name)
        ttft = spec.slo.ttft_s
        if route is None:
            out.append(
                IngressRegistration(
                    spec.name, default_engine, spec.model, spec.migration_limit, ttft
                )
            )
        elif route.migration_limit != spec.migration_limit or route.ttft_slo_s != ttft:
            out.append(
                IngressRegistration(
                    spec.name, route.engine, route.model_profile, spec.migration_limit, ttft
                )
            )
    return out


def push_ingress_registrations(config: ServicesConfig) -> list[IngressRegistration]:
    """Register `ingress_registrations(config, <what the routing table holds>)`; returns them."""
    import ray

    from heteroscale_ray.serving.deployments import register_service
    from heteroscale_ray.serving.routing_table import get_routing_table

    _, services = ray.get(get_routing_table().snapshot.remote(), timeout=30)
    regs = ingress_registrations(config, services)
    for r in regs:
        register_service(r.name, r.engine, r.model_profile, r.migration_limit, r.ttft_slo_s)
    return regs


def update_services(services_yaml: str) -> tuple[bool, str]:
    """Validate a new services.yaml here, at the edge, and hand the model to the policy engine;
    a bad file is rejected with the loader's message and the running config stays. Once the
    engine took it, changed `migration_limit`s and TTFT SLOs go to the ingress (as `start`
    registers them)."""
    import ray

    try:
        config = parse_yaml_text(services_yaml, ServicesConfig, "services update")
    except ConfigError as e:
        return False, str(e)
    ok, message = ray.get(policy_engine().update_services.remote(config), timeout=60)
    if not ok:
        return ok, message
    try:
        regs = push_ingress_registrations(config)
    except Exception as e:  # the policy engine has the config; say what the ingress missed
        return ok, (
            f"{message}; the ingress could not take the new migration limits "
            f"({type(e).__name__}: {e}): run the update again"
        )
    if regs:
        limits = ", ".join(f"{r.name} {r.migration_limit}" for r in regs)
        message += f"; ingress migration_limit: {limits}"
    return ok, message


def stop_control_plane(purge: bool = False) -> list[str]:
    """Stop the loop, kill the control-plane actors; with ``purge`` remove what they created."""
    import ray

    done: list[str] = []
    pe = _actor(POLICY_ENGINE)
    if pe is not None:
        with contextlib.suppress(Exception):
            ray.get(pe.shutdown.remote(), timeout=120)
        ray.kill(pe, no_restart=True)
        done.append(POLICY_ENGINE)
    fps = _actor(PRE_SCHEDULER)
    if fps is not None and purge:
        with contextlib.suppress(Exception):
            done += [f"deleted {app}" for app in ray.get(fps.delete_all.remote(), timeout=120)]
    for info in ray.util.list_named_actors(all_namespaces=True):
        name = info["name"]
        if info.get("namespace") != NAMESPACE or not name.startswith("heteroscale-"):
            continue
        if name == "heteroscale-routing" and not purge:
            continue
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
            done.append(name)
    if purge:
        from ray import serve

        from heteroscale_ray.serving.deployments import INGRESS_APP

        with contextlib.suppress(Exception):
            if INGRESS_APP in serve.status().applications:
                serve.delete(INGRESS_APP)
                done.append(f"deleted {INGRESS_APP}")
        kv_clear()
        done.append(f"cleared checkpoints (GCS KV namespace {KV_NAMESPACE!r})")
    return done


def format_capacity(cap: dict[str, Any]) -> str:
    """One line: what one instance carries now (`PolicyEngine.capacities()` entry)."""
    if "error" in cap:
        return f"n/a ({cap['error']})"
    line = (
        f"{cap['text']} at prompt {cap['prompt_mean']:,.0f} / output {cap['output_mean']:,.0f} "
        "tokens"
    )
    holds = cap.get("window_holds_down_to")
    if holds:
        shares = " / ".join(f"{holds.get(r, 1.0):.0%}" for r in ("prefill", "decode"))
        line += f"; scale-in window holds falls to {shares} of a peak (prefill / decode)"
    return line


def format_observation(o: dict[str, Any]) -> str:
    """One line of the demand-side signals and the TTFT split the last period saw."""

    def num(key: str, fmt: str, unit: str = "", scale: float = 1.0) -> str | None:
        v = o.get(key)
        return None if v is None else f"{v * scale:{fmt}}{unit}"

    parts = [
        ("rate", num("request_rate", ".2f", " req/s")),
        ("prompt", num("prompt_mean", ",.0f", " tok")),
        ("sd", num("prompt_sd", ",.0f", " tok")),
        ("prefill queue", num("prefill_queue_s", ".2f", " s")),
        ("decode running", num("decode_running", ".1f")),
        ("queued", num("decode_queue", ".0f")),
        ("TTFT p99", num("ttft_p99_s", ",.0f", " ms", 1000)),
        ("wait", num("ttft_wait_p99_s", ",.0f", " ms", 1000)),
        ("service", num("ttft_service_p99_s", ",.0f", " ms", 1000)),
        ("TBT p99", num("tbt_p99_s", ",.0f", " ms", 1000)),
        ("decode step", num("decode_step_s", ",.1f", " ms", 1000)),
        ("heaviest burst", _bursts(o.get("prompt_bursts"))),
    ]
    return ", ".join(f"{k} {v}" for k, v in parts if v is not None) or "n/a"


def _bursts(bursts: Any) -> str | None:
    """The most cache-miss prompt tokens that arrived within each burst span (a list once the
    status went through JSON)."""
    if isinstance(bursts, list):
        bursts = tuple(bursts)
    if not usable(bursts):
        return None
    spans = "/".join(f"{s:g}" for s in BURST_SPANS_S)
    return f"{'/'.join(f'{a:,.0f}' for a in bursts)} tok within {spans} s"


def format_status(st: dict[str, Any]) -> str:
    """`heteroscale status` as text: services, DGs, pending removals, last decisions."""
    import datetime as dt

    lines = []
    mode = "ADVISORY (no actuation)" if st["advisory"] else "active"
    lines.append(
        f"control plane: {mode}, period {st['period_s']:g}s, {st['cycles']} cycles"
        + (f", last error: {st['last_error']}" if st.get("last_error") else "")
    )
    lines.append("")
    lines.append(f"{'service':<14}{'ratio':>9}{'prio':>6}  signal (target/instance)   observed")
    for s in st["services"]:
        o = st.get("observations", {}).get(s["name"], {})
        active = s.get("active_ratio", s["pd_ratio"])
        ratio = s["pd_ratio"] if active == s["pd_ratio"] else f"{active}*"
        if s["signal"] == "demand":
            rate = o.get("request_rate")
            obs = "n/a" if rate is None else f"{rate:.2f} req/s"
            signal = "demand (learned)"
        else:
            val = o.get(s["signal"])
            obs = "n/a" if val is None else f"{val:.0f} tok/s"
            target, now = s.get("target_per_instance"), s.get("carried_target_per_instance")
            shown = "-" if target is None else f"{target:g}"
            if target is not None and now is not None and round(now) != round(target):
                shown += f" -> {now:,.0f}"  # carried to today's lengths (policy.tuned_at)
            signal = f"{s['signal']} ({shown})"
        lines.append(f"{s['name']:<14}{ratio:>9}{s['priority']:>6}  {signal:<27}{obs}")
        cap = st.get("capacity", {}).get(s["name"])
        if cap:
            lines.append(f"  capacity: {format_capacity(cap)}")
        if o:
            lines.append(f"  observed: {format_observation(o)}")
    fps = st.get("pre_scheduler", {})
    lines.append("")
    if "error" in fps:
        lines.append(f"pre-scheduler: {fps['error']}")
    else:
        lines.append(
            f"{'DG':<26}{'domain':<14}{'GPU P/D':<11}{'P run/want':>11}{'D run/want':>11}  gate"
        )
        for d in fps.get("dgs", []):
            lines.append(
                f"{d['app']:<26}{d['domain']:<14}"
                f"{d['prefill_gpu_type'] + '/' + d['decode_gpu_type']:<11}"
                f"{str(d['running']['prefill']) + '/' + str(d['prefill']):>11}"
                f"{str(d['running']['decode']) + '/' + str(d['decode']):>11}  "
                f"{'open' if d['gate_open'] else 'closed'}"
                + (f" weight {d['weight']:.2f}" if d.get("weight", 1.0) < 1.0 else "")
            )
        for p in fps.get("pending_removals", []):
            if p.get("into"):
                kind = f"moved to {', '.join(p['into'])}: serving until replaced"
            else:
                kind = "whole DG, draining" if p["whole_dg"] else "down-weighted"
            lines.append(f"  soft scale-in: {p['dg_id']} {p['prefill']}P+{p['decode']}D ({kind})")
        for u in fps.get("last_cycle", {}).get("unplaced", []):
            lines.append(f"  unplaced: {u['count']} {u['role']} of {u['service']} ({u['reason']})")
    if any(s.get("active_ratio", s["pd_ratio"]) != s["pd_ratio"] for s in st["services"]):
        lines.append("  * dynamic P/D ratio: moved from the configured one with the workload")
    lines.append("")
    lines.append("last decisions:")
    for e in st.get("decisions", []):
        t = dt.datetime.fromtimestamp(e["time"]).strftime("%H:%M:%S")
        lines.append(
            f"  {t} {e['service']}: {e['reason']} {e['had_prefill']}P/{e['had_decode']}D -> "
            f"{e['prefill']}P/{e['decode']}D: {e['message']}"
        )
    return "\n".join(lines)


def format_migrations(counts: Mapping[str, Mapping[str, int]] | None) -> str:
    """`heteroscale status`'s line: requests moved off failed replicas, per service and reason
    (None: the routing table did not answer)."""
    if counts is None:
        return "request migrations: n/a (the routing table did not answer)"
    if not any(sum(by.values()) for by in counts.values()):
        return "request migrations: none"
    parts = []
    for svc in sorted(counts):
        by = {r: n for r, n in counts[svc].items() if n}
        if by:
            detail = ", ".join(f"{r} {n}" for r, n in sorted(by.items()))
            parts.append(f"{svc} {sum(by.values())} ({detail})")
    return "request migrations: " + "; ".join(parts)
