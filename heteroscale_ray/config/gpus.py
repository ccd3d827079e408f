"""GPU catalog: the hardware facts the policy, placement and performance model share.

Built-in values are dense BF16 (no sparsity) from public spec sheets; prices are
notional relative hourly costs (H20 = 1.0) because real prices differ by provider.
Override or extend the catalog in YAML: a top-level ``gpus:`` list in the services file
(``ServicesConfig.gpus``), entries in the same fields as ``GpuType``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class GpuType(BaseModel):
    """One GPU model as seen by the scheduler and the performance model."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(description="Catalog key used in topology and service specs, e.g. 'H20'.")
    tflops: float = Field(gt=0, description="Dense BF16 peak, TFLOP/s (no sparsity).")
    memory_gb: float = Field(gt=0, description="Device memory, GB.")
    mem_bw_tbps: float = Field(gt=0, description="Device memory bandwidth, TB/s.")
    interconnect: Literal["nvlink", "pcie"] = Field(
        description="Intra-host GPU link: 'nvlink' or 'pcie'."
    )
    interconnect_gbps: float = Field(
        gt=0, description="Intra-host GPU-to-GPU bandwidth per GPU, GB/s."
    )
    cost_per_hour: float = Field(
        gt=0,
        description="Relative hourly cost of one GPU (H20 = 1.0). Reports say which values they used.",
    )
    note: str = Field(default="", description="Free text, e.g. the spec-sheet source.")


# Sources: NVIDIA data sheets (H100/H800/H200/A100/L40S/B200), public H20/L20 specs as listed in
# ../shared/docs/architecture.md. Relative costs: our own notional numbers, roughly tracking
# 2025 cloud list prices per GPU-hour; override them in YAML for a real cost study.
BUILTIN_GPUS: tuple[GpuType, ...] = (
    GpuType(
        name="H100",
        tflops=989,
        memory_gb=80,
        mem_bw_tbps=3.35,
        interconnect="nvlink",
        interconnect_gbps=900,
        cost_per_hour=2.6,
        note="H100 SXM",
    ),
    GpuType(
        name="H800",
        tflops=989,
        memory_gb=80,
        mem_bw_tbps=3.35,
        interconnect="nvlink",
        interconnect_gbps=400,
        cost_per_hour=2.4,
        note="H800 SXM",
    ),
    GpuType(
        name="H200",
        tflops=989,
        memory_gb=141,
        mem_bw_tbps=4.8,
        interconnect="nvlink",
        interconnect_gbps=900,
        cost_per_hour=3.2,
        note="H200 SXM",
    ),
    GpuType(
        name="H20",
        tflops=148,
        memory_gb=96,
        mem_bw_tbps=4.0,
        interconnect="nvlink",
        interconnect_gbps=900,
        cost_per_hour=1.0,
        note="bandwidth-rich, compute-poor: a decode card",
    ),
    GpuType(
        name="L20",
        tflops=119,
        memory_gb=48,
        mem_bw_tbps=0.86,
        interconnect="pcie",
        interconnect_gbps=64,
        cost_per_hour=0.55,
        note="PCIe; cheap compute",
    ),
    GpuType(
        name="A100",
        tflops=312,
        memory_gb=80,
        mem_bw_tbps=2.0,
        interconnect="nvlink",
        interconnect_gbps=600,
        cost_per_hour=1.5,
        note="A100 SXM 80GB",
    ),
    GpuType(
        name="L40S",
        tflops=362,
        memory_gb=48,
        mem_bw_tbps=0.86,
        interconnect="pcie",
        interconnect_gbps=64,
        cost_per_hour=0.9,
        note="PCIe",
    ),
    GpuType(
        name="B200",
        tflops=2250,
        memory_gb=180,
        mem_bw_tbps=8.0,
        interconnect="nvlink",
        interconnect_gbps=1800,
        cost_per_hour=5.0,
        note="B200",
    ),
)


class GpuCatalog(BaseModel):
    """GPU types by name; starts from the built-ins, YAML entries add or replace."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    gpus: dict[str, GpuType] = Field(default_factory=lambda: {g.name: g for g in BUILTIN_GPUS})

    @model_validator(mode="after")
    def _names_match_keys(self) -> GpuCatalog:
        for key, gpu in self.gpus.items():
            if key != gpu.name:
                raise ValueError(
                    f"catalog key {key!r} differs from its name {gpu.name!r}: use the same string for both"
                )
        return self

    @classmethod
    def with_overrides(cls, extra: list[GpuType]) -> GpuCatalog:
        merged = {g.name: g for g in BUILTIN_GPUS}
        merged.update({g.name: g for g in extra})
        return cls(gpus=merged)

    def __getitem__(self, name: str) -> GpuType:
        try:
            return self.gpus[name]
        except KeyError:
            known = ", ".join(sorted(self.gpus))
            raise KeyError(f"unknown GPU type {name!r}; known types: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.gpus

    def names(self) -> list[str]:
        return sorted(self.gpus)

    def check_known(self, gpu_types: Iterable[str], where: str, hint: str = "") -> None:
        """Raise ValueError naming the first of ``gpu_types`` this catalog does not have.

        The one catalog check for configured GPU types; ``where`` says what names them (e.g.
        "service 'chat' prefill.gpu_types"), ``hint`` is appended to the fix.
        """
        for gpu in gpu_types:
            if gpu not in self.gpus:
                raise ValueError(
                    f"{where} names unknown GPU {gpu!r}: use one of {self.names()}{hint}"
                )


DEFAULT_CATALOG = GpuCatalog()
