"""Deployment Groups: the unit the pre-scheduler creates, grows, shrinks and deletes.

A DG keeps prefill and decode instances of one service inside one network domain (an S1,
an S2, or the root for affinity ``none``). Within a DG each role uses exactly one GPU type,
so a DG maps to one Serve deployment per role pinned by a label selector; a fallback GPU
type means another DG. Ids are derived from what exists, never from a global counter, so
the same state always yields the same ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from heteroscale_ray.config.services import AffinityLevel, Role


@dataclass(frozen=True, slots=True)
class Instance:
    """One prefill or decode instance: a set of GPUs on one host."""

    instance_id: str
    role: Role
    host: str
    gpus: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class DeploymentGroup:
    """Prefill and decode instances of one service in one network domain."""

    dg_id: str
    service: str
    domain: str
    level: AffinityLevel
    prefill_gpu_type: str
    decode_gpu_type: str
    instances: tuple[Instance, ...] = ()
    draining: bool = False

    def gpu_type(self, role: Role) -> str:
        return self.prefill_gpu_type if role is Role.PREFILL else self.decode_gpu_type

    def count(self, role: Role) -> int:
        return sum(1 for inst in self.instances if inst.role is role)

    @property
    def size(self) -> int:
        return len(self.instances)

    def with_instances(self, instances: tuple[Instance, ...]) -> DeploymentGroup:
        return replace(self, instances=instances)


def dg_id_for(service: str, k: int) -> str:
    return f"{service}-dg{k}"


def instance_id_for(dg_id: str, role: Role, k: int) -> str:
    return f"{dg_id}-{role.value[0]}{k}"


def taken_suffixes(prefix: str, used_ids: Iterable[str]) -> set[int]:
    """The k of every id among ``used_ids`` spelled ``prefix + str(k)``."""
    taken = set()
    for ident in used_ids:
        if ident.startswith(prefix):
            tail = ident[len(prefix) :]
            if tail.isdigit():
                taken.add(int(tail))
    return taken


def smallest_unused(prefix: str, used_ids: Iterable[str]) -> int:
    """Smallest k >= 0 such that ``prefix + str(k)`` is not among ``used_ids``."""
    taken = taken_suffixes(prefix, used_ids)
    k = 0
    while k in taken:
        k += 1
    return k


def next_dg_id(service: str, used_ids: Iterable[str]) -> str:
    """``{service}-dg{k}`` with k the smallest integer no DG of the service uses."""
    return dg_id_for(service, smallest_unused(f"{service}-dg", used_ids))


def dg_numbers(dg_ids: Iterable[str]) -> dict[str, set[int]]:
    """Service -> the k of every ``{service}-dg{k}`` id, in one pass over all ids."""
    numbers: dict[str, set[int]] = {}
    for dg_id in dg_ids:
        head, sep, tail = dg_id.rpartition("-dg")
        if sep and tail.isdigit():
            numbers.setdefault(head, set()).add(int(tail))
    return numbers


def role_counts(dgs: Iterable[DeploymentGroup], service: str) -> tuple[int, int]:
    """(prefill, decode) instances a service holds across all its DGs, draining ones included."""
    prefill = decode = 0
    for dg in dgs:
        if dg.service != service:
            continue
        for inst in dg.instances:
            if inst.role is Role.PREFILL:
                prefill += 1
            else:
                decode += 1
    return prefill, decode
