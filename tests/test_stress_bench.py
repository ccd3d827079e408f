"""benchmarks/stress.py: each case is the plain change of the shared trace it says."""

from __future__ import annotations

import numpy as np
from bench_modules import load_benchmark

stress = load_benchmark("stress", "stress_bench")


def _azure():
    return stress.S._azure().slice(0, 600)


def test_a_gap_drops_exactly_the_requests_inside_it() -> None:
    t = _azure()
    g = stress.gap(t, 100.0, 200.0)
    arr = np.asarray(t.arrival_s)
    inside = (arr >= 100.0) & (arr < 200.0)
    assert len(g) == len(t) - int(inside.sum())
    assert not np.any((np.asarray(g.arrival_s) >= 100.0) & (np.asarray(g.arrival_s) < 200.0))
    assert g.duration_s == t.duration_s


def test_a_spike_sends_each_request_inside_it_three_times_within_the_window() -> None:
    t = _azure()
    s = stress.spike(t, 100.0, 200.0, 3)
    arr, new = np.asarray(t.arrival_s), np.asarray(s.arrival_s)
    inside = int(((arr >= 100.0) & (arr < 200.0)).sum())
    assert len(s) == len(t) + 2 * inside
    assert int(((new >= 100.0) & (new < 200.0)).sum()) == 3 * inside
    assert np.all(np.diff(new) >= 0)
    assert sorted(np.asarray(s.input_tokens).tolist()) == sorted(
        np.asarray(t.input_tokens).tolist()
        + 2 * np.asarray(t.input_tokens)[(arr >= 100.0) & (arr < 200.0)].tolist()
    )


def test_a_mix_change_touches_only_the_requests_after_it_within_the_context() -> None:
    t = _azure()
    m = stress.mix_change(t, 300.0, 10.0, 8.0)
    arr = np.asarray(t.arrival_s)
    early, late = arr < 300.0, arr >= 300.0
    np.testing.assert_array_equal(np.asarray(m.arrival_s), arr)
    np.testing.assert_array_equal(
        np.asarray(m.input_tokens)[early], np.asarray(t.input_tokens)[early]
    )
    np.testing.assert_array_equal(
        np.asarray(m.output_tokens)[early], np.asarray(t.output_tokens)[early]
    )
    inp, out = np.asarray(m.input_tokens)[late], np.asarray(m.output_tokens)[late]
    assert np.mean(inp) > 5 * np.mean(np.asarray(t.input_tokens)[late])
    assert int((inp + out).max()) <= stress.S.CONTEXT_CAP and int(out.min()) >= 1


def test_on_off_sends_each_periods_requests_in_its_first_half_in_order() -> None:
    t = _azure()
    o = stress.on_off(t, 60.0)
    new = np.asarray(o.arrival_s)
    assert len(o) == len(t) and o.duration_s == t.duration_s
    assert np.all(new % 120.0 < 60.0)  # silent in the second minute of every two
    np.testing.assert_array_equal(np.asarray(o.input_tokens), np.asarray(t.input_tokens))
    # every period keeps its own requests: per-period counts are unchanged
    old_bins = np.bincount((np.asarray(t.arrival_s) // 120.0).astype(int))
    np.testing.assert_array_equal(np.bincount((new // 120.0).astype(int)), old_bins)


def test_bunching_sends_each_request_at_the_start_of_its_slot_in_order() -> None:
    t = _azure()
    b = stress.bunch(t, 5.0)
    old, new = np.asarray(t.arrival_s), np.asarray(b.arrival_s)
    assert len(b) == len(t) and b.duration_s == t.duration_s
    assert np.all(new % 5.0 == 0.0) and np.all((old - new >= 0) & (old - new < 5.0))
    np.testing.assert_array_equal(np.asarray(b.input_tokens), np.asarray(t.input_tokens))
    np.testing.assert_array_equal(np.asarray(b.output_tokens), np.asarray(t.output_tokens))


def test_every_case_is_named_with_its_builder() -> None:
    assert set(stress.CASES) == {
        "gap-20m",
        "gap-40m",
        "spike-3x-5m",
        "to-code",
        "to-reasoning",
        "to-long-context",
        "diurnal-decode-heavy",
        "on-off-2m",
        "bunched-5s",
        "mooncake-slow-4x",
    }
    assert [k for k, (_, diurnal, _) in stress.CASES.items() if diurnal] == ["diurnal-decode-heavy"]
