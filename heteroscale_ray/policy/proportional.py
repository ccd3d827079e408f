"""Proportional control: instances needed = signal / target per instance, with a dead-band and damping."""

from __future__ import annotations

import math
from enum import Enum

# Floating-point slack so that exact edges (e.g. +10% at a 10% tolerance) compare as equal.
EPS = 1e-9


class Direction(str, Enum):
    OUT = "out"
    IN = "in"
    HOLD = "hold"


def ceil_eps(x: float) -> int:
    """Ceiling that ignores float noise: ceil(11.000000000000002) is 11, not 12."""
    return math.ceil(x - EPS * max(1.0, abs(x)))


def required_instances(signal: float, target_per_instance: float) -> float:
    """Fractional instances of the signal's role needed to carry ``signal`` at the target load."""
    return signal / target_per_instance


def dead_band(
    required: float, current: int, out_tolerance: float, in_tolerance: float
) -> Direction:
    """OUT only if required > current * (1 + out_tol), IN only if required < current * (1 - in_tol).

    Exactly at a tolerance edge holds. With no instances, any positive need is OUT.
    """
    slack = EPS * max(1.0, float(current))
    if required > current * (1 + out_tolerance) + slack:
        return Direction.OUT
    if required < current * (1 - in_tolerance) - slack:
        return Direction.IN
    return Direction.HOLD


def damped_target(current: int, desired: int, damping: float) -> int:
    """Move ``damping`` of the way from current to desired, at least one instance, never past it."""
    gap = desired - current
    if gap == 0:
        return current
    step = min(abs(gap), max(1, ceil_eps(abs(gap) * damping)))
    return current + step if gap > 0 else current - step
