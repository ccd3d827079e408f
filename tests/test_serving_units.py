"""Serving pieces that need no Ray: DG choice, request validation, metrics, emulated timing."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from heteroscale_ray.clock import VirtualClock, WallClock
from heteroscale_ray.serving.emulation import EmulatedDevice, EmulationConfig
from heteroscale_ray.serving.metrics import (
    ArrivalMeter,
    ReplicaMetrics,
    render_arrivals,
    render_prometheus,
)
from heteroscale_ray.serving.metrics_hub import STATS_TTL_S, MetricsHub
from heteroscale_ray.serving.model import ModelConfig
from heteroscale_ray.serving.replica_stats import IngressLoad, ReplicaStats, stats_problem
from heteroscale_ray.serving.router import ApiError, check_context, parse_completion
from heteroscale_ray.serving.routing_table import (
    DgRoute,
    RoutingTable,
    ServiceRoute,
    ServingDirectory,
    choose_dg,
    routes_from_json,
    routes_to_json,
)

IDENTITY = {
    "replica_id": "r",
    "app_name": "s-a",
    "service": "s",
    "dg_id": "a",
    "role": "decode",
    "gpu_type": "H20",
}


def make_stats(**overrides: object) -> ReplicaStats:
    return dataclasses.replace(ReplicaStats(**IDENTITY), **overrides)  # type: ignore[arg-type]


def make_dg(dg_id: str, **overrides: object) -> DgRoute:
    fields: dict[str, object] = {"service": "s", "dg_id": dg_id, "app_name": f"s-{dg_id}"}
    fields.update(overrides)
    return DgRoute(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dgs", "inflight", "want"),
    [
        ([], {}, None),
        ([make_dg("a"), make_dg("b")], {"s-a": 3, "s-b": 1}, "b"),
        # capacity: 4 in flight on 4 decode replicas beats 2 on 1
        ([make_dg("a", decode_replicas=4), make_dg("b")], {"s-a": 4, "s-b": 2}, "a"),
        ([make_dg("a", draining=True), make_dg("b")], {"s-b": 50}, "b"),
        ([make_dg("a", ratio_gate_open=False), make_dg("b")], {"s-b": 50}, "b"),
        # gated beats draining; a lone draining DG still serves rather than refusing
        ([make_dg("a", draining=True), make_dg("b", ratio_gate_open=False)], {}, "b"),
        ([make_dg("a", draining=True)], {}, "a"),
        ([make_dg("b"), make_dg("a")], {}, "a"),  # ties broken by dg_id: deterministic
        # a DG missing a role can finish no request, however idle it looks
        ([make_dg("a", decode_replicas=0), make_dg("b")], {"s-b": 50}, "b"),
        ([make_dg("a", prefill_replicas=0)], {}, None),
    ],
)
def test_choose_dg(dgs: list[DgRoute], inflight: dict[str, int], want: str | None) -> None:
    got = choose_dg({d.dg_id: d for d in dgs}, inflight)
    assert (got.dg_id if got else None) == want


def test_routing_table_updates() -> None:
    t = RoutingTable()
    t.register_service("s", ModelConfig(n_layers=1, d_model=32, n_heads=2), "dense-8b")
    t.upsert_dg(make_dg("a"))
    v0 = t.version()
    t.update_dg("s", "a", draining=True)
    version, services = t.snapshot()
    assert version > v0 and services["s"].dgs["a"].draining
    with pytest.raises(KeyError):
        t.upsert_dg(make_dg("x", service="unknown"))


def test_the_prefill_gate_counts_running_replicas_once_they_are_known() -> None:
    """While a DG grows, the ingress lets calls out by the prefill replicas Serve runs, not by
    the target: calls beyond them would wait at Serve's handle in arrival order. Until the
    control plane has seen the replicas (and in a checkpoint from before it reported them)
    the target stands in."""
    t = RoutingTable()
    t.register_service("s", ModelConfig(n_layers=1, d_model=32, n_heads=2), "dense-8b")
    t.upsert_dg(make_dg("a", prefill_replicas=4))
    assert t.snapshot()[1]["s"].dgs["a"].prefill_serving == 4
    t.update_dg("s", "a", prefill_running=1)
    version, services = t.snapshot()
    assert services["s"].dgs["a"].prefill_serving == 1
    # a scale-in to 2 leaves 4 running until Serve stops two: the gate counts the 2 that stay
    stopping = dataclasses.replace(services["s"].dgs["a"], prefill_replicas=2, prefill_running=4)
    assert stopping.prefill_serving == 2
    doc = routes_to_json(version, services)
    assert routes_from_json(doc)[1]["s"].dgs["a"].prefill_serving == 1
    for dg in doc["services"][0]["dgs"]:
        del dg["prefill_running"]  # a checkpoint written before the field
    assert routes_from_json(doc)[1]["s"].dgs["a"].prefill_serving == 4


def test_metrics_hub_filters_and_expires_replica_reports() -> None:
    clock = VirtualClock()
    hub = MetricsHub(clock)
    hub.report_stats("r1", make_stats(replica_id="r1"))
    assert hub.replica_stats("s-a", "decode") == [make_stats(replica_id="r1")]
    assert not hub.replica_stats("s-a", "prefill") and not hub.replica_stats("s-b")
    clock.advance(STATS_TTL_S / 2)
    hub.report_stats("r2", make_stats(replica_id="r2"))
    clock.advance(STATS_TTL_S / 2 + 0.1)  # r1 is now older than the TTL, r2 is not
    assert [s.replica_id for s in hub.replica_stats()] == ["r2"]
    hub.forget_replica("r2")
    assert hub.replica_stats() == []


def test_metrics_hub_drops_a_malformed_report_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = MetricsHub(VirtualClock())
    hub.report_stats("r1", make_stats(replica_id="r1", busy_fraction=0.5))
    with caplog.at_level(logging.WARNING, logger="heteroscale_ray.serving.metrics_hub"):
        hub.report_stats("r1", make_stats(replica_id="r1", busy_fraction=math.nan))
        hub.report_stats("r1", make_stats(replica_id="r1", busy_fraction=math.nan))
        hub.report_stats("r2", {"app_name": "s-a", "role": "decode"})  # type: ignore[arg-type]
    # The bad report replaces the good one (the replica counts as missing, not as stale-good);
    # a repeated problem is logged once.
    assert hub.replica_stats() == []
    assert [r.getMessage() for r in caplog.records] == [
        "dropping stats report of replica r1: busy_fraction=nan is not a finite number",
        "dropping stats report of replica r2: not a ReplicaStats but a dict",
    ]
    hub.report_stats("r1", make_stats(replica_id="r1"))
    assert len(hub.replica_stats()) == 1


def test_serving_directory_is_routes_plus_hub() -> None:
    d = ServingDirectory(VirtualClock())
    d.register_service("s", ModelConfig(n_layers=1, d_model=32, n_heads=2), "dense-8b")
    d.report_stats("r1", make_stats())
    assert d.snapshot()[1]["s"].name == "s" and d.replica_stats("s-a")
    assert isinstance(ServingDirectory().clock, WallClock)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{oops", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (json.dumps({"model": "m"}).encode(), "missing_field"),
        (json.dumps({"model": "m", "prompt": "x", "max_tokens": 0}).encode(), "invalid_value"),
        (json.dumps({"model": "m", "prompt": ["a", "b"]}).encode(), "invalid_value"),
    ],
)
def test_parse_completion_errors(body: bytes, code: str) -> None:
    with pytest.raises(ApiError) as e:
        parse_completion(body)
    assert e.value.status == 400 and e.value.code == code


def test_parse_completion_ok_and_context_check() -> None:
    req = parse_completion(json.dumps({"model": "m", "prompt": ["hi"], "stop": "x"}).encode())
    assert req.prompt_text == "hi" and req.stop_list == ("x",) and req.max_tokens == 16
    svc = ServiceRoute("m", ModelConfig(max_context=64, kv_capacity_tokens=1000))
    check_context(svc, 10, 54)
    for prompt, max_tokens in ((64, 1), (10, 55)):
        with pytest.raises(ApiError) as e:
            check_context(svc, prompt, max_tokens)
        assert e.value.code == "context_length_exceeded"


def test_a_too_long_max_completion_tokens_is_named_as_sent() -> None:
    """Hypothesis found the error naming `max_tokens` for a chat that sent only
    `max_completion_tokens`: the client must see the parameter it sent."""
    from heteroscale_ray.serving.api_requests import parse_chat

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    svc = ServiceRoute("m", ModelConfig(max_context=64, kv_capacity_tokens=1000))
    for key in ("max_completion_tokens", "max_tokens"):
        req = parse_chat(json.dumps({**body, key: 60}).encode())
        with pytest.raises(ApiError) as e:
            check_context(svc, 10, 60, chat=True, limit_param=req.max_tokens_param)
        assert e.value.param == key and key in str(e.value)


def test_metrics_window_rates_percentiles_and_prometheus() -> None:
    clock = VirtualClock(start=5000.0)
    m = ReplicaMetrics(IDENTITY, peak_flops=1e12, window_s=10.0, clock=clock)
    clock.advance(10.0)  # a full window of uptime
    for _ in range(10):
        m.decode_step(tokens=8, busy_s=0.5, flops=1e11, context_tokens=8000)
        m.tbt(0.02)
    m.ttft(0.3)
    s = m.snapshot(running=8, queue_length=1, kv_use=0.25)
    assert s.timestamp == 5010.0
    assert s.decode_tps == pytest.approx(8.0, rel=0.01)
    assert s.busy_fraction == pytest.approx(0.5, rel=0.01)
    assert s.compute_fraction == pytest.approx(0.1, rel=0.01)
    assert s.tbt_p99 == pytest.approx(0.02) and s.ttft_p50 == pytest.approx(0.3)
    text = render_prometheus([s])
    assert 'heteroscale_decode_tokens_per_second{dg="a"' in text
    assert 'heteroscale_tbt_p99_seconds{dg="a"' in text and "quantile=" not in text
    clock.advance(10.1)  # every sample has left the window
    idle = m.snapshot()
    assert idle.decode_tps == 0.0 and idle.tbt_p99 is None and idle.steps == 10


def test_metrics_rates_span_the_uptime_of_a_fresh_replica() -> None:
    clock = VirtualClock()
    m = ReplicaMetrics(IDENTITY, peak_flops=1e12, window_s=10.0, clock=clock)
    clock.advance(2.0)  # up for 2 s of a 10 s window: divide by 2, not by 10
    m.decode_step(tokens=20, busy_s=1.0, flops=0.0, context_tokens=20_000)
    s = m.snapshot()
    assert s.decode_tps == pytest.approx(10.0) and s.busy_fraction == pytest.approx(0.5)


def test_ingress_arrivals_are_summed_over_fresh_reports() -> None:
    clock = VirtualClock()
    meter = ArrivalMeter(window_s=10.0, clock=clock)
    clock.advance(10.0)  # a full window of uptime
    for _ in range(5):
        meter.add("chat", 400)
    meter.add("docs", 15000)
    rates = meter.rates()
    assert rates == {
        "chat": pytest.approx(200.0, rel=0.01),
        "docs": pytest.approx(1500.0, rel=0.01),
    }
    hub = MetricsHub(clock)
    hub.report_arrivals("ingress-a", rates)
    hub.report_arrivals("ingress-b", {"chat": 100.0})
    assert hub.arrival_rates() == {
        "chat": pytest.approx(300.0, rel=0.01),
        "docs": pytest.approx(1500.0, rel=0.01),
    }
    clock.advance(STATS_TTL_S + 1.0)
    hub.report_arrivals("ingress-a", rates)  # ingress-b has gone silent
    assert hub.arrival_rates()["chat"] == pytest.approx(200.0, rel=0.01)
    assert 'heteroscale_prompt_arrival_tokens_per_second{service="docs"}' in render_arrivals(rates)


def test_prefill_reports_its_queue_and_the_ttft_split() -> None:
    clock = VirtualClock()
    m = ReplicaMetrics({**IDENTITY, "role": "prefill"}, peak_flops=1e12, clock=clock)
    empty = m.snapshot(queued_prompt_tokens=0)
    assert empty.prefill_queue_s == 0.0 and empty.ttft_wait_p99 is None
    # A queue before anything ran: priced with the seeded prior, or unknown without one.
    assert m.snapshot(queued_prompt_tokens=500).prefill_queue_s is None
    m.seed_prefill_rate(1000.0)
    assert m.snapshot(queued_prompt_tokens=500).prefill_queue_s == pytest.approx(0.5)
    clock.advance(10.0)
    # 4 prompts of 1,000 tokens (a quarter cache hits) in 0.5 s each: 2,000 tokens/busy-s.
    for wait in (0.1, 0.2, 0.3, 2.0):
        m.prefill_done(750, 250, busy_s=0.5, flops=1e11, wait_s=wait)
    m.prefill_done(0, 0, busy_s=0.0, flops=0.0, wait_s=-1.0)  # clock skew: clamped to 0
    s = m.snapshot(queued_prompt_tokens=3000, queue_length=3, running=1)
    assert s.prefill_tokens_per_busy_s == pytest.approx(2000.0)
    assert s.prefill_queue_s == pytest.approx(1.5)
    assert s.ttft_wait_p50 == pytest.approx(0.2)
    assert s.ttft_wait_p99 == pytest.approx(2.0, rel=0.05)
    assert s.ttft_service_p99 == pytest.approx(0.5)
    assert stats_problem(s) is None
    clock.advance(10.1)  # the samples leave the window; the measured rate stays
    idle = m.snapshot(queued_prompt_tokens=1000)
    assert idle.ttft_wait_p99 is None and idle.ttft_service_p99 is None
    assert idle.prefill_queue_s == pytest.approx(0.5)


def test_prefill_reports_the_queue_prompts_landing_together_built_between_reports() -> None:
    """Three prompts of 1,000 tokens land together and drain before the report: the report's
    queue is empty, its window peak is the 3,000 tokens they queued (1.5 s at 2,000 tok/s)."""
    clock = VirtualClock()
    m = ReplicaMetrics({**IDENTITY, "role": "prefill"}, peak_flops=1e12, clock=clock)
    m.seed_prefill_rate(2000.0)
    assert m.snapshot(queued_prompt_tokens=0).prefill_queue_peak_s == 0.0
    for queued in (1000, 2000, 3000):
        m.prompt_queued(queued)
    clock.advance(2.0)
    s = m.snapshot(queued_prompt_tokens=0)
    assert s.prefill_queue_s == 0.0 and s.prefill_queue_peak_s == pytest.approx(1.5)
    assert m.snapshot(queued_prompt_tokens=8000).prefill_queue_peak_s == pytest.approx(4.0)
    clock.advance(10.1)  # the bunch leaves the window
    assert m.snapshot(queued_prompt_tokens=0).prefill_queue_peak_s == 0.0


def test_the_token_mean_step_weighs_a_spiking_batch_by_the_tokens_it_made() -> None:
    """Nine steps of 4 sequences at 10 ms, then a bunch of requests landing together: one
    step of 60 at 80 ms. The mean step (17 ms) hides the spike that made most tokens."""
    clock = VirtualClock()
    m = ReplicaMetrics(IDENTITY, peak_flops=1e12, window_s=10.0, clock=clock)
    for _ in range(9):
        m.decode_step(tokens=4, busy_s=0.01, flops=0.0, context_tokens=4_000)
    m.decode_step(tokens=60, busy_s=0.08, flops=0.0, context_tokens=60_000)
    s = m.snapshot()
    assert s.step_mean_s == pytest.approx(0.017)
    assert s.step_token_mean_s == pytest.approx((36 * 0.01 + 60 * 0.08) / 96)


def test_decode_reports_batch_step_time_and_output_lengths() -> None:
    clock = VirtualClock()
    m = ReplicaMetrics(IDENTITY, peak_flops=1e12, window_s=10.0, clock=clock)
    clock.advance(10.0)
    idle = m.snapshot()
    assert idle.running_mean == 0.0 and idle.step_mean_s is None
    assert idle.finished_requests == 0 and idle.output_tokens_mean is None
    for i in range(50):  # 5 s of 8- and 4-sequence steps at 0.1 s, the other 5 s idle
        m.decode_step(tokens=8 if i % 2 else 4, busy_s=0.1, flops=0.0, context_tokens=12_000)
    for n in (10, 20, 60):
        m.request_finished(n)
    s = m.snapshot(running=8, queue_length=2)
    assert s.running_mean == pytest.approx(3.0)  # idle time counts as an empty batch
    assert s.step_mean_s == pytest.approx(0.1)
    # ... but the step was taken at 6 sequences of 2,000 KV tokens each
    assert s.step_batch_mean == pytest.approx(6.0)
    assert s.step_context_mean == pytest.approx(2000.0)
    assert (s.finished_requests, s.output_tokens_mean) == (3, pytest.approx(30.0))
    assert s.step_token_mean_s == pytest.approx(0.1)  # every step made its tokens at 0.1 s
    clock.advance(10.1)
    gone = m.snapshot()
    assert gone.running_mean == 0.0 and gone.step_mean_s is None and gone.finished_requests == 0
    assert gone.step_batch_mean is None and gone.step_context_mean is None


def test_new_per_replica_values_are_exported_to_prometheus() -> None:
    pre = make_stats(
        role="prefill",
        replica_id="p",
        queued_prompt_tokens=3000,
        prefill_queue_s=1.5,
        prefill_tokens_per_busy_s=2000.0,
        ttft_wait_p99=2.0,
        ttft_service_p99=0.5,
    )
    dec = make_stats(
        running_mean=4.0, step_mean_s=0.1, finished_requests=3, output_tokens_mean=30.0
    )
    text = render_prometheus([pre, dec])
    for line in (
        "heteroscale_prefill_queued_prompt_tokens{",
        "heteroscale_prefill_queue_seconds{",
        "heteroscale_prefill_tokens_per_busy_second{",
        "heteroscale_running_sequences_mean{",
        "heteroscale_decode_step_seconds_mean{",
        "heteroscale_finished_requests_in_window{",
        "heteroscale_output_tokens_mean{",
    ):
        assert line in text, line
    assert 'heteroscale_ttft_wait_p99_seconds{dg="a",gpu_type="H20",replica="p"' in text
    assert 'heteroscale_ttft_service_p99_seconds{dg="a",gpu_type="H20",replica="p"' in text
    # Unknown values are left out, not exported as 0.
    unknown = render_prometheus([make_stats()])
    assert "heteroscale_decode_step_seconds_mean{" not in unknown
    assert "heteroscale_prefill_queue_seconds{" not in unknown


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("queued_prompt_tokens", -1, "queued_prompt_tokens=-1 is negative"),
        ("prefill_queue_s", math.nan, "prefill_queue_s=nan is neither None nor a finite number"),
        ("step_mean_s", "slow", "step_mean_s='slow' is neither None nor a finite number"),
        ("running_mean", None, "running_mean=None is not a finite number"),
        ("ttft_wait_p99", -0.5, "ttft_wait_p99=-0.5 is negative"),
    ],
)
def test_malformed_new_values_make_a_report_unusable(
    field: str, value: object, problem: str
) -> None:
    assert stats_problem(make_stats(**{field: value})) == problem


def test_ingress_counts_requests_and_their_prompt_tokens() -> None:
    clock = VirtualClock()
    meter = ArrivalMeter(window_s=10.0, clock=clock)
    clock.advance(2.0)  # up for 2 s of a 10 s window
    for tokens in (100, 300, 200, 400):
        meter.add("chat", tokens)
    load = meter.loads()["chat"]
    assert load.requests_per_s == pytest.approx(2.0)
    assert load.prompt_tokens_per_s == pytest.approx(500.0)
    assert load.prompt_mean == pytest.approx(250.0)
    assert load.prompt_sd == pytest.approx(np.std([100, 300, 200, 400]))
    text = render_arrivals(meter.loads())
    assert 'heteroscale_request_arrivals_per_second{service="chat"} 2.0' in text
    assert 'heteroscale_arrival_prompt_tokens_mean{service="chat"} 250.0' in text
    clock.advance(10.1)
    quiet = meter.loads()["chat"]
    assert quiet.requests_per_s == 0.0 and quiet.prompt_mean is None


def test_ingress_reports_prefills_the_handle_still_holds() -> None:
    meter = ArrivalMeter(window_s=10.0, clock=VirtualClock())
    meter.add("chat", 300)
    meter.add("chat", 500)
    meter.hold("chat", 300)
    meter.hold("chat", 500)
    assert meter.loads()["chat"].held_prompt_tokens == 800.0
    meter.release("chat", 300)  # a replica took it
    assert meter.loads()["chat"].held_prompt_tokens == 500.0
    text = render_arrivals(meter.loads())
    assert 'heteroscale_prefill_held_prompt_tokens{service="chat"} 500.0' in text
    meter.release("chat", 500)
    meter.release("chat", 500)  # a release never drives the count negative
    assert meter.loads()["chat"].held_prompt_tokens == 0.0


def test_hub_sums_ingress_loads_and_drops_malformed_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = VirtualClock()
    hub = MetricsHub(clock)
    hub.report_arrivals("ingress-a", {"chat": IngressLoad(1000.0, 4.0, 640_000.0, 300.0)})
    hub.report_arrivals(
        "ingress-b", {"chat": IngressLoad(2000.0, 2.0, 1_400_000.0, 200.0), "docs": 50.0}
    )
    with caplog.at_level(logging.WARNING, logger="heteroscale_ray.serving.metrics_hub"):
        hub.report_arrivals("ingress-c", {"chat": IngressLoad(math.nan, 1.0), "x": "many"})  # type: ignore[dict-item]
    loads = hub.ingress_loads()
    assert loads["chat"] == IngressLoad(3000.0, 6.0, 2_040_000.0, 500.0)
    assert loads["chat"].prompt_mean == 500.0 and loads["chat"].prompt_sd == pytest.approx(300.0)
    assert loads["docs"] == IngressLoad(50.0, None)  # tokens alone: requests unknown
    assert hub.arrival_rates() == {"chat": 3000.0, "docs": 50.0}
    assert len(caplog.records) == 2 and "prompt_tokens_per_s=nan" in caplog.records[0].getMessage()


def test_emulated_device_paces_and_reports_overruns() -> None:
    dev = EmulatedDevice("H20", "dense-8b", config=EmulationConfig(enabled=True, time_scale=2.0))
    base = EmulatedDevice("H20", "dense-8b", config=EmulationConfig(enabled=True))
    assert dev.decode_step_s(4, 1000) == pytest.approx(2 * base.decode_step_s(4, 1000))
    l20 = EmulatedDevice("L20", "dense-8b", config=EmulationConfig(enabled=True))
    assert l20.decode_step_s(4, 1000) > base.decode_step_s(4, 1000)  # less bandwidth
    t0 = time.perf_counter()
    _, timing = asyncio.run(dev.run(lambda: None, lambda _: 0.05))
    assert time.perf_counter() - t0 >= 0.05 and not timing.overrun
    _, timing = asyncio.run(dev.run(lambda: time.sleep(0.02), lambda _: 0.001))
    assert timing.overrun and dev.overruns == 1
    off = EmulatedDevice("H20", "dense-8b", config=EmulationConfig(enabled=False))
    assert off.decode_step_s(4, 1000) == 0.0


def _stream_outcomes(case: str) -> tuple[int, list[str]]:
    """How often a ReleasingStream's `close` ran, and what its body yielded, when the client
    stays (`full`), was gone before the first read (`gone`), or the request task is cancelled
    while the response headers wait (`cancelled`), as Serve does when a client leaves."""
    from heteroscale_ray.serving.api_responses import ReleasingStream

    closed: list[int] = []
    sent: list[str] = []

    async def body() -> AsyncIterator[str]:
        for x in ("a", "b"):
            sent.append(x)
            yield x

    async def run() -> None:
        resp = ReleasingStream(body(), lambda: closed.append(1))

        async def receive() -> dict[str, str]:
            if case == "gone":
                return {"type": "http.disconnect"}
            await asyncio.sleep(100)
            return {}

        async def send(message: dict[str, object]) -> None:
            await asyncio.sleep(10 if case == "cancelled" else 0)

        task = asyncio.ensure_future(resp({"type": "http"}, receive, send))
        if case == "cancelled":
            await asyncio.sleep(0.05)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())
    return len(closed), sent


@pytest.mark.parametrize(("case", "sent"), [("full", ["a", "b"]), ("gone", []), ("cancelled", [])])
def test_a_stream_frees_its_request_however_it_ends(case: str, sent: list[str]) -> None:
    """The body's own `finally` never runs when the body never started: before ReleasingStream
    the router's slots leaked there, and enough leaks answered every request with 429."""
    assert _stream_outcomes(case) == (1, sent)


@pytest.mark.parametrize(
    ("field", "value"),
    [("dg_id", None), ("gpu_type", 7), ("replica_id", None), ("steps", "x"),
     ("kv_handoff_count", "n/a"), ("ttft_p99", -5.0), ("tbt_p99", -1.0)],
)  # fmt: skip
def test_a_report_the_exports_cannot_render_is_refused(field: str, value: object) -> None:
    """Each passed the check, then failed GET /metrics for every replica (or read as a
    negative latency)."""
    base = dict(replica_id="r", app_name="a", service="s", dg_id="d", role="decode", gpu_type="H20")
    report = ReplicaStats(**{**base, field: value})  # type: ignore[arg-type]
    assert stats_problem(report) is not None
    render_prometheus([ReplicaStats(**base)])  # type: ignore[arg-type]


def test_the_hub_forgets_gone_ingresses_and_keeps_arrivals_past_a_bad_migration_count() -> None:
    clock = VirtualClock()
    hub = MetricsHub(clock)
    for i in range(50):  # ingress restarts come back under new ids
        hub.report_arrivals(f"ingress-{i}", {"chat": IngressLoad(1.0, 1.0)})
    hub.report_stats("bad-replica", "garbage")  # type: ignore[arg-type]
    clock.advance(STATS_TTL_S + 1)
    assert hub.ingress_loads() == {} and hub.replica_stats() == []
    assert (len(hub._arrivals), len(hub._rejected)) == (0, 0)
    hub.report_arrivals("ing", {"chat": IngressLoad(5.0)}, {"chat": {"x": math.nan, "y": 2}})
    assert hub.ingress_loads()["chat"].prompt_tokens_per_s == 5.0
    assert hub._migrations["ing"] == {"chat": {"y": 2}}


def test_the_arrival_meter_forgets_services_no_longer_routed() -> None:
    clock = VirtualClock()
    meter = ArrivalMeter(clock=clock)
    meter.add("chat", 100)
    meter.add("gone", 50)
    meter.hold("gone", 50)
    meter.keep(["chat"])
    assert set(meter.loads()) == {"chat"}
