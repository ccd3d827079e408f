"""Shared fixtures-as-data for the simulator tests: one small service on a 64-GPU L20/H20 fleet."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from heteroscale_ray.config import DEFAULT_CATALOG, ServicesConfig, parse_model
from heteroscale_ray.sim.cluster import ClusterSim, SimConfig, Workload
from heteroscale_ray.sim.fleet import fleet_topology
from heteroscale_ray.topology import ClusterGraph

SERVICES = parse_model(
    ServicesConfig,
    {
        "services": [
            {
                "name": "svc",
                "model": "dense-8b",
                "slo": {"ttft_s": 1.0, "tbt_s": 0.04},
                "pd_ratio": "1:1",
                "prefill": {"gpu_types": ["L20"]},
                "decode": {"gpu_types": ["H20"]},
                "policy": {"target_per_instance": 1000},
            }
        ]
    },
)
GRAPH = ClusterGraph.from_topology(fleet_topology(64, ["L20", "H20"], hosts_per_leaf=2))

L20_HOSTS = [h.name for h in GRAPH.hosts if h.gpu_type == "L20"]
H20_HOSTS = [h.name for h in GRAPH.hosts if h.gpu_type == "H20"]


def small_sim(
    arrivals: Sequence[float] | np.ndarray,
    inputs: Sequence[int] | np.ndarray,
    outputs: Sequence[int] | np.ndarray,
    *,
    hash_ids: tuple[tuple[int, ...], ...] | None = None,
    **config: Any,
) -> ClusterSim:
    """A simulator of the one service `svc` on GRAPH over these requests (no instances yet);
    `config`: `SimConfig` fields."""
    w = Workload(
        arrival=np.asarray(arrivals, dtype=float),
        input_tokens=np.asarray(inputs, dtype=np.int64),
        output_tokens=np.asarray(outputs, dtype=np.int64),
        service=np.zeros(len(arrivals), dtype=np.int64),
        hash_ids=hash_ids,
    )
    return ClusterSim(
        SERVICES.services, GRAPH, w, catalog=DEFAULT_CATALOG, config=SimConfig(**config)
    )
