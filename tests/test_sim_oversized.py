"""Requests no instance of their service can hold get the real ingress's 400 in the simulator
too: nothing sizes or routes them, they are counted as rejected and as missed SLOs, and the
requests around them are served as if they had never come."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from heteroscale_ray.config import load_services
from heteroscale_ray.perf.constants import DEFAULT_CONSTANTS
from heteroscale_ray.sim.fleet import fleet_for
from heteroscale_ray.sim.oversized import KvRoom, admit
from heteroscale_ray.sim.replay import ReplayOptions, run_replay
from heteroscale_ray.traces import Trace

ROOT = Path(__file__).resolve().parents[1]
SERVICES = load_services(ROOT / "examples" / "sim_services.yaml")
GENERAL = SERVICES.by_name()["general"]
ROOM = KvRoom.of(GENERAL, SERVICES.catalog, DEFAULT_CONSTANTS)


def chat(n: int = 600, seconds: float = 120.0, seed: int = 0) -> Trace:
    rng = np.random.default_rng(seed)
    return Trace.from_columns(
        np.sort(rng.uniform(0, seconds, n)), rng.integers(200, 2_000, n), rng.integers(20, 300, n)
    )


def with_giants(trace: Trace, every: int, prompt: int) -> Trace:
    inp = np.array(trace.input_tokens)
    inp[::every] = prompt
    return Trace.from_columns(trace.arrival_s, inp, trace.output_tokens)


def test_a_request_fits_when_its_prompt_fits_prefill_and_prompt_plus_output_decode() -> None:
    assert 0 < ROOM.prefill < ROOM.decode  # H800 x4 holds less KV than H20 x4 for dense-70b
    trace = Trace.from_columns(
        [0.0, 1.0, 2.0, 3.0],
        [ROOM.prefill, ROOM.prefill + 1, ROOM.decode - 100, 1_000],
        [ROOM.decode - ROOM.prefill, 1, 100, ROOM.decode],
    )
    assert ROOM.oversized(trace).tolist() == [False, True, True, True]


def test_admit_drops_only_what_fits_nowhere_and_keeps_the_span() -> None:
    trace = with_giants(chat(), every=100, prompt=900_000)
    admitted = admit([GENERAL], {"general": trace}, SERVICES.catalog, DEFAULT_CONSTANTS)
    kept = admitted.traces["general"]
    assert admitted.rejected == {"general": 6} and len(kept) == len(trace) - 6
    assert kept.duration_s == trace.duration_s
    assert int(kept.input_tokens.max()) < 900_000
    with pytest.raises(ValueError, match="no request of service 'general' fits"):
        admit(
            [GENERAL],
            {"general": with_giants(chat(5), every=1, prompt=900_000)},
            SERVICES.catalog,
            DEFAULT_CONSTANTS,
        )


@pytest.mark.parametrize("policy", ["heteroscale", "static"])
def test_giant_prompts_are_rejected_not_served_at_everyones_cost(policy: str) -> None:
    """Served, one 900k-token prompt in a hundred held whole decode instances and stepped their
    batches at that context: every request batched with them missed its TBT SLO."""
    plain = chat()
    giants = with_giants(plain, every=100, prompt=900_000)
    fleet = fleet_for([GENERAL], 1024)
    base = run_replay(SERVICES, fleet, {"general": plain}, ReplayOptions(policy=policy)).summary
    res = run_replay(SERVICES, fleet, {"general": giants}, ReplayOptions(policy=policy))
    s = res.summary
    assert (s["requests"], s["rejected"], s["completed"]) == (600, 6, 594)
    assert res.rooms["general"] == ROOM
    # the 594 others are served as well as 594 of the plain trace are
    assert s["slo_attainment"] <= 594 / 600
    assert s["slo_attainment"] >= base["slo_attainment"] - 6 / 600 - 0.02
    assert s["slo_ceiling"] == pytest.approx(base["slo_ceiling"] * 594 / 600, abs=0.01)
    assert s["gpu_hours"] <= 1.1 * base["gpu_hours"]
