"""Policy core: one table of cases per rule, run against the pure ``decide`` and its stages."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import replace
from typing import Any

import pytest

from heteroscale_ray.config import LatencyTier, Role, ServiceSpec
from heteroscale_ray.policy import Decision, PolicyState, Reason, RoleCounts, Signals, decide
from heteroscale_ray.policy.cooldown import cooldown_left
from heteroscale_ray.policy.coordinated_guards import role_load
from heteroscale_ray.policy.freshness import read_signal
from heteroscale_ray.policy.guard_steps import guard_target, reached_tier
from heteroscale_ray.policy.limits import fit_to_limits, ratio_range
from heteroscale_ray.policy.periodic import active_entry, covers
from heteroscale_ray.policy.proportional import Direction, ceil_eps, damped_target, dead_band
from heteroscale_ray.policy.split import follower_count, split
from heteroscale_ray.policy.types import evolve

DAY = 1_699_920_000.0  # 2023-11-14 00:00:00 UTC
NOW = DAY + 12 * 3600  # noon UTC
NAN = float("nan")


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def make_service(**overrides: Any) -> ServiceSpec:
    """1:3 service, 1,000 tokens/s per decode instance, no damping; override any field (nested ok)."""
    base: dict[str, Any] = {
        "name": "chat",
        "slo": {"ttft_s": 1.0, "tbt_s": 0.04},
        "pd_ratio": "1:3",
        "prefill": {"gpu_types": ["L20"], "min_instances": 1, "max_instances": 1000},
        "decode": {"gpu_types": ["H20"], "min_instances": 1, "max_instances": 1000},
        "policy": {
            "target_per_instance": 1000,
            "scale_out_tolerance": 0.1,
            "scale_in_tolerance": 0.2,
            "scale_out_cooldown_s": 30,
            "scale_in_cooldown_s": 300,
            "scale_out_damping": 1.0,
            "scale_in_damping": 1.0,
            "stale_after_s": 60,
            "latency_guard": {
                "metric": "tbt",
                "tiers": [{"at": 1.0, "step": 0.1}, {"at": 2.0, "step": 0.5}],
                "cooldown_s": 30,
            },
        },
    }
    return ServiceSpec.model_validate(_merge(base, overrides))


def policy(**overrides: Any) -> dict[str, Any]:
    return {"policy": overrides}


def counts(prefill: int, decode: int) -> RoleCounts:
    return RoleCounts(prefill_ready=prefill, decode_ready=decode)


def signals(decode_tps: float | None = None, age: float = 0.0, **fields: Any) -> Signals:
    return Signals(observed_at=NOW - age, decode_tps=decode_tps, **fields)


def run(
    spec: ServiceSpec,
    sig: Signals,
    have: RoleCounts,
    state: PolicyState | None = None,
    now: float = NOW,
) -> tuple[Decision, PolicyState]:
    return decide(spec, sig, have, state or PolicyState(), now)


def at(hhmm: str, seconds: int = 0) -> float:
    h, m = hhmm.split(":")
    return DAY + int(h) * 3600 + int(m) * 60 + seconds


# --- proportional control and dead-band --------------------------------------------------------


@pytest.mark.parametrize(
    ("tps", "have", "want", "reason"),
    [
        pytest.param(20_000, (4, 12), (7, 20), Reason.SCALE_OUT, id="out-to-required"),
        pytest.param(6_000, (4, 12), (2, 6), Reason.SCALE_IN, id="in-to-required"),
        pytest.param(
            11_000, (4, 10), (4, 10), Reason.HOLD_DEADBAND, id="out-edge-exactly-10pct-holds"
        ),
        pytest.param(11_001, (4, 10), (4, 12), Reason.SCALE_OUT, id="out-edge-just-above-scales"),
        pytest.param(
            8_000, (4, 10), (4, 10), Reason.HOLD_DEADBAND, id="in-edge-exactly-20pct-holds"
        ),
        pytest.param(7_999, (4, 10), (3, 8), Reason.SCALE_IN, id="in-edge-just-below-scales"),
        pytest.param(10_500, (4, 10), (4, 10), Reason.HOLD_DEADBAND, id="inside-band"),
        pytest.param(700, (1, 1), (1, 1), Reason.HOLD_DEADBAND, id="in-but-rounding-up-keeps-one"),
        pytest.param(0, (4, 12), (1, 1), Reason.CLAMPED_MIN_MAX, id="zero-load-to-minimum"),
    ],
)
def test_proportional_control(
    tps: float, have: tuple[int, int], want: tuple[int, int], reason: Reason
) -> None:
    decision, _ = run(make_service(), signals(tps), counts(*have))
    assert (decision.prefill, decision.decode) == want
    assert decision.reason is reason
    assert decision.signal_value == tps


def test_scale_out_sentence_has_the_numbers() -> None:
    spec = make_service(**policy(target_per_instance=2400))
    decision, _ = run(spec, signals(48_000), counts(4, 12))
    assert decision.message == (
        "decode TPS 48,000 over target 2,400/instance needs 20 decode (now 12, +67% > +10% "
        "tolerance): scale out to 7 prefill / 20 decode at 1:3"
    )
    assert decision.required_decode == pytest.approx(20.0)
    assert decision.required_prefill == pytest.approx(20 / 3)


def test_hold_sentence_says_dead_band() -> None:
    decision, _ = run(make_service(), signals(11_000), counts(4, 10))
    assert "within the +10%/-20% dead-band" in decision.message
    assert decision.message.endswith("hold 4 prefill / 10 decode")


@pytest.mark.parametrize(
    ("required", "current", "expected"),
    [
        (11.0, 10, Direction.HOLD),
        (11.0 + 1e-6, 10, Direction.OUT),
        (8.0, 10, Direction.HOLD),
        (8.0 - 1e-6, 10, Direction.IN),
        (0.1, 0, Direction.OUT),
        (0.0, 0, Direction.HOLD),
        (0.0, 3, Direction.IN),
    ],
)
def test_dead_band(required: float, current: int, expected: Direction) -> None:
    assert dead_band(required, current, 0.1, 0.2) is expected


@pytest.mark.parametrize(
    ("x", "expected"), [(11.000000000000002, 11), (11.01, 12), (0.0, 0), (7.0, 7), (0.3, 1)]
)
def test_ceil_ignores_float_noise(x: float, expected: int) -> None:
    assert ceil_eps(x) == expected


# --- damping -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "desired", "damping", "expected"),
    [
        pytest.param(10, 20, 0.5, 15, id="gap-10-half-is-5"),
        pytest.param(10, 11, 0.5, 11, id="gap-1-still-moves-1"),
        pytest.param(10, 13, 0.5, 12, id="half-of-3-rounds-up"),
        pytest.param(10, 20, 0.01, 11, id="tiny-damping-at-least-1"),
        pytest.param(10, 20, 1.0, 20, id="no-damping"),
        pytest.param(20, 10, 0.5, 15, id="scale-in-half"),
        pytest.param(10, 0, 0.5, 5, id="scale-in-to-zero-half"),
        pytest.param(7, 7, 0.5, 7, id="no-gap"),
    ],
)
def test_damped_target(current: int, desired: int, damping: float, expected: int) -> None:
    assert damped_target(current, desired, damping) == expected


@pytest.mark.parametrize(
    ("overrides", "tps", "want_decode"),
    [
        (policy(scale_out_damping=0.5), 20_000, 15),
        (policy(scale_in_damping=0.5), 2_000, 6),
        (policy(scale_out_damping=0.5), 11_001, 11),
    ],
)
def test_damping_in_decide(overrides: dict[str, Any], tps: float, want_decode: int) -> None:
    decision, _ = run(make_service(**overrides), signals(tps), counts(4, 10))
    assert decision.decode == want_decode
    assert decision.prefill == math.ceil(want_decode / 3)
    assert "damped to" in decision.message


# --- cooldowns ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tps", "state", "reason"),
    [
        pytest.param(
            20_000,
            PolicyState(last_scale_out_at=NOW - 30),
            Reason.SCALE_OUT,
            id="out-at-exactly-30s",
        ),
        pytest.param(
            20_000,
            PolicyState(last_scale_out_at=NOW - 29.999),
            Reason.HOLD_COOLDOWN,
            id="out-1ms-early",
        ),
        pytest.param(
            20_000, PolicyState(last_scale_in_at=NOW - 30), Reason.SCALE_OUT, id="out-after-in-30s"
        ),
        pytest.param(
            20_000,
            PolicyState(last_scale_in_at=NOW - 29.999),
            Reason.HOLD_COOLDOWN,
            id="out-after-in-early",
        ),
        pytest.param(
            6_000,
            PolicyState(last_scale_out_at=NOW - 300),
            Reason.SCALE_IN,
            id="in-at-exactly-300s",
        ),
        pytest.param(
            6_000,
            PolicyState(last_scale_out_at=NOW - 299.999),
            Reason.HOLD_COOLDOWN,
            id="in-1ms-early",
        ),
        pytest.param(
            6_000,
            PolicyState(last_scale_in_at=NOW - 299.999),
            Reason.HOLD_COOLDOWN,
            id="in-after-in-early",
        ),
        pytest.param(
            20_000,
            PolicyState(last_scale_out_at=NOW - 100),
            Reason.SCALE_OUT,
            id="separate-out-open",
        ),
        pytest.param(
            6_000,
            PolicyState(last_scale_out_at=NOW - 100),
            Reason.HOLD_COOLDOWN,
            id="separate-in-closed",
        ),
        pytest.param(
            20_000,
            PolicyState(last_scale_out_at=NOW - 500, last_scale_in_at=NOW - 10),
            Reason.HOLD_COOLDOWN,
            id="latest-event-counts",
        ),
    ],
)
def test_cooldowns(tps: float, state: PolicyState, reason: Reason) -> None:
    decision, new_state = run(make_service(), signals(tps), counts(4, 12), state)
    assert decision.reason is reason
    if reason is Reason.HOLD_COOLDOWN:
        assert (decision.prefill, decision.decode) == (4, 12)
        assert "cooldown has" in decision.message
        assert new_state.last_scale_out_at == state.last_scale_out_at
        assert new_state.last_scale_in_at == state.last_scale_in_at


def test_an_ask_the_fleet_could_not_place_is_asked_again_in_the_cooldown() -> None:
    """Counts include starting instances, so an ask above them was not placed. Holding at the
    placed count in the cooldown and asking again after it made the desired count alternate,
    and each re-ask restarted the cooldown; now the hold keeps the ask, which is no new growth."""
    spec = make_service()
    first, state = run(spec, signals(20_000), counts(4, 12))
    assert (first.prefill, first.decode) == (7, 20) and first.reason is Reason.SCALE_OUT
    placed = counts(6, 16)  # the fleet had room for part of it
    later = NOW + 15
    again, after = run(spec, signals(20_000, age=-15), placed, state, later)
    assert (again.prefill, again.decode) == (7, 20), again.message
    assert again.reason is Reason.HOLD_COOLDOWN
    assert "4 not placed yet" in again.message
    assert after.last_scale_out_at == NOW  # asking again is no new growth
    # Once the cooldown has run from the first ask, a larger need scales out at once.
    grown, _ = run(spec, signals(30_000, age=-31), placed, after, NOW + 31)
    assert grown.reason is Reason.SCALE_OUT and grown.decode == 30
    # A need that fell below the unplaced ask asks only for what it needs.
    less, _ = run(spec, signals(18_000, age=-15), placed, state, later)
    assert less.decode == 18 and less.reason is Reason.HOLD_COOLDOWN


@pytest.mark.parametrize(
    ("now", "since", "cooldown", "left"),
    [
        (100.0, None, 30.0, 0.0),
        (130.0, 100.0, 30.0, 0.0),
        (129.0, 100.0, 30.0, 1.0),
        (500.0, 100.0, 30.0, 0.0),
    ],
)
def test_cooldown_left(now: float, since: float | None, cooldown: float, left: float) -> None:
    assert cooldown_left(now, since, cooldown) == pytest.approx(left)


@pytest.mark.parametrize(
    ("tps", "have", "field"),
    [(20_000, (4, 12), "last_scale_out_at"), (6_000, (4, 12), "last_scale_in_at")],
)
def test_scaling_records_its_timestamp(tps: float, have: tuple[int, int], field: str) -> None:
    _, state = run(make_service(), signals(tps), counts(*have))
    assert getattr(state, field) == NOW
    assert state.last_decision_at == NOW
    assert state.last_guard_at is None


def test_hold_keeps_timestamps() -> None:
    before = PolicyState(last_scale_out_at=NOW - 1000, last_scale_in_at=NOW - 2000)
    decision, after = run(make_service(), signals(12_000), counts(4, 12), before)
    assert decision.reason is Reason.HOLD_DEADBAND
    assert (after.last_scale_out_at, after.last_scale_in_at) == (NOW - 1000, NOW - 2000)
    assert after.last_decision_reason is Reason.HOLD_DEADBAND


# --- bounds and budget -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "tps", "have", "want", "reason"),
    [
        pytest.param(
            {"decode": {"max_instances": 16}},
            20_000,
            (4, 12),
            (6, 16),
            Reason.CLAMPED_MIN_MAX,
            id="decode-max",
        ),
        pytest.param(
            {"prefill": {"max_instances": 5}},
            20_000,
            (4, 12),
            (5, 15),
            Reason.CLAMPED_MIN_MAX,
            id="prefill-max-caps-decode-by-ratio",
        ),
        pytest.param(
            {"decode": {"min_instances": 8}},
            1_000,
            (4, 12),
            (3, 8),
            Reason.CLAMPED_MIN_MAX,
            id="decode-min",
        ),
        pytest.param(
            {"prefill": {"min_instances": 3}},
            1_000,
            (4, 12),
            (3, 7),
            Reason.CLAMPED_MIN_MAX,
            id="prefill-min-lifts-decode-by-ratio",
        ),
        pytest.param(
            {"decode": {"max_instances": 16}},
            20_000,
            (6, 16),
            (6, 16),
            Reason.HOLD_AT_BOUND,
            id="at-max-holds",
        ),
        pytest.param(
            {"decode": {"min_instances": 12}},
            1_000,
            (4, 12),
            (4, 12),
            Reason.HOLD_AT_BOUND,
            id="at-min-holds",
        ),
        pytest.param(
            {"decode": {"max_instances": 10}},
            10_000,
            (4, 12),
            (4, 10),
            Reason.CLAMPED_MIN_MAX,
            id="over-new-max-shrinks",
        ),
        pytest.param(
            {"prefill": {"max_instances": 1}, "decode": {"min_instances": 6}},
            20_000,
            (1, 6),
            (1, 20),
            Reason.CLAMPED_MIN_MAX,
            id="ratio-impossible-roles-clamped-alone",
        ),
    ],
)
def test_min_max(
    overrides: dict[str, Any],
    tps: float,
    have: tuple[int, int],
    want: tuple[int, int],
    reason: Reason,
) -> None:
    spec = make_service(**overrides)
    decision, _ = run(spec, signals(tps), counts(*have))
    assert (decision.prefill, decision.decode) == want
    assert decision.reason is reason
    for role, n in ((spec.prefill, decision.prefill), (spec.decode, decision.decode)):
        assert role.min_instances <= n <= role.max_instances


@pytest.mark.parametrize(
    ("overrides", "have", "want", "reason"),
    [
        pytest.param(
            policy(gpu_budget=20), (4, 12), (5, 15), Reason.CLAMPED_BUDGET, id="budget-keeps-ratio"
        ),
        pytest.param(
            policy(gpu_budget=16), (4, 12), (4, 12), Reason.HOLD_AT_BOUND, id="budget-already-full"
        ),
        pytest.param(
            {"decode": {"gpus_per_instance": 2}, "policy": {"gpu_budget": 20}},
            (2, 6),
            (3, 8),
            Reason.CLAMPED_BUDGET,
            id="gpus-per-instance-count",
        ),
        pytest.param(
            policy(gpu_budget=1000), (4, 12), (7, 20), Reason.SCALE_OUT, id="budget-not-binding"
        ),
    ],
)
def test_gpu_budget(
    overrides: dict[str, Any], have: tuple[int, int], want: tuple[int, int], reason: Reason
) -> None:
    decision, _ = run(make_service(**overrides), signals(20_000), counts(*have))
    assert (decision.prefill, decision.decode) == want
    assert decision.reason is reason
    if reason is Reason.CLAMPED_BUDGET:
        assert "GPU budget" in decision.message


def test_minimums_win_over_a_too_small_budget() -> None:
    spec = make_service(
        prefill={"min_instances": 2}, decode={"min_instances": 6}, policy={"gpu_budget": 4}
    )
    fitted = fit_to_limits(spec, Role.DECODE, 10, spec.ratio)
    assert (fitted.prefill, fitted.decode) == (2, 6)
    assert fitted.clamp is Reason.CLAMPED_BUDGET
    assert "minimums win" in fitted.note


@pytest.mark.parametrize(
    ("overrides", "anchor", "expected"),
    [
        ({}, Role.DECODE, (1, 1000)),
        ({"prefill": {"max_instances": 5}}, Role.DECODE, (1, 15)),
        ({"prefill": {"min_instances": 3}}, Role.DECODE, (7, 1000)),
        ({"decode": {"max_instances": 7}}, Role.PREFILL, (1, 2)),
        ({"prefill": {"max_instances": 1}, "decode": {"min_instances": 6}}, Role.DECODE, None),
    ],
)
def test_ratio_range(
    overrides: dict[str, Any], anchor: Role, expected: tuple[int, int] | None
) -> None:
    spec = make_service(**overrides)
    assert ratio_range(spec, anchor, spec.ratio) == expected


# --- P/D split, ratio repair, prefill signal ---------------------------------------------------


@pytest.mark.parametrize(
    ("anchor", "count", "ratio", "pair"),
    [
        (Role.DECODE, 20, (1, 3), (7, 20)),
        (Role.DECODE, 12, (1, 3), (4, 12)),
        (Role.DECODE, 4, (2, 1), (8, 4)),
        (Role.PREFILL, 5, (2, 1), (5, 3)),
        (Role.PREFILL, 6, (1, 3), (6, 18)),
        (Role.DECODE, 0, (1, 3), (0, 0)),
    ],
)
def test_split(anchor: Role, count: int, ratio: tuple[int, int], pair: tuple[int, int]) -> None:
    assert split(anchor, count, ratio) == pair
    assert follower_count(anchor, count, ratio) in pair


@pytest.mark.parametrize(
    ("have", "state", "want"),
    [
        pytest.param((1, 12), None, (4, 12), id="too-few-prefill"),
        pytest.param((8, 12), None, (4, 12), id="too-many-prefill"),
        pytest.param(
            (1, 12), PolicyState(last_scale_out_at=NOW - 1), (4, 12), id="repair-ignores-cooldown"
        ),
    ],
)
def test_ratio_repair_inside_dead_band(
    have: tuple[int, int], state: PolicyState | None, want: tuple[int, int]
) -> None:
    decision, _ = run(make_service(), signals(12_000), counts(*have), state)
    assert (decision.prefill, decision.decode) == want
    assert decision.reason is Reason.RATIO_REPAIR
    assert f"{have[0]} prefill / {have[1]} decode is off 1:3" in decision.message


@pytest.mark.parametrize(
    ("ratio", "tps", "have", "want", "reason"),
    [
        ("1:3", 6_000, (4, 12), (6, 18), Reason.SCALE_OUT),
        ("2:1", 5_000, (4, 2), (5, 3), Reason.SCALE_OUT),
        ("1:3", 2_000, (4, 12), (2, 6), Reason.SCALE_IN),
        ("1:3", 4_200, (4, 12), (4, 12), Reason.HOLD_DEADBAND),
    ],
)
def test_prefill_tps_signal(
    ratio: str, tps: float, have: tuple[int, int], want: tuple[int, int], reason: Reason
) -> None:
    spec = make_service(pd_ratio=ratio, policy={"signal": "prefill_tps"})
    decision, _ = run(spec, signals(prefill_tps=tps), counts(*have))
    assert (decision.prefill, decision.decode) == want
    assert decision.reason is reason
    assert decision.required_prefill == pytest.approx(tps / 1000)
    p, d = spec.ratio
    assert decision.required_decode == pytest.approx(tps / 1000 * d / p)


def test_prefill_signal_ignores_decode_tps() -> None:
    spec = make_service(policy={"signal": "prefill_tps"})
    decision, _ = run(spec, signals(decode_tps=99_000), counts(4, 12))
    assert decision.reason is Reason.HOLD_MISSING_SIGNAL
    assert "prefill TPS is missing" in decision.message


# --- missing, NaN and stale signals ------------------------------------------------------------


MISSING = [
    pytest.param(Signals(), "has no snapshot time", id="empty"),
    pytest.param(signals(None), "is missing", id="none"),
    pytest.param(signals(NAN), "is NaN", id="nan"),
    pytest.param(signals(float("inf")), "is infinite", id="inf"),
    pytest.param(signals(-5.0), "is negative", id="negative"),
    pytest.param(signals(1_000, age=60.001), "is stale", id="stale"),
    pytest.param(Signals(observed_at=NAN, decode_tps=1_000), "has no snapshot time", id="nan-time"),
]


@pytest.mark.parametrize(("sig", "problem"), MISSING)
@pytest.mark.parametrize("mode", ["metrics", "hybrid"])
def test_missing_signal_holds_and_never_scales_in(sig: Signals, problem: str, mode: str) -> None:
    table = [{"start": "00:00", "end": "00:01", "decode_instances": 1}]
    spec = make_service(policy={"mode": mode, "periodic": table if mode == "hybrid" else []})
    decision, state = run(spec, sig, counts(4, 12))
    assert (decision.prefill, decision.decode) == (4, 12)
    assert decision.reason is Reason.HOLD_MISSING_SIGNAL
    assert problem in decision.message
    assert "never scales in" in decision.message
    assert decision.signal_value is None and decision.required_decode is None
    assert state.last_scale_in_at is None


def test_signal_exactly_at_stale_after_is_fresh() -> None:
    decision, _ = run(make_service(), signals(1_000, age=60), counts(4, 12))
    assert decision.reason is Reason.SCALE_IN


@pytest.mark.parametrize(
    ("have", "want", "reason"),
    [
        pytest.param((1, 12), (4, 12), Reason.RATIO_REPAIR, id="repair-up-allowed"),
        pytest.param((10, 12), (10, 12), Reason.HOLD_MISSING_SIGNAL, id="repair-down-refused"),
    ],
)
def test_missing_signal_only_repairs_upward(
    have: tuple[int, int], want: tuple[int, int], reason: Reason
) -> None:
    decision, _ = run(make_service(), signals(NAN), counts(*have))
    assert (decision.prefill, decision.decode) == want
    assert decision.reason is reason


def test_missing_signal_does_not_hold_a_fleet_over_its_budget() -> None:
    """A budget lowered under the running fleet (a config update): a fresh signal shrinks to
    it, and so must a missing one, which otherwise holds what runs."""
    spec = make_service(**policy(gpu_budget=32))
    for reading in (40_000.0, NAN):
        decision, _ = run(spec, signals(reading), counts(10, 30))
        assert (decision.prefill, decision.decode) == (8, 24)
        assert decision.reason is Reason.CLAMPED_BUDGET


def test_a_nan_offered_prefill_rate_falls_back_to_the_processed_one() -> None:
    have = RoleCounts(prefill_ready=4, decode_ready=4)
    for offered in (None, NAN, 0.0):
        sig = Signals(prefill_offered_tps=offered, prefill_tps=8000.0)
        assert role_load(sig, have, Role.PREFILL) == 2000.0


def test_missing_signal_still_scales_out_on_latency_breach() -> None:
    decision, state = run(make_service(), signals(NAN, tbt_p99_s=0.05), counts(4, 12))
    assert (decision.prefill, decision.decode) == (5, 14)
    assert decision.reason is Reason.LATENCY_GUARD
    assert state.last_guard_at == NOW


def test_stale_latency_does_not_fire_the_guard() -> None:
    decision, _ = run(make_service(), signals(12_000, age=61, tbt_p99_s=0.5), counts(4, 12))
    assert decision.reason is Reason.HOLD_MISSING_SIGNAL
    assert (decision.prefill, decision.decode) == (4, 12)


def test_read_signal() -> None:
    spec = make_service()
    assert read_signal(spec, signals(5.0), NOW).value == 5.0
    assert read_signal(spec, signals(5.0, age=61), NOW).value is None


# --- latency guard -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tbt", "want", "reason"),
    [
        pytest.param(0.0399, (4, 12), Reason.HOLD_DEADBAND, id="below-first-tier"),
        pytest.param(0.04, (5, 14), Reason.LATENCY_GUARD, id="at-first-tier-plus-10pct"),
        pytest.param(0.0799, (5, 14), Reason.LATENCY_GUARD, id="just-below-second-tier"),
        pytest.param(0.08, (6, 18), Reason.LATENCY_GUARD, id="second-tier-plus-50pct"),
        pytest.param(1.0, (6, 18), Reason.LATENCY_GUARD, id="highest-tier-reached-applies"),
    ],
)
def test_latency_guard_tiers(tbt: float, want: tuple[int, int], reason: Reason) -> None:
    decision, _ = run(make_service(), signals(12_000, tbt_p99_s=tbt), counts(4, 12))
    assert (decision.prefill, decision.decode) == want
    assert decision.reason is reason


@pytest.mark.parametrize(
    ("tps", "state", "want", "reason"),
    [
        pytest.param(1_000, None, (5, 14), Reason.LATENCY_GUARD, id="beats-scale-in"),
        pytest.param(12_000, None, (5, 14), Reason.LATENCY_GUARD, id="beats-dead-band"),
        pytest.param(30_000, None, (10, 30), Reason.SCALE_OUT, id="bigger-proportional-wins"),
        pytest.param(
            12_000,
            PolicyState(last_scale_out_at=NOW - 1),
            (5, 14),
            Reason.LATENCY_GUARD,
            id="ignores-scale-cooldown",
        ),
        pytest.param(
            12_000,
            PolicyState(last_guard_at=NOW - 29.999),
            (4, 12),
            Reason.HOLD_DEADBAND,
            id="own-cooldown-blocks",
        ),
        pytest.param(
            12_000,
            PolicyState(last_guard_at=NOW - 30),
            (5, 14),
            Reason.LATENCY_GUARD,
            id="own-cooldown-over",
        ),
        pytest.param(
            1_000,
            PolicyState(last_guard_at=NOW - 10),
            (4, 12),
            Reason.HOLD_COOLDOWN,
            id="breach-in-cooldown-blocks-scale-in",
        ),
    ],
)
def test_latency_guard_precedence(
    tps: float, state: PolicyState | None, want: tuple[int, int], reason: Reason
) -> None:
    decision, _ = run(make_service(), signals(tps, tbt_p99_s=0.05), counts(4, 12), state)
    assert (decision.prefill, decision.decode) == want
    assert decision.reason is reason


@pytest.mark.parametrize(
    ("metric", "tbt", "ttft", "fires", "named"),
    [
        ("tbt", 0.05, 0.1, True, "TBT"),
        ("tbt", 0.01, 5.0, False, ""),
        ("ttft", 0.05, 0.1, False, ""),
        ("ttft", 0.01, 1.5, True, "TTFT"),
        ("both", 0.05, 0.1, True, "TBT"),
        ("both", 0.01, 1.5, True, "TTFT"),
        ("both", 0.05, 2.5, True, "TTFT"),
        ("both", NAN, 1.5, True, "TTFT"),
        ("both", None, None, False, ""),
    ],
)
def test_latency_guard_metric(
    metric: str, tbt: float | None, ttft: float | None, fires: bool, named: str
) -> None:
    spec = make_service(policy={"latency_guard": {"metric": metric}})
    decision, _ = run(spec, signals(12_000, tbt_p99_s=tbt, ttft_p99_s=ttft), counts(4, 12))
    assert (decision.reason is Reason.LATENCY_GUARD) is fires
    if fires:
        assert decision.message.startswith(f"{named} p99")


def test_latency_guard_disabled() -> None:
    spec = make_service(policy={"latency_guard": {"enabled": False}})
    decision, _ = run(spec, signals(12_000, tbt_p99_s=1.0), counts(4, 12))
    assert decision.reason is Reason.HOLD_DEADBAND


def test_latency_guard_sentence() -> None:
    decision, _ = run(make_service(), signals(12_000, tbt_p99_s=0.05), counts(4, 12))
    assert decision.message == (
        "TBT p99 50 ms is 1.25x the 40 ms SLO (tier at 1x: +10%): scale out to 5 prefill / 14 decode at 1:3"
    )


@pytest.mark.parametrize(
    ("ratio", "expected_at"),
    [(0.5, None), (0.95, None), (1.0, 1.0), (1.5, 1.0), (2.0, 2.0), (9.0, 2.0), (NAN, None)],
)
def test_reached_tier(ratio: float, expected_at: float | None) -> None:
    tiers = [LatencyTier(at=1.0, step=0.1), LatencyTier(at=2.0, step=0.5)]
    tier = reached_tier(ratio, tiers)
    assert (tier and tier.at) == expected_at


@pytest.mark.parametrize(
    ("current", "step", "expected"),
    [(12, 0.1, 14), (10, 0.1, 11), (1, 0.1, 2), (0, 0.2, 1), (10, 0.2, 12)],
)
def test_guard_target(current: int, step: float, expected: int) -> None:
    assert guard_target(current, step) == expected


# --- periodic and hybrid -----------------------------------------------------------------------

TABLE = [
    {"start": "08:00", "end": "20:00", "decode_instances": 4, "pd_ratio": "2:1"},
    {"start": "22:00", "end": "02:00", "decode_instances": 6},
]


@pytest.mark.parametrize(
    ("now", "want", "reason"),
    [
        pytest.param(at("07:59"), (4, 12), Reason.HOLD_OUTSIDE_SCHEDULE, id="before-window-holds"),
        pytest.param(at("08:00"), (8, 4), Reason.PERIODIC, id="start-inclusive"),
        pytest.param(at("19:59", 59), (8, 4), Reason.PERIODIC, id="last-second-inside"),
        pytest.param(at("20:00"), (4, 12), Reason.HOLD_OUTSIDE_SCHEDULE, id="end-exclusive"),
        pytest.param(at("23:30"), (2, 6), Reason.PERIODIC, id="wraps-before-midnight"),
        pytest.param(
            at("01:59") + 86_400, (2, 6), Reason.PERIODIC, id="wraps-after-midnight-next-day"
        ),
        pytest.param(at("02:00"), (4, 12), Reason.HOLD_OUTSIDE_SCHEDULE, id="wrap-end-exclusive"),
    ],
)
def test_periodic_table(now: float, want: tuple[int, int], reason: Reason) -> None:
    spec = make_service(policy={"mode": "periodic", "periodic": TABLE})
    recent = PolicyState(last_scale_out_at=now - 1, last_scale_in_at=now - 1)
    decision, _ = run(spec, signals(99_000), counts(4, 12), recent, now=now)
    assert (decision.prefill, decision.decode) == want
    assert decision.reason is reason
    assert decision.required_decode is None


def test_periodic_message_names_the_row() -> None:
    spec = make_service(policy={"mode": "periodic", "periodic": TABLE})
    decision, _ = run(spec, Signals.empty(), counts(4, 12), now=at("09:00"))
    assert decision.message == (
        "time table 08:00-20:00 UTC asks for 4 decode at 2:1: rebalance to 8 prefill / 4 decode at 2:1"
    )


@pytest.mark.parametrize(
    ("tps", "now", "want", "reason"),
    [
        pytest.param(12_000, at("12:00"), (12, 20), Reason.PERIODIC, id="table-above-metrics"),
        pytest.param(30_000, at("12:00"), (10, 30), Reason.SCALE_OUT, id="metrics-above-table"),
        pytest.param(1_000, at("12:00"), (12, 20), Reason.PERIODIC, id="table-floors-scale-in"),
        pytest.param(1_000, at("21:00"), (1, 1), Reason.SCALE_IN, id="outside-table-metrics-only"),
        pytest.param(12_000, at("21:00"), (4, 12), Reason.HOLD_DEADBAND, id="outside-table-hold"),
    ],
)
def test_hybrid_takes_the_larger(
    tps: float, now: float, want: tuple[int, int], reason: Reason
) -> None:
    table = [{"start": "08:00", "end": "20:00", "decode_instances": 20, "pd_ratio": "3:5"}]
    spec = make_service(policy={"mode": "hybrid", "periodic": table})
    decision, _ = run(spec, Signals(observed_at=now, decode_tps=tps), counts(4, 12), now=now)
    assert (decision.prefill, decision.decode) == want
    assert decision.reason is reason


@pytest.mark.parametrize(
    ("start", "end", "hhmm", "inside"),
    [
        ("08:00", "20:00", "08:00", True),
        ("08:00", "20:00", "20:00", False),
        ("22:00", "02:00", "23:59", True),
        ("22:00", "02:00", "00:00", True),
        ("22:00", "02:00", "02:00", False),
        ("22:00", "02:00", "12:00", False),
        ("06:00", "06:00", "05:59", True),
    ],
)
def test_periodic_covers(start: str, end: str, hhmm: str, inside: bool) -> None:
    from heteroscale_ray.config import PeriodicEntry

    entry = PeriodicEntry(start=start, end=end, decode_instances=1)
    assert covers(entry, at(hhmm) - DAY) is inside


def test_first_matching_row_wins() -> None:
    spec = make_service(
        policy={
            "mode": "periodic",
            "periodic": [
                {"start": "00:00", "end": "12:00", "decode_instances": 3},
                {"start": "06:00", "end": "18:00", "decode_instances": 9},
            ],
        }
    )
    entry = active_entry(spec.policy.periodic, at("07:00"))
    assert entry is not None and entry.decode_instances == 3


# --- initial -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "sig", "now", "want"),
    [
        pytest.param({}, Signals.empty(), NOW, (1, 1), id="no-signal-to-minimums"),
        pytest.param(
            {"decode": {"min_instances": 6}}, Signals.empty(), NOW, (2, 6), id="minimums-keep-ratio"
        ),
        pytest.param({}, signals(24_000), NOW, (8, 24), id="valid-signal-starts-at-need"),
        pytest.param(
            {"policy": {"mode": "periodic", "periodic": TABLE}},
            Signals.empty(),
            at("09:00"),
            (8, 4),
            id="periodic-row",
        ),
        pytest.param(
            {"policy": {"mode": "periodic", "periodic": TABLE}},
            signals(99_000),
            at("21:00"),
            (1, 1),
            id="periodic-ignores-signal",
        ),
    ],
)
def test_initial(
    overrides: dict[str, Any], sig: Signals, now: float, want: tuple[int, int]
) -> None:
    recent = PolicyState(last_scale_out_at=now - 1)
    decision, state = run(make_service(**overrides), sig, RoleCounts(), recent, now=now)
    assert (decision.prefill, decision.decode) == want
    assert decision.reason is Reason.INITIAL
    assert decision.message.startswith("no instances yet")
    assert state.last_scale_out_at == now


def test_initial_scale_to_zero_stays_at_zero() -> None:
    spec = make_service(prefill={"min_instances": 0}, decode={"min_instances": 0})
    decision, _ = run(spec, Signals.empty(), RoleCounts())
    assert (decision.prefill, decision.decode) == (0, 0)
    assert decision.reason is Reason.INITIAL
    assert not decision.changed(RoleCounts())


# --- boundary types ----------------------------------------------------------------------------


def test_counts_include_starting() -> None:
    have = RoleCounts(prefill_ready=2, prefill_starting=1, decode_ready=6, decode_starting=3)
    assert (have.prefill, have.decode) == (3, 9)
    assert (have.of(Role.PREFILL), have.of(Role.DECODE)) == (3, 9)
    decision, _ = run(make_service(), signals(9_000), have)
    assert decision.reason is Reason.HOLD_DEADBAND
    assert not decision.changed(have)


def test_negative_counts_rejected() -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        RoleCounts(decode_ready=-1)


def test_now_must_be_finite() -> None:
    with pytest.raises(ValueError, match="finite"):
        run(make_service(), signals(1.0), counts(1, 1), now=NAN)


def test_decision_to_dict_is_json_ready() -> None:
    decision, _ = run(make_service(), signals(20_000), counts(4, 12))
    data = decision.to_dict()
    assert data["reason"] == "scale_out"
    assert (data["service"], data["prefill"], data["decode"]) == ("chat", 7, 20)
    assert json.loads(json.dumps(data)) == data
    assert decision.changed(counts(4, 12)) and not decision.changed(counts(7, 20))


def test_state_json_round_trip_and_tolerates_unknown_keys() -> None:
    state = PolicyState(
        last_scale_out_at=NOW, last_guard_at=NOW - 5.5, last_decision_reason=Reason.SCALE_OUT
    )
    assert PolicyState.from_json(state.to_json()) == state
    extended = json.loads(state.to_json()) | {"added_later": 1}
    assert PolicyState.from_json(json.dumps(extended)) == state
    assert PolicyState.from_json("{}") == PolicyState()


def test_evolve_builds_what_dataclasses_replace_builds() -> None:
    state = PolicyState(last_scale_out_at=NOW, decode_peaks=((NOW, 4.0, 3.5),))
    changes = dict(last_scale_out_at=None, decode_context=2_048.0, startups=(95.0,))
    evolved = evolve(state, **changes)
    assert evolved == replace(state, **changes)
    assert state == PolicyState(last_scale_out_at=NOW, decode_peaks=((NOW, 4.0, 3.5),))
    with pytest.raises(dataclasses.FrozenInstanceError):
        evolved.decode_context = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError, match="no field decode_contxt"):
        evolve(state, decode_contxt=1.0)


def test_the_papers_guard_leaves_a_tbt_floor_alone() -> None:
    """TBT p99 at 1.5x the SLO while the busy decode instances' mean step is 10 ms: the rest is the KV
    transfer, which more decode instances do not shorten. No step, and no ratchet."""
    sig = signals(12_000, tbt_p99_s=0.06, decode_step_s=0.01)
    decision, _ = run(make_service(), sig, counts(4, 12))
    assert (decision.prefill, decision.decode) == (4, 12)
    assert decision.reason is Reason.LATENCY_FLOOR
    assert "but not from queueing, which instances cannot fix" in decision.message
    batches = signals(12_000, tbt_p99_s=0.06, decode_step_s=0.05)  # the step is the cause
    decision, _ = run(make_service(), batches, counts(4, 12))
    assert decision.reason is Reason.LATENCY_GUARD and decision.decode > 12


def test_the_papers_guard_stops_when_its_step_did_not_help() -> None:
    """A TBT guard step (12 -> 14 decode) that left TBT p99 where it was earns no other while
    the load per instance fell; once TBT has stayed under the lowest tier for a start-up
    horizon (120 s here; one reading there is no recovery), the next breach is new."""
    spec = make_service()
    breach = signals(12_000, tbt_p99_s=0.05, decode_step_s=0.04)
    first, state = run(spec, breach, counts(4, 12))
    assert first.reason is Reason.LATENCY_GUARD and first.decode == 14
    later = NOW + 60
    again = Signals(observed_at=later, decode_tps=12_000, tbt_p99_s=0.049, decode_step_s=0.04)
    second, state = decide(spec, again, counts(5, 14), state, later)
    assert second.reason is Reason.LATENCY_NO_GAIN and second.decode == 14, second.message
    assert "the last guard step left it at 49 ms (was 50 ms): no further step" in second.message
    for t in (later + 60, later + 180):
        calm = Signals(observed_at=t, decode_tps=12_000, tbt_p99_s=0.02)
        _, state = decide(spec, calm, counts(5, 14), state, t)
        assert (state.guard_role is None) is (t == later + 180)
    new = Signals(observed_at=later + 240, decode_tps=12_000, tbt_p99_s=0.05, decode_step_s=0.04)
    third, _ = decide(spec, new, counts(5, 14), state, later + 240)
    assert third.reason is Reason.LATENCY_GUARD and third.decode > 14


def test_numbers_too_large_to_compute_with_hold_the_service_and_say_so() -> None:
    """An output mean of 1e82 tokens overflowed a climb's squares, and decide() raised: the
    control loop survived, but the tick stopped, every other service's decision with it.
    Such a snapshot is held as missing data, and the message says why."""
    from dataclasses import replace

    from tests.test_demand_policy import counts, make_service, running, signals

    spec = make_service()
    state, have, now = running(), counts(4, 4), 1_000_000.0
    said = False
    for k in range(12):
        huge = k in (3, 4, 5)
        s = signals(observed_at=now, output_mean=1e300 if huge else 200.0)
        if huge:
            s = replace(s, request_rate=1e300, prompt_mean=1e300, decode_running=1e300)
        d, state = decide(spec, s, have, state, now)
        if huge:
            assert d.prefill >= have.prefill and d.decode >= have.decode, d  # never in on it
        said |= "out of computable range" in d.message
        have, now = counts(d.prefill, d.decode), now + 15.0
    assert said
    assert PolicyState.from_json(state.to_json()) == state
