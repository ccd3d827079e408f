"""Serving pieces that need no Ray: DG choice, request validation, metrics, emulated timing."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from heteroscale_ray.serving.emulation import EmulatedDevice, EmulationConfig
from heteroscale_ray.serving.engine import ModelConfig
from heteroscale_ray.serving.metrics import (
    ArrivalMeter,
    ReplicaMetrics,
    render_arrivals,
    render_prometheus,
)
from heteroscale_ray.serving.router import ApiError, check_context, parse_completion
from heteroscale_ray.serving.routing_table import DgRoute, RoutingTable, ServiceRoute, choose_dg


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


def test_routing_table_updates_and_stats_ttl() -> None:
    t = RoutingTable()
    t.register_service("s", ModelConfig(n_layers=1, d_model=32, n_heads=2), "dense-8b")
    t.upsert_dg(make_dg("a"))
    v0 = t.version()
    t.update_dg("s", "a", draining=True)
    version, services = t.snapshot()
    assert version > v0 and services["s"].dgs["a"].draining
    t.report_stats("r1", {"app_name": "s-a", "role": "decode"})
    assert t.replica_stats("s-a", "decode") and not t.replica_stats("s-a", "prefill")
    with pytest.raises(KeyError):
        t.upsert_dg(make_dg("x", service="unknown"))


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


def test_metrics_window_rates_percentiles_and_prometheus() -> None:
    ident = {
        "replica_id": "r",
        "app_name": "s-a",
        "service": "s",
        "dg_id": "a",
        "role": "decode",
        "gpu_type": "H20",
    }
    m = ReplicaMetrics(ident, peak_flops=1e12, window_s=10.0)
    m.started -= 10.0  # pretend a full window of uptime
    for _ in range(10):
        m.decode_step(tokens=8, busy_s=0.5, flops=1e11)
        m.tbt(0.02)
    m.ttft(0.3)
    s = m.snapshot(running=8, queue_length=1, kv_use=0.25)
    assert s.decode_tps == pytest.approx(8.0, rel=0.01)
    assert s.busy_fraction == pytest.approx(0.5, rel=0.01)
    assert s.compute_fraction == pytest.approx(0.1, rel=0.01)
    assert s.tbt_p99 == pytest.approx(0.02) and s.ttft_p50 == pytest.approx(0.3)
    text = render_prometheus([s.to_dict()])
    assert 'heteroscale_decode_tokens_per_s{dg="a"' in text
    assert 'quantile="0.99"' in text


def test_ingress_arrivals_are_summed_over_fresh_reports() -> None:
    meter = ArrivalMeter(window_s=10.0)
    meter.started -= 10.0  # a full window of uptime
    for _ in range(5):
        meter.add("chat", 400)
    meter.add("docs", 15000)
    rates = meter.rates()
    assert rates == {
        "chat": pytest.approx(200.0, rel=0.01),
        "docs": pytest.approx(1500.0, rel=0.01),
    }
    table = RoutingTable()
    table.report_arrivals("ingress-a", rates)
    table.report_arrivals("ingress-b", {"chat": 100.0})
    assert table.arrival_rates() == {
        "chat": pytest.approx(300.0, rel=0.01),
        "docs": pytest.approx(1500.0, rel=0.01),
    }
    table._arrivals["ingress-b"] = (time.monotonic() - 60.0, {"chat": 100.0})  # a gone ingress
    assert table.arrival_rates()["chat"] == pytest.approx(200.0, rel=0.01)
    assert 'heteroscale_prompt_arrival_tokens_per_s{service="docs"}' in render_arrivals(rates)


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
