"""benchmarks/shapes.py: each shape is the plain transformation of a shared trace it says."""

from __future__ import annotations

import numpy as np
from bench_modules import load_benchmark

shapes = load_benchmark("shapes", "shapes_bench")


def test_prefill_heavy_doubles_prompts_and_cuts_outputs_by_eight() -> None:
    azure, heavy = shapes._azure(), shapes.prefill_heavy()
    assert len(heavy) == len(azure) and heavy.duration_s == azure.duration_s
    np.testing.assert_array_equal(heavy.arrival_s, azure.arrival_s)
    np.testing.assert_array_equal(
        heavy.input_tokens, np.minimum(np.asarray(azure.input_tokens) * 2, shapes.CONTEXT_CAP)
    )
    np.testing.assert_array_equal(
        heavy.output_tokens, np.maximum(1, np.asarray(azure.output_tokens) // 8)
    )
    assert 2_000 < np.mean(heavy.input_tokens) < 2_600 and 20 < np.mean(heavy.output_tokens) < 32


def test_long_context_stays_within_the_context_the_slos_are_set_for() -> None:
    long = shapes.long_context()
    assert int(np.max(long.input_tokens)) <= shapes.CONTEXT_CAP
    assert 9_000 < np.mean(long.input_tokens) < 13_000


def test_decode_heavy_writes_eight_times_longer_within_the_context() -> None:
    azure, heavy = shapes._azure(), shapes.decode_heavy()
    np.testing.assert_array_equal(
        heavy.input_tokens, np.minimum(azure.input_tokens, shapes.CONTEXT_CAP - 1)
    )
    total = np.asarray(heavy.input_tokens) + np.asarray(heavy.output_tokens)
    assert int(total.max()) <= shapes.CONTEXT_CAP and int(np.min(heavy.output_tokens)) >= 1
    assert 1_400 < np.mean(heavy.output_tokens) < 2_000


def test_reasoning_writes_twenty_times_longer_within_the_context() -> None:
    azure, long = shapes._azure(), shapes.reasoning()
    np.testing.assert_array_equal(long.arrival_s, azure.arrival_s)
    want = np.minimum(np.asarray(azure.output_tokens) * 20, shapes.CONTEXT_CAP - long.input_tokens)
    np.testing.assert_array_equal(long.output_tokens, np.maximum(want, 1))
    assert 3_000 < np.mean(long.output_tokens) < 4_500


def test_diurnal_long_context_is_the_12_hour_day_with_ten_times_the_prompts() -> None:
    day, long = shapes.diurnal_12h(), shapes.diurnal_long_context()
    np.testing.assert_array_equal(long.arrival_s, day.arrival_s)
    np.testing.assert_array_equal(long.output_tokens, day.output_tokens)
    np.testing.assert_array_equal(
        long.input_tokens, np.minimum(np.asarray(day.input_tokens) * 10, shapes.CONTEXT_CAP)
    )
    assert long.duration_s == day.duration_s and abs(day.duration_s - 12 * 3600) < 1


def test_every_shape_is_named_with_its_builder() -> None:
    assert set(shapes.SHAPES) == {
        "prefill-heavy",
        "long-context",
        "diurnal-12h",
        "diurnal-prefill-heavy",
        "decode-heavy",
        "reasoning",
        "diurnal-long-context",
    }
    assert all(
        diurnal for _, diurnal, _ in (shapes.SHAPES[k] for k in shapes.SHAPES if "diurnal" in k)
    )


def test_a_static_fleet_below_one_gpu_is_refused_before_any_replay(capsys) -> None:
    assert (
        shapes.main(["--shapes", "decode-heavy", "--static-gpus", "0", "--out", "/nonexistent"])
        == 2
    )
    assert "--static-gpus must be at least 1" in capsys.readouterr().err
