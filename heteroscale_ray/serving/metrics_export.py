"""Prometheus exposition of per-replica stats and of the ingress's offered load.

Why apart from metrics.py: measuring (windows, `ReplicaMetrics`) and exporting are separate
concerns; this module owns the catalogue of exported families (`REPLICA_METRICS`) and the two
ways they leave a process: `render_prometheus()` renders many replicas' `ReplicaStats` as
Prometheus text (the ingress serves it at GET /metrics) and `RayMetricsExporter` mirrors one
replica's stats into Ray's metrics agent (`ray.util.metrics`, exported with a ``ray_`` prefix).
`render_arrivals()` renders the ingress's offered load per service (label service).

Prometheus conventions (`promtool check metrics` passes on the ingress's text): counters end
in `_total`, gauges never do, units are whole words (`_seconds`, `_per_second`), latency
distributions are histograms (`_seconds_bucket/_sum/_count`, see request_metrics.py), no gauge
has a `quantile` label, and each replica exports only its own role's families. Names follow
vLLM's where the meaning is the same (`vllm:num_requests_running` ->
`heteroscale_num_requests_running`, ...); the README's "Replica metrics" table lists them all.

Per replica (labels service, dg, role, gpu_type, replica): `REPLICA_METRICS` below, each with
the roles that export it. A value that is unknown (no sample in the window) is left out rather
than exported as 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from heteroscale_ray.policy.arrival_bursts import BURST_SPANS_S
from heteroscale_ray.serving.replica_stats import IngressLoad, ReplicaStats

LABELS = ("service", "dg", "role", "gpu_type", "replica")


def render_arrivals(loads: Mapping[str, IngressLoad | float]) -> str:
    """Prometheus text for the ingress's offered load per service (a bare float: tokens/s)."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    tokens = Gauge(
        "heteroscale_prompt_arrival_tokens_per_second",
        "Prompt tokens/s arriving at the ingress (offered prefill load, cache hits included)",
        ["service"],
        registry=registry,
    )
    requests = Gauge(
        "heteroscale_request_arrivals_per_second",
        "Requests/s arriving at the ingress",
        ["service"],
        registry=registry,
    )
    prompt_mean = Gauge(
        "heteroscale_arrival_prompt_tokens_mean",
        "Mean prompt tokens of the requests arriving at the ingress",
        ["service"],
        registry=registry,
    )
    held = Gauge(
        "heteroscale_prefill_held_prompt_tokens",
        "Prompt tokens the ingress handed to the prefill handle that no replica has taken yet",
        ["service"],
        registry=registry,
    )
    bursts = Gauge(
        "heteroscale_arrival_prompt_burst_tokens",
        "The most prompt tokens arriving at the ingress within any span_s seconds of its window",
        ["service", "span_s"],
        registry=registry,
    )
    for name, load in sorted(loads.items()):
        if not isinstance(load, IngressLoad):
            load = IngressLoad(float(load))
        tokens.labels(name).set(load.prompt_tokens_per_s)
        if load.prompt_bursts is not None:
            for span, most in zip(BURST_SPANS_S, load.prompt_bursts, strict=True):
                bursts.labels(name, f"{span:g}").set(most)
        if load.held_prompt_tokens is not None:
            held.labels(name).set(load.held_prompt_tokens)
        if load.requests_per_s is not None:
            requests.labels(name).set(load.requests_per_s)
        if load.prompt_mean is not None:
            prompt_mean.labels(name).set(load.prompt_mean)
    return generate_latest(registry).decode()


@dataclass(frozen=True)
class ReplicaMetric:
    """One exported per-replica family: `heteroscale_{name}` from a `ReplicaStats` attribute."""

    name: str  # after "heteroscale_"; a counter's name ends in "_total"
    attr: str
    kind: str  # "gauge" | "counter"
    roles: tuple[str, ...]
    help: str


_BOTH = ("prefill", "decode")
_P = ("prefill",)
_D = ("decode",)
REPLICA_METRICS: tuple[ReplicaMetric, ...] = (
    # both roles
    ReplicaMetric(
        "num_requests_running", "running", "gauge", _BOTH,
        "Requests running: prompts being prefilled (0/1) or sequences in the decode batch",
    ),
    ReplicaMetric(
        "num_requests_waiting", "queue_length", "gauge", _BOTH,
        "Requests waiting: for the prefill GPU, or for decode admission (KV fetched)",
    ),
    ReplicaMetric(
        "busy_fraction", "busy_fraction", "gauge", _BOTH,
        "Share of wall time inside (emulated) steps over the window: the GPU-utilisation analogue",
    ),
    ReplicaMetric(
        "compute_fraction", "compute_fraction", "gauge", _BOTH,
        "Model FLOP/s over the emulated GPU's peak over the window: the SM-activity analogue",
    ),
    ReplicaMetric(
        "engine_steps_total", "steps", "counter", _BOTH,
        "Engine steps run (prefills, or batched decode steps)",
    ),
    ReplicaMetric(
        "emulation_overruns_total", "emulation_overruns", "counter", _BOTH,
        "Steps whose real compute exceeded the emulated step time",
    ),
    # prefill
    ReplicaMetric(
        "prefill_tokens_per_second", "prefill_tps", "gauge", _P,
        "Cache-miss prompt tokens prefilled per second over the window",
    ),
    ReplicaMetric(
        "prefill_cache_hit_tokens_per_second", "prefill_hit_tps", "gauge", _P,
        "Prompt tokens served from the prefix cache per second over the window",
    ),
    ReplicaMetric(
        "prefill_requests_total", "requests_total", "counter", _P,
        "Prompts prefilled",
    ),
    ReplicaMetric(
        "prefill_queued_prompt_tokens", "queued_prompt_tokens", "gauge", _P,
        "Prompt tokens of the requests waiting for the prefill GPU",
    ),
    ReplicaMetric(
        "prefill_tokens_per_busy_second", "prefill_tokens_per_busy_s", "gauge", _P,
        "Measured prompt tokens (cache hits included) per busy second",
    ),
    ReplicaMetric(
        "prefill_queue_seconds", "prefill_queue_s", "gauge", _P,
        "Queued prefill work: queued prompt tokens over the measured prefill rate",
    ),
    ReplicaMetric(
        "prefill_queue_seconds_window_peak", "prefill_queue_peak_s", "gauge", _P,
        "The most prefill work queued at once within the window, priced the same way",
    ),
    ReplicaMetric(
        "ttft_wait_p99_seconds", "ttft_wait_p99", "gauge", _P,
        "p99 over the window of ingress arrival -> prefill compute start (the TTFT guard's wait)",
    ),
    ReplicaMetric(
        "ttft_service_p99_seconds", "ttft_service_p99", "gauge", _P,
        "p99 over the window of one prompt's prefill compute time",
    ),
    # decode
    ReplicaMetric(
        "decode_tokens_per_second", "decode_tps", "gauge", _D,
        "Tokens generated per second over the window",
    ),
    ReplicaMetric(
        "kv_cache_usage_perc", "kv_use", "gauge", _D,
        "KV-cache usage: reserved KV tokens over capacity, 0..1 (vLLM's kv_cache_usage_perc)",
    ),
    ReplicaMetric(
        "running_sequences_mean", "running_mean", "gauge", _D,
        "Sequences in the decode batch, time-mean over the window",
    ),
    ReplicaMetric(
        "decode_step_seconds_mean", "step_mean_s", "gauge", _D,
        "Mean batched decode step time over the window (TBT without queueing)",
    ),
    ReplicaMetric(
        "decode_step_batch_mean", "step_batch_mean", "gauge", _D,
        "Sequences per decode step, mean over the window's steps (the batch the step time is at)",
    ),
    ReplicaMetric(
        "decode_step_context_tokens_mean", "step_context_mean", "gauge", _D,
        "KV tokens per sequence at the window's decode steps",
    ),
    ReplicaMetric(
        "decode_step_seconds_token_mean", "step_token_mean_s", "gauge", _D,
        "The decode step each token of the window was made at, mean over those tokens",
    ),
    ReplicaMetric(
        "finished_requests_in_window", "finished_requests", "gauge", _D,
        "Requests that finished decoding within the window",
    ),
    ReplicaMetric(
        "output_tokens_mean", "output_tokens_mean", "gauge", _D,
        "Mean generated tokens of the requests finished within the window",
    ),
    ReplicaMetric(
        "ttft_p99_seconds", "ttft_p99", "gauge", _D,
        "p99 over the window of time to first token, seen at this decode replica",
    ),
    ReplicaMetric(
        "tbt_p99_seconds", "tbt_p99", "gauge", _D,
        "p99 over the window of time between tokens at this decode replica",
    ),
    ReplicaMetric(
        "kv_handoffs_total", "kv_handoff_count", "counter", _D,
        "KV caches received from prefill through the object store",
    ),
    ReplicaMetric(
        "kv_handoff_bytes_total", "kv_handoff_bytes_total", "counter", _D,
        "KV bytes received from prefill",
    ),
    ReplicaMetric(
        "kv_handoff_seconds_total", "kv_handoff_seconds_total", "counter", _D,
        "Time spent receiving KV from prefill",
    ),
)  # fmt: skip


def _labels(stats: ReplicaStats) -> dict[str, str]:
    return {
        "service": stats.service,
        "dg": stats.dg_id,
        "role": stats.role,
        "gpu_type": stats.gpu_type,
        "replica": stats.replica_id,
    }


def _values(stats: ReplicaStats) -> Iterable[tuple[ReplicaMetric, float]]:
    """The role's families with a known value (None: unknown, left out rather than 0)."""
    for m in REPLICA_METRICS:
        if stats.role in m.roles and (value := getattr(stats, m.attr, None)) is not None:
            yield m, float(value)


class RayMetricsExporter:
    """Mirrors a replica's stats into Ray's metrics agent (Prometheus scrape of the Ray nodes,
    names prefixed `ray_`): its role's families only; counters through `Counter.inc` with the
    increase since the last export (Ray appends `_total` to a counter's name itself)."""

    def __init__(self) -> None:
        from ray.util import metrics

        self._gauges: dict[str, Any] = {}
        self._counters: dict[str, Any] = {}
        for m in REPLICA_METRICS:
            if m.kind == "counter":
                name = f"heteroscale_{m.name.removesuffix('_total')}"
                self._counters[m.name] = metrics.Counter(name, m.help, tag_keys=LABELS)
            else:
                self._gauges[m.name] = metrics.Gauge(
                    f"heteroscale_{m.name}", m.help, tag_keys=LABELS
                )
        self._last: dict[tuple[str, str], float] = {}

    def export(self, stats: ReplicaStats) -> None:
        tags = _labels(stats)
        for m, value in _values(stats):
            if m.kind == "gauge":
                self._gauges[m.name].set(value, tags=tags)
                continue
            key = (stats.replica_id, m.name)
            delta = value - self._last.get(key, 0.0)
            self._last[key] = value
            if delta > 0:
                self._counters[m.name].inc(delta, tags=tags)


class _ReplicaCollector:
    """prometheus_client collector over a fixed list of `ReplicaStats`."""

    def __init__(self, stats_list: Iterable[ReplicaStats]) -> None:
        self._stats = list(stats_list)

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for m in REPLICA_METRICS:
            if m.kind == "counter":
                fam: Any = CounterMetricFamily(f"heteroscale_{m.name}", m.help, labels=LABELS)
            else:
                fam = GaugeMetricFamily(f"heteroscale_{m.name}", m.help, labels=LABELS)
            for stats in self._stats:
                if stats.role not in m.roles:
                    continue
                value = getattr(stats, m.attr, None)
                if value is not None:
                    fam.add_metric([_labels(stats)[k] for k in LABELS], float(value))
            yield fam


def render_prometheus(stats_list: Iterable[ReplicaStats]) -> str:
    """Prometheus text exposition of many replicas' stats, each with its role's families."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(_ReplicaCollector(stats_list))  # type: ignore[arg-type]
    return generate_latest(registry).decode()
