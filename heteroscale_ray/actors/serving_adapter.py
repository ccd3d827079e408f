"""Thin adapter from control-plane targets to the serving layer's actuator API.

Keeps every Serve detail the schedulers need in one place: how a DG target becomes a
`DgServingSpec`, and how many replicas of each role Serve runs (`serve.status()`), as small
named records. Replicas are pinned by label selectors to the DG's domain and
per-role GPU type; Serve (not us) picks the host inside that domain, so the per-host GPU
indices the placement core reserves are bookkeeping, not a binding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from heteroscale_ray.config import AffinityLevel
from heteroscale_ray.serving.emulation import EmulationConfig
from heteroscale_ray.serving.model import ModelConfig

RUNNING_STATES = {"RUNNING"}
STARTING_STATES = {"STARTING", "UPDATING", "RECOVERING", "PENDING_MIGRATION"}


@dataclass(frozen=True)
class ServingOptions:
    """How the control plane deploys replicas: engine shape, GPU-time emulation, shutdown."""

    engine: ModelConfig = field(default_factory=ModelConfig)
    emulation: EmulationConfig = field(default_factory=EmulationConfig)
    graceful_shutdown_timeout_s: float = 60.0
    ratio_tolerance: float = 0.5  # gate opens when ready P:D is within +-50% of the target ratio


@dataclass(frozen=True)
class DgTarget:
    """What one DG should look like on Serve after this cycle (a level, not a diff)."""

    service: str
    dg_id: str
    domain: str
    level: AffinityLevel
    prefill_gpu_type: str
    decode_gpu_type: str
    prefill: int  # replicas to run: the target plus instances pending soft removal
    decode: int
    prefill_gpus: int = 1
    decode_gpus: int = 1
    model_profile: str = "dense-8b"
    draining: bool = False  # whole DG pending removal: no new requests
    weight: float = 1.0  # < 1 while some decode replicas are pending removal

    @property
    def app_name(self) -> str:
        from heteroscale_ray.serving.deployments import dg_app_name

        return dg_app_name(self.service, self.dg_id)


def serving_spec(target: DgTarget, options: ServingOptions) -> Any:
    """The serving layer's `DgServingSpec` for a target (gate closed until replicas are up)."""
    from heteroscale_ray.serving.deployments import DgServingSpec, RoleServing

    domain = None if target.level is AffinityLevel.NONE else target.domain
    return DgServingSpec(
        service=target.service,
        dg_id=target.dg_id,
        prefill=RoleServing(target.prefill_gpu_type, target.prefill, target.prefill_gpus),
        decode=RoleServing(target.decode_gpu_type, target.decode, target.decode_gpus),
        domain=domain,
        domain_level="s2" if target.level is AffinityLevel.S2 else "s1",
        model_profile=target.model_profile,
        engine=options.engine,
        emulation=options.emulation,
        weight=target.weight,
        ratio_gate_open=False,
        graceful_shutdown_timeout_s=options.graceful_shutdown_timeout_s,
    )


class ReplicaCounts(NamedTuple):
    """Replicas of one role of one DG application, as Serve reports them."""

    running: int = 0
    starting: int = 0


@dataclass(frozen=True)
class DgServeState:
    """One DG application on Serve after a reconcile: replicas per role and its routing gates."""

    prefill: ReplicaCounts = ReplicaCounts()
    decode: ReplicaCounts = ReplicaCounts()
    gate_open: bool = False
    draining: bool = False
    weight: float = 1.0
    error: str | None = None


class RouteState(NamedTuple):
    """The routing gates last applied to a DG application."""

    draining: bool
    weight: float
    gate_open: bool
    prefill_running: int | None = None  # None: not pushed to the routing table yet


def live_replicas() -> dict[str, dict[str, ReplicaCounts]]:
    """Serve application -> role ("prefill"/"decode") -> replicas, from `serve.status()`."""
    from ray import serve

    from heteroscale_ray.serving.deployments import ROLE_DEPLOYMENT

    out: dict[str, dict[str, ReplicaCounts]] = {}
    for app_name, app in serve.status().applications.items():
        roles = {}
        for role, dep_name in ROLE_DEPLOYMENT.items():
            dep = app.deployments.get(dep_name)
            if dep is None:
                continue
            states = {str(getattr(k, "value", k)): n for k, n in dep.replica_states.items()}
            running = sum(n for k, n in states.items() if k in RUNNING_STATES)
            starting = sum(n for k, n in states.items() if k in STARTING_STATES)
            roles[role] = ReplicaCounts(running, starting)
        out[app_name] = roles
    return out
