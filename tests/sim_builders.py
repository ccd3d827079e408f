"""Shared fixtures-as-data for the simulator tests: one small service on a 64-GPU L20/H20 fleet."""

from __future__ import annotations

from heteroscale_ray.config import ServicesConfig, parse_model
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
