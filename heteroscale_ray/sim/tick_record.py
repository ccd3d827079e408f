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
    """Write row `sim.tick` of the series for the tick ending at `t1`.

    Removed (GONE) instances count in no series, so only the held rows are read; every sum
    adds the same values in the same (row) order as over the whole table.
    """
    T = sim.inst
    n = T.n
    t = sim.tick
    st_all = T.state[:n]
    live = np.flatnonzero(st_all != GONE)
    rows: slice | np.ndarray = slice(0, n) if len(live) == n else live
    st, role, svc, kind = st_all[rows], T.role[rows], T.svc[rows], T.kind[rows]
    gpus = T.gpus[rows].astype(float)
    cum_work, free_at, t_ready = T.cum_work[rows], T.free_at[rows], T.t_ready[rows]
    m = len(st)
    held_out = (st == SOFT) & (t_ready <= t1)  # soft scale-in, model loaded
    ready = st == READY
    serving = ready | (st == DRAINING) | held_out
    prefill = role == PREFILL
    # prefill busy: work executed by t1 = assigned work minus what is still queued
    executed = cum_work - np.maximum(0.0, free_at - np.maximum(t1, t_ready))
    executed = np.where(cum_work > 0, executed, 0.0)
    busy_p = np.clip((executed - T.exec_prev[rows]) / sim.dt, 0.0, 1.0)
    flops_rate = np.divide(T.cum_flops[rows], cum_work, out=np.zeros(m), where=cum_work > 0)
    den = sim._kind_peak_den[kind]
    sm_p = busy_p * flops_rate / den
    T.exec_prev[rows] = executed
    busy_d = sim._dec_busy[rows] if len(sim._dec_busy) >= n else np.zeros(m)
    sm_d = sim._dec_flops[rows] / (sim.dt * den)
    busy = np.where(prefill, busy_p, np.minimum(busy_d, 1.0))
    sm = np.minimum(np.where(prefill, sm_p, sm_d), 1.0)
    busy = np.where(serving, busy, 0.0)
    sm = np.where(serving, sm, 0.0)
    cost = sim._kind_cost[kind]
    decode = ~prefill
    kvuse = np.where(decode, T.kv_used[rows] / np.maximum(T.kv_cap[rows], 1.0), 0.0)
    key = svc * 2 + role
    size = 2 * len(sim.services)

    def agg(x: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
        k = key[mask]
        w = None if x is None else x[mask]
        return np.bincount(k, weights=w, minlength=size).reshape(-1, 2)

    sim.ts_ready[t] = agg(None, ready)
    # the rows start at 0: a state no instance is in needs no write
    starting = st == STARTING
    if starting.any():
        sim.ts_starting[t] = agg(None, starting)
    leaving = (st == DRAINING) | held_out
    if leaving.any():
        sim.ts_draining[t] = agg(None, leaving)
    sim.ts_gpus[t] = np.bincount(key, weights=gpus, minlength=size).reshape(-1, 2)
    sim.ts_cost[t] = np.bincount(key, weights=gpus * cost, minlength=size).reshape(-1, 2)
    sim.ts_busy[t] = agg(busy, serving)
    sim.ts_sm[t] = agg(sm, serving)
    sim.ts_gpu_busy[t] = np.bincount(key, weights=busy * gpus, minlength=size).reshape(-1, 2)
    sim.ts_gpu_sm[t] = np.bincount(key, weights=sm * gpus, minlength=size).reshape(-1, 2)
    sim.ts_kv[t] = agg(kvuse, serving & decode)
    sim.ts_tokens[t, :, DECODE] = agg(sim._dec_tokens[rows], serving)[:, DECODE]
    # ongoing requests per pool: prefill = arrived in the last 600 s with no first token yet
    # (routed with the first token after t1, or not routed: the backlog); decode = in the pool
    w = sim.w
    n_svc = len(sim.services)
    waiting = sim.first_pending(t1)
    lo = int(np.searchsorted(w.arrival, t1 - 600.0))
    waiting = waiting[waiting >= lo]
    backlog = sim._backlog[sim._backlog >= lo]
    if n_svc == 1:
        sim.ts_ongoing[t, 0, PREFILL] = len(waiting) + len(backlog)
        sim.ts_ongoing[t, 0, DECODE] = len(sim._pending) + len(sim._active)
    else:
        sim.ts_ongoing[t, :, PREFILL] = np.bincount(
            w.service[waiting], minlength=n_svc
        ) + np.bincount(w.service[backlog], minlength=n_svc)
        sim.ts_ongoing[t, :, DECODE] = np.bincount(
            w.service[sim._pending], minlength=n_svc
        ) + np.bincount(w.service[sim._active], minlength=n_svc)
