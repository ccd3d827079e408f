"""Placement plans: decisions as data, applied identically by the simulator and the Ray actors.

A plan lists, per sub-cluster, the actions its scheduler carries out, plus what could not be
placed and why. ``apply`` is the one place DG state changes, so every substrate ends up with
the same Deployment Groups for the same plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum

from heteroscale_ray.config.services import Role
from heteroscale_ray.topology.dg import DeploymentGroup, Instance


class UnplacedReason(str, Enum):
    """Why part of a scale request stayed unplaced."""

    UNKNOWN_SERVICE = "unknown_service"
    """The request names a service the scheduler has no spec for."""
    NO_CAPACITY = "no_capacity"
    """No compatible domain had free GPUs of an allowed type for this role."""
    HELD_FOR_RATIO = "held_for_ratio"
    """Placeable, but held back because the other role could not grow (keeps the P/D ratio)."""


@dataclass(frozen=True, slots=True)
class Unplaced:
    """Instances of one role of one service this cycle could not place."""

    service: str
    role: Role
    count: int
    reason: UnplacedReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CreateDG:
    """Open a Deployment Group (no instances yet; AddInstances follow)."""

    dg: DeploymentGroup


@dataclass(frozen=True, slots=True)
class AddInstances:
    """Start instances of one role of a DG on the given hosts and GPU indices."""

    dg_id: str
    role: Role
    instances: tuple[Instance, ...]


@dataclass(frozen=True, slots=True)
class RemoveInstances:
    """Stop instances of one role of a DG; their GPUs are free from the next cycle on."""

    dg_id: str
    role: Role
    instance_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DeleteDG:
    """Delete a Deployment Group that has no instances left."""

    dg_id: str


Action = CreateDG | AddInstances | RemoveInstances | DeleteDG

_APPLY_ORDER = (CreateDG, AddInstances, RemoveInstances, DeleteDG)


@dataclass(frozen=True)
class PlacementPlan:
    """The outcome of one placement cycle."""

    actions: Mapping[str, tuple[Action, ...]] = field(default_factory=dict)
    """Sub-cluster name -> its actions. DG-level actions of root-domain DGs go under '*'."""
    unplaced: tuple[Unplaced, ...] = ()

    def all_actions(self) -> Iterator[Action]:
        """Every action in a valid apply order: creates, adds, removes, deletes."""
        for kind in _APPLY_ORDER:
            for sub_cluster in self.actions:
                for action in self.actions[sub_cluster]:
                    if isinstance(action, kind):
                        yield action

    @property
    def is_empty(self) -> bool:
        return not any(self.actions.values())

    def added(self) -> int:
        """Instances this plan starts."""
        return sum(len(a.instances) for a in self.all_actions() if isinstance(a, AddInstances))

    def removed(self) -> int:
        """Instances this plan stops."""
        return sum(
            len(a.instance_ids) for a in self.all_actions() if isinstance(a, RemoveInstances)
        )

    def apply(self, dgs: Iterable[DeploymentGroup]) -> tuple[DeploymentGroup, ...]:
        """The Deployment Groups after this plan: input order kept, new DGs appended."""
        by_id: dict[str, DeploymentGroup] = {}
        for dg in dgs:
            if dg.dg_id in by_id:
                raise ValueError(
                    f"DG id {dg.dg_id!r} appears twice in the input: ids must be unique"
                )
            by_id[dg.dg_id] = dg
        added: dict[str, list[Instance]] = {}
        removed: dict[str, set[str]] = {}
        deleted: set[str] = set()
        for action in self.all_actions():
            if isinstance(action, CreateDG):
                if action.dg.dg_id in by_id:
                    raise ValueError(f"plan creates DG {action.dg.dg_id!r}, which already exists")
                by_id[action.dg.dg_id] = action.dg
            elif isinstance(action, AddInstances):
                _known(by_id, action.dg_id)
                added.setdefault(action.dg_id, []).extend(action.instances)
            elif isinstance(action, RemoveInstances):
                _known(by_id, action.dg_id)
                removed.setdefault(action.dg_id, set()).update(action.instance_ids)
            else:
                _known(by_id, action.dg_id)
                deleted.add(action.dg_id)
        for dg_id in added.keys() | removed.keys():
            dg = by_id[dg_id]
            gone = removed.get(dg_id, set())
            kept = tuple(i for i in dg.instances if i.instance_id not in gone)
            if len(kept) != len(dg.instances) - len(gone):
                missing = sorted(gone - {i.instance_id for i in dg.instances})
                raise ValueError(f"plan removes unknown instances {missing} from DG {dg_id!r}")
            by_id[dg_id] = dg.with_instances(kept + tuple(added.get(dg_id, ())))
        for dg_id in deleted:
            if by_id[dg_id].instances:
                raise ValueError(f"plan deletes DG {dg_id!r}, which still has instances")
            del by_id[dg_id]
        return tuple(by_id.values())


def _known(by_id: Mapping[str, DeploymentGroup], dg_id: str) -> None:
    if dg_id not in by_id:
        raise ValueError(f"plan refers to DG {dg_id!r}, which the given state does not have")


def describe_plan(plan: PlacementPlan) -> list[str]:
    """One short line per action (and per unplaced request), for logs and `heteroscale status`."""
    lines = []
    for a in plan.all_actions():
        if isinstance(a, CreateDG):
            dg = a.dg
            lines.append(
                f"create {dg.dg_id} in {dg.level.value} {dg.domain} "
                f"(prefill {dg.prefill_gpu_type}, decode {dg.decode_gpu_type})"
            )
        elif isinstance(a, AddInstances):
            lines.append(f"add {len(a.instances)} {a.role.value} to {a.dg_id}")
        elif isinstance(a, RemoveInstances):
            lines.append(f"remove {len(a.instance_ids)} {a.role.value} from {a.dg_id} (soft)")
        elif isinstance(a, DeleteDG):
            lines.append(f"delete {a.dg_id} (soft)")
    for u in plan.unplaced:
        lines.append(f"unplaced {u.count} {u.role.value} of {u.service}: {u.reason.value}")
    return lines
