"""Prometheus metrics of the control plane (not of the replicas: serving exports those).

Names (all prefixed ``heteroscale_cp_``):
    desired_instances{service,role}           target from the latest decision
    pd_ratio{service}                         prefill/decode ratio in force (moves if dynamic)
    actual_instances{service,role,dg,state}   per DG: ready (running) and starting replicas
    decisions_total{service,reason}           every decision, by its reason enum
    signal{service,signal}                    the signal values the policy saw
    placement_failures_total{service,role,reason}  instances a cycle could not place
    cycle_seconds                             duration of one control cycle (histogram)
    capacity{service,role,kind}               `signal: demand` services: what one instance
                                              carries now (prefill kind=tokens_per_s; decode
                                              kind=tokens_per_s and kind=batch, sequences)
    capacity_scale{service,role}              learned correction of the roofline prior (1 = prior)
    capacity_learned{service}                 1 once replica reports corrected the prior, else 0
    burst_horizon_seconds{service}            start-up the burst headroom covers (timed)
    window_holds_down_to{service,role}        share of a peak the need may fall to and still be
                                              held the whole scale-in window (learned from the
                                              falls traffic came back from; 1 = none yet)
Served on a port with `start_http_server` when one is given, and always as text through
`PolicyEngine.metrics_text()` (what `heteroscale status --metrics` prints).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from heteroscale_ray.control import Observation
from heteroscale_ray.policy.arrival_bursts import BURST_SPANS_S, usable

SIGNALS = (
    "decode_tps",
    "prefill_tps",
    "prefill_offered_tps",
    "ttft_p99_s",
    "tbt_p99_s",
    "prefill_busy",
    "decode_busy",
    "kv_use",
    "request_rate",
    "prompt_mean",
    "prompt_sd",
    "output_mean",
    "prefill_queue_s",
    "prefill_queue_peak_s",
    "decode_running",
    "decode_queue",
    "ttft_wait_p99_s",
    "ttft_service_p99_s",
    "decode_step_s",
    "decode_step_max_s",
    "decode_step_batch",
    "decode_step_context",
    "decode_token_step_s",
)


class ControlPlaneMetrics:
    def __init__(self, port: int | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        p = "heteroscale_cp_"
        self.desired = Gauge(
            p + "desired_instances",
            "Target instances from the latest decision",
            ["service", "role"],
            registry=self.registry,
        )
        self.actual = Gauge(
            p + "actual_instances",
            "Instances per DG by state: ready, starting; soft_removed and moving (pending removal,"
            " still running; moving: until its replacement serves)",
            ["service", "role", "dg", "state"],
            registry=self.registry,
        )
        self.pd_ratio = Gauge(
            p + "pd_ratio",
            "Prefill/decode instance ratio the latest decision is at",
            ["service"],
            registry=self.registry,
        )
        self.decisions = Counter(
            p + "decisions", "Decisions by reason", ["service", "reason"], registry=self.registry
        )
        self.signal = Gauge(
            p + "signal",
            "Signal values the policy saw",
            ["service", "signal"],
            registry=self.registry,
        )
        self.failures = Counter(
            p + "placement_failures",
            "Instances a cycle could not place",
            ["service", "role", "reason"],
            registry=self.registry,
        )
        self.capacity = Gauge(
            p + "capacity",
            "Per-instance capacity in force (signal demand): tokens/s, or decode batch",
            ["service", "role", "kind"],
            registry=self.registry,
        )
        self.capacity_scale = Gauge(
            p + "capacity_scale",
            "Learned correction of the roofline capacity prior (1 = the prior as is)",
            ["service", "role"],
            registry=self.registry,
        )
        self.capacity_learned = Gauge(
            p + "capacity_learned",
            "1 once replica reports corrected the capacity prior, 0 while it is the prior",
            ["service"],
            registry=self.registry,
        )
        self.burst_horizon = Gauge(
            p + "burst_horizon_seconds",
            "Start-up horizon of the burst headroom: timed instance start-up plus one period, "
            "or the configured prior until one is timed",
            ["service"],
            registry=self.registry,
        )
        self.window_holds = Gauge(
            p + "window_holds_down_to",
            "Share of a peak a role's need may fall to and still be held the whole scale-in "
            "window: the deepest fall its traffic came back from (1 with none remembered, 0 "
            "when the window is not learned)",
            ["service", "role"],
            registry=self.registry,
        )
        self.cycle = Histogram(
            p + "cycle_seconds",
            "Duration of one control cycle",
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.port = port
        if port:
            from prometheus_client import start_http_server

            start_http_server(port, registry=self.registry)

    def record(
        self,
        decisions: Mapping[str, Any],
        observations: Mapping[str, Observation],
        snapshot: Mapping[str, Any],
        cycle: Mapping[str, Any],
        seconds: float,
    ) -> None:
        for name, d in decisions.items():
            self.desired.labels(name, "prefill").set(d.prefill)
            self.desired.labels(name, "decode").set(d.decode)
            self.decisions.labels(name, d.reason.value).inc()
            if d.pd_ratio is not None:
                self.pd_ratio.labels(name).set(d.pd_ratio.value)
        for name, obs in observations.items():
            for sig in SIGNALS:
                value = getattr(obs.signals, sig)
                if value is not None:
                    self.signal.labels(name, sig).set(float(value))
            if usable(bursts := obs.signals.prompt_bursts):
                for span, tokens in zip(BURST_SPANS_S, bursts, strict=True):  # type: ignore[arg-type]
                    self.signal.labels(name, f"prompt_burst_{span:g}s").set(float(tokens))
        self.actual.clear()
        for dg in snapshot.get("dgs", []):
            for role in ("prefill", "decode"):
                ready = min(dg[role], dg["running"][role])
                self.actual.labels(dg["service"], role, dg["dg_id"], "ready").set(ready)
                self.actual.labels(dg["service"], role, dg["dg_id"], "starting").set(
                    dg[role] - ready
                )
        for p in snapshot.get("pending_removals", []):  # still running, in no target
            state = "moving" if p.get("into") else "soft_removed"
            for role in ("prefill", "decode"):
                if p[role]:
                    gauge = self.actual.labels(p["service"], role, p["dg_id"], state)
                    gauge.inc(p[role])
        for u in cycle.get("unplaced", []):
            self.failures.labels(u["service"], u["role"], u["reason"]).inc(u["count"])
        self.cycle.observe(seconds)

    def record_capacity(self, capacities: Mapping[str, Mapping[str, Any]]) -> None:
        """Per service, the `PolicyEngine.capacities()` entry (skipped when it has an error)."""
        for name, cap in capacities.items():
            if "error" in cap:
                continue
            self.capacity.labels(name, "prefill", "tokens_per_s").set(cap["prefill_tps"])
            self.capacity.labels(name, "decode", "tokens_per_s").set(cap["decode_tps"])
            self.capacity.labels(name, "decode", "batch").set(cap["decode_batch"])
            self.capacity_scale.labels(name, "prefill").set(cap["prefill_scale"])
            self.capacity_scale.labels(name, "decode").set(cap["decode_scale"])
            learned = cap.get("learned_at") is not None
            self.capacity_learned.labels(name).set(1.0 if learned else 0.0)
            if cap.get("burst_horizon_s") is not None:
                self.burst_horizon.labels(name).set(cap["burst_horizon_s"])
            for role, share in (cap.get("window_holds_down_to") or {}).items():
                self.window_holds.labels(name, role).set(share)

    def text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()
