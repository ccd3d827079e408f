"""Replica reports -> observations: partial or malformed reports must make the policy hold."""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest

from heteroscale_ray.actors.observe import build_observations
from heteroscale_ray.config import parse_yaml_text
from heteroscale_ray.config.services import ServicesConfig
from heteroscale_ray.policy import PolicyState, Reason, RoleCounts, decide
from heteroscale_ray.policy.types import Signals
from heteroscale_ray.serving.replica_stats import IngressLoad, ReplicaStats


def report(role: str, **kw: object) -> ReplicaStats:
    """A well-formed report of one `chat` replica; `kw` overrides fields (even with bad values:
    a dataclass does not check types, and that is what the tests feed in)."""
    base = ReplicaStats(
        replica_id=f"{role}-r",
        app_name="chat-dg0",
        service="chat",
        dg_id="dg0",
        role=role,
        gpu_type="H20",
        timestamp=100.0,
        decode_tps=10.0,
        busy_fraction=0.5,
        compute_fraction=0.2,
        running=1,
        kv_use=0.1,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


FULL = [report("prefill"), *(report("decode") for _ in range(4))]


@pytest.mark.parametrize(
    ("reports", "fresh"),
    [
        (FULL, True),
        (FULL[:3], False),  # two of four decode replicas silent: the sum would under-count
        (FULL[1:], False),  # the prefill replica silent
        ([*FULL[:4], report("decode", decode_tps="fast")], False),  # non-number
        ([*FULL[:4], report("decode", decode_tps=math.nan)], False),  # NaN
        ([*FULL[:4], report("decode", timestamp=None)], False),  # missing value
        ([*FULL[:4], report("decode", tbt_p99=math.inf)], False),  # optional, but not finite
        ([*FULL[:4], {"service": "chat", "role": "decode"}], False),  # untyped: not a report
        ([*FULL, report("router")], True),  # unknown role ignored
    ],
)
def test_observed_only_when_every_ready_replica_reported(
    reports: list[object], fresh: bool
) -> None:
    counts = {"chat": RoleCounts(prefill_ready=1, decode_ready=4)}
    obs = build_observations(["chat"], reports, counts)["chat"]  # type: ignore[arg-type]
    assert (obs.signals.observed_at is not None) is fresh


def test_a_malformed_report_is_dropped_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    bad = report("decode", replica_id="r-bad", decode_tps=math.nan)
    counts = {"chat": RoleCounts(prefill_ready=1, decode_ready=1)}
    with caplog.at_level(logging.WARNING, logger="heteroscale_ray.actors.observe"):
        obs = build_observations(["chat"], [report("prefill"), bad], counts)["chat"]
    assert obs.signals.observed_at is None and obs.signals.decode_tps is None
    assert [r.getMessage() for r in caplog.records] == [
        "ignoring stats report of replica r-bad: decode_tps=nan is not a finite number"
    ]


def test_observations_add_rates_and_take_worst_latency() -> None:
    stats = [
        report("decode", decode_tps=40.0, tbt_p99=0.05, ttft_p99=0.3, timestamp=101.0),
        report("decode", decode_tps=20.0, tbt_p99=0.09, ttft_p99=0.2, timestamp=99.0),
        report("prefill", prefill_tps=500.0),
        report("decode", decode_tps=999.0, service="other"),
    ]
    counts = {"chat": RoleCounts(1, 0, 2, 1)}
    obs = build_observations(["chat", "idle"], stats, counts)["chat"]
    assert obs.signals.decode_tps == 60.0 and obs.signals.prefill_tps == 500.0
    assert obs.signals.tbt_p99_s == 0.09 and obs.signals.ttft_p99_s == 0.3
    assert obs.signals.observed_at == 99.0  # the oldest decode report
    assert obs.counts == RoleCounts(1, 0, 2, 1)
    idle = build_observations(["idle"], stats, counts)["idle"]
    assert idle.signals.observed_at is None  # no reports: the policy must hold


def test_partial_reports_never_scale_in() -> None:
    spec = parse_yaml_text(
        """
services:
  - name: chat
    slo: {ttft_s: 1.0, tbt_s: 0.1}
    pd_ratio: "1:4"
    prefill: {gpu_types: [L20], min_instances: 1}
    decode: {gpu_types: [H20], min_instances: 1}
    policy: {target_per_instance: 10, scale_in_cooldown_s: 0}
""",
        ServicesConfig,
    ).services[0]
    counts = RoleCounts(prefill_ready=2, decode_ready=8)
    reports = [report("prefill"), report("prefill"), report("decode"), report("decode")]
    obs = build_observations(["chat"], reports, {"chat": counts})["chat"]
    decision, _ = decide(spec, obs.signals, counts, PolicyState(), now=100.0)
    assert (decision.prefill, decision.decode) == (2, 8)
    assert decision.reason is Reason.HOLD_MISSING_SIGNAL


@pytest.mark.parametrize(
    ("arrived", "prefill_reports", "offered"),
    [
        # 3,000 prompt tok/s at the ingress; a quarter of the processed tokens were cache hits
        (
            3000.0,
            [
                report("prefill", prefill_tps=300.0, prefill_hit_tps=100.0),
                report("prefill", prefill_tps=600.0, prefill_hit_tps=200.0),
            ],
            2250.0,
        ),
        (500.0, [report("prefill")], 500.0),  # nothing processed yet: all of it misses
        (None, [report("prefill")], None),  # no ingress report: unknown, not zero
        (math.inf, [report("prefill")], None),
    ],
)
def test_offered_prefill_load_is_arrivals_times_the_miss_share(
    arrived: float | None, prefill_reports: list[ReplicaStats], offered: float | None
) -> None:
    counts = {"chat": RoleCounts(prefill_ready=len(prefill_reports), decode_ready=1)}
    arrivals = {} if arrived is None else {"chat": arrived}
    reports = [*prefill_reports, report("decode")]
    obs = build_observations(["chat"], reports, counts, arrivals)["chat"]
    got = obs.signals.prefill_offered_tps
    assert got == pytest.approx(offered) if offered is not None else got is None


DEMAND_FIELDS = (
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
    "decode_step_batch",
    "decode_step_context",
    "decode_token_step_s",
)


def test_demand_and_latency_split_are_aggregated_over_replicas_and_ingress() -> None:
    stats = [
        report(
            "prefill",
            prefill_queue_s=2.0,
            prefill_queue_peak_s=3.0,
            ttft_wait_p99=1.5,
            ttft_service_p99=0.4,
        ),
        report(
            "prefill",
            prefill_queue_s=0.0,
            prefill_queue_peak_s=1.0,
            ttft_wait_p99=0.1,
            ttft_service_p99=0.6,
        ),
        report("prefill", replica_id="fresh", prefill_queue_s=None),  # queue not priced yet
        report(
            "decode",
            running_mean=6.0,
            queue_length=2,
            step_mean_s=0.04,
            step_batch_mean=8.0,
            step_context_mean=1000.0,
            step_token_mean_s=0.05,
            finished_requests=3,
            output_tokens_mean=100.0,
        ),
        report(
            "decode",
            running_mean=2.5,
            queue_length=0,
            step_mean_s=0.02,
            step_batch_mean=4.0,
            step_context_mean=4000.0,
            step_token_mean_s=0.03,
            finished_requests=1,
            output_tokens_mean=20.0,
        ),
        report("decode", running_mean=0.0, queue_length=1),  # idle: no step, nothing finished
    ]
    counts = {"chat": RoleCounts(prefill_ready=3, decode_ready=3)}
    arrivals = {"chat": IngressLoad(3000.0, 6.0, prompt_tokens_sq_per_s=6 * (500.0**2 + 200.0**2))}
    sig = build_observations(["chat"], stats, counts, arrivals)["chat"].signals
    assert sig.observed_at is not None
    assert sig.request_rate == 6.0 and sig.prompt_mean == 500.0
    assert sig.prompt_sd == pytest.approx(200.0)
    assert sig.prefill_offered_tps == pytest.approx(3000.0)
    assert sig.output_mean == pytest.approx((3 * 100.0 + 20.0) / 4)  # per finished request
    assert sig.prefill_queue_s == pytest.approx(1.0)  # per instance that priced its queue
    assert sig.prefill_queue_peak_s == pytest.approx(2.0)  # the replicas' peaks, mean
    assert sig.decode_running == pytest.approx(8.5) and sig.decode_queue == 3.0
    assert sig.ttft_wait_p99_s == 1.5 and sig.ttft_service_p99_s == 0.6  # worst replica
    assert sig.decode_step_s == pytest.approx(0.03)  # over the replicas that stepped
    assert sig.decode_token_step_s == pytest.approx(0.04)  # each replica's tokens alike
    # ... and what those steps ran at: 6 sequences a step, of (8 x 1,000 + 4 x 4,000) / 12
    # KV tokens each (the idle replica's time counts in running, not here)
    assert sig.decode_step_batch == pytest.approx(6.0)
    assert sig.decode_step_context == pytest.approx(2000.0)


def test_what_the_steps_ran_at_comes_from_every_replica_that_stepped_or_none() -> None:
    """A replica that steps but does not say at what batch (an older version mid-rollout)
    would leave the mean step and what it is compared at from different replicas."""
    counts = {"chat": RoleCounts(prefill_ready=1, decode_ready=2)}
    new = report("decode", step_mean_s=0.04, step_batch_mean=8.0, step_context_mean=1000.0)
    old = report("decode", replica_id="old", step_mean_s=0.02)
    both = build_observations(["chat"], [report("prefill"), new, old], counts)["chat"].signals
    assert both.decode_step_s == pytest.approx(0.03)
    assert both.decode_step_batch is None and both.decode_step_context is None
    idle = report("decode", replica_id="idle")  # no step: nothing to compare
    alone = build_observations(["chat"], [report("prefill"), new, idle], counts)["chat"].signals
    assert (alone.decode_step_batch, alone.decode_step_context) == (8.0, 1000.0)


def test_prompts_held_at_the_handle_count_as_queued_prefill() -> None:
    """Every replica at max_ongoing_requests: Serve holds the rest at the handle, where no
    replica's queue shows them. The ingress reports their tokens; they are spread over the
    replicas at the replicas' measured rate."""
    stats = [
        report("prefill", prefill_queue_s=2.0, prefill_tokens_per_busy_s=4000.0),
        report("prefill", prefill_queue_s=4.0, prefill_tokens_per_busy_s=6000.0),
        report("decode"),
    ]
    counts = {"chat": RoleCounts(prefill_ready=2, decode_ready=1)}

    def queue(held: float | None) -> float | None:
        arrivals = {"chat": IngressLoad(3000.0, 6.0, held_prompt_tokens=held)}
        return build_observations(["chat"], stats, counts, arrivals)["chat"].signals.prefill_queue_s

    assert queue(None) == queue(0.0) == pytest.approx(3.0)
    # 50,000 tokens at 10,000 tokens/s over two replicas: 5 s of work, 2.5 s each
    assert queue(50_000.0) == pytest.approx(3.0 + 50_000.0 / 10_000.0)


def test_demand_fields_are_none_when_nobody_reports_them() -> None:
    counts = {"chat": RoleCounts(prefill_ready=1, decode_ready=1)}
    nothing = build_observations(["chat"], [], counts)["chat"].signals
    assert all(getattr(nothing, f) is None for f in DEMAND_FIELDS)
    # Replicas up but idle, an ingress that reports tokens alone (an older ingress).
    up = [report("prefill", prefill_queue_s=0.0), report("decode")]
    idle = build_observations(["chat"], up, counts, {"chat": 800.0})["chat"].signals
    assert idle.prefill_offered_tps == 800.0
    assert idle.request_rate is None and idle.prompt_mean is None and idle.output_mean is None
    assert idle.ttft_wait_p99_s is None and idle.decode_step_s is None
    assert idle.prefill_queue_s == 0.0  # an empty queue is known to be empty
    assert idle.decode_running == 0.0 and idle.decode_queue == 0.0
    quiet = build_observations(["chat"], FULL[:2], counts, {"chat": IngressLoad(0.0, 0.0)})
    assert quiet["chat"].signals.request_rate == 0.0
    assert quiet["chat"].signals.prompt_mean is None  # no request arrived: no mean


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            report("decode", replica_id="r-bad", step_mean_s=math.nan),
            "ignoring stats report of replica r-bad: step_mean_s=nan is neither None nor a "
            "finite number",
        ),
        (
            report("prefill", replica_id="r-bad", queued_prompt_tokens=-5),
            "ignoring stats report of replica r-bad: queued_prompt_tokens=-5 is negative",
        ),
    ],
)
def test_malformed_demand_values_drop_the_report_with_a_log_line(
    bad: ReplicaStats, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    counts = {"chat": RoleCounts(prefill_ready=1, decode_ready=1)}
    with caplog.at_level(logging.WARNING, logger="heteroscale_ray.actors.observe"):
        sig = build_observations(["chat"], [*FULL[:2], bad], counts)["chat"].signals
    assert sig.observed_at is not None  # the good reports still cover every ready replica
    assert [r.getMessage() for r in caplog.records] == [message]


@pytest.mark.parametrize(
    "arrival", [IngressLoad(math.nan, 1.0), IngressLoad(100.0, -1.0), "lots", math.inf]
)
def test_a_malformed_ingress_report_is_dropped_with_a_log_line(
    arrival: object, caplog: pytest.LogCaptureFixture
) -> None:
    counts = {"chat": RoleCounts(prefill_ready=1, decode_ready=1)}
    with caplog.at_level(logging.WARNING, logger="heteroscale_ray.actors.observe"):
        obs = build_observations(["chat"], FULL[:2], counts, {"chat": arrival})  # type: ignore[dict-item]
    sig: Signals = obs["chat"].signals
    assert sig.request_rate is None and sig.prefill_offered_tps is None
    assert sig.observed_at is not None  # an optional signal: the replicas still count
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith("ignoring ingress report of service chat")
