"""Baseline autoscalers: each public rule as a table of cases, against in-memory observations."""

from __future__ import annotations

import pytest

from heteroscale_ray.config import ServicesConfig, parse_model
from heteroscale_ray.control import (
    HeteroScaleAutoscaler,
    HpaUtilAutoscaler,
    Observation,
    PoolObservation,
    ScheduledAutoscaler,
    ServeDefaultAutoscaler,
    StaticAutoscaler,
)
from heteroscale_ray.control.baselines import hpa_recommendation
from heteroscale_ray.policy import Signals


def make_services(**policy: object) -> ServicesConfig:
    return parse_model(
        ServicesConfig,
        {
            "services": [
                {
                    "name": "svc",
                    "slo": {"ttft_s": 1.0, "tbt_s": 0.04},
                    "pd_ratio": "1:1",
                    "prefill": {"gpu_types": ["L20"], "min_instances": 1, "max_instances": 50},
                    "decode": {"gpu_types": ["H20"], "min_instances": 1, "max_instances": 50},
                    "policy": {"target_per_instance": 1000, **policy},
                }
            ]
        },
    )


def obs(
    p_ready: int = 4,
    d_ready: int = 4,
    p_util: float | None = None,
    d_util: float | None = None,
    p_ongoing: float | None = None,
    d_ongoing: float | None = None,
    p_starting: int = 0,
    signals: Signals | None = None,
) -> dict[str, Observation]:
    return {
        "svc": Observation(
            "svc",
            signals or Signals(),
            PoolObservation(
                ready=p_ready, starting=p_starting, gpu_util=p_util, ongoing_requests=p_ongoing
            ),
            PoolObservation(ready=d_ready, gpu_util=d_util, ongoing_requests=d_ongoing),
        )
    }


@pytest.mark.parametrize(
    ("current", "ready", "util", "expected", "why"),
    [
        (4, 4, 0.6, 4, "at target"),
        (4, 4, 0.65, 4, "inside the 10% tolerance"),
        (4, 4, 0.54, 4, "inside the tolerance below"),
        (4, 4, 0.9, 6, "ceil(4 * 0.9 / 0.6) = 6"),
        (4, 4, 0.3, 2, "ceil(4 * 0.3 / 0.6) = 2"),
        (4, 4, 1.0, 7, "ceil(6.67) = 7"),
        (6, 4, 0.9, 6, "up with 2 starting: at 0% they bring the ratio to 1.0, in the band"),
        (8, 4, 1.5, 10, "up with 4 starting: 4 * 1.5 / 8 / 0.6 = 1.25 -> ceil(1.25 * 8) = 10"),
        (10, 2, 0.6, 10, "ready pods at target: starting pods are not cancelled"),
        (10, 2, 0.72, 10, "up on ready pods, down with starting at 0%: kept"),
        (10, 2, 0.3, 1, "down: ceil(0.5 * 2 ready) = 1, as HPA (the window holds it)"),
        (4, 4, float("inf"), 4, "infinite: hold"),
        (4, 4, None, 4, "no data: hold"),
        (4, 0, 0.9, 4, "no ready pods: hold"),
        (4, 4, float("nan"), 4, "NaN: hold"),
    ],
)
def test_hpa_recommendation(
    current: int, ready: int, util: float | None, expected: int, why: str
) -> None:
    assert hpa_recommendation(current, ready, util, 0.6, 0.1) == expected, why


def test_hpa_scale_down_waits_for_the_stabilisation_window() -> None:
    services = make_services()
    hpa = HpaUtilAutoscaler(services.services, target=0.6, tolerance=0.1, stabilization_s=300)
    # high load at t=0 recommends 6; then low load recommends 2, held back for 300 s
    assert hpa.desire(0, obs(p_util=0.9, d_util=0.6))["svc"].prefill == 6
    assert hpa.desire(15, obs(p_ready=6, p_util=0.2, d_util=0.6))["svc"].prefill == 6
    assert hpa.desire(299, obs(p_ready=6, p_util=0.2, d_util=0.6))["svc"].prefill == 6
    # t=301: the t=0 recommendation left the window; the max of the rest is 2
    assert hpa.desire(301, obs(p_ready=6, p_util=0.2, d_util=0.6))["svc"].prefill == 2


def test_hpa_scales_up_at_once_and_pools_independently() -> None:
    hpa = HpaUtilAutoscaler(make_services().services)
    hpa.desire(-100, obs(p_util=0.6, d_util=0.6))
    d = hpa.desire(0, obs(p_util=0.3, d_util=0.95))["svc"]
    assert (d.prefill, d.decode) == (4, 7)  # prefill held (stabilised), decode up: no coupling


def test_hpa_respects_bounds() -> None:
    hpa = HpaUtilAutoscaler(make_services().services)
    assert hpa.desire(0, obs(p_ready=40, p_util=1.0, d_util=0.6))["svc"].prefill == 50


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # (t, ongoing) pairs for the prefill pool with 4 replicas; target 2 per replica
        ([(0, 16)], 4),  # wants 8 but the upscale delay (30 s) has not passed
        ([(0, 16), (29, 16)], 4),
        ([(0, 16), (30, 16)], 8),  # held for 30 s: scale to ceil(16 / 2)
        ([(0, 16), (20, 8), (40, 16)], 4),  # the wish changed in between: the clock restarts
        ([(0, 2)], 4),  # wants 1; downscale delay 600 s
        ([(0, 2), (599, 2)], 4),
        ([(0, 2), (600, 2)], 1),
        ([(0, None)], 4),  # no data: hold
    ],
)
def test_serve_default_delays(steps: list[tuple[float, float | None]], expected: int) -> None:
    serve = ServeDefaultAutoscaler(make_services().services)
    result = None
    for t, ongoing in steps:
        result = serve.desire(t, obs(p_ongoing=ongoing, d_ongoing=8))["svc"]
    assert result is not None and result.prefill == expected


def test_serve_default_from_zero_scales_at_once() -> None:
    services = parse_model(
        ServicesConfig,
        {
            "services": [
                {
                    "name": "svc",
                    "slo": {"ttft_s": 1.0, "tbt_s": 0.04},
                    "pd_ratio": "1:1",
                    "prefill": {"gpu_types": ["L20"], "min_instances": 0},
                    "decode": {"gpu_types": ["H20"], "min_instances": 0},
                    "policy": {"target_per_instance": 1000},
                }
            ]
        },
    )
    serve = ServeDefaultAutoscaler(services.services)
    assert serve.desire(0, obs(p_ready=0, d_ready=0, p_ongoing=5, d_ongoing=0))["svc"].prefill == 3


def test_static_and_scheduled() -> None:
    assert StaticAutoscaler({"svc": (3, 5)}).desire(0, obs())["svc"].decode == 5
    sched = ScheduledAutoscaler(lambda name, now: (int(now // 10), 2))
    assert sched.desire(35, obs())["svc"].prefill == 3


def test_heteroscale_wraps_decide_and_keeps_state() -> None:
    auto = HeteroScaleAutoscaler(make_services().services)
    sig = Signals(observed_at=100.0, decode_tps=8000.0, prefill_tps=1.0)
    d = auto.desire(100.0, obs(signals=sig))["svc"]
    assert d.decode == 8 and d.prefill == 8  # 8000 / 1000 per instance, ratio 1:1
    assert auto.states["svc"].last_decision_at == 100.0


@pytest.mark.parametrize("ongoing", [None, float("nan"), float("inf")])
def test_serve_default_holds_without_a_finite_reading(ongoing: float | None) -> None:
    serve = ServeDefaultAutoscaler(make_services().services)
    assert serve.recommendation(PoolObservation(ready=3, ongoing_requests=ongoing)) is None
