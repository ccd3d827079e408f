"""The simulator's GPUs are the capacity model's, so what the policy learns from them must be
the prior: any other scale is a measurement bias, and it sizes every real fleet wrong too."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

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


class StepOnly(HeteroScaleAutoscaler):
    """The policy fed by replicas that report the step alone (not what it ran at)."""

    def desire(self, now, observations):  # noqa: ANN001, ANN201
        blind = {
            name: replace(
                o, signals=replace(o.signals, decode_step_batch=None, decode_step_context=None)
            )
            for name, o in observations.items()
        }
        return super().desire(now, blind)


def learned_scales(policy: HeteroScaleAutoscaler) -> tuple[float, float]:
    """Outputs x8 (long-lived sequences outnumber short ones among those running) on a fleet
    started with more decode instances than it needs (some idle)."""
    base = load_trace(SAMPLES["azure-conv"].path).slice(0, 600)
    trace = scale_rate(replace(base, output_tokens=base.output_tokens * 8), 4, seed=0)
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
    return state.prefill_capacity_scale, state.decode_capacity_scale  # type: ignore[return-value]


def test_the_policy_learns_the_simulators_gpus() -> None:
    """Measured at the batch and context the steps ran at, the learned decode scale is 1.0 up
    to the step's curvature (the mean of steps over the step at the mean batch). Priced at
    running sequences per ready instance and the arrivals' lengths (what a replica that
    reports only its step leaves), idle instances and long sequences read as a slower GPU."""
    prefill, decode = learned_scales(HeteroScaleAutoscaler(SERVICES.services, SERVICES.catalog))
    assert decode == pytest.approx(1.0, abs=0.002)
    assert prefill == pytest.approx(1.0, abs=0.05)
    _, step_only = learned_scales(StepOnly(SERVICES.services, SERVICES.catalog))
    assert step_only < decode - 0.003
