"""The latency guards' step arithmetic: which tier a latency ratio reaches, and how far a
step goes. The guards themselves, judging only the latency more instances can fix, are in
`fixable_latency.py` (demand mode) and `coordinated_guards.py` (the paper's rule).
"""

from __future__ import annotations

import math

from heteroscale_ray.config import LatencyTier
from heteroscale_ray.policy.proportional import EPS, ceil_eps


def reached_tier(ratio: float, tiers: list[LatencyTier]) -> LatencyTier | None:
    """The highest tier whose threshold the latency ratio reaches (ratio >= at, float noise aside)."""
    reached = [t for t in tiers if math.isfinite(ratio) and ratio >= t.at - EPS]
    return max(reached, key=lambda t: t.at) if reached else None


def guard_target(current: int, step: float) -> int:
    """current + ceil(current * step), and always at least one more instance."""
    return current + max(1, ceil_eps(current * step))
