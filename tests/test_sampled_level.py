"""The level the scale-in window remembers (policy/sampled_level.py): a need averaged over
enough arrivals that its sampling noise is half the scale-in tolerance, at most a horizon."""

from __future__ import annotations

import numpy as np
import pytest
from test_demand_policy import NOW, counts, make_service, running, signals

from heteroscale_ray.policy import PolicyState, decide
from heteroscale_ray.policy.capacity import capacity
from heteroscale_ray.policy.sampled_level import min_arrivals, sampled_level
from heteroscale_ray.policy.types import BurstMemory

SPEC = make_service(scale_in_tolerance=0.1, demand={"learn": False})  # `general`'s band, the prior
PERIOD = 15.0


def _memory(needs: list[float]) -> BurstMemory:
    """Needs one period apart, the last at NOW."""
    start = NOW - PERIOD * (len(needs) - 1)
    return BurstMemory(needs=tuple((start + PERIOD * i, n) for i, n in enumerate(needs)))


def test_the_noise_is_half_the_scale_in_tolerance() -> None:
    assert min_arrivals(SPEC) == pytest.approx(400.0)  # 1/sqrt(400) = 5% = 0.1 / 2
    assert min_arrivals(make_service(scale_in_tolerance=0.2)) == pytest.approx(100.0)


def _level(memory: BurstMemory, need: float, horizon: float, rate: float) -> float:
    sample = sampled_level(SPEC, memory, need, NOW, horizon, rate)
    assert sample is not None
    return sample.level


def test_a_period_with_enough_arrivals_is_taken_as_it_is() -> None:
    memory = _memory([4.0, 9.0, 5.0])
    assert _level(memory, 5.0, 120.0, 400.0 / PERIOD) == 5.0


def test_fewer_arrivals_are_averaged_over_as_many_periods_as_they_need() -> None:
    memory = _memory([100.0, 4.0, 9.0, 5.0, 6.0])
    # 100 arrivals a period: four periods make 400
    assert _level(memory, 6.0, 120.0, 100.0 / PERIOD) == 6.0
    assert _level(_memory([100.0, 4.0, 9.0, 5.0, 2.0]), 2.0, 120.0, 100.0 / PERIOD) == 5.0


def test_at_most_one_horizon_is_averaged() -> None:
    memory = _memory([100.0, 100.0, 2.0, 4.0])
    assert _level(memory, 4.0, 2 * PERIOD, 0.01) == 3.0


def test_without_a_rate_or_this_periods_need_the_need_is_taken_as_it_is() -> None:
    memory = _memory([1.0, 9.0])
    for rate in (None, 0.0, float("nan")):
        assert sampled_level(SPEC, memory, 9.0, NOW, 120.0, rate) is None
    assert sampled_level(SPEC, memory, 7.0, NOW + PERIOD, 120.0, 0.1) is None  # not remembered
    assert sampled_level(SPEC, _memory([9.0]), 9.0, NOW, 120.0, 0.1) is None
    assert sampled_level(SPEC, memory, None, NOW, 120.0, 0.1) is None


def test_a_sample_proves_itself_less_two_standard_errors_never_under_the_level() -> None:
    """100 arrivals a period: a standard error of 10%, and a level over four periods. A need
    of 20 after three of 10 proves 20 x 0.8 = 16 at once; one of 13 proves only the level
    (10.75); one under the level proves itself."""
    rate = 100.0 / PERIOD
    for need, proven in ((20.0, 16.0), (13.0, 10.75), (8.0, 8.0)):
        memory = _memory([10.0, 10.0, 10.0, need])
        sample = sampled_level(SPEC, memory, need, NOW, 120.0, rate)
        assert sample is not None and sample.arrivals == pytest.approx(100.0)
        assert sample.proven == pytest.approx(proven)


def test_a_flat_load_sampled_thinly_is_held_at_its_level_not_its_noise() -> None:
    """Decode's need read from 90 arrivals a period (6 req/s) moves ~13% from period to
    period on a flat load. The window used to hold the top of its last 60 samples, 1.3x the
    load here; averaged over 400 arrivals, it holds the top of levels each within 5% of the
    load, 1.1x. Sized on each raw sample, the fleet would step out on every high one and back
    to the level after: sized on what each sample proves, it settles."""
    rng = np.random.default_rng(7)
    state = running()
    per_instance = capacity(SPEC, signals(), PolicyState()).decode_tps
    raw, asked = [], []
    for i in range(60):
        tps = 12 * per_instance * float(rng.normal(1.0, 0.13))
        sig = signals(
            observed_at=NOW + PERIOD * i,
            request_rate=6.0,
            output_mean=tps / 6.0 + 1.0,
            decode_running=100.0,
        )
        decision, state = decide(
            SPEC, sig, counts(4, asked[-1] if asked else 12), state, NOW + PERIOD * i
        )
        raw.append(tps / per_instance)
        asked.append(decision.decode)
    last = NOW + PERIOD * 59
    window = SPEC.policy.demand.peak_window_s
    held = max(b for t, _, b in state.decode_peaks if last - t <= window)
    mean = float(np.mean(raw))
    assert max(raw[20:]) > 1.25 * mean  # the noise the window used to hold
    assert held < 1.15 * mean  # the top of levels each within 5% of the load
    moves = [b - a for a, b in zip(asked, asked[1:], strict=False) if b != a]
    flips = sum(1 for a, b in zip(moves, moves[1:], strict=False) if (a > 0) != (b > 0))
    assert flips <= 2, asked


def test_needs_read_from_arrivals_are_samples_and_running_sequences_are_not() -> None:
    """Prefill's prompt tokens/s and decode's arriving tokens/s come from one period's
    arrivals; a decode need set by the sequences running is a count of them all."""
    from heteroscale_ray.policy.role_need import decode_need, prefill_need

    sig = signals()
    cap = capacity(SPEC, sig, PolicyState())
    assert prefill_need(SPEC, sig, counts(4, 4), cap, None).sampled
    by_rate = signals(request_rate=50.0, output_mean=2_000.0, decode_running=10.0)
    by_seqs = signals(request_rate=1.0, output_mean=100.0, decode_running=20 * cap.decode_batch)
    assert decode_need(SPEC, by_rate, cap, None).sampled
    need = decode_need(SPEC, by_seqs, cap, None)
    assert not need.sampled and need.steady == pytest.approx(20.0)
    made = signals(request_rate=None, decode_tps=50 * cap.decode_tps, decode_running=10.0)
    assert not decode_need(SPEC, made, cap, None).sampled  # tokens the running sequences made


def test_the_decision_says_what_a_samples_noise_left_out() -> None:
    """Thin arrivals: a high sample is sized for what it proves, and the sentence says how
    much was left out; a cut under a tenth of an instance is not printed."""
    from heteroscale_ray.policy.demand import within_noise
    from heteroscale_ray.policy.role_need import Need
    from heteroscale_ray.policy.sampled_level import Sampled

    need = Need(14.0, "x", steady=12.0, sampled=True)
    cut = within_noise(need, Sampled(level=10.0, proven=10.5, arrivals=90.0))
    assert (cut.value, cut.steady) == (12.5, 10.5)
    assert cut.why == "x; 90 arrivals a period: 1.5 of it may be their noise"
    assert within_noise(need, Sampled(10.0, 11.98, 90.0)).why == "x"
    assert within_noise(need, Sampled(10.0, 12.0, 90.0)) is need
