"""Instance counts as the policy sees them: each DG's target split into ready and starting."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from heteroscale_ray.config import Role
from heteroscale_ray.policy.types import RoleCounts
from heteroscale_ray.topology import DeploymentGroup


class RunningReplicas(NamedTuple):
    """Replicas of one DG the substrate reports running (serving traffic), per role."""

    prefill: int = 0
    decode: int = 0

    def of(self, role: Role) -> int:
        return self.prefill if role is Role.PREFILL else self.decode


def ready_and_starting(
    dgs: Iterable[DeploymentGroup], running: Mapping[str, RunningReplicas]
) -> dict[str, RoleCounts]:
    """Per service: target instances split into ready (running, up to the target) and starting.

    ``running`` is keyed by DG id; a DG the substrate does not report has nothing running yet.
    Replicas beyond the target (pending soft removals) are not counted: they leave soon.
    """
    out: dict[str, list[int]] = {}
    for dg in dgs:
        have = running.get(dg.dg_id, RunningReplicas())
        c = out.setdefault(dg.service, [0, 0, 0, 0])
        for k, role in ((0, Role.PREFILL), (2, Role.DECODE)):
            want = dg.count(role)
            ready = min(want, have.of(role))
            c[k] += ready
            c[k + 1] += want - ready
    return {s: RoleCounts(*c) for s, c in out.items()}
