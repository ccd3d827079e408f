"""What one instance carries, per (model, GPU type, role): the roofline prior, corrected by
what replicas report. Pure: the caller passes signals, state and time.

The prior is the project's one capacity model (`perf.capacity`) at this snapshot's mean lengths
and the prompts' spread (attention makes a long-tailed mix slower than its mean prompt), the
spread averaged over `demand.learn_smoothing_s` as the correction is. Decode's batch is priced
at the KV context the running sequences hold, as the replicas report it, where that is longer
than the mean lengths say (prompt + output / 2): a running set holds a long output longer than
a short one, so its outputs average (1 + cv^2) / 2 of the mean, not half of it; and finished
requests' lengths lag a surge of longer outputs by their whole decode time, while the running
sequences do not. Each step reads all of it, so the batch the TBT budget allows is the one at
that context. It is taken once two snapshots in a row hold it (the lower of the two): a
fan-out's long prompts pass through decode within one, and priced on each pass decode stepped
out and back (made-up fan-out: 6 direction changes an hour). The correction is one number per
role, measured over prior, averaged in log space:
- prefill: cache-miss tokens per busy second of a prefill instance, over the prior's;
- decode: the prior's step time at the batch and context the replicas stepped at, over the
  measured step time.
So a GPU slower than its spec sheet, an engine with more overhead, or a prefix-cache mix the
prior does not know shows up as a scale below 1 and the fleet is sized for it. Operators can
pin either value with `policy.demand.prefill_tokens_per_s` / `decode_batch`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

from heteroscale_ray.config import DEFAULT_CATALOG, GpuCatalog, GpuType, ServiceSpec
from heteroscale_ray.perf.capacity import decode_capacity, prefill_capacity
from heteroscale_ray.perf.instance_kind import InstanceKind
from heteroscale_ray.perf.profiles import get_profile
from heteroscale_ray.policy.dynamic_ratio import sampled_at, smooth
from heteroscale_ray.policy.types import PolicyState, Signals, evolve

DEFAULT_PROMPT = 1024.0  # tokens; the prior's length before any request was seen
DEFAULT_OUTPUT = 256.0
SCALE_BOUNDS = (0.2, 5.0)  # a measurement further off than this is a broken report, not a GPU
MIN_BUSY = 0.2  # below this busy share, tokens per busy second is too noisy to learn from
PERIOD_GUESS_S = 15.0  # the weight of the first sample: one control period's
MIN_SPREAD = 0.01  # the spread's floor: its average is taken in log space


@dataclass(frozen=True)
class Capacity:
    """Per-instance capacity of one service's roles at the current load's lengths."""

    prefill_tps: float  # cache-miss prompt tokens/s of one prefill instance, busy all the time
    decode_batch: float  # sequences one decode instance runs within the TBT budget and KV
    decode_tps: float  # tokens/s at that batch, at the learned step time
    prefill_scale: float = 1.0  # learned correction applied to the prior (1.0: prior as is)
    decode_scale: float = 1.0
    # "prior", "learned", "override", or one role's override and the other's source (an
    # overridden decode batch still steps at the learned pace)
    source: str = "prior"

    @property
    def decode_step_s(self) -> float:
        """The learned step at the priced batch: the TBT budget's share where the budget, not KV
        memory, bounds the batch."""
        return self.decode_batch / self.decode_tps

    def describe(self) -> str:
        return (
            f"prefill {self.prefill_tps:,.0f} tok/s/instance (x{self.prefill_scale:.2f}), "
            f"decode {self.decode_batch:,.0f} seqs = {self.decode_tps:,.0f} tok/s/instance "
            f"(x{self.decode_scale:.2f}), {self.source}"
        )


@lru_cache(maxsize=256)
def _kind(model: str, gpu: GpuType, n_gpus: int) -> InstanceKind:
    return InstanceKind.build(get_profile(model), gpu, n_gpus)


def kinds(spec: ServiceSpec, catalog: GpuCatalog) -> tuple[InstanceKind, InstanceKind]:
    """The prefill and decode instance kinds of a service's preferred GPU types."""
    p, d = spec.prefill, spec.decode
    return (
        _kind(spec.model, catalog[p.gpu_types[0]], p.gpus_per_instance),
        _kind(spec.model, catalog[d.gpu_types[0]], d.gpus_per_instance),
    )


def prior(
    spec: ServiceSpec, catalog: GpuCatalog, lens: Lengths, tbt_budget_s: float
) -> tuple[float, float, float]:
    p, d = spec.prefill, spec.decode
    return _prior_of(
        spec.model,
        catalog[p.gpu_types[0]],
        p.gpus_per_instance,
        catalog[d.gpu_types[0]],
        d.gpus_per_instance,
        lens,
        tbt_budget_s,
    )


@lru_cache(maxsize=4096)
def _prior_of(
    model: str,
    p_gpu: GpuType,
    p_n: int,
    d_gpu: GpuType,
    d_n: int,
    lens: Lengths,
    tbt_budget_s: float,
) -> tuple[float, float, float]:
    pk, dk = _kind(model, p_gpu, p_n), _kind(model, d_gpu, d_n)
    prefill = prefill_capacity(pk, lens.prompt, busy_share=1.0, sd_input=lens.prompt_sd)
    prompt, output = lens.prompt, lens.output
    context = max(prompt + output / 2, lens.context)
    dec = decode_capacity(dk, tbt_budget_s, context, prompt + output, margin=1.0)
    return prefill, float(dec.batch), dec.tokens_per_s


def rounded(x: float) -> float:
    """Two significant digits: the prior changes little with length, and caching stays useful."""
    if x <= 0:
        return x
    digits = 1 - int(math.floor(math.log10(x)))
    return round(x, digits)


@dataclass(frozen=True)
class Lengths:
    """The current load's lengths the prior is evaluated at, rounded (see `rounded`)."""

    prompt: float  # mean prompt tokens
    output: float  # mean output tokens
    prompt_sd: float = 0.0  # standard deviation of prompt tokens (0: unknown or all alike)
    context: float = 0.0  # KV tokens a running sequence holds (0: not reported)


def lengths(signals: Signals, state: PolicyState | None = None) -> Lengths:
    """Mean prompt and output length of the current load (defaults before any is seen), and
    the prompts' averaged spread (`track_spread`) once the ingress has reported one."""
    prompt = signals.prompt_mean
    output = signals.output_mean
    prompt = prompt if _positive(prompt) else DEFAULT_PROMPT
    output = output if _positive(output) else DEFAULT_OUTPUT
    spread = None if state is None else state.prompt_spread
    sd = rounded(spread * prompt) if _positive(spread) else 0.0  # type: ignore[operator]
    return Lengths(rounded(prompt), rounded(max(output, 1.0)), sd)  # type: ignore[arg-type]


def track_spread(
    spec: ServiceSpec, signals: Signals, state: PolicyState, now: float
) -> PolicyState:
    """Fold this snapshot's prompt spread (standard deviation over mean) into the state's
    average. One window of a long-tailed trace can hold a few prompts that dominate its
    spread; the prior follows the mix, not each window's draw."""
    mean, sd = signals.prompt_mean, signals.prompt_sd
    if not _positive(mean) or sd is None or not math.isfinite(sd) or sd < 0:
        return state
    value = max(sd / mean, MIN_SPREAD)  # type: ignore[operator]
    tau = spec.policy.demand.learn_smoothing_s
    at = sampled_at(state.prompt_spread_at, state.last_decision_at, now, spec.policy.stale_after_s)
    spread = smooth(state.prompt_spread, at, value, now, tau)
    return evolve(state, prompt_spread=spread, prompt_spread_at=now)


def track_context(signals: Signals, state: PolicyState) -> PolicyState:
    """Keep this snapshot's running context for the next one's price (None: not reported)."""
    context = signals.decode_step_context
    return evolve(state, decode_context=context if _positive(context) else None)


def capacity(
    spec: ServiceSpec, signals: Signals, state: PolicyState, catalog: GpuCatalog = DEFAULT_CATALOG
) -> Capacity:
    """Capacity at this snapshot's lengths: prior x learned scale, or the configured override."""
    demand = spec.policy.demand
    lens = lengths(signals, state)
    p_scale = state.prefill_capacity_scale or 1.0
    d_scale = state.decode_capacity_scale or 1.0
    budget = spec.slo.tbt_s * demand.decode_tbt_margin
    prefill, _, _ = prior(spec, catalog, lens, budget)
    running, before = signals.decode_step_context, state.decode_context
    if _positive(running) and _positive(before):  # two snapshots in a row (see above)
        lens = replace(lens, context=rounded(min(running, before)))  # type: ignore[arg-type, type-var]
    # A decode instance d_scale x faster than the prior fits the batch the prior allows at a
    # d_scale x looser budget, and steps it d_scale x faster than the prior would.
    _, batch, tps = prior(spec, catalog, lens, rounded(budget * d_scale))
    cap = Capacity(
        prefill * p_scale,
        batch,
        tps * d_scale,
        p_scale,
        d_scale,
        "learned" if state.capacity_learned_at is not None else "prior",
    )
    if demand.prefill_tokens_per_s is not None:
        cap = replace(cap, prefill_tps=demand.prefill_tokens_per_s)
    if demand.decode_batch is not None:
        per_seq = cap.decode_tps / cap.decode_batch
        cap = replace(
            cap, decode_batch=demand.decode_batch, decode_tps=per_seq * demand.decode_batch
        )
    pinned = (demand.prefill_tokens_per_s is not None, demand.decode_batch is not None)
    if all(pinned):
        cap = replace(cap, source="override")
    elif any(pinned):
        own, other = ("prefill", "decode") if pinned[0] else ("decode", "prefill")
        cap = replace(cap, source=f"{own} override, {other} {cap.source}")
    return cap


def learn(
    spec: ServiceSpec,
    signals: Signals,
    state: PolicyState,
    ready_prefill: int,
    ready_decode: int,
    now: float,
    catalog: GpuCatalog = DEFAULT_CATALOG,
) -> PolicyState:
    """Fold this snapshot's measured capacity into the state (no change without usable data)."""
    demand = spec.policy.demand
    if not demand.learn:
        return state
    lens = lengths(signals, state)
    pk, dk = kinds(spec, catalog)
    p_scale, d_scale = state.prefill_capacity_scale, state.decode_capacity_scale
    learned_at = sampled_at(
        state.capacity_learned_at, state.last_decision_at, now, spec.policy.stale_after_s
    )
    learned = False
    busy, tps = signals.prefill_busy, signals.prefill_tps
    if ready_prefill > 0 and _positive(tps) and _positive(busy) and busy >= MIN_BUSY:  # type: ignore[operator]
        measured = tps / (busy * ready_prefill)  # type: ignore[operator]
        expected = prefill_capacity(pk, lens.prompt, busy_share=1.0, sd_input=lens.prompt_sd)
        p_scale = _fold(p_scale, learned_at, measured / expected, now, demand)
        learned = True
    step, at = signals.decode_step_s, step_taken_at(signals, lens, ready_decode)
    if _positive(step) and at is not None:
        batch, ctx = at
        expected = float(dk.step_seconds(batch, batch * ctx))
        d_scale = _fold(d_scale, learned_at, expected / step, now, demand)  # type: ignore[operator]
        learned = True
    if not learned:
        return state
    return evolve(
        state,
        prefill_capacity_scale=p_scale,
        decode_capacity_scale=d_scale,
        capacity_learned_at=now,
    )


def step_taken_at(signals: Signals, lens: Lengths, ready_decode: int) -> tuple[float, float] | None:
    """(sequences per step, KV tokens per sequence) decode's mean step was measured at, as
    the replicas report it. A source that reports only the step falls back on the running
    sequences per ready instance and the arrivals' lengths, which read a slower GPU where
    some instances sit idle or long sequences dominate the batch."""
    batch, ctx = signals.decode_step_batch, signals.decode_step_context
    if _positive(batch) and _positive(ctx):
        return max(1.0, batch), ctx  # type: ignore[return-value, type-var]
    running = signals.decode_running
    if ready_decode > 0 and _positive(running):
        return max(1.0, running / ready_decode), lens.prompt + lens.output / 2  # type: ignore[operator]
    return None


def _fold(
    previous: float | None, previous_at: float | None, ratio: float, now: float, demand
) -> float:
    """The moving average starts at the prior (1.0) one period back, so the first samples,
    taken while instances warm up, cannot replace it outright."""
    lo, hi = SCALE_BOUNDS
    value = min(max(ratio, lo), hi)
    if previous is None or previous_at is None:
        previous, previous_at = 1.0, now - PERIOD_GUESS_S
    return smooth(previous, previous_at, value, now, demand.learn_smoothing_s)


def _positive(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x > 0
