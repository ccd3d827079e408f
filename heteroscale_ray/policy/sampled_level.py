"""The level the scale-in window remembers: a role's need measured to within the scale-in
tolerance, not one period's sample of it.

A need read from one control period is a sample: its arrivals are Poisson, and the lengths
they bring (a finished request's output, an arriving prompt) vary more. From n arrivals its
relative noise is at least 1/sqrt(n). The scale-in window holds a role at its highest need of
the last `peak_window_s`, and the falls memory takes any fall past the scale-in tolerance
that comes back for traffic that returns (policy/falls.py). On noisy needs both read the
noise: at 6 requests a second (90 a 15-s period, about 13% noise with reasoning's outputs),
a flat load was held at the top of its last 60 samples, a quarter above its mean (made-up
day-reasoning's decode: 17-18 instances where the load asked 13-14 and the oracle held 15).

So where a role's need is read from arrivals (`role_need.Need.sampled`: prefill's prompt
tokens/s, decode's arriving output tokens/s; not a count of running sequences), the window
and the falls memory take the mean of its last needs that hold at least
(2 / scale_in_tolerance)^2 arrivals (400 at a 10% tolerance): the sampling noise is then
at most half the tolerance, and a fall the window acts on is two standard errors past it.
At most one start-up horizon is averaged: a level that lasts a horizon is one capacity can
be started for. A period with that many arrivals of its own is taken as it is (65 requests
a second on the ServeGen day: every need raw, as before).

The decision sizes for this period's need, less what its noise may have added: a sample
above the level counts as far as it is two standard errors over it. Sized on the raw sample
while the window held only the level, a thin flat load scaled out on each high sample and in
again (day-reasoning's decode 7.6 direction changes an hour); a real rise of a few standard
errors still scales out at once, less its noise, and a queue or the latency guard's breach
acts as before. Pure: time comes in as `now`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from heteroscale_ray.config import ServiceSpec
from heteroscale_ray.policy.types import BurstMemory


def min_arrivals(spec: ServiceSpec) -> float:
    """Arrivals a level is measured over: its 1/sqrt(n) noise is then half the scale-in
    tolerance."""
    return (2.0 / spec.policy.scale_in_tolerance) ** 2


@dataclass(frozen=True)
class Sampled:
    """A need read from `arrivals` arrivals: `level`, its mean over at least `min_arrivals`
    of them (at most a horizon); `proven`, what this period's sample alone says the load is
    at least (itself less two standard errors, never under the level, never over itself)."""

    level: float
    proven: float
    arrivals: float


def sampled_level(
    spec: ServiceSpec,
    memory: BurstMemory,
    need: float | None,
    now: float,
    horizon_s: float,
    request_rate: float | None,
) -> Sampled | None:
    """`need` as a sample of this period's arrivals at `request_rate`, over the role's last
    needs (the burst memory's, this period's last) within `horizon_s`. None when `need` is,
    when the rate is not known, or when the memory did not take this period's need (it keeps
    none while burst headroom is off): the need is then taken as it is."""
    needs = memory.needs
    if need is None or len(needs) < 2 or needs[-1][0] != now or horizon_s <= 0:
        return None
    if request_rate is None or not math.isfinite(request_rate) or request_rate <= 0:
        return None
    period = needs[-1][0] - needs[-2][0]
    if period <= 0:
        return None
    arrivals = request_rate * period
    periods = math.ceil(min_arrivals(spec) / arrivals)
    recent = [n for t, n in needs[-periods:] if now - t < horizon_s]
    level = sum(recent) / len(recent)
    proven = min(need, max(level, need * (1.0 - 2.0 / math.sqrt(arrivals))))
    return Sampled(level, proven, arrivals)
