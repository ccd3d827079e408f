"""The simulator's actuator: applies placement plans to a `ClusterSim`.

New instances start loading the model and take traffic `startup_s` later; removed instances
drain (no new requests, in-flight ones finish) before their GPUs stop counting.
"""

from __future__ import annotations

from heteroscale_ray.sim.cluster import ClusterSim
from heteroscale_ray.topology import (
    AddInstances,
    CreateDG,
    DeploymentGroup,
    PlacementPlan,
    RemoveInstances,
)


class SimActuator:
    """Implements `heteroscale_ray.control.Actuator` for the simulator."""

    def __init__(self, sim: ClusterSim, startup_s: float) -> None:
        self.sim = sim
        self.startup_s = startup_s
        self.dgs: dict[str, DeploymentGroup] = {}
        self.started = 0
        self.stopped = 0

    def apply(
        self,
        plan: PlacementPlan,
        *,
        warm: bool = False,
        soft: bool = False,
        moving: frozenset[str] = frozenset(),
    ) -> None:
        """`warm=True` makes instances ready at once (the provisioning before a replay starts);
        `soft=True` holds removed instances out of routing instead of stopping them (soft
        scale-in: the replay's control loop stops or restores them later), except `moving`
        ones (moved to another DG), which serve until the loop holds them out."""
        ready_at = self.sim.now + (0.0 if warm else self.startup_s)
        for action in plan.all_actions():
            if isinstance(action, CreateDG):
                self.dgs[action.dg.dg_id] = action.dg
            elif isinstance(action, AddInstances):
                dg = self.dgs[action.dg_id]
                gpu = dg.gpu_type(action.role)
                for inst in action.instances:
                    self.sim.add_instance(
                        inst.instance_id,
                        dg.service,
                        action.role,
                        action.dg_id,
                        inst.host,
                        gpu,
                        len(inst.gpus),
                        ready_at,
                    )
                    self.started += 1
            elif isinstance(action, RemoveInstances):
                for iid in action.instance_ids:
                    if soft and iid in moving:
                        self.sim.keep_serving(iid)
                    elif soft:
                        self.sim.hold_out(iid)
                    else:
                        self.stop(iid)

    def stop(self, instance_id: str) -> None:
        self.sim.drain_instance(instance_id)
        self.stopped += 1
