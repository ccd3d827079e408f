"""The replay's report reads its requests in blocks (a week's replay at scale holds ~100M of
them); the numbers must not depend on where the blocks fall."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from heteroscale_ray.config import load_services
from heteroscale_ray.sim import report, summary
from heteroscale_ray.sim.actuator import SimActuator
from heteroscale_ray.sim.fleet import fleet_for
from heteroscale_ray.sim.replay import ReplayOptions, run_replay
from heteroscale_ray.traces import load_trace, scale_rate
from heteroscale_ray.traces.samples import SAMPLES

ROOT = Path(__file__).resolve().parents[1]


def test_report_is_the_same_whichever_blocks_it_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    services = load_services(ROOT / "examples" / "sim_services.yaml")
    spec = services.by_name()["general"]
    # Mooncake's sample: prefix hits, KV transfers at several switch levels
    trace = scale_rate(load_trace(SAMPLES["mooncake"].path).slice(0, 240), 2, seed=3)
    opts = ReplayOptions(policy="heteroscale")
    res = run_replay(services, fleet_for([spec], 256), {"general": trace}, opts)
    s = res.summary
    assert s["completed"] == s["requests"] > summary.CEILING_BLOCK // 64 > 0

    def again() -> dict:
        got = summary.summarize(
            res.sim,
            [spec],
            trace.duration_s,
            opts,
            s["wall_s"],
            s["scaling_actions"],
            s["unplaced_instances"],
            SimActuator(res.sim, opts.startup_s),
        )
        for key in ("instances_started", "instances_stopped"):  # the actuator's, not the report's
            got[key] = s[key]
        return got

    assert again() == s
    monkeypatch.setattr(summary, "CEILING_BLOCK", 7)  # blocks that split every batch of requests
    small = again()
    for key, value in s.items():  # sums in another order may differ in the last bits
        numeric = isinstance(value, float)
        assert small[key] == (pytest.approx(value, rel=1e-12) if numeric else value), key
    assert s["kv_transfer_p50_ms"] > 0
    assert 0 < s["prefix_cache_hit"] < 1
    assert sum(s["kv_level_share"].values()) == pytest.approx(1.0)


def test_timeline_bins_every_request_by_its_arrival() -> None:
    services = load_services(ROOT / "examples" / "sim_services.yaml")
    spec = services.by_name()["general"]
    trace = scale_rate(load_trace(SAMPLES["azure-conv"].path).slice(0, 300), 4, seed=1)
    res = run_replay(services, fleet_for([spec], 256), {"general": trace}, ReplayOptions())
    sim, w = res.sim, res.sim.w
    lines = report.timeline(sim, 300.0, bin_s=60.0)
    assert len(lines["ttft_p99_s"]) == 5
    ttft = sim.t_first - w.arrival
    for i in range(5):
        mine = (w.arrival >= 60 * i) & ((w.arrival < 60 * (i + 1)) | (i == 4))
        assert lines["ttft_p99_s"][i] == pytest.approx(
            float(np.percentile(ttft[mine], 99)), rel=1e-12
        )


@pytest.mark.parametrize("bin_s", [0.1, 1 / 3, 7.3, 15.0, 60.0])
def test_timeline_bins_match_the_division_even_where_bin_s_is_inexact(bin_s: float) -> None:
    # A search for i * bin_s alone put 1.7 s in bin 16 of 0.1-s bins, where 1.7 / 0.1 is 17.
    rng = np.random.default_rng(int(bin_s * 1000))
    for _ in range(200):
        arrival = np.sort(np.round(rng.uniform(0, 50, rng.integers(0, 40)), 1))
        nb = max(1, int(50 // bin_s))
        want = np.minimum((arrival / bin_s).astype(np.int64), nb - 1)
        bounds = report._bin_starts(arrival, bin_s, nb)
        got = np.repeat(np.arange(nb), np.diff(bounds))
        assert got.tolist() == want.tolist()
