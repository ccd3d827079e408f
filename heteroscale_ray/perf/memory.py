"""Memory bounds of an instance: how many KV tokens fit next to the weights, hence the batch cap.

Decode throughput is bounded by KV capacity as much as by bandwidth: a 48 GB L20 holding 16 GB
of weights has far fewer KV slots than a 96 GB H20, which is part of why H20 is the decode card.
"""

from __future__ import annotations

from heteroscale_ray.config.gpus import GpuType
from heteroscale_ray.perf.constants import DEFAULT_CONSTANTS, PerfConstants
from heteroscale_ray.perf.profiles import GB, ModelProfile


class ModelDoesNotFitError(ValueError):
    """The weights (plus the reserve) exceed the instance's memory; use more GPUs per instance."""


def usable_memory_bytes(
    gpu: GpuType, n_gpus: int = 1, const: PerfConstants = DEFAULT_CONSTANTS
) -> float:
    """Memory of the instance after the activation/fragmentation reserve."""
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be >= 1 (got {n_gpus})")
    return gpu.memory_gb * GB * n_gpus * (1.0 - const.memory_reserve_fraction)


def fits(
    profile: ModelProfile, gpu: GpuType, n_gpus: int = 1, const: PerfConstants = DEFAULT_CONSTANTS
) -> bool:
    """True when the weights leave room for at least one token of KV cache."""
    free = usable_memory_bytes(gpu, n_gpus, const) - profile.weight_bytes
    return free >= profile.kv_bytes_per_token


def kv_capacity_tokens(
    profile: ModelProfile, gpu: GpuType, n_gpus: int = 1, const: PerfConstants = DEFAULT_CONSTANTS
) -> int:
    """KV-cache tokens one instance holds: (memory - reserve - weights) / kv_bytes_per_token.

    Raises ModelDoesNotFitError when not even one token fits.
    """
    usable = usable_memory_bytes(gpu, n_gpus, const)
    tokens = int((usable - profile.weight_bytes) // profile.kv_bytes_per_token)
    if tokens < 1:
        smallest = min_gpus_to_fit(profile, gpu, const)
        hint = f"use n_gpus >= {smallest}" if smallest else "use a larger GPU type"
        raise ModelDoesNotFitError(
            f"{profile.name} ({profile.weight_bytes / GB:.1f} GB of weights) does not fit on "
            f"{n_gpus} x {gpu.name} ({usable / GB:.1f} GB usable after the "
            f"{const.memory_reserve_fraction:.0%} reserve); {hint}"
        )
    return tokens


def min_gpus_to_fit(
    profile: ModelProfile,
    gpu: GpuType,
    const: PerfConstants = DEFAULT_CONSTANTS,
    choices: tuple[int, ...] = (1, 2, 4, 8),
) -> int | None:
    """Smallest tensor-parallel size in ``choices`` that fits the model, or None."""
    for n in sorted(choices):
        if fits(profile, gpu, n, const):
            return n
    return None


def max_decode_batch(
    profile: ModelProfile,
    gpu: GpuType,
    avg_context: float,
    n_gpus: int = 1,
    const: PerfConstants = DEFAULT_CONSTANTS,
) -> int:
    """Sequences of ``avg_context`` tokens whose KV fits at once, capped by max_running_seqs."""
    if avg_context <= 0:
        raise ValueError(f"avg_context must be > 0 (got {avg_context})")
    by_memory = int(kv_capacity_tokens(profile, gpu, n_gpus, const) // avg_context)
    return min(const.max_running_seqs, by_memory)
