"""benchmarks/made_up.py: each made-up case is the plain rule its docstring says, seeded."""

from __future__ import annotations

import numpy as np
import pytest
from bench_modules import load_benchmark

made_up = load_benchmark("made_up", "made_up_bench")


def _rate(trace, t0: float, t1: float) -> float:
    t = np.asarray(trace.arrival_s)
    return float(np.count_nonzero((t >= t0) & (t < t1)) / (t1 - t0))


def test_every_case_is_seeded_and_named() -> None:
    assert set(made_up.CASES) == {
        "reasoning",
        "reasoning-2x",
        "step-5x",
        "on-off-30s",
        "cron-30s",
        "flash-20m",
        "flash-irregular",
        "crowds",
        "flash-hourly",
        "fan-out",
        "ramp-6h",
        "sawtooth",
        "bimodal",
        "classify",
        "high-rate",
        "conversation",
        "day-chat",
        "day-code",
        "day-long-context",
        "day-reasoning",
        "day-mix-shift",
        "day-cron",
    }
    a, b = made_up.reasoning(), made_up.reasoning()
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    np.testing.assert_array_equal(a.output_tokens, b.output_tokens)


def test_draw_zero_is_the_tables_trace_and_another_draw_follows_the_same_rule() -> None:
    """benchmarks/seed_spread.py replays other draws of a rule: draw 0 must stay the trace
    the tables show, and draw 1 must be the same rule drawn anew."""
    for label in ("step-5x", "crowds", "day-chat"):
        table = made_up.CASES[label][0]()
        np.testing.assert_array_equal(made_up.build(label, 0).arrival_s, table.arrival_s)
        other = made_up.build(label, 1)
        assert not np.array_equal(other.arrival_s[:1000], table.arrival_s[:1000]), label
    step = made_up.build("step-5x", 1)
    assert _rate(step, 0, 1200) == pytest.approx(5.0, rel=0.1)
    assert _rate(step, 1200, 3600) == pytest.approx(25.0, rel=0.05)


def test_reasoning_writes_thousands_of_tokens_at_its_rate() -> None:
    t = made_up.reasoning()
    assert _rate(t, 0, 3600) == pytest.approx(15.0, rel=0.03)
    assert 3_000 < np.mean(t.output_tokens) < 4_500 and np.max(t.output_tokens) <= 16_000


def test_the_step_and_the_on_off_cases_change_rate_where_they_say() -> None:
    build = made_up.CASES["step-5x"][0]
    step = build()
    assert _rate(step, 0, 1200) == pytest.approx(5.0, rel=0.1)
    assert _rate(step, 1200, 3600) == pytest.approx(25.0, rel=0.05)
    on_off = made_up.CASES["on-off-30s"][0]()
    t = np.asarray(on_off.arrival_s)
    assert np.all((t // 30) % 2 == 0)  # nothing in the off half-minutes


def test_the_sawtooth_climbs_for_twenty_minutes_and_drops_for_ten() -> None:
    saw = made_up.CASES["sawtooth"][0]()
    for start in (0.0, 1800.0, 3600.0):
        assert _rate(saw, start, start + 120) == pytest.approx(3.9, rel=0.15)
        assert _rate(saw, start + 1080, start + 1200) == pytest.approx(38.1, rel=0.05)
        assert _rate(saw, start + 1200, start + 1800) == pytest.approx(2.0, rel=0.15)


def test_flash_crowds_are_ten_times_the_calm_rate_for_two_minutes() -> None:
    timed = made_up.CASES["flash-20m"][0]()
    assert timed.duration_s == 6 * 3600.0
    assert _rate(timed, 1200, 1320) == pytest.approx(40.0, rel=0.1)
    assert _rate(timed, 1320, 2400) == pytest.approx(4.0, rel=0.1)
    drawn = made_up.flash_irregular()
    t = np.asarray(drawn.arrival_s)
    per_minute = np.bincount((t // 60).astype(int))
    spikes = np.flatnonzero(per_minute > 1_000)  # 40 req/s: ~2,400 a minute; calm ~240
    gaps = np.diff(spikes[np.r_[True, np.diff(spikes) > 2]])
    assert len(gaps) >= 5 and gaps.min() >= 10 and gaps.max() <= 41
    hourly = np.asarray(made_up.flash_hourly().arrival_s)
    per_minute = np.bincount((hourly // 60).astype(int))
    spikes = np.flatnonzero(per_minute > 1_000)
    onsets = spikes[np.r_[True, np.diff(spikes) > 2]]
    assert len(onsets) == 8 and np.all(np.abs(onsets - 60 * np.arange(8)) <= 1)


def test_crowds_run_five_times_the_calm_rate_for_four_minutes_15_to_45_minutes_apart() -> None:
    t = np.asarray(made_up.crowds().arrival_s)
    per_minute = np.bincount((t // 60).astype(int))
    busy = np.flatnonzero(per_minute > 720)  # 20 req/s: ~1,200 a minute; calm ~240
    onsets = busy[np.r_[True, np.diff(busy) > 2]]
    gaps = np.diff(onsets)
    assert len(onsets) >= 5 and gaps.min() >= 15 and gaps.max() <= 46
    assert gaps[:3].tolist() == [37, 40, 32]  # two that agree, then one that does not
    first = float(onsets[0] * 60)
    assert _rate(made_up.crowds(), first + 60, first + 180) == pytest.approx(20.0, rel=0.1)


def test_the_cron_day_runs_five_times_its_rate_for_the_first_two_minutes_of_each_hour() -> None:
    day = made_up.day_cron()
    assert _rate(day, 6 * 3600, 6 * 3600 + 120) == pytest.approx(150.0, rel=0.05)
    assert _rate(day, 6 * 3600 + 120, 7 * 3600) == pytest.approx(29.6, rel=0.05)


def test_fan_outs_send_150_long_prompts_within_two_seconds_every_few_minutes() -> None:
    trace = made_up.fan_out()
    t, prompts = np.asarray(trace.arrival_s), np.asarray(trace.input_tokens)
    per_second = np.bincount(t.astype(int))
    fans = np.flatnonzero(per_second > 30)  # a fan-out: ~75 a second; calm: 5
    starts = fans[np.r_[True, np.diff(fans) > 2]]
    assert 30 <= len(starts) <= 50 and np.diff(starts).mean() == pytest.approx(180, rel=0.25)
    long = prompts > 3_000
    assert np.mean(prompts[long]) == pytest.approx(6_000, rel=0.1)
    assert _rate(trace, 0, 7200) == pytest.approx(5.0 + 150 / 180, rel=0.15)


def test_a_static_fleet_for_reasoning_splits_the_cli_fleet_toward_decode() -> None:
    from heteroscale_ray.config import load_services
    from heteroscale_ray.sim.sizing import static_counts

    services = load_services(made_up.ROOT / "examples" / "sim_services.yaml")
    spec = services.by_name()["general"]
    p, d = static_counts(spec, services.catalog, made_up.reasoning())
    assert d > 8 * p


def test_a_day_rises_to_its_top_at_noon_and_bursts_where_drawn() -> None:
    day = made_up.day_case(7, 1, 8, 12_000, 300, bursts=False)
    assert _rate(day, 0, 1800) < 1.5 and _rate(day, 5 * 3600, 7 * 3600) > 7.0
    assert 10_000 < np.mean(day.input_tokens) < 13_000 and np.max(day.input_tokens) <= 32_000
    chat = made_up.day_case(7, 3, 30, 1000, 250, bursts=True)
    calm = made_up.day_case(7, 3, 30, 1000, 250, bursts=False)
    assert len(chat) > 1.05 * len(calm)  # six 10-20 min windows at 1.5-2.5x


def test_the_mix_shift_day_lengthens_outputs_for_two_hours_and_prompts_for_one() -> None:
    day = made_up.day_mix_shift()
    t = np.asarray(day.arrival_s)
    hour = (t // 3600).astype(int)
    out = np.array([np.mean(day.output_tokens[hour == h]) for h in range(12)])
    inp = np.array([np.mean(day.input_tokens[hour == h]) for h in range(12)])
    calm_out, calm_in = np.median(out), np.median(inp)
    assert np.count_nonzero(out > 3 * calm_out) == 2 and np.count_nonzero(inp > 3 * calm_in) == 1


def test_a_conversations_turns_repeat_its_context_as_cacheable_blocks() -> None:
    conv = made_up.conversation()
    assert _rate(conv, 0, 600) == pytest.approx(_rate(conv, 3000, 3600), rel=0.1)  # under way
    assert 9_000 < np.mean(conv.input_tokens) < 12_500 and np.max(conv.input_tokens) <= 32_000
    blocks = [h for hs in conv.hash_ids for h in hs]
    assert all(
        len(h) == -(-n // 512) for h, n in zip(conv.hash_ids, conv.input_tokens, strict=True)
    )
    # later turns repeat whole blocks of the session so far, and six system prompts are shared
    assert len(set(blocks)) < 0.5 * len(blocks)
