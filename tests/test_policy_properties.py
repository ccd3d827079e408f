"""Policy invariants under random services, signals, counts and state (hypothesis)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heteroscale_ray.config import Role, ServiceSpec
from heteroscale_ray.policy import Decision, PolicyState, Reason, RoleCounts, Signals, decide
from heteroscale_ray.policy.freshness import signal_role
from heteroscale_ray.policy.limits import fit_to_limits, gpus, ratio_range
from heteroscale_ray.policy.proportional import damped_target
from heteroscale_ray.policy.split import follower_count, split

NOW = 1_699_963_200.0  # 2023-11-14 12:00:00 UTC
NAN = float("nan")

# Local settings, not a global profile: other test files keep their own. No deadline: no wall clock.
FAST = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def role_specs(draw: st.DrawFn) -> dict[str, Any]:
    low = draw(st.integers(0, 15))
    return {
        "gpu_types": ["H20"],
        "gpus_per_instance": draw(st.integers(1, 8)),
        "min_instances": low,
        "max_instances": draw(st.integers(max(low, 1), 60)),
    }


@st.composite
def periodic_rows(draw: st.DrawFn) -> dict[str, Any]:
    hhmm = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59))
    ratio = st.none() | st.builds(lambda p, d: f"{p}:{d}", st.integers(1, 9), st.integers(1, 9))
    return {
        "start": draw(hhmm),
        "end": draw(hhmm),
        "decode_instances": draw(st.integers(0, 60)),
        "pd_ratio": draw(ratio),
    }


@st.composite
def services(
    draw: st.DrawFn, modes: tuple[str, ...] = ("metrics", "periodic", "hybrid")
) -> ServiceSpec:
    mode = draw(st.sampled_from(modes))
    first_at = draw(st.floats(0.5, 1.5))
    policy = {
        "mode": mode,
        "signal": draw(st.sampled_from(["decode_tps", "prefill_tps"])),
        "target_per_instance": draw(st.floats(100, 5_000)),
        "scale_out_tolerance": draw(st.floats(0, 0.5)),
        "scale_in_tolerance": draw(st.floats(0, 0.5)),
        "scale_out_cooldown_s": draw(st.floats(0, 600)),
        "scale_in_cooldown_s": draw(st.floats(0, 600)),
        "scale_out_damping": draw(st.floats(0.01, 1)),
        "scale_in_damping": draw(st.floats(0.01, 1)),
        "stale_after_s": draw(st.floats(1, 120)),
        "gpu_budget": draw(st.none() | st.integers(1, 400)),
        "latency_guard": {
            "enabled": draw(st.booleans()),
            "metric": draw(st.sampled_from(["tbt", "ttft", "both"])),
            "tiers": [
                {"at": first_at, "step": draw(st.floats(0.01, 0.5))},
                {"at": first_at + draw(st.floats(0.1, 1)), "step": draw(st.floats(0.01, 1))},
            ],
            "cooldown_s": draw(st.floats(0, 120)),
        },
        "periodic": draw(st.lists(periodic_rows(), min_size=1, max_size=3))
        if mode != "metrics"
        else [],
    }
    return ServiceSpec.model_validate(
        {
            "name": "svc",
            "slo": {"ttft_s": 1.0, "tbt_s": 0.04},
            "pd_ratio": f"{draw(st.integers(1, 9))}:{draw(st.integers(1, 9))}",
            "prefill": draw(role_specs()),
            "decode": draw(role_specs()),
            "policy": policy,
        }
    )


maybe_value = st.none() | st.just(NAN) | st.floats(-100, 0) | st.floats(0, 200_000)
valid_value = st.floats(0, 200_000)
signals_any = st.builds(
    Signals,
    observed_at=st.none() | st.floats(NOW - 200, NOW + 10),
    decode_tps=maybe_value,
    prefill_tps=maybe_value,
    ttft_p99_s=st.none() | st.just(NAN) | st.floats(0, 5),
    tbt_p99_s=st.none() | st.just(NAN) | st.floats(0, 0.2),
)
small = st.integers(0, 40)
counts_any = st.builds(RoleCounts, small, small, small, small)
stamp = st.none() | st.floats(NOW - 1_000, NOW)
states = st.builds(
    PolicyState,
    last_scale_out_at=stamp,
    last_scale_in_at=stamp,
    last_guard_at=stamp,
    last_decision_at=stamp,
    last_decision_reason=st.none() | st.sampled_from(Reason),
    prefill_launch_at=stamp,
    prefill_launch_from=st.none() | st.integers(0, 50),
    startups=st.lists(st.floats(1.0, 600.0), max_size=5).map(tuple),
    startup_horizon_s=st.none() | st.floats(1.0, 900.0),
)


def within_bounds(spec: ServiceSpec, prefill: int, decode: int) -> bool:
    return (
        spec.prefill.min_instances <= prefill <= spec.prefill.max_instances
        and spec.decode.min_instances <= decode <= spec.decode.max_instances
    )


def within_budget(spec: ServiceSpec, prefill: int, decode: int) -> bool:
    budget = spec.policy.gpu_budget
    return budget is None or gpus(spec, prefill, decode) <= budget


@FAST
@given(services(), signals_any, counts_any, states)
def test_bounds_always_respected(
    spec: ServiceSpec, sig: Signals, have: RoleCounts, state: PolicyState
) -> None:
    decision, _ = decide(spec, sig, have, state, NOW)
    assert within_bounds(spec, decision.prefill, decision.decode)


@FAST
@given(services(("metrics",)), signals_any, counts_any, states)
def test_budget_respected_when_the_minimums_fit(
    spec: ServiceSpec, sig: Signals, have: RoleCounts, state: PolicyState
) -> None:
    anchor = signal_role(spec.policy)
    smallest = fit_to_limits(spec, anchor, 0, spec.ratio)
    decision, _ = decide(spec, sig, have, state, NOW)
    holding_is_fine = within_bounds(spec, have.prefill, have.decode) and within_budget(
        spec, have.prefill, have.decode
    )
    if within_budget(spec, smallest.prefill, smallest.decode) and (
        decision.signal_value is not None or holding_is_fine
    ):
        assert within_budget(spec, decision.prefill, decision.decode)


@FAST
@given(services(("metrics",)), valid_value, counts_any, states)
def test_ratio_within_one_instance_when_bounds_allow(
    spec: ServiceSpec, value: float, have: RoleCounts, state: PolicyState
) -> None:
    anchor = signal_role(spec.policy)
    sig = Signals(observed_at=NOW, **{spec.policy.signal: value})
    decision, _ = decide(spec, sig, have, state, NOW)
    if ratio_range(spec, anchor, spec.ratio) is None:
        return
    pair = (decision.prefill, decision.decode)
    count = pair[1] if anchor is Role.DECODE else pair[0]
    assert pair == split(anchor, count, spec.ratio)
    p, d = spec.ratio
    follower, exact = (
        (pair[0], count * p / d) if anchor is Role.DECODE else (pair[1], count * d / p)
    )
    assert 0 <= follower - exact < 1


@FAST
@given(
    services(("metrics", "hybrid")),
    st.sampled_from(["missing", "nan", "negative", "stale", "no-time"]),
    counts_any,
    states,
    st.none() | st.floats(0, 0.2),
)
def test_missing_signal_never_reduces_counts(
    spec: ServiceSpec,
    how: str,
    have: RoleCounts,
    state: PolicyState,
    tbt: float | None,
) -> None:
    if not (
        within_bounds(spec, have.prefill, have.decode)
        and within_budget(spec, have.prefill, have.decode)
    ):
        return
    value = {"missing": None, "nan": NAN, "negative": -1.0}.get(how, 5_000.0)
    observed = {"stale": NOW - spec.policy.stale_after_s - 0.001, "no-time": None}.get(how, NOW)
    sig = Signals(observed_at=observed, tbt_p99_s=tbt, **{spec.policy.signal: value})
    decision, new_state = decide(spec, sig, have, state, NOW)
    assert decision.prefill >= have.prefill and decision.decode >= have.decode
    assert new_state.last_scale_in_at == state.last_scale_in_at
    assert decision.signal_value is None


@FAST
@given(services(), signals_any, counts_any, states)
def test_same_inputs_same_outputs_and_restart_safe(
    spec: ServiceSpec, sig: Signals, have: RoleCounts, state: PolicyState
) -> None:
    first = decide(spec, sig, have, state, NOW)
    assert decide(spec, sig, have, state, NOW) == first
    restored = PolicyState.from_json(state.to_json())
    assert decide(spec, sig, have, restored, NOW) == first
    assert isinstance(first[0], Decision) and first[0].message


@FAST
@given(states)
def test_state_json_round_trip(state: PolicyState) -> None:
    assert PolicyState.from_json(state.to_json()) == state


@FAST
@given(
    st.builds(
        PolicyState,
        last_scale_out_at=st.none() | st.floats(allow_nan=False, allow_infinity=False),
        last_scale_in_at=st.none() | st.floats(allow_nan=False, allow_infinity=False),
        last_guard_at=st.none() | st.floats(allow_nan=False, allow_infinity=False),
        last_decision_at=st.none() | st.floats(allow_nan=False, allow_infinity=False),
        last_decision_reason=st.none() | st.sampled_from(Reason),
    )
)
def test_state_json_round_trip_any_float(state: PolicyState) -> None:
    assert PolicyState.from_json(state.to_json()) == state


@FAST
@given(services(("metrics",)), valid_value, counts_any)
def test_constant_load_settles_without_flapping(
    spec: ServiceSpec, value: float, have: RoleCounts
) -> None:
    """Counts follow the decisions under a constant signal: they settle, then stay put."""
    sig_field = {spec.policy.signal: value}
    step_s = max(spec.policy.scale_out_cooldown_s, spec.policy.scale_in_cooldown_s) + 1
    state, now, settled_at = PolicyState(), NOW, None
    for tick in range(120):
        sig = Signals(observed_at=now, **sig_field)  # no latency data: the guard stays quiet
        decision, state = decide(spec, sig, have, state, now)
        if decision.changed(have):
            assert settled_at is None, (
                f"moved again after settling at tick {settled_at}: {decision}"
            )
        elif settled_at is None:
            settled_at = tick
        have = RoleCounts(prefill_ready=decision.prefill, decode_ready=decision.decode)
        now += step_s
    assert settled_at is not None


@st.composite
def ratio_cases(draw: st.DrawFn) -> tuple[ServiceSpec, Role, tuple[int, int]]:
    spec = draw(services(("metrics",)))
    return spec, draw(st.sampled_from(Role)), spec.ratio


@FAST
@given(ratio_cases())
def test_ratio_range_matches_brute_force(case: tuple[ServiceSpec, Role, tuple[int, int]]) -> None:
    spec, anchor, ratio = case
    own = spec.role(anchor)
    feasible = [
        x
        for x in range(own.min_instances, own.max_instances + 1)
        if within_bounds(spec, *split(anchor, x, ratio))
    ]
    expected = (feasible[0], feasible[-1]) if feasible else None
    assert ratio_range(spec, anchor, ratio) == expected
    if feasible:
        assert feasible == list(range(feasible[0], feasible[-1] + 1))


@FAST
@given(ratio_cases(), st.integers(0, 100))
def test_fit_to_limits_is_within_bounds_and_keeps_ratio(
    case: tuple[ServiceSpec, Role, tuple[int, int]], count: int
) -> None:
    spec, anchor, ratio = case
    fitted = fit_to_limits(spec, anchor, count, ratio)
    assert within_bounds(spec, fitted.prefill, fitted.decode)
    kept = ratio_range(spec, anchor, ratio)
    anchored = fitted.prefill if anchor is Role.PREFILL else fitted.decode
    if kept is not None:
        assert (fitted.prefill, fitted.decode) == split(anchor, anchored, ratio)
        assert follower_count(anchor, anchored, ratio) in (fitted.prefill, fitted.decode)
    if fitted.clamp is None:
        assert anchored == count


@FAST
@given(st.integers(0, 500), st.integers(0, 500), st.floats(0.01, 1.0))
def test_damping_moves_toward_desired_by_at_least_one(
    current: int, desired: int, damping: float
) -> None:
    target = damped_target(current, desired, damping)
    assert min(current, desired) <= target <= max(current, desired)
    if current != desired:
        assert abs(target - current) >= 1
    if damping == 1.0:
        assert target == desired
