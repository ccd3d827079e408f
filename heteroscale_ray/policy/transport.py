"""The paper's tuned targets, carried to today's lengths by the capacity model.

`heteroscale tune` (Algorithm 1) measures the decode tokens/s one instance carries within the
SLO, and the prefill tokens/s its partner does, on one load. On another load the same
instance carries a different amount: a decode instance bound by KV memory fits more sequences
when prompts are shorter, and prefill slows as attention's quadratic share grows with the
prompt. A target tuned on one trace then over- or under-sizes every other one, and nothing
notices. With `policy.tuned_at` (the mean lengths the target was measured on), each target is
scaled by the roofline model's capacity at today's lengths over its capacity at the tuned
ones: the operating point the operator chose (how close to the SLO, how much headroom) is
kept, and only what the hardware does with today's requests changes.

A fixed P/D ratio is carried the same way: the prefill instances a decode instance needs
grow with the prompt tokens per decode token and with what a decode instance carries, and
shrink with what a prefill instance carries. A 7:1 ratio tuned on 15k-token prompts with
150-token answers becomes 1:8 for 1k-token prompts with 1.7k-token answers, where held at 7:1
it asked for 650 prefill instances while 20 were busy, and at prefill's max capped decode
below its need.

The learned correction (`policy/capacity.py`) scales both sides alike and cancels, so the
prior alone carries the ratio. The ratio is averaged over `demand.learn_smoothing_s`, as the
learned correction is: a window's few long prompts move it by one period's weight. Pure: no
clock, no I/O; time comes in as `now`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from heteroscale_ray.config import DEFAULT_CATALOG, GpuCatalog, PdRatio, ServiceSpec, TunedAt
from heteroscale_ray.policy.capacity import SCALE_BOUNDS, Lengths, lengths, prior, rounded
from heteroscale_ray.policy.dynamic_ratio import sampled_at, smooth
from heteroscale_ray.policy.types import PolicyState, Signals, evolve


@dataclass(frozen=True)
class Transport:
    """How much more one prefill and one decode instance carry today than at the tuned load
    (averaged), and the lengths of the latest snapshot folded in."""

    prefill: float
    decode: float
    work: float  # prompt tokens per decode token, today over tuned
    today: Lengths | None
    tuned: Lengths

    def ratio(self, tuned_ratio: PdRatio) -> float:
        """The tuned prefill:decode, carried: prefill instances per decode instance today."""
        p, d = tuned_ratio
        return p / d * self.work * self.decode / self.prefill

    def describe(self, target: float, carried: float) -> str:
        today = (
            "the last lengths seen"
            if self.today is None
            else f"{self.today.prompt:,.0f}/{self.today.output:,.0f} prompt/output tokens"
        )
        return (
            f"target {target:,.0f} -> {carried:,.0f} tok/s/instance at {today} "
            f"(tuned at {self.tuned.prompt:,.0f}/{self.tuned.output:,.0f})"
        )


def track_transport(
    spec: ServiceSpec,
    signals: Signals,
    state: PolicyState,
    now: float,
    fresh: bool = True,
    catalog: GpuCatalog = DEFAULT_CATALOG,
) -> tuple[Transport | None, PolicyState]:
    """Fold this snapshot's capacity-today-over-tuned into the state's average and return it.
    None without `tuned_at`, or before any load was seen (the targets hold as configured);
    a stale or empty snapshot keeps the last average."""
    tuned_at = spec.policy.tuned_at
    if tuned_at is None:
        return None, state
    tuned = _tuned_lengths(tuned_at)
    today = None
    if fresh and _seen(signals.prompt_mean) and _seen(signals.output_mean):
        today = lengths(signals, state)
        if tuned_at.prompt_sd is None:  # like with like: the spread on both sides or neither
            today = Lengths(today.prompt, today.output)
        budget = spec.slo.tbt_s * spec.policy.demand.decode_tbt_margin
        p_now, _, d_now = prior(spec, catalog, today, budget)
        p_then, _, d_then = prior(spec, catalog, tuned, budget)
        work = _per_decode_token(today) / _per_decode_token(tuned)
        tau = spec.policy.demand.learn_smoothing_s
        at = sampled_at(state.carried_at, state.last_decision_at, now, spec.policy.stale_after_s)
        state = evolve(
            state,
            carried_prefill=smooth(state.carried_prefill, at, _bounded(p_now / p_then), now, tau),
            carried_decode=smooth(state.carried_decode, at, _bounded(d_now / d_then), now, tau),
            carried_work=smooth(state.carried_work, at, min(max(work, 1e-3), 1e3), now, tau),
            carried_at=now,
        )
    factors = (state.carried_prefill, state.carried_decode, state.carried_work)
    if any(f is None for f in factors):
        return None, state
    return Transport(*factors, today, tuned), state  # type: ignore[arg-type]


def carried(spec: ServiceSpec, move: Transport | None) -> ServiceSpec:
    """`spec` with its targets carried to today's lengths (as is without a transport)."""
    if move is None:
        return spec
    policy = spec.policy
    by_signal = move.decode if policy.signal == "decode_tps" else move.prefill
    by_pair = move.prefill if policy.signal == "decode_tps" else move.decode
    update: dict[str, object] = {"target_per_instance": policy.target_per_instance * by_signal}  # type: ignore[operator]
    paired = policy.dynamic_ratio.paired_target_per_instance
    if paired is not None:
        update["dynamic_ratio"] = policy.dynamic_ratio.model_copy(
            update={"paired_target_per_instance": paired * by_pair}
        )
    return spec.model_copy(update={"policy": policy.model_copy(update=update)})


def carried_target(spec: ServiceSpec, state: PolicyState | None) -> float | None:
    """The signal's target as the last decision carried it (None: held as configured)."""
    policy = spec.policy
    if policy.tuned_at is None or state is None or policy.target_per_instance is None:
        return None
    factor = state.carried_decode if policy.signal == "decode_tps" else state.carried_prefill
    return None if factor is None else policy.target_per_instance * factor


def _per_decode_token(lens: Lengths) -> float:
    """Prompt tokens per token decode makes (prefill makes each request's first)."""
    return lens.prompt / max(lens.output - 1.0, 1.0)


def _tuned_lengths(tuned_at: TunedAt) -> Lengths:
    return Lengths(
        rounded(tuned_at.prompt_tokens),
        rounded(tuned_at.output_tokens),
        rounded(tuned_at.prompt_sd or 0.0),
    )


def _bounded(x: float) -> float:
    lo, hi = SCALE_BOUNDS
    return min(max(x, lo), hi)


def _seen(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x > 0
