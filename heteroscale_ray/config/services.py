"""Service specs: what each LLM service needs (model, SLOs, GPU types per role, affinity); its
autoscaling policy is in policy.py, the P/D ratio type in ratio.py.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from heteroscale_ray.config.gpus import GpuCatalog, GpuType
from heteroscale_ray.config.policy import PolicySpec
from heteroscale_ray.config.ratio import PdRatio, parse_pd_ratio, unquoted_ratio

DEFAULT_MIGRATION_LIMIT = 3  # a request's moves after replica failures (ServiceSpec field)
# The performance model's built-in profiles (perf/profiles.py; a test keeps the two in step):
# a service naming another validated, then every replay of it failed with a KeyError.
MODEL_PROFILES = ("dense-8b", "dense-70b", "moe-a3b", "tiny-cpu")


class Role(str, Enum):
    PREFILL = "prefill"
    DECODE = "decode"


class AffinityLevel(str, Enum):
    """Network domain a Deployment Group must fit in: one S1 mini-pod, one S2 big-pod, or anywhere."""

    S1 = "S1"
    S2 = "S2"
    NONE = "none"


class Slo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    ttft_s: float = Field(gt=0, description="Time-to-first-token SLO (p99), seconds.")
    tbt_s: float = Field(gt=0, description="Time-between-tokens SLO (p99), seconds.")


class RoleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    gpu_types: list[str] = Field(
        min_length=1,
        description="GPU types this role may use, most preferred first; later ones are fallbacks.",
    )
    gpus_per_instance: int = Field(default=1, ge=1, le=64, description="GPUs one instance uses.")
    min_instances: int = Field(default=1, ge=0, description="Never scale this role below this.")
    max_instances: int = Field(default=1000, ge=1, description="Never scale this role above this.")

    @model_validator(mode="after")
    def _bounds(self) -> RoleSpec:
        if self.min_instances > self.max_instances:
            raise ValueError(
                f"min_instances ({self.min_instances}) exceeds max_instances ({self.max_instances}): "
                "lower min_instances or raise max_instances"
            )
        return self


class ServiceSpec(BaseModel):
    """One LLM service served with prefill/decode disaggregation."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(
        pattern=r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$", description="Lowercase DNS-style name."
    )
    priority: int = Field(
        default=0, description="Higher is more important; served first when capacity is short."
    )
    model: str = Field(
        default="dense-8b",
        description=f"Model profile for the performance model: {', '.join(MODEL_PROFILES)}.",
    )
    slo: Slo
    pd_ratio: str = Field(description="Prefill:decode instance ratio, e.g. '1:3'.")
    prefill: RoleSpec
    decode: RoleSpec
    affinity: AffinityLevel = Field(
        default=AffinityLevel.S1,
        description="Domain a Deployment Group must fit in: S1, S2 or none.",
    )
    dg_max_instances: int | None = Field(
        default=None,
        ge=2,
        description="Largest Deployment Group (prefill + decode instances); beyond it a new DG opens.",
    )
    migration_limit: int = Field(
        default=DEFAULT_MIGRATION_LIMIT,
        ge=0,
        le=20,
        description=(
            "How many times one request may move to another replica or DG when the one "
            "serving it fails (prefill retried, decode resumed mid-stream); after that the "
            "client gets one error. 0 turns migration off."
        ),
    )
    policy: PolicySpec

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v not in MODEL_PROFILES:
            raise ValueError(f"unknown model profile {v!r}: use one of {', '.join(MODEL_PROFILES)}")
        return v

    @field_validator("pd_ratio", mode="before")
    @classmethod
    def _quoted(cls, v: object) -> object:
        return unquoted_ratio(v)

    @field_validator("pd_ratio")
    @classmethod
    def _ratio(cls, v: str) -> str:
        parse_pd_ratio(v)
        return v

    @model_validator(mode="after")
    def _ratio_within_dynamic_bounds(self) -> ServiceSpec:
        dyn = self.policy.dynamic_ratio
        lo, hi = dyn.bounds()
        p, d = self.ratio
        if dyn.enabled and not lo <= p / d <= hi:
            raise ValueError(
                f"pd_ratio {self.pd_ratio!r} lies outside policy.dynamic_ratio's min_ratio.."
                f"max_ratio ({dyn.min_ratio}..{dyn.max_ratio}): widen them or change pd_ratio"
            )
        return self

    @property
    def ratio(self) -> PdRatio:
        return parse_pd_ratio(self.pd_ratio)

    def placed_at(self, ratio: PdRatio) -> ServiceSpec:
        """This service as placement sees it when its DGs take another shape (a dynamic or
        demand-driven ratio, a baseline's own). A PdRatio is valid by construction; the
        dynamic ratio's bounds constrain the policy, not the shape of a DG."""
        return self if ratio == self.ratio else self.model_copy(update={"pd_ratio": str(ratio)})

    def role(self, role: Role) -> RoleSpec:
        return self.prefill if role is Role.PREFILL else self.decode


class ServicesConfig(BaseModel):
    """Top level of services.yaml: the services, plus optional GPU catalog additions."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    gpus: list[GpuType] = Field(
        default_factory=list, description="GPU types to add to or replace in the built-in catalog."
    )
    services: list[ServiceSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> ServicesConfig:
        names = [s.name for s in self.services]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate service names {dupes}: give each service a unique name")
        catalog = self.catalog
        for s in self.services:
            for role in Role:
                catalog.check_known(
                    s.role(role).gpu_types,
                    f"service {s.name!r} {role.value}.gpu_types",
                    " or add it under 'gpus'",
                )
        return self

    @property
    def catalog(self) -> GpuCatalog:
        return GpuCatalog.with_overrides(self.gpus)

    def by_name(self) -> dict[str, ServiceSpec]:
        return {s.name: s for s in self.services}
