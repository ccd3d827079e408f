"""Hard limits: per-role min/max and the service's GPU budget, applied so the P/D ratio survives.

The anchor count is moved, and the follower re-derived, so both roles shrink or grow together.
Only when the bounds themselves make the ratio impossible are the roles clamped one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from heteroscale_ray.config import Role, ServiceSpec
from heteroscale_ray.policy.split import Ratio, as_pair, follower_count, other, shares
from heteroscale_ray.policy.types import Reason


@dataclass(frozen=True)
class Fitted:
    """Counts within the limits; ``clamp`` names the limit that changed them, if any."""

    prefill: int
    decode: int
    clamp: Reason | None = None
    note: str = ""


def clamp(x: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, x))


def ratio_range(spec: ServiceSpec, anchor: Role, ratio: Ratio) -> tuple[int, int] | None:
    """Anchor counts for which both roles sit within their min/max at the ratio, or None if none do."""
    mine, theirs = shares(anchor, ratio)
    own, follower = spec.role(anchor), spec.role(other(anchor))
    # follower_count(x) >= m  <=>  x >= floor((m - 1) * mine / theirs) + 1 ; <= M  <=>  x <= M * mine // theirs
    lo_for_follower = (
        0 if follower.min_instances <= 0 else (follower.min_instances - 1) * mine // theirs + 1
    )
    lo = max(own.min_instances, lo_for_follower)
    hi = min(own.max_instances, follower.max_instances * mine // theirs)
    return (lo, hi) if lo <= hi else None


def gpus(spec: ServiceSpec, prefill: int, decode: int) -> int:
    return prefill * spec.prefill.gpus_per_instance + decode * spec.decode.gpus_per_instance


def fit_to_limits(spec: ServiceSpec, anchor: Role, count: int, ratio: Ratio) -> Fitted:
    """Bounds first (keeping the ratio where the bounds allow it), then the GPU budget."""
    follower_spec = spec.role(other(anchor))
    kept = ratio_range(spec, anchor, ratio)
    own = spec.role(anchor)
    lo, hi = kept or (own.min_instances, own.max_instances)

    def pair(x: int) -> tuple[int, int]:
        follower = clamp(
            follower_count(anchor, x, ratio),
            follower_spec.min_instances,
            follower_spec.max_instances,
        )
        return as_pair(anchor, x, follower)

    x = clamp(count, lo, hi)
    reason, note = None, ""
    if pair(x) != as_pair(anchor, count, follower_count(anchor, count, ratio)):
        reason = Reason.CLAMPED_MIN_MAX
        note = _bounds_note(spec, anchor, count, x, ratio, kept is not None)

    budget = spec.policy.gpu_budget
    if budget is not None and gpus(spec, *pair(x)) > budget:
        fitting = _largest(lo, x, lambda y: gpus(spec, *pair(y)) <= budget)
        reason = Reason.CLAMPED_BUDGET
        if fitting is None:
            note = f"minimums need {gpus(spec, *pair(lo))} GPUs, over the GPU budget of {budget}; minimums win"
            x = lo
        else:
            note = f"limited by the GPU budget: {gpus(spec, *pair(fitting))} of {budget} GPUs"
            x = fitting
    return Fitted(*pair(x), clamp=reason, note=note)


def _largest(lo: int, hi: int, ok: Callable[[int], bool]) -> int | None:
    """Largest y in [lo, hi] with ok(y), for ok monotone (true then false); None if ok(lo) fails."""
    if not ok(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _bounds_note(
    spec: ServiceSpec, anchor: Role, wanted: int, got: int, ratio: Ratio, ratio_kept: bool
) -> str:
    name = anchor.value
    if not ratio_kept:
        return f"min/max of the roles cannot hold {ratio[0]}:{ratio[1]}, each role clamped to its own bounds"
    if got < wanted:
        limit = (
            "its max"
            if got == spec.role(anchor).max_instances
            else f"the {other(anchor).value} max"
        )
        return f"{name} capped at {got} by {limit}"
    limit = (
        "its min" if got == spec.role(anchor).min_instances else f"the {other(anchor).value} min"
    )
    return f"{name} raised to {got} by {limit}"
