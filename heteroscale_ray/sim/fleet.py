"""Seeded-free fleet layouts for replays: big-pods whose mini-pods carry the GPU types a service
set prefers, so every Deployment Group of a heterogeneous service finds both its types in one S2.

`synthetic_topology` (config) draws random pod shapes for placement benchmarks; a replay needs
a fleet that can actually host the services, hence this deterministic layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from heteroscale_ray.config import (
    BigPodSpec,
    HostSpec,
    LeafSpec,
    MiniPodSpec,
    ServiceSpec,
    TopologySpec,
)


def s1_pattern(services: Sequence[ServiceSpec]) -> list[str]:
    """GPU type of each mini-pod in a big-pod: 3 of the prefill type per 1 of the decode type.

    P/D-disaggregated services spend most GPUs on prefill at the paper's typical ratios, hence
    3:1. Homogeneous services (one type for both roles) get that type everywhere.
    """
    pattern: list[str] = []
    for spec in services:
        p, d = spec.prefill.gpu_types[0], spec.decode.gpu_types[0]
        for t in [p, p, p, d] if p != d else [p]:
            pattern.append(t)
    return pattern or ["H20"]


def fleet_topology(
    gpus: int,
    s1_types: Sequence[str],
    *,
    gpus_per_host: int = 8,
    hosts_per_leaf: int = 4,
    leaves_per_mini_pod: int = 2,
) -> TopologySpec:
    """About `gpus` GPUs: big-pods of len(s1_types) mini-pods, mini-pod i of type s1_types[i]."""
    per_s1 = gpus_per_host * hosts_per_leaf * leaves_per_mini_pod
    per_s2 = per_s1 * len(s1_types)
    n_s2 = max(1, math.ceil(gpus / per_s2))
    big_pods = []
    h = 0
    for i in range(n_s2):
        minis = []
        for j, gpu in enumerate(s1_types):
            leaves = []
            for k in range(leaves_per_mini_pod):
                hosts = []
                for _ in range(hosts_per_leaf):
                    hosts.append(HostSpec(name=f"h{h}", gpu_type=gpu, gpus=gpus_per_host))
                    h += 1
                leaves.append(LeafSpec(name=f"s0-{i}-{j}-{k}", hosts=hosts))
            minis.append(MiniPodSpec(name=f"s1-{i}-{j}", leaves=leaves))
        big_pods.append(BigPodSpec(name=f"s2-{i}", mini_pods=minis))
    return TopologySpec(big_pods=big_pods)


def fleet_for(services: Sequence[ServiceSpec], gpus: int) -> TopologySpec:
    return fleet_topology(gpus, s1_pattern(services))
