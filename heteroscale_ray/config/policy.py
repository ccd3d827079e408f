"""A service's autoscaling policy: the signal and its targets, the guards, the time table,
the dynamic ratio and demand sizing. Defaults not published by the paper are ours; each field's
description says what it does."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from heteroscale_ray.config.ratio import PdRatio, parse_pd_ratio, unquoted_ratio


class LatencyTier(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    at: float = Field(
        gt=0, description="Fires when observed p99 latency >= at * SLO (e.g. 1.0 = at the SLO)."
    )
    step: float = Field(
        gt=0, le=4, description="Scale-out step as a fraction of current instances (0.1 = +10%)."
    )


class LatencyGuard(BaseModel):
    """Negative feedback on latency: the safety net under proportional control."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    enabled: bool = Field(default=True, description="Turn the latency guard on or off.")
    metric: Literal["tbt", "ttft", "both"] = Field(
        default="tbt",
        description="Latency to watch; TBT is the cleaner signal (paper). Under signal demand: both.",
    )
    tiers: list[LatencyTier] = Field(
        default_factory=lambda: [LatencyTier(at=0.95, step=0.10), LatencyTier(at=1.2, step=0.20)],
        description="Tiers by rising threshold; the highest tier reached applies. Paper's examples: "
        "about +10% on a moderate rise, +20% on a severe SLO breach.",
    )
    cooldown_s: float = Field(
        default=30.0, ge=0, description="Minimum seconds between two latency-guard scale-outs."
    )

    @field_validator("tiers")
    @classmethod
    def _sorted(cls, tiers: list[LatencyTier]) -> list[LatencyTier]:
        ats = [t.at for t in tiers]
        if ats != sorted(ats) or len(set(ats)) != len(ats):
            raise ValueError(f"tiers must have strictly rising 'at' values, got {ats}: sort them")
        return tiers


_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class PeriodicEntry(BaseModel):
    """One row of a time table: fixed targets between ``start`` and ``end`` (UTC, end exclusive)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    start: str = Field(description="'HH:MM' UTC, inclusive.")
    end: str = Field(
        description="'HH:MM' UTC, exclusive; may wrap past midnight; equal to start: all day."
    )
    decode_instances: int = Field(ge=0, description="Decode instances in this window.")
    pd_ratio: str | None = Field(
        default=None, description="P/D ratio in this window, e.g. '1:2'; default: the service's."
    )

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not _HHMM.match(v):
            raise ValueError(f"{v!r} is not a time of day: write it as 'HH:MM', e.g. '08:30'")
        return v

    @field_validator("pd_ratio")
    @classmethod
    def _ratio(cls, v: str | None) -> str | None:
        if v is not None:
            parse_pd_ratio(v)
        return v

    def start_s(self) -> int:
        h, m = self.start.split(":")
        return int(h) * 3600 + int(m) * 60

    def end_s(self) -> int:
        h, m = self.end.split(":")
        return int(h) * 3600 + int(m) * 60


class KvGuard(BaseModel):
    """Decode KV-cache memory pressure as a scale-out trigger (KV-aware signal; ours to define).

    Decode throughput per instance falls when sequences get longer: each holds more KV, fewer
    fit, and new ones wait for memory while decode TPS still looks on target. When the mean
    share of decode KV in use reaches ``high``, decode steps out by ``step`` (prefill follows
    the ratio), and no scale-in happens while it stays there.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    enabled: bool = Field(default=False, description="Turn the KV-pressure guard on or off.")
    high: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Mean decode KV use (0..1) at which decode is short of memory. Set it above "
        "what the service runs at on target (see kv_use in `heteroscale replay` or status).",
    )
    step: float = Field(
        default=0.1, gt=0, le=4, description="Scale-out step as a fraction of decode instances."
    )
    cooldown_s: float = Field(
        default=60.0, ge=0, description="Minimum seconds between two KV-pressure scale-outs."
    )


class DynamicRatio(BaseModel):
    """A P/D ratio that follows workload drift (the paper's future work; ours to define).

    Each tick measures the ratio the load needs, (prefill tokens/s / prefill target) :
    (decode tokens/s / decode target), smooths it over ``smoothing_s`` and switches the
    active ratio to the nearest small-integer ratio only when the smoothed value has moved
    more than ``change_tolerance`` from it. The configured ``pd_ratio`` is where it starts.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    enabled: bool = Field(default=False, description="Let the P/D ratio follow the workload.")
    paired_target_per_instance: float | None = Field(
        default=None,
        gt=0,
        description="Tokens/s one instance of the *other* role should carry at the target load "
        "(prefill cache-miss tokens/s when the signal is decode_tps), from the same stress test "
        "as target_per_instance. Required when enabled.",
    )
    min_ratio: str = Field(
        default="1:8", description="Lowest prefill:decode the ratio may move to, e.g. '1:8'."
    )
    max_ratio: str = Field(
        default="8:1", description="Highest prefill:decode the ratio may move to, e.g. '8:1'."
    )
    max_term: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Largest number on either side of the active ratio (8 allows '3:8', not '5:13').",
    )
    smoothing_s: float = Field(
        default=300.0,
        ge=0,
        description="Time constant of the moving average over measured ratios (0 = none).",
    )
    change_tolerance: float = Field(
        default=0.2,
        ge=0,
        le=4,
        description="Switch only when the smoothed ratio is this far (relative) from the active one.",
    )

    @field_validator("min_ratio", "max_ratio", mode="before")
    @classmethod
    def _quoted(cls, v: object) -> object:
        return unquoted_ratio(v)

    @field_validator("min_ratio", "max_ratio")
    @classmethod
    def _ratio(cls, v: str) -> str:
        parse_pd_ratio(v)
        return v

    @model_validator(mode="after")
    def _usable(self) -> DynamicRatio:
        lo, hi = parse_pd_ratio(self.min_ratio), parse_pd_ratio(self.max_ratio)
        if lo[0] * hi[1] > hi[0] * lo[1]:
            raise ValueError(
                f"min_ratio {self.min_ratio!r} is above max_ratio {self.max_ratio!r}: swap them"
            )
        if self.enabled and self.paired_target_per_instance is None:
            raise ValueError(
                "enabled needs paired_target_per_instance (tokens/s one instance of the other "
                "role carries at target load): set it, e.g. from `heteroscale pd-sweep`"
            )
        return self

    def bounds(self) -> tuple[float, float]:
        """(lowest, highest) prefill/decode as numbers."""
        (a, b), (c, d) = self.bound_ratios()
        return a / b, c / d

    def bound_ratios(self) -> tuple[PdRatio, PdRatio]:
        return parse_pd_ratio(self.min_ratio), parse_pd_ratio(self.max_ratio)


class DemandSpec(BaseModel):
    """How `signal: demand` sizes each role: its arrival-side demand over what one instance
    carries, learned from replica reports with the roofline model as the prior. Every default
    is a property of queueing and of the SLO, not of a trace."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    prefill_utilization: float = Field(
        default=0.8,  # = perf.capacity.PREFILL_UTIL_TARGET
        gt=0,
        le=1,
        description="Busy share prefill instances are sized for; the rest absorbs bursts "
        "(queueing wait grows without bound as this nears 1).",
    )
    decode_tbt_margin: float = Field(
        default=0.7,  # = perf.capacity.DECODE_TBT_MARGIN, the simulator's routing balance's too
        gt=0,
        le=1,
        description="Decode batches are sized so that one step takes at most this share of the "
        "TBT SLO (the rest absorbs KV transfer, admission waits and longer-than-mean contexts).",
    )
    drain_s: float = Field(
        default=60.0,
        gt=0,
        description="A queued backlog is planned to drain within this many seconds.",
    )
    backlog_periods: int = Field(
        default=3,
        ge=1,
        description="A role whose backlog grew this many periods in a row is never held or "
        "scaled in (reason backlog_growth).",
    )
    peak_window_s: float = Field(
        default=900.0,
        ge=0,
        description="Scale-in stabilisation: a role scales in only to its highest need within "
        "this many seconds, as HPA's downscale window does (with its learned burst margin for "
        "five burst horizons after it); with learn_window, only while its traffic has come "
        "back from falls that deep. 900 s keeps traffic that comes and goes to at most four "
        "direction changes an hour. 0 = off.",
    )
    learn_window: bool = Field(
        default=True,
        description="Hold a peak the whole scale-in window only while the role's traffic has "
        "come back from falls that deep (policy/falls.py), else three start-up horizons; past "
        "the window, while it came back after as long a lull to as high a need (an hour's "
        "returns are remembered); needs burst_horizon_s > 0. false = hold every peak the whole "
        "window.",
    )
    predict_recurring: bool = Field(
        default=True,
        description="Size a role for a surge before it comes once its last three surges came "
        "at intervals that agree within two start-up horizons (policy/recurrence.py; reason "
        "surge_due): a batch job's crowd on a timer is over before what its onset asks for "
        "lands. Needs burst_horizon_s > 0 and max_burst_margin > 0. false = react only.",
    )
    burst_horizon_s: float = Field(
        default=120.0,
        ge=0,
        description="Burst headroom: each role is sized for its need plus the rise its need has "
        "shown within this horizon (learned quantile, policy/burst.py): the instance start-up "
        "time plus one control period. The policy times its own instances' start-ups and uses "
        "that once timed (policy/startup.py); this is the prior until then. 0 = off.",
    )
    burst_quantile: float = Field(
        default=0.99,
        gt=0,
        le=1,
        description="Which quantile of the remembered rises the headroom covers: the share of "
        "start-up horizons the fleet should ride out, as the SLO's 99% of requests.",
    )
    max_burst_margin: float = Field(
        default=1.0,
        ge=0,
        description="Cap on the learned burst headroom, as a share of the need (1.0: at most "
        "double it). Lower trades SLO attainment at surge onsets for GPU-hours "
        "(benchmarks/headroom_frontier.py measures the trade); 0 = no headroom, the trend only.",
    )
    learn: bool = Field(
        default=True,
        description="Correct the roofline prior with what replicas report (busy time, step time).",
    )
    learn_smoothing_s: float = Field(
        default=300.0,
        gt=0,
        description="Time constant of the learned correction's moving average.",
    )
    prefill_tokens_per_s: float | None = Field(
        default=None,
        gt=0,
        description="Override: cache-miss prompt tokens/s one prefill instance processes when "
        "busy all the time (replaces the learned value).",
    )
    decode_batch: float | None = Field(
        default=None,
        gt=0,
        description="Override: sequences one decode instance runs within the TBT SLO "
        "(replaces the learned value).",
    )


class TunedAt(BaseModel):
    """The load a throughput target was measured on (`heteroscale tune` prints it). With it, the
    targets follow today's lengths by the capacity model (`policy/transport.py`): a decode
    target tuned on 15k-token prompts is too low for 10k-token ones, and nothing else would
    notice."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    prompt_tokens: float = Field(gt=0, description="Mean prompt tokens of the tuning load.")
    output_tokens: float = Field(gt=0, description="Mean output tokens of the tuning load.")
    prompt_sd: float | None = Field(
        default=None,
        ge=0,
        description="Standard deviation of its prompt tokens; without it, the prompts' spread "
        "is left out of both sides of the comparison.",
    )


# What `signal: demand` assumes where a service does not say; the defaults below it are the
# paper's rule's. Demand counts starting instances as asked for, so a need past them is new
# growth and a scale-out waits for nothing (HPA's scale-up window is 0 too; the guard keeps its
# own cooldown); a scale-in waits out one start-up; the stabilisation window already holds each
# role at its highest need, so the band in is as narrow as the band out (a wider one kept what
# the window proved idle); and each role is guarded on its own latency, prefill on TTFT too.
# These are `general`'s, which the benchmarks measure (README, "Demand-based scaling").
DEMAND_DEFAULTS: dict[str, Any] = {
    "scale_out_cooldown_s": 0.0,
    "scale_in_cooldown_s": 120.0,
    "scale_in_tolerance": 0.1,
}
DEMAND_GUARD_METRIC = "both"


class PolicySpec(BaseModel):
    """How a service scales. Times are seconds; fractions are of the current instance count.
    Under `signal: demand` a field left out takes `DEMAND_DEFAULTS` (and the latency guard's
    metric `both`) where one is given there."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    mode: Literal["metrics", "periodic", "hybrid"] = Field(
        default="metrics",
        description="'metrics': proportional control + latency guard; 'periodic': the time table "
        "only (hold outside it); 'hybrid': the larger of the two.",
    )
    signal: Literal["decode_tps", "prefill_tps", "demand"] = Field(
        default="decode_tps",
        description="'decode_tps'/'prefill_tps': the paper's proportional control on one "
        "throughput signal, split by the fixed P/D ratio (prefill_tps counts cache-miss tokens "
        "only; decode TPS is the paper's production choice). 'demand': each role sized on its "
        "own arrival-side demand over a learned per-instance capacity; the ratio follows.",
    )
    target_per_instance: float | None = Field(
        default=None,
        gt=0,
        description="Tokens/s one instance of the signal's role should carry at the target load "
        "(found by `heteroscale tune`); required for decode_tps/prefill_tps.",
    )
    tuned_at: TunedAt | None = Field(
        default=None,
        description="The mean lengths target_per_instance (and the dynamic ratio's paired "
        "target) were tuned at; when set, both follow today's lengths by the capacity model. "
        "Unset: the targets hold as configured (the paper's rule).",
    )
    demand: DemandSpec = Field(default_factory=DemandSpec)
    scale_out_tolerance: float = Field(
        default=0.10, ge=0, le=1, description="Scale out only when required/current > 1 + this."
    )
    scale_in_tolerance: float = Field(
        default=0.20,
        ge=0,
        le=1,
        description="Scale in only when required/current < 1 - this (0.1 under signal demand).",
    )
    scale_out_cooldown_s: float = Field(
        default=30.0,
        ge=0,
        description="Minimum seconds after any scaling before a scale-out (0 under signal demand).",
    )
    scale_in_cooldown_s: float = Field(
        default=300.0,
        ge=0,
        description="Minimum seconds after any scaling before a scale-in (120 under signal demand).",
    )
    scale_out_damping: float = Field(
        default=1.0, gt=0, le=1, description="Share of the gap closed per scale-out (1 = all)."
    )
    scale_in_damping: float = Field(
        default=0.5, gt=0, le=1, description="Share of the gap closed per scale-in (>= 1 instance)."
    )
    stale_after_s: float = Field(
        default=60.0, gt=0, description="Signals older than this count as missing (never scale in)."
    )
    gpu_budget: int | None = Field(
        default=None, ge=1, description="Optional cap on GPUs this service may hold (both roles)."
    )
    latency_guard: LatencyGuard = Field(default_factory=LatencyGuard)
    dynamic_ratio: DynamicRatio = Field(default_factory=DynamicRatio)
    kv_guard: KvGuard = Field(default_factory=KvGuard)
    periodic: list[PeriodicEntry] = Field(
        default_factory=list, description="Time table for 'periodic' and 'hybrid' modes."
    )

    @model_validator(mode="before")
    @classmethod
    def _demand_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("signal") != "demand":
            return data
        data = {**DEMAND_DEFAULTS, **data}
        guard = data.get("latency_guard")
        if guard is None:
            data["latency_guard"] = {"metric": DEMAND_GUARD_METRIC}
        elif isinstance(guard, dict) and "metric" not in guard:
            data["latency_guard"] = {**guard, "metric": DEMAND_GUARD_METRIC}
        return data

    @model_validator(mode="after")
    def _periodic_needs_table(self) -> PolicySpec:
        if self.signal != "demand" and self.target_per_instance is None:
            raise ValueError(
                f"signal '{self.signal}' needs target_per_instance (tokens/s one instance carries "
                "at target load): set it (`heteroscale tune` finds it), or use signal 'demand'"
            )
        if self.signal == "demand" and self.tuned_at is not None:
            raise ValueError(
                "signal 'demand' learns what an instance carries at today's lengths, so it has "
                "no tuned target to carry over: remove tuned_at"
            )
        if self.signal == "demand" and self.dynamic_ratio.enabled:
            raise ValueError(
                "signal 'demand' sizes each role on its own, so the ratio already follows the "
                "load: turn dynamic_ratio off"
            )
        if self.mode in ("periodic", "hybrid") and not self.periodic:
            raise ValueError(
                f"mode '{self.mode}' needs a 'periodic' time table: add entries or use mode 'metrics'"
            )
        if self.mode == "periodic" and self.dynamic_ratio.enabled:
            raise ValueError(
                "dynamic_ratio needs measured load, which mode 'periodic' ignores: use mode "
                "'hybrid' or 'metrics', or set the ratio per time-table row"
            )
        return self
