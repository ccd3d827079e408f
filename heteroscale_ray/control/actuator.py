"""Where plans leave the pure core: an actuator applies a placement plan to some substrate.

The simulator's is `heteroscale_ray.sim.actuator.SimActuator`; on Ray, the pre-scheduler hands
DG targets to its sub-cluster schedulers (`--advisory` there logs plans and applies none).
"""

from __future__ import annotations

from typing import Protocol

from heteroscale_ray.topology import PlacementPlan


class Actuator(Protocol):
    """Applies one tick's plan; must be idempotent for the same plan."""

    def apply(self, plan: PlacementPlan) -> None: ...
