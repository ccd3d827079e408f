"""One stage's proposal in the paper's coordinated rule: a count of one anchor role at a ratio."""

from __future__ import annotations

from dataclasses import dataclass

from heteroscale_ray.config import Role
from heteroscale_ray.policy.split import Ratio, follower_count
from heteroscale_ray.policy.types import Reason


@dataclass(frozen=True)
class Proposal:
    """What one stage wants: ``count`` instances of the ``anchor`` role at ``ratio``, and why."""

    anchor: Role
    count: int
    ratio: Ratio
    reason: Reason
    why: str
    # A latency-guard step: (role whose latency it answers, that latency's fixable part, that
    # role's load per instance), so the next breach can tell whether the step helped.
    guard_mark: tuple[Role, float, float | None] | None = None

    def count_as(self, role: Role) -> int:
        """This proposal's size in instances of ``role``, to compare proposals anchored differently."""
        return (
            self.count
            if role is self.anchor
            else follower_count(self.anchor, self.count, self.ratio)
        )
