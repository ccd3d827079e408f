"""Instance start-up, timed (policy/startup.py): the burst horizon follows how long this
deployment's instances take to serve, not the configured guess."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from heteroscale_ray.config import Role, ServiceSpec, load_services
from heteroscale_ray.policy import PolicyState, RoleCounts, decide, startup
from heteroscale_ray.policy.types import BurstMemory
from heteroscale_ray.sim.fleet import fleet_for
from heteroscale_ray.sim.replay import ReplayOptions, run_replay
from heteroscale_ray.traces import Trace
from tests.test_demand_policy import make_service, signals

T0 = 1_000_000.0
PERIOD = 15.0


def _counts(p: int, d: int, starting_p: int = 0, starting_d: int = 0) -> RoleCounts:
    return RoleCounts(p - starting_p, starting_p, d - starting_d, starting_d)


BOTH = {Role.PREFILL, Role.DECODE}


def _after(
    state: PolicyState, counts: RoleCounts, now: float, grew: bool = False, shrank: bool = False
) -> PolicyState:
    """A decision at `now` that grew or shrank both roles, then its timing step."""
    state = replace(state, last_decision_at=now)
    return startup.after_decision(
        state, counts, now, grew=BOTH if grew else set(), shrank=BOTH if shrank else set()
    )


def test_an_ask_is_timed_from_the_decision_to_none_starting() -> None:
    spec = make_service()
    state = _after(PolicyState(), _counts(2, 2), T0, grew=True)
    for k in range(1, 7):  # six periods starting: 90 s
        state = startup.observe(state, _counts(4, 4, 2, 2), T0 + k * PERIOD)
        state = replace(state, last_decision_at=T0 + k * PERIOD)
    assert startup.horizon_s(spec, state) == spec.policy.demand.burst_horizon_s  # the prior
    state = startup.observe(state, _counts(4, 4), T0 + 7 * PERIOD)
    assert state.startups == (105.0, 105.0)  # each role's
    assert startup.horizon_s(spec, state) == pytest.approx(105.0 + PERIOD)
    assert "instances start in 105 s (timed)" in startup.describe(state)


def test_an_ask_nothing_was_placed_for_is_not_timed() -> None:
    """A full fleet places nothing: no instance starts, and the next snapshot's lack of
    starting instances is no start-up of 15 s."""
    state = _after(PolicyState(), _counts(4, 4), T0, grew=True)
    for k in range(1, 10):
        state = startup.observe(state, _counts(4, 4), T0 + k * PERIOD)
    assert state.startups == () and state.startup_horizon_s is None


def test_a_later_unplaced_ask_does_not_time_an_earlier_ones_start_up() -> None:
    """Asked at T0 (placed), again at T0 + 75 s (nothing placed): the earlier instances landing
    at T0 + 90 s are not a 15-s start-up of the later ask."""
    state = _after(PolicyState(), _counts(2, 2), T0, grew=True)
    state = startup.observe(state, _counts(4, 4, 2, 2), T0 + PERIOD)
    state = _after(state, _counts(4, 4, 2, 2), T0 + 75.0, grew=True)
    state = startup.observe(state, _counts(4, 4), T0 + 90.0)
    assert state.startups == ()


def test_instances_the_soft_window_hands_back_time_nothing() -> None:
    """Instances held out of routing by the soft scale-in window come back at once: the role
    grows with nothing starting, which is no start-up of one period."""
    state = _after(PolicyState(), _counts(2, 2), T0, grew=True)
    state = startup.observe(state, _counts(4, 4), T0 + PERIOD)
    assert state.prefill_launch_at is None and state.decode_launch_at is None
    state = startup.observe(state, _counts(4, 4), T0 + 2 * PERIOD)
    assert state.startups == ()


def test_a_clock_that_went_back_times_nothing() -> None:
    state = _after(PolicyState(), _counts(2, 2), T0, grew=True)
    state = startup.observe(state, _counts(4, 4, 2, 2), T0 + PERIOD)
    state = startup.observe(state, _counts(4, 4), T0 - 60.0)
    assert state.startups == () and state.prefill_launch_at is None


def test_instances_that_landed_while_the_control_plane_was_away_time_nothing() -> None:
    """Seen starting at T0 + 15 s, then no snapshot for six hours: they landed somewhere in
    the gap. Timed, the gap had become a six-hour start-up and the burst horizon."""
    timed = replace(PolicyState(), startups=(100.0,) * 5, startup_horizon_s=115.0)
    state = _after(timed, _counts(2, 2), T0, grew=True)
    state = startup.observe(state, _counts(4, 4, 2, 2), T0 + PERIOD, 60.0)
    state = replace(state, last_decision_at=T0 + PERIOD)
    back = startup.observe(state, _counts(4, 4), T0 + 6 * 3600.0, 60.0)
    assert back.startups == (100.0,) * 5 and back.startup_horizon_s == 115.0
    assert back.prefill_launch_at is None and back.decode_launch_at is None
    state = replace(state, last_decision_at=T0 + 75.0)  # snapshots every period: timed
    on_time = startup.observe(state, _counts(4, 4), T0 + 90.0, 60.0)
    assert on_time.startups == (*(100.0,) * 3, 90.0, 90.0)  # each role timed


def test_a_scale_in_voids_the_timing_in_progress_of_its_role_only() -> None:
    """Start-ups cancelled by a scale-in end early: they time nothing. The other role's
    instances are still starting as they were."""
    state = _after(PolicyState(), _counts(2, 2), T0, grew=True)
    state = startup.observe(state, _counts(4, 4, 2, 2), T0 + PERIOD)
    state = replace(state, last_decision_at=T0 + 2 * PERIOD)
    state = startup.after_decision(
        state, _counts(4, 4, 2, 2), T0 + 2 * PERIOD, grew=set(), shrank={Role.PREFILL}
    )
    state = startup.observe(state, _counts(2, 4, 0, 2), T0 + 3 * PERIOD)
    assert state.startups == ()
    state = replace(state, last_decision_at=T0 + 90.0)
    state = startup.observe(state, _counts(2, 4), T0 + 105.0)
    assert state.startups == (105.0,)  # decode's


def test_the_median_of_the_last_timings_is_the_start_up() -> None:
    spec = make_service()
    state = replace(PolicyState(), startups=(90.0, 95.0, 600.0, 100.0, 105.0))
    state = _after(state, _counts(2, 2), T0, grew=True)
    state = startup.observe(state, _counts(4, 4, 2, 2), T0 + PERIOD)
    state = replace(state, last_decision_at=T0 + 90.0)
    state = startup.observe(state, _counts(4, 4), T0 + 105.0)
    assert state.startups == (600.0, 100.0, 105.0, 105.0, 105.0)  # the last KEPT
    assert startup.horizon_s(spec, state) == pytest.approx(105.0 + PERIOD)


def test_a_horizon_configured_off_stays_off() -> None:
    spec = make_service(demand={"burst_horizon_s": 0})
    assert startup.horizon_s(spec, replace(PolicyState(), startup_horizon_s=300.0)) == 0.0


def test_the_timings_survive_a_json_round_trip() -> None:
    state = replace(
        PolicyState(),
        prefill_launch_at=T0,
        prefill_launch_from=8,
        decode_launch_at=T0 + PERIOD,
        startups=(90.0, 105.0),
        startup_horizon_s=112.5,
        decode_burst=BurstMemory(),
    )
    assert PolicyState.from_json(state.to_json()) == state


def test_the_policy_times_its_own_asks() -> None:
    """Through decide: a step in the load grows both roles, their instances start for 300 s,
    and the horizon the burst headroom uses becomes 300 s plus the period."""
    spec: ServiceSpec = make_service()
    state = PolicyState()
    have = _counts(4, 4)
    t = T0
    calm = signals()
    _, state = decide(spec, replace(calm, observed_at=t), have, state, t)
    busy = signals(prefill_offered_tps=80_000.0, request_rate=80.0)
    decision, state = decide(spec, replace(busy, observed_at=t + PERIOD), have, state, t + PERIOD)
    assert decision.prefill > 4
    asked = _counts(decision.prefill, decision.decode, decision.prefill - 4, decision.decode - 4)
    t += PERIOD
    while t < T0 + PERIOD + 300.0:
        t += PERIOD
        _, state = decide(spec, replace(busy, observed_at=t), asked, state, t)
    t += PERIOD
    landed = _counts(decision.prefill, decision.decode)
    decision, state = decide(spec, replace(busy, observed_at=t), landed, state, t)
    assert state.startups == (t - (T0 + PERIOD),) * 2  # both roles grew then
    assert startup.horizon_s(spec, state) == pytest.approx(state.startups[0] + PERIOD)
    assert "(timed)" in decision.message


@pytest.mark.slow
def test_a_replay_with_slow_start_ups_times_them() -> None:
    """The simulator's instances take `startup_s` to serve; the policy learns it from its own
    asks (the horizon: the start-up, up to one period to see it, and one period)."""
    root = Path(__file__).resolve().parents[1]
    services = load_services(root / "examples" / "sim_services.yaml")
    spec = services.by_name()["general"]
    rng = np.random.default_rng(3)
    t = np.sort(rng.uniform(0, 3600.0, 90_000))
    ramp = rng.uniform(size=len(t)) < np.minimum(0.2 + t / 3000.0, 1.0)  # 5x over 50 min
    t = t[ramp]
    trace = Trace.from_columns(
        t, np.full(len(t), 1000), np.full(len(t), 200), duration_s=3600.0, source="ramp"
    )
    topo = fleet_for([spec], 256, (4, 4))
    opts = ReplayOptions(policy="heteroscale", startup_s=240.0)
    res = run_replay(services, topo, {"general": trace}, opts)
    messages = [c["general.message"] for c in res.cycles]
    assert any("instances start in 2" in m for m in messages), messages[-1]
    timed = [m for m in messages if "(timed)" in m][-1]
    seconds = float(timed.split("instances start in ")[1].split(" s")[0].replace(",", ""))
    assert 240.0 <= seconds <= 240.0 + opts.control_period_s
