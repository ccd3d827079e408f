"""The simulator's GPUs are the capacity model's, so what the policy learns from them must be
the prior: any other scale is a measurement bias, and it sizes every real fleet wrong too."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from heteroscale_ray.config import load_services
from heteroscale_ray.control.autoscaler import HeteroScaleAutoscaler
from heteroscale_ray.sim.fleet import fleet_for
from heteroscale_ray.sim.replay import ReplayOptions, run_replay
from heteroscale_ray.traces import load_trace, scale_rate
from heteroscale_ray.traces.samples import SAMPLES

ROOT = Path(__file__).resolve().parents[1]
SERVICES = load_services(ROOT / "examples" / "sim_services.yaml")
GENERAL = SERVICES.by_name()["general"]


def test_decode_learns_the_simulators_gpu_where_instances_idle_and_outputs_run_long() -> None:
    """Outputs x8 (long-lived sequences outnumber short ones among those running) on a fleet
    started at twice its need (some decode instances idle): the two biases of pricing the
    step at running / ready instances and the arrivals' lengths. Measured at the batch and
    context the steps ran at, the learned decode scale is 1.0 up to the step's curvature
    (the mean of steps over the step at the mean batch); priced the old way it read 0.995
    here, and 0.90-0.96 through the long-context diurnal shape's day."""
    base = load_trace(SAMPLES["azure-conv"].path).slice(0, 600)
    trace = scale_rate(replace(base, output_tokens=base.output_tokens * 8), 4, seed=0)
    policy = HeteroScaleAutoscaler(SERVICES.services, SERVICES.catalog)
    run_replay(
        SERVICES,
        fleet_for([GENERAL], 512),
        {"general": trace},
        ReplayOptions(policy="heteroscale"),
        autoscaler=policy,
        initial={"general": (8, 24)},
    )
    state = policy.states["general"]
    assert state.capacity_learned_at is not None
    assert state.decode_capacity_scale == pytest.approx(1.0, abs=0.002)
    assert np.isfinite(state.prefill_capacity_scale)
