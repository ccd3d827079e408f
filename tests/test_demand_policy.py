"""`signal: demand` and the backlog rule: demand that cannot hide, a latency guard on the latency
capacity can change, and capacity learned from what replicas report (issue 10)."""

from __future__ import annotations

import math
from dataclasses import replace
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heteroscale_ray.config import DEFAULT_CATALOG, Role, ServiceSpec
from heteroscale_ray.perf.capacity import decode_capacity
from heteroscale_ray.policy import (
    Decision,
    PolicyState,
    Reason,
    RoleCounts,
    Signals,
    burst,
    decide,
)
from heteroscale_ray.policy.capacity import capacity, kinds, rounded

NOW = 1_000_000.0


def make_service(**policy: object) -> ServiceSpec:
    return ServiceSpec.model_validate(
        {
            "name": "general",
            "model": "dense-70b",
            "slo": {"ttft_s": 5.0, "tbt_s": 0.05},
            "pd_ratio": "1:1",
            "prefill": {"gpu_types": ["H800"], "gpus_per_instance": 4, "max_instances": 400},
            "decode": {"gpu_types": ["H20"], "gpus_per_instance": 4, "max_instances": 400},
            "policy": {
                "signal": "demand",
                "scale_out_cooldown_s": 0,
                "scale_in_cooldown_s": 0,
                "latency_guard": {"metric": "both", "cooldown_s": 0},
                **policy,
            },
        }
    )


def signals(**kw: float | None) -> Signals:
    base = dict(
        observed_at=NOW,
        request_rate=10.0,
        prompt_mean=1000.0,
        output_mean=200.0,
        prefill_offered_tps=10_000.0,
        prefill_tps=10_000.0,
        decode_tps=2_000.0,
        decode_running=180.0,
        decode_queue=0.0,
        prefill_queue_s=0.0,
        ttft_p99_s=0.5,
        ttft_wait_p99_s=0.1,
        tbt_p99_s=0.03,
        decode_step_s=0.02,
        prefill_busy=None,  # no capacity learning unless a test asks for it
    )
    return Signals(**{**base, **kw})


def counts(p: int, d: int) -> RoleCounts:
    return RoleCounts(prefill_ready=p, decode_ready=d)


def running() -> PolicyState:
    """A policy deciding for an hour already: no fleet of its first decision left to hold."""
    return PolicyState(started_at=NOW - 3600.0)


def test_prefill_demand_is_seen_while_decode_throughput_is_starved() -> None:
    """Prefill is the bottleneck: decode tokens/s stays low, yet prefill scales out on what
    arrives (the failure that starved a prefill-heavy service for an hour)."""
    spec = make_service()
    sig = signals(prefill_offered_tps=200_000.0, prefill_tps=20_000.0, decode_tps=300.0)
    decision, _ = decide(spec, sig, counts(2, 2), PolicyState(), NOW)
    assert decision.reason is Reason.SCALE_OUT
    assert decision.prefill > 10 and decision.decode >= 2


def test_both_roles_move_in_one_decision_and_the_ratio_follows() -> None:
    spec = make_service()
    sig = signals(prefill_offered_tps=60_000.0, request_rate=40.0, decode_running=240.0)
    decision, _ = decide(spec, sig, counts(1, 1), PolicyState(), NOW)
    assert decision.prefill > 1 and decision.decode > 1
    p, d = decision.pd_ratio
    assert (
        abs(p / d - decision.prefill / decision.decode) < 0.5 * decision.prefill / decision.decode
    )


def test_a_long_wait_without_a_prefill_queue_is_not_prefill_capacity() -> None:
    """Waiting with no prefill work queued (e.g. routing around full decode instances) does not
    step prefill out."""
    spec = make_service()
    sig = signals(ttft_p99_s=6.0, ttft_wait_p99_s=4.0, prefill_queue_s=0.1)
    decision, _ = decide(spec, sig, counts(3, 3), PolicyState(), NOW)
    assert decision.prefill <= 3 and "not from queueing" in decision.message


def test_a_queue_between_snapshots_is_prefill_capacity() -> None:
    """Prompts that land together queue and drain between snapshots: the snapshot's queue is
    empty, the window's peak is not. The wait is queueing more prefill shortens."""
    spec = make_service()
    sig = signals(ttft_p99_s=6.0, ttft_wait_p99_s=4.0, prefill_queue_s=0.0)
    floor, _ = decide(spec, sig, counts(3, 3), PolicyState(), NOW)
    assert floor.prefill <= 3 and "not from queueing" in floor.message
    peaked = replace(sig, prefill_queue_peak_s=3.0)
    decision, _ = decide(spec, peaked, counts(3, 3), PolicyState(), NOW)
    assert decision.prefill > 3 and decision.reason is Reason.LATENCY_GUARD


def test_the_guard_waits_for_its_last_step_to_land() -> None:
    spec = make_service()
    sig = signals(ttft_p99_s=6.0, ttft_wait_p99_s=4.0, prefill_queue_s=3.0)
    starting = RoleCounts(prefill_ready=3, prefill_starting=1, decode_ready=3)
    decision, _ = decide(spec, sig, starting, PolicyState(), NOW)
    assert decision.reason is not Reason.LATENCY_GUARD


def test_a_latency_floor_does_not_scale_out() -> None:
    """TTFT over the SLO from the prompt's own compute (queueing tiny): no step."""
    spec = make_service()
    sig = signals(ttft_p99_s=6.0, ttft_wait_p99_s=0.2, prefill_offered_tps=20_000.0)
    decision, _ = decide(spec, sig, counts(3, 3), PolicyState(), NOW)
    # Decode may scale in on its own demand; prefill holds and the sentence says why.
    assert decision.prefill <= 3 and "not from queueing" in decision.message
    assert decision.reason in (Reason.LATENCY_FLOOR, Reason.SCALE_IN)


def test_queueing_latency_steps_prefill_out_then_stops_without_gain() -> None:
    spec = make_service()
    sig = signals(
        ttft_p99_s=6.0, ttft_wait_p99_s=4.0, prefill_queue_s=3.0, prefill_offered_tps=20_000.0
    )
    first, state = decide(spec, sig, counts(3, 3), PolicyState(), NOW)
    assert first.reason is Reason.LATENCY_GUARD and first.prefill > 3
    # The step landed, yet the queueing part did not drop by 10%: no further step.
    later = replace(sig, observed_at=NOW + 60)
    second, _ = decide(spec, later, counts(first.prefill, 3), state, NOW + 60)
    assert "no further step" in second.message and second.reason is not Reason.LATENCY_GUARD
    assert second.prefill <= first.prefill


def test_the_guard_waits_while_the_queue_drains() -> None:
    """The p99 still counts requests that queued before the last capacity landed: while the
    queue falls, no step (and no scale-in during the breach); once it stops falling, a step."""
    spec = make_service()
    before = signals(observed_at=NOW - 15, prefill_queue_s=3.0)  # latency not yet over
    _, state = decide(spec, before, counts(10, 3), running(), NOW - 15)
    breach = dict(ttft_p99_s=6.0, ttft_wait_p99_s=4.0)
    falling = replace(before, observed_at=NOW, prefill_queue_s=2.0, **breach)
    waited, after = decide(spec, falling, counts(10, 3), state, NOW)
    assert waited.reason is Reason.HOLD_COOLDOWN and waited.prefill == 10
    assert "its queue is draining: no step and no scale-in during a breach" in waited.message
    blind = replace(falling, observed_at=NOW + 15, prefill_queue_s=None)  # a fall is one snapshot's
    missing, _ = decide(spec, blind, counts(10, 3), after, NOW + 15)
    assert missing.reason is Reason.LATENCY_GUARD and missing.prefill == 12
    flat = replace(falling, observed_at=NOW + 15)
    stepped, _ = decide(spec, flat, counts(10, 3), after, NOW + 15)
    assert stepped.reason is Reason.LATENCY_GUARD and stepped.prefill == 12


def test_a_draining_decode_queue_does_not_hold_the_tbt_guard() -> None:
    """Waiting sequences that drain into batches make steps slower, not faster: TBT steps out."""
    spec = make_service()
    before = signals(observed_at=NOW - 15, decode_queue=40.0)
    _, state = decide(spec, before, counts(3, 4), PolicyState(), NOW - 15)
    slow = replace(before, observed_at=NOW, decode_queue=0.0, tbt_p99_s=0.08, decode_step_s=0.07)
    decision, _ = decide(spec, slow, counts(3, 4), state, NOW)
    assert decision.reason is Reason.LATENCY_GUARD and decision.decode == 5


def test_tbt_from_transfer_is_a_floor_not_a_reason_to_add_decode() -> None:
    spec = make_service()
    sig = signals(tbt_p99_s=0.1, decode_step_s=0.015)
    decision, _ = decide(spec, sig, counts(3, 3), PolicyState(), NOW)
    assert decision.decode <= 3 and decision.reason is not Reason.LATENCY_GUARD


def test_tbt_stretched_by_a_growing_slot_queue_steps_decode_out() -> None:
    """Sequences piling up for a decode slot (KV full) stretch TBT while each step stays fast:
    more instances add slots, so the guard steps while the queue grows, not once it stops
    (then the p99 counts sequences that waited before)."""
    spec = make_service()
    calm = signals(observed_at=NOW - 15, decode_queue=10.0)
    _, state = decide(spec, calm, counts(3, 4), PolicyState(), NOW - 15)
    stretched = dict(tbt_p99_s=0.5, decode_step_s=0.015)  # the step is 3% of the p99
    grown = replace(calm, observed_at=NOW, decode_queue=30.0, **stretched)
    decision, _ = decide(spec, grown, counts(3, 4), state, NOW)
    assert decision.reason is Reason.LATENCY_GUARD and decision.decode > 4
    flat = replace(calm, observed_at=NOW, decode_queue=10.0, **stretched)
    decision, _ = decide(spec, flat, counts(3, 4), state, NOW)
    assert decision.reason is not Reason.LATENCY_GUARD and decision.decode <= 4


def test_a_tbt_floor_neither_steps_decode_out_nor_holds_it() -> None:
    """A TBT breach capacity cannot fix (the KV transfer, or requests that ran through an
    overload now past) takes no step and holds nothing: demand alone sizes decode. Held, a
    surge's peak stood for the quarter hour its long outputs took to finish."""
    spec = make_service(scale_in_cooldown_s=0)
    calm, _ = decide(spec, signals(), counts(2, 8), running(), NOW)
    assert calm.decode < 8 and calm.prefill == 2  # demand alone scales decode in
    floor = signals(tbt_p99_s=0.1, decode_step_s=0.015)
    through, _ = decide(spec, floor, counts(2, 8), running(), NOW)
    assert through.decode == calm.decode and through.reason is Reason.SCALE_IN
    assert "not from queueing, which instances cannot fix" in through.message


def test_learned_capacity_corrects_the_roofline_prior() -> None:
    """Replicas process half the tokens per busy second the prior expects: capacity halves."""
    spec = make_service()
    prior = capacity(spec, signals(), PolicyState())
    measured = 0.5 * prior.prefill_tps * 0.8 * 4  # tokens/s of 4 instances 80% busy
    sig = signals(prefill_tps=measured, prefill_busy=0.8)
    state = PolicyState()
    for k in range(40):  # ten minutes of 15 s periods
        t = NOW + 15 * k
        _, state = decide(spec, replace(sig, observed_at=t), counts(4, 4), state, t)
    learned = capacity(spec, sig, state)
    assert 0.45 < learned.prefill_tps / prior.prefill_tps < 0.6
    assert learned.source == "learned"


def test_decode_learns_at_the_batch_its_steps_ran_at() -> None:
    """Half the decode instances idle and the running sequences long: the step the replicas
    report is the prior's at their own batch and context, so the GPU is as the prior says
    (scale 1.0). Priced at running / ready and the arrivals' lengths it read as a slower GPU
    (x0.92 here, where the 70B model's weights dominate the step), and decode was sized for
    it."""

    spec = make_service()
    _, dk = kinds(spec, DEFAULT_CATALOG)
    batch, ctx = 24.0, 3000.0  # four busy instances of eight; the arrivals' mean is 1,100
    step = float(dk.step_seconds(batch, batch * ctx))
    measured = signals(
        decode_running=4 * batch,
        decode_step_s=step,
        decode_step_batch=batch,
        decode_step_context=ctx,
    )
    fallback = replace(measured, decode_step_batch=None, decode_step_context=None)
    learned = {}
    for name, sig in (("measured", measured), ("fallback", fallback)):
        state = PolicyState()
        for k in range(40):
            t = NOW + 15 * k
            _, state = decide(spec, replace(sig, observed_at=t), counts(4, 8), state, t)
        learned[name] = state.decode_capacity_scale
    assert learned["measured"] == pytest.approx(1.0, abs=0.01)
    assert learned["fallback"] < 0.95


def test_the_first_sample_after_an_idle_spell_weighs_like_one_periods() -> None:
    """Twenty idle minutes taught nothing (prefill under its minimum busy share); the first
    busy window after them, an outlier at twice the prior, moves the learned capacity by one
    period's weight. It replaced the 300 s average outright, and prefill came back sized for
    twice what an instance does."""
    spec = make_service()
    prior = capacity(spec, signals(), PolicyState())
    state = replace(
        PolicyState(),
        prefill_capacity_scale=1.0,
        decode_capacity_scale=1.0,
        capacity_learned_at=NOW - 1200,
        last_decision_at=NOW - 15,
    )
    outlier = signals(prefill_tps=2.0 * prior.prefill_tps * 0.8 * 4, prefill_busy=0.8)
    _, state = decide(spec, outlier, counts(4, 4), state, NOW)
    assert state.prefill_capacity_scale == pytest.approx(2 ** (1 - math.exp(-15 / 300)), rel=1e-6)


def test_the_prior_prices_the_prompts_spread() -> None:
    """Same mean prompt, a long tail: each prompt's attention costs more on average, so the
    prior carries fewer tokens per instance before anything was learned."""
    from heteroscale_ray.policy.capacity import track_spread

    spec = make_service()
    sig = signals(prompt_mean=8000.0, prompt_sd=8000.0)
    even = capacity(spec, sig, PolicyState())  # no spread averaged yet: the mean prompt
    state = track_spread(spec, sig, PolicyState(), NOW)
    assert state.prompt_spread == 1.0
    spread = capacity(spec, sig, state)
    assert spread.prefill_tps < 0.95 * even.prefill_tps
    assert spread.decode_batch == even.decode_batch  # decode's KV is linear in length


def test_one_windows_long_prompts_move_the_spread_by_their_weight() -> None:
    """The spread is averaged over learn_smoothing_s: one window whose few long prompts give a
    5x spread moves it by one period's weight, not to 5x."""
    from heteroscale_ray.policy.capacity import track_spread

    spec = make_service()
    state = PolicyState()
    for i in range(40):  # ten minutes of a spread of 1
        sig = signals(observed_at=NOW + 15 * i, prompt_mean=1000.0, prompt_sd=1000.0)
        state = track_spread(spec, sig, state, NOW + 15 * i)
    assert state.prompt_spread == pytest.approx(1.0)
    t = NOW + 15 * 40
    state = track_spread(spec, signals(observed_at=t, prompt_sd=5000.0), state, t)
    assert 1.0 < state.prompt_spread < 1.1  # type: ignore[operator]
    back = PolicyState.from_json(state.to_json())
    assert back.prompt_spread == state.prompt_spread


def test_an_override_pins_capacity() -> None:
    spec = make_service(demand={"prefill_tokens_per_s": 5000.0, "decode_batch": 10})
    cap = capacity(spec, signals(), PolicyState())
    assert cap.prefill_tps == 5000.0 and cap.decode_batch == 10 and cap.source == "override"
    one = capacity(make_service(demand={"decode_batch": 10}), signals(), PolicyState())
    assert one.decode_batch == 10 and one.source == "decode override, prefill prior"


queues = st.lists(st.floats(0.0, 50.0, allow_nan=False), min_size=4, max_size=12)
# a queue level, kept for a few periods (a standing backlog) or not
levels = st.lists(
    st.tuples(st.floats(0.0, 50.0, allow_nan=False), st.integers(1, 4)), min_size=2, max_size=6
).map(lambda runs: [q for q, n in runs for _ in range(n)])


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(queues, levels),
    st.sampled_from(["demand", "decode_tps"]),
    st.integers(1, 20),
    st.floats(0.0, 200_000.0, allow_nan=False),
)
def test_a_growing_backlog_never_holds_or_shrinks_its_role(
    prefill_queue: list[float], signal: str, start: int, offered: float
) -> None:
    """Invariant: once the prefill queue grew (or stood over the TTFT SLO) K periods in a row,
    every decision grows prefill (or it is at its max)."""
    extra = {"target_per_instance": 1500.0} if signal == "decode_tps" else {}
    spec = make_service(signal=signal, **extra)
    k = spec.policy.demand.backlog_periods
    state, p, d = PolicyState(), start, start
    grew = 0
    last = None
    for i, q in enumerate(prefill_queue):
        t = NOW + 15 * i
        sig = signals(observed_at=t, prefill_queue_s=q, prefill_offered_tps=offered)
        decision, state = decide(spec, sig, counts(p, d), state, t)
        material = q > 0.2 * spec.slo.ttft_s
        standing = q > spec.slo.ttft_s and last is not None and q >= last * 0.9
        rose = last is not None and (q > last * 1.1 or standing) and material
        grew = grew + 1 if rose else 0
        last = q
        if grew >= k:
            assert decision.prefill > p or p == spec.prefill.max_instances, (i, decision)
            assert decision.reason is not Reason.SCALE_IN
        p, d = decision.prefill, decision.decode


def test_a_growing_prefill_queue_holds_while_the_instances_starting_drain_it_first() -> None:
    """One prefill instance ready and one starting (asked 45 s ago, start-ups timed at 105 s)
    while 14k prompt tokens/s arrive at 12k per busy instance: the queue grows until the second
    lands, and the two then drain it within 80 s, before an instance asked now could land.
    More would land after the queue is gone and be scaled back: prefill holds at 2, with its
    own reason. Asked 10 s ago, the same queue outlasts a start-up: the backlog rule steps."""
    spec = make_service()
    k = spec.policy.demand.backlog_periods
    state = replace(
        running(),
        startups=(105.0,),
        startup_horizon_s=120.0,
        prefill_grew_at=NOW - 45.0,
        prefill_growth_streak=k,
        prefill_queue_last=5.0,
    )
    sig = signals(
        prefill_queue_s=6.5, prefill_offered_tps=14_000.0, prefill_tps=12_000.0, prefill_busy=1.0
    )
    two = RoleCounts(prefill_ready=1, prefill_starting=1, decode_ready=4)
    decision, _ = decide(spec, sig, two, state, NOW)
    assert decision.prefill == 2, decision.message
    assert decision.reason is Reason.HOLD_STARTING, decision.message
    # it lands in 60 s, on 6.5 s queued + (14k / 12k - 1) x 60 s, drained at 2 - 14k / 12k
    assert "but the 1 starting drain it within 80 s, before more could land (105 s)" in (
        decision.message
    )
    late = replace(state, prefill_grew_at=NOW - 10.0)
    decision, _ = decide(spec, replace(sig, prefill_queue_s=20.0), two, late, NOW)
    assert decision.prefill == 3 and decision.reason is Reason.BACKLOG_GROWTH, decision.message


def _paper_rule_on_a_saturated_prefill(queue_s: float, periods: int) -> list:
    """The paper's decode-TPS rule (5 prefill, decode TPS low) while 100k cache-miss tokens/s
    arrive at a prefill pool whose instances compute 2k each: its queue stands at `queue_s`."""
    spec = make_service(signal="decode_tps", target_per_instance=1500.0)
    state, p, d = PolicyState(), 5, 2
    out = []
    for i in range(periods):
        t = NOW + 15 * i
        sig = signals(
            observed_at=t,
            decode_tps=300.0,  # what the starved decode pool sees: no demand
            prefill_offered_tps=100_000.0,
            prefill_tps=2_000.0 * p,
            prefill_busy=1.0,
            prefill_queue_s=queue_s,
        )
        decision, state = decide(spec, sig, counts(p, d), state, t)
        out.append(decision)
        p, d = decision.prefill, decision.decode
    return out


def test_a_backlog_standing_over_the_slo_scales_prefill_to_its_measured_need() -> None:
    """A prefill queue that alone breaks the TTFT SLO and does not fall counts as growing: the
    paper's rule, which sees no decode demand, goes to what arrivals need at the rate the pool
    was measured to run (100k / 2k = 50 busy instances: 63 at 80% busy) at once, and once the
    queue has stood K periods the backlog rule steps on past it to drain, never down."""
    k = make_service().policy.demand.backlog_periods
    decisions = _paper_rule_on_a_saturated_prefill(queue_s=60.0, periods=k + 3)
    assert (decisions[0].prefill, decisions[0].reason) == (63, Reason.PREFILL_DEMAND)
    assert decisions[k].reason is Reason.BACKLOG_GROWTH, decisions[k].message
    assert decisions[k].prefill > decisions[k - 1].prefill, decisions[k].message
    assert "arrivals need 50.0 at its measured rate" in decisions[k].message
    assert all(b.prefill >= a.prefill for a, b in pairwise(decisions))
    assert all(x.reason is not Reason.SCALE_IN for x in decisions)


def test_the_papers_rule_does_not_shrink_prefill_below_its_measured_need() -> None:
    """Decode TPS says one decode instance will do; arriving prompts keep 5.6 of 10 prefill
    instances busy: scale-in stops at 7 (5.6 / 0.8) with its own reason. Within the rule's
    20% scale-in dead-band of that need (6.4 busy: 8), it holds."""
    spec = make_service(signal="decode_tps", target_per_instance=1500.0)
    sig = signals(
        decode_tps=300.0,
        prefill_offered_tps=56_000.0,
        prefill_tps=56_000.0,
        prefill_busy=0.56,
        prefill_queue_s=0.5,
    )
    decision, _ = decide(spec, sig, counts(10, 10), PolicyState(), NOW)
    assert (decision.prefill, decision.reason) == (7, Reason.PREFILL_DEMAND), decision
    assert "arriving prompts need 5.6 prefill at its measured rate" in decision.message
    near = replace(sig, prefill_offered_tps=64_000.0, prefill_tps=64_000.0, prefill_busy=0.64)
    decision, _ = decide(spec, near, counts(10, 10), PolicyState(), NOW)
    assert (decision.prefill, decision.reason) == (10, Reason.PREFILL_DEMAND), decision
    idle = replace(sig, prefill_offered_tps=6_400.0, prefill_tps=6_400.0, prefill_busy=0.08)
    decision, _ = decide(spec, idle, counts(10, 10), PolicyState(), NOW)
    assert decision.prefill < 8 and decision.reason is Reason.SCALE_IN, decision


def test_the_papers_rule_scales_prefill_out_to_its_measured_need() -> None:
    """Prefill busy all the time on 12k of 15k arriving tokens/s, no queue yet: the paper's
    rule, seeing little decode TPS, would hold; prefill goes to 15 / 12 x 10 / 0.8 = 16 at
    once, but not while instances start (the need is measured on ready ones) nor inside the
    scale-out cooldown."""
    spec = make_service(signal="decode_tps", target_per_instance=1500.0, scale_out_cooldown_s=60)
    sig = signals(
        decode_tps=15_000.0,  # 10 decode instances' worth: the paper's rule holds
        prefill_offered_tps=15_000.0,
        prefill_tps=12_000.0,
        prefill_busy=1.0,
        prefill_queue_s=0.5,
    )
    decision, _ = decide(spec, sig, counts(10, 10), PolicyState(), NOW)
    assert (decision.prefill, decision.reason) == (16, Reason.PREFILL_DEMAND), decision
    assert "arriving prompts need 12.5 prefill at its measured rate (16 at 80% busy)" in (
        decision.message
    )
    starting = RoleCounts(prefill_ready=10, prefill_starting=2, decode_ready=12)
    decision, _ = decide(spec, sig, starting, PolicyState(), NOW)
    assert decision.prefill == 12 and decision.reason is not Reason.PREFILL_DEMAND, decision
    cooling = replace(PolicyState(), last_scale_out_at=NOW - 30)
    decision, _ = decide(spec, sig, counts(10, 10), cooling, NOW)
    assert decision.prefill == 10, decision


def test_a_level_queue_within_the_slo_is_not_a_backlog() -> None:
    """Under the TTFT SLO a level queue is the pool working, not falling behind."""
    decisions = _paper_rule_on_a_saturated_prefill(queue_s=3.0, periods=5)
    assert all(x.reason is not Reason.BACKLOG_GROWTH for x in decisions)


def test_measured_need_reads_the_pools_own_rate() -> None:
    from heteroscale_ray.policy.backlog import measured_need

    sig = signals(prefill_offered_tps=30_000.0, prefill_tps=8_000.0, prefill_busy=0.8)
    assert measured_need(sig, Role.PREFILL, 4) == 30_000.0 / (8_000.0 / (0.8 * 4))  # 12
    assert measured_need(sig, Role.DECODE, 4) is None
    assert measured_need(replace(sig, prefill_busy=None), Role.PREFILL, 4) is None
    assert measured_need(sig, Role.PREFILL, 0) is None


def test_demand_defaults_are_the_capacity_models_operating_point() -> None:
    """The policy sizes at the same margins the simulator's oracle/static sizing uses."""
    from heteroscale_ray.config import DemandSpec
    from heteroscale_ray.perf.capacity import DECODE_TBT_MARGIN, PREFILL_UTIL_TARGET

    assert DemandSpec().decode_tbt_margin == DECODE_TBT_MARGIN
    assert DemandSpec().prefill_utilization == PREFILL_UTIL_TARGET


def test_scale_in_stops_at_the_recent_peak_need() -> None:
    """After a burst, a role scales in only as far as its decaying recent peak allows."""
    spec = make_service()
    burst = signals(request_rate=100.0, decode_running=1500.0)
    high, state = decide(spec, burst, counts(3, 3), PolicyState(), NOW)
    assert high.decode > 10
    quiet = signals(observed_at=NOW + 60, request_rate=10.0, decode_running=150.0)
    after, _ = decide(spec, quiet, counts(high.prefill, high.decode), state, NOW + 60)
    # one minute later the burst is still inside the window: no deep scale-in
    assert after.decode >= 0.8 * high.decode


def test_a_policy_holds_the_fleet_it_found_for_one_window() -> None:
    """HPA stabilises a new autoscaler's initial size: a fleet the policy starts on (here 20
    decode for a need of ~3) stays until one scale-in window has passed, then goes."""
    spec = make_service()
    window = spec.policy.demand.peak_window_s
    quiet = signals(request_rate=10.0, decode_running=150.0)
    first, state = decide(spec, quiet, counts(4, 20), PolicyState(), NOW)
    assert first.decode == 20 and first.reason is Reason.HOLD_DEADBAND
    assert "recent peak 20.0" in first.message
    later = NOW + window - 15
    held, state = decide(spec, replace(quiet, observed_at=later), counts(4, 20), state, later)
    assert held.decode == 20
    after = NOW + window + 15
    gone, _ = decide(spec, replace(quiet, observed_at=after), counts(4, 20), state, after)
    assert gone.decode < 20 and gone.reason is Reason.SCALE_IN
    # a policy that starts on an empty fleet has nothing to hold
    cold, _ = decide(spec, quiet, counts(0, 0), PolicyState(), NOW)
    assert cold.reason is Reason.INITIAL and cold.decode < 20


def test_the_scale_in_window_is_the_highest_need_within_it() -> None:
    """HPA's downscale window: the highest need of the last peak_window_s, whatever came after
    it; once it leaves the window, the next highest takes over."""
    from heteroscale_ray.policy.peak_window import raise_peak, recent_peak

    spec = make_service()
    window = spec.policy.demand.peak_window_s
    state = PolicyState()
    for i, need in enumerate([5.0, 20.0, 8.0, 12.0, 6.0]):
        state = raise_peak(spec, state, Role.DECODE, need, NOW + 60 * i)
    assert recent_peak(spec, state, Role.DECODE, NOW + 240) == 20.0
    assert recent_peak(spec, state, Role.DECODE, NOW + 60 + window + 1) == 12.0
    assert recent_peak(spec, state, Role.DECODE, NOW + 240 + window + 1) is None
    assert len(state.decode_peaks) == 3  # 20, 12, 6: the falling staircase only
    back = PolicyState.from_json(state.to_json())
    assert back.decode_peaks == state.decode_peaks


def test_the_window_holds_a_peaks_margin_a_few_horizons_and_the_bare_peak_after() -> None:
    """A surge's need of 40 with a doubled margin is held at 80 while a rise from it could
    still be on its way, then at 40 for the rest of the window; a calm need of 10 x 1.2 after
    it is held at 12 once the surge leaves the window."""
    from heteroscale_ray.policy.peak_window import MARGIN_HOLD_HORIZONS, raise_peak, recent_peak

    spec = make_service()
    window = spec.policy.demand.peak_window_s
    hold = MARGIN_HOLD_HORIZONS * spec.policy.demand.burst_horizon_s
    state = raise_peak(spec, PolicyState(), Role.DECODE, 80.0, NOW, bare=40.0)
    state = raise_peak(spec, state, Role.DECODE, 12.0, NOW + 60, bare=10.0)
    assert recent_peak(spec, state, Role.DECODE, NOW + hold) == 80.0
    assert recent_peak(spec, state, Role.DECODE, NOW + hold + 1) == 40.0
    assert recent_peak(spec, state, Role.DECODE, NOW + window + 1) == 10.0
    assert recent_peak(spec, state, Role.DECODE, NOW + 60) == 80.0
    # a later need below in both components is kept; one at or above both replaces it
    assert len(state.decode_peaks) == 2
    state = raise_peak(spec, state, Role.DECODE, 85.0, NOW + 120, bare=45.0)
    assert [p[1:] for p in state.decode_peaks] == [(85.0, 45.0)]


def test_a_saved_window_of_needs_without_margins_still_loads() -> None:
    """A state saved before the window kept both needs loads with one need for both."""
    old = PolicyState().to_json().replace('"decode_peaks": []', '"decode_peaks": [[1.0, 7.0]]')
    assert PolicyState.from_json(old).decode_peaks == ((1.0, 7.0, 7.0),)


def test_tbt_from_a_few_slow_instances_is_a_floor_when_the_mean_step_is_short() -> None:
    """Sequences never move between instances: a few instances slow with sequences admitted
    before new ones landed stay slow whatever is added, while new sequences go to the light
    ones. The mean busy step, not the slowest, says whether more instances shrink batches."""
    spec = make_service()
    pinned = signals(tbt_p99_s=0.07, decode_step_s=0.02, decode_step_max_s=0.055)
    decision, _ = decide(spec, pinned, counts(4, 10), PolicyState(), NOW)
    assert decision.reason is not Reason.LATENCY_GUARD and decision.decode <= 10
    batches = signals(tbt_p99_s=0.07, decode_step_s=0.05, decode_step_max_s=0.055)
    decision, _ = decide(spec, batches, counts(4, 10), PolicyState(), NOW)
    assert decision.reason is Reason.LATENCY_GUARD and decision.decode > 10


def test_tbt_from_batches_that_spike_between_snapshots_is_fixable() -> None:
    """Requests landing together (a batch job's submits, coarse timestamps) spike decode's
    batches for a second or two between snapshots: the busy instances' step at the snapshot
    is short, but the window's tokens were made at long steps, and more instances shrink
    those batches. Within a start-up horizon of decode's growth, the window's steps were
    priced on the fleet before its new instances landed: no step for those."""
    spec = make_service()
    spiky = signals(
        tbt_p99_s=0.07, decode_step_s=0.02, decode_step_max_s=0.03, decode_token_step_s=0.05
    )
    decision, _ = decide(spec, spiky, counts(4, 10), running(), NOW)
    assert decision.reason is Reason.LATENCY_GUARD and decision.decode > 10
    assert "its tokens made at 50-ms steps" in decision.message
    # the pool grew a minute ago: the long steps may be the old instances' before it landed
    grown = replace(running(), decode_grew_at=NOW - 60.0, startup_horizon_s=120.0)
    decision, _ = decide(spec, spiky, counts(4, 10), grown, NOW)
    assert decision.reason is not Reason.LATENCY_GUARD and decision.decode <= 10
    # tokens made at short steps too: a floor (KV transfer, admission), as before: no step
    calm = signals(
        tbt_p99_s=0.07, decode_step_s=0.02, decode_step_max_s=0.03, decode_token_step_s=0.025
    )
    decision, _ = decide(spec, calm, counts(4, 10), running(), NOW)
    assert decision.decode <= 10 and "which instances cannot fix" in decision.message


def test_a_decode_queue_is_sized_by_its_drain_not_as_concurrency() -> None:
    """5,000 sequences waiting for a slot after a burst are 5,000 x 70 tokens to drain within
    drain_s, a few instances' worth, not 5,000 / batch instances."""
    spec = make_service(scale_in_cooldown_s=0)
    burst = signals(decode_running=250.0, decode_queue=5_000.0, output_mean=70.0, request_rate=5.0)
    decision, _ = decide(spec, burst, counts(4, 5), PolicyState(), NOW)
    as_concurrency = (250.0 + 5_000.0) / capacity(spec, burst, PolicyState()).decode_batch
    assert 5 < decision.decode < as_concurrency / 3


def test_decode_takes_the_requests_a_draining_prefill_queue_releases() -> None:
    """Prefill sized to drain a 60 s queue within drain_s hands decode those requests on top
    of arrivals: decode is asked for them in the same decision, as instances of both roles
    take one start-up to land (a 3x spike otherwise queued 60-84k sequences for decode)."""
    spec = make_service()
    calm, _ = decide(spec, signals(), counts(4, 3), running(), NOW)
    queued = signals(prefill_queue_s=60.0)
    decision, state = decide(spec, queued, counts(4, 3), running(), NOW)
    cap = capacity(spec, queued, PolicyState())
    released = 60.0 * 4 * cap.prefill_tps / 1000.0 / spec.policy.demand.drain_s
    more = released * (200.0 - 1.0) / cap.decode_tps
    assert more > 3  # material: several instances' worth
    assert decision.required_decode == pytest.approx(calm.required_decode + more, rel=0.02)
    assert decision.decode >= calm.decode + math.floor(more)
    assert "for the prefill queue's release" in decision.message
    # a queue is drained once: the scale-in window keeps the arriving need only
    assert max(n for _, n, _ in state.decode_peaks) == pytest.approx(calm.required_decode)


def test_decode_is_sized_by_the_sequences_its_kv_memory_holds_today() -> None:
    """The prior's batch is priced at the lengths of finished requests; when the running
    sequences are longer (a surge of long outputs still decoding), KV memory fills at fewer
    of them, and decode is sized by what the replicas' memory holds, not by the prior."""
    spec = make_service()
    prior_batch = capacity(spec, signals(), PolicyState()).decode_batch
    per_instance = prior_batch / 2  # sequences twice the size the finished ones suggest
    full = signals(decode_running=per_instance * 4, kv_use=1.0, request_rate=1.0)
    light = replace(full, kv_use=0.1)  # the same sequences in a tenth of the memory
    d_full, _ = decide(spec, full, counts(4, 4), PolicyState(), NOW)
    d_light, _ = decide(spec, light, counts(4, 4), PolicyState(), NOW)
    assert d_full.required_decode == pytest.approx(4.0, rel=0.05)  # full: as many as run now
    assert d_light.required_decode == pytest.approx(2.0, rel=0.05)  # the prior's batch holds
    assert f"seqs / {per_instance:,.0f}" in d_full.message


def test_decode_batch_is_priced_at_the_context_its_running_sequences_hold() -> None:
    """Finished requests' lengths price a running sequence at prompt + output / 2. A running
    set holds long outputs longer than short ones, and a surge of longer outputs runs before
    any of it finishes; each step reads the whole context, so the TBT budget allows fewer
    sequences. Taken once two snapshots agree: a fan-out's long prompts pass within one."""
    spec = make_service(demand={"learn": False})
    base = capacity(spec, signals(), PolicyState())
    mean = 1000.0 + 200.0 / 2  # what the finished requests' lengths price
    long = 8 * mean
    seen = PolicyState(decode_context=long)  # the snapshot before held as much
    assert capacity(spec, signals(decode_step_context=long), PolicyState()) == base  # once
    short = replace(seen, decode_context=mean / 2)
    assert capacity(spec, signals(decode_step_context=mean / 2), short) == base  # never above
    priced = capacity(spec, signals(decode_step_context=long), seen)
    kind = kinds(spec, DEFAULT_CATALOG)[1]
    budget = rounded(spec.slo.tbt_s * spec.policy.demand.decode_tbt_margin)
    assert priced.decode_batch == decode_capacity(kind, budget, long, 1200.0, margin=1.0).batch
    assert priced.decode_batch < base.decode_batch
    # the same running sequences, stepping at that context, ask for more decode
    sig = signals(request_rate=1.0, decode_running=4 * base.decode_batch, decode_step_context=long)
    _, state = decide(spec, sig, counts(4, 4), PolicyState(), NOW)
    assert state.decode_context == long
    assert PolicyState.from_json(state.to_json()).decode_context == long
    later = replace(sig, observed_at=NOW + 15)
    decision, _ = decide(spec, later, counts(4, 4), state, NOW + 15)
    wanted = 4 * base.decode_batch / priced.decode_batch
    assert decision.required_decode == pytest.approx(wanted, rel=0.05)


def test_the_window_remembers_decode_concurrency_at_the_slos_pace() -> None:
    """Sequences on an overloaded decode pool step slowly, so more of them are running at once
    than the same arrivals hold at the pace the batch is priced at (Little's law). The role is
    sized for all of them now, but the scale-in window and the burst memory keep the need at
    that pace: after a surge the window had held the overload's count for a quarter of an hour."""
    spec = make_service(demand={"learn": False})  # the prior's pace, not one learned from it
    cap = capacity(spec, signals(), PolicyState())
    pace = cap.decode_step_s  # the step one priced batch takes
    running = 8 * cap.decode_batch
    at_pace = signals(request_rate=1.0, decode_running=running, decode_step_s=pace)
    slow = replace(at_pace, decode_step_s=2 * pace)
    d_pace, s_pace = decide(spec, at_pace, counts(4, 4), PolicyState(), NOW)
    d_slow, s_slow = decide(spec, slow, counts(4, 4), PolicyState(), NOW)
    assert d_slow.required_decode == pytest.approx(d_pace.required_decode) == pytest.approx(8.0)
    assert max(n for _, n, _ in s_pace.decode_peaks) == pytest.approx(8.0)
    assert max(n for _, n, _ in s_slow.decode_peaks) == pytest.approx(4.0)


def _release(
    output_mean: float, request_rate: float = 1.0
) -> tuple[Decision, PolicyState, PolicyState, Signals, float]:
    """Two decode instances' worth of sequences, then prefill's 20-s queue drains into decode
    and nine are running: the decision after the release, its state, the state before the
    queue, the lump's signals and the priced batch."""
    spec = make_service(demand={"learn": False})
    batch = capacity(spec, signals(output_mean=output_mean), PolicyState()).decode_batch
    calm = signals(request_rate=request_rate, decode_running=2 * batch, output_mean=output_mean)
    _, first = decide(spec, calm, counts(4, 4), running(), NOW)
    assert burst.last_need(first.decode_burst) == pytest.approx(2.0)
    lump = replace(calm, observed_at=NOW + 30, decode_running=9 * batch)
    queued = replace(calm, observed_at=NOW + 15, prefill_queue_s=20.0)
    _, state = decide(spec, queued, counts(4, 4), first, NOW + 15)
    decision, state = decide(spec, lump, counts(4, 4), state, NOW + 30)  # the queue drained
    return decision, state, first, lump, batch


def test_sequences_a_draining_prefill_queue_releases_are_asked_for_by_their_drain() -> None:
    """A falling prefill queue drains into decode as one lump, work that runs once: decode is
    asked for it as its tokens drained within drain_s, as a decode queue is, not as
    concurrency (a 5x step's ~1,000 released sequences finished in seconds and had asked for
    20 instances where 5 serve), and the scale-in window and the burst memory keep the need
    from before the release (counted, a 5x step's release had held decode at 4x its need for
    a quarter hour). While the queue grows, prefill releases at its own pace, no lump: the
    day's 15:10 surge raised prompts and outputs at once, and its sequences read as released
    left decode two instances short at the onset."""
    spec = make_service(demand={"learn": False})
    decision, state, first, lump, batch = _release(output_mean=200.0)
    cap = capacity(spec, lump, PolicyState())
    drained = 7 * batch * 200.0 / (spec.policy.demand.drain_s * cap.decode_tps)
    assert drained < 1  # seconds of work: less than an instance over drain_s
    assert decision.required_decode == pytest.approx(2.0 + drained)
    assert f"({7 * batch:,.0f} of them prefill's released queue: {drained:,.1f})" in (
        decision.message
    )
    assert max(n for _, n, _ in state.decode_peaks) == pytest.approx(2.0)
    assert burst.last_need(state.decode_burst) == pytest.approx(2.0)

    # While prefill's queue still grows, it releases only its own pace: they are decode's load.
    _, state = decide(
        spec,
        replace(lump, observed_at=NOW + 15, decode_running=2 * batch, prefill_queue_s=20.0),
        counts(4, 4),
        first,
        NOW + 15,
    )
    decision, _ = decide(spec, replace(lump, prefill_queue_s=30.0), counts(4, 4), state, NOW + 30)
    assert decision.required_decode >= 9.0  # all of them, and the queue's release to come
    assert "of them prefill's released queue" not in decision.message

    # With no prefill queue before them, the same sequences are decode's own need.
    calm = replace(lump, observed_at=NOW + 15, decode_running=2 * batch)
    _, state = decide(spec, calm, counts(4, 4), first, NOW + 15)
    decision, state = decide(spec, lump, counts(4, 4), state, NOW + 30)
    assert decision.required_decode == pytest.approx(9.0)
    assert max(n for _, n, _ in state.decode_peaks) == pytest.approx(9.0)


def test_a_release_that_runs_longer_than_its_drain_is_asked_for_as_concurrency() -> None:
    """Outputs long enough that the released sequences outlast drain_s on the instances they
    would need: more instances than they fill would not drain them sooner, so they count as
    the concurrency they are, and are still not remembered."""
    decision, state, _, _, _ = _release(output_mean=5_000.0, request_rate=0.05)
    assert decision.required_decode == pytest.approx(9.0)
    assert "(of which 7.0 is prefill's released queue: not remembered)" in decision.message
    assert max(n for _, n, _ in state.decode_peaks) == pytest.approx(2.0)


@pytest.mark.parametrize("running, kv_use", [(0.0, 0.5), (50.0, 0.0), (50.0, None)])
def test_no_sequences_or_no_kv_report_leaves_the_priors_batch(
    running: float, kv_use: float | None
) -> None:
    """KV memory in use is a mean over a window and sequences running a snapshot: one can be
    zero while the other is not, and nothing is divided by it."""
    spec = make_service()
    sig = signals(decode_running=running, kv_use=kv_use)
    decision, _ = decide(spec, sig, counts(4, 4), PolicyState(), NOW)
    batch = capacity(spec, sig, PolicyState()).decode_batch
    assert f"seqs / {batch:,.0f}" in decision.message


def _grow_decode_queue(spec: ServiceSpec, queues: list[float], d: int = 5) -> tuple:
    """Feed periods with a growing decode queue; return the last decision and state."""
    state, p = PolicyState(), 4
    decision = None
    for i, q in enumerate(queues):
        t = NOW + 15 * i
        sig = signals(observed_at=t, decode_running=300.0, decode_queue=q, output_mean=70.0)
        decision, state = decide(spec, sig, counts(p, d), state, t)
        p, d = decision.prefill, decision.decode
    return decision, state


def test_a_decode_queue_that_keeps_growing_is_sized_as_concurrency() -> None:
    """The mean output comes from finished requests and lags a shift to long outputs; once the
    queue has grown backlog_periods in a row, the drain estimate is proven short and the
    waiting sequences count as running ones do."""
    spec = make_service(scale_out_cooldown_s=30)
    k = spec.policy.demand.backlog_periods
    queues = [500.0 * 1.5**i for i in range(k + 1)]
    decision, state = _grow_decode_queue(spec, queues)
    batch = capacity(spec, signals(), state).decode_batch
    assert decision.decode >= (300.0 + queues[-1]) / batch - 1


def test_a_growing_backlog_goes_to_the_need_through_the_cooldown() -> None:
    """A role held by its scale-out cooldown while its queue grows steps to the measured need,
    not one instance at a time (one instance per period took a 16x surge 4 minutes)."""
    spec = make_service(scale_out_cooldown_s=300)
    k = spec.policy.demand.backlog_periods
    queues = [500.0 * 1.5**i for i in range(k + 2)]
    decision, state = _grow_decode_queue(spec, queues)
    batch = capacity(spec, signals(), state).decode_batch
    assert decision.reason is Reason.BACKLOG_GROWTH  # the step before started the cooldown
    assert decision.decode >= (300.0 + queues[-1]) / batch - 1


def test_one_roles_growth_does_not_hold_the_others_scale_out() -> None:
    """Each role's scale-out cooldown counts from its own growth: prefill stepping out every
    period must not keep decode waiting."""
    spec = make_service(scale_out_cooldown_s=60)
    state, p, d = PolicyState(), 2, 3
    first = signals(prefill_offered_tps=60_000.0)
    decision, state = decide(spec, first, counts(p, d), state, NOW)
    assert decision.prefill > p and decision.decode == d
    p = decision.prefill
    later = signals(observed_at=NOW + 15, prefill_offered_tps=60_000.0, decode_running=900.0)
    decision, _ = decide(spec, later, counts(p, d), state, NOW + 15)
    assert decision.decode > d, decision.message


def test_a_drained_backlog_is_not_held_by_the_scale_in_window() -> None:
    """The scale-in window remembers the arriving demand, not the queue it drained: once the
    queue is gone the role returns toward its arriving need."""
    spec = make_service()
    k = spec.policy.demand.backlog_periods
    queues = [500.0 * 1.5**i for i in range(k + 1)]
    high, state = _grow_decode_queue(spec, queues)
    t = NOW + 15 * (k + 1) + 120
    calm = signals(observed_at=t, decode_running=300.0, decode_queue=0.0, output_mean=70.0)
    after, _ = decide(spec, calm, counts(high.prefill, high.decode), state, t)
    assert after.decode < high.decode


def test_a_step_in_the_load_does_not_wait_out_the_scale_out_cooldown() -> None:
    """Prefill grew 15 s ago (cooldown 60 s). Arrivals 1.5x what 4 instances carry wait for
    that step to land; arrivals 10x (traffic back after an idle spell) do not: the last step
    was never sized for them."""
    spec = make_service(scale_out_cooldown_s=60)
    state = replace(PolicyState(), prefill_grew_at=NOW - 15, started_at=NOW - 600)
    per = capacity(spec, signals(), state).prefill_tps * 0.8
    some = signals(prefill_offered_tps=4 * per * 1.5, prefill_tps=4 * per)
    decision, _ = decide(spec, some, counts(4, 4), state, NOW)
    assert decision.prefill == 4 and "scale-out cooldown" in decision.message
    step = signals(prefill_offered_tps=4 * per * 10, prefill_tps=4 * per)
    decision, _ = decide(spec, step, counts(4, 4), state, NOW)
    assert decision.prefill >= 40 and "over 2x the count: no cooldown" in decision.message


def test_an_ask_the_fleet_could_not_place_is_asked_again_not_dropped() -> None:
    """Decode asked for more than the fleet could place (it placed three quarters). In the
    scale-out cooldown the policy asks again (not for the placed count, then the ask again a
    period later: a direction change each period), and asking again is no new growth, so the
    cooldown runs out and the other role may scale in."""
    spec = make_service(scale_out_cooldown_s=60)
    sig = signals(
        decode_running=30 * 180.0,
        request_rate=1.0,
        prefill_offered_tps=10_000.0,
        decode_step_s=None,  # nothing learned: the need stays put
    )
    state = replace(PolicyState(), started_at=NOW - 600)
    first, state = decide(spec, sig, counts(4, 10), state, NOW)
    ask = first.decode
    assert ask > 15
    placed = counts(first.prefill, ask * 3 // 4)  # the fleet had room for three quarters
    later = NOW + 15
    again, after = decide(spec, replace(sig, observed_at=later), placed, state, later)
    assert again.decode == ask, again.message
    assert "not placed yet" in again.message
    assert after.decode_grew_at == NOW and after.last_scale_out_at == NOW  # no new growth


def test_an_ask_the_fleet_could_not_place_is_the_dead_bands_reference() -> None:
    """Kubernetes keeps Pending pods in the replica count; the policy keeps an ask it could not
    place while the need stays within the dead-band of the ask. Judged against the placed
    count instead, a need wavering around the tolerance's edge dropped the ask to the count
    and asked again a period later: a direction change each time, no instance moved."""
    # no window: the need alone decides; a band in of 20%, so 0.9 of the ask is well within it
    spec = make_service(demand={"peak_window_s": 0}, scale_in_tolerance=0.2)
    base = signals(request_rate=1.0, decode_step_s=None)  # sized by running sequences
    state = replace(PolicyState(), started_at=NOW - 600)
    first, state = decide(spec, replace(base, decode_running=30 * 180.0), counts(4, 10), state, NOW)
    ask = first.decode
    placed = counts(first.prefill, round(ask * 0.85))  # room for 85% of it
    for share, want in ((0.9, ask), (0.75, placed.decode)):  # within the ask's band / below
        t = NOW + 15
        sig = replace(base, decode_running=30 * 180.0 * share, observed_at=t)
        again, _ = decide(spec, sig, placed, state, t)
        assert again.decode == want, again.message
        assert ("still asking" in again.message) == (want == ask)


def test_a_role_held_at_its_max_says_so() -> None:
    """Mooncake x100 asked 499 prefill at the 400-instance max: the sentence ended `-> 400`
    with no word of the bound."""
    spec = make_service()
    sig = signals(prefill_offered_tps=6_000_000.0, prefill_tps=4_000_000.0)
    decision, _ = decide(spec, sig, counts(400, 40), running(), NOW)
    assert decision.prefill == 400
    assert "(prefill max 400)" in decision.message


def test_dgs_too_few_for_decode_cut_decode_to_the_budget_not_prefill_past_it() -> None:
    """17 decode for one prefill needs a second DG (16 per prefill instance at most); with a
    72-GPU budget (18 instances of 4 GPUs) the raise to 2 prefill asked for 76 GPUs."""
    spec = make_service(gpu_budget=72)
    sig = signals(
        prefill_offered_tps=200.0, prefill_tps=200.0, request_rate=40.0,
        output_mean=2000.0, decode_running=40 * 40.0,
    )  # fmt: skip
    decision, _ = decide(spec, sig, counts(1, 10), running(), NOW)
    assert (decision.prefill, decision.decode) == (1, 16)
    assert decision.reason is Reason.CLAMPED_BUDGET
    assert "would break the GPU budget (72)" in decision.message


def test_a_zero_mean_prompt_reads_as_unknown_not_as_a_division() -> None:
    """A queue's release to decode is its tokens over the mean prompt; a mean of 0 (a report
    with no prompts in it) raised ZeroDivisionError out of `decide`."""
    spec = make_service()
    zero, _ = decide(
        spec, signals(prompt_mean=0.0, prefill_queue_s=2.0), counts(4, 4), running(), NOW
    )
    unknown, _ = decide(
        spec, signals(prompt_mean=None, prefill_queue_s=2.0), counts(4, 4), running(), NOW
    )
    assert (zero.prefill, zero.decode, zero.reason) == (
        unknown.prefill,
        unknown.decode,
        unknown.reason,
    )
