"""Per-tick series of the cluster simulator: what `ClusterSim.step` records after each tick.

Per (service, role): instances by state, GPUs and cost held, busy share (the GPU-utilisation
analogue: a decode instance with any sequence running counts as busy), SM activity (achieved
FLOP/s over peak), decode KV use, tokens made and requests in the pool. Split out of
`sim/cluster.py` to keep that module readable; it reads the simulator's state, writes only its
`ts_*` arrays and the prefill instances' executed-work mark.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from heteroscale_ray.sim.instances import DECODE, DRAINING, GONE, PREFILL, READY, SOFT, STARTING

if TYPE_CHECKING:
    from heteroscale_ray.sim.cluster import ClusterSim


def record_tick(sim: ClusterSim, t1: float) -> None:
    """Write row `sim.tick` of the series for the tick ending at `t1`."""
    T = sim.inst
    n = T.n
    t = sim.tick
    st, role, svc, gpus = T.state[:n], T.role[:n], T.svc[:n], T.gpus[:n].astype(float)
    held = st != GONE
    held_out = (st == SOFT) & (T.t_ready[:n] <= t1)  # soft scale-in, model loaded
    serving = (st == READY) | (st == DRAINING) | held_out
    # prefill busy: work executed by t1 = assigned work minus what is still queued
    executed = T.cum_work[:n] - np.maximum(0.0, T.free_at[:n] - np.maximum(t1, T.t_ready[:n]))
    executed = np.where(T.cum_work[:n] > 0, executed, 0.0)
    busy_p = np.clip((executed - T.exec_prev[:n]) / sim.dt, 0.0, 1.0)
    flops_rate = np.divide(
        T.cum_flops[:n], T.cum_work[:n], out=np.zeros(n), where=T.cum_work[:n] > 0
    )
    peak = np.array([sim.kinds[k].peak_flops for k in T.kind[:n].tolist()]) if n else np.zeros(0)
    sm_p = busy_p * flops_rate / np.where(peak > 0, peak, 1.0)
    T.exec_prev[:n] = executed
    busy_d = sim._dec_busy[:n] if len(sim._dec_busy) >= n else np.zeros(n)
    sm_d = sim._dec_flops[:n] / (sim.dt * np.where(peak > 0, peak, 1.0))
    busy = np.where(role == PREFILL, busy_p, np.minimum(busy_d, 1.0))
    sm = np.minimum(np.where(role == PREFILL, sm_p, sm_d), 1.0)
    busy = np.where(serving, busy, 0.0)
    sm = np.where(serving, sm, 0.0)
    cost = (
        np.array([sim.kinds[k].cost_per_gpu_hour for k in T.kind[:n].tolist()])
        if n
        else np.zeros(0)
    )
    kvuse = np.where(role == DECODE, T.kv_used[:n] / np.maximum(T.kv_cap[:n], 1.0), 0.0)
    key = svc * 2 + role
    size = 2 * len(sim.services)

    def agg(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.bincount(key[mask], weights=x[mask], minlength=size).reshape(-1, 2)

    ones = np.ones(n)
    sim.ts_ready[t] = agg(ones, st == READY)
    sim.ts_starting[t] = agg(ones, st == STARTING)
    sim.ts_draining[t] = agg(ones, (st == DRAINING) | held_out)
    sim.ts_gpus[t] = agg(gpus, held)
    sim.ts_cost[t] = agg(gpus * cost, held)
    sim.ts_busy[t] = agg(busy, serving)
    sim.ts_sm[t] = agg(sm, serving)
    sim.ts_gpu_busy[t] = agg(busy * gpus, held)
    sim.ts_gpu_sm[t] = agg(sm * gpus, held)
    sim.ts_kv[t] = agg(kvuse, serving & (role == DECODE))
    sim.ts_tokens[t, :, DECODE] = agg(sim._dec_tokens[:n], serving)[:, DECODE]
    # ongoing requests per pool: prefill = routed but no first token yet (+ unrouted)
    w = sim.w
    lo = int(np.searchsorted(w.arrival, t1 - 600.0))
    recent = np.arange(lo, sim._next_arrival)
    waiting_p = recent[(sim.t_first[recent] > t1) | np.isnan(sim.t_first[recent])]
    sim.ts_ongoing[t, :, PREFILL] = np.bincount(w.service[waiting_p], minlength=len(sim.services))
    in_dec = np.concatenate([sim._pending, sim._active])
    sim.ts_ongoing[t, :, DECODE] = np.bincount(w.service[in_dec], minlength=len(sim.services))
