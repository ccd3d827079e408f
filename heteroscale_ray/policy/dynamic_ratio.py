"""Dynamic P/D ratio: the ratio the load needs, smoothed, snapped to small integers, with hysteresis.

HeteroScale scales on one signal (decode TPS) at a fixed P/D ratio found offline. When the
workload drifts (longer prompts, shorter answers), that ratio starves one role while the
signal looks healthy. Here each tick measures the ratio the load needs,

    (prefill tokens/s / prefill target) : (decode tokens/s / decode target),

with prefill tokens/s the larger of the processed and the offered (arriving) cache-miss rate,

averages it in log space (ratios are multiplicative: 1:2 -> 1:1 is as big a step as
1:1 -> 2:1) with time constant ``smoothing_s``, and moves the active ratio to the nearest
``p:d`` with both terms <= ``max_term`` only once that ratio is closer to the average than
the active one by more than ``change_tolerance`` (`_snap`). The configured ``pd_ratio`` is where it starts (and the
prior the average starts from), and any missing or stale signal leaves the ratio where it is. Pure: time comes in as ``now``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

from heteroscale_ray.config import PdRatio, ServiceSpec
from heteroscale_ray.policy.freshness import snapshot_problem
from heteroscale_ray.policy.split import Ratio, ratio_text
from heteroscale_ray.policy.types import PolicyState, Signals


@dataclass(frozen=True)
class RatioStep:
    """The ratio this tick works at, the smoothed estimate to remember, and what happened."""

    ratio: Ratio
    estimate: float | None
    estimate_at: float | None
    changed: bool = False
    note: str = ""
    was: Ratio | None = None  # the ratio before a change (to hold it back, e.g. in a cooldown)

    def held(self) -> RatioStep:
        """The same step without its change: the estimate is kept, the ratio is not moved."""
        if not self.changed or self.was is None:
            return self
        return RatioStep(self.was, self.estimate, self.estimate_at)


def measured_ratio(spec: ServiceSpec, signals: Signals) -> float | None:
    """Prefill instances needed per decode instance at this snapshot, or None without load."""
    policy = spec.policy
    paired = policy.dynamic_ratio.paired_target_per_instance
    if paired is None:
        return None
    # Served tokens cap at what prefill can do; the offered rate does not. The larger wins, so
    # a saturated prefill pool shows its real need and a draining backlog does not hide it.
    served = [x for x in (signals.prefill_tps, signals.prefill_offered_tps) if _positive(x)]
    prefill, decode = (max(served) if served else None), signals.decode_tps
    if not (_positive(prefill) and _positive(decode)):
        return None
    if policy.signal == "decode_tps":
        prefill_target, decode_target = paired, policy.target_per_instance
    else:
        prefill_target, decode_target = policy.target_per_instance, paired
    prefill_need = prefill / prefill_target  # type: ignore[operator]
    decode_need = decode / decode_target  # type: ignore[operator]
    if not (prefill_need > 0 and decode_need > 0):  # underflow, e.g. decode tps ~1e-320
        return None
    need = prefill_need / decode_need
    return need if math.isfinite(need) else None


def sampled_at(
    previous_at: float | None, decided_at: float | None, now: float, cap_s: float
) -> float | None:
    """When the previous sample counts as taken, for `smooth`. A sample after a gap (no data
    overnight, an idle spell, an outage, a restart) weighs like one period's, never like a
    fresh start: the time since the last sample or decision, capped at `cap_s`. Without it
    the first sample after 20 idle minutes replaced a 300 s average outright."""
    if previous_at is None:
        return None
    since = max(t for t in (previous_at, decided_at) if t is not None)
    return now - min(max(now - since, 0.0), cap_s)


def smooth(
    previous: float | None, previous_at: float | None, value: float, now: float, tau: float
) -> float:
    """Exponential moving average in log space; the first value (or tau 0) is taken as is."""
    if previous is None or previous_at is None or tau <= 0 or previous <= 0:
        return value
    weight = 1.0 - math.exp(-max(0.0, now - previous_at) / tau)
    return math.exp(math.log(previous) + weight * (math.log(value) - math.log(previous)))


@cache
def _candidates(max_term: int) -> tuple[Ratio, ...]:
    """Reduced ratios p:d with 1 <= p, d <= max_term, simplest first."""
    pairs = {
        PdRatio(p, d)
        for p in range(1, max_term + 1)
        for d in range(1, max_term + 1)
        if math.gcd(p, d) == 1
    }
    return tuple(sorted(pairs, key=lambda r: (r[0] + r[1], r)))


def nearest_ratio(value: float, max_term: int, low: Ratio, high: Ratio) -> Ratio:
    """The allowed ratio closest to ``value`` in log distance (the simpler one on a tie).

    Allowed: terms <= ``max_term`` and within [low, high]; when no such ratio exists (bounds
    narrower than the grid), the bounds themselves are the choices.
    """
    lo, hi = low[0] / low[1], high[0] / high[1]
    inside = [r for r in _candidates(max_term) if lo <= r[0] / r[1] <= hi] or [low, high]
    target = math.log(min(max(value, lo), hi))
    return min(inside, key=lambda r: abs(math.log(r[0] / r[1]) - target))


def step_ratio(
    spec: ServiceSpec,
    signals: Signals,
    state: PolicyState,
    now: float,
    carried: float | None = None,
) -> RatioStep:
    """This tick's P/D ratio for ``spec``: its configured one unless the dynamic ratio is on,
    or, with ``carried`` (the configured ratio carried to today's lengths, already averaged:
    policy/transport.py), that one snapped to the grid as the dynamic ratio snaps its own."""
    dyn = spec.policy.dynamic_ratio
    if not dyn.enabled and carried is None:
        return RatioStep(spec.ratio, None, None)
    low, high = dyn.bounds()
    active = state.active_ratio
    if active is None or not low <= active[0] / active[1] <= high:
        active = spec.ratio  # first tick, or bounds changed by a config update
    if not dyn.enabled:
        why = "the configured ratio carried to today's lengths is"
        return _snap(spec, active, carried, now, why)  # type: ignore[arg-type]
    if dyn.smoothing_s > 0 and (state.ratio_estimate is None or state.ratio_estimate_at is None):
        # The configured ratio (from an offline sweep) is the prior the average starts from,
        # so one early snapshot (e.g. prefill done, decode still catching up) cannot move it.
        return RatioStep(active, active[0] / active[1], now)
    keep = RatioStep(active, state.ratio_estimate, state.ratio_estimate_at)
    if snapshot_problem(signals, now, spec.policy.stale_after_s):
        return keep
    measured = measured_ratio(spec, signals)
    if measured is None:
        return keep
    at = sampled_at(state.ratio_estimate_at, state.last_decision_at, now, spec.policy.stale_after_s)
    estimate = smooth(state.ratio_estimate, at, measured, now, dyn.smoothing_s)
    why = f"the load's P/D need (smoothed over {dyn.smoothing_s:g} s) moved to"
    return _snap(spec, active, estimate, now, why)


def _snap(spec: ServiceSpec, active: Ratio, estimate: float, now: float, why: str) -> RatioStep:
    """The grid ratio nearest ``estimate`` within the bounds, if it is closer than ``active``
    by more than the change tolerance; else ``active``."""
    dyn = spec.policy.dynamic_ratio
    low, high = dyn.bounds()
    low_ratio, high_ratio = dyn.bound_ratios()
    keep = RatioStep(active, estimate, now)
    bounded = min(max(estimate, low), high)
    new = nearest_ratio(bounded, dyn.max_term, low_ratio, high_ratio)
    drift = abs(math.log(bounded * active[1] / active[0]))
    after = abs(math.log(bounded * new[1] / new[0]))
    # Move only when the new ratio is closer by more than the tolerance: an estimate sitting
    # between two grid ratios cannot flip between them.
    if new == active or after + math.log1p(dyn.change_tolerance) >= drift:
        return keep
    note = (
        f"{why} {estimate:.2f}, more than {dyn.change_tolerance:.0%} from "
        f"{ratio_text(active)}: ratio now {ratio_text(new)}"
    )
    return RatioStep(new, estimate, now, changed=True, note=note, was=active)


def _positive(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x > 0
