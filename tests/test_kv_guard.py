"""KV-pressure guard: decode memory nearly full steps decode out and blocks scale-in."""

from __future__ import annotations

from typing import Any

import pytest
from test_policy import NOW, counts, make_service

from heteroscale_ray.config import ConfigError, ServicesConfig, parse_yaml_text
from heteroscale_ray.policy import PolicyState, Reason, Signals, decide

GUARD = {"enabled": True, "high": 0.9, "step": 0.2, "cooldown_s": 60}


def kv_service(**guard: Any) -> Any:
    return make_service(policy={"kv_guard": {**GUARD, **guard}})


def sig(decode_tps: float, kv_use: float | None, age: float = 0.0) -> Signals:
    return Signals(observed_at=NOW - age, decode_tps=decode_tps, kv_use=kv_use)


@pytest.mark.parametrize(
    ("tps", "kv", "state", "want", "reason"),
    [
        # 9 decode on target (9,000 tok/s), memory full: +20% -> 11 decode (prefill 4 at 1:3)
        (9000, 0.95, PolicyState(), (4, 11), Reason.KV_PRESSURE),
        (9000, 0.90, PolicyState(), (4, 11), Reason.KV_PRESSURE),  # at the threshold
        (9000, 0.85, PolicyState(), (3, 9), Reason.HOLD_DEADBAND),  # below it: nothing
        (9000, None, PolicyState(), (3, 9), Reason.HOLD_DEADBAND),  # no KV signal: nothing
        (9000, float("nan"), PolicyState(), (3, 9), Reason.HOLD_DEADBAND),
        # proportional control already wants more than the step: it wins
        (15000, 0.95, PolicyState(), (5, 15), Reason.SCALE_OUT),
        # low load would scale in, but memory is full: step out instead
        (3000, 0.95, PolicyState(), (4, 11), Reason.KV_PRESSURE),
        # inside the guard cooldown: no new step, and no scale-in either
        (3000, 0.95, PolicyState(last_kv_guard_at=NOW - 30), (3, 9), Reason.HOLD_COOLDOWN),
        (9000, 0.95, PolicyState(last_kv_guard_at=NOW - 30), (3, 9), Reason.HOLD_DEADBAND),
        (9000, 0.95, PolicyState(last_kv_guard_at=NOW - 61), (4, 11), Reason.KV_PRESSURE),
    ],
)
def test_kv_guard(
    tps: float, kv: float | None, state: PolicyState, want: tuple[int, int], reason: Reason
) -> None:
    decision, new = decide(kv_service(), sig(tps, kv), counts(3, 9), state, NOW)
    assert ((decision.prefill, decision.decode), decision.reason) == (want, reason)
    if reason is Reason.KV_PRESSURE:
        assert new.last_kv_guard_at == NOW
        assert "decode KV use" in decision.message


def test_disabled_or_stale_guard_does_nothing() -> None:
    off = make_service()
    decision, _ = decide(off, sig(3000, 0.99), counts(3, 9), PolicyState(), NOW)
    assert decision.reason is Reason.SCALE_IN
    stale, _ = decide(kv_service(), sig(9000, 0.99, age=120), counts(3, 9), PolicyState(), NOW)
    assert stale.reason is Reason.HOLD_MISSING_SIGNAL


def test_kv_guard_respects_the_decode_maximum() -> None:
    spec = make_service(decode={"max_instances": 10}, policy={"kv_guard": GUARD})
    decision, _ = decide(spec, sig(9000, 0.95), counts(3, 9), PolicyState(), NOW)
    assert decision.decode == 10
    assert decision.reason is Reason.CLAMPED_MIN_MAX


def test_kv_guard_state_round_trips() -> None:
    _, state = decide(kv_service(), sig(9000, 0.95), counts(3, 9), PolicyState(), NOW)
    assert PolicyState.from_json(state.to_json()) == state


@pytest.mark.parametrize(
    ("guard", "needle"),
    [("{enabled: true, high: 1.5}", "high"), ("{enabled: true, steps: 0.1}", "steps")],
)
def test_kv_guard_config_errors(guard: str, needle: str) -> None:
    yaml = (
        "services:\n  - {name: chat, slo: {ttft_s: 1, tbt_s: 0.04}, pd_ratio: '1:3',\n"
        "     prefill: {gpu_types: [L20]}, decode: {gpu_types: [H20]},\n"
        f"     policy: {{target_per_instance: 1000, kv_guard: {guard}}}}}\n"
    )
    with pytest.raises(ConfigError) as e:
        parse_yaml_text(yaml, ServicesConfig, "services.yaml")
    assert "kv_guard" in str(e.value) and needle in str(e.value)
