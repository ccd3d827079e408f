"""What prefill and decode replicas share: identity, emulated device, metrics and reporting.

A replica learns who it is from its deployment arguments (`ReplicaSpec`: service, DG, role,
GPU type, model) and where it runs from Ray (node id and labels), and pushes a `ReplicaStats`
to the metrics hub (in the routing-table actor) about once a second so the control plane polls
one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from heteroscale_ray.serving.emulation import EmulatedDevice, EmulationConfig
from heteroscale_ray.serving.metrics import RayMetricsExporter, ReplicaMetrics
from heteroscale_ray.serving.model import ModelConfig
from heteroscale_ray.serving.replica_stats import ReplicaStats

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaSpec:
    """Deployment arguments of one role of one DG; identical for all its replicas."""

    service: str
    dg_id: str
    app_name: str
    role: str  # "prefill" | "decode"
    gpu_type: str
    gpus_per_instance: int = 1
    model_profile: str = "dense-8b"
    engine: ModelConfig = field(default_factory=ModelConfig)
    emulation: EmulationConfig = field(default_factory=EmulationConfig)
    report_period_s: float = 1.0


def _flat_labels(labels: dict[str, Any]) -> dict[str, str]:
    """Ray returns label values as str or list[str] depending on the API; normalise to str."""
    out = {}
    for k, v in labels.items():
        out[k] = v[0] if isinstance(v, list) and len(v) == 1 else str(v)
    return out


class ReplicaBase:
    """Mixin for the Serve deployment classes; call `_setup` from `__init__`."""

    spec: ReplicaSpec
    device: EmulatedDevice
    metrics: ReplicaMetrics

    def _setup(self, spec: ReplicaSpec) -> None:
        import ray
        from ray import serve

        self.spec = spec
        try:
            self.replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside Serve (unit tests)
            self.replica_id = f"local-{id(self):x}"
        ctx = ray.get_runtime_context() if ray.is_initialized() else None
        self.node_id = ctx.get_node_id() if ctx else ""
        self.node_labels = _flat_labels(ctx.get_node_labels()) if ctx else {}
        self.device = EmulatedDevice(
            spec.gpu_type, spec.model_profile, spec.gpus_per_instance, spec.emulation
        )
        identity = {
            "replica_id": self.replica_id,
            "app_name": spec.app_name,
            "service": spec.service,
            "dg_id": spec.dg_id,
            "role": spec.role,
            "gpu_type": spec.gpu_type,
            "node_id": self.node_id,
            "node_labels": self.node_labels,
            "emulated": self.device.enabled,
            "time_scale": self.device.time_scale,
        }
        self.metrics = ReplicaMetrics(identity, self.device.peak_flops)
        self._exporter: RayMetricsExporter | None = None
        self._table: Any = None
        self._reporter: asyncio.Task[None] | None = None

    def _start_reporter(self) -> None:
        """Start the stats push loop; must run inside the replica's event loop."""
        if self._reporter is None:
            self._reporter = asyncio.get_running_loop().create_task(self._report_loop())

    def _gauges(self) -> dict[str, Any]:
        """Role-specific instantaneous values (queue, running, KV); overridden by each role."""
        return {"emulation_overruns": self.device.overruns}

    def stats(self) -> ReplicaStats:
        """Current `ReplicaStats`: what the control plane polls."""
        return self.metrics.snapshot(**self._gauges())

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve custom-metrics hook: the numeric signals an autoscaling policy may use."""
        s = self.stats()
        out = {
            "prefill_tps": float(s.prefill_tps),
            "decode_tps": float(s.decode_tps),
            "busy_fraction": float(s.busy_fraction),
            "compute_fraction": float(s.compute_fraction),
            "kv_use": float(s.kv_use),
            "queue_length": float(s.queue_length),
            "running": float(s.running),
        }
        optional = {
            "ttft_p99": s.ttft_p99,
            "tbt_p99": s.tbt_p99,
            "prefill_queue_s": s.prefill_queue_s,
            "prefill_queue_peak_s": s.prefill_queue_peak_s,
            "ttft_wait_p99": s.ttft_wait_p99,
            "ttft_service_p99": s.ttft_service_p99,
            "running_mean": s.running_mean,
            "step_mean_s": s.step_mean_s,
            "step_batch_mean": s.step_batch_mean,
            "step_context_mean": s.step_context_mean,
            "step_token_mean_s": s.step_token_mean_s,
        }
        out.update({k: float(v) for k, v in optional.items() if v is not None})
        return out

    async def _report_loop(self) -> None:
        from heteroscale_ray.serving.routing_table import get_routing_table

        while True:
            await asyncio.sleep(self.spec.report_period_s)
            s = self.stats()
            try:  # the control plane's signal first, independent of the exporter below
                if self._table is None:
                    self._table = get_routing_table(create=False)
                await self._table.report_stats.remote(self.replica_id, s)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # table restarting or gone: retry next period
                logger.debug("stats report failed: %s", e)
                self._table = None
            try:
                if self._exporter is None:
                    self._exporter = RayMetricsExporter()
                self._exporter.export(s)
            except Exception as e:  # metrics agent missing: the hub report above still counts
                logger.debug("Ray metrics export failed: %s", e)

    async def _stop_reporter(self) -> None:
        if self._reporter is not None:
            self._reporter.cancel()
            with contextlib.suppress(BaseException):
                await self._reporter
        if self._table is not None:
            with contextlib.suppress(Exception):
                await self._table.forget_replica.remote(self.replica_id)
