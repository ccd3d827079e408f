"""Replica reports -> observations: partial or malformed reports must make the policy hold."""

from __future__ import annotations

import math

import pytest

from heteroscale_ray.actors.observe import build_observations
from heteroscale_ray.config import parse_yaml_text
from heteroscale_ray.config.services import ServicesConfig
from heteroscale_ray.policy import PolicyState, Reason, RoleCounts, decide


def report(role: str, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "service": "chat",
        "role": role,
        "timestamp": 100.0,
        "prefill_tps": 0.0,
        "decode_tps": 10.0,
        "busy_fraction": 0.5,
        "compute_fraction": 0.2,
        "queue_length": 0,
        "running": 1,
        "kv_use": 0.1,
        "ttft_p99": None,
        "tbt_p99": None,
    }
    return {**base, **kw}


FULL = [report("prefill"), *(report("decode") for _ in range(4))]


@pytest.mark.parametrize(
    ("reports", "fresh"),
    [
        (FULL, True),
        (FULL[:3], False),  # two of four decode replicas silent: the sum would under-count
        (FULL[1:], False),  # the prefill replica silent
        ([*FULL[:4], report("decode", decode_tps="fast")], False),  # non-number
        ([*FULL[:4], report("decode", decode_tps=math.nan)], False),  # NaN
        ([*FULL[:4], {"service": "chat", "role": "decode"}], False),  # missing keys
        ([*FULL, {**report("decode"), "role": "router"}], True),  # unknown role ignored
    ],
)
def test_observed_only_when_every_ready_replica_reported(
    reports: list[dict[str, object]], fresh: bool
) -> None:
    counts = {"chat": RoleCounts(prefill_ready=1, decode_ready=4)}
    obs = build_observations(["chat"], reports, counts)["chat"]
    assert (obs.signals.observed_at is not None) is fresh


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
    arrived: float | None, prefill_reports: list[dict[str, object]], offered: float | None
) -> None:
    counts = {"chat": RoleCounts(prefill_ready=len(prefill_reports), decode_ready=1)}
    arrivals = {} if arrived is None else {"chat": arrived}
    reports = [*prefill_reports, report("decode")]
    obs = build_observations(["chat"], reports, counts, arrivals)["chat"]
    got = obs.signals.prefill_offered_tps
    assert got == pytest.approx(offered) if offered is not None else got is None
