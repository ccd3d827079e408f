"""Per-replica serving metrics: the eight signals the paper studies, over a sliding window.

A replica records events as they happen (tokens, latency samples, busy intervals, FLOPs) and
`ReplicaMetrics.snapshot()` turns them into a `ReplicaStats` (serving/replica_stats.py) the
control plane polls; `ArrivalMeter` measures the offered load at the ingress the same way. Time
comes from an injected `Clock` (default: the wall clock), so tests move it with
`VirtualClock.advance` instead of sleeping.

This module only measures. Exporting lives apart: metrics_export.py renders `ReplicaStats` and
arrivals as Prometheus text and mirrors them into Ray's metrics agent; request_metrics.py holds
the ingress's per-request counters and histograms. Their public names are re-exported here so
`from heteroscale_ray.serving.metrics import ...` keeps working.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np

from heteroscale_ray.clock import Clock, WallClock
from heteroscale_ray.policy.arrival_bursts import heaviest
from heteroscale_ray.serving.metrics_export import (
    REPLICA_METRICS,
    RayMetricsExporter,
    ReplicaMetric,
    render_arrivals,
    render_prometheus,
)
from heteroscale_ray.serving.replica_stats import WINDOW_S, IngressLoad, ReplicaStats
from heteroscale_ray.serving.request_metrics import RequestMetrics

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

    def sum_of_squares(self, now: float) -> float:
        self._prune(now)
        return float(sum(v * v for _, v in self._items))

    def count(self, now: float) -> int:
        self._prune(now)
        return len(self._items)

    def largest(self, now: float) -> float | None:
        self._prune(now)
        return max((v for _, v in self._items), default=None)

    def mean(self, now: float) -> float | None:
        self._prune(now)
        return self.sum(now) / len(self._items) if self._items else None

    def bursts(self, now: float) -> tuple[float, ...]:
        """The most of the values arriving within each burst span (policy/arrival_bursts.py)."""
        self._prune(now)
        times = np.fromiter((t for t, _ in self._items), dtype=np.float64)
        return heaviest(times, np.fromiter((v for _, v in self._items), dtype=np.float64))

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
        self._held: dict[str, int] = {}

    def hold(self, service: str, tokens: int) -> None:
        """A prefill of `tokens` prompt tokens went to the handle; no replica has it yet."""
        self._held[service] = self._held.get(service, 0) + tokens

    def release(self, service: str, tokens: int) -> None:
        """That prefill reached a replica (or failed): its tokens are no longer held."""
        self._held[service] = max(self._held.get(service, 0) - tokens, 0)

    def keep(self, services: Iterable[str]) -> None:
        """Forget the services not in `services` (removed from the config): their zero loads
        are no report, and a meter that only grows holds every service ever routed."""
        live = set(services)
        for gone in [s for s in self._by_service if s not in live]:
            del self._by_service[gone]
        for gone in [s for s in self._held if s not in live]:
            del self._held[gone]

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
        """Prompt tokens/s, requests/s and squared prompt tokens/s per service over
        min(window, uptime), the prompt tokens held at the handle now, and the window's
        heaviest bursts of prompt tokens."""
        now = self.clock.monotonic()
        span = self._span(now)
        return {
            name: IngressLoad(
                w.sum(now) / span,
                w.count(now) / span,
                w.sum_of_squares(now) / span,
                float(self._held.get(name, 0)),
                w.bursts(now),
            )
            for name, w in self._by_service.items()
        }


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
        self._queued = _Window(window_s, maxlen=5000, clock=c)  # prompt tokens at each enqueue
        self._step_s = _Window(window_s, clock=c)
        self._step_batch = _Window(window_s, clock=c)  # sequences per step
        self._step_context = _Window(window_s, clock=c)  # KV tokens of the batch per step
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

    def prompt_queued(self, queued_tokens: int) -> None:
        """A prompt arrived, and `queued_tokens` now wait for the GPU (its own, unless the GPU
        was free): the window's highest is the queue prompts landing together build between
        reports."""
        self._queued.add(queued_tokens, self.clock.monotonic())

    def seed_prefill_rate(self, tokens_per_busy_s: float) -> None:
        """A prior for the prefill rate (e.g. the emulated GPU's), until one is measured."""
        if self._tokens_per_busy_s is None and tokens_per_busy_s > 0:
            self._tokens_per_busy_s = tokens_per_busy_s

    @property
    def prefill_tokens_per_busy_s(self) -> float | None:
        """Prompt tokens (hits included) per busy second: measured, else the seeded prior."""
        return self._tokens_per_busy_s

    def decode_step(self, tokens: int, busy_s: float, flops: float, context_tokens: int) -> None:
        """One batched step of `tokens` sequences holding `context_tokens` of KV in all, that
        took `busy_s` (compute + emulated GPU)."""
        now = self.clock.monotonic()
        self._decode_tokens.add(tokens, now)
        self._busy.add(busy_s, now)
        self._flops.add(flops, now)
        self._step_s.add(busy_s, now)
        self._step_batch.add(tokens, now)
        self._step_context.add(context_tokens, now)
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

        def seconds(tokens: float) -> float | None:  # an empty queue is known without a rate
            return 0.0 if not tokens else (tokens / rate if rate else None)

        queue_s = seconds(queued)
        peak_s = seconds(max(self._queued.largest(now) or 0.0, float(queued)))
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
            prefill_queue_peak_s=peak_s,
            ttft_wait_p50=wait[0],
            ttft_wait_p90=wait[1],
            ttft_wait_p99=wait[2],
            ttft_service_p50=service[0],
            ttft_service_p90=service[1],
            ttft_service_p99=service[2],
            running_mean=self._batch_time.sum(now) / span,
            step_mean_s=self._step_s.mean(now),
            step_batch_mean=self._step_batch.mean(now),
            step_context_mean=(
                self._step_context.sum(now) / batched
                if (batched := self._step_batch.sum(now))
                else None
            ),
            step_token_mean_s=self._batch_time.sum(now) / batched if batched else None,
            finished_requests=self._outputs.count(now),
            output_tokens_mean=self._outputs.mean(now),
            **gauges,
        )
