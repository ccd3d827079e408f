"""Vectorised roofline timing of one instance kind, derived from (and tested against) `roofline`.

The scalar roofline functions (`perf.roofline`, `perf.network`) work on one batch at a time; the
simulator needs the same numbers for thousands of sequences per tick. `InstanceKind` reads the
model's coefficients once (FLOPs per token, attention FLOPs per token pair, weight bytes read as
a function of tokens) by probing those functions, and evaluates them on numpy arrays.
`tests/test_perf.py::test_vectorised_timing_matches_the_shared_perf_model` checks both agree.
Per-instance capacity on a kind is `perf.capacity`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from heteroscale_ray.config.gpus import GpuType
from heteroscale_ray.perf.constants import DEFAULT_CONSTANTS, PerfConstants
from heteroscale_ray.perf.memory import kv_capacity_tokens
from heteroscale_ray.perf.network import SharedLevel, kv_transfer_bandwidth_gbps
from heteroscale_ray.perf.profiles import GB, ModelProfile
from heteroscale_ray.perf.roofline import flops_prefill, weight_bytes_read


@dataclass(frozen=True)
class InstanceKind:
    """Timing coefficients of one (model, GPU type, GPUs per instance) combination."""

    model: str
    gpu: str
    n_gpus: int
    peak_flops: float  # FLOP/s of the instance at 100% (SM-activity denominator)
    prefill_flops_s: float  # achieved FLOP/s in prefill (peak x prefill MFU)
    decode_flops_s: float  # achieved FLOP/s of a compute-bound decode step
    mem_bw: float  # achieved bytes/s
    prefill_overhead_s: float
    step_overhead_s: float
    flops_per_token: float  # 2 x active parameters
    flops_per_pair: float  # attention FLOPs per (query, key) pair
    w_shared: float  # weight bytes every pass reads
    w_experts: float  # MoE expert bytes; touched share is 1 - q**tokens
    q_untouched: float  # 1 - k/E for MoE (probability one token misses an expert)
    kv_bytes_per_token: float
    kv_capacity_tokens: int
    max_seqs: int
    cost_per_gpu_hour: float
    kv_bw_by_level: tuple[float, ...]  # bytes/s for SharedLevel HOST..CROSS_S2
    kv_setup_s: float

    @staticmethod
    def build(
        profile: ModelProfile, gpu: GpuType, n_gpus: int, const: PerfConstants = DEFAULT_CONSTANTS
    ) -> InstanceKind:
        f1 = flops_prefill(profile, 1)
        f2 = flops_prefill(profile, 2)
        per_pair = f2 - 2 * f1  # f(n) = a n + c n(n+1)/2  =>  f2 - 2 f1 = c
        w1 = weight_bytes_read(profile, 1)
        w_all = weight_bytes_read(profile, 1e12)
        if profile.n_experts and profile.experts_per_token:
            q = 1.0 - profile.experts_per_token / profile.n_experts
            w_exp = (w_all - w1) / q
        else:
            q, w_exp = 0.5, 0.0
        return InstanceKind(
            model=profile.name,
            gpu=gpu.name,
            n_gpus=n_gpus,
            peak_flops=gpu.tflops * 1e12 * n_gpus,
            prefill_flops_s=gpu.tflops * 1e12 * const.prefill_mfu * n_gpus,
            decode_flops_s=gpu.tflops * 1e12 * const.decode_mfu * n_gpus,
            mem_bw=gpu.mem_bw_tbps * 1e12 * const.mem_bw_efficiency * n_gpus,
            prefill_overhead_s=const.prefill_overhead_s,
            step_overhead_s=const.decode_step_overhead_s,
            flops_per_token=f1 - per_pair,
            flops_per_pair=per_pair,
            w_shared=w_all - w_exp,
            w_experts=w_exp,
            q_untouched=q,
            kv_bytes_per_token=profile.kv_bytes_per_token,
            kv_capacity_tokens=kv_capacity_tokens(profile, gpu, n_gpus, const),
            max_seqs=const.max_running_seqs,
            cost_per_gpu_hour=gpu.cost_per_hour,
            kv_bw_by_level=tuple(
                kv_transfer_bandwidth_gbps(lvl, gpu, n_gpus, const) * GB for lvl in SharedLevel
            ),
            kv_setup_s=const.kv_transfer_setup_s,
        )

    def weight_bytes(self, tokens: np.ndarray) -> np.ndarray:
        if not self.w_experts:  # dense: every weight, whatever the tokens (skips the power)
            return np.full(np.shape(tokens), float(self.w_shared))
        return self.w_shared + self.w_experts * (1.0 - np.power(self.q_untouched, tokens))

    def prefill_flops(self, new: np.ndarray, cached: np.ndarray | float = 0.0) -> np.ndarray:
        pairs = new * cached + new * (new + 1) / 2
        return self.flops_per_token * new + self.flops_per_pair * pairs

    def prefill_seconds(self, new: np.ndarray, cached: np.ndarray | float = 0.0) -> np.ndarray:
        """One prompt per batch: max(compute, weight streaming) + the batch overhead."""
        new = np.asarray(new, dtype=float)
        compute = self.prefill_flops(new, cached) / self.prefill_flops_s
        memory = self.weight_bytes(new) / self.mem_bw
        return np.where(new > 0, np.maximum(compute, memory) + self.prefill_overhead_s, 0.0)

    def prefill_one(self, tokens: int, cached: int) -> tuple[float, float]:
        """(seconds, FLOPs) of one prompt alone; scalar twin of `prefill_seconds` (routing)."""
        new_t = tokens - cached
        flops = self.flops_per_token * new_t + self.flops_per_pair * (
            new_t * cached + new_t * (new_t + 1) / 2
        )
        mem = (self.w_shared + self.w_experts * (1.0 - self.q_untouched**new_t)) / self.mem_bw
        return max(flops / self.prefill_flops_s, mem) + self.prefill_overhead_s, flops

    def prefill_many(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`prefill_one(t, 0)` for every t of the int array `tokens`, bit for bit (routing).

        The arithmetic is elementwise IEEE, as in the scalar twin; the weight-streaming term
        uses Python's scalar power per distinct token count, so it matches on every platform.
        """
        new_t = np.asarray(tokens, dtype=np.int64)
        flops = self.flops_per_token * new_t + self.flops_per_pair * (
            new_t * 0 + new_t * (new_t + 1) / 2
        )
        if self.w_experts == 0.0:  # dense: the expert term is exactly 0 for every count
            mem: np.ndarray | float = (
                self.w_shared + self.w_experts * (1.0 - self.q_untouched**1)
            ) / self.mem_bw
        else:
            uniq, inv = np.unique(new_t, return_inverse=True)
            per = [
                (self.w_shared + self.w_experts * (1.0 - self.q_untouched**t)) / self.mem_bw
                for t in uniq.tolist()
            ]
            mem = np.array(per, dtype=float)[inv]
        return np.maximum(flops / self.prefill_flops_s, mem) + self.prefill_overhead_s, flops

    def decode_flops(self, batch: np.ndarray, ctx: np.ndarray) -> np.ndarray:
        return self.flops_per_token * batch + self.flops_per_pair * ctx

    def step_seconds(self, batch: np.ndarray, ctx: np.ndarray) -> np.ndarray:
        """Decode step time for batches of `batch` sequences holding `ctx` KV tokens in total."""
        batch = np.asarray(batch, dtype=float)
        # dense: the expert term is exactly 0 whatever the batch, so skip the power
        weights = self.w_shared if self.w_experts == 0.0 else self.weight_bytes(batch)
        mem = (weights + ctx * self.kv_bytes_per_token) / self.mem_bw
        comp = self.decode_flops(batch, ctx) / self.decode_flops_s
        return np.where(batch > 0, np.maximum(mem, comp) + self.step_overhead_s, 0.0)

    def kv_transfer_seconds(self, tokens: np.ndarray, level: np.ndarray) -> np.ndarray:
        bw = np.asarray(self.kv_bw_by_level)[level]
        return np.where(tokens > 0, tokens * self.kv_bytes_per_token / bw + self.kv_setup_s, 0.0)
