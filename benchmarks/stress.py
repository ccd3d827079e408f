"""Stress: events a trace's averages hide, on the one `general` config.

Each case is the Azure conversation trace, rate-scaled as benchmarks/generalization.py scales
it (static fleet >= 400 GPUs), then changed in one plain way (no number fitted to anything):

- gap-20m / gap-40m: no requests at all for 20 minutes (20-40 min) or 40 (10-50 min); the
  fleet scales in while idle and pays a start-up when traffic returns at full rate;
- spike-3x-5m: three times the load for five minutes (30-35 min): every request arriving
  then is sent three times, 0.37 s apart;
- to-code, to-reasoning, to-long-context: halfway through, the mix changes for good: prompts
  x4 and outputs / 8; outputs x8; prompts x10 (each within 32k tokens in all);
- diurnal-decode-heavy: the ServeGen m-large day compressed 2x in time, outputs x8 (within
  32k): a day of reasoning-length answers;
- on-off-2m: the prefill-heavy shape (benchmarks/shapes.py) sent two minutes in every four,
  at twice the rate: a client that comes and goes, the same level at every onset;
- bunched-5s: the prefill-heavy shape with every request sent at the start of its 5-s slot: a
  batch job's submits, or a log whose timestamps are coarse; the same load, in instants;
- mooncake-slow-4x: the shared Mooncake trace played at a quarter of its speed, its 17
  minutes of long prompts (15k tokens on average, up to 191k) and their clusters over 68.

Each case is replayed under heteroscale, static and oracle on a fleet holding 2.5x the static
sizing. The table shows issue 10's goals per case (attainment >= min(99%, ceiling - 1
point), GPU-hours never above static, <= 4 direction changes per role per hour; <= 0.6x static
on the diurnal case); the oracle's ratio is reported, not checked (see generalization.py).

Writes results/stress/summary.json; the last stdout line is one JSON object.
Run: .venv/bin/python benchmarks/stress.py [--cases ...] [--policies ...] [--out DIR]
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
import shapes as S  # noqa: E402
import trace_scaling  # noqa: E402

from heteroscale_ray.config import ServicesConfig, ServiceSpec  # noqa: E402
from heteroscale_ray.sim.fleet import fleet_for  # noqa: E402
from heteroscale_ray.traces import Trace, load_trace, time_compress  # noqa: E402

POLICIES = ("heteroscale", "static", "oracle")
SPIKE_COPY_GAP_S = 0.37  # the spike's extra copies of a request, this far apart


def _columns(t: Trace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.asarray(t.arrival_s), np.asarray(t.input_tokens), np.asarray(t.output_tokens)


def _trace(t: Trace, arrival: np.ndarray, prompts: np.ndarray, outputs: np.ndarray) -> Trace:
    return Trace.from_columns(
        arrival, prompts, outputs, None, None, duration_s=t.duration_s, source=t.source
    )


def gap(t: Trace, start_s: float, end_s: float) -> Trace:
    """`t` without the requests arriving in [start_s, end_s)."""
    arrival, prompts, outputs = _columns(t)
    keep = (arrival < start_s) | (arrival >= end_s)
    return _trace(t, arrival[keep], prompts[keep], outputs[keep])


def spike(t: Trace, start_s: float, end_s: float, times: int) -> Trace:
    """`t` with each request arriving in [start_s, end_s) sent `times` times, the copies
    `SPIKE_COPY_GAP_S` apart and within the window."""
    arrival, prompts, outputs = _columns(t)
    inside = (arrival >= start_s) & (arrival < end_s)
    copies = [
        np.minimum(arrival[inside] + k * SPIKE_COPY_GAP_S, np.nextafter(end_s, start_s))
        for k in range(1, times)
    ]
    a = np.concatenate([arrival, *copies])
    p = np.concatenate([prompts] + [prompts[inside]] * (times - 1))
    o = np.concatenate([outputs] + [outputs[inside]] * (times - 1))
    order = np.argsort(a, kind="stable")
    return _trace(t, a[order], p[order], o[order])


def on_off(t: Trace, on_s: float) -> Trace:
    """`t` with each `2 * on_s` period's requests sent within its first `on_s`, in order at
    twice the rate: the same load, on half the time."""
    arrival, prompts, outputs = _columns(t)
    start = np.floor(arrival / (2 * on_s)) * 2 * on_s
    squeezed = start + (arrival - start) / 2
    order = np.argsort(squeezed, kind="stable")
    return _trace(t, squeezed[order], prompts[order], outputs[order])


def bunch(t: Trace, every_s: float) -> Trace:
    """`t` with each request sent at the start of its `every_s` slot: the same requests in
    instants (order kept)."""
    arrival, prompts, outputs = _columns(t)
    return _trace(t, np.floor(arrival / every_s) * every_s, prompts, outputs)


def mix_change(t: Trace, at_s: float, prompt_x: float, output_x: float) -> Trace:
    """From `at_s` on, prompts x `prompt_x` and outputs x `output_x` (at least one token),
    prompt + output within `shapes.CONTEXT_CAP`."""
    arrival, prompts, outputs = _columns(t)
    prompts, outputs = prompts.astype(np.int64), outputs.astype(np.int64)
    late = arrival >= at_s
    cap = S.CONTEXT_CAP
    prompts[late] = np.minimum(np.round(prompts[late] * prompt_x), cap - 1)
    outputs[late] = np.clip(np.round(outputs[late] * output_x), 1, cap - prompts[late])
    return _trace(t, arrival, prompts, outputs)


def _azure_scaled(services: ServicesConfig, spec: ServiceSpec) -> Trace:
    return trace_scaling.rate_factor(services, spec, S._azure(), diurnal=False)[1]


def decode_heavy_day() -> Trace:
    """diurnal-decode-heavy before rate scaling: diurnal-12h with every output x8."""
    return mix_change(S.diurnal_12h(), 0.0, 1.0, 8.0)


def _diurnal_decode_heavy(services: ServicesConfig, spec: ServiceSpec) -> Trace:
    return trace_scaling.rate_factor(services, spec, decode_heavy_day(), diurnal=True)[1]


def _prefill_heavy_on_off(services: ServicesConfig, spec: ServiceSpec) -> Trace:
    scaled = trace_scaling.rate_factor(services, spec, S.prefill_heavy(), diurnal=False)[1]
    return on_off(scaled, ON_OFF_S)


def _prefill_heavy_bunched(services: ServicesConfig, spec: ServiceSpec) -> Trace:
    scaled = trace_scaling.rate_factor(services, spec, S.prefill_heavy(), diurnal=False)[1]
    return bunch(scaled, BUNCH_S)


def _mooncake_slowed(services: ServicesConfig, spec: ServiceSpec) -> Trace:
    raw = load_trace(G.TRACES_DIR / G.TRACES["mooncake"][0])
    return trace_scaling.rate_factor(services, spec, time_compress(raw, 0.25), diurnal=False)[1]


def _on_azure(change: Callable[[Trace], Trace]) -> Callable[[ServicesConfig, ServiceSpec], Trace]:
    return lambda services, spec: change(_azure_scaled(services, spec))


HALF_S = 1800.0  # the Azure trace's hour, halved
ON_OFF_S = 120.0  # on-off-2m: sending this long, then silent as long
BUNCH_S = 5.0  # bunched-5s: every request sent at the start of its slot this long
# label -> (builder(services, spec) -> rate-scaled trace, diurnal, what it stands for)
CASES: dict[str, tuple[Callable[[ServicesConfig, ServiceSpec], Trace], bool, str]] = {
    "gap-20m": (_on_azure(lambda t: gap(t, 1200.0, 2400.0)), False, "no requests 20-40 min"),
    "gap-40m": (_on_azure(lambda t: gap(t, 600.0, 3000.0)), False, "no requests 10-50 min"),
    "spike-3x-5m": (
        _on_azure(lambda t: spike(t, 1800.0, 2100.0, 3)),
        False,
        "3x the load for 30-35 min",
    ),
    "to-code": (
        _on_azure(lambda t: mix_change(t, HALF_S, 4.0, 1 / 8)),
        False,
        "from 30 min: prompts x4, outputs / 8",
    ),
    "to-reasoning": (
        _on_azure(lambda t: mix_change(t, HALF_S, 1.0, 8.0)),
        False,
        "from 30 min: outputs x8",
    ),
    "to-long-context": (
        _on_azure(lambda t: mix_change(t, HALF_S, 10.0, 1.0)),
        False,
        "from 30 min: prompts x10",
    ),
    "diurnal-decode-heavy": (
        _diurnal_decode_heavy,
        True,
        "ServeGen m-large day compressed 2x, outputs x8",
    ),
    "on-off-2m": (
        _prefill_heavy_on_off,
        False,
        "prefill-heavy, sent 2 min in every 4 at twice the rate",
    ),
    "bunched-5s": (
        _prefill_heavy_bunched,
        False,
        "prefill-heavy, each request sent at the start of its 5-s slot",
    ),
    "mooncake-slow-4x": (_mooncake_slowed, False, "Mooncake at a quarter of its speed"),
}


def run_case(label: str, services: ServicesConfig, policies: tuple[str, ...]) -> dict[str, Any]:
    build, diurnal, what = CASES[label]
    spec = services.by_name()[G.SERVICE]
    trace = build(services, spec)
    counts = trace_scaling.static_counts(services, spec, trace)
    topo = fleet_for([spec], trace_scaling.fleet_gpus(spec, counts))
    return S.replay_case(label, what, services, trace, topo, counts, policies, diurnal)


def main(argv: list[str] | None = None) -> int:
    return S.run_cli("stress", "cases", CASES, run_case, POLICIES, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
