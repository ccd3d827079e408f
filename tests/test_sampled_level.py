"""The level the scale-in window remembers (policy/sampled_level.py): a need averaged over
enough arrivals that its sampling noise is half the scale-in tolerance, at most a horizon."""

from __future__ import annotations

import numpy as np
import pytest
from test_demand_policy import NOW, counts, make_service, running, signals

from heteroscale_ray.config import Role
from heteroscale_ray.policy import decide
from heteroscale_ray.policy.peak_window import recent_peak
from heteroscale_ray.policy.sampled_level import min_arrivals, sampled_level
from heteroscale_ray.policy.types import BurstMemory

SPEC = make_service(scale_in_tolerance=0.1)  # as `general`
PERIOD = 15.0


def _memory(needs: list[float]) -> BurstMemory:
    """Needs one period apart, the last at NOW."""
    start = NOW - PERIOD * (len(needs) - 1)
    return BurstMemory(needs=tuple((start + PERIOD * i, n) for i, n in enumerate(needs)))


def test_the_noise_is_half_the_scale_in_tolerance() -> None:
    assert min_arrivals(SPEC) == pytest.approx(400.0)  # 1/sqrt(400) = 5% = 0.1 / 2
    assert min_arrivals(make_service(scale_in_tolerance=0.2)) == pytest.approx(100.0)


def test_a_period_with_enough_arrivals_is_taken_as_it_is() -> None:
    memory = _memory([4.0, 9.0, 5.0])
    assert sampled_level(SPEC, memory, 5.0, NOW, 120.0, 400.0 / PERIOD) == 5.0


def test_fewer_arrivals_are_averaged_over_as_many_periods_as_they_need() -> None:
    memory = _memory([100.0, 4.0, 9.0, 5.0, 6.0])
    # 100 arrivals a period: four periods make 400
    assert sampled_level(SPEC, memory, 6.0, NOW, 120.0, 100.0 / PERIOD) == 6.0
    assert (
        sampled_level(SPEC, _memory([100.0, 4.0, 9.0, 5.0, 2.0]), 2.0, NOW, 120.0, 100.0 / PERIOD)
        == 5.0
    )


def test_at_most_one_horizon_is_averaged() -> None:
    memory = _memory([100.0, 100.0, 2.0, 4.0])
    assert sampled_level(SPEC, memory, 4.0, NOW, 2 * PERIOD, 0.01) == 3.0


def test_without_a_rate_or_this_periods_need_the_need_is_taken() -> None:
    memory = _memory([1.0, 9.0])
    assert sampled_level(SPEC, memory, 9.0, NOW, 120.0, None) == 9.0
    assert sampled_level(SPEC, memory, 9.0, NOW, 120.0, 0.0) == 9.0
    assert sampled_level(SPEC, memory, 9.0, NOW, 120.0, float("nan")) == 9.0
    assert sampled_level(SPEC, memory, 7.0, NOW + PERIOD, 120.0, 0.1) == 7.0  # not remembered
    assert sampled_level(SPEC, _memory([9.0]), 9.0, NOW, 120.0, 0.1) == 9.0
    assert sampled_level(SPEC, memory, None, NOW, 120.0, 0.1) is None


def test_a_flat_load_sampled_thinly_is_held_at_its_level_not_its_noise() -> None:
    """Decode's need read from 90 arrivals a period (6 req/s) moves ~13% from period to
    period on a flat load. The window used to hold the top of its last 60 samples, 1.3x the
    load here; averaged over 400 arrivals, it holds the top of levels each within 5% of the
    load, 1.1x."""
    rng = np.random.default_rng(7)
    state = running()
    batch_tokens = 1_700.0  # a decode instance's tokens/s at the prior's batch, about
    mean_tps = 12 * batch_tokens
    needs = []
    for i in range(60):
        tps = mean_tps * float(rng.normal(1.0, 0.13))
        sig = signals(
            observed_at=NOW + PERIOD * i,
            request_rate=6.0,
            output_mean=tps / 6.0 + 1.0,
            decode_running=100.0,
        )
        decision, state = decide(SPEC, sig, counts(4, 16), state, NOW + PERIOD * i)
        needs.append(decision.required_decode)
    last = NOW + PERIOD * 59
    held = recent_peak(SPEC, state, Role.DECODE, last)
    assert held is not None
    bare = max(b for t, _, b in state.decode_peaks if last - t <= SPEC.policy.demand.peak_window_s)
    top = max(needs[20:])  # the needs the decisions sized for: each period's own sample
    mean = float(np.mean(needs[20:]))
    assert top > 1.25 * mean  # the noise the window used to hold
    assert bare < 1.15 * mean  # the top of levels each within 5% of the load


def test_needs_read_from_arrivals_are_samples_and_running_sequences_are_not() -> None:
    """Prefill's prompt tokens/s and decode's arriving tokens/s come from one period's
    arrivals; a decode need set by the sequences running is a count of them all."""
    from heteroscale_ray.policy import PolicyState
    from heteroscale_ray.policy.capacity import capacity
    from heteroscale_ray.policy.role_need import decode_need, prefill_need

    sig = signals()
    cap = capacity(SPEC, sig, PolicyState())
    assert prefill_need(SPEC, sig, counts(4, 4), cap, None).sampled
    by_rate = signals(request_rate=50.0, output_mean=2_000.0, decode_running=10.0)
    by_seqs = signals(request_rate=1.0, output_mean=100.0, decode_running=20 * cap.decode_batch)
    assert decode_need(SPEC, by_rate, cap, None).sampled
    need = decode_need(SPEC, by_seqs, cap, None)
    assert not need.sampled and need.steady == pytest.approx(20.0)
