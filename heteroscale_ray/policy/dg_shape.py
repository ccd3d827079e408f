"""The shapes Deployment Groups take, and the counts they can hold.

Every DG holds both roles (a request prefills and decodes in one DG), in a shape of small terms
(placement grows DGs in whole units of the ratio). So counts far from 1:1 are placeable only if
the smaller role has an instance for every `PLACEMENT_MAX_N` of the larger: a policy that asks
for 2 prefill and 58 decode gets two 1:16 DGs, 32 decode, whatever the fleet's free GPUs. The
demand policy, static and the oracle all size through `placeable_counts`.
"""

from __future__ import annotations

import math

from heteroscale_ray.config import PdRatio, ServiceSpec
from heteroscale_ray.policy.dynamic_ratio import nearest_ratio

PLACEMENT_MAX_TERM = 8  # DG shapes like 3:5, never 13:21
PLACEMENT_BOUNDS = (PdRatio(1, 8), PdRatio(8, 1))
# Past 8:1 (1:8), DGs grow in units of n:1 (1:n), n <= 16: a unit of 17 instances, where the
# grid's largest holds 9. A unit no domain has room for is placed in halves (placement_cycle).
PLACEMENT_MAX_N = 16


def placement_ratio(prefill: float, decode: float) -> PdRatio:
    """The shape new DGs take for counts `prefill`:`decode`, for this policy and for static and
    oracle alike: the nearest ratio with both terms <= `PLACEMENT_MAX_TERM` within 1:8..8:1,
    else n:1 or 1:n, n <= `PLACEMENT_MAX_N`.

    Placement grows DGs in whole units of the ratio and puts the remainder one instance at a
    time into existing DGs, and routing spreads requests by prefill, so a DG's decode carries
    its prefill's share and the ratio must be close to the counts. A 1 on the smaller side (43
    decode per 30 prefill read as 1:1) left 13 decode instances in a DG with one prefill that
    fed them almost nothing while the other DGs' decode ran at 3x the sized batch; clamped to
    8:1, Mooncake's 237 prefill and 21 decode filled three DGs at 48:6 and left 93 prefill with
    3 decode for the last two, whose decode then held 2,300 waiting sequences each."""
    p, d = max(prefill, 1.0), max(decode, 1.0)
    if p / d > PLACEMENT_BOUNDS[1].value:
        return PdRatio(min(round(p / d), PLACEMENT_MAX_N), 1)
    if d / p > 1 / PLACEMENT_BOUNDS[0].value:
        return PdRatio(1, min(round(d / p), PLACEMENT_MAX_N))
    return PdRatio(*nearest_ratio(p / d, PLACEMENT_MAX_TERM, *PLACEMENT_BOUNDS))


def placeable_counts(prefill: int, decode: int) -> tuple[int, int]:
    """The counts with the smaller role raised to one instance per `PLACEMENT_MAX_N` of the
    larger: the fewest DGs that hold them all. Reasoning traffic (outputs of thousands of
    tokens) needs ~30 decode instances per prefill; asked at that ratio, all but 16 per
    prefill instance went unplaced and attainment fell to 46% while GPUs stood free."""
    p, d = max(prefill, 0), max(decode, 0)
    if p and d:
        p = max(p, math.ceil(d / PLACEMENT_MAX_N))
        d = max(d, math.ceil(p / PLACEMENT_MAX_N))
    return p, d


def placeable_within(spec: ServiceSpec, prefill: int, decode: int) -> tuple[int, int]:
    """`placeable_counts`, each role then held within the service's max."""
    p, d = placeable_counts(prefill, decode)
    return min(p, spec.prefill.max_instances), min(d, spec.decode.max_instances)
