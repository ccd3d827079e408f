"""Dynamic P/D ratio: measurement, smoothing, snapping, hysteresis, and how decide() uses it."""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_policy import NOW, counts, make_service

from heteroscale_ray.config import ConfigError, Role, ServicesConfig, parse_yaml_text
from heteroscale_ray.control import HeteroScaleAutoscaler, Observation, control_cycle
from heteroscale_ray.policy import PolicyState, Reason, Signals, decide
from heteroscale_ray.policy.dynamic_ratio import (
    measured_ratio,
    nearest_ratio,
    smooth,
    step_ratio,
)

# 1:3 service; a decode instance carries 1,000 tok/s and a prefill instance 6,000 tok/s, so
# decode 9,000 tok/s (9 instances) with prefill 18,000 tok/s (3 instances) is exactly 1:3.
DYN = {"enabled": True, "paired_target_per_instance": 6000, "smoothing_s": 0}


def dyn_service(**dyn: Any) -> Any:
    return make_service(policy={"dynamic_ratio": {**DYN, **dyn}})


def sig(prefill_tps: float | None, decode_tps: float | None, age: float = 0.0) -> Signals:
    return Signals(observed_at=NOW - age, prefill_tps=prefill_tps, decode_tps=decode_tps)


@pytest.mark.parametrize(
    ("signal", "prefill_tps", "decode_tps", "expected"),
    [
        ("decode_tps", 6000, 1000, 1.0),  # one prefill's worth per decode's worth
        ("decode_tps", 12000, 3000, 2 / 3),
        ("decode_tps", 0, 3000, None),  # no prefill load: nothing to learn
        ("decode_tps", 6000, None, None),
        ("decode_tps", math.nan, 1000, None),
        ("prefill_tps", 2000, 6000, (2000 / 1000) / (6000 / 6000)),  # targets swap roles
    ],
)
def test_measured_ratio(
    signal: str, prefill_tps: float, decode_tps: float | None, expected: float | None
) -> None:
    spec = make_service(policy={"signal": signal, "dynamic_ratio": DYN})
    got = measured_ratio(spec, sig(prefill_tps, decode_tps))
    assert got == pytest.approx(expected) if expected is not None else got is None


@pytest.mark.parametrize(
    ("served", "offered", "expected"),
    [
        (18000, None, 1 / 3),
        (18000, 36000, 2 / 3),  # prefill saturated: arrivals show the real need
        (36000, 18000, 2 / 3),  # a backlog draining: processed tokens are the larger
        (None, 36000, 2 / 3),
        (18000, math.nan, 1 / 3),
    ],
)
def test_measured_ratio_takes_the_larger_of_served_and_offered(
    served: float | None, offered: float | None, expected: float
) -> None:
    signals = Signals(
        observed_at=NOW, prefill_tps=served, prefill_offered_tps=offered, decode_tps=9000
    )
    assert measured_ratio(dyn_service(), signals) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("previous", "dt", "value", "tau", "expected"),
    [
        (None, 10, 2.0, 300, 2.0),  # first value taken as is
        (1.0, 10, 4.0, 0, 4.0),  # no smoothing
        (1.0, 300, 4.0, 300, 4.0 ** (1 - math.exp(-1))),  # log-space EWMA, one time constant
        (1.0, 0, 4.0, 300, 1.0),  # no time passed, no weight
        (0.5, 1e9, 2.0, 300, 2.0),  # long gap: the old value is forgotten
    ],
)
def test_smooth(
    previous: float | None, dt: float, value: float, tau: float, expected: float
) -> None:
    assert smooth(previous, NOW - dt, value, NOW, tau) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "max_term", "low", "high", "expected"),
    [
        (1.0, 8, (1, 8), (8, 1), (1, 1)),
        (0.34, 8, (1, 8), (8, 1), (1, 3)),
        (0.62, 8, (1, 8), (8, 1), (5, 8)),
        (0.62, 2, (1, 8), (8, 1), (1, 2)),  # coarse grid
        (1 / 20, 8, (1, 8), (8, 1), (1, 8)),  # below the lowest allowed
        (0.2, 8, (1, 3), (3, 1), (1, 3)),  # clamped to the configured bound
        (30.0, 4, (1, 8), (8, 1), (4, 1)),  # the grid cannot reach the bound
        (0.5, 1, (1, 4), (1, 2), (1, 2)),  # no grid ratio inside the bounds: the bounds
        (0.1, 1, (1, 4), (1, 2), (1, 4)),
    ],
)
def test_nearest_ratio(
    value: float,
    max_term: int,
    low: tuple[int, int],
    high: tuple[int, int],
    expected: tuple[int, int],
) -> None:
    assert nearest_ratio(value, max_term, low, high) == expected


def test_disabled_keeps_the_configured_ratio_and_state() -> None:
    spec = make_service()
    step = step_ratio(spec, sig(60000, 1000), PolicyState(), NOW)
    assert (step.ratio, step.estimate, step.changed) == ((1, 3), None, False)


@pytest.mark.parametrize(
    ("prefill_tps", "decode_tps", "tolerance", "ratio", "changed"),
    [
        (18000, 9000, 0.2, (1, 3), False),  # exactly the configured need: stays
        (21000, 9000, 0.2, (1, 3), False),  # 1.17x the active ratio: inside the tolerance
        (27000, 9000, 0.2, (1, 2), True),  # 1.5x: moves to the nearest, 1:2
        (36000, 9000, 0.2, (2, 3), True),  # 2x: 2:3
        (27000, 9000, 0.6, (1, 3), False),  # wider tolerance holds
        (6000, 9000, 0.2, (1, 8), True),  # 1:9 needed: stops at the lower bound, 1:8
    ],
)
def test_step_ratio_hysteresis(
    prefill_tps: float, decode_tps: float, tolerance: float, ratio: tuple[int, int], changed: bool
) -> None:
    spec = dyn_service(change_tolerance=tolerance)
    step = step_ratio(spec, sig(prefill_tps, decode_tps), PolicyState(), NOW)
    assert (step.ratio, step.changed) == (ratio, changed)
    assert step.estimate == pytest.approx((prefill_tps / 6000) / (decode_tps / 1000))


def test_an_estimate_between_two_grid_ratios_does_not_flip() -> None:
    """Review finding: with a tolerance smaller than the grid's gaps, an estimate near the
    midpoint of 1:2 and 3:7 flipped the ratio every tick."""
    spec = dyn_service(change_tolerance=0.05)
    state = PolicyState(active_ratio=(1, 2), ratio_estimate=0.5, ratio_estimate_at=NOW - 10)
    ratios = []
    for k, need in enumerate([0.47, 0.455, 0.47, 0.455, 0.47]):
        t = NOW + 10 * k
        step = step_ratio(spec, Signals(t, 9000, need * 54000), state, t)
        state = PolicyState(
            active_ratio=step.ratio, ratio_estimate=step.estimate, ratio_estimate_at=t
        )
        ratios.append(step.ratio)
    assert len(set(ratios)) <= 2 and sum(a != b for a, b in pairwise(ratios)) <= 1


def test_the_ratio_stays_inside_bounds_the_grid_cannot_reach() -> None:
    """Review finding: max_term 1 with bounds 1:4..1:2 used to snap to 1:1 (outside)."""
    spec = dyn_service(max_term=1, min_ratio="1:4", max_ratio="1:2")
    step = step_ratio(spec, sig(27000, 9000), PolicyState(), NOW)  # need 1:2
    assert step.ratio == (1, 2)


def test_one_sample_after_a_long_gap_weighs_like_one_period() -> None:
    """Review finding: after an idle hour one snapshot replaced the average outright."""
    spec = dyn_service(smoothing_s=300)
    state = PolicyState(
        active_ratio=(1, 3),
        ratio_estimate=1 / 3,
        ratio_estimate_at=NOW - 3600,
        last_decision_at=NOW - 15,
    )
    step = step_ratio(spec, sig(54000, 9000), state, NOW)  # a 1:1 need
    assert step.ratio == (1, 3)
    assert step.estimate == pytest.approx(smooth(1 / 3, NOW - 15, 1.0, NOW, 300))


def test_a_ratio_change_waits_out_a_scaling_cooldown() -> None:
    spec = dyn_service()
    just_scaled = PolicyState(last_scale_in_at=NOW - 5)
    held, state = decide(spec, sig(36000, 9000), counts(3, 9), just_scaled, NOW)
    assert (str(held.pd_ratio), held.prefill) == ("1:3", 3)
    assert state.active_ratio == (1, 3) and state.ratio_estimate == pytest.approx(2 / 3)
    later, _ = decide(spec, sig(36000, 9000), counts(3, 9), state, NOW + 30)
    assert (str(later.pd_ratio), later.prefill, later.reason) == ("2:3", 6, Reason.RATIO_DRIFT)


def test_a_time_table_ratio_wins_without_claiming_the_dynamic_one() -> None:
    spec = make_service(
        policy={
            "mode": "hybrid",
            "dynamic_ratio": DYN,
            "periodic": [
                {"start": "00:00", "end": "23:59", "decode_instances": 30, "pd_ratio": "1:3"}
            ],
        }
    )
    decision, _ = decide(spec, sig(36000, 9000), counts(3, 9), PolicyState(), NOW)
    assert str(decision.pd_ratio) == "1:3"
    assert "ratio now" not in decision.message


@pytest.mark.parametrize("age", [61.0, 1e6])
def test_stale_snapshot_leaves_the_ratio(age: float) -> None:
    spec = dyn_service()
    state = PolicyState(active_ratio=(1, 2), ratio_estimate=0.5, ratio_estimate_at=NOW - 100)
    step = step_ratio(spec, sig(60000, 1000, age=age), state, NOW)
    assert (step.ratio, step.estimate, step.changed) == ((1, 2), 0.5, False)


def test_active_ratio_outside_new_bounds_falls_back_to_the_configured_one() -> None:
    spec = dyn_service(min_ratio="1:4", max_ratio="1:1")
    state = PolicyState(active_ratio=(4, 1), ratio_estimate=4.0, ratio_estimate_at=NOW - 10)
    step = step_ratio(spec, sig(None, None), state, NOW)
    assert step.ratio == (1, 3)


def test_smoothing_starts_from_the_configured_ratio() -> None:
    """The first snapshot (here a 2:3 need) only seeds the average at the configured 1:3."""
    spec = dyn_service(smoothing_s=300)
    step = step_ratio(spec, sig(36000, 9000), PolicyState(), NOW)
    assert (step.ratio, step.changed) == ((1, 3), False)
    assert (step.estimate, step.estimate_at) == (pytest.approx(1 / 3), NOW)


def test_smoothing_needs_sustained_drift() -> None:
    """A one-tick burst of long prompts does not move a 300 s average; a sustained shift does,
    in steps of at least the tolerance, ending at the new need."""
    spec = dyn_service(smoothing_s=300)
    start = NOW - 3600
    state = decide(spec, Signals(start, 9000, 18000), counts(3, 9), PolicyState(), start)[1]
    burst = decide(spec, Signals(start + 10, 9000, 36000), counts(3, 9), state, start + 10)[0]
    assert str(burst.pd_ratio) == "1:3"
    t, have, changes = start, (3, 9), []
    for _ in range(180):  # 30 minutes of a 2:3 need, ticks of 10 s
        t += 10
        decision, state = decide(spec, Signals(t, 9000, 36000), counts(*have), state, t)
        if str(decision.pd_ratio) != (changes[-1][1] if changes else "1:3"):
            assert decision.reason is Reason.RATIO_DRIFT
            changes.append((t - start, str(decision.pd_ratio)))
        have = (decision.prefill, decision.decode)
    assert changes[0][0] >= 60, changes  # the first move waits for the average to follow
    assert len(changes) <= 5, changes  # each move is at least the 20% tolerance
    # It ends within the tolerance of the 2:3 need (hysteresis: not necessarily on it).
    p, d = (int(x) for x in changes[-1][1].split(":"))
    assert abs(math.log((p / d) / (2 / 3))) <= math.log(1.2), changes
    assert have == (math.ceil(9 * p / d), 9)


def test_drift_moves_only_the_follower_and_says_why() -> None:
    spec = dyn_service()
    # decode load stays at 9 instances' worth (inside the dead-band), prefill need doubles.
    decision, state = decide(spec, sig(36000, 9000), counts(3, 9), PolicyState(), NOW)
    assert decision.reason is Reason.RATIO_DRIFT
    assert (decision.prefill, decision.decode) == (6, 9)
    assert str(decision.pd_ratio) == "2:3"
    assert "ratio now 2:3" in decision.message
    assert state.active_ratio == (2, 3)
    # The next tick at the same load holds at the new ratio.
    again, _ = decide(spec, sig(36000, 9000), counts(6, 9), state, NOW + 10)
    assert again.reason is Reason.HOLD_DEADBAND
    assert (again.prefill, again.decode, str(again.pd_ratio)) == (6, 9, "2:3")


def test_scale_out_uses_the_new_ratio() -> None:
    spec = dyn_service()
    decision, _ = decide(spec, sig(72000, 18000), counts(3, 9), PolicyState(), NOW)
    assert decision.reason is Reason.SCALE_OUT
    assert (decision.prefill, decision.decode, str(decision.pd_ratio)) == (12, 18, "2:3")
    assert decision.required_prefill == pytest.approx(12)


def test_prefill_bounds_still_win() -> None:
    """The 2:3 drift wants 6 prefill but the maximum is 4; as with a fixed ratio, decode
    stays at what 4 prefill can feed (more decode would wait on prefill anyway)."""
    spec = make_service(prefill={"max_instances": 4}, policy={"dynamic_ratio": DYN})
    decision, _ = decide(spec, sig(36000, 9000), counts(3, 9), PolicyState(), NOW)
    assert (decision.prefill, decision.decode) == (4, 6)
    assert decision.reason is Reason.CLAMPED_MIN_MAX


def test_state_round_trips_through_json() -> None:
    spec = dyn_service()
    _, state = decide(spec, sig(36000, 9000), counts(3, 9), PolicyState(), NOW)
    again = PolicyState.from_json(state.to_json())
    assert again == state
    assert again.active_ratio == (2, 3)


@pytest.mark.parametrize(
    ("dyn", "mode", "needle"),
    [
        ({"enabled": True}, "metrics", "paired_target_per_instance"),
        ({"min_ratio": "2:1", "max_ratio": "1:2"}, "metrics", "swap them"),
        ({"min_ratio": "one to two"}, "metrics", "'1:3'"),
        ({**DYN, "min_ratio": "1:2"}, "metrics", "pd_ratio '1:3' lies outside"),
        ({**DYN}, "periodic", "mode 'periodic'"),
    ],
)
def test_config_errors_name_the_fix(dyn: dict[str, Any], mode: str, needle: str) -> None:
    periodic = ", periodic: [{start: '00:00', end: '12:00', decode_instances: 2}]"
    yaml = (
        "services:\n  - {name: chat, slo: {ttft_s: 1, tbt_s: 0.04}, pd_ratio: '1:3',\n"
        "     prefill: {gpu_types: [L20]}, decode: {gpu_types: [H20]},\n"
        f"     policy: {{mode: {mode}, target_per_instance: 1000, dynamic_ratio: {dyn!r}"
        f"{periodic if mode != 'metrics' else ''}}}}}\n"
    ).replace("True", "true")
    with pytest.raises(ConfigError) as e:
        parse_yaml_text(yaml, ServicesConfig, "services.yaml")
    assert "dynamic_ratio" in str(e.value) or "pd_ratio" in str(e.value)
    assert needle in str(e.value)


def test_control_cycle_places_new_dgs_at_the_dynamic_ratio() -> None:
    """DGs of at most 5 instances: at 1:3 units they would be 1P+3D plus stray prefill;
    at the policy's 2:3 every DG is one whole 2P+3D unit."""
    from topology_builders import make_graph

    spec = make_service(
        prefill={"gpu_types": ["H20"]},
        policy={"dynamic_ratio": DYN},
        dg_max_instances=5,
    )
    graph = make_graph({"s2": {"s1-a": ["H20"] * 4}})
    scaler = HeteroScaleAutoscaler([spec])
    obs = {spec.name: Observation(spec.name, sig(12000, 6000))}
    desired = scaler.desire(NOW, obs)
    result = control_cycle(desired, graph=graph, services={spec.name: spec}, dgs=())
    assert (
        str(desired[spec.name].pd_ratio) == "1:3"
    )  # the first tick starts at the configured ratio
    # Later the need has drifted to 2:3: the DG grows in 2:3 units.
    state = PolicyState(active_ratio=(2, 3), ratio_estimate=2 / 3, ratio_estimate_at=NOW)
    scaler.states[spec.name] = state
    obs = {spec.name: Observation(spec.name, sig(24000, 6000))}
    desired = scaler.desire(NOW + 5, obs)
    result = control_cycle(desired, graph=graph, services={spec.name: spec}, dgs=())
    assert str(desired[spec.name].pd_ratio) == "2:3"
    assert sorted((dg.count(Role.PREFILL), dg.count(Role.DECODE)) for dg in result.dgs) == [
        (2, 3),
        (2, 3),
    ]


@settings(max_examples=200, deadline=None)
@given(
    prefill=st.floats(0, 1e7) | st.just(math.nan),
    decode=st.floats(0, 1e7) | st.just(math.nan),
    max_term=st.integers(1, 12),
    tolerance=st.floats(0, 2),
)
def test_active_ratio_always_within_bounds_and_terms(
    prefill: float, decode: float, max_term: int, tolerance: float
) -> None:
    spec = dyn_service(
        min_ratio="1:6", max_ratio="3:1", max_term=max_term, change_tolerance=tolerance
    )
    step = step_ratio(spec, sig(prefill, decode), PolicyState(), NOW)
    p, d = step.ratio
    assert 1 / 6 - 1e-9 <= p / d <= 3 + 1e-9
    assert step.ratio == (1, 3) or max(p, d) <= max_term
    if step.estimate is not None:
        assert math.isfinite(step.estimate) and step.estimate > 0
