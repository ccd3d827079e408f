"""Capacity arithmetic from the performance model: how many instances carry a load within SLO.

Used by the oracle (fewest instances per interval given the future load), by static peak
provisioning and by the initial provisioning before a replay. Everything is the simulator's own vectorised roofline (`perf.instance_kind`)
evaluated on the requests themselves, so the counts are what *this* simulator needs, not a
generic rule. Single per-instance operating points (`decode_capacity`, `prefill_capacity`) are
in `perf.capacity`.

Decode is sized by Little's law at tick resolution. Each request holds a decode slot and its
KV reservation (input + output tokens) from the tick its KV arrives to the end of the tick it
finishes (the simulator admits at tick starts and frees at tick ends, so short outputs hold their
KV for about one tick more than their decode steps take). Summing over requests gives, per tick,
the sequences S, the context tokens C and the reserved KV R in flight. Spread evenly over n
instances, a batch of S/n sequences over C/n tokens must

- step within the TBT budget: weights + C/n KV bytes streamed in `budget` seconds (memory
  bound), and the FLOPs of S/n tokens in `budget` seconds (compute bound);
- fit the KV memory: R/n <= KV capacity x `KV_FILL`;
- fit the sequence cap: S/n <= max_running_seqs.

Each bound is linear in 1/n, so the fewest n per tick is a closed form (no search). Whichever
bound binds -- TBT for short contexts (Azure), KV memory for ~15k-token contexts (Mooncake) --
decides. Step times depend on n and the hold times on step times, so the computation iterates
that fixed point a few times.

Prefill is sized from work: the seconds of prefill each interval's arrivals cost (cache misses
only when cached tokens are given) over the interval at `PREFILL_UTIL_TARGET` utilisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from heteroscale_ray.config import GpuCatalog, ServiceSpec
from heteroscale_ray.perf.capacity import PREFILL_UTIL_TARGET, SIZING_TBT_MARGIN, prefill_work_s
from heteroscale_ray.perf.constants import DEFAULT_CONSTANTS
from heteroscale_ray.perf.instance_kind import InstanceKind
from heteroscale_ray.perf.network import SharedLevel
from heteroscale_ray.perf.profiles import get_profile
from heteroscale_ray.policy.dg_shape import placeable_within
from heteroscale_ray.traces import Trace

KV_FILL = 0.9  # share of KV capacity FIFO admission fills on average (head-of-line blocking)
FIXED_POINT_ROUNDS = 3


class SloInfeasibleError(ValueError):
    """No number of instances of this kind can meet the SLO: the card is too slow per step."""


@dataclass(frozen=True)
class Needs:
    """Instances per role needed in each interval of `period_s` (fractional, before rounding).

    `decode_bound` names the decode bound that binds most often ("tbt", "kv" or "seqs").
    """

    period_s: float
    prefill: np.ndarray
    decode: np.ndarray
    decode_bound: str = "tbt"


def _in_flight(first: np.ndarray, last: np.ndarray, weight: np.ndarray, n: int) -> np.ndarray:
    """Per tick, sum of `weight` over requests holding ticks first..last (inclusive)."""
    diff = np.bincount(first, weights=weight, minlength=n + 1)[: n + 1]
    diff = diff - np.bincount(np.minimum(last + 1, n), weights=weight, minlength=n + 1)[: n + 1]
    return np.cumsum(diff)[:n]


def decode_need(
    kind: InstanceKind,
    tbt_slo_s: float,
    start_s: np.ndarray,
    input_tokens: np.ndarray,
    output_tokens: np.ndarray,
    n_ticks: int,
    tick_s: float = 1.0,
    margin: float = SIZING_TBT_MARGIN,
) -> tuple[np.ndarray, str]:
    """Fewest decode instances per tick (fractional) and the bound that binds most often.

    `start_s` is when each request's KV reaches decode. See the module docstring for the model.
    """
    budget = tbt_slo_s * margin - kind.step_overhead_s
    weights_all = kind.w_shared + kind.w_experts  # every weight byte: an upper bound for MoE
    bytes_budget = kind.mem_bw * budget - weights_all
    if budget <= 0 or bytes_budget <= 0:
        raise SloInfeasibleError(
            f"{kind.model} on {kind.n_gpus} x {kind.gpu} cannot step within "
            f"{margin:.0%} of the {tbt_slo_s * 1e3:.0f} ms TBT SLO even at batch 1: "
            "use more GPUs per decode instance or a faster card"
        )
    inp = np.asarray(input_tokens, dtype=float)
    gen = np.maximum(np.asarray(output_tokens, dtype=float) - 1, 0)
    m = gen > 0  # single-token outputs finish at prefill and never reach decode
    inp, gen, start = inp[m], gen[m], np.asarray(start_s, dtype=float)[m]
    if not len(inp):
        return np.zeros(n_ticks), "tbt"
    ctx = inp + (gen + 1) / 2  # mean KV length over the request's decode steps
    res = np.minimum(inp + gen + 1, float(kind.kv_capacity_tokens))
    first = np.clip((start / tick_s).astype(np.int64), 0, n_ticks - 1)
    step = np.full(n_ticks, tbt_slo_s * margin)
    ones = np.ones(len(inp))
    for _ in range(FIXED_POINT_ROUNDS):
        end = start + gen * step[first]
        last = np.clip(np.ceil(end / tick_s).astype(np.int64) - 1, first, n_ticks - 1)
        S = _in_flight(first, last, ones, n_ticks)
        C = _in_flight(first, last, ctx, n_ticks)
        R = _in_flight(first, last, res, n_ticks)
        bounds = np.stack(
            [
                C * kind.kv_bytes_per_token / bytes_budget,  # memory-bound step <= budget
                (kind.flops_per_token * S + kind.flops_per_pair * C)
                / (kind.decode_flops_s * budget),  # compute-bound step <= budget
                R / (kind.kv_capacity_tokens * KV_FILL),  # KV reservations fit
                S / kind.max_seqs,  # sequence cap
            ]
        )
        need = bounds.max(axis=0)
        n = np.maximum(need, 1e-9)
        step = np.where(
            S > 0,
            kind.step_seconds(np.maximum(S / n, 1.0), C / n),
            tbt_slo_s * margin,
        )
        step = np.minimum(step, tbt_slo_s * margin)
    busy = S > 0
    which = np.argmax(bounds[:, busy], axis=0) if busy.any() else np.zeros(1, dtype=np.int64)
    counts = np.bincount(which, minlength=4)
    bound = ("tbt", "tbt", "kv", "seqs")[int(np.argmax(counts))]
    return need, bound


def needs_per_interval(
    spec: ServiceSpec,
    prefill_kind: InstanceKind,
    decode_kind: InstanceKind,
    arrival_s: np.ndarray,
    input_tokens: np.ndarray,
    output_tokens: np.ndarray,
    duration_s: float,
    period_s: float,
    *,
    cached_tokens: np.ndarray | None = None,
    tick_s: float = 1.0,
    tbt_margin: float = SIZING_TBT_MARGIN,
    prefill_util: float = PREFILL_UTIL_TARGET,
) -> Needs:
    """Per interval: prefill = work / (period x util target); decode = peak tick of `decode_need`.

    Decode load is placed where it happens: from the end of the request's own prefill and KV
    transfer (no queueing, S1-level link) to its last token, so a long output counts in every
    interval it spans.
    """
    n_bins = max(1, int(math.ceil(duration_s / period_s)))
    arrival = np.asarray(arrival_s, dtype=float)
    inp = np.asarray(input_tokens, dtype=float)
    out = np.asarray(output_tokens, dtype=float)
    b = np.minimum((arrival / period_s).astype(np.int64), n_bins - 1)
    cached = np.zeros(len(inp)) if cached_tokens is None else np.asarray(cached_tokens, float)
    work = prefill_work_s(prefill_kind, inp, cached)
    p_need = np.bincount(b, weights=work, minlength=n_bins) / (period_s * prefill_util)
    start = (
        arrival
        + work
        + prefill_kind.kv_transfer_seconds(inp, np.full(len(inp), int(SharedLevel.S1)))
    )
    per = max(1, int(round(period_s / tick_s)))
    n_ticks = n_bins * per + int(math.ceil(float(np.max(start, initial=0.0)) / tick_s)) + 2
    need, bound = decode_need(
        decode_kind, spec.slo.tbt_s, start, inp, out, n_ticks, tick_s=tick_s, margin=tbt_margin
    )
    d_need = need[: n_bins * per].reshape(n_bins, per).max(axis=1)
    # a decode tail past the last interval still needs its instances in the last interval
    d_need[-1] = max(d_need[-1], float(need[n_bins * per :].max(initial=0.0)))
    return Needs(period_s, p_need, d_need, bound)


def round_counts(spec: ServiceSpec, prefill: float, decode: float) -> tuple[int, int]:
    """Ceil and clamp to the service's bounds, the smaller role raised to what whole DGs need
    (`placeable_counts`)."""
    p = max(spec.prefill.min_instances, min(spec.prefill.max_instances, math.ceil(prefill - 1e-9)))
    d = max(spec.decode.min_instances, min(spec.decode.max_instances, math.ceil(decode - 1e-9)))
    return placeable_within(spec, p, d)


def past_max_instances(
    spec: ServiceSpec, prefill: float, decode: float, qualifier: str = ""
) -> str | None:
    """What it means for a replay when a need (instances) passes a role's `max_instances`:
    every policy is held under the bound, so the trace's peak is served short; None if not.
    `qualifier` says how the need was sized (", before prefix-cache hits")."""
    over = [
        f"{math.ceil(need - 1e-9):,} {role} instances where max_instances is {cap.max_instances:,}"
        for role, need, cap in (("prefill", prefill, spec.prefill), ("decode", decode, spec.decode))
        if math.ceil(need - 1e-9) > cap.max_instances
    ]
    if not over:
        return None
    return (
        f"the trace's peak needs {' and '.join(over)} (service {spec.name}{qualifier}): every "
        "policy is held under that bound and serves the peak short; raise max_instances to "
        "replay it whole"
    )


def sizing_kinds(spec: ServiceSpec, catalog: GpuCatalog) -> tuple[InstanceKind, InstanceKind]:
    """The kinds static sizing prices each role on (as sim/summary.role_kinds does for a
    running simulator): each role's first GPU type at the default performance constants."""
    prof = get_profile(spec.model)
    return (
        InstanceKind.build(
            prof,
            catalog[spec.prefill.gpu_types[0]],
            spec.prefill.gpus_per_instance,
            DEFAULT_CONSTANTS,
        ),
        InstanceKind.build(
            prof,
            catalog[spec.decode.gpu_types[0]],
            spec.decode.gpus_per_instance,
            DEFAULT_CONSTANTS,
        ),
    )


def trace_needs(spec: ServiceSpec, catalog: GpuCatalog, trace: Trace, bin_s: float = 15.0) -> Needs:
    """`needs_per_interval` of a whole trace in `bin_s` bins, priced on `sizing_kinds` (no
    prefix-cache discount): what static sizing reads without running a simulator."""
    pk, dk = sizing_kinds(spec, catalog)
    return needs_per_interval(
        spec,
        pk,
        dk,
        np.asarray(trace.arrival_s),
        np.asarray(trace.input_tokens),
        np.asarray(trace.output_tokens),
        max(float(trace.duration_s), bin_s),
        bin_s,
    )


def static_counts(
    spec: ServiceSpec, catalog: GpuCatalog, trace: Trace, bin_s: float = 15.0
) -> tuple[int, int]:
    """Prefill and decode instances of a static fleet sized on the peak of `bin_s` bins (no
    prefix-cache discount): the static policy's counts without running a simulator."""
    n = trace_needs(spec, catalog, trace, bin_s)
    return round_counts(spec, float(n.prefill.max()), float(n.decode.max()))
