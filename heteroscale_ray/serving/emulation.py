"""Emulated GPU timing: a replica on a fake-GPU node behaves like its GPU type, not like the CPU.

All replicas of a laptop cluster share the same few cores, so adding replicas adds no real
capacity and an autoscaler would have nothing true to react to. Each replica therefore runs the
real (tiny) model and then waits out the remainder of the step time the roofline model
(`heteroscale_ray.perf`) gives for its GPU type and the service's model profile. A step whose
real compute is slower than its emulated time is counted (`overruns`), never hidden.

`time_scale` stretches emulated time (e.g. 5x) so demo step times sit well above the real
compute of the tiny model on a loaded 2-core machine.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from heteroscale_ray.config.gpus import DEFAULT_CATALOG, GpuType
from heteroscale_ray.perf import (
    ModelProfile,
    decode_step_time_s,
    flops_decode_step,
    flops_prefill,
    get_profile,
    prefill_time_s,
)

# "ray.serve" so the one-line notice lands in the replica's Serve log next to its requests.
logger = logging.getLogger("ray.serve")
T = TypeVar("T")


@dataclass(frozen=True)
class EmulationConfig:
    """`enabled=None` means auto: on when the node has no real NVIDIA device."""

    enabled: bool | None = None
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.time_scale <= 0:
            raise ValueError(f"time_scale must be > 0 (got {self.time_scale})")


def has_real_gpu() -> bool:
    """True when this process can see an NVIDIA device; Ray's fake GPUs leave none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "NoDevFiles"):
        return False
    return os.path.exists("/dev/nvidia0")


@dataclass
class StepTiming:
    real_s: float
    emulated_s: float  # after time_scale; 0 when emulation is off
    overrun: bool  # real compute took longer than the emulated step

    @property
    def wall_s(self) -> float:
        return max(self.real_s, self.emulated_s)


class EmulatedDevice:
    """Step-time oracle and pacing for one replica: its GPU type x model profile x time scale."""

    def __init__(
        self,
        gpu_type: str,
        model_profile: str,
        n_gpus: int = 1,
        config: EmulationConfig | None = None,
        gpu: GpuType | None = None,
        profile: ModelProfile | None = None,
    ) -> None:
        config = config or EmulationConfig()
        self.gpu = gpu or DEFAULT_CATALOG[gpu_type]
        self.profile = profile or get_profile(model_profile)
        self.n_gpus = n_gpus
        self.time_scale = config.time_scale
        self.enabled = (not has_real_gpu()) if config.enabled is None else config.enabled
        self.overruns = 0
        if self.enabled:
            logger.info(
                "emulated %s timing (%s, n_gpus=%d, time_scale=%g)",
                self.gpu.name,
                self.profile.name,
                n_gpus,
                self.time_scale,
            )

    @property
    def peak_flops(self) -> float:
        """Peak FLOP/s of the emulated device(s): the compute-fraction denominator."""
        return self.gpu.tflops * 1e12 * self.n_gpus

    def prefill_s(self, n_tokens: int, cached_tokens: int) -> float:
        if not self.enabled:
            return 0.0
        t = prefill_time_s(self.profile, self.gpu, n_tokens, self.n_gpus, cached_tokens)
        return t * self.time_scale

    def decode_step_s(self, batch: int, context_tokens: int) -> float:
        if not self.enabled or batch == 0:
            return 0.0
        t = decode_step_time_s(self.profile, self.gpu, batch, context_tokens, self.n_gpus)
        return t * self.time_scale

    def prefill_flops(self, n_tokens: int, cached_tokens: int) -> float:
        """FLOPs the emulated model spends (what a real GPU's SM activity would reflect)."""
        return flops_prefill(self.profile, n_tokens, cached_tokens)

    def decode_flops(self, batch: int, context_tokens: int) -> float:
        return flops_decode_step(self.profile, batch, context_tokens)

    async def run(
        self, fn: Callable[[], T], emulated_of: Callable[[T], float]
    ) -> tuple[T, StepTiming]:
        """Run `fn` in a worker thread, then sleep out the emulated time `emulated_of(result)`.

        The event loop stays free for new requests and streaming while the step "runs".
        """
        t0 = time.perf_counter()
        result = await asyncio.to_thread(fn)
        real = time.perf_counter() - t0
        emulated = emulated_of(result)
        overrun = self.enabled and real > emulated
        if overrun:
            self.overruns += 1
        elif emulated > real:
            await asyncio.sleep(emulated - real)
        return result, StepTiming(real, emulated, overrun)
