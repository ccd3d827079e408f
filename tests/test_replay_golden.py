"""Golden replay: a fixed slice of the Azure trace, fixed seed, exact numbers.

Regenerate after an intended model change with
    HETEROSCALE_REGEN_GOLDEN=1 .venv/bin/pytest tests/test_replay_golden.py
and say in the commit why the numbers moved.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from heteroscale_ray.config import load_services
from heteroscale_ray.sim.fleet import fleet_for
from heteroscale_ray.sim.replay import ReplayOptions, run_replay
from heteroscale_ray.traces import load_trace, scale_rate
from heteroscale_ray.traces.samples import SAMPLES

ROOT = Path(__file__).resolve().parents[1]
TRACE = SAMPLES["azure-conv"].path  # its first 300 s equal the full Azure trace's
GOLDEN = Path(__file__).parent / "golden" / "replay_dialogue_small.json"
KEYS = (
    "requests",
    "completed",
    "gpu_hours",
    "avg_gpu_util",
    "avg_sm_activity",
    "ttft_p50_s",
    "ttft_p99_s",
    "tbt_p50_s",
    "tbt_p99_s",
    "slo_attainment",
    "scaling_actions",
    "instances_started",
    "instances_stopped",
    "cost",
)


def test_golden_replay() -> None:
    services = load_services(ROOT / "examples" / "sim_services.yaml")
    spec = services.by_name()["dialogue"]
    trace = scale_rate(load_trace(TRACE).slice(0, 300), 6, seed=7)
    got = {}
    for policy in ("heteroscale", "hpa-util", "oracle"):
        res = run_replay(
            services, fleet_for([spec], 512), {"dialogue": trace}, ReplayOptions(policy=policy)
        )
        got[policy] = {k: res.summary[k] for k in KEYS}
    if os.environ.get("HETEROSCALE_REGEN_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())
    for policy, numbers in want.items():
        for key, value in numbers.items():
            assert got[policy][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (policy, key)
