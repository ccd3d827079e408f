"""KV-cache transfer between a prefill and a decode instance, priced by the switch level they share.

The lowest common switch decides the bandwidth: NVLink/PCIe inside a host, then RDMA through
S0 < S1 < S2 < the core, each level losing some bandwidth to oversubscription. This is the cost
that makes topology-aware placement (Deployment Groups inside one S1/S2) pay off.
"""

from __future__ import annotations

from enum import IntEnum

from heteroscale_ray.config.gpus import GpuType
from heteroscale_ray.perf.constants import DEFAULT_CONSTANTS, PerfConstants
from heteroscale_ray.perf.profiles import GB, ModelProfile


class SharedLevel(IntEnum):
    """Lowest switch level two instances share; higher value = farther apart."""

    HOST = 0
    S0 = 1
    S1 = 2
    S2 = 3
    CROSS_S2 = 4


def kv_transfer_bandwidth_gbps(
    level: SharedLevel, gpu: GpuType, n_gpus: int = 1, const: PerfConstants = DEFAULT_CONSTANTS
) -> float:
    """Achieved KV transfer bandwidth in GB/s (bytes, like GpuType.interconnect_gbps).

    Inside a host: the GPU link times host_link_efficiency. Across hosts: the per-GPU NIC times
    the level's fraction, never above the GPU's own link (GPUDirect RDMA crosses it). Each GPU
    of a tensor-parallel instance moves its own KV shard, so bandwidth scales with ``n_gpus``.
    """
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be >= 1 (got {n_gpus})")
    link = gpu.interconnect_gbps * const.host_link_efficiency
    fraction = {
        SharedLevel.S0: const.s0_bw_fraction,
        SharedLevel.S1: const.s1_bw_fraction,
        SharedLevel.S2: const.s2_bw_fraction,
        SharedLevel.CROSS_S2: const.cross_s2_bw_fraction,
    }
    level = SharedLevel(level)
    per_gpu = link if level is SharedLevel.HOST else min(link, const.nic_gbps * fraction[level])
    return per_gpu * n_gpus


def kv_transfer_time_s(
    profile: ModelProfile,
    n_tokens: int,
    level: SharedLevel,
    gpu: GpuType,
    n_gpus: int = 1,
    const: PerfConstants = DEFAULT_CONSTANTS,
) -> float:
    """Seconds to ship the KV cache of ``n_tokens`` tokens; zero tokens cost nothing."""
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0 (got {n_tokens})")
    if n_tokens == 0:
        return 0.0
    size = n_tokens * profile.kv_bytes_per_token
    return (
        size / (kv_transfer_bandwidth_gbps(level, gpu, n_gpus, const) * GB)
        + const.kv_transfer_setup_s
    )
