"""Seeded-free fleet layouts for replays: big-pods whose mini-pods carry the GPU types a service
set prefers, so every Deployment Group of a heterogeneous service finds both its types in one S2.

`synthetic_topology` (config) draws random pod shapes for placement benchmarks; a replay needs
a fleet that can actually host the services, hence this deterministic layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from heteroscale_ray.config import (
    AffinityLevel,
    BigPodSpec,
    HostSpec,
    LeafSpec,
    MiniPodSpec,
    ServiceSpec,
    TopologySpec,
)

MINI_PODS = 4  # mini-pods per big-pod when one service's counts set the split
GPUS_PER_HOST, HOSTS_PER_LEAF, LEAVES_PER_MINI_POD = 8, 4, 2  # fleet_topology's defaults
MINI_POD_GPUS = GPUS_PER_HOST * HOSTS_PER_LEAF * LEAVES_PER_MINI_POD
# A replay's own fleet holds this x the static fleet: room for the policies that ask for more
# (a fleet capped at the static size hides an autoscaler's overshoot, and its queues).
FLEET_FACTOR = 2.5


def s1_pattern(services: Sequence[ServiceSpec], counts: tuple[int, int] | None = None) -> list[str]:
    """GPU type of each mini-pod in a big-pod: 3 of the prefill type per 1 of the decode type.

    P/D-disaggregated services spend most GPUs on prefill at the paper's typical ratios, hence
    3:1. With one service's `counts` (prefill, decode instances, e.g. a static fleet for its
    trace), its big-pods take the split nearest those counts' GPUs instead (3:1, 2:2 or 1:3):
    at 3:1 a 1,024-GPU fleet holds 64 H20x4 decode instances, fewer than reasoning traffic
    (outputs of thousands of tokens) asks for while 768 H800s idle. Homogeneous services
    (one type for both roles) get that type everywhere.
    """
    if counts is not None and len(services) == 1:
        spec = services[0]
        p, d = spec.prefill.gpu_types[0], spec.decode.gpu_types[0]
        pg = counts[0] * spec.prefill.gpus_per_instance
        dg = counts[1] * spec.decode.gpus_per_instance
        if p != d and pg + dg > 0:
            n_d = min(MINI_PODS - 1, max(1, round(MINI_PODS * dg / (pg + dg))))
            return [p] * (MINI_PODS - n_d) + [d] * n_d
    pattern: list[str] = []
    for spec in services:
        p, d = spec.prefill.gpu_types[0], spec.decode.gpu_types[0]
        for t in [p, p, p, d] if p != d else [p]:
            pattern.append(t)
    return pattern or ["H20"]


def gpus_to_hold(
    spec: ServiceSpec,
    counts: tuple[int, int],
    factor: float = 1.0,
    split_by_counts: bool = False,
) -> int:
    """GPUs of a `fleet_for([spec], n)` (with `counts` when `split_by_counts`) that holds
    `factor` x the instances `counts` of each GPU type; whole big-pods. The layout fixes each
    type's share of a big-pod, so a service heavy in one type needs a larger fleet than its GPU
    total suggests."""
    pattern = s1_pattern([spec], counts if split_by_counts else None)
    need: dict[str, float] = {}
    for role, n in zip((spec.prefill, spec.decode), counts, strict=True):
        need[role.gpu_types[0]] = need.get(role.gpu_types[0], 0.0) + n * role.gpus_per_instance
    total = max(
        sum(need.values()),
        *(v * len(pattern) / max(1, pattern.count(t)) for t, v in need.items()),
    )
    per_s2 = MINI_POD_GPUS * len(pattern)
    return int(math.ceil(factor * total / per_s2) * per_s2)


def replay_fleet_for(spec: ServiceSpec, counts: tuple[int, int], least: int) -> TopologySpec:
    """The fleet `heteroscale replay` builds without `--gpus`: at least `least` GPUs, or room for
    FLEET_FACTOR x the static fleet `counts` if that is more, split as `counts` need."""
    room = gpus_to_hold(spec, counts, FLEET_FACTOR, split_by_counts=True)
    return fleet_for([spec], max(least, room), counts)


def fleet_topology(
    gpus: int,
    s1_types: Sequence[str],
    *,
    gpus_per_host: int = GPUS_PER_HOST,
    hosts_per_leaf: int = HOSTS_PER_LEAF,
    leaves_per_mini_pod: int = LEAVES_PER_MINI_POD,
    mixed_mini_pods: bool = False,
) -> TopologySpec:
    """About `gpus` GPUs: big-pods of len(s1_types) mini-pods, mini-pod i of type s1_types[i].
    `mixed_mini_pods`: every mini-pod holds the types instead, leaf k of type s1_types[k] (the
    same share per type; as many GPUs per mini-pod when len(s1_types) divides its hosts), for
    services whose DGs must fit in one S1."""
    if mixed_mini_pods:
        per_leaf = max(1, hosts_per_leaf * leaves_per_mini_pod // len(s1_types))
        shape = [list(s1_types) for _ in s1_types]  # mini-pod j: leaf k of type s1_types[k]
    else:
        per_leaf = hosts_per_leaf
        shape = [[gpu] * leaves_per_mini_pod for gpu in s1_types]
    per_s2 = gpus_per_host * per_leaf * sum(len(leaves) for leaves in shape)
    n_s2 = max(1, math.ceil(gpus / per_s2))
    big_pods = []
    h = 0
    for i in range(n_s2):
        minis = []
        for j, leaf_types in enumerate(shape):
            leaves = []
            for k, gpu in enumerate(leaf_types):
                hosts = []
                for _ in range(per_leaf):
                    hosts.append(HostSpec(name=f"h{h}", gpu_type=gpu, gpus=gpus_per_host))
                    h += 1
                leaves.append(LeafSpec(name=f"s0-{i}-{j}-{k}", hosts=hosts))
            minis.append(MiniPodSpec(name=f"s1-{i}-{j}", leaves=leaves))
        big_pods.append(BigPodSpec(name=f"s2-{i}", mini_pods=minis))
    return TopologySpec(big_pods=big_pods)


def fleet_for(
    services: Sequence[ServiceSpec], gpus: int, counts: tuple[int, int] | None = None
) -> TopologySpec:
    """About `gpus` GPUs laid out for `services` (split by one service's `counts`, if given:
    `s1_pattern`). A service whose DGs must fit in one S1 and whose roles run on different
    GPU types gets mini-pods that hold both (one type per mini-pod placed none of its DGs)."""
    mixed = any(
        s.affinity is AffinityLevel.S1 and s.prefill.gpu_types[0] != s.decode.gpu_types[0]
        for s in services
    )
    return fleet_topology(gpus, s1_pattern(services, counts), mixed_mini_pods=mixed)
