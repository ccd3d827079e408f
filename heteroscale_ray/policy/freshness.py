"""Is the scaling signal usable? Missing, NaN, negative or stale data must never drive a scale-in."""

from __future__ import annotations

import math
from dataclasses import dataclass

from heteroscale_ray.config import PolicySpec, Role, ServiceSpec
from heteroscale_ray.policy.types import Signals

SIGNAL_LABELS = {"decode_tps": "decode TPS", "prefill_tps": "prefill TPS"}


@dataclass(frozen=True)
class Reading:
    """A usable value, or None and the problem in words ('is NaN', 'is stale (75 s old > 60 s)')."""

    value: float | None
    problem: str | None = None


def signal_role(policy: PolicySpec) -> Role:
    """The role whose instances the signal counts: decode for decode TPS, prefill for prefill TPS."""
    return Role.PREFILL if policy.signal == "prefill_tps" else Role.DECODE


def snapshot_problem(signals: Signals, now: float, stale_after_s: float) -> str | None:
    """Why the whole snapshot is unusable, or None when it is fresh (age <= stale_after_s)."""
    if signals.observed_at is None or not math.isfinite(signals.observed_at):
        return "has no snapshot time"
    age = now - signals.observed_at
    if age > stale_after_s:
        return f"is stale ({age:,.0f} s old > {stale_after_s:,.0f} s)"
    return None


def value_problem(value: float | None) -> str | None:
    """Why one number is unusable, or None when it is a finite non-negative float."""
    if value is None:
        return "is missing"
    if math.isnan(value):
        return "is NaN"
    if not math.isfinite(value):
        return "is infinite"
    if value < 0:
        return f"is negative ({value:,.0f})"
    return None


def read_signal(spec: ServiceSpec, signals: Signals, now: float) -> Reading:
    """The proportional-control signal named by the policy, if fresh and valid."""
    value = getattr(signals, spec.policy.signal)
    problem = snapshot_problem(signals, now, spec.policy.stale_after_s) or value_problem(value)
    return Reading(None, problem) if problem else Reading(value)
