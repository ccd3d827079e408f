"""benchmarks/drift.py: each drifting case is the plain rule its docstring says, seeded."""

from __future__ import annotations

import numpy as np
import pytest
from bench_modules import load_benchmark

drift = load_benchmark("drift", "drift_bench")


def _window(trace, t0: float, t1: float) -> np.ndarray:
    t = np.asarray(trace.arrival_s)
    return (t >= t0) & (t < t1)


def _rate(trace, t0: float, t1: float) -> float:
    return float(np.count_nonzero(_window(trace, t0, t1)) / (t1 - t0))


def test_every_case_is_seeded_and_draw_zero_is_the_tables_trace() -> None:
    assert set(drift.CASES) == {"context-creep", "output-creep", "swap", "viral", "outage"}
    for label in drift.CASES:
        table = drift.CASES[label][0]()
        np.testing.assert_array_equal(drift.build(label, 0).arrival_s, table.arrival_s)
        other = drift.build(label, 1)
        assert not np.array_equal(other.arrival_s[:500], table.arrival_s[:500]), label


def test_lengths_creep_at_a_flat_rate() -> None:
    context, output = drift.build("context-creep"), drift.build("output-creep")
    first, last = _window(context, 0, 1800), _window(context, 4 * 3600 - 1800, 4 * 3600)
    assert np.mean(context.input_tokens[first]) == pytest.approx(1_940, rel=0.1)
    assert np.mean(context.input_tokens[last]) == pytest.approx(15_060, rel=0.1)
    assert _rate(context, 0, 1800) == pytest.approx(_rate(context, 12_600, 14_400), rel=0.1)
    first, last = _window(output, 0, 1800), _window(output, 4 * 3600 - 1800, 4 * 3600)
    assert np.mean(output.output_tokens[first]) == pytest.approx(220, rel=0.15)
    assert np.mean(output.output_tokens[last]) == pytest.approx(1_880, rel=0.1)


def test_swap_alternates_code_and_reasoning_every_phase() -> None:
    trace = drift.build("swap")
    for phase in range(12):
        inside = _window(trace, phase * drift.PHASE_S, (phase + 1) * drift.PHASE_S)
        coding = phase % 2 == 0
        rate = np.count_nonzero(inside) / drift.PHASE_S
        assert rate == pytest.approx(12.0 if coding else 3.0, rel=0.15), phase
        output = np.mean(trace.output_tokens[inside])
        assert output == pytest.approx(30 if coding else 3000, rel=0.2), phase


def test_viral_doubles_every_36_minutes_and_the_outage_sends_nothing_then_its_retries() -> None:
    viral = drift.build("viral")
    assert _rate(viral, 2160, 2460) == pytest.approx(2 * _rate(viral, 0, 300), rel=0.25)
    assert _rate(viral, 3 * 3600 - 300, 3 * 3600) == pytest.approx(60, rel=0.1)
    outage = drift.build("outage")
    assert _rate(outage, 2400, 3000) == 0.0
    assert _rate(outage, 3000, 3300) == pytest.approx(25.0, rel=0.05)
    assert _rate(outage, 0, 2400) == pytest.approx(10.0, rel=0.05)
