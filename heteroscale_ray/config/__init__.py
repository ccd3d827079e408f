"""Configuration: pydantic models loaded from YAML and validated once, at the edge."""

from heteroscale_ray.config.gpus import BUILTIN_GPUS, DEFAULT_CATALOG, GpuCatalog, GpuType
from heteroscale_ray.config.loader import (
    ConfigError,
    load_services,
    load_topology,
    parse_model,
    parse_yaml_text,
    write_schemas,
)
from heteroscale_ray.config.policy import (
    DemandSpec,
    DynamicRatio,
    KvGuard,
    LatencyGuard,
    LatencyTier,
    PeriodicEntry,
    PolicySpec,
    TunedAt,
)
from heteroscale_ray.config.ratio import PdRatio, parse_pd_ratio
from heteroscale_ray.config.services import (
    AffinityLevel,
    Role,
    RoleSpec,
    ServicesConfig,
    ServiceSpec,
    Slo,
)
from heteroscale_ray.config.topology import (
    BigPodSpec,
    HostSpec,
    LeafSpec,
    MiniPodSpec,
    TopologySpec,
    synthetic_topology,
    topology_from_ray_nodes,
)

__all__ = [
    "BUILTIN_GPUS",
    "DEFAULT_CATALOG",
    "AffinityLevel",
    "BigPodSpec",
    "ConfigError",
    "DemandSpec",
    "DynamicRatio",
    "GpuCatalog",
    "GpuType",
    "HostSpec",
    "KvGuard",
    "LatencyGuard",
    "LatencyTier",
    "LeafSpec",
    "MiniPodSpec",
    "PdRatio",
    "PeriodicEntry",
    "PolicySpec",
    "Role",
    "RoleSpec",
    "ServiceSpec",
    "ServicesConfig",
    "Slo",
    "TopologySpec",
    "TunedAt",
    "load_services",
    "load_topology",
    "parse_model",
    "parse_pd_ratio",
    "parse_yaml_text",
    "synthetic_topology",
    "topology_from_ray_nodes",
    "write_schemas",
]
