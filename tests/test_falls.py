"""The scale-in window, learned (policy/falls.py): a peak is held the whole window only while
the role's traffic has come back from falls that deep, else a few start-up horizons."""

from __future__ import annotations

import json
from dataclasses import replace

from test_demand_policy import NOW, counts, make_service, running, signals

from heteroscale_ray.config import Role
from heteroscale_ray.policy import PolicyState, decide, falls
from heteroscale_ray.policy.burst import HISTORY_HORIZONS
from heteroscale_ray.policy.peak_window import (
    hold_found_fleet,
    known_level,
    let_go,
    raise_peak,
    raise_step,
    recent_peak,
)
from heteroscale_ray.policy.role_plan import role_plan
from heteroscale_ray.policy.startup import horizon_s
from heteroscale_ray.policy.types import Onset, Return

SPEC = make_service()
FLOOR = falls.FLOOR_HORIZONS * horizon_s(SPEC, PolicyState())


def _needs(state: PolicyState, needs: list[float], start: float = NOW, spec=SPEC):
    """Each need observed (returns recorded) and then entered into the window, one period
    apart, as decide_demand does; the state after, and the time of the last need."""
    t = start
    for i, need in enumerate(needs):
        t = start + i * 15.0
        state = falls.observe(spec, state, {Role.PREFILL: None, Role.DECODE: need}, t)
        state = raise_peak(spec, state, Role.DECODE, need, t)
    return state, t


def test_a_need_back_after_a_deep_fall_records_how_deep_it_went() -> None:
    state, t = _needs(PolicyState(), [10.0] + [1.0] * 8 + [10.0])
    assert state.decode_returns == ((t, 0.1, 135.0, 10.0, 0.0),)  # 0.1 deep, 135 s away, to 10
    assert state.prefill_returns == ()
    assert state.decode_lows == ((t - 15, 1.0), (t, 10.0))  # each the lowest from there on
    back = PolicyState.from_json(state.to_json())
    assert back.decode_returns == state.decode_returns and back.decode_lows == state.decode_lows


def test_the_depth_is_the_lowest_need_since_the_level_was_left() -> None:
    """A V-shaped fall is as deep as its bottom; the needs after a return are no new returns,
    and a fall before the level was last reached does not count in the next one."""
    state, t = _needs(PolicyState(), [10.0, 5.0, 1.0, 5.0, 10.0])
    assert state.decode_returns == ((t, 0.1, 60.0, 10.0, 0.0),)
    state, t = _needs(state, [10.0, 10.0, 10.0], start=t + 15)
    assert state.decode_returns == ((t - 45, 0.1, 60.0, 10.0, 0.0),)  # still up
    state, t = _needs(state, [7.0, 10.0], start=t + 15)  # a shallower fall, after the deep one
    assert [r[1] for r in state.decode_returns] == [0.1, 0.7]


def test_a_later_return_as_deep_replaces_the_earlier() -> None:
    state, _ = _needs(PolicyState(), [10.0, 2.0, 10.0, 1.0, 10.0])
    assert [r[1] for r in state.decode_returns] == [0.1]
    # one after a longer lull is kept beside a deeper, shorter one: each holds what it saw
    state, _ = _needs(PolicyState(), [10.0, 1.0, 10.0, 3.0, 3.0, 3.0, 10.0])
    assert [(r[1], r[2]) for r in state.decode_returns] == [(0.1, 30.0), (0.3, 60.0)]


def test_noise_inside_the_dead_band_and_a_climb_are_no_returns() -> None:
    """A dip no wider than the scale-in tolerance would not have scaled the role in; a need
    that climbs to a new level came back to nothing."""
    state, _ = _needs(PolicyState(), [10.0, 9.5, 9.2, 9.4, 10.0, 10.3, 14.0, 20.0, 30.0])
    assert state.decode_returns == ()


def test_a_fill_back_up_to_the_fleet_found_is_no_return() -> None:
    """The fleet found at the first decision is held the whole window, but a need filling up
    to it after a start is the fill, not traffic coming back."""
    state = hold_found_fleet(SPEC, PolicyState(), counts(4, 14), NOW)
    state = replace(state, started_at=NOW)
    state, _ = _needs(state, [1.0, 3.0, 6.0, 10.0, 13.0], start=NOW + 15)
    assert state.decode_returns == ()
    assert recent_peak(SPEC, state, Role.DECODE, NOW + 800) == 14.0


def test_returns_are_forgotten_after_the_burst_memorys_history() -> None:
    state, t = _needs(PolicyState(), [10.0] + [1.0] * 8 + [10.0])
    later = t + HISTORY_HORIZONS * horizon_s(SPEC, state) + 1
    state = falls.observe(SPEC, state, {Role.PREFILL: None, Role.DECODE: 10.0}, later)
    assert state.decode_returns == ()


def test_a_peak_is_held_while_traffic_has_come_back_from_falls_this_deep() -> None:
    bare = PolicyState()
    assert falls.holds(SPEC, bare, Role.DECODE, FLOOR, 0.1)  # the floor holds any fall
    assert not falls.holds(SPEC, bare, Role.DECODE, FLOOR + 1, 0.1)  # nothing came back
    deep = replace(bare, decode_returns=(Return(NOW, 0.1, 60.0, 10.0),))
    assert falls.holds(SPEC, deep, Role.DECODE, 800.0, 0.2)  # traffic came back from as deep
    assert not falls.holds(SPEC, deep, Role.DECODE, FLOOR + 1, 0.05)  # deeper than any came back
    shallow = replace(bare, decode_returns=(Return(NOW, 0.85, 60.0, 10.0),))
    assert falls.holds(SPEC, shallow, Role.DECODE, 800.0, 0.9)
    assert not falls.holds(SPEC, shallow, Role.DECODE, FLOOR + 1, 0.2)  # noise is no surge's end
    assert falls.holds_down_to(SPEC, deep, Role.DECODE) == 0.1
    assert falls.holds_down_to(SPEC, bare, Role.DECODE) == 1.0  # no return: only the floor
    # unlearned (configured off, or no start-up horizon) or with no need to compare: held
    for fixed in (
        make_service(demand={"learn_window": False}),
        make_service(demand={"burst_horizon_s": 0}),
    ):
        assert falls.holds(fixed, bare, Role.DECODE, 800.0, 0.1)
        assert falls.holds_down_to(fixed, bare, Role.DECODE) == 0.0
    assert falls.holds(SPEC, bare, Role.DECODE, 800.0, None)


def test_the_window_lets_a_need_go_but_holds_a_guard_step_while_its_load_holds() -> None:
    """A guard step is held like a need while the load it was taken at holds (proof.py); the
    learned window does not shorten it, only a load gone does (lapse_steps)."""
    state, t = _needs(PolicyState(), [14.0, 10.0])
    state = raise_step(SPEC, state, Role.DECODE, 16, 10.0, t)
    later = t + FLOOR + 60
    state = falls.observe(SPEC, state, {Role.PREFILL: None, Role.DECODE: 10.0}, later)
    assert recent_peak(SPEC, state, Role.DECODE, later) == 16.0
    assert let_go(SPEC, state, Role.DECODE, later) == 14.0


def test_a_level_let_go_is_no_level_a_climb_returns_to() -> None:
    """The climb-back test (known_level) reads the levels the window still holds: a surge's
    peak let go is a level the role is no longer held at, and a climb back to it is a climb."""
    state, t = _needs(PolicyState(), [40.0] + [5.0] * 3)
    assert known_level(SPEC, state, Role.DECODE, t + 15) == 40.0  # within the floor
    state, t = _needs(state, [5.0] * int(FLOOR // 15 + 4), start=t + 15)
    later = t + 15
    state = falls.observe(SPEC, state, {Role.PREFILL: None, Role.DECODE: 5.0}, later)
    assert known_level(SPEC, state, Role.DECODE, later) == 5.0
    assert falls.holds(SPEC, state, Role.DECODE, 800.0, 0.95)  # within the band: no fall


def _decode(spec, state, at: float, rate: float, have: int):
    s = signals(observed_at=at, request_rate=rate, decode_running=18.0 * rate)
    return decide(spec, s, counts(4, have), state, at)


def test_a_surge_that_ends_is_let_go_after_the_floor_not_the_window() -> None:
    state, t, have = running(), NOW, 3
    for _ in range(8):  # a surge five times the calm level for two minutes
        d, state = _decode(SPEC, state, t, 50.0, have)
        have, t = d.decode, t + 15
    surge = have
    held_until = None
    while t < NOW + 120 + SPEC.policy.demand.peak_window_s:
        d, state = _decode(SPEC, state, t, 10.0, have)
        if d.decode < surge * 0.5 and held_until is None:
            held_until = t
            assert "let go: no fall this deep came back" in d.message
        have, t = d.decode, t + 15
    assert held_until is not None and held_until - (NOW + 105) <= FLOOR + 30
    # with the window fixed the same surge is held the whole window
    fixed = make_service(demand={"learn_window": False})
    state, t, have = running(), NOW, 3
    for _ in range(8):
        d, state = _decode(fixed, state, t, 50.0, have)
        have, t = d.decode, t + 15
    while t < NOW + 105 + FLOOR + 60:
        d, state = _decode(fixed, state, t, 10.0, have)
        have, t = d.decode, t + 15
    assert have >= surge * 0.5


def test_traffic_that_comes_and_goes_is_held_through_its_lulls_once_one_came_back() -> None:
    """On for two minutes, off for eight: the first lull outlasts the floor and is scaled in
    (and out a start-up late on the return); the return teaches the window, and later lulls
    are held through the whole window."""
    state, t, have = running(), NOW, 3
    changes = []
    for cycle in range(4):
        for phase_rate, periods in ((50.0, 8), (1.0, 32)):
            for _ in range(periods):
                d, state = _decode(SPEC, state, t, phase_rate, have)
                if d.decode != have:
                    changes.append((cycle, d.decode > have))
                have, t = d.decode, t + 15
    assert state.decode_returns and falls.holds_down_to(SPEC, state, Role.DECODE) < 0.05
    assert any(cycle == 0 and not out for cycle, out in changes)  # the first lull: scaled in
    assert not any(cycle >= 2 and not out for cycle, out in changes)  # later lulls held


def test_past_the_window_a_need_is_held_as_long_as_a_short_surge_stayed_away() -> None:
    """A lull longer than the window: within it nothing says the traffic comes back; a return
    after 18 minutes that was gone again within the floor holds a need past the window for the
    lull plus the floor, up to the need it came back to (a scale-out tolerance above it)."""
    window = SPEC.policy.demand.peak_window_s
    away = 1080.0
    back = replace(PolicyState(), decode_returns=(Return(NOW, 0.1, away, 10.0, 120.0),))
    assert not falls.holds(SPEC, PolicyState(), Role.DECODE, window + 60, 0.1, 10.0)
    assert falls.holds(SPEC, back, Role.DECODE, window + 60, 0.1, 10.0)
    assert falls.holds(SPEC, back, Role.DECODE, away + FLOOR, 0.1, 10.5)
    assert not falls.holds(SPEC, back, Role.DECODE, away + FLOOR + 1, 0.1, 10.0)  # held as long
    assert not falls.holds(SPEC, back, Role.DECODE, window + 60, 0.1, 12.0)  # not above it
    assert not falls.holds(SPEC, back, Role.DECODE, window + 60, 0.05, 10.0)  # nor deeper
    assert not falls.holds(SPEC, back, Role.DECODE, window + 60, None, 10.0)  # need unknown
    # within the window such a return holds only to its need, too
    assert falls.holds(SPEC, back, Role.DECODE, 800.0, 0.1, 10.0)
    assert not falls.holds(SPEC, back, Role.DECODE, 800.0, 0.1, 30.0)
    # a surge that stayed past the floor (its onset's instances serve it), one still up, and a
    # fall the burst margin covers (to over half the level at the default cap of 1.0) are
    # held by no lull longer than the window
    for stay, deep in ((FLOOR + 15, 0.1), (0.0, 0.1), (120.0, 0.6)):
        other = replace(PolicyState(), decode_returns=(Return(NOW, deep, away, 10.0, stay),))
        assert not falls.holds(SPEC, other, Role.DECODE, window + 60, 0.7, 10.0)
        assert not falls.holds(SPEC, other, Role.DECODE, 800.0, 0.7, 10.0)
    # an older state's returns load as held within the window only
    for row in ([NOW, 0.1], [NOW, 0.1, away, 10.0]):
        old = PolicyState.from_json(json.dumps({"decode_returns": [row]}))
        assert old.decode_returns == ((NOW, 0.1, *row[2:], *(0.0,) * (5 - len(row))),)
        assert falls.holds(SPEC, old, Role.DECODE, 800.0, 0.1, 10.0) is (len(row) == 2)
        assert not falls.holds(SPEC, old, Role.DECODE, window + 60, 0.1, 10.0)


def test_crowds_that_came_and_went_twice_are_held_past_the_longest_lull_seen() -> None:
    """Held only as long as the longest lull seen, crowds drawn 10-40 minutes apart found the
    fleet scaled in after each lull longer than any before (made-up flash-irregular lost that
    crowd, and stepped out at its onset and back). Once two of the role's last surges came and
    went within the floor, a crowd's return holds its level as long as it is remembered."""
    away = 1080.0
    back = replace(PolicyState(), decode_returns=(Return(NOW, 0.1, away, 10.0, 120.0),))
    late = away + FLOOR + 60  # past the window, and past this return's lull
    assert not falls.holds(SPEC, back, Role.DECODE, late, 0.1, 10.0)
    crowd = (Onset(NOW - 3000, 1.0, 10.0, NOW - 2880), Onset(NOW - 1200, 1.0, 10.0, NOW - 1080))
    crowds = replace(back, decode_onsets=crowd)
    assert falls.holds(SPEC, crowds, Role.DECODE, late, 0.1, 10.0)
    remembered = falls.memory_s(SPEC, crowds)
    assert not falls.holds(SPEC, crowds, Role.DECODE, remembered + 1, 0.1, 10.0)
    assert not falls.holds(SPEC, crowds, Role.DECODE, late, 0.1, 12.0)  # not above its need
    # one crowd, or surges that stayed past the floor (a new level), are not enough
    one = replace(back, decode_onsets=crowd[1:])
    assert not falls.holds(SPEC, one, Role.DECODE, late, 0.1, 10.0)
    stayed = tuple(o._replace(end=o.at + FLOOR + 60) for o in crowd)
    assert not falls.holds(SPEC, replace(back, decode_onsets=stayed), Role.DECODE, late, 0.1, 10.0)


def test_a_short_surge_back_after_a_lull_longer_than_the_window_is_held_through_the_next() -> None:
    """Needs and lows are kept as long as returns are remembered, so a 2-minute surge back
    after 18 minutes away is a return; once it falls it has stayed 2 minutes, and the window
    holds its level through the next lull. One that stays is not held past the window."""
    period = 15.0
    spike, lull = [10.0] * 8, [1.0] * int(1080 // period)
    state, t = _needs(PolicyState(), spike + lull + spike)
    assert [(r[1], r[3], r[4]) for r in state.decode_returns] == [(0.1, 10.0, 0.0)]
    assert state.decode_returns[0][2] == 1080.0 + period
    state, t = _needs(state, lull[:-1], start=t + period)  # the next lull, all but its end
    assert state.decode_returns[0][4] == len(spike) * period
    assert t - (NOW + (len(spike) * 2 + len(lull) - 1) * period) > SPEC.policy.demand.peak_window_s
    assert recent_peak(SPEC, state, Role.DECODE, t) == 10.0
    # a surge that stays 10 minutes is served by its onset's instances: not held past the window
    long = [10.0] * 40
    state, t = _needs(PolicyState(), long + lull + long + lull[:-1])
    assert recent_peak(SPEC, state, Role.DECODE, t) == 1.0
    # a fixed window keeps no need past it
    fixed = make_service(demand={"learn_window": False})
    state, t = _needs(PolicyState(), spike + lull + spike + lull[:-1], spec=fixed)
    assert recent_peak(fixed, state, Role.DECODE, t) == 1.0


def test_the_window_bounds_a_scale_in_and_restores_a_peak_only_for_crowds() -> None:
    """A peak the window holds again once traffic starts to come back (sawtooth ramps: each
    rising need is a return from the lull) keeps the role where it is; it restored the peak
    before, a scale-out the need did not ask for, then a scale-in once the peak aged out.
    Crowds that came and went are met at their peak: there the window restores it."""
    state = raise_peak(SPEC, PolicyState(), Role.DECODE, 10.0, NOW)
    later = NOW + 300
    assert recent_peak(SPEC, state, Role.DECODE, later) == 10.0
    plan = role_plan(SPEC, Role.DECODE, 3, 2.0, "need", state, later)
    assert plan.target == 3 and "recent peak 10.0" in plan.why
    # an ask the fleet could not place yet is still a count the role has asked for
    asked = replace(state, decode_asked=5)
    assert role_plan(SPEC, Role.DECODE, 3, 2.0, "need", asked, later).target == 5
    # a need above the count scales out as before, and the window still bounds a scale-in
    assert role_plan(SPEC, Role.DECODE, 3, 6.0, "need", state, later).target == 6
    assert 10 <= role_plan(SPEC, Role.DECODE, 20, 2.0, "need", state, later).target < 20
    one = Onset(NOW - 1200, 1.0, 10.0, NOW - 1080)
    crowds = replace(state, decode_onsets=(Onset(NOW - 3000, 1.0, 10.0, NOW - 2880), one))
    assert not falls.restores(SPEC, replace(state, decode_onsets=(one,)), Role.DECODE)
    assert falls.restores(SPEC, crowds, Role.DECODE) and not falls.restores(
        SPEC, state, Role.DECODE
    )
    assert role_plan(SPEC, Role.DECODE, 3, 2.0, "need", crowds, later).target > 3
    fixed = make_service(demand={"learn_window": False})  # lets no peak go: may restore
    assert role_plan(fixed, Role.DECODE, 3, 2.0, "need", state, later).target > 3
