"""benchmarks/random_traffic.py: each case follows the rule its docstring says, seeded."""

from __future__ import annotations

import numpy as np
import pytest
from bench_modules import load_benchmark

random_traffic = load_benchmark("random_traffic", "random_traffic_bench")


def _window(trace, t0: float, t1: float) -> np.ndarray:
    t = np.asarray(trace.arrival_s)
    return (t >= t0) & (t < t1)


def test_every_case_is_seeded_and_draw_zero_is_the_tables_trace() -> None:
    assert set(random_traffic.CASES) == {f"random-{k}" for k in range(12)}
    for k in (0, 7):
        label = f"random-{k}"
        table = random_traffic.CASES[label][0]()
        np.testing.assert_array_equal(random_traffic.draw_case(k).trace.arrival_s, table.arrival_s)
        np.testing.assert_array_equal(
            table.output_tokens, random_traffic.CASES[label][0]().output_tokens
        )
        other = random_traffic.CASES[label][0](draw=1)
        assert not np.array_equal(other.arrival_s[:500], table.arrival_s[:500]), label


@pytest.mark.parametrize("k", range(12))
def test_each_segment_holds_its_drawn_rate_and_lengths(k: int) -> None:
    """Past its ramp and away from crowds, a segment runs at its rate with its lengths' means;
    every draw stays inside the rule's bounds."""
    case = random_traffic.draw_case(k)
    trace = case.trace
    span = random_traffic.SPAN_S
    assert trace.duration_s == span and len(trace)
    assert np.all((case.rates >= 2.0) & (case.rates <= 30.0))
    assert np.all((case.prompt_means >= 300) & (case.prompt_means <= 10_000))
    assert np.all((case.output_means >= 20) & (case.output_means <= 2_000))
    assert np.all(np.diff(case.starts) >= random_traffic.SEGMENT_S[0])
    assert span - case.starts[-1] >= random_traffic.SEGMENT_S[0]
    assert trace.input_tokens.max() <= 32_000 and trace.output_tokens.max() <= 16_000
    assert np.all(np.diff(case.changes) >= 0) and np.all((case.changes > 0) & (case.changes < span))
    ends = [*case.starts[1:], span]
    checked = 0
    for i, (start, end) in enumerate(zip(case.starts, ends, strict=True)):
        calm = start + case.ramps[i]
        crowded = any(c0 < end and c0 + sec > calm for c0, sec, _ in case.crowds)
        if crowded or end - calm < 300:
            continue
        inside = _window(trace, calm, end)
        rate = np.count_nonzero(inside) / (end - calm)
        assert rate == pytest.approx(case.rates[i], rel=0.15), i
        # lognormal means of thousands of draws, a few capped
        assert np.mean(trace.input_tokens[inside]) == pytest.approx(case.prompt_means[i], rel=0.25)
        assert np.mean(trace.output_tokens[inside]) == pytest.approx(case.output_means[i], rel=0.3)
        checked += 1
    assert checked >= 2


def test_crowds_multiply_the_rate_and_instants_bunch_the_sends() -> None:
    cases = [random_traffic.draw_case(k) for k in range(12)]
    checked = 0
    for case in cases:
        for start, seconds, x in case.crowds:
            before = (start - 120.0, start)
            if start < 120.0 or np.any((case.starts > before[0]) & (case.starts < start + seconds)):
                continue  # a segment's change in or just before the crowd: no calm to compare
            if any(
                c0 != start and c0 < start + seconds and c0 + s > before[0]
                for c0, s, _ in case.crowds
            ):
                continue  # crowds overlapping
            calm = np.count_nonzero(_window(case.trace, *before)) / 120.0
            inside = np.count_nonzero(_window(case.trace, start, start + seconds)) / seconds
            assert inside == pytest.approx(x * calm, rel=0.35)
            checked += 1
    assert checked >= 2
    bunched = next(c for c in cases if c.instants)
    t = np.asarray(bunched.trace.arrival_s)
    np.testing.assert_allclose(t % bunched.instants, 0.0, atol=1e-6)


def test_misses_near_a_change_are_those_that_arrived_within_its_window() -> None:
    arrival = np.array([0.0, 99.0, 100.0, 399.9, 400.0, 1000.0, 1100.0])
    near = random_traffic.near_changes(arrival, np.array([100.0, 1050.0]), within_s=300.0)
    assert near.tolist() == [False, False, True, True, False, False, True]
    assert not random_traffic.near_changes(arrival, np.array([])).any()


def test_a_rows_misses_are_the_requests_its_attainment_leaves_out() -> None:
    """The extra fields read the same requests the summary's attainment counts: a reactive
    policy's misses at a 10x step, all of them after it."""
    made_up = load_benchmark("made_up", "made_up_bench")
    from heteroscale_ray.config import load_services
    from heteroscale_ray.sim.replay import ReplayOptions, run_replay

    services = load_services(random_traffic.ROOT / "examples" / "sim_services.yaml")
    spec = services.by_name()["general"]
    trace = made_up.chat(lambda t: np.where(np.asarray(t) < 300, 2.0, 20.0), 600.0)
    _, topo = made_up.fleet(spec, services, trace)
    res = run_replay(services, topo, {"general": trace}, ReplayOptions(policy="heteroscale"))
    row = random_traffic.misses_near_changes(np.array([300.0]))(res)
    s = res.summary
    assert row["misses"] == round((1.0 - s["slo_attainment"]) * s["requests"])
    assert 0 < row["misses_near_changes"] <= row["misses"]  # the 10x step is paid for
    assert row["share_near_changes"] == pytest.approx(
        np.mean((trace.arrival_s >= 300) & (trace.arrival_s < 600)), abs=1e-9
    )
