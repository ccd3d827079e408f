"""Per-window signals from the simulator, shaped as the autoscalers' inputs (`Observation`).

Same windows and definitions for every policy, so comparisons are fair: throughput is what was
processed (prefill counts cache-miss tokens only), latency percentiles are over requests whose
first token (TTFT) or last token (TBT) fell in the window, hardware signals are means over the
serving instances of the pool.
"""

from __future__ import annotations

import math

import numpy as np

from heteroscale_ray.control.types import Observation, PoolObservation
from heteroscale_ray.policy.types import Signals
from heteroscale_ray.sim.engine import DECODE, PREFILL, ClusterSim


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _p(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def request_tbt(sim: ClusterSim, ids: np.ndarray) -> np.ndarray:
    """Mean inter-token gap per request (0 for single-token outputs)."""
    out = sim.w.output_tokens[ids]
    gaps = np.maximum(out - 1, 1)
    return np.where(out > 1, (sim.t_done[ids] - sim.t_first[ids]) / gaps, 0.0)


def observe(sim: ClusterSim, window_s: float) -> dict[str, Observation]:
    """One `Observation` per service over the last `window_s` of simulated time."""
    now = sim.now
    t1 = sim.tick
    t0 = max(0, t1 - int(round(window_s / sim.dt)))
    span = (t1 - t0) * sim.dt
    w = sim.w
    lo = int(np.searchsorted(w.arrival, now - window_s - 900.0))
    hi = int(np.searchsorted(w.arrival, now))
    recent = np.arange(lo, hi)
    out: dict[str, Observation] = {}
    for s, spec in enumerate(sim.services):
        sl = slice(t0, t1)
        mine = recent[w.service[recent] == s]
        tf = sim.t_first[mine]
        first_in = mine[(tf >= now - window_s) & (tf < now)]
        td = sim.t_done[mine]
        done_in = mine[(td >= now - window_s) & (td < now) & (w.output_tokens[mine] > 1)]
        ttft = sim.t_first[first_in] - w.arrival[first_in]
        arrived = mine[w.arrival[mine] >= now - span]
        prompt = float(np.sum(w.input_tokens[first_in]))
        miss_share = 1.0 - float(np.sum(sim.cached[first_in])) / prompt if prompt > 0 else 1.0
        offered = float(np.sum(w.input_tokens[arrived])) * miss_share / span if span > 0 else 0.0
        tbt = request_tbt(sim, done_in)
        pools = {}
        for role in (PREFILL, DECODE):
            serving = float(np.sum(sim.ts_ready[sl, s, role] + sim.ts_draining[sl, s, role]))
            ticks = max(t1 - t0, 1)
            pools[role] = dict(
                util=_ratio(float(np.sum(sim.ts_busy[sl, s, role])), serving),
                sm=_ratio(float(np.sum(sim.ts_sm[sl, s, role])), serving),
                ongoing=float(np.sum(sim.ts_ongoing[sl, s, role])) / ticks if t1 > t0 else None,
                tps=float(np.sum(sim.ts_tokens[sl, s, role])) / span if span > 0 else None,
                kv=_ratio(float(np.sum(sim.ts_kv[sl, s, role])), serving),
            )
        pr, ps, dr, ds = sim.counts(spec.name)
        have_data = t1 > t0
        signals = Signals(
            observed_at=now if have_data else None,
            decode_tps=pools[DECODE]["tps"],
            prefill_tps=pools[PREFILL]["tps"],
            prefill_offered_tps=offered if have_data else None,
            ttft_p99_s=_p(ttft, 99),
            tbt_p99_s=_p(tbt, 99),
            prefill_busy=pools[PREFILL]["util"],
            decode_busy=pools[DECODE]["util"],
            kv_use=pools[DECODE]["kv"],
        )
        out[spec.name] = Observation(
            service=spec.name,
            signals=signals,
            prefill=PoolObservation(
                pr,
                ps,
                pools[PREFILL]["util"],
                pools[PREFILL]["sm"],
                pools[PREFILL]["ongoing"],
                pools[PREFILL]["tps"],
            ),
            decode=PoolObservation(
                dr,
                ds,
                pools[DECODE]["util"],
                pools[DECODE]["sm"],
                pools[DECODE]["ongoing"],
                pools[DECODE]["tps"],
            ),
        )
    return out


def finite(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else x
