"""What the pre-scheduler sends and shows of its DG state: pure functions, no Ray calls.

- `dg_targets`: per sub-cluster scheduler, the replicas each DG must run on Serve (its target
  plus its pending soft removals, so nothing stops before its window ends);
- `cycle_report`: one control tick's plan, events, unplaced and lost instances, as JSON;
- `status_snapshot`: the DG state, pending removals and hosts for `heteroscale status`;
- `with_dead_hosts`: host reports that never drop a host whose Ray node went away.
Split from `pre_scheduler` (the actor: topology refresh, the tick, checkpoint, fan-out) so the
actor holds the cycle and this module what is derived from its state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from heteroscale_ray.actors.serving_adapter import DgServeState, DgTarget
from heteroscale_ray.config import Role, ServiceSpec
from heteroscale_ray.control import StepResult
from heteroscale_ray.control.soft_scale_in import PendingRemoval, serving_counts
from heteroscale_ray.topology import CLUSTER_WIDE, DeploymentGroup


def dg_targets(
    services: Mapping[str, ServiceSpec],
    dgs: Sequence[DeploymentGroup],
    pending: Sequence[PendingRemoval],
    sub_cluster_of_domain: Mapping[str, str],
    schedulers: Iterable[str],
) -> dict[str, list[DgTarget]]:
    """Sub-cluster -> the DG targets it reconciles. A DG deleted but still pending drains (its
    replicas run until the window ends, out of routing); a live DG with pending decode
    removals routes to them with a lower weight, except to moved ones, which serve at full
    weight until their replacements do (`soft_scale_in`'s make-before-break)."""
    run = serving_counts(dgs, pending)
    moving = serving_counts((), [p for p in pending if p.moving])
    snapshots = {dg.dg_id: dg for dg in dgs}
    whole = {p.dg.dg_id for p in pending if p.whole_dg}
    for p in pending:
        snapshots.setdefault(p.dg.dg_id, p.dg)
    known = sorted(schedulers)
    out: dict[str, list[DgTarget]] = {}
    for dg_id, dg in snapshots.items():
        spec = services.get(dg.service)
        pre, dec = run[dg_id]
        live = next((d for d in dgs if d.dg_id == dg_id), None)
        target_dec = live.count(Role.DECODE) + moving.get(dg_id, (0, 0))[1] if live else 0
        sc = sub_cluster_of_domain.get(dg.domain, CLUSTER_WIDE)
        if sc == CLUSTER_WIDE:
            sc = known[0] if known else CLUSTER_WIDE
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


def cycle_report(
    result: StepResult,
    *,
    now: float,
    plan_lines: list[str],
    lost_hosts: Iterable[str],
    applied: bool,
    actuation_error: str | None,
    seconds: float,
) -> dict[str, Any]:
    """One tick as JSON: what was planned, what could not be placed, what was lost."""
    return {
        "at": now,
        "plan": plan_lines,
        "events": list(result.events),
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
        "lost": [
            {
                "service": x.service,
                "dg_id": x.dg_id,
                "instance": x.instance.instance_id,
                "role": x.instance.role.value,
                "host": x.instance.host,
            }
            for x in result.lost
        ],
        "lost_hosts": sorted(lost_hosts),
        "removed_dgs": list(result.removed_dgs),
        "applied": applied,
        "actuation_error": actuation_error,
        "seconds": seconds,
    }


def status_snapshot(
    dgs: Sequence[DeploymentGroup],
    pending: Sequence[PendingRemoval],
    status: Mapping[str, DgServeState],
    **extra: Any,
) -> dict[str, Any]:
    """The DG state with what Serve runs of each DG (`status`, by app name) and the pending
    removals; ``extra`` (hosts, sub-clusters, last cycle, ...) is passed through."""
    from heteroscale_ray.serving.deployments import dg_app_name  # FastAPI: only when asked

    rows = []
    for dg in dgs:
        app = dg_app_name(dg.service, dg.dg_id)
        st = status.get(app, DgServeState())
        rows.append(
            {
                "service": dg.service,
                "dg_id": dg.dg_id,
                "app": app,
                "domain": f"{dg.level.value}:{dg.domain}",
                "prefill_gpu_type": dg.prefill_gpu_type,
                "decode_gpu_type": dg.decode_gpu_type,
                "prefill": dg.count(Role.PREFILL),
                "decode": dg.count(Role.DECODE),
                "running": {"prefill": st.prefill.running, "decode": st.decode.running},
                "gate_open": st.gate_open,
                "weight": st.weight,
                "instances": [
                    {
                        "id": i.instance_id,
                        "role": i.role.value,
                        "host": i.host,
                        "gpus": list(i.gpus),
                    }
                    for i in dg.instances
                ],
            }
        )
    removals = [
        {
            "dg_id": p.dg.dg_id,
            "service": p.service,
            "whole_dg": p.whole_dg,
            "into": [dg_id for dg_id, _ in p.into],
            "prefill": p.count(Role.PREFILL),
            "decode": p.count(Role.DECODE),
            "since": p.since,
            "hosts": sorted({i.host for i in p.instances}),
            "gpus": [[i.host, g] for i in p.instances for g in i.gpus],
        }
        for p in pending
    ]
    return {**extra, "dgs": rows, "pending_removals": removals}  # extra never hides the state


def with_dead_hosts(reports: list[dict[str, Any]], gone: set[str]) -> list[dict[str, Any]]:
    """The host reports with every host whose Ray node is gone present once, as dead.

    Its sub-cluster says so when it probed it this cycle; when it did not (its owner kept last
    cycle's reports, or no owner is known: a checkpoint from before owners were kept), the
    node's death is the report: the status never drops a host that went away.
    """
    out = [r for r in reports if not (r["host"] in gone and r.get("healthy"))]
    seen = {r["host"] for r in out}
    out += [
        {
            "host": host,
            "node_id": None,
            "healthy": False,
            "dead": True,
            "error": "its Ray node is not alive",
        }
        for host in sorted(gone - seen)
    ]
    return out
