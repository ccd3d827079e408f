"""The control tick both substrates share (pure: no Ray, no clock, no I/O).

An `Autoscaler` turns observations into desired counts; `ControlLoop.step` turns desired counts
into a new DG state and a placement plan (drop instances lost with their node -> settle soft
removals -> retire -> plan -> pending: `control/loop.py`);
the substrate's actuator carries the plan out.
"""

from heteroscale_ray.control.actuator import Actuator
from heteroscale_ray.control.autoscaler import Autoscaler, HeteroScaleAutoscaler
from heteroscale_ray.control.baselines import (
    HpaUtilAutoscaler,
    ScheduledAutoscaler,
    ServeDefaultAutoscaler,
    StaticAutoscaler,
)
from heteroscale_ray.control.counts import RunningReplicas, ready_and_starting
from heteroscale_ray.control.cycle import CycleResult, control_cycle
from heteroscale_ray.control.loop import ControlLoop, LoopState, StepResult, TickInput
from heteroscale_ray.control.types import Desired, Observation, PoolObservation

__all__ = [
    "Actuator",
    "Autoscaler",
    "ControlLoop",
    "CycleResult",
    "Desired",
    "HeteroScaleAutoscaler",
    "HpaUtilAutoscaler",
    "LoopState",
    "Observation",
    "PoolObservation",
    "RunningReplicas",
    "ScheduledAutoscaler",
    "ServeDefaultAutoscaler",
    "StaticAutoscaler",
    "StepResult",
    "TickInput",
    "control_cycle",
    "ready_and_starting",
]
