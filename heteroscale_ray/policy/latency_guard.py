"""Negative feedback on latency: when p99 TBT/TTFT nears the SLO, step out by a fixed share.

Proportional control on throughput is the main loop; this is the safety net for when the
per-instance target turns out too optimistic (latency is flat, then a cliff near saturation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from heteroscale_ray.config import LatencyTier, ServiceSpec
from heteroscale_ray.policy.freshness import value_problem
from heteroscale_ray.policy.proportional import EPS, ceil_eps
from heteroscale_ray.policy.types import Signals


@dataclass(frozen=True)
class Pressure:
    """The worst watched latency, as observed p99 over its SLO (1.0 = right at the SLO)."""

    metric: str  # "TBT" or "TTFT"
    observed_s: float
    slo_s: float

    @property
    def ratio(self) -> float:
        return self.observed_s / self.slo_s


def latency_pressure(spec: ServiceSpec, signals: Signals) -> Pressure | None:
    """Pressure on the metric(s) the guard watches; None when none of them has a valid value.

    The caller checks the snapshot's freshness first.
    """
    metric = spec.policy.latency_guard.metric
    watched = []
    if metric in ("tbt", "both"):
        watched.append(("TBT", signals.tbt_p99_s, spec.slo.tbt_s))
    if metric in ("ttft", "both"):
        watched.append(("TTFT", signals.ttft_p99_s, spec.slo.ttft_s))
    valid = [
        Pressure(name, value, slo) for name, value, slo in watched if value_problem(value) is None
    ]
    return max(valid, key=lambda p: p.ratio) if valid else None


def reached_tier(ratio: float, tiers: list[LatencyTier]) -> LatencyTier | None:
    """The highest tier whose threshold the latency ratio reaches (ratio >= at, float noise aside)."""
    reached = [t for t in tiers if math.isfinite(ratio) and ratio >= t.at - EPS]
    return max(reached, key=lambda t: t.at) if reached else None


def guard_target(current: int, step: float) -> int:
    """current + ceil(current * step), and always at least one more instance."""
    return current + max(1, ceil_eps(current * step))
