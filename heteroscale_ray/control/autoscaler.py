"""The `Autoscaler` protocol and HeteroScale's implementation of it (a thin shell on policy.decide).

Every autoscaler, HeteroScale or baseline, has the same shape so the simulator and the Ray
policy engine can swap them: `(now, observations per service) -> desired counts per service`.
State lives in the autoscaler object and is only ever changed by `desire`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from heteroscale_ray.config import DEFAULT_CATALOG, GpuCatalog, ServiceSpec
from heteroscale_ray.control.types import Desired, Observation
from heteroscale_ray.policy import PolicyState, decide


class Autoscaler(Protocol):
    """Desired (prefill, decode) totals per service; services without an observation are skipped."""

    name: str

    def desire(self, now: float, observations: Mapping[str, Observation]) -> dict[str, Desired]: ...


class HeteroScaleAutoscaler:
    """The paper's policy: coordinated P/D proportional control plus the latency guard.

    Keeps one `PolicyState` per service so cooldowns and guard timing carry across periods.
    """

    name = "heteroscale"

    def __init__(
        self, services: Iterable[ServiceSpec], catalog: GpuCatalog = DEFAULT_CATALOG
    ) -> None:
        self.specs = {s.name: s for s in services}
        self.catalog = catalog
        self.states: dict[str, PolicyState] = {name: PolicyState() for name in self.specs}

    def desire(self, now: float, observations: Mapping[str, Observation]) -> dict[str, Desired]:
        out: dict[str, Desired] = {}
        for name, obs in observations.items():
            spec = self.specs[name]
            decision, self.states[name] = decide(
                spec, obs.signals, obs.counts, self.states[name], now, self.catalog
            )
            out[name] = Desired(
                service=name,
                prefill=decision.prefill,
                decode=decision.decode,
                reason=decision.reason,
                message=decision.message,
                pd_ratio=decision.pd_ratio,
            )
        return out
