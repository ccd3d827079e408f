"""Capacity arithmetic from the performance model: what one instance can carry within SLO.

Used by the oracle (fewest instances per interval given the future load), by static peak
provisioning, by the initial provisioning before a replay, and by `pd-sweep` to suggest a
policy target. All of it is the roofline model evaluated at the workload's own lengths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from heteroscale_ray.config import ServiceSpec
from heteroscale_ray.sim.speed import InstanceKind

PREFILL_UTIL_TARGET = 0.8  # queueing headroom: an M/D/1 queue at 80% waits ~2 service times
DECODE_TBT_MARGIN = 0.7  # size decode batches so steps stay at 70% of the TBT SLO (batch growth near capacity is cliff-like)


@dataclass(frozen=True)
class DecodeCapacity:
    """Largest batch a decode instance runs within the TBT SLO, and the tokens/s it makes."""

    batch: int
    step_s: float
    tokens_per_s: float
    limited_by: str  # "tbt", "kv" or "seqs"


def decode_capacity(
    kind: InstanceKind, tbt_slo_s: float, mean_context: float, mean_reserve: float
) -> DecodeCapacity:
    """Binary search on batch size: step time <= margin x TBT SLO, KV and sequence caps kept."""
    by_kv = int(kind.kv_capacity_tokens // max(mean_reserve, 1.0))
    hi = max(1, min(kind.max_seqs, by_kv))
    limited = "kv" if by_kv < kind.max_seqs else "seqs"
    budget = tbt_slo_s * DECODE_TBT_MARGIN
    b = np.arange(1, hi + 1, dtype=float)
    steps = kind.step_seconds(b, b * mean_context)
    ok = np.flatnonzero(steps <= budget)
    if len(ok) == 0:
        best = 1
        limited = "tbt"
    else:
        best = int(ok[-1]) + 1
        if best < hi:
            limited = "tbt"
    step = float(steps[best - 1])
    return DecodeCapacity(best, step, best / step, limited)


def prefill_work_s(
    kind: InstanceKind, input_tokens: np.ndarray, cached: np.ndarray | float = 0.0
) -> np.ndarray:
    """Seconds of prefill each request costs on one instance of `kind` (cache misses only)."""
    inp = np.asarray(input_tokens, dtype=float)
    cached = np.minimum(np.asarray(cached, dtype=float), np.maximum(inp - 1, 0))
    return kind.prefill_seconds(inp - cached, cached)


@dataclass(frozen=True)
class Needs:
    """Instances per role needed in each interval of `period_s` (fractional, before rounding)."""

    period_s: float
    prefill: np.ndarray
    decode: np.ndarray


def needs_per_interval(
    spec: ServiceSpec,
    prefill_kind: InstanceKind,
    decode_kind: InstanceKind,
    arrival_s: np.ndarray,
    input_tokens: np.ndarray,
    output_tokens: np.ndarray,
    duration_s: float,
    period_s: float,
) -> Needs:
    """Per interval: prefill = work / (period x util target); decode = token demand / capacity."""
    n_bins = max(1, int(math.ceil(duration_s / period_s)))
    b = np.minimum((arrival_s / period_s).astype(np.int64), n_bins - 1)
    work = prefill_work_s(prefill_kind, input_tokens)
    p_need = np.bincount(b, weights=work, minlength=n_bins) / (period_s * PREFILL_UTIL_TARGET)
    out = np.asarray(output_tokens, dtype=float)
    inp = np.asarray(input_tokens, dtype=float)
    # A running batch holds each request for as many steps as it has output tokens, so its
    # average context and reservation are output-weighted, not plain means.
    weight = np.maximum(out, 1.0)
    mean_ctx = float(np.average(inp + out / 2, weights=weight)) if len(inp) else 1.0
    mean_res = float(np.average(inp + out, weights=weight)) if len(inp) else 1.0
    cap = decode_capacity(decode_kind, spec.slo.tbt_s, mean_ctx, mean_res)
    d_need = np.bincount(b, weights=np.maximum(out - 1, 0), minlength=n_bins) / period_s
    d_need = d_need / cap.tokens_per_s
    return Needs(period_s, p_need, d_need)


def round_counts(spec: ServiceSpec, prefill: float, decode: float) -> tuple[int, int]:
    """Ceil and clamp to the service's bounds."""
    p = max(spec.prefill.min_instances, min(spec.prefill.max_instances, math.ceil(prefill - 1e-9)))
    d = max(spec.decode.min_instances, min(spec.decode.max_instances, math.ceil(decode - 1e-9)))
    return p, d
