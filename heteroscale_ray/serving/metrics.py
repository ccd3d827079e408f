"""Per-replica serving metrics: the eight signals the paper studies, over a sliding window.

A replica records events as they happen (tokens, latency samples, busy intervals, FLOPs) and
`ReplicaMetrics.snapshot()` turns them into a `ReplicaStats` the control plane polls. The same
numbers go to Prometheus in two ways: Ray's metrics agent (`ray.util.metrics`, exported with a
``ray_`` prefix) from inside each replica, and `render_prometheus()` which renders a list of
stats dicts as Prometheus text (the ingress serves it at GET /metrics).

Metric names (labels: service, dg, role, gpu_type, replica):
    heteroscale_prefill_tokens_per_s    cache-miss prompt tokens prefilled per second
    heteroscale_decode_tokens_per_s     tokens generated per second
    heteroscale_ttft_seconds{quantile}  time to first token (p50/p90/p99), decode side
    heteroscale_tbt_seconds{quantile}   time between tokens (p50/p90/p99)
    heteroscale_busy_fraction           share of wall time inside (emulated) steps
    heteroscale_compute_fraction        achieved FLOP/s over the emulated GPU's peak
    heteroscale_kv_used_fraction        KV tokens in use over capacity (decode)
    heteroscale_queue_length            requests waiting (prefill lock / decode admission)
    heteroscale_running_sequences       sequences in the decode batch
    heteroscale_emulation_overruns_total steps whose real compute exceeded emulated time
    heteroscale_kv_handoff_bytes_total  KV bytes received from prefill (decode)
    heteroscale_kv_handoff_seconds_total time spent receiving them
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

WINDOW_S = 10.0
LABELS = ("service", "dg", "role", "gpu_type", "replica")


@dataclass
class ReplicaStats:
    """One replica's view over the last `window_s` seconds (rates) plus totals and gauges."""

    replica_id: str
    app_name: str
    service: str
    dg_id: str
    role: str
    gpu_type: str
    node_id: str = ""
    node_labels: dict[str, str] = field(default_factory=dict)
    emulated: bool = False
    time_scale: float = 1.0
    window_s: float = WINDOW_S
    timestamp: float = 0.0
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Window:
    """(time, value) samples kept for `window_s`; sums, rates and percentiles over them."""

    def __init__(self, window_s: float, maxlen: int = 20000) -> None:
        self.window_s = window_s
        self._items: deque[tuple[float, float]] = deque(maxlen=maxlen)

    def add(self, value: float, now: float | None = None) -> None:
        self._items.append((time.monotonic() if now is None else now, value))

    def _prune(self, now: float) -> None:
        while self._items and now - self._items[0][0] > self.window_s:
            self._items.popleft()

    def sum(self, now: float) -> float:
        self._prune(now)
        return float(sum(v for _, v in self._items))

    def percentiles(self, now: float, qs: tuple[float, ...]) -> list[float | None]:
        self._prune(now)
        if not self._items:
            return [None] * len(qs)
        arr = np.fromiter((v for _, v in self._items), dtype=np.float64)
        return [float(x) for x in np.percentile(arr, qs)]


class ArrivalMeter:
    """Prompt tokens arriving per service at the ingress, before any queue or admission check:
    the offered prefill load, which keeps rising when prefill (or the ingress) falls behind."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self.started = time.monotonic()
        self._by_service: dict[str, _Window] = {}

    def add(self, service: str, tokens: int) -> None:
        self._by_service.setdefault(service, _Window(self.window_s)).add(tokens)

    def rates(self) -> dict[str, float]:
        """Tokens/s per service over min(window, uptime)."""
        now = time.monotonic()
        span = max(min(self.window_s, now - self.started), 1e-3)
        return {name: w.sum(now) / span for name, w in self._by_service.items()}


def render_arrivals(rates: dict[str, float]) -> str:
    """Prometheus text for the ingress's offered load per service."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    gauge = Gauge(
        "heteroscale_prompt_arrival_tokens_per_s",
        "Prompt tokens/s arriving at the ingress (offered prefill load, cache hits included)",
        ["service"],
        registry=registry,
    )
    for name, rate in sorted(rates.items()):
        gauge.labels(name).set(rate)
    return generate_latest(registry).decode()


class ReplicaMetrics:
    """Event recorder for one replica; cheap to call from the hot path (no I/O, no locks)."""

    def __init__(
        self, identity: dict[str, Any], peak_flops: float, window_s: float = WINDOW_S
    ) -> None:
        self.identity = identity
        self.peak_flops = peak_flops
        self.window_s = window_s
        self.started = time.monotonic()
        self._miss_tokens = _Window(window_s)
        self._hit_tokens = _Window(window_s)
        self._decode_tokens = _Window(window_s)
        self._busy = _Window(window_s)
        self._flops = _Window(window_s)
        self._ttft = _Window(window_s, maxlen=5000)
        self._tbt = _Window(window_s, maxlen=20000)
        self.steps = 0
        self.requests_total = 0
        self.handoff_bytes = 0
        self.handoff_seconds = 0.0
        self.handoff_count = 0

    def prefill_done(self, miss_tokens: int, hit_tokens: int, busy_s: float, flops: float) -> None:
        now = time.monotonic()
        self._miss_tokens.add(miss_tokens, now)
        self._hit_tokens.add(hit_tokens, now)
        self._busy.add(busy_s, now)
        self._flops.add(flops, now)
        self.steps += 1
        self.requests_total += 1

    def decode_step(self, tokens: int, busy_s: float, flops: float) -> None:
        now = time.monotonic()
        self._decode_tokens.add(tokens, now)
        self._busy.add(busy_s, now)
        self._flops.add(flops, now)
        self.steps += 1

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
        """Rates over min(window, uptime) so a fresh replica does not under-report."""
        now = time.monotonic()
        span = max(min(self.window_s, now - self.started), 1e-3)
        qs = (50.0, 90.0, 99.0)
        ttft = self._ttft.percentiles(now, qs)
        tbt = self._tbt.percentiles(now, qs)
        busy = min(1.0, self._busy.sum(now) / span)
        compute = (
            min(1.0, self._flops.sum(now) / (span * self.peak_flops)) if self.peak_flops else 0.0
        )
        return ReplicaStats(
            **self.identity,
            window_s=self.window_s,
            timestamp=time.time(),
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
            **gauges,
        )


_GAUGE_FIELDS = {
    "prefill_tokens_per_s": "prefill_tps",
    "decode_tokens_per_s": "decode_tps",
    "busy_fraction": "busy_fraction",
    "compute_fraction": "compute_fraction",
    "kv_used_fraction": "kv_use",
    "queue_length": "queue_length",
    "running_sequences": "running",
    "emulation_overruns_total": "emulation_overruns",
    "kv_handoff_bytes_total": "kv_handoff_bytes_total",
    "kv_handoff_seconds_total": "kv_handoff_seconds_total",
}
_QUANTILE_FIELDS = {"ttft_seconds": "ttft", "tbt_seconds": "tbt"}


def _labels(stats: dict[str, Any]) -> dict[str, str]:
    return {
        "service": stats["service"],
        "dg": stats["dg_id"],
        "role": stats["role"],
        "gpu_type": stats["gpu_type"],
        "replica": stats["replica_id"],
    }


class RayMetricsExporter:
    """Mirrors a replica's stats into Ray's metrics agent (Prometheus scrape of the Ray nodes)."""

    def __init__(self) -> None:
        from ray.util import metrics

        self._gauges = {
            name: metrics.Gauge(f"heteroscale_{name}", description=name, tag_keys=LABELS)
            for name in _GAUGE_FIELDS
        }
        self._quantiles = {
            name: metrics.Gauge(
                f"heteroscale_{name}", description=name, tag_keys=(*LABELS, "quantile")
            )
            for name in _QUANTILE_FIELDS
        }

    def export(self, stats: dict[str, Any]) -> None:
        tags = _labels(stats)
        for name, key in _GAUGE_FIELDS.items():
            self._gauges[name].set(float(stats[key]), tags=tags)
        for name, key in _QUANTILE_FIELDS.items():
            for q in ("50", "90", "99"):
                value = stats[f"{key}_p{q}"]
                if value is not None:
                    self._quantiles[name].set(float(value), tags={**tags, "quantile": f"0.{q}"})


def render_prometheus(stats_list: list[dict[str, Any]]) -> str:
    """Prometheus text exposition of many replicas' stats (one gauge family per metric)."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    gauges = {
        name: Gauge(f"heteroscale_{name}", name, LABELS, registry=registry)
        for name in _GAUGE_FIELDS
    }
    quantiles = {
        name: Gauge(f"heteroscale_{name}", name, (*LABELS, "quantile"), registry=registry)
        for name in _QUANTILE_FIELDS
    }
    for stats in stats_list:
        tags = _labels(stats)
        for name, key in _GAUGE_FIELDS.items():
            gauges[name].labels(**tags).set(float(stats[key]))
        for name, key in _QUANTILE_FIELDS.items():
            for q in ("50", "90", "99"):
                value = stats[f"{key}_p{q}"]
                if value is not None:
                    quantiles[name].labels(**tags, quantile=f"0.{q}").set(float(value))
    return generate_latest(registry).decode()
