"""Services leaving the configuration: their DGs drain like any soft removal, then their route goes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from heteroscale_ray.config import ServiceSpec
from heteroscale_ray.control.soft_scale_in import PendingRemoval
from heteroscale_ray.topology import DeploymentGroup


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
