"""A tuned target carried to today's lengths (policy/transport.py, `policy.tuned_at`)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from heteroscale_ray.config import ServiceSpec
from heteroscale_ray.policy import PolicyState, Reason, RoleCounts, Signals, decide
from heteroscale_ray.policy.transport import carried, carried_target, track_transport

NOW = 1_000_000.0
MOONCAKE = {"prompt_tokens": 15_000, "output_tokens": 150}


def longctx(**policy: object) -> ServiceSpec:
    """The example `longctx`: decode on H20 x4 bound by KV memory, tuned on 15k-token prompts."""
    return ServiceSpec.model_validate(
        {
            "name": "longctx",
            "model": "dense-70b",
            "slo": {"ttft_s": 10.0, "tbt_s": 0.05},
            "pd_ratio": "7:1",
            "prefill": {"gpu_types": ["H800"], "gpus_per_instance": 4, "max_instances": 400},
            "decode": {"gpu_types": ["H20"], "gpus_per_instance": 4, "max_instances": 100},
            "policy": {
                "signal": "decode_tps",
                "target_per_instance": 750,
                "scale_out_cooldown_s": 0,
                "scale_in_cooldown_s": 0,
                "latency_guard": {"enabled": False},
                **policy,
            },
        }
    )


def signals(prompt: float | None, output: float | None = 150.0, **kw: float) -> Signals:
    base = dict(
        observed_at=NOW,
        request_rate=2.0,
        prompt_mean=prompt,
        output_mean=output,
        prompt_sd=None,
        decode_tps=15_000.0,
        prefill_tps=30_000.0,
        ttft_p99_s=1.0,
        tbt_p99_s=0.03,
    )
    return Signals(**{**base, **kw})


def test_at_the_tuned_lengths_the_target_is_as_configured() -> None:
    spec = longctx(tuned_at=MOONCAKE)
    move, _ = track_transport(spec, signals(15_000.0), PolicyState(), NOW)
    assert move is not None
    assert move.prefill == pytest.approx(1.0) and move.decode == pytest.approx(1.0)
    assert carried(spec, move).policy.target_per_instance == pytest.approx(750)


def test_shorter_prompts_raise_a_kv_bound_decode_target_and_shrink_the_fleet() -> None:
    """A decode instance bound by KV memory holds more 8k-token sequences than 15k ones: the
    target tuned on Mooncake would size decode (and prefill, by the ratio) for the wrong load."""
    tuned = longctx(tuned_at=MOONCAKE)
    move, _ = track_transport(tuned, signals(8_000.0), PolicyState(), NOW)
    assert move is not None and move.decode > 1.3
    assert move.prefill > 1.0  # attention's quadratic share shrinks with the prompt
    was, _ = decide(longctx(), signals(8_000.0), RoleCounts(70, 10), PolicyState(), NOW)
    now, _ = decide(tuned, signals(8_000.0), RoleCounts(70, 10), PolicyState(), NOW)
    assert was.decode == 20 and was.reason is Reason.SCALE_OUT  # 15,000 tok/s over 750
    assert now.decode < 16 and now.prefill < was.prefill
    assert "target 750 -> " in now.message and "(tuned at 15,000/150)" in now.message


def test_without_tuned_at_the_paper_rule_holds_its_target() -> None:
    spec = longctx()
    move, state = track_transport(spec, signals(8_000.0), PolicyState(), NOW)
    assert move is None and state == PolicyState()
    assert carried(spec, move) is spec


def test_one_windows_lengths_move_the_carried_target_by_their_weight() -> None:
    spec = longctx(tuned_at=MOONCAKE)
    _, state = track_transport(spec, signals(15_000.0), PolicyState(), NOW)
    move, state = track_transport(spec, signals(4_000.0), state, NOW + 15.0)
    alone, _ = track_transport(spec, signals(4_000.0), PolicyState(), NOW)
    assert move is not None and alone is not None
    assert 1.0 < move.decode < 1.0 + (alone.decode - 1.0) * 0.1  # 15 s of a 300 s average


def test_stale_or_missing_lengths_keep_the_last_carried_target() -> None:
    spec = longctx(tuned_at=MOONCAKE)
    first, state = track_transport(spec, signals(8_000.0), PolicyState(), NOW)
    for sig, fresh in ((signals(None, None), True), (signals(8_000.0), False)):
        move, after = track_transport(spec, sig, state, NOW + 30.0, fresh)
        assert move is not None and first is not None
        assert move.decode == first.decode and after == state and move.today is None
    assert track_transport(spec, signals(None, None), PolicyState(), NOW)[0] is None


def test_the_state_survives_a_restart() -> None:
    spec = longctx(tuned_at=MOONCAKE)
    _, state = track_transport(spec, signals(8_000.0), PolicyState(), NOW)
    assert PolicyState.from_json(state.to_json()) == state


def test_tuned_at_is_for_targets_and_must_be_positive() -> None:
    with pytest.raises(ValidationError, match="remove tuned_at"):
        ServiceSpec.model_validate(
            {
                **longctx().model_dump(mode="json"),
                "policy": {"signal": "demand", "tuned_at": MOONCAKE},
            }
        )
    with pytest.raises(ValidationError, match="prompt_tokens"):
        longctx(tuned_at={"prompt_tokens": 0, "output_tokens": 150})


def test_the_status_shows_the_target_the_last_decision_carried() -> None:
    spec = longctx(tuned_at=MOONCAKE)
    _, state = decide(spec, signals(8_000.0), RoleCounts(70, 10), PolicyState(), NOW)
    assert carried_target(spec, state) == pytest.approx(750 * state.carried_decode)
    assert carried_target(longctx(), state) is None and carried_target(spec, None) is None


def test_the_fixed_ratio_is_carried_to_decode_heavy_traffic() -> None:
    """7:1 tuned on 15k-token prompts with 150-token answers, on 1.2k-token prompts with
    1.7k-token answers: prefill per decode token falls ~150x, and the carried ratio goes to
    the grid's lowest (1:8) with reason ratio_drift, instead of asking for 7 prefill per decode."""
    spec = longctx(tuned_at=MOONCAKE)
    sig = signals(1_200.0, 1_700.0, decode_tps=75_000.0)  # 100 decode instances at 750
    decision, state = decide(spec, sig, RoleCounts(70, 10), PolicyState(), NOW)
    assert state.active_ratio == (1, 8)
    assert decision.pd_ratio == (1, 8) and decision.prefill <= 10 < decision.decode
    assert "the configured ratio carried to today's lengths is" in decision.message
    # held at 7:1 the same load asks for 7 prefill per decode instance
    plain, _ = decide(longctx(), sig, RoleCounts(70, 10), PolicyState(), NOW)
    assert plain.pd_ratio == (7, 1) and plain.prefill >= 7 * plain.decode - 7


def test_at_the_tuned_lengths_the_ratio_stays_put() -> None:
    spec = longctx(tuned_at=MOONCAKE)
    state, counts = PolicyState(), RoleCounts(70, 10)
    for i, prompt in enumerate((15_000.0, 13_000.0, 17_000.0, 15_000.0)):
        decision, state = decide(spec, signals(prompt), counts, state, NOW + 15 * i)
        assert decision.pd_ratio == (7, 1), decision.message
        assert decision.reason is not Reason.RATIO_DRIFT
