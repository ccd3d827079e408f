"""Desired counts -> scale requests -> one placement cycle: the planning step of every tick.

Pure: the caller passes the decisions (made by any `Autoscaler`), the DG state and the graph.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from heteroscale_ray.config import GpuCatalog, ServiceSpec
from heteroscale_ray.control.types import Desired
from heteroscale_ray.topology import (
    ClusterGraph,
    DeploymentGroup,
    PlacementPlan,
    ScaleRequest,
    plan_cycle,
    role_counts,
)


@dataclass(frozen=True)
class CycleResult:
    """What one cycle planned; `dgs` is the DG state once the plan is applied."""

    requests: tuple[ScaleRequest, ...]
    plan: PlacementPlan
    dgs: tuple[DeploymentGroup, ...]


def scale_requests(
    desired: Mapping[str, Desired], dgs: Sequence[DeploymentGroup]
) -> tuple[ScaleRequest, ...]:
    """One request per service whose target differs from what its DGs hold, so a quiet cycle
    plans nothing and the plan stays small at scale."""
    return tuple(
        ScaleRequest(name, max(0, want.prefill), max(0, want.decode))
        for name, want in sorted(desired.items())
        if (want.prefill, want.decode) != role_counts(dgs, name)
    )


def placed_as(
    services: Mapping[str, ServiceSpec], desired: Mapping[str, Desired]
) -> dict[str, ServiceSpec]:
    """The specs placement sees: a service whose policy moved its P/D ratio (dynamic ratio, or
    a baseline's own) grows and shrinks its DGs in units of that ratio."""
    out = dict(services)
    for name, want in desired.items():
        spec = services.get(name)
        if spec is not None and want.pd_ratio is not None and want.pd_ratio != spec.ratio:
            out[name] = spec.placed_at(want.pd_ratio)
    return out


def control_cycle(
    desired: Mapping[str, Desired],
    *,
    graph: ClusterGraph,
    services: Mapping[str, ServiceSpec],
    dgs: Sequence[DeploymentGroup],
    catalog: GpuCatalog | None = None,
    topology_aware: bool = True,
    reserved: Sequence[DeploymentGroup] = (),
) -> CycleResult:
    """Turn changed targets into scale requests and plan them in one placement cycle.

    ``reserved`` (instances on their way out, e.g. pending soft scale-in) hold GPUs and ids but
    count toward no target; see :func:`~heteroscale_ray.topology.plan_cycle`.
    """
    requests = scale_requests(desired, dgs)
    if not requests:
        return CycleResult((), PlacementPlan(), tuple(dgs))
    plan = plan_cycle(
        graph,
        placed_as(services, {r.service: desired[r.service] for r in requests}),
        dgs,
        list(requests),
        catalog,
        topology_aware=topology_aware,
        reserved=reserved,
    )
    return CycleResult(requests, plan, plan.apply(dgs))
