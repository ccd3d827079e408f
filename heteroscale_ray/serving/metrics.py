"""Per-replica serving metrics: the eight signals the paper studies, over a sliding window.

A replica records events as they happen (tokens, latency samples, busy intervals, FLOPs) and
`ReplicaMetrics.snapshot()` turns them into a `ReplicaStats` (serving/replica_stats.py) the
control plane polls. The same numbers go to Prometheus in two ways: Ray's metrics agent
(`ray.util.metrics`, exported with a ``ray_`` prefix) from inside each replica, and
`render_prometheus()` which renders many replicas' `ReplicaStats` as Prometheus text (the
ingress serves it at GET /metrics). Time comes from an injected `Clock` (default: the wall
clock), so tests move it with `VirtualClock.advance` instead of sleeping.

Prometheus conventions (`promtool check metrics` passes on the ingress's text): counters end
in `_total`, gauges never do, units are whole words (`_seconds`, `_per_second`), latency
distributions are histograms (`_seconds_bucket/_sum/_count`), no gauge has a `quantile` label,
and each replica exports only its own role's families. Names follow vLLM's where the meaning is
the same (`vllm:num_requests_running` -> `heteroscale_num_requests_running`, ...); the README's
"Replica metrics" table lists them all.

Per replica (`render_prometheus`, `RayMetricsExporter`; labels service, dg, role, gpu_type,
replica): `REPLICA_METRICS` below, each with the roles that export it.
Per request at the ingress (`RequestMetrics`; label service): token and request counters and
the TTFT / inter-token / end-to-end latency histograms, measured where the client sees them.
Offered load at the ingress (`render_arrivals`; label service).
A value that is unknown (no sample in the window) is left out rather than exported as 0.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from heteroscale_ray.clock import Clock, WallClock
from heteroscale_ray.serving.replica_stats import WINDOW_S, IngressLoad, ReplicaStats

__all__ = [
    "REPLICA_METRICS",
    "WINDOW_S",
    "ArrivalMeter",
    "IngressLoad",
    "RayMetricsExporter",
    "ReplicaMetric",
    "RequestMetrics",
    "ReplicaMetrics",
    "ReplicaStats",
    "render_arrivals",
    "render_prometheus",
]

LABELS = ("service", "dg", "role", "gpu_type", "replica")


class _Window:
    """(time, value) samples kept for `window_s`; sums, rates and percentiles over them.

    Times are the clock's monotonic readings; `now` arguments must come from the same clock.
    """

    def __init__(self, window_s: float, maxlen: int = 20000, clock: Clock | None = None) -> None:
        self.window_s = window_s
        self.clock = clock or WallClock()
        self._items: deque[tuple[float, float]] = deque(maxlen=maxlen)

    def add(self, value: float, now: float | None = None) -> None:
        self._items.append((self.clock.monotonic() if now is None else now, value))

    def _prune(self, now: float) -> None:
        while self._items and now - self._items[0][0] > self.window_s:
            self._items.popleft()

    def sum(self, now: float) -> float:
        self._prune(now)
        return float(sum(v for _, v in self._items))

    def count(self, now: float) -> int:
        self._prune(now)
        return len(self._items)

    def mean(self, now: float) -> float | None:
        self._prune(now)
        return self.sum(now) / len(self._items) if self._items else None

    def percentiles(self, now: float, qs: tuple[float, ...]) -> list[float | None]:
        self._prune(now)
        if not self._items:
            return [None] * len(qs)
        arr = np.fromiter((v for _, v in self._items), dtype=np.float64)
        return [float(x) for x in np.percentile(arr, qs)]


class ArrivalMeter:
    """Requests and their prompt tokens arriving per service at the ingress, before any queue
    or admission check: the offered load, which keeps rising when prefill (or the ingress)
    falls behind. Each window sample is one request (its prompt tokens)."""

    def __init__(self, window_s: float = WINDOW_S, clock: Clock | None = None) -> None:
        self.window_s = window_s
        self.clock = clock or WallClock()
        self.started = self.clock.monotonic()
        self._by_service: dict[str, _Window] = {}

    def add(self, service: str, tokens: int) -> None:
        """One request of `service` with `tokens` prompt tokens has arrived."""
        window = self._by_service.setdefault(service, _Window(self.window_s, clock=self.clock))
        window.add(tokens)

    def _span(self, now: float) -> float:
        return max(min(self.window_s, now - self.started), 1e-3)

    def rates(self) -> dict[str, float]:
        """Prompt tokens/s per service over min(window, uptime)."""
        now = self.clock.monotonic()
        return {name: w.sum(now) / self._span(now) for name, w in self._by_service.items()}

    def loads(self) -> dict[str, IngressLoad]:
        """Prompt tokens/s and requests/s per service over min(window, uptime)."""
        now = self.clock.monotonic()
        span = self._span(now)
        return {
            name: IngressLoad(w.sum(now) / span, w.count(now) / span)
            for name, w in self._by_service.items()
        }


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
    for name, load in sorted(loads.items()):
        if not isinstance(load, IngressLoad):
            load = IngressLoad(float(load))
        tokens.labels(name).set(load.prompt_tokens_per_s)
        if load.requests_per_s is not None:
            requests.labels(name).set(load.requests_per_s)
        if load.prompt_mean is not None:
            prompt_mean.labels(name).set(load.prompt_mean)
    return generate_latest(registry).decode()


class ReplicaMetrics:
    """Event recorder for one replica; cheap to call from the hot path (no I/O, no locks)."""

    def __init__(
        self,
        identity: dict[str, Any],
        peak_flops: float,
        window_s: float = WINDOW_S,
        clock: Clock | None = None,
    ) -> None:
        self.identity = identity  # the ReplicaStats identity fields (replica_id, service, ...)
        self.peak_flops = peak_flops
        self.window_s = window_s
        self.clock = c = clock or WallClock()
        self.started = c.monotonic()
        self._miss_tokens = _Window(window_s, clock=c)
        self._hit_tokens = _Window(window_s, clock=c)
        self._decode_tokens = _Window(window_s, clock=c)
        self._busy = _Window(window_s, clock=c)
        self._flops = _Window(window_s, clock=c)
        self._ttft = _Window(window_s, maxlen=5000, clock=c)
        self._tbt = _Window(window_s, maxlen=20000, clock=c)
        self._prefill_tokens = _Window(window_s, clock=c)  # hits + misses: what busy_s did
        self._ttft_wait = _Window(window_s, maxlen=5000, clock=c)
        self._ttft_service = _Window(window_s, maxlen=5000, clock=c)
        self._step_s = _Window(window_s, clock=c)
        self._batch_time = _Window(window_s, clock=c)  # batch x step seconds
        self._outputs = _Window(window_s, maxlen=5000, clock=c)
        # Last measured prompt tokens per busy second, kept past the window so a replica that
        # sat idle still prices a new queue; `seed_prefill_rate` sets a prior before any sample.
        self._tokens_per_busy_s: float | None = None
        self.steps = 0
        self.requests_total = 0
        self.handoff_bytes = 0
        self.handoff_seconds = 0.0
        self.handoff_count = 0

    def prefill_done(
        self,
        miss_tokens: int,
        hit_tokens: int,
        busy_s: float,
        flops: float,
        wait_s: float | None = None,
    ) -> None:
        """One prompt prefilled in `busy_s` (its compute: TTFT's service part) after waiting
        `wait_s` since it arrived at the ingress (TTFT's queueing part; None: unknown)."""
        now = self.clock.monotonic()
        self._miss_tokens.add(miss_tokens, now)
        self._hit_tokens.add(hit_tokens, now)
        self._prefill_tokens.add(miss_tokens + hit_tokens, now)
        self._busy.add(busy_s, now)
        self._flops.add(flops, now)
        self._ttft_service.add(busy_s, now)
        if wait_s is not None:
            self._ttft_wait.add(max(0.0, wait_s), now)
        self.steps += 1
        self.requests_total += 1
        busy = self._busy.sum(now)
        if busy > 0:
            self._tokens_per_busy_s = self._prefill_tokens.sum(now) / busy

    def seed_prefill_rate(self, tokens_per_busy_s: float) -> None:
        """A prior for the prefill rate (e.g. the emulated GPU's), until one is measured."""
        if self._tokens_per_busy_s is None and tokens_per_busy_s > 0:
            self._tokens_per_busy_s = tokens_per_busy_s

    @property
    def prefill_tokens_per_busy_s(self) -> float | None:
        """Prompt tokens (hits included) per busy second: measured, else the seeded prior."""
        return self._tokens_per_busy_s

    def decode_step(self, tokens: int, busy_s: float, flops: float) -> None:
        """One batched step of `tokens` sequences that took `busy_s` (compute + emulated GPU)."""
        now = self.clock.monotonic()
        self._decode_tokens.add(tokens, now)
        self._busy.add(busy_s, now)
        self._flops.add(flops, now)
        self._step_s.add(busy_s, now)
        self._batch_time.add(tokens * busy_s, now)
        self.steps += 1

    def request_finished(self, output_tokens: int) -> None:
        """A decode request finished with `output_tokens` generated (the first one included)."""
        self._outputs.add(output_tokens)

    def ttft(self, seconds: float) -> None:
        self._ttft.add(seconds)

    def tbt(self, seconds: float) -> None:
        self._tbt.add(seconds)

    def handoff(self, nbytes: int, seconds: float) -> None:
        self.handoff_bytes += nbytes
        self.handoff_seconds += seconds
        self.handoff_count += 1
        self.requests_total += 1

    def snapshot(self, **gauges: Any) -> ReplicaStats:
        """Rates over min(window, uptime) so a fresh replica does not under-report.

        `gauges` are the role's instantaneous values; `queued_prompt_tokens` among them is
        priced with the prefill rate into `prefill_queue_s`."""
        now = self.clock.monotonic()
        span = max(min(self.window_s, now - self.started), 1e-3)
        qs = (50.0, 90.0, 99.0)
        ttft = self._ttft.percentiles(now, qs)
        tbt = self._tbt.percentiles(now, qs)
        wait = self._ttft_wait.percentiles(now, qs)
        service = self._ttft_service.percentiles(now, qs)
        queued = gauges.get("queued_prompt_tokens", 0)
        rate = self._tokens_per_busy_s
        if not queued:
            queue_s: float | None = 0.0
        else:
            queue_s = queued / rate if rate else None
        busy = min(1.0, self._busy.sum(now) / span)
        compute = (
            min(1.0, self._flops.sum(now) / (span * self.peak_flops)) if self.peak_flops else 0.0
        )
        return ReplicaStats(
            **self.identity,
            window_s=self.window_s,
            timestamp=self.clock.now(),
            prefill_tps=self._miss_tokens.sum(now) / span,
            prefill_hit_tps=self._hit_tokens.sum(now) / span,
            decode_tps=self._decode_tokens.sum(now) / span,
            ttft_p50=ttft[0],
            ttft_p90=ttft[1],
            ttft_p99=ttft[2],
            tbt_p50=tbt[0],
            tbt_p90=tbt[1],
            tbt_p99=tbt[2],
            busy_fraction=busy,
            compute_fraction=compute,
            steps=self.steps,
            requests_total=self.requests_total,
            kv_handoff_bytes_total=self.handoff_bytes,
            kv_handoff_seconds_total=self.handoff_seconds,
            kv_handoff_count=self.handoff_count,
            prefill_tokens_per_busy_s=rate,
            prefill_queue_s=queue_s,
            ttft_wait_p50=wait[0],
            ttft_wait_p90=wait[1],
            ttft_wait_p99=wait[2],
            ttft_service_p50=service[0],
            ttft_service_p90=service[1],
            ttft_service_p99=service[2],
            running_mean=self._batch_time.sum(now) / span,
            step_mean_s=self._step_s.mean(now),
            finished_requests=self._outputs.count(now),
            output_tokens_mean=self._outputs.mean(now),
            **gauges,
        )


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


# Buckets as vLLM's for the same metrics, so its dashboards' quantile queries carry over.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


class RequestMetrics:
    """Per-request metrics at the ingress, as the client sees them (label: service).

    Counters: prompt tokens (once per request, as `usage` counts them), generation tokens,
    requests finished by finish reason, error responses by HTTP status. Histograms: time to
    first token, inter-token latency (between a choice's consecutive chunks), end-to-end
    latency, and prompt / generation length. `render()` gives this ingress replica's text; with
    `mirror_to_ray` the same events also go to Ray's metrics agent (`ray_` prefix), which sums
    over all ingress replicas.
    """

    def __init__(self, mirror_to_ray: bool = False) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        r = self.registry = CollectorRegistry()
        svc = ("service",)
        self.prompt_tokens = Counter(
            "heteroscale_prompt_tokens", "Prompt tokens of the requests served", svc, registry=r
        )
        self.generation_tokens = Counter(
            "heteroscale_generation_tokens", "Tokens generated", svc, registry=r
        )
        self.request_success = Counter(
            "heteroscale_request_success",
            "Choices finished, by finish reason (stop, length)",
            (*svc, "finished_reason"),
            registry=r,
        )
        self.request_errors = Counter(
            "heteroscale_request_errors",
            "Error responses (and errors mid-stream), by HTTP status",
            (*svc, "status"),
            registry=r,
        )
        self.ttft = Histogram(
            "heteroscale_time_to_first_token_seconds",
            "Request arrival to its first token at the ingress",
            svc,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "heteroscale_inter_token_latency_seconds",
            "Time between a choice's consecutive tokens (streamed chunks) at the ingress",
            svc,
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "heteroscale_e2e_request_latency_seconds",
            "Request arrival to a choice's last token at the ingress",
            svc,
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.prompt_len = Histogram(
            "heteroscale_request_prompt_tokens",
            "Prompt tokens per request",
            svc,
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.generation_len = Histogram(
            "heteroscale_request_generation_tokens",
            "Generated tokens per finished choice",
            svc,
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self._ray: dict[str, Any] | None = None
        if mirror_to_ray:
            try:
                self._ray = self._ray_metrics()
            except Exception:  # no Ray metrics agent (outside a cluster): this text only
                self._ray = None

    @staticmethod
    def _ray_metrics() -> dict[str, Any]:
        from ray.util import metrics

        svc = ("service",)
        return {
            "prompt": metrics.Counter("heteroscale_prompt_tokens", "", svc),
            "generation": metrics.Counter("heteroscale_generation_tokens", "", svc),
            "success": metrics.Counter(
                "heteroscale_request_success", "", (*svc, "finished_reason")
            ),
            "errors": metrics.Counter("heteroscale_request_errors", "", (*svc, "status")),
            "ttft": metrics.Histogram(
                "heteroscale_time_to_first_token_seconds", "", list(TTFT_BUCKETS), svc
            ),
            "itl": metrics.Histogram(
                "heteroscale_inter_token_latency_seconds", "", list(ITL_BUCKETS), svc
            ),
            "e2e": metrics.Histogram(
                "heteroscale_e2e_request_latency_seconds", "", list(E2E_BUCKETS), svc
            ),
        }

    def _mirror(self, key: str, method: str, value: float, **tags: str) -> None:
        if self._ray is not None:
            with contextlib.suppress(Exception):  # never let the mirror fail a request
                getattr(self._ray[key], method)(value, tags=tags)

    def prompt(self, service: str, tokens: int) -> None:
        self.prompt_tokens.labels(service).inc(tokens)
        self.prompt_len.labels(service).observe(tokens)
        if tokens > 0:
            self._mirror("prompt", "inc", tokens, service=service)

    def first_token(self, service: str, seconds: float) -> None:
        self.ttft.labels(service).observe(seconds)
        self._mirror("ttft", "observe", seconds, service=service)

    def inter_token(self, service: str, seconds: float) -> None:
        self.itl.labels(service).observe(seconds)
        self._mirror("itl", "observe", seconds, service=service)

    def finished(self, service: str, reason: str, generated: int, seconds: float) -> None:
        self.request_success.labels(service, reason).inc()
        self.generation_tokens.labels(service).inc(generated)
        self.generation_len.labels(service).observe(generated)
        self.e2e.labels(service).observe(seconds)
        self._mirror("success", "inc", 1, service=service, finished_reason=reason)
        if generated > 0:
            self._mirror("generation", "inc", generated, service=service)
        self._mirror("e2e", "observe", seconds, service=service)

    def error(self, service: str, status: int) -> None:
        self.request_errors.labels(service, str(status)).inc()
        self._mirror("errors", "inc", 1, service=service, status=str(status))

    def render(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()
