"""Per-request metrics at the ingress: token and request counters and latency histograms.

Why apart from metrics.py: these are measured where the client sees them (the ingress, label
service), not per replica, and are kept in prometheus_client counters and histograms rather
than sliding windows: time to first token, inter-token and end-to-end latency, prompt and
generation length, with buckets as vLLM's.
"""

from __future__ import annotations

import contextlib
from typing import Any

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
    requests finished by finish reason, error responses by HTTP status, request migrations by
    reason. Histograms: time to first token, inter-token latency (between a choice's
    consecutive chunks), end-to-end latency, and prompt / generation length. `render()` gives
    this ingress replica's text; with `mirror_to_ray` the same events but the two length
    histograms also go to Ray's metrics agent (`ray_` prefix), which sums over ingress replicas.
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
        self.migrations = Counter(
            "heteroscale_request_migrations",
            "Requests moved to another replica or DG after the one serving them failed, by "
            "reason (prefill_failed, decode_failed, kv_lost, decode_stalled)",
            (*svc, "reason"),
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
            "migrations": metrics.Counter("heteroscale_request_migrations", "", (*svc, "reason")),
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

    def migration(self, service: str, reason: str) -> None:
        self.migrations.labels(service, reason).inc()
        self._mirror("migrations", "inc", 1, service=service, reason=reason)

    def render(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()
