"""Made-up traffic, replayed as a new user would: `heteroscale replay --gpus 1024` on traces of
shapes the shared files do not have, generated here from a seeded generator (no number fitted
to any trace). Each case is one plain rule:

- reasoning: 15 req/s for 1 h, prompts ~1k, outputs lognormal mean ~3.8k (<= 16k);
- reasoning-2x: the same at 30 req/s (decode ~70 instances: past what a fleet split 3:1 holds);
- step-5x: chat lengths, 5 req/s for 20 min, then 25 req/s;
- on-off-30s: chat lengths, 30 req/s for 30 s, none for 30 s, for 1 h;
- ramp-6h: chat lengths, 2 -> 20 -> 2 req/s over 6 h (a half sine);
- bimodal: 8 req/s, 80% chat, 20% ~20k-token documents;
- classify: 50 req/s, 0.5-4k prompts, one output token;
- high-rate: 300 req/s of ~100-token prompts and ~20-token outputs, 20 min.

The fleet is the CLI's: about 1,024 GPUs split between the GPU types as a static fleet for the
trace needs them (sim/fleet.py). Replayed on service `general` under heteroscale, static and
oracle, with issue 10's goals per case (as benchmarks/shapes.py checks them).

Writes results/made_up/summary.json; the last stdout line is one JSON object.
Run: .venv/bin/python benchmarks/made_up.py [--cases ...] [--policies ...] [--out DIR]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import generalization as G  # noqa: E402
import shapes  # noqa: E402

from heteroscale_ray.sim.fleet import fleet_for  # noqa: E402
from heteroscale_ray.sim.sizing import static_counts  # noqa: E402
from heteroscale_ray.traces import Trace  # noqa: E402

FLEET_GPUS = 1024  # the replay CLI's default --gpus
SEED = 7


def _arrivals(rng: np.random.Generator, rate: Callable[[np.ndarray], np.ndarray], span: float):
    """A Poisson process of rate `rate(t)` req/s over [0, span) (thinning)."""
    grid = np.linspace(0.0, span, 1001)
    top = float(np.max(rate(grid))) * 1.05
    t = np.sort(rng.uniform(0.0, span, rng.poisson(top * span)))
    return t[rng.uniform(0.0, top, len(t)) < rate(t)]


def _chat(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    prompts = np.maximum(20, rng.lognormal(np.log(1000), 0.6, n)).astype(int)
    outputs = np.maximum(2, rng.lognormal(np.log(200), 0.7, n)).astype(int)
    return prompts, outputs


def _trace(t: np.ndarray, prompts: np.ndarray, outputs: np.ndarray, span: float) -> Trace:
    return Trace.from_columns(t, prompts, outputs, duration_s=span, source="made-up")


def _constant(rate: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda t: np.full(np.shape(t), rate)


def reasoning(rate: float = 15.0) -> Trace:
    rng = np.random.default_rng(SEED)
    t = _arrivals(rng, _constant(rate), 3600.0)
    prompts = np.maximum(50, rng.lognormal(np.log(800), 0.8, len(t))).astype(int)
    outputs = np.clip(rng.lognormal(np.log(3000), 0.7, len(t)), 10, 16_000).astype(int)
    return _trace(t, prompts, outputs, 3600.0)


def chat(rate: Callable[[np.ndarray], np.ndarray], span: float) -> Trace:
    rng = np.random.default_rng(SEED)
    t = _arrivals(rng, rate, span)
    return _trace(t, *_chat(rng, len(t)), span)


def bimodal() -> Trace:
    rng = np.random.default_rng(SEED)
    t = _arrivals(rng, _constant(8.0), 3600.0)
    prompts, outputs = _chat(rng, len(t))
    docs = rng.uniform(size=len(t)) < 0.2
    prompts[docs] = np.minimum(30_000, rng.lognormal(np.log(20_000), 0.3, docs.sum())).astype(int)
    return _trace(t, prompts, outputs, 3600.0)


def classify() -> Trace:
    rng = np.random.default_rng(SEED)
    t = _arrivals(rng, _constant(50.0), 1800.0)
    return _trace(t, rng.integers(500, 4000, len(t)), np.ones(len(t), dtype=int), 1800.0)


def high_rate() -> Trace:
    rng = np.random.default_rng(SEED)
    t = _arrivals(rng, _constant(300.0), 1200.0)
    return _trace(t, rng.integers(50, 150, len(t)), rng.integers(5, 40, len(t)), 1200.0)


# label -> (builder, diurnal, what it stands for)
CASES: dict[str, tuple[Callable[[], Trace], bool, str]] = {
    "reasoning": (reasoning, False, "15 req/s, outputs ~3.8k"),
    "reasoning-2x": (lambda: reasoning(30.0), False, "30 req/s, outputs ~3.8k"),
    "step-5x": (
        lambda: chat(lambda t: np.where(t < 1200.0, 5.0, 25.0), 3600.0),
        False,
        "chat, 5 -> 25 req/s at 20 min",
    ),
    "on-off-30s": (
        lambda: chat(lambda t: np.where((t // 30.0) % 2 == 0, 30.0, 0.0), 3600.0),
        False,
        "chat, 30 req/s on 30 s in 60",
    ),
    "ramp-6h": (
        lambda: chat(lambda t: 2.0 + 18.0 * np.sin(np.pi * t / 21_600.0) ** 2, 21_600.0),
        True,
        "chat, 2 -> 20 -> 2 req/s over 6 h",
    ),
    "bimodal": (bimodal, False, "8 req/s, 20% ~20k-token documents"),
    "classify": (classify, False, "50 req/s, one output token"),
    "high-rate": (high_rate, False, "300 req/s, ~100 in / ~20 out"),
}


def run_case(label: str, services: Any, policies: tuple[str, ...]) -> dict[str, Any]:
    build, diurnal, what = CASES[label]
    spec = services.by_name()[G.SERVICE]
    trace = build()
    counts = static_counts(spec, services.catalog, trace)
    topo = fleet_for([spec], FLEET_GPUS, counts)
    lengths = (
        f" (prompt mean {np.mean(trace.input_tokens):,.0f}, "
        f"output mean {np.mean(trace.output_tokens):,.0f})"
    )
    return shapes.replay_case(
        label, what, services, trace, topo, counts, policies, diurnal, lengths
    )


def main(argv: list[str] | None = None) -> int:
    return shapes.run_cli(
        "made_up", "cases", CASES, run_case, shapes.POLICIES, __doc__, argv, scalable=False
    )


if __name__ == "__main__":
    sys.exit(main())
