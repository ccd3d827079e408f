"""RDMA subgroups: how scarce a domain's well-connected heterogeneous capacity is.

The paper ranks capacity so that services which do not need heterogeneity nearby do not
eat the few places that offer it:

- LOW: an S2 big-pod with one GPU type everywhere (the common case);
- MEDIUM: an S2 with several GPU types, each S1 below it uniform (heterogeneous at S2 only);
- HIGH: an S1 mini-pod that mixes GPU types itself (heterogeneous at S1: the scarcest);
  its S2 is then HIGH-containing and classified HIGH too.

A uniform S1 is not a subgroup of its own; taking it uses up its S2's heterogeneity, so it
costs what its S2 costs, capped at MEDIUM (it is never the scarce mixed S1 itself).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum

from heteroscale_ray.config.topology import TopologySpec


class SubgroupClass(IntEnum):
    """Priority of a domain's capacity: higher values are scarcer and kept for those who need them."""

    LOW = 0
    MEDIUM = 1
    HIGH = 2


def classify_s2(s1_gpu_types: Iterable[Collection[str]]) -> SubgroupClass:
    """Class of a big-pod given the GPU-type set of each of its mini-pods."""
    all_types: set[str] = set()
    mixed_s1 = False
    for types in s1_gpu_types:
        all_types.update(types)
        mixed_s1 = mixed_s1 or len(types) > 1
    if mixed_s1:
        return SubgroupClass.HIGH
    return SubgroupClass.MEDIUM if len(all_types) > 1 else SubgroupClass.LOW


def classify_s1(gpu_types: Collection[str], s2_class: SubgroupClass) -> SubgroupClass:
    """Cost of taking capacity in a mini-pod: HIGH if it mixes types, else its S2's (at most MEDIUM)."""
    if len(gpu_types) > 1:
        return SubgroupClass.HIGH
    return min(s2_class, SubgroupClass.MEDIUM)


@dataclass(frozen=True)
class Subgroups:
    """Class of every big-pod (``s2``) and mini-pod (``s1``) of a topology, by name."""

    s2: Mapping[str, SubgroupClass]
    s1: Mapping[str, SubgroupClass]


def classify_topology(spec: TopologySpec) -> Subgroups:
    """Classify every S2 and S1 domain of ``spec``."""
    s2_classes: dict[str, SubgroupClass] = {}
    s1_classes: dict[str, SubgroupClass] = {}
    for s2 in spec.big_pods:
        s1_types = {
            s1.name: {host.gpu_type for leaf in s1.leaves for host in leaf.hosts}
            for s1 in s2.mini_pods
        }
        s2_class = classify_s2(s1_types.values())
        s2_classes[s2.name] = s2_class
        for name, types in s1_types.items():
            s1_classes[name] = classify_s1(types, s2_class)
    return Subgroups(s2=s2_classes, s1=s1_classes)
