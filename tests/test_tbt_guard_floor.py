"""The TBT guard on what more decode instances can take away, and a guard step remembered
through a dip: a TBT floor (long prompts, short answers: the KV transfer is most of TBT) must
never ratchet decode up."""

from __future__ import annotations

from dataclasses import replace

from test_demand_policy import NOW, counts, make_service, running, signals

from heteroscale_ray.policy import Reason, decide


def test_with_no_sequence_running_tbt_is_judged_on_the_windows_token_steps() -> None:
    """An idle snapshot has no step to judge; the window's tokens were made at 19-ms steps,
    well under half the 55-ms p99: a floor, not a reason to add decode."""
    spec = make_service()
    idle = dict(decode_running=0.0, decode_step_s=None, decode_step_batch=None)
    floor = signals(tbt_p99_s=0.055, decode_token_step_s=0.019, **idle)
    decision, _ = decide(spec, floor, counts(2, 2), running(), NOW)
    assert decision.reason is Reason.LATENCY_FLOOR and decision.decode == 2, decision.message
    batches = replace(floor, decode_token_step_s=0.045)  # tokens were made at large batches
    decision, _ = decide(spec, batches, counts(2, 2), running(), NOW)
    assert decision.reason is Reason.LATENCY_GUARD and decision.decode > 2


def test_at_one_sequence_per_busy_instance_tbt_is_a_floor() -> None:
    """A 40-ms step at one sequence an instance is all weight reads and that sequence's own
    work: more instances cannot run fewer. At 20 sequences most of it is theirs."""
    spec = make_service()
    alone = signals(tbt_p99_s=0.07, decode_step_s=0.04, decode_step_batch=1.0)
    decision, _ = decide(spec, alone, counts(2, 4), running(), NOW)
    assert decision.reason is Reason.LATENCY_FLOOR and decision.decode == 4, decision.message
    batched = replace(alone, decode_step_batch=20.0)
    decision, _ = decide(spec, batched, counts(2, 4), running(), NOW)
    assert decision.reason is Reason.LATENCY_GUARD and decision.decode > 4


def test_a_step_that_did_not_help_is_remembered_through_one_calm_reading() -> None:
    """A step that left TBT where it was earns no other while one reading under the tiers
    comes between (a thin load's p99 swings around the SLO); once TBT stays under them for a
    start-up horizon, the next breach is a new one and earns its first step."""
    spec = make_service()
    breach = signals(tbt_p99_s=0.055, decode_step_s=0.04, decode_step_batch=20.0)
    first, state = decide(spec, breach, counts(2, 4), running(), NOW)
    assert first.reason is Reason.LATENCY_GUARD and first.decode == 5
    t = NOW + 60
    _, state = decide(spec, replace(breach, observed_at=t, tbt_p99_s=0.03), counts(2, 5), state, t)
    assert state.guard_role == "decode"  # one calm reading forgets nothing
    t += 15
    again = replace(breach, observed_at=t)
    second, state = decide(spec, again, counts(2, 5), state, t)
    assert second.reason is Reason.LATENCY_NO_GAIN and second.decode == 5, second.message
    for _ in range(10):  # under the tiers for 150 s, past the 120-s horizon
        t += 15
        calm = replace(breach, observed_at=t, tbt_p99_s=0.03)
        _, state = decide(spec, calm, counts(2, 5), state, t)
    assert state.guard_role is None
    t += 15
    third, _ = decide(spec, replace(breach, observed_at=t), counts(2, 5), state, t)
    assert third.reason is Reason.LATENCY_GUARD and third.decode > 5
