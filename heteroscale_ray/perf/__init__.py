"""Roofline performance model shared by the simulator and the emulated-GPU serving side.

Pure functions of (model profile, GPU type, constants): no Ray, no clock, no randomness.
"""

from heteroscale_ray.perf.capacity import (
    DecodeCapacity,
    decode_capacity,
    prefill_capacity,
    prefill_work_s,
)
from heteroscale_ray.perf.constants import DEFAULT_CONSTANTS, PerfConstants, load_perf_constants
from heteroscale_ray.perf.instance_kind import InstanceKind
from heteroscale_ray.perf.memory import (
    ModelDoesNotFitError,
    fits,
    kv_capacity_tokens,
    max_decode_batch,
    min_gpus_to_fit,
    usable_memory_bytes,
)
from heteroscale_ray.perf.network import SharedLevel, kv_transfer_bandwidth_gbps, kv_transfer_time_s
from heteroscale_ray.perf.profiles import (
    BUILTIN_PROFILES,
    ModelProfile,
    ProfileSet,
    builtin_profiles,
    get_profile,
    load_profiles,
    profiles_from_dict,
)
from heteroscale_ray.perf.roofline import (
    decode_step_time_s,
    flops_decode_step,
    flops_prefill,
    prefill_batch_time_s,
    prefill_time_s,
    prefill_uniform_batch_time_s,
    sm_activity,
    weight_bytes_read,
)

__all__ = [
    "BUILTIN_PROFILES",
    "DEFAULT_CONSTANTS",
    "DecodeCapacity",
    "InstanceKind",
    "ModelDoesNotFitError",
    "ModelProfile",
    "PerfConstants",
    "ProfileSet",
    "SharedLevel",
    "builtin_profiles",
    "decode_capacity",
    "decode_step_time_s",
    "fits",
    "flops_decode_step",
    "flops_prefill",
    "get_profile",
    "kv_capacity_tokens",
    "kv_transfer_bandwidth_gbps",
    "kv_transfer_time_s",
    "load_perf_constants",
    "load_profiles",
    "max_decode_batch",
    "min_gpus_to_fit",
    "prefill_capacity",
    "prefill_batch_time_s",
    "prefill_time_s",
    "prefill_uniform_batch_time_s",
    "prefill_work_s",
    "profiles_from_dict",
    "sm_activity",
    "usable_memory_bytes",
    "weight_bytes_read",
]
