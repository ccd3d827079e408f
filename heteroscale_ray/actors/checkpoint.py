"""Actor names and state that survives actor restarts, kept in Ray's GCS internal KV.

Detached actors restart with their constructor arguments only; whatever they decided since
(policy states, DG ownership, draining marks, accepted config updates) is written here after
every change and read back in ``__init__``. Values are JSON so a checkpoint stays readable.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from heteroscale_ray.config import AffinityLevel, Role, ServicesConfig
from heteroscale_ray.control.soft_scale_in import PendingRemoval
from heteroscale_ray.topology import DeploymentGroup, Instance

NAMESPACE = "heteroscale"
KV_NAMESPACE = "heteroscale"
POLICY_ENGINE = "heteroscale-policy-engine"
PRE_SCHEDULER = "heteroscale-pre-scheduler"
SERVICES_KEY = "services"  # the accepted services config, as validated JSON


def sub_cluster_actor(name: str) -> str:
    return f"heteroscale-sub-cluster-{name}"


def gpu_node_actor(host: str) -> str:
    return f"heteroscale-gpu-node-{host}"


def kv_put(key: str, value: Any) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(key, json.dumps(value), overwrite=True, namespace=KV_NAMESPACE)


def kv_get(key: str) -> Any | None:
    from ray.experimental import internal_kv

    raw = internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)
    return None if raw is None else json.loads(raw)


def kv_clear(prefix: str = "") -> None:
    """Forget every checkpoint under ``prefix`` (``heteroscale stop`` clears all)."""
    from ray.experimental import internal_kv

    for key in internal_kv._internal_kv_list(prefix, namespace=KV_NAMESPACE):
        internal_kv._internal_kv_del(key, namespace=KV_NAMESPACE)


def save_services(config: ServicesConfig) -> None:
    """Checkpoint an accepted (already validated) services config."""
    kv_put(SERVICES_KEY, config.model_dump(mode="json"))


def load_services() -> ServicesConfig | None:
    """The last accepted services config, or None. It was validated when it was accepted, so
    reading it back is a model load, not a re-parse of user text."""
    data = kv_get(SERVICES_KEY)
    return None if data is None else ServicesConfig.model_validate(data)


def dg_to_json(dg: DeploymentGroup) -> dict[str, Any]:
    return {
        "dg_id": dg.dg_id,
        "service": dg.service,
        "domain": dg.domain,
        "level": dg.level.value,
        "prefill_gpu_type": dg.prefill_gpu_type,
        "decode_gpu_type": dg.decode_gpu_type,
        "draining": dg.draining,
        "instances": [[i.instance_id, i.role.value, i.host, list(i.gpus)] for i in dg.instances],
    }


def dg_from_json(data: dict[str, Any]) -> DeploymentGroup:
    return DeploymentGroup(
        dg_id=data["dg_id"],
        service=data["service"],
        domain=data["domain"],
        level=AffinityLevel(data["level"]),
        prefill_gpu_type=data["prefill_gpu_type"],
        decode_gpu_type=data["decode_gpu_type"],
        draining=bool(data.get("draining", False)),
        instances=tuple(
            Instance(iid, Role(role), host, tuple(gpus))
            for iid, role, host, gpus in data["instances"]
        ),
    )


def dgs_to_json(dgs: Iterable[DeploymentGroup]) -> list[dict[str, Any]]:
    return [dg_to_json(dg) for dg in dgs]


def dgs_from_json(data: Iterable[dict[str, Any]]) -> tuple[DeploymentGroup, ...]:
    return tuple(dg_from_json(d) for d in data)


def pending_to_json(p: PendingRemoval) -> dict[str, object]:
    return {
        "dg": dg_to_json(p.dg),
        "instances": [i.instance_id for i in p.instances],
        "since": p.since,
        "whole_dg": p.whole_dg,
        "into": [[dg_id, n] for dg_id, n in p.into],
    }


def pending_from_json(data: Mapping[str, object]) -> PendingRemoval:
    dg = dg_from_json(data["dg"])  # type: ignore[arg-type]
    ids = set(data["instances"])  # type: ignore[arg-type]
    return PendingRemoval(
        dg=dg,
        instances=tuple(i for i in dg.instances if i.instance_id in ids),
        since=float(data["since"]),  # type: ignore[arg-type]
        whole_dg=bool(data["whole_dg"]),
        into=tuple((str(d), int(n)) for d, n in data.get("into", ())),  # type: ignore[attr-defined]
    )
