"""`ReplicaStats`: what one replica reports, the typed boundary between serving and control plane.

A replica builds one with `ReplicaMetrics.snapshot()` and pushes it (as the dataclass) to the
metrics hub; the hub stores it, the policy engine reads it back and `build_observations` reads
its attributes. Nothing on that path turns it into a dict.

A dataclass does not check its field types at run time, and a report crosses process
boundaries, so `stats_problem` states what would make a report unusable (wrong type, unknown
role, a NaN rate, ...). The hub and `build_observations` drop such a report with a log line:
it counts as missing, which makes the policy hold, and never raises.

`IngressLoad` is the ingress's counterpart: what arrives per service (prompt tokens/s and
requests/s), measured before any queue or admission check, so it keeps rising when the
replicas fall behind. `ingress_problem` says when one is unusable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real

from heteroscale_ray.policy.arrival_bursts import BURST_SPANS_S, usable

WINDOW_S = 10.0
ROLES = ("prefill", "decode")


@dataclass
class ReplicaStats:
    """One replica's view over the last `window_s` seconds (rates) plus totals and gauges."""

    replica_id: str
    app_name: str
    service: str
    dg_id: str
    role: str  # "prefill" | "decode"
    gpu_type: str
    node_id: str = ""
    node_labels: dict[str, str] = field(default_factory=dict)
    emulated: bool = False
    time_scale: float = 1.0
    window_s: float = WINDOW_S
    timestamp: float = 0.0  # wall time (epoch seconds) of the snapshot
    prefill_tps: float = 0.0  # cache-miss tokens only
    prefill_hit_tps: float = 0.0
    decode_tps: float = 0.0
    ttft_p50: float | None = None
    ttft_p90: float | None = None
    ttft_p99: float | None = None
    tbt_p50: float | None = None
    tbt_p90: float | None = None
    tbt_p99: float | None = None
    busy_fraction: float = 0.0
    compute_fraction: float = 0.0
    kv_used_tokens: int = 0
    kv_capacity_tokens: int = 0
    kv_use: float = 0.0
    queue_length: int = 0
    running: int = 0
    emulation_overruns: int = 0
    steps: int = 0
    requests_total: int = 0
    kv_handoff_bytes_total: int = 0
    kv_handoff_seconds_total: float = 0.0
    kv_handoff_count: int = 0
    # Prefill: its queue and the two parts of TTFT it owns (issue 10: demand that cannot hide,
    # a latency guard on the part more instances shorten).
    queued_prompt_tokens: int = 0  # prompt tokens of the requests waiting for the GPU
    prefill_tokens_per_busy_s: float | None = None  # prompt tokens per busy second (measured)
    prefill_queue_s: float | None = None  # queued work: queued tokens / that rate, seconds
    # the most queued within the window (priced the same way): prompts that land together
    # queue and drain between reports
    prefill_queue_peak_s: float | None = None
    ttft_wait_p50: float | None = None  # ingress arrival -> prefill compute start
    ttft_wait_p90: float | None = None
    ttft_wait_p99: float | None = None
    ttft_service_p50: float | None = None  # prefill compute of one prompt (emulated wait incl.)
    ttft_service_p90: float | None = None
    ttft_service_p99: float | None = None
    # Decode: the batch over time, its pure step time, and what finished requests produced.
    running_mean: float = 0.0  # sequences in the batch, time-mean over the window (idle = 0)
    step_mean_s: float | None = None  # mean batched step time (compute + emulated GPU time)
    step_batch_mean: float | None = None  # sequences per step, mean over those steps
    step_context_mean: float | None = None  # KV tokens per sequence at those steps
    # The step each token was made at, mean over the window's tokens: a batch that spikes
    # between reports (requests landing together) weighs by the tokens it made
    step_token_mean_s: float | None = None
    finished_requests: int = 0  # requests that finished within the window
    output_tokens_mean: float | None = None  # their mean output tokens


@dataclass(frozen=True)
class IngressLoad:
    """What arrives at the ingress for one service over the ingress's window."""

    prompt_tokens_per_s: float  # all prompt tokens, cache hits included
    requests_per_s: float | None = None  # None: the reporter does not count requests
    # Squared prompt tokens per second (the sum over requests of tokens**2, per second):
    # additive over ingress replicas like the two above, it gives the prompts' spread.
    prompt_tokens_sq_per_s: float | None = None
    # Prompt tokens handed to the prefill handle that no replica has taken yet: Serve holds a
    # call while every replica is at `max_ongoing_requests`, where no replica's queue shows it.
    held_prompt_tokens: float | None = None
    # The most prompt tokens arriving within any span of each of BURST_SPANS_S seconds of the
    # window (policy/arrival_bursts.py), cache hits included. Summed over ingress replicas it
    # bounds the whole service's from above (their bursts need not coincide).
    prompt_bursts: tuple[float, ...] | None = None

    @property
    def prompt_mean(self) -> float | None:
        """Mean prompt tokens of arriving requests; None when none arrived (or not counted)."""
        if self.requests_per_s is None or self.requests_per_s <= 0:
            return None
        return self.prompt_tokens_per_s / self.requests_per_s

    @property
    def prompt_sd(self) -> float | None:
        """Standard deviation of arriving prompt tokens; None when not reported."""
        mean = self.prompt_mean
        if mean is None or self.prompt_tokens_sq_per_s is None:
            return None
        return math.sqrt(max(self.prompt_tokens_sq_per_s / self.requests_per_s - mean**2, 0.0))  # type: ignore[operator]


# The numbers the control plane adds up or averages: each must be a finite number.
_REQUIRED_NUMBERS = (
    "timestamp",
    "busy_fraction",
    "compute_fraction",
    "queue_length",
    "running",
    "prefill_tps",
    "prefill_hit_tps",
    "decode_tps",
    "kv_use",
    "queued_prompt_tokens",
    "running_mean",
    "finished_requests",
    # exported as counters on /metrics, where one non-number failed the whole page
    "steps",
    "requests_total",
    "emulation_overruns",
    "kv_handoff_count",
    "kv_handoff_bytes_total",
    "kv_handoff_seconds_total",
)
# Strings the exports label series with.
_LABELS = ("replica_id", "app_name", "service", "dg_id", "gpu_type")
# None until a window holds a sample (or the value is unknown), else a finite number.
_OPTIONAL_NUMBERS = (
    "ttft_p99",
    "tbt_p99",
    "prefill_tokens_per_busy_s",
    "prefill_queue_s",
    "prefill_queue_peak_s",
    "ttft_wait_p99",
    "ttft_service_p99",
    "step_mean_s",
    "step_batch_mean",
    "step_context_mean",
    "step_token_mean_s",
    "output_tokens_mean",
)
# The demand and latency-split numbers the control plane adds up: a negative one is a bug.
_NON_NEGATIVE = (
    "queued_prompt_tokens",
    "running_mean",
    "finished_requests",
    *_OPTIONAL_NUMBERS,
)


def _finite(value: object) -> bool:
    return isinstance(value, Real) and math.isfinite(value)


def stats_problem(report: object) -> str | None:
    """Why `report` cannot be used by the control plane's sums, or None if it can."""
    if not isinstance(report, ReplicaStats):
        return f"not a ReplicaStats but a {type(report).__name__}"
    for name in _LABELS:
        if not isinstance(getattr(report, name), str):
            return f"{name}={getattr(report, name)!r} is not a string"
    if report.role not in ROLES:
        return f"unknown role {report.role!r}"
    for name in _REQUIRED_NUMBERS:
        if not _finite(getattr(report, name)):
            return f"{name}={getattr(report, name)!r} is not a finite number"
    for name in _OPTIONAL_NUMBERS:
        value = getattr(report, name)
        if value is not None and not _finite(value):
            return f"{name}={value!r} is neither None nor a finite number"
    for name in _NON_NEGATIVE:
        value = getattr(report, name)
        if value is not None and value < 0:
            return f"{name}={value!r} is negative"
    return None


def ingress_problem(load: object) -> str | None:
    """Why `load` cannot be used as an ingress report, or None if it can."""
    if not isinstance(load, IngressLoad):
        return f"not an IngressLoad but a {type(load).__name__}"
    for name in (
        "prompt_tokens_per_s",
        "requests_per_s",
        "prompt_tokens_sq_per_s",
        "held_prompt_tokens",
    ):
        value = getattr(load, name)
        if value is None and name != "prompt_tokens_per_s":
            continue
        if not _finite(value) or value < 0:
            return f"{name}={value!r} is not a finite number >= 0"
    if load.prompt_bursts is not None and not usable(load.prompt_bursts):
        return (
            f"prompt_bursts={load.prompt_bursts!r} is not a tuple of {len(BURST_SPANS_S)} "
            "finite numbers >= 0"
        )
    return None
