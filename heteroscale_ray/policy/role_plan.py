"""One role's plan inside a demand decision: where it goes and the sentence that says why."""

from __future__ import annotations

from dataclasses import dataclass

from heteroscale_ray.config import Role
from heteroscale_ray.policy.types import Reason


@dataclass(frozen=True)
class RolePlan:
    """What one role should be, and why (the sentence part for this role)."""

    role: Role
    current: int
    target: int
    reason: Reason
    why: str
    need: float | None = None
