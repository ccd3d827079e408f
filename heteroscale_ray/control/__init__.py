"""Control loop glue shared by the simulator and the Ray actors (pure: no Ray, no clock, no I/O).

An `Autoscaler` turns observations into desired counts, `control_cycle` turns desired counts into
a placement plan through the shared topology core, and an `Actuator` carries the plan out.
"""

from heteroscale_ray.control.actuator import Actuator, AdvisoryActuator
from heteroscale_ray.control.autoscaler import Autoscaler, FixedDesires, HeteroScaleAutoscaler
from heteroscale_ray.control.baselines import (
    HpaUtilAutoscaler,
    ScheduledAutoscaler,
    ServeDefaultAutoscaler,
    StaticAutoscaler,
)
from heteroscale_ray.control.cycle import CycleResult, control_cycle
from heteroscale_ray.control.types import Desired, Observation, PoolObservation

__all__ = [
    "Actuator",
    "AdvisoryActuator",
    "Autoscaler",
    "Desired",
    "CycleResult",
    "FixedDesires",
    "HeteroScaleAutoscaler",
    "HpaUtilAutoscaler",
    "Observation",
    "PoolObservation",
    "ScheduledAutoscaler",
    "ServeDefaultAutoscaler",
    "StaticAutoscaler",
    "control_cycle",
]
