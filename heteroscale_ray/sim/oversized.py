"""Requests no instance of their service can hold: rejected at the ingress, as the real one is.

The real ingress answers 400 when a prompt and its output exceed one decode replica's KV
memory (`serving/api_requests.check_context`), and a prefill instance must hold the prompt's
KV while it computes it. The simulator had served such requests anyway, reserving a whole
decode instance for each and stepping its batch at that context: 60 prompts of 900k tokens
among 30k requests (dense-70b; H20 x4 holds 624k tokens) held 7x the GPU-hours and made
every sequence batched with them late (53% attainment where 100% was reachable). They are
rejected before anything sizes or routes them, and count as requests that missed their SLO.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from heteroscale_ray.config import GpuCatalog, RoleSpec, ServiceSpec
from heteroscale_ray.perf.constants import DEFAULT_CONSTANTS, PerfConstants
from heteroscale_ray.perf.memory import ModelDoesNotFitError, kv_capacity_tokens
from heteroscale_ray.perf.profiles import ModelProfile, get_profile
from heteroscale_ray.traces import Trace


@dataclass(frozen=True)
class KvRoom:
    """Tokens of KV one instance of each role holds (the roomiest of the role's GPU types):
    a prompt must fit a prefill instance, a prompt and its output a decode instance."""

    prefill: int
    decode: int

    @staticmethod
    def of(
        spec: ServiceSpec,
        catalog: GpuCatalog,
        const: PerfConstants,
        profiles: Mapping[str, ModelProfile] | None = None,
    ) -> KvRoom:
        profile = get_profile(spec.model, dict(profiles) if profiles else None)

        def room(role: RoleSpec) -> int:
            sizes = [0]
            for gpu in role.gpu_types:
                try:
                    sizes.append(
                        kv_capacity_tokens(profile, catalog[gpu], role.gpus_per_instance, const)
                    )
                except ModelDoesNotFitError:
                    continue  # that type holds no instance of the model: it cannot serve
            return max(sizes)

        return KvRoom(room(spec.prefill), room(spec.decode))

    def oversized(self, trace: Trace) -> np.ndarray:
        """Which requests of `trace` fit no instance (one bool per request, in trace order)."""
        prompt = np.asarray(trace.input_tokens, dtype=np.int64)
        output = np.asarray(trace.output_tokens, dtype=np.int64)
        return (prompt > self.prefill) | (prompt + output > self.decode)


@dataclass(frozen=True)
class Admitted:
    """The traces as the ingress admits them, and what it rejected per service."""

    traces: dict[str, Trace]
    rooms: dict[str, KvRoom]
    keep: dict[str, np.ndarray]  # per service, in its trace's order: admitted

    @property
    def rejected(self) -> dict[str, int]:
        return {name: int(len(k) - k.sum()) for name, k in self.keep.items()}


def admit(
    specs: Sequence[ServiceSpec],
    traces: Mapping[str, Trace],
    catalog: GpuCatalog,
    const: PerfConstants,
    profiles: Mapping[str, ModelProfile] | None = None,
) -> Admitted:
    """Each service's trace without the requests no instance of it can hold.

    Raises ValueError naming the service when none of its requests fit, since there is then
    nothing to replay."""
    out: dict[str, Trace] = {}
    rooms: dict[str, KvRoom] = {}
    keep: dict[str, np.ndarray] = {}
    for spec in specs:
        trace = traces[spec.name]
        room = KvRoom.of(spec, catalog, const, profiles)
        fits = ~room.oversized(trace)
        if len(fits) and not fits.any():
            raise ValueError(
                f"no request of service {spec.name!r} fits one of its instances (prompt <= "
                f"{room.prefill:,} tokens of prefill KV, prompt + output <= {room.decode:,} of "
                "decode KV): choose GPU types with more memory or more GPUs per instance"
            )
        out[spec.name] = trace if fits.all() else trace.select(fits)
        rooms[spec.name], keep[spec.name] = room, fits
    return Admitted(out, rooms, keep)


def admitted_requests(spec: ServiceSpec, trace: Trace, catalog: GpuCatalog) -> Trace:
    """One service's trace without the requests no instance of it holds, at the default
    performance constants: what `tune` and `pd-sweep` draw lengths from, as replay serves."""
    return admit([spec], {spec.name: trace}, catalog, DEFAULT_CONSTANTS).traces[spec.name]
