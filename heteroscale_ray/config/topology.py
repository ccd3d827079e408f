"""Topology specs: big-pods (S2) > mini-pods (S1) > leaf switches (S0) > hosts.

Three ways in, one model out: YAML (operators), Ray node labels (a live cluster),
and a seeded synthetic generator (benchmarks at 100k GPUs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

LABEL_GPU_TYPE = "heteroscale.io/gpu-type"
LABEL_S0 = "heteroscale.io/s0"
LABEL_S1 = "heteroscale.io/s1"
LABEL_S2 = "heteroscale.io/s2"
SWITCH_LABELS = (LABEL_S0, LABEL_S1, LABEL_S2)


class HostSpec(BaseModel):
    """A GPU host; ``node_id`` links it to its Ray node when there is one."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(description="Unique host name.")
    gpu_type: str = Field(description="GPU catalog name, e.g. 'H20'.")
    gpus: int = Field(gt=0, description="Number of GPUs on the host.")
    node_id: str | None = Field(default=None, description="Ray node id, when discovered from Ray.")


class LeafSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(description="Unique S0 (leaf switch) name.")
    hosts: list[HostSpec] = Field(min_length=1, description="Hosts under this leaf switch.")


class MiniPodSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(description="Unique S1 (mini-pod) name.")
    leaves: list[LeafSpec] = Field(min_length=1, description="S0 switches under this mini-pod.")


class BigPodSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(description="Unique S2 (big-pod) name.")
    mini_pods: list[MiniPodSpec] = Field(
        min_length=1, description="S1 mini-pods under this big-pod."
    )


class TopologySpec(BaseModel):
    """The switch tree. Sub-clusters default to one per big-pod (S2 domain)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    big_pods: list[BigPodSpec] = Field(min_length=1, description="S2 big-pods.")
    sub_clusters: dict[str, list[str]] | None = Field(
        default=None,
        description="Optional grouping of big-pods into sub-clusters (name -> big-pod names); "
        "by default every big-pod is its own sub-cluster.",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> TopologySpec:
        seen: dict[str, str] = {}
        for s2 in self.big_pods:
            for kind, name in [("big-pod", s2.name)] + [
                item for s1 in s2.mini_pods for item in _names_below(s1)
            ]:
                key = f"{kind}:{name}"
                if key in seen:
                    raise ValueError(
                        f"duplicate {kind} name {name!r}: give every {kind} a unique name"
                    )
                seen[key] = name
        if self.sub_clusters is not None:
            known = {s2.name for s2 in self.big_pods}
            assigned: list[str] = [b for members in self.sub_clusters.values() for b in members]
            unknown = sorted(set(assigned) - known)
            if unknown:
                raise ValueError(
                    f"sub_clusters name unknown big-pods {unknown}: use names from big_pods"
                )
            missing = sorted(known - set(assigned))
            if missing or len(assigned) != len(set(assigned)):
                raise ValueError(
                    f"sub_clusters must assign every big-pod exactly once (unassigned: {missing})"
                )
        return self

    def hosts(self) -> Iterable[tuple[str, str, str, HostSpec]]:
        """Yield (s2, s1, s0, host) for every host."""
        for s2 in self.big_pods:
            for s1 in s2.mini_pods:
                for s0 in s1.leaves:
                    for host in s0.hosts:
                        yield s2.name, s1.name, s0.name, host

    def total_gpus(self) -> int:
        return sum(h.gpus for *_, h in self.hosts())

    def gpu_types(self) -> set[str]:
        return {h.gpu_type for *_, h in self.hosts()}

    def gpus_by_type(self) -> dict[str, int]:
        """GPUs per GPU type, in the order the types first appear."""
        out: dict[str, int] = {}
        for *_, h in self.hosts():
            out[h.gpu_type] = out.get(h.gpu_type, 0) + h.gpus
        return out

    def sub_cluster_of(self) -> dict[str, str]:
        """Big-pod name -> sub-cluster name."""
        if self.sub_clusters is None:
            return {s2.name: s2.name for s2 in self.big_pods}
        return {b: sc for sc, members in self.sub_clusters.items() for b in members}


def _names_below(s1: MiniPodSpec) -> list[tuple[str, str]]:
    out = [("mini-pod", s1.name)]
    for s0 in s1.leaves:
        out.append(("leaf", s0.name))
        out.extend(("host", h.name) for h in s0.hosts)
    return out


def topology_from_ray_nodes(
    nodes: Iterable[Mapping[str, Any]], skipped: list[str] | None = None
) -> TopologySpec:
    """Build the switch tree from ``ray.nodes()`` entries carrying ``heteroscale.io/*`` labels.

    Nodes without GPUs or without a GPU-type label (the head node, CPU workers) are skipped;
    a GPU node missing a switch label, or naming a host another node already named, is an
    error naming the node and the fix. Given `skipped`, such a node is left out and its error
    appended there instead: a running control plane plans on the other nodes.
    """
    tree: dict[str, dict[str, dict[str, list[HostSpec]]]] = {}
    names: set[str] = set()
    for node in nodes:
        if not node.get("Alive", True):
            continue
        labels = node.get("Labels") or {}
        gpus = int((node.get("Resources") or {}).get("GPU", 0))
        if gpus <= 0 or LABEL_GPU_TYPE not in labels:
            continue
        node_id = str(node.get("NodeID", ""))
        missing = [lbl for lbl in SWITCH_LABELS if not labels.get(lbl)]
        name = str(labels.get("heteroscale.io/host") or node_id)
        problem = None
        if missing:
            problem = (
                f"Ray node {node_id[:12]} has {LABEL_GPU_TYPE}={labels[LABEL_GPU_TYPE]} but no "
                f"{', '.join(missing)}: start it with `ray start --labels` setting those switch labels"
            )
        elif name in names:
            problem = (
                f"Ray node {node_id[:12]} names host {name!r}, as another node does: give each "
                "node its own heteroscale.io/host label"
            )
        if problem is not None:
            if skipped is None:
                raise ValueError(problem)
            skipped.append(problem)
            continue
        names.add(name)
        host = HostSpec(
            name=name,
            gpu_type=labels[LABEL_GPU_TYPE],
            gpus=gpus,
            node_id=node_id,
        )
        tree.setdefault(labels[LABEL_S2], {}).setdefault(labels[LABEL_S1], {}).setdefault(
            labels[LABEL_S0], []
        ).append(host)
    if not tree:
        if skipped:  # every GPU node was left out: say why, not that none is labelled
            raise ValueError("; ".join(skipped))
        raise ValueError(
            f"no Ray node carries GPUs and the {LABEL_GPU_TYPE} label: label the GPU nodes "
            "(see cluster.yaml) or pass --topology"
        )
    return TopologySpec(
        big_pods=[
            BigPodSpec(
                name=s2,
                mini_pods=[
                    MiniPodSpec(
                        name=s1,
                        leaves=[
                            LeafSpec(name=s0, hosts=sorted(hs, key=lambda h: h.name))
                            for s0, hs in sorted(leaves.items())
                        ],
                    )
                    for s1, leaves in sorted(s1s.items())
                ],
            )
            for s2, s1s in sorted(tree.items())
        ]
    )


def synthetic_topology(
    gpus: int,
    seed: int = 0,
    *,
    gpus_per_host: int = 8,
    hosts_per_leaf: int = 4,
    leaves_per_mini_pod: int = 8,
    mini_pods_per_big_pod: int = 4,
    gpu_types: tuple[str, ...] = ("H20", "L20", "H800", "A100"),
) -> TopologySpec:
    """A seeded fleet of about ``gpus`` GPUs with the three RDMA-subgroup shapes.

    Fan-out defaults (8 GPUs/host, 4 hosts/leaf, 8 leaves/S1, 4 S1/S2 = 1,024 GPUs per S2)
    follow common fat-tree pods. Big-pods are drawn as: 60% one GPU type (low-priority
    subgroup), 30% one type per mini-pod (medium), 10% mixing types inside mini-pods (high).
    """
    if gpus < gpus_per_host:
        raise ValueError(f"gpus={gpus} is below one host ({gpus_per_host} GPUs)")
    rng = np.random.default_rng(seed)
    n_hosts = gpus // gpus_per_host
    big_pods: list[BigPodSpec] = []
    host_i = 0
    s2_i = 0
    while host_i < n_hosts:
        shape = rng.choice(3, p=[0.6, 0.3, 0.1])
        pod_type = gpu_types[int(rng.integers(len(gpu_types)))]
        mini_pods: list[MiniPodSpec] = []
        for s1_j in range(mini_pods_per_big_pod):
            if host_i >= n_hosts:
                break
            s1_type = pod_type if shape == 0 else gpu_types[int(rng.integers(len(gpu_types)))]
            leaves: list[LeafSpec] = []
            for s0_k in range(leaves_per_mini_pod):
                if host_i >= n_hosts:
                    break
                leaf_type = s1_type if shape != 2 else gpu_types[(s0_k + s1_j) % len(gpu_types)]
                hosts = []
                for _ in range(hosts_per_leaf):
                    if host_i >= n_hosts:
                        break
                    hosts.append(
                        HostSpec(name=f"h{host_i}", gpu_type=leaf_type, gpus=gpus_per_host)
                    )
                    host_i += 1
                leaves.append(LeafSpec(name=f"s0-{s2_i}-{s1_j}-{s0_k}", hosts=hosts))
            mini_pods.append(MiniPodSpec(name=f"s1-{s2_i}-{s1_j}", leaves=leaves))
        big_pods.append(BigPodSpec(name=f"s2-{s2_i}", mini_pods=mini_pods))
        s2_i += 1
    return TopologySpec(big_pods=big_pods)
