"""The demo's fixed scenario: fleet, service, serving options and the load curve.

Two S1 mini-pods under one S2, each with one H20 and one L20 host of 4 fake GPUs (a mixed
fleet, the paper's H20/L20 pairing). One service: prefill on L20, decode on H20 (1:2 is only
the first DG's shape), DGs of at most 6 instances so the peak needs a second DG. It scales
with `signal: demand`: each role on its own arriving work over what one instance carries,
learned from the replicas' reports with the roofline model as the prior. The emulated GPUs run
TIME_SCALE x slower than their spec sheet (so a 2-core laptop can saturate them), which the
prior does not know: the learned scales (about 1/TIME_SCALE) are the demo's evidence that the
control plane calibrates itself. Prompts are long and outputs short, so prefill is the role
that runs out first. The load is a rise-and-fall day compressed to a few minutes; with the
Azure conversation trace available, its per-minute arrival counts modulate that envelope so
the curve carries real burstiness.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from heteroscale_ray.config import ServicesConfig, TopologySpec, parse_model, parse_yaml_text

SERVICE = "chat"
OUTPUT_TOKENS = 32
PROMPT_BYTES = 400  # the byte tokenizer makes this ~400 prompt tokens (engine max_context 512)
TIME_SCALE = 4.0  # emulated step times x this: the learned capacity should come out near 1/4

TOPOLOGY = {
    "big_pods": [
        {
            "name": "pod-a",
            "mini_pods": [
                {
                    "name": f"mini-{k}",
                    "leaves": [
                        {
                            "name": f"leaf-{k}-h20",
                            "hosts": [{"name": f"h20-{k}", "gpu_type": "H20", "gpus": 4}],
                        },
                        {
                            "name": f"leaf-{k}-l20",
                            "hosts": [{"name": f"l20-{k}", "gpu_type": "L20", "gpus": 4}],
                        },
                    ],
                }
                for k in (0, 1)
            ],
        }
    ]
}

SERVICES_YAML = f"""
services:
  - name: {SERVICE}
    model: dense-8b
    slo: {{ttft_s: 3.0, tbt_s: 0.25}}
    pd_ratio: "1:2"
    prefill: {{gpu_types: [L20, H20], min_instances: 1, max_instances: 4}}
    decode: {{gpu_types: [H20], min_instances: 2, max_instances: 8}}
    affinity: S1
    dg_max_instances: 6
    policy:
      signal: demand
      scale_out_tolerance: 0.1
      scale_in_tolerance: 0.2
      scale_out_cooldown_s: 4
      scale_in_cooldown_s: 15
      scale_in_damping: 1.0
      stale_after_s: 30
      demand:
        learn_smoothing_s: 20   # the demo's day lasts minutes: learn within a few periods
        drain_s: 10
      latency_guard:
        metric: both
        tiers: [{{at: 0.95, step: 0.10}}, {{at: 1.2, step: 0.20}}]
        cooldown_s: 10
"""


def services() -> ServicesConfig:
    return parse_yaml_text(SERVICES_YAML, ServicesConfig, "demo services")


def topology() -> TopologySpec:
    return parse_model(TopologySpec, TOPOLOGY, "demo topology")


def trace_modulation(path: Path, buckets: int = 60) -> np.ndarray | None:
    """Per-minute arrival counts of the Azure trace, normalised to mean 1 (None if absent)."""
    if not path.exists():
        return None
    from heteroscale_ray.traces import load_azure_csv

    trace = load_azure_csv(path)
    counts, _ = np.histogram(trace.arrival_s, bins=buckets, range=(0.0, trace.duration_s))
    counts = counts.astype(float)
    if counts.mean() <= 0:
        return None
    return counts / counts.mean()


def make_rate(duration_s: float, low: float, peak: float, modulation: np.ndarray | None):
    """Requests/s at time t: half-sine from ``low`` to ``peak`` and back, times the trace's
    burstiness (clipped to +-30% so the envelope stays the story)."""

    def rate(t: float) -> float:
        if t >= duration_s:
            return 0.0
        x = max(t, 0.0) / duration_s
        base = low + (peak - low) * math.sin(math.pi * x) ** 2
        if modulation is None:
            return base
        m = float(modulation[min(int(x * len(modulation)), len(modulation) - 1)])
        return base * min(1.3, max(0.7, m))

    return rate
