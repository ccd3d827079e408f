"""Roofline timing of prefill batches and decode steps: max(compute time, memory time) + overhead.

Prefill is compute-bound (every prompt token goes through every weight), decode is memory-bound
(each step streams the weights and the batch's KV cache once for one token per sequence). Tensor
parallelism over ``n_gpus`` divides both terms evenly (communication is folded into the
efficiencies). FLOP counts are exported so callers can report SM activity the way the paper does.
"""

from __future__ import annotations

from collections.abc import Sequence

from heteroscale_ray.config.gpus import GpuType
from heteroscale_ray.perf.constants import DEFAULT_CONSTANTS, PerfConstants
from heteroscale_ray.perf.profiles import GB, ModelProfile


def _check_gpus(n_gpus: int) -> None:
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be >= 1 (got {n_gpus})")


def flops_prefill(profile: ModelProfile, n_tokens: float, cached_tokens: float = 0) -> float:
    """FLOPs to prefill a prompt of ``n_tokens`` whose first ``cached_tokens`` hit the KV cache.

    2 FLOPs per active parameter per new token, plus causal attention (QK^T and AV, 4 FLOPs per
    query-key pair per attention width): each new token attends to the cached prefix and to the
    new tokens before it. Same formula as `serving.model`'s TinyTransformer.flops.
    """
    if n_tokens < 0 or cached_tokens < 0 or cached_tokens > n_tokens:
        raise ValueError(
            f"need 0 <= cached_tokens <= n_tokens (got n_tokens={n_tokens}, cached_tokens={cached_tokens})"
        )
    new = n_tokens - cached_tokens
    pairs = new * cached_tokens + new * (new + 1) / 2
    return (
        2.0 * profile.active_params_b * GB * new + 4.0 * profile.n_layers * profile.attn_dim * pairs
    )


def flops_decode_step(profile: ModelProfile, batch_size: int, total_context_tokens: float) -> float:
    """FLOPs of one decode step: one token per sequence, attending to the batch's whole context."""
    if batch_size < 0 or total_context_tokens < 0:
        raise ValueError("batch_size and total_context_tokens must be >= 0")
    return (
        2.0 * profile.active_params_b * GB * batch_size
        + 4.0 * profile.n_layers * profile.attn_dim * total_context_tokens
    )


def weight_bytes_read(profile: ModelProfile, n_tokens: float) -> float:
    """Weight bytes one forward pass over ``n_tokens`` tokens streams from memory.

    Dense: all weights. MoE: the shared part plus the experts the tokens touch, expected
    1 - (1 - k/E)^n of them under uniform routing, so one token reads the active parameters and
    a large batch reads nearly all of them.
    """
    if n_tokens <= 0:
        return 0.0
    if profile.n_experts is None or profile.experts_per_token is None:
        return profile.weight_bytes
    e, k = profile.n_experts, profile.experts_per_token
    per_expert = (profile.params_b - profile.active_params_b) / (e - k)
    shared = profile.active_params_b - k * per_expert
    touched = 1.0 - (1.0 - k / e) ** n_tokens
    return (shared + e * per_expert * touched) * GB * profile.bytes_per_param


def _prefill_seconds(
    profile: ModelProfile,
    gpu: GpuType,
    flops: float,
    new_tokens: float,
    n_gpus: int,
    const: PerfConstants,
) -> float:
    compute_s = flops / (gpu.tflops * 1e12 * const.prefill_mfu * n_gpus)
    memory_s = weight_bytes_read(profile, new_tokens) / (
        gpu.mem_bw_tbps * 1e12 * const.mem_bw_efficiency * n_gpus
    )
    return max(compute_s, memory_s) + const.prefill_overhead_s


def prefill_batch_time_s(
    profile: ModelProfile,
    gpu: GpuType,
    token_counts: Sequence[int],
    cached_counts: Sequence[int] | None = None,
    n_gpus: int = 1,
    const: PerfConstants = DEFAULT_CONSTANTS,
) -> float:
    """Seconds to prefill several prompts in one batch (one fixed overhead for the batch).

    ``token_counts`` are prompt lengths; ``cached_counts`` (same length) the prefix-cache hits
    of each, which cost no FLOPs. An empty batch costs nothing.
    """
    _check_gpus(n_gpus)
    cached = [0] * len(token_counts) if cached_counts is None else list(cached_counts)
    if len(cached) != len(token_counts):
        raise ValueError(
            f"cached_counts has {len(cached)} entries for {len(token_counts)} prompts; give one per prompt"
        )
    if not token_counts:
        return 0.0
    flops = sum(flops_prefill(profile, n, c) for n, c in zip(token_counts, cached, strict=True))
    new_tokens = sum(token_counts) - sum(cached)
    return _prefill_seconds(profile, gpu, flops, new_tokens, n_gpus, const)


def prefill_uniform_batch_time_s(
    profile: ModelProfile,
    gpu: GpuType,
    n_tokens: float,
    batch_size: int,
    cached_tokens: float = 0,
    n_gpus: int = 1,
    const: PerfConstants = DEFAULT_CONSTANTS,
) -> float:
    """``prefill_batch_time_s`` for ``batch_size`` equal prompts, in O(1) (capacity searches)."""
    _check_gpus(n_gpus)
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0 (got {batch_size})")
    if batch_size == 0:
        return 0.0
    flops = batch_size * flops_prefill(profile, n_tokens, cached_tokens)
    return _prefill_seconds(
        profile, gpu, flops, batch_size * (n_tokens - cached_tokens), n_gpus, const
    )


def prefill_time_s(
    profile: ModelProfile,
    gpu: GpuType,
    n_tokens: int,
    n_gpus: int = 1,
    cached_tokens: int = 0,
    const: PerfConstants = DEFAULT_CONSTANTS,
) -> float:
    """Seconds to prefill one prompt of ``n_tokens`` of which ``cached_tokens`` are cache hits."""
    return prefill_uniform_batch_time_s(profile, gpu, n_tokens, 1, cached_tokens, n_gpus, const)


def decode_step_time_s(
    profile: ModelProfile,
    gpu: GpuType,
    batch_size: int,
    total_context_tokens: float,
    n_gpus: int = 1,
    const: PerfConstants = DEFAULT_CONSTANTS,
) -> float:
    """Seconds for one decode step of ``batch_size`` sequences holding ``total_context_tokens``.

    Memory time = (weights read + KV read) / (bandwidth x efficiency), never below the compute
    time at decode MFU; plus the fixed step overhead. An empty batch costs nothing.
    """
    _check_gpus(n_gpus)
    if batch_size < 0 or total_context_tokens < 0:
        raise ValueError("batch_size and total_context_tokens must be >= 0")
    if batch_size == 0:
        return 0.0
    bytes_read = (
        weight_bytes_read(profile, batch_size) + total_context_tokens * profile.kv_bytes_per_token
    )
    memory_s = bytes_read / (gpu.mem_bw_tbps * 1e12 * const.mem_bw_efficiency * n_gpus)
    compute_s = flops_decode_step(profile, batch_size, total_context_tokens) / (
        gpu.tflops * 1e12 * const.decode_mfu * n_gpus
    )
    return max(memory_s, compute_s) + const.decode_step_overhead_s


def sm_activity(flops: float, seconds: float, gpu: GpuType, n_gpus: int = 1) -> float:
    """Achieved FLOP/s over peak: the SM-activity analogue the paper's metrics use (0..1)."""
    _check_gpus(n_gpus)
    if seconds <= 0:
        return 0.0
    return min(1.0, flops / (seconds * gpu.tflops * 1e12 * n_gpus))
