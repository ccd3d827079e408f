"""Efficiency and network constants of the roofline model, each with its source or our reason.

The paper publishes none of these; they are the knobs a calibration run would fit. Defaults are
round numbers within commonly reported ranges, chosen so the model reproduces the paper's
qualitative facts: H20 wins decode, L20 is the cheap prefill card, and KV transfer slows as the
prefill and decode instances share only a higher switch (~20% lost at the S2 level).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from heteroscale_ray.config.loader import load_yaml


class PerfConstants(BaseModel):
    """Overridable constants; units are seconds, fractions and GB/s (1 GB = 1e9 bytes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefill_mfu: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Fraction of peak FLOP/s prefill achieves (MFU). Our assumption: large "
        "prefill GEMMs on Hopper/Ada commonly reach 40-60% of dense BF16 peak.",
    )
    decode_mfu: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="MFU of a decode step when it is compute-bound (large batch on a "
        "compute-poor card such as H20). Our assumption, same as prefill.",
    )
    mem_bw_efficiency: float = Field(
        default=0.7,
        gt=0,
        le=1,
        description="Fraction of peak memory bandwidth a memory-bound step achieves (weights "
        "and KV streamed once per step). Our assumption: 60-80% is typical for decode kernels.",
    )
    decode_step_overhead_s: float = Field(
        default=0.005,
        ge=0,
        description="Fixed cost of one decode step: kernel launches, scheduling, sampling. "
        "Our assumption (a few ms per step is typical without CUDA graphs tuned to the batch).",
    )
    prefill_overhead_s: float = Field(
        default=0.01,
        ge=0,
        description="Fixed cost of one prefill batch: scheduling, batching, first-token "
        "sampling, KV block bookkeeping. Our assumption.",
    )
    memory_reserve_fraction: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="Device memory held back for activations, CUDA graphs and fragmentation; "
        "mirrors vLLM's default gpu_memory_utilization=0.9.",
    )
    max_running_seqs: int = Field(
        default=256,
        gt=0,
        description="Cap on sequences in one decode batch; vLLM's long-standing default "
        "max_num_seqs=256.",
    )
    host_link_efficiency: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Fraction of the GPU's intra-host link (NVLink or PCIe, GpuType."
        "interconnect_gbps) a KV copy achieves between GPUs of one host. Our assumption.",
    )
    nic_gbps: float = Field(
        default=50.0,
        gt=0,
        description="RDMA NIC bandwidth per GPU, GB/s: 400 Gb/s, one ConnectX-7 per GPU as in "
        "NVIDIA DGX H100 (8 x 400 Gb/s compute fabric); assumed for every GPU type.",
    )
    s0_bw_fraction: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Achieved share of NIC line rate when both ends sit under one S0 (leaf) "
        "switch: non-blocking, minus RoCE/verbs overhead. Our assumption.",
    )
    s1_bw_fraction: float = Field(
        default=0.85,
        gt=0,
        le=1,
        description="Share of line rate when the first shared switch is an S1 (mini-pod "
        "spine): mild contention on leaf uplinks. Our assumption.",
    )
    s2_bw_fraction: float = Field(
        default=0.72,
        gt=0,
        le=1,
        description="Share of line rate when only an S2 (big-pod) switch is shared: 0.8 x the "
        "S0 value, the ~20% bandwidth the paper says topology-blind placement loses.",
    )
    cross_s2_bw_fraction: float = Field(
        default=0.45,
        gt=0,
        le=1,
        description="Share of line rate across big-pods (through the core layer). Our "
        "assumption: cores oversubscribed about 2:1, the reason DGs stay inside one S2.",
    )
    kv_transfer_setup_s: float = Field(
        default=0.0005,
        ge=0,
        description="Fixed cost of one KV handoff: block-table exchange and RDMA work-request "
        "posting on a warm connection. Our assumption.",
    )

    @model_validator(mode="after")
    def _levels_degrade(self) -> PerfConstants:
        levels = [
            ("s0_bw_fraction", self.s0_bw_fraction),
            ("s1_bw_fraction", self.s1_bw_fraction),
            ("s2_bw_fraction", self.s2_bw_fraction),
            ("cross_s2_bw_fraction", self.cross_s2_bw_fraction),
        ]
        for (hi_name, hi), (lo_name, lo) in zip(levels, levels[1:], strict=False):
            if lo > hi:
                raise ValueError(
                    f"{lo_name} ({lo}) exceeds {hi_name} ({hi}): sharing only a higher switch "
                    "cannot be faster; make the fractions non-increasing up the tree"
                )
        return self


DEFAULT_CONSTANTS = PerfConstants()


def load_perf_constants(path: str | Path) -> PerfConstants:
    """Constants from a YAML mapping of field overrides; omitted fields keep their defaults."""
    return load_yaml(path, PerfConstants)
