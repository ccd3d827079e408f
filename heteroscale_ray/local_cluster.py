"""An embedded multi-node Ray cluster on one machine, one fake-GPU node per topology host.

Used by `heteroscale demo` and by the tests: every host of a TopologySpec becomes a Ray
node with ``num_gpus`` fake GPUs and the ``heteroscale.io/*`` switch labels, exactly what
`ray start --labels` would set on a real cluster (see cluster.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from heteroscale_ray.config.topology import (
    LABEL_GPU_TYPE,
    LABEL_S0,
    LABEL_S1,
    LABEL_S2,
    TopologySpec,
)

LABEL_HOST = "heteroscale.io/host"


def node_labels(s2: str, s1: str, s0: str, host: str, gpu_type: str) -> dict[str, str]:
    return {
        LABEL_GPU_TYPE: gpu_type,
        LABEL_S0: s0,
        LABEL_S1: s1,
        LABEL_S2: s2,
        LABEL_HOST: host,
    }


@dataclass(frozen=True)
class HostPlacement:
    """Where a fake-GPU host sits in the switch tree, and what it carries."""

    s2: str
    s1: str
    s0: str
    host: str
    gpu_type: str
    gpus: int


@dataclass
class LocalCluster:
    """A running ``ray.cluster_utils.Cluster`` plus the topology it emulates.

    Hosts can leave and come back (`remove_host`, `restore_host`) and new ones can join
    (`add_host`), as a real node failure, repair or scale-up would: a removed host's Ray node
    dies with everything on it; a restored one is a new Ray node with the same labels.
    """

    cluster: Any
    topology: TopologySpec
    cpus_per_host: int = 4
    object_store_mb: int = 150
    nodes: dict[str, Any] = field(default_factory=dict)  # host -> live Ray node handle
    placements: dict[str, HostPlacement] = field(default_factory=dict)  # every host added

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_host(self, where: HostPlacement, *, wait: bool = True) -> str:
        """Start a labelled fake-GPU node for ``where``; returns its Ray node id."""
        if where.host in self.nodes:
            raise ValueError(f"host {where.host!r} is already up: remove it first")
        node = self.cluster.add_node(
            wait=wait,
            num_cpus=self.cpus_per_host,
            num_gpus=where.gpus,
            object_store_memory=self.object_store_mb * 1024 * 1024,
            labels=node_labels(where.s2, where.s1, where.s0, where.host, where.gpu_type),
        )
        self.nodes[where.host] = node
        self.placements[where.host] = where
        return node.node_id

    def remove_host(self, host: str) -> str:
        """Kill a host's Ray node (its raylet and every worker on it); returns the node id."""
        node = self.nodes.pop(host, None)
        if node is None:
            raise ValueError(f"host {host!r} is not up: up are {sorted(self.nodes)}")
        node_id = node.node_id
        self.cluster.remove_node(node)
        return node_id

    def host_of(self, node_id: str | None) -> str | None:
        """The host whose live Ray node is ``node_id``; None for the head or a node gone."""
        return next((h for h, n in self.nodes.items() if n.node_id == node_id), None)

    def restore_host(self, host: str) -> str:
        """Bring a removed host back with the same labels (a new Ray node); returns its id."""
        where = self.placements.get(host)
        if where is None:
            raise ValueError(f"host {host!r} was never added to this cluster")
        return self.add_host(where)

    def shutdown(self) -> None:
        import ray

        try:
            from ray import serve

            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            self.cluster.shutdown()


def start_local_cluster(
    topology: TopologySpec,
    *,
    head_cpus: int = 4,
    cpus_per_host: int = 4,
    object_store_mb: int = 150,
    connect: bool = True,
    attempts: int = 2,
) -> LocalCluster:
    """Start a head node (no GPUs) and one labelled fake-GPU node per host.

    CPU counts are logical: replicas mostly sleep out emulated GPU time, so a 2-core machine
    can host many of them. Connects the driver (``ray.init``) unless ``connect=False``.
    """
    last_error: Exception | None = None
    for _attempt in range(attempts):
        try:
            cluster = _start(topology, head_cpus, cpus_per_host, object_store_mb, connect)
        except Exception as err:  # a head that fails to start on a loaded machine: retry once
            last_error = err
            continue
        return cluster
    raise RuntimeError(
        f"local Ray cluster failed to start after {attempts} attempts"
    ) from last_error


def _start(
    topology: TopologySpec, head_cpus: int, cpus_per_host: int, object_store_mb: int, connect: bool
) -> Any:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(shutdown_at_exit=True)
    try:
        cluster.add_node(
            num_cpus=head_cpus,
            num_gpus=0,
            object_store_memory=object_store_mb * 1024 * 1024,
            include_dashboard=False,
        )
        local = LocalCluster(cluster, topology, cpus_per_host, object_store_mb)
        for s2, s1, s0, host in topology.hosts():
            where = HostPlacement(s2, s1, s0, host.name, host.gpu_type, host.gpus)
            local.add_host(where)
        cluster.wait_for_nodes()
        if connect:
            ray.init(address=cluster.address, log_to_driver=False, include_dashboard=False)
    except BaseException:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        raise
    return local
