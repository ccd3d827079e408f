"""Capacity the latency guard proved (policy/proof.py): a step needed twice at one load is held
while that load holds, so the scale-in window's expiry does not undo it and start the cycle
again; a single step is held by the window only."""

from __future__ import annotations

from dataclasses import replace

import pytest

from heteroscale_ray.config import Role
from heteroscale_ray.policy import PolicyState, Reason, decide
from heteroscale_ray.policy.peak_window import lapse_steps, raise_step
from heteroscale_ray.policy.proof import (
    MAX_PROOF,
    lapse,
    proof_of,
    prove,
    proven_need,
    record_step,
    remember_load,
    step_load,
)
from heteroscale_ray.policy.role_plan import role_plan
from heteroscale_ray.policy.startup import horizon_s
from tests.test_demand_policy import NOW, counts, make_service, running, signals

# TBT over the SLO with the mean busy decode step most of it: capacity can fix it.
BREACH = dict(tbt_p99_s=0.06, decode_step_s=0.04, decode_step_max_s=0.05)


def test_a_first_guard_step_is_remembered_but_proves_nothing() -> None:
    spec = make_service()
    first, state = decide(spec, signals(**BREACH), counts(4, 4), PolicyState(), NOW)
    assert first.reason is Reason.LATENCY_GUARD and first.decode > 4
    need, instances, _ = state.decode_first_step
    assert instances == first.decode and 0 < need < instances
    assert proof_of(state, Role.DECODE) is None and proof_of(state, Role.PREFILL) is None


def test_a_step_needed_again_at_its_load_is_proved_and_outlives_the_window() -> None:
    """The window let the first step go, the breach came back at the same load and the guard
    stepped again: from then on the role stays where the guard put it while the load holds
    (without the proof it scales in, breaches, and the guard steps again: a flip a window).
    A single step (a passing cluster of long prompts) is let go with the window."""
    spec = make_service()
    window = spec.policy.demand.peak_window_s
    first, once = decide(spec, signals(**BREACH), counts(4, 4), PolicyState(), NOW)
    again_at = NOW + 2 * window
    second, twice = decide(
        spec, signals(observed_at=again_at, **BREACH), counts(4, 4), once, again_at
    )
    assert second.reason is Reason.LATENCY_GUARD
    assert proof_of(twice, Role.DECODE)[1] == second.decode and twice.decode_first_step is None
    later = again_at + 3 * window
    calm = signals(observed_at=later)
    held, _ = decide(spec, calm, counts(4, second.decode), twice, later)
    assert held.decode == second.decode
    assert "as the latency guard proved" in held.message
    single, _ = decide(spec, calm, counts(4, first.decode), once, later)
    assert single.decode < first.decode  # one step held by the window only
    forgot, _ = decide(
        spec, calm, counts(4, second.decode), replace(twice, decode_proof=None), later
    )
    assert forgot.decode < second.decode  # what the proof prevents


def test_a_later_step_replaces_the_proof_and_a_lapsed_first_step_starts_over() -> None:
    spec = make_service()
    proved = record_step(record_step(PolicyState(), Role.DECODE, 10.0, 12), Role.DECODE, 10.0, 13)
    assert proof_of(proved, Role.DECODE) == (10.0, 13.0)
    assert proof_of(record_step(proved, Role.DECODE, 11.0, 15), Role.DECODE) == (11.0, 15.0)
    first = record_step(PolicyState(), Role.DECODE, 10.0, 12)
    tolerance = spec.policy.scale_in_tolerance
    lapsed = lapse(spec, first, Role.DECODE, 10.0 * (1 - tolerance) - 0.01)
    assert lapsed.decode_first_step is None
    assert proof_of(record_step(lapsed, Role.DECODE, 10.0, 13), Role.DECODE) is None


def test_the_proof_lapses_once_the_load_falls_by_the_scale_in_tolerance() -> None:
    spec = make_service()
    state = prove(PolicyState(), Role.DECODE, 10.0, 13)
    tolerance = spec.policy.scale_in_tolerance
    kept = lapse(spec, state, Role.DECODE, 10.0 * (1 - tolerance) + 0.01)
    assert proof_of(kept, Role.DECODE) == (10.0, 13.0)
    assert lapse(spec, state, Role.DECODE, None) == state  # missing data changes nothing
    gone = lapse(spec, state, Role.DECODE, 10.0 * (1 - tolerance) - 0.01)
    assert proof_of(gone, Role.DECODE) is None


def test_a_step_taken_on_a_high_sample_lapses_from_the_horizons_median() -> None:
    """A breach is likeliest when a sample reads high (a heavy instant of a bunched load), so
    the step's own period overstates its load: judged from it, the next horizon of ordinary
    samples read as a fall, the step was let go and taken again (random-1's prefill, in
    10-s instants: 5.3 direction changes an hour). The highest need of the horizon before
    is the load it lapses from; the ratio it proves is still the step's own."""
    spec = make_service()
    horizon = 105.0
    state = PolicyState()
    for i, need in enumerate((6.0, 6.4, 5.8, 6.1, 7.3)):  # the breach comes with the 7.3
        state, _ = remember_load(state, Role.PREFILL, need, NOW + 15 * i, horizon)
    now = NOW + 60
    load = step_load(state, Role.PREFILL, 7.3, now)
    assert load == 6.4
    state = record_step(prove(state, Role.PREFILL, 7.3, 10, load), Role.PREFILL, 7.3, 11, load)
    assert proof_of(state, Role.PREFILL) == (7.3, 11.0)
    assert proven_need(state, Role.PREFILL, 7.3, 0.1) == pytest.approx((11.0, 11.0 / 7.3))
    ordinary = 5.8  # under 7.3 by more than the tolerance, not under the median
    assert ordinary < 7.3 * (1 - spec.policy.scale_in_tolerance)
    assert proof_of(lapse(spec, state, Role.PREFILL, ordinary), Role.PREFILL) == (7.3, 11.0)
    fallen = 6.4 * (1 - spec.policy.scale_in_tolerance) - 0.01
    assert proof_of(lapse(spec, state, Role.PREFILL, fallen), Role.PREFILL) is None
    assert step_load(state, Role.PREFILL, 5.0, now) == 5.0  # a step at a dip: its own need
    assert step_load(PolicyState(), Role.PREFILL, 5.0, now) == 5.0
    assert step_load(state, Role.PREFILL, None, now) is None


def test_decide_takes_a_step_at_the_load_of_the_horizon_before_a_high_sample() -> None:
    """Through `decide`: calm periods, then a breach on a period whose need reads 15% higher;
    the first step is remembered at the step's own need for its ratio and at the calm periods'
    for its lapse, so the next calm horizon keeps it in the window."""
    spec = make_service()
    calm = signals()
    state = running()
    calm_needs = []
    for i in range(4):
        t = NOW + 15 * i
        d, state = decide(spec, replace(calm, observed_at=t), counts(4, 4), state, t)
        calm_needs.append(d.required_decode)
    t = NOW + 60
    high = signals(
        observed_at=t,
        request_rate=1.15 * calm.request_rate,
        decode_tps=1.15 * calm.decode_tps,
        decode_running=1.15 * calm.decode_running,
        **BREACH,
    )
    step, state = decide(spec, high, counts(4, 4), state, t)
    assert step.reason is Reason.LATENCY_GUARD and step.decode > 4
    need, instances, load = state.decode_first_step
    assert instances == step.decode and need == step.required_decode
    assert load == max(calm_needs) and load < need
    assert state.decode_steps[-1][2] == load  # the window's hold lapses from the same load


def test_one_period_under_the_load_is_no_new_load() -> None:
    """A need of ~300 arrivals a period reads 10% low now and then by chance: the proof
    stands while any need within a start-up horizon reached its load, and lapses once the
    need stayed under it that long (a cron's proof let go on one dip, then stepped again:
    16 prefill direction changes an hour)."""
    spec = make_service()
    horizon = 105.0
    low = 10.0 * (1 - spec.policy.scale_in_tolerance) - 0.5
    state = prove(PolicyState(), Role.DECODE, 10.0, 13)
    state, load = remember_load(state, Role.DECODE, 10.0, NOW, horizon)
    state, load = remember_load(state, Role.DECODE, low, NOW + 15, horizon)
    assert load == 10.0
    assert proof_of(lapse(spec, state, Role.DECODE, load), Role.DECODE) == (10.0, 13.0)
    state, load = remember_load(state, Role.DECODE, low, NOW + horizon + 1, horizon)
    assert load == low
    assert proof_of(lapse(spec, state, Role.DECODE, load), Role.DECODE) is None
    assert remember_load(state, Role.DECODE, None, NOW + 200, horizon) == (state, None)


def test_decide_holds_the_proof_through_a_dip_and_lets_it_go_after_a_horizon() -> None:
    """Through `decide`: the need read at the step's load, then 15% under it for a period,
    keeps the proof; under it for longer than a start-up horizon lets it go."""
    spec = make_service()
    calm = signals()
    first, state = decide(spec, calm, counts(4, 4), running(), NOW)
    load = first.required_decode
    state = prove(state, Role.DECODE, load, 8)
    low = signals(
        observed_at=NOW + 15,
        request_rate=0.7 * calm.request_rate,
        decode_tps=0.7 * calm.decode_tps,
        decode_running=0.7 * calm.decode_running,
    )
    dipped, after = decide(spec, low, counts(4, 8), state, NOW + 15)
    assert dipped.required_decode < 0.9 * load  # under the load by more than the tolerance
    assert proof_of(after, Role.DECODE) == (load, 8.0)
    later = NOW + 15 + horizon_s(spec, after) + 1
    gone, last = decide(spec, replace(low, observed_at=later), counts(4, 8), after, later)
    assert proof_of(last, Role.DECODE) is None, gone.message


def test_the_proof_multiplies_the_level_the_window_holds() -> None:
    """The window holds a role at its recent peak; that level needs what the guard proved,
    not the dip under it (a proof on one period's need asked 12-15 prefill instances as the
    need swung 9-11, and each swing past the band was a direction change)."""
    spec = make_service()
    window = ((NOW - 30.0, 10.0, 10.0),)
    state = replace(prove(PolicyState(), Role.DECODE, 10.0, 13), decode_peaks=window)
    plan = role_plan(spec, Role.DECODE, 13, 7.5, "w", state, NOW)
    assert "recent peak 10.0" in plan.why and plan.target == 13, plan.why  # 10 on the dip
    # The guard steps the window holds are instance counts, the proof's ratio already in
    # them: multiplied again, a step to 13 held with 12 placed asked for 17.
    stepped = replace(state, decode_steps=((NOW - 30.0, 13.0, 10.0),), decode_asked=13)
    plan = role_plan(spec, Role.DECODE, 12, 7.5, "w", stepped, NOW)
    assert plan.target <= 13 and "proved" not in plan.why, plan.why


def test_above_its_load_the_proof_is_a_floor_never_a_multiple() -> None:
    """A step proved at one load says nothing about a load well above it (a surge's transient
    proved 1.5x at 33 instances' need; multiplying the surge's peak by it doubled the fleet).
    Nor may more load ask for fewer instances: past the scale-out tolerance the proof holds
    what it asked at that edge, until the need itself is larger."""
    spec = make_service()
    tol = spec.policy.scale_out_tolerance
    state = prove(PolicyState(), Role.PREFILL, 10.0, 15)
    edge = 10.0 * (1 + tol) * 1.5
    asks = [proven_need(state, Role.PREFILL, n, tol)[0] for n in (10.0, 10.9, 11.2, 14.0, 30.0)]
    assert asks[:2] == pytest.approx([15.0, 16.35])
    assert asks[2:] == pytest.approx([edge, edge, 30.0])
    assert asks == sorted(asks)  # monotone in the need
    assert lapse(spec, state, Role.PREFILL, 30.0) == state  # a rise never drops it


def test_a_need_just_past_the_proved_load_does_not_scale_in() -> None:
    """Outside the scale-in window, a need 12% above the proved load keeps the proved
    instances (dropping the proof there scaled 15 in to 13 under more load)."""
    spec = make_service()
    state = prove(PolicyState(), Role.DECODE, 10.0, 15)
    later = NOW + 3 * spec.policy.demand.peak_window_s
    plan = role_plan(spec, Role.DECODE, 15, 11.2, "w", state, later)
    assert plan.target >= 15, plan.why


def test_the_proof_scales_with_the_need_and_is_capped() -> None:
    state = prove(PolicyState(), Role.PREFILL, 10.0, 13)
    assert proven_need(state, Role.PREFILL, 10.5, 0.1) == pytest.approx((13.65, 1.3))
    huge = prove(PolicyState(), Role.PREFILL, 1.0, 9)
    assert proven_need(huge, Role.PREFILL, 1.05, 0.1) == pytest.approx(
        (1.05 * MAX_PROOF, MAX_PROOF)
    )


@pytest.mark.parametrize("need", [None, float("nan"), 0.0, -1.0, 14.0])
def test_no_proof_from_a_missing_need_or_a_step_that_added_nothing(need: float | None) -> None:
    assert prove(PolicyState(), Role.DECODE, need, 13) == PolicyState()
    assert record_step(PolicyState(), Role.DECODE, need, 13) == PolicyState()


def test_the_proof_and_a_first_step_survive_a_json_round_trip() -> None:
    state = record_step(prove(PolicyState(), Role.DECODE, 10.0, 13), Role.PREFILL, 5.0, 7)
    back = PolicyState.from_json(state.to_json())
    assert back == state and back.decode_proof == (10.0, 13.0, 10.0)
    assert back.prefill_first_step == (5.0, 7.0, 5.0)
    pairs = state.to_json().replace("13.0, 10.0]", "13.0]").replace("7.0, 5.0]", "7.0]")
    assert PolicyState.from_json(pairs) == state  # an older checkpoint lapsed from the need
    stepped = replace(state, decode_steps=((NOW, 13.0, 10.0),))
    assert PolicyState.from_json(stepped.to_json()) == stepped
    older = stepped.to_json().replace('"decode_steps": [[', '"retired": [[')
    assert PolicyState.from_json(older).decode_steps == ()  # a checkpoint from before them


def test_the_window_holds_a_first_step_while_its_load_holds_and_lets_it_go_below() -> None:
    """A first step stands in the scale-in window like a need, but only at the load it was
    taken at: on traffic's return after a 20-minute gap one step (decode 125 -> 150 at a need
    of 101) was held the whole window while the need fell to 52."""
    spec = make_service()
    first, once = decide(spec, signals(**BREACH), counts(4, 4), running(), NOW)
    assert first.reason is Reason.LATENCY_GUARD and first.decode > 4
    soon = NOW + spec.policy.demand.peak_window_s / 4
    same = signals(observed_at=soon)
    held, _ = decide(spec, same, counts(4, first.decode), once, soon)
    assert held.decode == first.decode, held.message
    half = signals(observed_at=soon, request_rate=5.0, decode_tps=1_000.0, decode_running=90.0)
    lower, state = decide(spec, half, counts(4, first.decode), once, soon)
    assert lower.decode < first.decode, lower.message
    assert state.decode_steps == () and state.decode_first_step is None


def test_a_step_past_the_window_leaves_the_state() -> None:
    spec = make_service()
    state = raise_step(spec, PolicyState(), Role.DECODE, 13, 10.0, NOW)
    assert state.decode_steps == ((NOW, 13.0, 10.0),)
    assert lapse_steps(spec, state, Role.DECODE, None, NOW + 60) == state  # missing data
    later = NOW + spec.policy.demand.peak_window_s + 1
    assert lapse_steps(spec, state, Role.DECODE, 12.0, later).decode_steps == ()
