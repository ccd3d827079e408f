"""Baseline autoscalers the paper compares against, written from their public rules.

- `HpaUtilAutoscaler`: Kubernetes HPA on GPU utilisation, each pool on its own
  (replica_calculator.go: desired = ceil(usage ratio * ready pods), tolerance band, and a
  scale-down stabilisation window that takes the max of recent recommendations).
- `ServeDefaultAutoscaler`: Ray Serve's default policy, each pool on its own
  (desired = ceil(ongoing requests / target per replica), applied only after the wish has
  held for upscale_delay_s / downscale_delay_s).
- `StaticAutoscaler`: fixed counts, e.g. provisioned for the peak.
- `ScheduledAutoscaler`: counts from a precomputed schedule; the simulator's oracle uses it.

None couples prefill to decode: that is exactly what the paper says classic autoscalers miss.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from heteroscale_ray.config import PdRatio, Role, ServiceSpec
from heteroscale_ray.control.types import Desired, Observation, PoolObservation
from heteroscale_ray.policy.types import Reason

_EPS = 1e-9


def _clamp(spec: ServiceSpec, role: Role, n: int) -> int:
    rs = spec.role(role)
    return max(rs.min_instances, min(rs.max_instances, n))


def hpa_recommendation(
    current: int, ready: int, util: float | None, target: float, tolerance: float
) -> int:
    """One HPA recommendation for one pool (before stabilisation and bounds), as
    replica_calculator.go computes it: usage ratio = mean utilisation of ready pods / target;
    inside the tolerance band it keeps the current count, else asks ratio x ready pods. On a
    scale-up with pods still starting, those count as 0% busy and the ratio is taken again;
    if that one is inside the band or points down, the count is kept (starting pods are not
    cancelled for looking idle). Without data it keeps the current count.
    """
    if util is None or not math.isfinite(util) or ready == 0:
        return current
    ratio = util / target
    if not (current > ready and ratio > 1.0):
        if abs(ratio - 1.0) <= tolerance:
            return current
        return max(0, math.ceil(ratio * ready - _EPS))
    with_starting = util * ready / current / target
    if abs(with_starting - 1.0) <= tolerance or with_starting < 1.0:
        return current
    return math.ceil(with_starting * current - _EPS)


class HpaUtilAutoscaler:
    """Kubernetes-HPA-style scaling on GPU utilisation, per pool, no P/D coordination."""

    name = "hpa-util"

    def __init__(
        self,
        services: Iterable[ServiceSpec],
        target: float = 0.6,
        tolerance: float = 0.1,
        stabilization_s: float = 300.0,
    ) -> None:
        self.specs = {s.name: s for s in services}
        self.target = target
        self.tolerance = tolerance
        self.stabilization_s = stabilization_s
        self._recs: dict[tuple[str, Role], deque[tuple[float, int]]] = {}

    def _pool(self, now: float, spec: ServiceSpec, role: Role, pool: PoolObservation) -> int:
        current = pool.ready + pool.starting
        rec = hpa_recommendation(current, pool.ready, pool.gpu_util, self.target, self.tolerance)
        recs = self._recs.setdefault((spec.name, role), deque())
        recs.append((now, rec))
        while recs and recs[0][0] < now - self.stabilization_s:
            recs.popleft()
        # HPA's stabilizeRecommendation: scale-up window 0 s, scale-down window = max of recent.
        down = max(r for _, r in recs)
        if rec > current:
            return _clamp(spec, role, rec)
        return _clamp(spec, role, min(current, down))

    def desire(self, now: float, observations: Mapping[str, Observation]) -> dict[str, Desired]:
        out = {}
        for name, obs in observations.items():
            spec = self.specs[name]
            p = self._pool(now, spec, Role.PREFILL, obs.prefill)
            d = self._pool(now, spec, Role.DECODE, obs.decode)
            out[name] = Desired(
                name,
                p,
                d,
                Reason.HPA,
                f"util prefill={_fmt(obs.prefill.gpu_util)} decode={_fmt(obs.decode.gpu_util)} "
                f"target={self.target:.2f}",
            )
        return out


@dataclass
class _Pending:
    direction: int = 0  # +1 wants up, -1 wants down, 0 content
    since: float = 0.0


class ServeDefaultAutoscaler:
    """Ray Serve's default rule: ongoing requests per replica toward a target, with delays."""

    name = "serve-default"

    def __init__(
        self,
        services: Iterable[ServiceSpec],
        target_ongoing_requests: float = 2.0,
        upscale_delay_s: float = 30.0,
        downscale_delay_s: float = 600.0,
    ) -> None:
        self.specs = {s.name: s for s in services}
        self.target = target_ongoing_requests
        self.upscale_delay_s = upscale_delay_s
        self.downscale_delay_s = downscale_delay_s
        self._pending: dict[tuple[str, Role], _Pending] = {}

    def recommendation(self, pool: PoolObservation) -> int | None:
        if pool.ongoing_requests is None or not math.isfinite(pool.ongoing_requests):
            return None
        return math.ceil(pool.ongoing_requests / self.target - _EPS)

    def _pool(self, now: float, spec: ServiceSpec, role: Role, pool: PoolObservation) -> int:
        current = pool.ready + pool.starting
        rec = self.recommendation(pool)
        state = self._pending.setdefault((spec.name, role), _Pending())
        if rec is None:
            state.direction = 0
            return _clamp(spec, role, current)
        rec = _clamp(spec, role, rec)
        if current == 0 and rec > 0:  # Serve scales from zero at once
            state.direction = 0
            return rec
        direction = (rec > current) - (rec < current)
        if direction != state.direction:
            state.direction, state.since = direction, now
        delay = self.upscale_delay_s if direction > 0 else self.downscale_delay_s
        if direction != 0 and now - state.since >= delay:
            state.direction, state.since = 0, now
            return rec
        return _clamp(spec, role, current)

    def desire(self, now: float, observations: Mapping[str, Observation]) -> dict[str, Desired]:
        out = {}
        for name, obs in observations.items():
            spec = self.specs[name]
            p = self._pool(now, spec, Role.PREFILL, obs.prefill)
            d = self._pool(now, spec, Role.DECODE, obs.decode)
            out[name] = Desired(
                name,
                p,
                d,
                Reason.SERVE,
                f"ongoing prefill={_fmt(obs.prefill.ongoing_requests)} "
                f"decode={_fmt(obs.decode.ongoing_requests)} target/replica={self.target:g}",
            )
        return out


class StaticAutoscaler:
    """Fixed counts per service (e.g. provisioned for the peak); never scales.

    `pd_ratios` (service -> ratio) is the ratio its Deployment Groups are placed at; None
    keeps each service's configured ratio. Counts far off that ratio would otherwise leave
    prefill-only or decode-only DGs, which can serve nothing.
    """

    name = "static"

    def __init__(
        self,
        counts: Mapping[str, tuple[int, int]],
        pd_ratios: Mapping[str, PdRatio] | None = None,
    ) -> None:
        self.counts = dict(counts)
        self.pd_ratios = dict(pd_ratios or {})

    def desire(self, now: float, observations: Mapping[str, Observation]) -> dict[str, Desired]:
        out = {}
        for name in observations:
            p, d = self.counts[name]
            out[name] = Desired(
                name, p, d, Reason.STATIC, "fixed provisioning", self.pd_ratios.get(name)
            )
        return out


class ScheduledAutoscaler:
    """Counts from a schedule `(service, now) -> (prefill, decode)`; used by the oracle.

    `pd_ratios` as for `StaticAutoscaler`: the ratio DGs are placed at (the schedule's own).
    """

    def __init__(
        self,
        schedule: Callable[[str, float], tuple[int, int]],
        name: str = "oracle",
        pd_ratios: Mapping[str, PdRatio] | None = None,
    ) -> None:
        self.schedule = schedule
        self.name = name
        self.pd_ratios = dict(pd_ratios or {})

    def desire(self, now: float, observations: Mapping[str, Observation]) -> dict[str, Desired]:
        out = {}
        for name in observations:
            p, d = self.schedule(name, now)
            out[name] = Desired(
                name,
                p,
                d,
                Reason.SCHEDULED,
                f"{self.name}: scheduled from future load",
                self.pd_ratios.get(name),
            )
        return out


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"
