"""P/D ratio stress test (the paper's offline policy curation, Algorithm 1's first step).

For a fixed number of instances, each split into prefill:decode is held static while the
request rate is raised (binary search) until SLO attainment drops below a threshold; the
highest rate that still meets it, times its attainment, is the split's goodput.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from heteroscale_ray.config import ServicesConfig, ServiceSpec
from heteroscale_ray.control import StaticAutoscaler
from heteroscale_ray.sim.fleet import fleet_for
from heteroscale_ray.sim.replay import ReplayOptions, run_replay
from heteroscale_ray.traces import Trace


@dataclass(frozen=True)
class SweepPoint:
    prefill: int
    decode: int
    goodput_rps: float
    attainment: float
    tokens_per_s: float  # generated tokens/s at that rate

    @property
    def label(self) -> str:
        return f"{self.prefill}:{self.decode}"


def poisson_trace(
    rate: float,
    duration_s: float,
    input_mean: float,
    output_mean: float,
    cv: float,
    rng: np.random.Generator,
    lengths: tuple[np.ndarray, np.ndarray] | None = None,
) -> Trace:
    """Poisson arrivals for stress tests; lengths normal (coefficient of variation `cv`) around
    the means, or drawn as (input, output) pairs from `lengths` (a real trace's columns, which
    keeps their tails and their correlation)."""
    n = int(rng.poisson(rate * duration_s))
    arrivals = np.sort(rng.random(n) * duration_s)
    if lengths is not None:
        pick = rng.integers(0, len(lengths[0]), n)
        inp = np.asarray(lengths[0], dtype=np.int64)[pick]
        out = np.maximum(2, np.asarray(lengths[1], dtype=np.int64)[pick])
        return Trace.from_columns(
            arrivals, inp, out, duration_s=duration_s, source=f"poisson({rate:g}, trace lengths)"
        )
    inp = np.maximum(1, np.rint(rng.normal(input_mean, cv * input_mean, n))).astype(np.int64)
    out = np.maximum(2, np.rint(rng.normal(output_mean, cv * output_mean, n))).astype(np.int64)
    return Trace.from_columns(
        arrivals, inp, out, duration_s=duration_s, source=f"poisson({rate:g})"
    )


def attainment_at(
    services: ServicesConfig,
    spec: ServiceSpec,
    p: int,
    d: int,
    rate: float,
    *,
    duration_s: float,
    input_mean: float,
    output_mean: float,
    cv: float,
    seed: int,
    warmup_s: float,
    lengths: tuple[np.ndarray, np.ndarray] | None = None,
    relative: bool = False,
) -> tuple[float, float]:
    """SLO attainment and generated tokens/s with p prefill and d decode instances at `rate`.

    `relative`: attainment over the idle-fleet ceiling of the same requests (the share no
    capacity can fix, e.g. long prompts with 2-6 output tokens whose KV transfer alone breaks
    the TBT SLO, is not counted against the split), capped at 1.
    """
    rng = np.random.default_rng(seed)
    trace = poisson_trace(rate, duration_s, input_mean, output_mean, cv, rng, lengths)
    gpus = (p * spec.prefill.gpus_per_instance + d * spec.decode.gpus_per_instance) * 2 + 64
    topo = fleet_for([spec], gpus)
    res = run_replay(
        services,
        topo,
        {spec.name: trace},
        ReplayOptions(policy="static", control_period_s=duration_s * 10),
        autoscaler=StaticAutoscaler({spec.name: (p, d)}),
        initial={spec.name: (p, d)},
    )
    sim = res.sim
    w = sim.w
    keep = w.arrival >= warmup_s
    ttft = sim.t_first - w.arrival
    gaps = np.maximum(w.output_tokens - 1, 1)
    tbt = (sim.t_done - sim.t_first) / gaps
    ok = np.isfinite(sim.t_done) & (ttft <= spec.slo.ttft_s) & (tbt <= spec.slo.tbt_s)
    att = float(ok[keep].mean()) if keep.any() else 0.0
    if relative:
        ceiling = res.summary.get("slo_ceiling")
        if ceiling is not None and np.isfinite(ceiling) and ceiling > 0:
            att = min(1.0, att / ceiling)
    tps = float(w.output_tokens[keep].sum()) / max(duration_s - warmup_s, 1e-9)
    return att, tps


def sweep(
    services: ServicesConfig,
    spec: ServiceSpec,
    *,
    total_instances: int = 10,
    splits: Sequence[tuple[int, int]] | None = None,
    input_mean: float,
    output_mean: float,
    cv: float = 0.1,
    threshold: float = 0.9,
    duration_s: float = 240.0,
    warmup_s: float = 60.0,
    seed: int = 0,
    iterations: int = 9,
    lengths: tuple[np.ndarray, np.ndarray] | None = None,
    relative: bool = False,
) -> list[SweepPoint]:
    """Max goodput within SLO for each P:D split of `total_instances` (or the given splits).

    `lengths`: (input, output) columns of a real trace to draw request lengths from; prefer it
    to the means when lengths are heavy-tailed or correlated (Mooncake: long prompts, short
    answers), where a sweep on means misjudges both the decode KV load and the best ratio.
    `relative`: `threshold` applies to attainment over the idle-fleet ceiling (see
    `attainment_at`), for lengths where some requests miss an SLO at any size.
    """
    if duration_s <= warmup_s:  # nothing would be measured: every split would read 0
        raise ValueError(
            f"a stress run of {duration_s:g} s is all warm-up (the first {warmup_s:g} s are "
            f"not measured): run longer than {warmup_s:g} s"
        )
    pairs = (
        list(splits) if splits else [(p, total_instances - p) for p in range(1, total_instances)]
    )
    points = []
    kw: Mapping[str, object] = dict(
        duration_s=duration_s,
        input_mean=input_mean,
        output_mean=output_mean,
        cv=cv,
        seed=seed,
        warmup_s=warmup_s,
    )
    if lengths is not None:
        kw = {**kw, "lengths": lengths}
    if relative:
        kw = {**kw, "relative": True}
    for p, d in pairs:
        lo, hi = 0.0, 1.0
        att_hi, _ = attainment_at(services, spec, p, d, hi, **kw)  # type: ignore[arg-type]
        while att_hi >= threshold and hi < 1e5:
            lo, hi = hi, hi * 2
            att_hi, _ = attainment_at(services, spec, p, d, hi, **kw)  # type: ignore[arg-type]
        best_att, best_tps = 0.0, 0.0
        if lo > 0:
            best_att, best_tps = attainment_at(services, spec, p, d, lo, **kw)  # type: ignore[arg-type]
        for _ in range(iterations):
            mid = (lo + hi) / 2
            att, tps = attainment_at(services, spec, p, d, mid, **kw)  # type: ignore[arg-type]
            if att >= threshold:
                lo, best_att, best_tps = mid, att, tps
            else:
                hi = mid
        points.append(SweepPoint(p, d, lo * best_att, best_att, best_tps))
    return points
