"""Plain-text tables and per-minute timelines of replay results (no I/O beyond returning text)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from heteroscale_ray.sim.cluster import DECODE, PREFILL, ClusterSim
from heteroscale_ray.sim.observe import request_tbt

COLUMNS = (
    ("policy", "policy", "{}"),
    ("GPU-h", "gpu_hours", "{:.1f}"),
    ("avg GPUs", "avg_gpus", "{:.0f}"),
    ("GPU util", "avg_gpu_util", "{:.1%}"),
    ("P util", "prefill_gpu_util", "{:.1%}"),
    ("D util", "decode_gpu_util", "{:.1%}"),
    ("SM act", "avg_sm_activity", "{:.1%}"),
    ("TTFT p50", "ttft_p50_s", "{:.2f}s"),
    ("TTFT p99", "ttft_p99_s", "{:.2f}s"),
    ("TBT p50", "tbt_p50_s", "{:.1f}ms", 1e3),
    ("TBT p99", "tbt_p99_s", "{:.1f}ms", 1e3),
    ("SLO att.", "slo_attainment", "{:.1%}"),
    ("ceiling", "slo_ceiling", "{:.1%}"),
    ("actions", "scaling_actions", "{}"),
    ("cost", "cost", "{:.1f}"),
)


def _cell(fmt: str, v: Any, scale: float = 1.0) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    return fmt.format(v * scale if isinstance(v, int | float) and scale != 1.0 else v)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple] = COLUMNS) -> str:
    """A fixed-width table; one row per summary."""
    head = [c[0] for c in columns]
    body = [[_cell(c[2], r.get(c[1], float("nan")), *(c[3:] or ())) for c in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def timeline(sim: ClusterSim, duration_s: float, bin_s: float = 60.0) -> dict[str, np.ndarray]:
    """Per-`bin_s` series for plots: load, instances per role, latency p99, utilisation."""
    per = max(1, int(round(bin_s / sim.dt)))
    T = max(per, int(math.ceil(duration_s / sim.dt)))
    nb = T // per

    def fold(x: np.ndarray) -> np.ndarray:
        return x[: nb * per].reshape(nb, per, *x.shape[1:]).sum(axis=1)

    ready = fold(sim.ts_ready[:T].sum(axis=1)) / per
    starting = fold(sim.ts_starting[:T].sum(axis=1)) / per
    serving = fold((sim.ts_ready[:T] + sim.ts_draining[:T]).sum(axis=1))
    busy = fold(sim.ts_busy[:T].sum(axis=1)) / np.maximum(serving, 1)
    sm = fold(sim.ts_sm[:T].sum(axis=1)) / np.maximum(serving, 1)
    w = sim.w
    ttft_p99 = np.full(nb, np.nan)
    tbt_p99 = np.full(nb, np.nan)
    # requests are in arrival order, so each bin's are one run of them (the last bin takes
    # the arrivals past it); bin by bin, as a week's replay holds ~100M requests
    bounds = _bin_starts(w.arrival, bin_s, nb)
    for i in range(nb):
        ids = np.arange(bounds[i], bounds[i + 1])
        t = sim.t_first[ids] - w.arrival[ids]
        t = t[np.isfinite(t)]
        if len(t):
            ttft_p99[i] = np.percentile(t, 99)
        tbt = request_tbt(sim, ids)
        g = tbt[np.isfinite(tbt) & (w.output_tokens[ids] > 1)]
        if len(g):
            tbt_p99[i] = np.percentile(g, 99)
    return {
        "t_min": np.arange(nb) * bin_s / 60.0,
        "arrivals_rps": fold(sim.ts_arrivals[:T].sum(axis=1)) / bin_s,
        "decode_tps": fold(sim.ts_tokens[:T, :, DECODE].sum(axis=1)) / bin_s,
        "prefill_tps": fold(sim.ts_tokens[:T, :, PREFILL].sum(axis=1)) / bin_s,
        "prefill_instances": ready[:, PREFILL] + starting[:, PREFILL],
        "decode_instances": ready[:, DECODE] + starting[:, DECODE],
        "gpus": fold(sim.ts_gpus[:T].sum(axis=(1, 2))) / per,
        "prefill_util": busy[:, PREFILL],
        "decode_util": busy[:, DECODE],
        "prefill_sm": sm[:, PREFILL],
        "decode_sm": sm[:, DECODE],
        "ttft_p99_s": ttft_p99,
        "tbt_p99_s": tbt_p99,
    }


def _bin_starts(arrival: np.ndarray, bin_s: float, nb: int) -> np.ndarray:
    """Where each bin's run of the sorted `arrival` starts (and, last, its length): request j
    is in bin min(int(arrival[j] / bin_s), nb - 1). A search for i * bin_s alone can land a
    request off by one where bin_s is not exact in binary (0.1 s, duration / 600)."""
    n = len(arrival)
    bounds = np.searchsorted(arrival, np.arange(nb + 1) * bin_s, side="left")
    bounds[0], bounds[-1] = 0, n
    for i in range(1, nb):
        k = int(bounds[i])
        while k > 0 and int(arrival[k - 1] / bin_s) >= i:
            k -= 1
        while k < n and int(arrival[k] / bin_s) < i:
            k += 1
        bounds[i] = k
    return bounds
