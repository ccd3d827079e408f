"""Boundary types between a metric source and any autoscaler: observations in, desired counts out."""

from __future__ import annotations

from dataclasses import dataclass, field

from heteroscale_ray.config import PdRatio
from heteroscale_ray.policy.types import Reason, RoleCounts, Signals


@dataclass(frozen=True)
class PoolObservation:
    """One role's pool of one service over the last observation window.

    Baselines scale each pool independently on these; HeteroScale reads `Observation.signals`.
    """

    ready: int = 0
    starting: int = 0
    gpu_util: float | None = None  # mean busy share of ready instances, 0..1
    sm_activity: float | None = None  # achieved FLOP/s over peak of ready instances, 0..1
    ongoing_requests: float | None = None  # queued + running requests of the pool (mean)
    tps: float | None = None  # tokens/s of the pool (prefill: cache-miss tokens)


@dataclass(frozen=True)
class Observation:
    """Everything an autoscaler may look at for one service at one control period."""

    service: str
    signals: Signals
    prefill: PoolObservation = field(default_factory=PoolObservation)
    decode: PoolObservation = field(default_factory=PoolObservation)

    @property
    def counts(self) -> RoleCounts:
        return RoleCounts(
            prefill_ready=self.prefill.ready,
            prefill_starting=self.prefill.starting,
            decode_ready=self.decode.ready,
            decode_starting=self.decode.starting,
        )


@dataclass(frozen=True)
class Desired:
    """Target totals (ready + starting) per role for one service, with a reason and a sentence."""

    service: str
    prefill: int
    decode: int
    reason: Reason
    message: str = ""
    pd_ratio: PdRatio | None = None  # the ratio new DGs are formed at; None: the configured one
