"""GpuNode: one actor per GPU host, pinned to its Ray node, reporting what the host is.

It is how the sub-cluster layer "exposes node information upward": GPU type, count and
switch labels from the node's Ray labels, liveness (the actor answers), and GPU metrics from
NVML when pynvml and a real GPU are present. On fake-GPU nodes there is no NVML; the report
says so (``gpu_metrics: None`` with a reason) instead of inventing numbers.
"""

from __future__ import annotations

import time
from typing import Any

from heteroscale_ray.config.topology import LABEL_GPU_TYPE, LABEL_S0, LABEL_S1, LABEL_S2


def _nvml_metrics() -> tuple[list[dict[str, float]] | None, str]:
    """Per-GPU utilisation and memory from NVML, or None and why not."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None, "pynvml not installed"
    try:
        pynvml.nvmlInit()
    except Exception as e:  # no driver / no device
        return None, f"NVML unavailable: {e}"
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            util = pynvml.nvmlDeviceGetUtilizationRates(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            out.append(
                {
                    "index": float(i),
                    "gpu_util": util.gpu / 100.0,
                    "mem_used_fraction": mem.used / max(mem.total, 1),
                }
            )
        return out, "nvml"
    finally:
        pynvml.nvmlShutdown()


class GpuNode:
    """Actor body; create with `gpu_node_handle` so it lands on its own node."""

    def __init__(self, host: str) -> None:
        import ray

        ctx = ray.get_runtime_context()
        self.host = host
        self.node_id = ctx.get_node_id()
        labels = ctx.get_node_labels()
        self.labels = {k: (v[0] if isinstance(v, list) else str(v)) for k, v in labels.items()}
        gpus = 0
        for node in ray.nodes():
            if node["NodeID"] == self.node_id:
                gpus = int(node.get("Resources", {}).get("GPU", 0))
        self.gpus = gpus
        self.started = time.time()

    def report(self) -> dict[str, Any]:
        """Host facts for the topology view; cheap enough to call every control period."""
        metrics, source = _nvml_metrics()
        return {
            "host": self.host,
            "node_id": self.node_id,
            "gpu_type": self.labels.get(LABEL_GPU_TYPE),
            "gpus": self.gpus,
            "s2": self.labels.get(LABEL_S2),
            "s1": self.labels.get(LABEL_S1),
            "s0": self.labels.get(LABEL_S0),
            "healthy": True,
            "gpu_metrics": metrics,
            "gpu_metrics_source": source,
            "uptime_s": time.time() - self.started,
        }


def gpu_node_handle(host: str, node_id: str) -> Any:
    """The host's GpuNode actor, created pinned to ``node_id`` when it does not exist yet."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from heteroscale_ray.actors.checkpoint import NAMESPACE, gpu_node_actor

    return (
        ray.remote(GpuNode)
        .options(
            name=gpu_node_actor(host),
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_restarts=-1,
            max_task_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        )
        .remote(host)
    )
