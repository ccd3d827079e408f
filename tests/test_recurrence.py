"""Surges on a timer (policy/recurrence.py): three onsets at intervals that agree say when the
next one comes, and the role is sized for it before it arrives."""

from __future__ import annotations

import json
from dataclasses import replace

from test_demand_policy import NOW, counts, make_service, running, signals

from heteroscale_ray.config import Role
from heteroscale_ray.policy import PolicyState, decide, falls, recurrence
from heteroscale_ray.policy.startup import horizon_s
from heteroscale_ray.policy.types import BurstMemory, Onset, Reason, Return

SPEC = make_service()
HORIZON = horizon_s(SPEC, PolicyState())
PERIOD = 15.0


def _settled(state: PolicyState, needs: list[tuple[float, float]]) -> PolicyState:
    """A decode burst memory past its fill, holding `needs` as (time, need)."""
    return replace(state, decode_burst=BurstMemory(needs=tuple(needs), settled_at=NOW - 3600))


def _observe(state: PolicyState, needs: list[float], start: float) -> tuple[PolicyState, float]:
    """Each need observed one period apart, with the burst memory keeping the needs before it
    as decide_demand's remember_needs does."""
    t = start
    for i, need in enumerate(needs):
        t = start + i * PERIOD
        state = recurrence.observe(SPEC, state, {Role.PREFILL: None, Role.DECODE: need}, t)
        memory = state.decode_burst
        kept = tuple((at, n) for at, n in memory.needs if t - at <= HORIZON)
        state = replace(state, decode_burst=replace(memory, needs=(*kept, (t, need))))
    return state, t


def test_an_onset_is_a_rise_past_the_burst_margin_and_records_its_top_and_end() -> None:
    calm, crowd = [1.0] * 10, [5.0, 9.0, 10.0, 8.0]
    state, t = _observe(_settled(PolicyState(), []), calm + crowd + calm, NOW)
    (onset,) = state.decode_onsets
    start = NOW + len(calm) * PERIOD
    assert onset == Onset(start, 1.0, 10.0, start + len(crowd) * PERIOD)  # past 1 x (1 + 1.0)
    assert state.prefill_onsets == ()
    # a tail that crosses the line again within a horizon of falling is the same surge
    tail = [1.0, 3.0, 1.0] + [1.0] * 10
    state, t = _observe(_settled(PolicyState(), []), calm + crowd + tail, NOW)
    assert len(state.decode_onsets) == 1 and state.decode_onsets[0].end == start + 6 * PERIOD
    back = PolicyState.from_json(state.to_json())
    assert back.decode_onsets == state.decode_onsets


def test_a_rise_the_burst_margin_covers_a_climb_and_the_fill_are_no_onsets() -> None:
    state, _ = _observe(_settled(PolicyState(), []), [4.0] * 10 + [7.0, 7.5, 7.9], NOW)
    assert state.decode_onsets == ()  # under twice the lowest need of the horizon before
    ramp = [4.0 + 0.3 * i for i in range(60)]  # 4 -> 21.7 over 15 minutes
    state, _ = _observe(_settled(PolicyState(), []), ramp, NOW)
    assert state.decode_onsets == ()
    state, _ = _observe(PolicyState(), [1.0] * 10 + [10.0], NOW)  # not settled: the fill
    assert state.decode_onsets == ()
    # a need of a fraction of an instance doubling is less than one instance more
    state, _ = _observe(_settled(PolicyState(), []), [0.2] * 10 + [0.9], NOW)
    assert state.decode_onsets == ()


def test_a_drop_the_level_still_averages_is_no_onset() -> None:
    """At thin traffic the level the policy remembers averages up to a horizon of samples
    (policy/sampled_level.py), so just after a 20-fold drop it still reads most of the load
    before, while the base is the raw needs' lowest: a sawtooth's every drop was taken for a
    surge from it, and the surge "due" half an hour later held 3x the fleet. The raw need must
    pass the line too; a real rise, where both do, is an onset."""

    def observe(raw: list[float], levels: list[float]) -> PolicyState:
        state = _settled(PolicyState(), [])
        for i, (need, level) in enumerate(zip(raw, levels, strict=True)):
            t = NOW + i * PERIOD
            memory = state.decode_burst
            kept = tuple((at, n) for at, n in memory.needs if t - at <= HORIZON)
            state = replace(state, decode_burst=replace(memory, needs=(*kept, (t, need))))
            state = recurrence.observe(SPEC, state, {Role.PREFILL: None, Role.DECODE: level}, t)
        return state

    drop = observe([4.0] * 10 + [0.2] * 3, [4.0] * 10 + [3.0, 2.5, 2.2])
    assert drop.decode_onsets == ()
    rise = observe([1.0] * 10 + [5.0, 9.0], [1.0] * 10 + [3.0, 6.0])
    assert [o.at for o in rise.decode_onsets] == [NOW + 10 * PERIOD]


def _onsets(*at: float, top: float = 10.0, foreseen: bool = False) -> PolicyState:
    """Onsets of 2-minute surges at `at`, the last one `foreseen` (it came when due)."""
    onsets = tuple(Onset(a, 1.0, top, a + 120) for a in at)
    last = onsets[-1]._replace(foreseen=foreseen) if onsets else None
    return replace(PolicyState(), decode_onsets=(*onsets[:-1], last) if last else ())


def test_three_onsets_at_intervals_that_agree_say_when_the_next_is_due() -> None:
    state = _onsets(NOW, NOW + 3600, NOW + 7200 + 60)
    coming = recurrence.due(SPEC, state, Role.DECODE)
    assert coming == (NOW + 7260 + 3630, 1.0, 10.0, 3630.0, 60.0)
    # sized for its top, and as many times today's base as it was of its own (a rising day)
    assert coming.size(None) == coming.size(0.5) == 10.0 and coming.size(1.5) == 15.0
    assert recurrence.due(SPEC, _onsets(NOW, NOW + 3600), Role.DECODE) is None  # one interval
    far = NOW + 7200 + 2 * HORIZON + 1  # intervals more than two horizons apart: no timer
    assert recurrence.due(SPEC, _onsets(NOW, NOW + 3600, far), Role.DECODE) is None
    off = make_service(demand={"predict_recurring": False})
    assert recurrence.due(off, state, Role.DECODE) is None


def test_a_due_surge_raises_the_need_to_its_top_only_around_when_it_is_due() -> None:
    state = _onsets(NOW, NOW + 3600, NOW + 7200)
    at = NOW + 10_800
    for now, raised in (
        (at - 2 * HORIZON - 1, False),
        (at - 2 * HORIZON, True),
        (at, True),
        (at + HORIZON, True),
        (at + HORIZON + 1, False),
    ):
        need, why, up = recurrence.ahead(SPEC, state, Role.DECODE, now, 1.0, "need")
        assert up is raised and need == (10.0 if raised else 1.0)
        assert ("a surge every 60 min is due" in why) is raised
    grown = _settled(state, [(at - 30, 1.2), (at - 15, 1.5)])  # the base: 1.2 now, 1.0 then
    need, why, _ = recurrence.ahead(SPEC, grown, Role.DECODE, at, 1.0, "need")
    assert need == 12.0 and why.endswith("last top 10.0 x 1.20 as its base grew since = 12.0")
    assert recurrence.ahead(SPEC, state, Role.DECODE, at, 12.0, "need") == (12.0, "need", False)
    # surges closer than twice the scale-in window are held through their lulls instead
    close = _onsets(NOW, NOW + 1200, NOW + 2400)
    assert recurrence.due(SPEC, close, Role.DECODE) is not None
    assert recurrence.ahead(SPEC, close, Role.DECODE, NOW + 3600, 1.0, "need")[2] is False
    assert recurrence.ahead(SPEC, state, Role.DECODE, at, None, "need") == (None, "need", False)


def test_surges_predicted_far_apart_are_not_held_through_their_lulls() -> None:
    """Past the window a short surge's return holds its level through a lull as long
    (policy/falls.py); once the next is predicted at least twice the window away, and the last
    came when due, it is sized for before it comes instead, and the role scales in between."""
    window = SPEC.policy.demand.peak_window_s
    back = (Return(NOW, 0.1, 3000.0, 10.0, 120.0),)
    held = replace(PolicyState(), decode_returns=back)
    assert falls.holds(SPEC, held, Role.DECODE, window + 60, 0.1, 10.0)
    hourly = replace(_onsets(NOW, NOW + 3600, NOW + 7200, foreseen=True), decode_returns=back)
    assert recurrence.apart(SPEC, hourly, Role.DECODE)
    assert not falls.holds(SPEC, hourly, Role.DECODE, window + 60, 0.1, 10.0)
    # two intervals that agree by chance: until one surge came when due, the lull is held
    unproved = replace(_onsets(NOW, NOW + 3600, NOW + 7200), decode_returns=back)
    assert recurrence.due(SPEC, unproved, Role.DECODE) is not None
    assert not recurrence.apart(SPEC, unproved, Role.DECODE)
    assert falls.holds(SPEC, unproved, Role.DECODE, window + 60, 0.1, 10.0)
    close = replace(_onsets(NOW, NOW + 1200, NOW + 2400, foreseen=True), decode_returns=back)
    assert not recurrence.apart(SPEC, close, Role.DECODE)  # 20 min: held through, as before
    assert falls.holds(SPEC, close, Role.DECODE, window + 60, 0.1, 10.0)


def test_an_onset_is_foreseen_only_when_it_comes_while_one_is_due() -> None:
    """Crowds drawn 15-45 minutes apart came 37 and 40 minutes apart: the next was due at
    38.5 and came at 32. Only one that comes within the lead proves the timer."""
    calm, crowd = [1.0] * 10, [5.0, 9.0, 10.0, 8.0] + [1.0] * 10
    for at, foreseen in ((7200 - 2 * HORIZON, True), (7200, True), (7200 - 6 * HORIZON, False)):
        start = NOW + at - len(calm) * PERIOD  # the crowd's onset at NOW + at
        state = _settled(_onsets(NOW - 3600, NOW, NOW + 3600), [])  # due at NOW + 7200
        state, _ = _observe(state, calm + crowd, start)
        last = state.decode_onsets[-1]
        assert last.at == NOW + at and last.foreseen is foreseen, (at, last)
        back = PolicyState.from_json(state.to_json())
        assert back.decode_onsets == state.decode_onsets


def test_an_older_state_without_onsets_loads() -> None:
    old = json.loads(PolicyState().to_json())
    del old["decode_onsets"], old["prefill_onsets"]
    assert PolicyState.from_json(json.dumps(old)).decode_onsets == ()
    old["decode_onsets"] = [[NOW, 1.0, 10.0, NOW + 120]]  # before an onset knew if foreseen
    assert PolicyState.from_json(json.dumps(old)).decode_onsets == (
        Onset(NOW, 1.0, 10.0, NOW + 120),
    )


def test_hourly_crowds_are_sized_for_before_the_fourth_arrives() -> None:
    """Two minutes at ten times the calm load every hour: the first three are met as they
    come; the fourth finds decode already scaled out for it (reason surge_due), and the role
    scales in during the lulls."""
    state, have, t = running(), 2, NOW
    due_at = []
    for hour in range(4):
        for i in range(240):
            rate = 100.0 if i < 8 else 10.0
            s = signals(observed_at=t, request_rate=rate, decode_running=18.0 * rate)
            d, state = decide(SPEC, s, counts(4, have), state, t)
            if d.reason is Reason.SURGE_DUE:
                due_at.append(t - (NOW + hour * 3600))
            if hour == 3 and i == 0:
                crowd_found = d.decode
            if hour == 2 and i == 200:
                lull = d.decode
            have, t = d.decode, t + PERIOD
    assert due_at and all(3600 - 2 * HORIZON - 30 <= at < 3600 for at in due_at), due_at
    assert crowd_found > lull
