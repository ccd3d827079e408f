"""The HeteroScale control plane as Ray actors: thin shells around the pure core.

- `GpuNode` (gpu_node.py): one per GPU host, pinned to it; reports type, count, labels, health.
- `SubClusterScheduler` (sub_cluster.py): one per sub-cluster; reconciles Serve to its DGs.
- `FederatedPreScheduler` (pre_scheduler.py): topology view + placement via `control_cycle`.
- `PolicyEngine` (policy_engine.py): configs, metrics -> decisions every period, decision log.
- `control_plane.py`: start / status / stop from a driver; `commands.py`: the CLI commands.

All control-plane actors are detached and named in namespace ``heteroscale``, restart on
failure and restore their state from Ray's GCS key-value store (checkpoint.py).
"""
