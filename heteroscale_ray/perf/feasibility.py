"""What `heteroscale validate` checks past the schema: that each service can be served at all.

A services file can be well-formed and still unservable: a model that fits no GPU type of a
role, an SLO below what one instance does for a single one-token request, or a topology with
no host a role's instances fit on. Each of these validated before, and then a replay scored 0%
(or refused to start, or blamed the fleet's size). These checks use the same roofline model
as the simulator and the emulated replicas, so what passes here is servable there.
"""

from __future__ import annotations

from heteroscale_ray.config import Role, ServicesConfig, ServiceSpec, TopologySpec
from heteroscale_ray.perf.capacity import SIZING_TBT_MARGIN, decode_capacity
from heteroscale_ray.perf.instance_kind import InstanceKind
from heteroscale_ray.perf.memory import ModelDoesNotFitError
from heteroscale_ray.perf.profiles import get_profile


def service_problems(
    services: ServicesConfig, topology: TopologySpec | None = None, only: str | None = None
) -> list[str]:
    """One sentence per problem, naming the service, the role and the fix; [] when servable.
    `only`: of that service alone (and the topology's GPU types)."""
    specs = [s for s in services.services if only is None or s.name == only]
    out: list[str] = []
    for spec in specs:
        for role in Role:
            out += _role_problems(services, spec, role)
    if topology is not None:
        out += _topology_problems(services, topology, specs)
    return out


def _role_problems(services: ServicesConfig, spec: ServiceSpec, role: Role) -> list[str]:
    rs = spec.role(role)
    where = f"service {spec.name!r} {role.value}"
    kinds: list[tuple[str, InstanceKind]] = []
    for gpu in rs.gpu_types:
        try:
            kind = InstanceKind.build(
                get_profile(spec.model), services.catalog[gpu], rs.gpus_per_instance
            )
        except ModelDoesNotFitError:
            continue
        kinds.append((gpu, kind))
    if not kinds:
        return [
            f"{where}: {spec.model} does not fit on {rs.gpus_per_instance} GPU(s) of "
            f"{', '.join(rs.gpu_types)}: raise gpus_per_instance or add a GPU type with more memory"
        ]
    if role is Role.PREFILL:
        fastest = min(kind.prefill_one(1, 0)[0] for _, kind in kinds)
        if fastest >= spec.slo.ttft_s:
            return [
                f"{where}: one 1-token prompt takes {fastest * 1000:.1f} ms on the fastest of "
                f"{', '.join(g for g, _ in kinds)}, at or above the {spec.slo.ttft_s * 1000:g} ms "
                "TTFT SLO: raise slo.ttft_s"
            ]
    else:
        # the budget `replay` sizes with, so what passes here is not refused there
        budget = SIZING_TBT_MARGIN
        if not any(decode_capacity(k, spec.slo.tbt_s, 1.0, 2.0, budget).feasible for _, k in kinds):
            return [
                f"{where}: no GPU type of {', '.join(g for g, _ in kinds)} steps even one "
                f"sequence within {budget:.0%} of the {spec.slo.tbt_s * 1000:g} ms TBT SLO: raise "
                "slo.tbt_s or gpus_per_instance, or use a faster card"
            ]
    return []


def _topology_problems(
    services: ServicesConfig, topology: TopologySpec, specs: list[ServiceSpec]
) -> list[str]:
    out: list[str] = []
    unknown = sorted(t for t in topology.gpu_types() if t not in services.catalog)
    if unknown:
        out.append(
            f"the topology's hosts name GPU type(s) {unknown} the catalog lacks: use one of "
            f"{services.catalog.names()} or add them under 'gpus' in the services file"
        )
    largest: dict[str, int] = {}
    for *_, host in topology.hosts():
        largest[host.gpu_type] = max(largest.get(host.gpu_type, 0), host.gpus)
    for spec in specs:
        for role in Role:
            rs = spec.role(role)
            if not any(largest.get(t, 0) >= rs.gpus_per_instance for t in rs.gpu_types):
                have = {t: largest[t] for t in rs.gpu_types if t in largest}
                out.append(
                    f"service {spec.name!r} {role.value}: no host of {', '.join(rs.gpu_types)} "
                    f"holds {rs.gpus_per_instance} GPU(s) for one instance (largest: {have or 'none'}): "
                    "lower gpus_per_instance or add such hosts"
                )
    return out
