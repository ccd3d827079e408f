"""One control cycle, the single path from observations to a placement plan.

observations -> autoscaler.desire -> ScaleRequests -> topology.plan_cycle -> plan. The simulator
and the Ray policy engine both call `control_cycle` and differ only in the actuator that applies
the returned plan, so the two substrates cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from heteroscale_ray.config import GpuCatalog, ServiceSpec
from heteroscale_ray.control.autoscaler import Autoscaler
from heteroscale_ray.control.types import Desired, Observation
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
    """What one cycle decided and planned; `dgs` is the DG state once the plan is applied."""

    now: float
    desired: Mapping[str, Desired]
    requests: tuple[ScaleRequest, ...]
    plan: PlacementPlan
    dgs: tuple[DeploymentGroup, ...]


def control_cycle(
    autoscaler: Autoscaler,
    now: float,
    observations: Mapping[str, Observation],
    *,
    graph: ClusterGraph,
    services: Mapping[str, ServiceSpec],
    dgs: Sequence[DeploymentGroup],
    catalog: GpuCatalog | None = None,
    topology_aware: bool = True,
    reserved: Sequence[DeploymentGroup] = (),
) -> CycleResult:
    """Decide, turn changed targets into scale requests, and plan them in one placement cycle.

    Only services whose target differs from what their DGs hold get a request, so a quiet
    cycle plans nothing and the plan stays small at scale. ``reserved`` (instances on their
    way out, e.g. pending soft scale-in) hold GPUs and ids but count toward no target; see
    :func:`~heteroscale_ray.topology.plan_cycle`.
    """
    desired = autoscaler.desire(now, observations)
    requests = []
    placed_as = dict(services)
    for name in sorted(desired):
        want = desired[name]
        if (want.prefill, want.decode) != role_counts(dgs, name):
            requests.append(ScaleRequest(name, max(0, want.prefill), max(0, want.decode)))
            spec = services.get(name)
            if spec is not None and want.pd_ratio and want.pd_ratio != spec.pd_ratio:
                # A dynamic ratio: DGs grow and shrink in units of the ratio the policy uses now.
                placed_as[name] = spec.model_copy(update={"pd_ratio": want.pd_ratio})
    if requests:
        plan = plan_cycle(
            graph,
            placed_as,
            dgs,
            requests,
            catalog,
            topology_aware=topology_aware,
            reserved=reserved,
        )
    else:
        plan = PlacementPlan()
    return CycleResult(now, desired, tuple(requests), plan, plan.apply(dgs))
