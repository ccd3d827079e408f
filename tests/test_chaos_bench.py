"""The chaos benchmark's pure part (benchmarks/chaos_core.py): the seeded schedule and
arrivals, request outcomes, recovery windows, the status-snapshot invariants, the migrations
counter; and (benchmarks/chaos_report.py) the summary with its goals and table."""

from __future__ import annotations

import pytest
from bench_modules import load_benchmark

# under their own names, as benchmarks/chaos.py imports them: chaos_report finds chaos_core
chaos = load_benchmark("chaos_core")
report = load_benchmark("chaos_report")


# ---------------------------------------------------------------- schedule and arrivals


@pytest.mark.parametrize("mode", [chaos.QUICK, chaos.FULL])
def test_the_schedule_kills_every_kind_as_often_as_the_mode_says(mode: object) -> None:
    schedule = chaos.make_schedule(7, mode)
    counts = {k: sum(f.kind == k for f in schedule) for k in chaos.KILL_KINDS}
    assert counts == dict(mode.kills)  # type: ignore[attr-defined]
    lo, hi = mode.gap_s  # type: ignore[attr-defined]
    assert all(lo <= f.gap_s <= hi and 0.0 <= f.pick < 1.0 for f in schedule)


def test_the_schedule_is_seeded() -> None:
    assert chaos.make_schedule(3, chaos.QUICK) == chaos.make_schedule(3, chaos.QUICK)
    orders = {tuple(f.kind for f in chaos.make_schedule(s, chaos.FULL)) for s in range(5)}
    assert len(orders) > 1  # the seed changes the order


def test_pick_indexes_the_sorted_candidates() -> None:
    assert chaos.pick(["b", "a", "c"], 0.0) == "a"
    assert chaos.pick(["b", "a", "c"], 0.5) == "b"
    assert chaos.pick(["b", "a", "c"], 0.999) == "c"
    assert chaos.pick(["x"], 0.7) == "x"


def test_arrivals_are_seeded_poisson_within_the_mode_s_ranges() -> None:
    mode = chaos.QUICK
    first = [s for _, s in zip(range(2000), chaos.request_plan(1, mode), strict=False)]
    again = [s for _, s in zip(range(2000), chaos.request_plan(1, mode), strict=False)]
    assert first == again
    times = [s.at for s in first]
    assert times == sorted(times)
    rate = len(times) / times[-1]
    assert rate == pytest.approx(mode.rate, rel=0.1)
    assert 0.4 < sum(s.stream for s in first) / len(first) < 0.6
    assert all(mode.max_tokens[0] <= s.max_tokens <= mode.max_tokens[1] for s in first)
    text = chaos.prompt_text(1, first[0])
    assert len(text) == first[0].prompt_bytes and text == chaos.prompt_text(1, first[0])


# ------------------------------------------------------------------------ outcomes


@pytest.mark.parametrize(
    ("status", "error", "finish", "tokens", "outcome"),
    [
        (200, "", "length", 40, chaos.COMPLETED),
        (200, "", "stop", 3, chaos.COMPLETED),  # a stop may come early
        (200, "", None, 40, chaos.TRUNCATED),  # no finish_reason
        (200, "", "length", 39, chaos.TRUNCATED),  # short without a stop
        (200, "The decode replica failed", "length", 12, chaos.FAILED),  # an error event
        (500, "Internal Server Error", None, 0, chaos.FAILED),
        (0, "ClientPayloadError: ...", None, 0, chaos.FAILED),
    ],
)
def test_classify(status: int, error: str, finish: str | None, tokens: int, outcome: str) -> None:
    assert chaos.classify(status, error, finish, tokens, 40) == outcome


# ------------------------------------------------------------------------ recovery


def test_no_bad_request_after_a_fault_is_an_immediate_recovery() -> None:
    sent = [(t / 2, True) for t in range(40)]
    assert chaos.recovery_s(5.0, 20.0, sent) == 0.0


def test_recovery_ends_where_every_request_of_a_window_is_good() -> None:
    sent = [(5.5, False), (6.0, True), (7.0, False), (8.0, True), (9.0, True), (14.0, True)]
    # from 6.0 the window holds the bad 7.0; from 8.0 every request up to 13.0 is good
    assert chaos.recovery_s(5.0, 20.0, sent, 5.0) == 3.0


def test_a_window_cut_by_the_next_fault_and_a_fault_never_recovered() -> None:
    sent = [(1.0, False), (2.0, True), (3.5, False)]
    assert chaos.recovery_s(0.0, 3.0, sent, 5.0) == 2.0  # cut at 3.0: only 2.0 inside
    assert chaos.recovery_s(0.0, 10.0, sent, 5.0) is None  # 2.0's window holds 3.5
    assert chaos.recovery_s(0.0, 10.0, [], 5.0) is None  # nothing sent: nothing shows it


def test_requests_of_unknown_verdict_are_left_out() -> None:
    sent = [(1.0, True), (2.0, None), (3.0, True)]
    assert chaos.recovery_s(0.0, 10.0, sent, 5.0) == 0.0


@pytest.mark.parametrize(
    ("sent", "done", "completed", "verdict"),
    [
        (10.0, 12.0, True, True),  # in time
        (10.0, 17.0, True, False),  # overdue (bound 5 s) at 15.0, before the next fault at 20
        (18.0, 24.0, True, None),  # overdue only at 23.0, after the next fault: not this one's
        (10.0, 11.0, False, False),  # failed before the next fault
        (10.0, 21.0, False, False),  # failed after it, but overdue at 15.0 already
        (17.0, 21.0, False, None),  # failed after the next fault, within its bound until then
    ],
)
def test_verdict(sent: float, done: float, completed: bool, verdict: bool | None) -> None:
    assert chaos.verdict(sent, done, completed, 5.0, 20.0) is verdict


def test_the_good_latency_bound() -> None:
    assert chaos.good_latency_bound([]) == 10.0
    assert chaos.good_latency_bound([0.5, 0.6, 0.7]) == 5.0  # floor
    assert chaos.good_latency_bound([1.0] * 50 + [4.0] * 50) == 12.0  # 3x the p99


# ------------------------------------------------------------------------ invariants


def _dg(dg_id: str, *gpus: tuple[str, int]) -> dict[str, object]:
    return {
        "dg_id": dg_id,
        "service": "chaos",
        "instances": [{"id": f"i{k}", "host": h, "gpus": [g]} for k, (h, g) in enumerate(gpus)],
    }


def test_a_sound_snapshot_has_no_violation() -> None:
    snap = {
        "dgs": [_dg("dg0", ("h20-a", 0), ("h20-a", 1)), _dg("dg1", ("h20-b", 0))],
        "pending_removals": [{"dg_id": "dg0", "whole_dg": False, "gpus": [["h20-a", 2]]}],
    }
    assert chaos.invariant_violations(snap) == (set(), set())


def test_duplicate_dgs_and_double_booked_gpus_are_found() -> None:
    snap = {
        "dgs": [_dg("dg0", ("h20-a", 0)), _dg("dg0", ("h20-b", 1)), _dg("dg2", ("h20-b", 3))],
        "pending_removals": [
            {"dg_id": "dg2", "whole_dg": True, "gpus": [["h20-a", 0]]},
        ],
    }
    dup, double = chaos.invariant_violations(snap)
    assert dup == {"dg0", "dg2"}  # dg2 is live and draining whole at once
    assert double == {("h20-a", 0)}


def test_scale_events_are_decisions_that_changed_the_counts() -> None:
    def e(reason: str, had: tuple[int, int], now: tuple[int, int]) -> dict[str, object]:
        return {"service": "chaos", "time": 1.0, "reason": reason, "had_prefill": had[0],
                "had_decode": had[1], "prefill": now[0], "decode": now[1]}  # fmt: skip

    assert chaos.is_scale_event(e("clamped_min_max", (1, 2), (2, 3)))
    assert chaos.is_scale_event(e("scale_in", (2, 3), (1, 2)))
    assert not chaos.is_scale_event(e("hold_deadband", (1, 2), (1, 2)))
    assert not chaos.is_scale_event(e("initial", (0, 0), (1, 2)))


def test_the_longest_stall_of_the_control_loop() -> None:
    samples = [{"t": float(t), "cycles": c} for t, c in enumerate([1, 2, 2, 2, 2, 3, 4, 4])]
    assert chaos.longest_stall(samples) == 4.0  # cycle 2 seen from t=1 until 3 at t=5
    assert chaos.longest_stall([{"t": 0.0, "cycles": 5}, {"t": 9.0, "cycles": 5}]) == 9.0
    assert chaos.longest_stall([]) == 0.0


# ------------------------------------------------------------------------ metrics


PROM = """# HELP heteroscale_request_migrations_total Requests moved
# TYPE heteroscale_request_migrations_total counter
heteroscale_request_migrations_total{reason="decode_failed",service="chaos"} 3.0
heteroscale_request_migrations_total{reason="prefill_failed",service="chaos"} 1.0
heteroscale_request_migrations_total{reason="decode_failed",service="other"} 7.0
heteroscale_request_migrations_created{reason="decode_failed",service="chaos"} 1.7e9
"""


def test_the_migrations_counter_is_summed_over_reasons_for_the_service() -> None:
    name = "heteroscale_request_migrations"
    assert chaos.counter_total(PROM, name, {"service": "chaos"}) == 4.0
    assert chaos.counter_total(PROM, name) == 11.0
    declared_only = "\n".join(PROM.splitlines()[:2])
    assert chaos.counter_total(declared_only, name) == 0.0  # exported, none yet
    assert chaos.counter_total("# TYPE other_total counter\nother_total 1\n", name) is None


# ------------------------------------------------------------------------ summary


def _rec(k: int, sent: float, done: float, outcome: str) -> object:
    return chaos.RequestRecord(k, sent, done, k % 2 == 0, 40, 200, 40, "length", "", outcome)


def _faults() -> list[dict[str, object]]:
    return [
        {"kind": chaos.DECODE_REPLICA, "target": "chaos-dg0/r1", "t": 10.0, "refill_s": 6.0},
        {"kind": chaos.POLICY_ENGINE, "target": "pe", "t": 30.0, "recovery_s": 2.5},
    ]


def _facts(**overrides: object) -> object:
    base = {
        "scale_events": 25,
        "duplicate_dgs": 0,
        "double_booked_gpus": 0,
        "migrations": 0,
        "migrations_source": "test",
        "good_latency_s": 5.0,
        "end_t": 50.0,
    }
    return report.RunFacts(**{**base, **overrides})


def test_a_clean_run_passes_only_with_full_coverage() -> None:
    records = [_rec(k, k * 0.5, k * 0.5 + 1.0, chaos.COMPLETED) for k in range(100)]
    s = report.summarise(records, _faults(), _facts())
    assert (s["requests"], s["completed"], s["lost"]) == (100, 100, 0)
    assert s["kills"][chaos.DECODE_REPLICA] == 1 and s["kills"][chaos.NODE] == 0
    assert s["recovery_s_max"] == {chaos.DECODE_REPLICA: 0.0, chaos.POLICY_ENGINE: 2.5}
    assert s["refill_s_max"] == {chaos.DECODE_REPLICA: 6.0}
    g = s["goals"]
    assert g["lost_zero"] and g["recovery_le_10s"] and g["no_double_booked_gpus"]
    assert not g["coverage"] and not g["pass"]  # six kinds were never killed
    assert set(g["kinds_not_killed"]) == set(chaos.KILL_KINDS) - {
        chaos.DECODE_REPLICA,
        chaos.POLICY_ENGINE,
    }
    text = report.format_table(s, _faults())
    assert "decode_replica" in text and "FAIL" in text


def test_lost_requests_and_slow_recovery_fail_the_goals() -> None:
    records = [_rec(k, k * 0.5, k * 0.5 + 1.0, chaos.COMPLETED) for k in range(100)]
    for k in range(20, 45):  # sent 10.0 .. 22.0: failed for 12.5 s after the decode kill
        records[k] = _rec(k, k * 0.5, k * 0.5 + 0.2, chaos.FAILED)
    records[70] = _rec(70, 35.0, 36.0, chaos.TRUNCATED)
    faults = _faults()
    s = report.summarise(records, faults, _facts(double_booked_gpus=1))
    assert (s["failed"], s["truncated"], s["lost"]) == (25, 1, 26)
    assert s["recovery_s_max"][chaos.DECODE_REPLICA] == 12.5
    assert [f["lost"] for f in faults] == [25, 1]  # each attributed to the fault before it
    g = s["goals"]
    assert not g["lost_zero"] and not g["no_double_booked_gpus"]
    assert g["recovery_over_goal"] == [chaos.DECODE_REPLICA]
    assert not g["pass"]
