"""One control tick, the seam both substrates share (pure: no Ray, no clock, no I/O).

A tick takes the decisions made this period and the DG state, and returns what to do:

    drop instances lost with their node -> settle soft removals -> retire unconfigured
    services -> plan (which re-places the lost) -> pending removals

The FederatedPreScheduler actor and the simulator's replay only fill `TickInput` and apply the
`StepResult` (commit its state, stop/restore/hold out what it says, actuate its plan), the shape of the
Dynamo planner's TickInput -> PlannerEffects. Nothing here knows which substrate it runs on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from heteroscale_ray.config import GpuCatalog, ServiceSpec
from heteroscale_ray.control.counts import RunningReplicas
from heteroscale_ray.control.cycle import control_cycle
from heteroscale_ray.control.node_loss import (
    LostInstance,
    dissolve_unservable,
    drop_lost,
    remove_emptied,
)
from heteroscale_ray.control.retire import retire_unconfigured
from heteroscale_ray.control.soft_scale_in import (
    PendingRemoval,
    pending_from_plan,
    reserved_of,
    settle,
)
from heteroscale_ray.control.types import Desired, Observation
from heteroscale_ray.topology import ClusterGraph, DeploymentGroup, PlacementPlan, ScaleRequest


@dataclass(frozen=True)
class LoopState:
    """What the loop carries from tick to tick (and a substrate checkpoints)."""

    dgs: tuple[DeploymentGroup, ...] = ()
    pending: tuple[PendingRemoval, ...] = ()  # soft removals still in their window


@dataclass(frozen=True)
class TickInput:
    """Everything one tick reads; the substrate gathers it."""

    now: float
    desired: Mapping[str, Desired]  # this period's decisions, per service
    observations: Mapping[str, Observation]  # what the decisions were made on
    services: Mapping[str, ServiceSpec]  # the configured services (validated)
    graph: ClusterGraph  # the cluster as it is now
    # Hosts whose Ray node died (confirmed by the substrate, not merely slow to answer): their
    # instances are gone and are re-placed this tick. See `topology.view.lost_hosts`.
    lost_hosts: frozenset[str] = frozenset()
    # Replicas each DG runs (by DG id), which tells when a move's replacements serve; None:
    # not known, and a move leaves routing at the next tick (`soft_scale_in.made`).
    running: Mapping[str, RunningReplicas] | None = None


@dataclass(frozen=True)
class StepResult:
    """Everything one tick wants done. Commit `state` first, then act, so a crash in between
    re-applies a plan rather than forgetting it."""

    state: LoopState
    plan: PlacementPlan
    requests: tuple[ScaleRequest, ...]
    stopped: tuple[PendingRemoval, ...] = ()  # soft removals to stop now
    restored: tuple[PendingRemoval, ...] = ()  # soft removals back in routing
    held_out: tuple[PendingRemoval, ...] = ()  # moved instances replaced: out of routing now
    retired: tuple[PendingRemoval, ...] = ()  # DGs of services no longer configured, draining
    events: tuple[str, ...] = ()  # one line per loss/settle/retire event, for logs and status
    lost: tuple[LostInstance, ...] = ()  # instances dropped because their host died
    removed_dgs: tuple[str, ...] = ()  # DGs that lost every instance and were not refilled


@dataclass(frozen=True)
class ControlLoop:
    """The tick's settings. ``soft_window_s`` None turns soft scale-in off: a plan's removals
    are stopped by the actuator at once instead of becoming pending removals."""

    catalog: GpuCatalog | None = None
    soft_window_s: float | None = 60.0
    topology_aware: bool = True

    @property
    def soft(self) -> bool:
        return self.soft_window_s is not None

    def step(self, state: LoopState, tick: TickInput) -> StepResult:
        loss = drop_lost(
            state.dgs,
            state.pending,
            tick.lost_hosts,
            graph=tick.graph,
            services=tick.services,
            now=tick.now,
        )
        dgs, pending = loss.dgs, loss.pending
        events: list[str] = list(loss.events)
        stopped: tuple[PendingRemoval, ...] = ()
        restored: tuple[PendingRemoval, ...] = ()
        held_out: tuple[PendingRemoval, ...] = ()
        if pending:
            settled = settle(
                dgs,
                pending,
                now=tick.now,
                window_s=self.soft_window_s or 0.0,
                services=tick.services,
                observations=tick.observations,
                desired=tick.desired,
                graph=tick.graph,
                running=tick.running,
            )
            dgs, pending = settled.dgs, settled.pending
            stopped, restored, held_out = settled.stopped, settled.restored, settled.held_out
            events += settled.events
        dgs, retired = retire_unconfigured(dgs, tick.services, tick.now)
        pending += retired
        events += [
            f"{p.dg.dg_id}: service {p.service} is no longer configured; whole DG drains (soft)"
            for p in retired
        ]
        known = {k: v for k, v in tick.desired.items() if k in tick.services}
        cycle = control_cycle(
            known,
            graph=tick.graph,
            services=tick.services,
            dgs=dgs,
            catalog=self.catalog,
            topology_aware=self.topology_aware,
            reserved=reserved_of(pending),
        )
        if self.soft:
            pending += tuple(pending_from_plan(cycle.plan, dgs, tick.now, cycle.dgs))
        final, removed = remove_emptied(cycle.dgs, loss.emptied)
        final, late, late_events = dissolve_unservable(
            final, {x.dg_id for x in loss.lost}, tick.now
        )
        pending += late
        events += late_events
        events += [
            f"{dg_id}: every instance died with its host and none could come back in its "
            "domain; DG removed (its lost instances were placed elsewhere or are unplaced)"
            for dg_id in removed
        ]
        return StepResult(
            state=LoopState(final, pending),
            plan=cycle.plan,
            requests=cycle.requests,
            stopped=stopped,
            restored=restored,
            held_out=held_out,
            retired=retired,
            events=tuple(events),
            lost=loss.lost,
            removed_dgs=removed,
        )
