"""Sustainable tokens/s of one instance under a latency target: the per-instance targets of policy.

HeteroScale scales on throughput divided by a per-instance target. Offline that target comes
from stress tests; here it comes from the roofline: the largest batch whose step time meets the
SLO, and the tokens/s that batch sustains. The simulator uses the same numbers as capacity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from heteroscale_ray.config.gpus import GpuType
from heteroscale_ray.perf.constants import DEFAULT_CONSTANTS, PerfConstants
from heteroscale_ray.perf.memory import max_decode_batch
from heteroscale_ray.perf.profiles import ModelProfile
from heteroscale_ray.perf.roofline import decode_step_time_s, prefill_uniform_batch_time_s


@dataclass(frozen=True, slots=True)
class DecodeOperatingPoint:
    """Batch a decode instance runs at, its step time (= TBT) and decode tokens/s (0 if none)."""

    batch: int
    step_s: float
    tokens_per_s: float


@dataclass(frozen=True, slots=True)
class PrefillOperatingPoint:
    """Requests per prefill batch, the batch time and cache-miss tokens/s (0 if none)."""

    batch: int
    batch_s: float
    tokens_per_s: float


def _largest_ok(upper: int, ok: Callable[[int], bool]) -> int:
    """Largest k in [1, upper] with ok(k), for ok monotone (true then false); 0 if none."""
    if upper < 1 or not ok(1):
        return 0
    lo, hi = 1, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def decode_operating_point(
    profile: ModelProfile,
    gpu: GpuType,
    avg_context: float,
    tbt_slo_s: float | None = None,
    n_gpus: int = 1,
    const: PerfConstants = DEFAULT_CONSTANTS,
) -> DecodeOperatingPoint:
    """Largest batch that fits in KV memory with step time <= ``tbt_slo_s`` (None: no target).

    ``avg_context`` is the mean KV length of a running sequence, about input + output / 2.
    """

    def step(b: int) -> float:
        return decode_step_time_s(profile, gpu, b, b * avg_context, n_gpus, const)

    upper = max_decode_batch(profile, gpu, avg_context, n_gpus, const)
    slo = tbt_slo_s
    batch = upper if slo is None else _largest_ok(upper, lambda b: step(b) <= slo)
    if batch == 0:
        return DecodeOperatingPoint(batch=0, step_s=step(1), tokens_per_s=0.0)
    step_s = step(batch)
    return DecodeOperatingPoint(batch=batch, step_s=step_s, tokens_per_s=batch / step_s)


def decode_tps_capacity(
    profile: ModelProfile,
    gpu: GpuType,
    avg_context: float,
    tbt_slo_s: float | None = None,
    n_gpus: int = 1,
    const: PerfConstants = DEFAULT_CONSTANTS,
) -> float:
    """Decode tokens/s one instance sustains within the TBT target (0 if it cannot meet it)."""
    return decode_operating_point(profile, gpu, avg_context, tbt_slo_s, n_gpus, const).tokens_per_s


def prefill_operating_point(
    profile: ModelProfile,
    gpu: GpuType,
    avg_input_tokens: float,
    ttft_slo_s: float | None = None,
    cache_hit_fraction: float = 0.0,
    n_gpus: int = 1,
    const: PerfConstants = DEFAULT_CONSTANTS,
) -> PrefillOperatingPoint:
    """Largest prefill batch within the token budget whose time <= TTFT x budget fraction.

    The batch token budget counts computed (cache-miss) tokens, as chunked prefill does.

    Throughput counts cache-miss tokens only, as the paper prescribes for the prefill signal.
    """
    if avg_input_tokens <= 0:
        raise ValueError(f"avg_input_tokens must be > 0 (got {avg_input_tokens})")
    if not 0.0 <= cache_hit_fraction < 1.0:
        raise ValueError(f"cache_hit_fraction must be in [0, 1) (got {cache_hit_fraction})")
    cached = avg_input_tokens * cache_hit_fraction
    new = avg_input_tokens - cached

    def batch_s(k: int) -> float:
        return prefill_uniform_batch_time_s(
            profile, gpu, avg_input_tokens, k, cached, n_gpus, const
        )

    upper = max(1, int(const.prefill_batch_tokens // new))  # the budget counts computed tokens
    if ttft_slo_s is None:
        batch = upper
    else:
        budget = ttft_slo_s * const.prefill_ttft_budget_fraction
        batch = _largest_ok(upper, lambda k: batch_s(k) <= budget)
    if batch == 0:
        return PrefillOperatingPoint(batch=0, batch_s=batch_s(1), tokens_per_s=0.0)
    seconds = batch_s(batch)
    return PrefillOperatingPoint(batch=batch, batch_s=seconds, tokens_per_s=batch * new / seconds)


def prefill_tps_capacity(
    profile: ModelProfile,
    gpu: GpuType,
    avg_input_tokens: float,
    ttft_slo_s: float | None = None,
    cache_hit_fraction: float = 0.0,
    n_gpus: int = 1,
    const: PerfConstants = DEFAULT_CONSTANTS,
) -> float:
    """Cache-miss prefill tokens/s one instance sustains within the TTFT target (0 if it cannot)."""
    return prefill_operating_point(
        profile, gpu, avg_input_tokens, ttft_slo_s, cache_hit_fraction, n_gpus, const
    ).tokens_per_s
