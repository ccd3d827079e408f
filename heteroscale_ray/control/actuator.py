"""Where plans leave the pure core: an actuator applies a placement plan to some substrate.

The simulator's is `heteroscale_ray.sim.actuator.SimActuator`; on Ray, the pre-scheduler hands
DG targets to its sub-cluster schedulers. The advisory one only records, for dry runs.
"""

from __future__ import annotations

from typing import Protocol

from heteroscale_ray.topology import PlacementPlan


class Actuator(Protocol):
    """Applies one tick's plan; must be idempotent for the same plan."""

    def apply(self, plan: PlacementPlan) -> None: ...


class AdvisoryActuator:
    """Dry-run actuator: keeps every plan it is given and changes nothing."""

    def __init__(self) -> None:
        self.plans: list[PlacementPlan] = []

    def apply(self, plan: PlacementPlan) -> None:
        self.plans.append(plan)
