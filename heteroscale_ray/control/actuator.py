"""Where plans leave the pure core: an actuator applies a placement plan to some substrate.

The simulator has its own actuator (`heteroscale_ray.sim.cluster`); the Ray actors bring theirs.
The advisory one only records, for dry runs next to a live cluster.
"""

from __future__ import annotations

from typing import Any, Protocol


class Actuator(Protocol):
    """Applies one cycle's plan; must be idempotent for the same plan."""

    def apply(self, plan: Any) -> None: ...


class AdvisoryActuator:
    """Dry-run actuator: keeps every plan it is given and changes nothing."""

    def __init__(self) -> None:
        self.plans: list[Any] = []

    def apply(self, plan: Any) -> None:
        self.plans.append(plan)
