"""Learned burst headroom (policy/burst.py): a role is sized for its need plus the rise its own
history has shown within a start-up horizon; steady load learns none."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heteroscale_ray.config import Role
from heteroscale_ray.policy import PolicyState, decide
from heteroscale_ray.policy.burst import MAX_MARGIN, margin, remember
from heteroscale_ray.policy.types import BurstMemory, Reason
from tests.test_demand_policy import NOW, counts, make_service, signals

HORIZON = 120.0
PERIOD = 15.0


def replay(needs: list[float], start: float = NOW) -> BurstMemory:
    """The memory after `needs`, one per period, past the climb the policy started into (the
    fill itself is tested on its own below)."""
    memory = BurstMemory(settled_at=start)
    for i, need in enumerate(needs):
        memory = remember(memory, need, start + i * PERIOD, HORIZON)
    return memory


def test_headroom_multiplies_the_arriving_need_never_a_queue() -> None:
    """A backlog is drained once: it is added to the sized need as it is."""
    from heteroscale_ray.policy.demand import with_headroom

    spec = make_service()
    state = replace(
        PolicyState(),
        decode_burst=replay([10.0] * 6 + [12.0] * 3, start=NOW - 10 * PERIOD),
    )
    need, why = with_headroom(spec, state, Role.DECODE, 30.0, "w", steady=10.0)
    assert need == pytest.approx(10.0 * 1.2 + 20.0) and "x 1.20 burst headroom" in why
    assert with_headroom(spec, state, Role.DECODE, 30.0, "w")[0] == pytest.approx(36.0)


def test_configured_cap_bounds_the_headroom_the_policy_adds() -> None:
    """demand.max_burst_margin caps what a bursty history (a 50% rise) adds: 0 adds none."""
    from heteroscale_ray.policy.demand import with_headroom

    state = replace(
        PolicyState(),
        decode_burst=replace(
            replay([10.0] * 6 + [15.0] * 3, start=NOW - 10 * PERIOD), strained_at=NOW
        ),
    )
    for cap, want in ((1.0, 15.0), (0.2, 12.0), (0.0, 10.0)):
        spec = make_service(demand={"max_burst_margin": cap})
        need, _ = with_headroom(spec, state, Role.DECODE, 10.0, "w", NOW - 10 * PERIOD)
        assert need == pytest.approx(want)


def test_a_surge_insures_the_calm_after_it_not_its_own_top() -> None:
    """A 3x spike's rise is capped at 100%: at its top it adds nothing, half-way up it adds
    the rest of the way, and back at the old level it insures in full; as long as it is
    remembered (a step that stays at its top is not insured twice over)."""
    memory = replay([10.0] * 12 + [30.0] * 12, start=NOW)
    assert max(memory.rises) >= MAX_MARGIN and memory.tops[-1] == 30.0
    assert margin(memory, 0.99, level=30.0) == pytest.approx(0.0, abs=0.05)
    assert margin(memory, 0.99, level=20.0) == pytest.approx(0.5, abs=0.05)
    assert margin(memory, 0.99, level=10.0) == MAX_MARGIN
    later = memory
    for i in range(60):  # an hour at the step's top, past any window
        later = remember(later, 30.0, NOW + (24 + i) * PERIOD, HORIZON)
    assert max(later.rises) >= MAX_MARGIN
    assert margin(later, 0.99, level=30.0) == pytest.approx(0.0, abs=0.05)
    assert margin(memory, 0.99) == MAX_MARGIN  # no level: as before


def test_a_climb_measured_in_steps_smaller_than_the_cap_is_still_one_surge() -> None:
    """Outputs growing 8x show as a need that climbs over minutes (finished requests' mean
    output lags the step): each horizon's rise is under the cap, the climb is 4x. Learned
    rise by rise, each insured in proportion at any level, and the new level was insured at
    1.5-1.8x for the hour after (the stress case to-reasoning). As one surge, it insures
    only up to its top, from its first step on."""
    climb = [10.0 * 2 ** (i / 12) for i in range(25)]  # 10 -> 40 in 6 minutes
    memory = BurstMemory(settled_at=NOW)
    for i, need in enumerate([10.0] * 12 + climb + [40.0] * 24):
        memory = remember(memory, need, NOW + i * PERIOD, HORIZON, window_s=HORIZON)
    step = max(memory.rises)
    assert 0.2 < step < MAX_MARGIN  # no single horizon rises past the cap
    assert max(memory.spans) >= MAX_MARGIN
    assert margin(memory, 0.99, level=40.0) == 0.0
    # below the climb's top every step insures as the climb does, up to that top
    assert margin(memory, 0.99, level=30.0) == pytest.approx(40.0 / 30.0 - 1.0)
    assert margin(memory, 0.99, level=20.0) == pytest.approx(step)
    saved = replace(PolicyState(), decode_burst=memory).to_json()  # survives an actor restart
    assert PolicyState.from_json(saved).decode_burst == memory


def test_rises_smaller_than_the_cap_insure_in_proportion_at_any_level() -> None:
    memory = replay([10.0] * 6 + [12.0] * 3, start=NOW)
    share = margin(memory, 0.99)
    assert 0.1 < share < MAX_MARGIN
    assert margin(memory, 0.99, level=50.0) == share


def test_a_memory_saved_without_tops_insures_as_before() -> None:
    memory = replay([10.0] * 12 + [30.0] * 12, start=NOW)
    old = BurstMemory.from_dict(
        {
            "needs": memory.needs,
            "rises": memory.rises,
            "rises_at": memory.rises_at,
            "strained_at": None,
            "settled_at": memory.settled_at,
        }
    )
    assert len(old.tops) == len(old.rises) and all(math.isinf(n) for n in old.tops)
    assert old.spans == old.rises  # saved before spans: each rise its own climb
    short = BurstMemory.from_dict({"rises": [0.5, 0.2], "spans": [0.1, 3.0], "tops": [9, 9]})
    assert short.spans == (0.5, 3.0)  # a climb is never smaller than its own step
    assert margin(old, 0.99, level=30.0) == MAX_MARGIN
    later = old
    for i in range(12):
        later = remember(later, 30.0, NOW + (30 + i) * PERIOD, HORIZON)
    assert len(later.tops) == len(later.rises) > len(old.rises)


def test_steady_need_learns_no_headroom() -> None:
    memory = replay([10.0] * 60)
    assert memory.rises and margin(memory, 0.9) == 0.0


def test_noise_around_a_held_level_learns_no_headroom() -> None:
    """A need that swings 10 <-> 12 from tick to tick never leaves the level the stabilisation
    window holds the role at (the highest need of the horizon before): no rise, no headroom.
    Measured from each horizon's first need alone, the swing itself was learned as a 20% rise."""
    needs = [12.0 if i % 2 else 10.0 for i in range(120)]
    held = BurstMemory(settled_at=NOW)
    for i, need in enumerate(needs):
        held = remember(held, need, NOW + i * PERIOD, HORIZON, window_s=HORIZON)
    assert held.rises and max(held.rises[-100:]) == 0.0  # once a horizon before is known
    assert margin(held, 0.9) == 0.0 and margin(replay(needs), 0.9) == pytest.approx(0.2)
    # a rise above the held level is still learned, whatever came before it
    for i, need in enumerate([15.0] * 4, start=len(needs)):
        held = remember(held, need, NOW + i * PERIOD, HORIZON, window_s=HORIZON)
    assert margin(held, 1.0) == pytest.approx(0.25)


def test_a_burst_that_recurs_is_learned_as_its_rise_over_the_horizon() -> None:
    # every 10 minutes the need jumps from 10 to 16 for two minutes
    needs = [16.0 if i % 40 in (20, 21, 22, 23, 24, 25, 26, 27) else 10.0 for i in range(240)]
    share = margin(replay(needs), 0.9)
    assert 0.5 <= share <= 0.6 + 1e-9


def test_no_rise_is_measured_before_a_horizon_is_covered() -> None:
    memory = replay([1.0, 50.0, 100.0])  # 30 s of history: less than 0.75 of 120 s
    assert memory.rises == () and margin(memory, 0.9) == 0.0


def test_rises_are_forgotten_after_thirty_horizons() -> None:
    needs = [10.0] * 10 + [30.0] * 8 + [10.0] * (30 * 8 + 20)
    assert margin(replay(needs), 1.0) == 0.0


def test_missing_or_broken_needs_change_nothing() -> None:
    memory = replay([10.0] * 12)
    for bad in (None, float("nan"), float("inf"), -1.0):
        assert remember(memory, bad, NOW + 10_000, HORIZON) == memory


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1e4), min_size=1, max_size=120))
def test_headroom_is_bounded_and_never_negative(needs: list[float]) -> None:
    share = margin(replay(needs), 0.9)
    assert 0.0 <= share <= MAX_MARGIN


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(min_value=0, max_value=1e4), min_size=1, max_size=120),
    st.floats(min_value=0, max_value=3),
)
def test_headroom_never_exceeds_the_configured_cap(needs: list[float], cap: float) -> None:
    memory = replay(needs)
    share = margin(memory, 0.9, cap=cap)
    assert 0.0 <= share <= cap
    assert share == min(margin(memory, 0.9, cap=math.inf), cap)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1e4), min_size=1, max_size=120))
def test_rises_above_the_held_level_never_exceed_rises_from_the_start(needs: list[float]) -> None:
    """The held level is at least the horizon's first need: the same history never learns more
    headroom counted from it, and every rise stays a share in [0, inf)."""
    held = BurstMemory(settled_at=NOW)
    for i, need in enumerate(needs):
        held = remember(held, need, NOW + i * PERIOD, HORIZON, window_s=HORIZON)
    plain = replay(needs)
    assert len(held.rises) == len(plain.rises)
    assert all(0.0 <= h <= p for h, p in zip(held.rises, plain.rises, strict=True))


def test_bursty_history_sizes_the_role_above_its_current_need() -> None:
    spec = make_service()
    sig = signals(decode_running=600.0)
    plain, _ = decide(spec, sig, counts(4, 4), PolicyState(), NOW)
    memory = replay([10.0] * 6 + [15.0] * 3, start=NOW - 10 * PERIOD)
    calm, _ = decide(spec, sig, counts(4, 4), replace(PolicyState(), decode_burst=memory), NOW)
    assert calm.decode == plain.decode  # rises, but the role was never short: no insurance
    strained = replace(memory, strained_at=NOW - 5 * PERIOD)
    learned = replace(PolicyState(), decode_burst=strained)
    bursty, _ = decide(spec, sig, counts(4, 4), learned, NOW)
    assert bursty.decode > plain.decode
    assert "burst headroom" in bursty.message
    long_ago = replace(memory, strained_at=NOW - 31 * HORIZON)  # once strained, kept
    old, _ = decide(spec, sig, counts(4, 4), replace(PolicyState(), decode_burst=long_ago), NOW)
    assert old.decode == bursty.decode


def test_a_backlog_pinned_to_a_few_instances_marks_strain_but_takes_no_guard_step() -> None:
    """The slowest instance's step is most of the TBT p99, the busy mean a small part: more
    instances cannot shrink those batches now (no guard step), but they filled because
    capacity ran short when their sequences arrived: decode has strained."""
    spec = make_service()
    settled = replace(PolicyState(), decode_burst=BurstMemory(settled_at=NOW - 1000))
    pinned = signals(tbt_p99_s=0.07, decode_step_s=0.02, decode_step_max_s=0.055)
    decision, state = decide(spec, pinned, counts(4, 10), settled, NOW)
    assert decision.reason is not Reason.LATENCY_GUARD and decision.decode <= 10
    assert state.decode_burst.strained_at == NOW


def test_a_fixable_breach_marks_the_role_strained() -> None:
    spec = make_service()
    settled = replace(PolicyState(), decode_burst=BurstMemory(settled_at=NOW - 1000))
    short = signals(tbt_p99_s=0.06, decode_step_s=0.04, decode_step_max_s=0.05)
    _, state = decide(spec, short, counts(4, 4), settled, NOW)
    assert state.decode_burst.strained_at == NOW
    floor = signals(tbt_p99_s=0.06, decode_step_s=0.01, decode_step_max_s=0.012)
    _, state = decide(spec, floor, counts(4, 4), settled, NOW)
    assert state.decode_burst.strained_at is None
    _, state = decide(spec, short, counts(4, 4), PolicyState(), NOW)  # a first snapshot
    assert state.decode_burst.strained_at is None


def test_the_climb_the_policy_starts_into_is_the_fleet_filling_not_a_burst() -> None:
    """Long requests fill a fleet for minutes after a launch (or a replay's empty start): that
    climb, and the strain it brings, teach nothing; the same climb later is a burst."""
    fill = [10.0 + 5.0 * i for i in range(20)]  # 10 -> 105 instances over five minutes
    flat = [105.0 + (1.0 if i % 2 else -1.0) for i in range(20)]
    memory = BurstMemory()
    for i, need in enumerate(fill + flat):
        memory = remember(memory, need, NOW + i * PERIOD, HORIZON, strained=i < len(fill))
    assert memory.settled_at is not None and memory.strained_at is None
    assert margin(memory, 0.99) < 0.1  # the climb alone would learn MAX_MARGIN
    later = BurstMemory()
    for i, need in enumerate([10.0] * 10 + fill):  # after a calm start: learned as ever
        later = remember(later, need, NOW + i * PERIOD, HORIZON)
    assert later.settled_at is not None and margin(later, 0.99) == MAX_MARGIN


def test_the_end_of_the_fill_is_no_rise_either() -> None:
    """A fill that ends inside the horizon that settles the memory: rises count only from the
    settling on, so the fill's tail (70 -> 100) is not learned."""
    memory = BurstMemory()
    for i, need in enumerate([10.0, 40.0, 70.0] + [100.0] * 40):
        memory = remember(memory, need, NOW + i * PERIOD, HORIZON, strained=True)
    assert memory.settled_at is not None and margin(memory, 1.0) == 0.0
    assert memory.strained_at == NOW + 42 * PERIOD  # strain counts from the settling on


def test_headroom_off_when_the_horizon_is_zero() -> None:
    spec = make_service(demand={"burst_horizon_s": 0})
    learned = replace(
        PolicyState(), decode_burst=replay([10.0] * 6 + [20.0] * 3, start=NOW - 10 * PERIOD)
    )
    a, _ = decide(spec, signals(decode_running=600.0), counts(4, 4), PolicyState(), NOW)
    b, _ = decide(spec, signals(decode_running=600.0), counts(4, 4), learned, NOW)
    assert (a.prefill, a.decode) == (b.prefill, b.decode)


def test_burst_memory_survives_a_json_round_trip() -> None:
    state = replace(PolicyState(), prefill_burst=replay([3.0, 4.0, 9.0] * 10))
    back = PolicyState.from_json(state.to_json())
    assert back == state
    assert back.prefill_burst.rises == state.prefill_burst.rises
    assert Role.PREFILL.value == "prefill"


def test_prefill_adds_only_the_rise_its_idle_share_does_not_absorb() -> None:
    """Prefill is sized 0.8 busy: a learned 20% rise fits in the idle share (no headroom), a
    50% rise adds 1.5 x 0.8 = 1.2x."""
    from heteroscale_ray.policy.demand import with_headroom

    spec = make_service()
    start = NOW - 10 * PERIOD
    small = replace(PolicyState(), prefill_burst=replay([10.0] * 6 + [12.0] * 3, start=start))
    assert with_headroom(spec, small, Role.PREFILL, 10.0, "w") == (10.0, "w")
    large = replace(PolicyState(), prefill_burst=replay([10.0] * 6 + [15.0] * 3, start=start))
    need, why = with_headroom(spec, large, Role.PREFILL, 10.0, "w")
    assert need == pytest.approx(12.0) and "x 1.20 burst headroom" in why
    decode = replace(PolicyState(), decode_burst=replay([10.0] * 6 + [12.0] * 3, start=start))
    assert with_headroom(spec, decode, Role.DECODE, 10.0, "w")[0] == pytest.approx(12.0)


def test_a_rising_need_is_sized_for_where_it_will_be_once_new_instances_are_up() -> None:
    """A surge steeper than any remembered rise: the need is extrapolated one horizon ahead
    (instances asked for now serve only after start-up), from its least-squares slope."""
    from heteroscale_ray.policy.burst import trend
    from heteroscale_ray.policy.demand import with_headroom

    spec = make_service()
    rising = replay([10.0 + 2.0 * i for i in range(9)], start=NOW - 9 * PERIOD)
    assert trend(rising, NOW, HORIZON) == 0.0  # never strained: no insurance
    rising = replace(rising, strained_at=NOW - PERIOD)
    assert trend(rising, NOW, HORIZON) == pytest.approx(2.0 / PERIOD)
    state = replace(PolicyState(), decode_burst=rising)
    need, why = with_headroom(spec, state, Role.DECODE, 12.0, "w", NOW)
    # the larger of the learned margin and the climb extrapolated one horizon ahead
    assert 12.0 * (1 + margin(rising, 0.9)) < 12.0 + 2.0 / PERIOD * HORIZON
    assert need == pytest.approx(12.0 + 2.0 / PERIOD * HORIZON) and "rising" in why
    falling = replay([26.0 - 2.0 * i for i in range(9)], start=NOW - 9 * PERIOD)
    falling = replace(falling, strained_at=NOW - PERIOD)
    assert trend(falling, NOW, HORIZON) == 0.0
    state = replace(PolicyState(), decode_burst=falling)
    assert with_headroom(spec, state, Role.DECODE, 10.0, "w", NOW) == (10.0, "w")


def test_a_climb_back_to_a_level_of_the_last_window_is_not_extrapolated() -> None:
    """Traffic that comes and goes (a client sending for two minutes out of four) climbs to the
    same level at every onset. The window holds that level with its margin; extrapolating each
    climb a horizon past it asked for more, and scaling back to the window after every onset
    changed decode's direction 10 times an hour. A climb past every level of the last window
    is still extrapolated."""
    from heteroscale_ray.policy.demand import with_headroom

    spec = make_service()
    rising = replace(
        replay([10.0 + 2.0 * i for i in range(9)], start=NOW - 9 * PERIOD),
        strained_at=NOW - PERIOD,
    )
    extrapolated = 12.0 + 2.0 / PERIOD * HORIZON
    for level, want in ((30.0, None), (12.0, None), (11.9, extrapolated)):
        state = replace(PolicyState(), decode_burst=rising)
        need, why = with_headroom(spec, state, Role.DECODE, 12.0, "w", NOW, known=level)
        if want is None:
            assert "rising" not in why and need < extrapolated
        else:
            assert need == pytest.approx(want) and "rising" in why


def test_no_trend_before_most_of_a_horizon_is_covered() -> None:
    from heteroscale_ray.policy.burst import trend

    memory = replace(replay([1.0, 50.0, 100.0], start=NOW - 3 * PERIOD), strained_at=NOW)
    assert trend(memory, NOW, HORIZON) == 0.0


def test_a_queue_flooding_in_is_no_rise_in_the_arriving_need() -> None:
    """Sequences piling up behind a short decode pool are drained once; they are not arrivals
    climbing. So the burst memory (its rises and its trend) holds only the arriving need, and a
    flood of waiting sequences never reads as a surge to extrapolate a horizon ahead."""
    spec = make_service()
    # settled and strained: the trend would apply to a real climb
    strained = BurstMemory(strained_at=NOW, settled_at=NOW - 10 * HORIZON)
    state, d = replace(PolicyState(), decode_burst=strained), 5
    for i in range(12):  # arrivals and running flat; the queue doubles every period
        t = NOW + PERIOD * i
        sig = signals(
            observed_at=t,
            decode_running=300.0,
            decode_queue=100.0 * 2**i,
            output_mean=70.0,
        )
        decision, state = decide(spec, sig, counts(4, d), state, t)
        d = decision.decode
    needs = [n for _, n in state.decode_burst.needs]
    assert max(needs) < 1.2 * min(needs), needs  # the batch estimate moves a little; not 200x
    assert state.decode_burst.strained_at is not None
    # at most the drift of the learned batch, never the flood: under a tenth of the need
    from heteroscale_ray.policy.burst import trend

    assert trend(state.decode_burst, t, HORIZON) * HORIZON < 0.1 * min(needs)


def test_a_climb_the_trend_foresaw_is_no_rise_its_onset_is() -> None:
    """Over a horizon, a rise is what the climb seen before it, carried on, did not foresee
    (the trend sizes for that part): a steady climb teaches its onset only. Learned in full,
    each horizon of the ServeGen day's ten-minute output surge taught a rise just under the
    cap, which insures in proportion: decode held 1.9x its need up the climb and at its top."""
    memory = BurstMemory(settled_at=NOW)
    levels = [10.0] * 16 + [10.0 + 2.0 * i for i in range(1, 41)]  # flat, then +2 a period
    for i, need in enumerate(levels):
        memory = remember(memory, need, NOW + i * PERIOD, HORIZON, window_s=HORIZON)
    onset = [
        r for r, t in zip(memory.rises, memory.rises_at, strict=True) if t <= NOW + 24 * PERIOD
    ]
    later = [
        r for r, t in zip(memory.rises, memory.rises_at, strict=True) if t >= NOW + 40 * PERIOD
    ]
    assert max(onset) > 0.5  # the climb's start is a rise from the flat level
    assert max(later) == pytest.approx(0.0, abs=1e-9)  # its steady rest was foreseen
    flat = BurstMemory(settled_at=NOW)
    for i, need in enumerate([10.0] * 16 + [16.0] * 12):  # a step: nothing climbed before it
        flat = remember(flat, need, NOW + i * PERIOD, HORIZON, window_s=HORIZON)
    assert max(flat.rises) == pytest.approx(0.6)


def test_a_decision_retried_at_the_same_time_adds_no_second_need_rise_or_load() -> None:
    """A tick retried at one frozen `now` had appended the period's need, rise and load each
    time (2,000 retries: 1,994 needs, a 570 kB checkpoint), and a retried rise counted twice
    in the margin's quantile."""
    from tests.test_demand_policy import counts, make_service, running, signals

    spec = make_service()
    state, now = running(), 1_000_000.0
    for k in range(40):  # a climb, so rises are recorded
        s = signals(observed_at=now, request_rate=10.0 + k)
        _, state = decide(spec, s, counts(4, 4), state, now)
        now += 15.0
    s = signals(observed_at=now, request_rate=60.0)
    _, once = decide(spec, s, counts(4, 4), state, now)
    again = once
    for _ in range(5):
        _, again = decide(spec, s, counts(4, 4), again, now)
    for role in Role:
        one, many = (
            x.decode_burst if role is Role.DECODE else x.prefill_burst for x in (once, again)
        )
        assert len(many.needs) == len(one.needs) and many.rises_at == one.rises_at
    assert again.prefill_loads == once.prefill_loads and again.decode_loads == once.decode_loads
