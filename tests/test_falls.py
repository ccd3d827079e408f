"""The scale-in window, learned (policy/falls.py): a peak is held as long as falls this deep
have lasted before the need came back, at least a few start-up horizons."""

from __future__ import annotations

from dataclasses import replace

from test_demand_policy import NOW, counts, make_service, running, signals

from heteroscale_ray.config import Role
from heteroscale_ray.policy import PolicyState, decide, falls
from heteroscale_ray.policy.peak_window import raise_peak
from heteroscale_ray.policy.startup import horizon_s


def _needs(state: PolicyState, needs: list[float], start: float = NOW, every: float = 15.0):
    """Each need observed (returns recorded) and then entered into the window, one period
    apart; the state after, and the time of the last need."""
    spec = make_service()
    t = start
    for i, need in enumerate(needs):
        t = start + i * every
        state = falls.observe(spec, state, {Role.PREFILL: None, Role.DECODE: need}, t)
        state = raise_peak(spec, state, Role.DECODE, need, t)
    return state, t


def test_a_need_back_after_a_deep_fall_records_how_long_the_fall_lasted() -> None:
    state, t = _needs(PolicyState(), [10.0] + [1.0] * 8 + [10.0])
    assert state.decode_returns == ((t, 135.0, 0.1),)
    assert state.prefill_returns == ()
    # saved and loaded with the rest of the state
    back = PolicyState.from_json(state.to_json())
    assert back.decode_returns == state.decode_returns and back.decode_lows == state.decode_lows
    assert state.decode_lows == ((t - 15, 1.0), (t, 10.0))  # each the lowest from there on


def test_noise_inside_the_dead_band_and_a_climb_are_no_returns() -> None:
    """A dip no wider than the scale-in tolerance would not have scaled the role in; a need
    that climbs to a new level came back to nothing."""
    state, _ = _needs(PolicyState(), [10.0, 9.5, 9.2, 9.4, 10.0, 10.3, 14.0, 20.0, 30.0])
    assert state.decode_returns == ()


def test_returns_are_forgotten_after_the_burst_memorys_history() -> None:
    from heteroscale_ray.policy.burst import HISTORY_HORIZONS

    spec = make_service()
    state, t = _needs(PolicyState(), [10.0] + [1.0] * 8 + [10.0])
    later = t + HISTORY_HORIZONS * horizon_s(spec, state) + 1
    state = falls.observe(spec, state, {Role.PREFILL: None, Role.DECODE: 10.0}, later)
    assert state.decode_returns == ()


def test_a_peak_is_held_while_traffic_has_come_back_from_falls_this_deep() -> None:
    spec = make_service()
    floor = falls.FLOOR_HORIZONS * horizon_s(spec, PolicyState())
    bare = PolicyState()
    assert falls.holds(spec, bare, Role.DECODE, floor, 0.1)  # the floor holds any fall
    assert not falls.holds(spec, bare, Role.DECODE, floor + 1, 0.1)  # nothing came back
    deep = replace(bare, decode_returns=((NOW, 135.0, 0.1),))
    assert falls.holds(spec, deep, Role.DECODE, 800.0, 0.2)  # traffic came back from as deep
    assert not falls.holds(spec, deep, Role.DECODE, floor + 1, 0.05)  # deeper than any came back
    shallow = replace(bare, decode_returns=((NOW, 600.0, 0.85),))
    assert falls.holds(spec, shallow, Role.DECODE, 800.0, 0.9)
    assert not falls.holds(spec, shallow, Role.DECODE, floor + 1, 0.2)  # noise is no surge's end
    assert falls.holds_down_to(spec, deep, Role.DECODE) == 0.1
    assert falls.holds_down_to(spec, bare, Role.DECODE) == 1.0  # no return: only the floor
    # unlearned (configured off) or with no need to compare, the whole window holds
    fixed = make_service(demand={"learn_window": False})
    assert falls.holds_down_to(fixed, bare, Role.DECODE) == 0.0
    assert falls.holds(fixed, bare, Role.DECODE, 800.0, 0.1)
    assert falls.holds(spec, bare, Role.DECODE, 800.0, None)


def _decode(spec, state, at: float, rate: float, have: int):
    s = signals(observed_at=at, request_rate=rate, decode_running=18.0 * rate)
    return decide(spec, s, counts(4, have), state, at)


def test_a_surge_that_ends_is_let_go_after_the_floor_not_the_window() -> None:
    spec = make_service()
    floor = falls.FLOOR_HORIZONS * horizon_s(spec, PolicyState())
    state, t, have = running(), NOW, 3
    for _ in range(8):  # a surge five times the calm level for two minutes
        d, state = _decode(spec, state, t, 50.0, have)
        have, t = d.decode, t + 15
    surge = have
    held_until = None
    while t < NOW + 120 + spec.policy.demand.peak_window_s:
        d, state = _decode(spec, state, t, 10.0, have)
        if d.decode < surge * 0.5 and held_until is None:
            held_until = t
            assert "let go: no fall this deep came back" in d.message
        have, t = d.decode, t + 15
    assert held_until is not None and held_until - (NOW + 105) <= floor + 30
    # with the window fixed the same surge is held the whole window
    fixed = make_service(demand={"learn_window": False})
    state, t, have = running(), NOW, 3
    for _ in range(8):
        d, state = _decode(fixed, state, t, 50.0, have)
        have, t = d.decode, t + 15
    while t < NOW + 105 + floor + 60:
        d, state = _decode(fixed, state, t, 10.0, have)
        have, t = d.decode, t + 15
    assert have >= surge * 0.5


def test_traffic_that_comes_and_goes_is_held_through_its_lulls_once_one_came_back() -> None:
    """On for two minutes, off for eight: the first lull outlasts the floor and is scaled in
    (and out a start-up late on the return); the return teaches the window, and later lulls
    are held through the whole window."""
    spec = make_service()
    state, t, have = running(), NOW, 3
    changes = []
    for cycle in range(4):
        for phase_rate, periods in ((50.0, 8), (1.0, 32)):
            for _ in range(periods):
                d, state = _decode(spec, state, t, phase_rate, have)
                if d.decode != have:
                    changes.append((cycle, d.decode > have))
                have, t = d.decode, t + 15
    assert state.decode_returns and max(r[1] for r in state.decode_returns) >= 480
    assert any(cycle == 0 and not out for cycle, out in changes)  # the first lull: scaled in
    assert not any(cycle >= 2 and not out for cycle, out in changes)  # later lulls held
