"""Per-tick series of the cluster simulator: what `ClusterSim.step` records after each tick.

Per (service, role): instances by state, GPUs and cost held, busy share (the GPU-utilisation
analogue: a decode instance with any sequence running counts as busy), SM activity (achieved
FLOP/s over peak), decode KV use, tokens made (and for decode, the step they were made at) and
requests in the pool. Split out of `sim/cluster.py` to keep that module readable; it reads the
simulator's state, writes only its `ts_*` arrays and the prefill instances' executed-work mark.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from heteroscale_ray.sim import kernels, tick_kernels
from heteroscale_ray.sim.instances import DECODE, DRAINING, PREFILL, READY, SOFT, STARTING
from heteroscale_ray.sim.layout import SERIES, Layout, layout
from heteroscale_ray.sim.prefill_queue import record_queue

if TYPE_CHECKING:
    from heteroscale_ray.sim.cluster import ClusterSim


def record_tick(sim: ClusterSim, t1: float) -> None:
    """Write row `sim.tick` of the series for the tick ending at `t1`.

    Removed (GONE) instances count in no series, so only the held rows are read; every sum
    adds the same values in the same (row) order as over the whole table (a zero weight for
    an instance outside a series' mask adds exactly nothing).
    """
    T = sim.inst
    t = sim.tick
    lay = layout(sim)
    if kernels.ENABLED:
        sums = np.zeros((len(SERIES), lay.size))
        tick_kernels.record(
            lay.row_ids,
            lay.key,
            lay.prefill,
            lay.t_ready,
            lay.gpus,
            lay.gpu_cost,
            lay.den,
            T.state,
            T.cum_work,
            T.free_at,
            T.cum_flops,
            T.exec_prev,
            T.kv_used,
            T.kv_cap,
            sim._dec_busy,
            sim._dec_flops,
            sim._dec_tokens,
            t1,
            sim.dt,
            sums,
        )
    else:
        sums = _sums(sim, lay, t1)
    sums = sums.reshape(len(SERIES), -1, 2)
    sim.series[:, t] = sums[:-1]
    sim.ts_tokens[t, :, DECODE] = sums[-1][:, DECODE]
    if kernels.ENABLED:
        n = T.n
        tick_kernels.token_steps(
            sim._dec_tokens[:n], sim._dec_steps[:n], T.svc[:n], sim.ts_token_steps[t]
        )
    else:
        _token_steps(sim)
    waiting = sim.first_pending(t1)
    record_queue(sim, lay, t1, waiting)
    _ongoing(sim, waiting)


def _token_steps(sim: ClusterSim) -> None:
    """Each service's decode tokens of the tick times its busy instances' mean step: over a
    window, divided by the tokens, the step tokens were made at, each instance weighing alike
    (a few instances slow with long-pinned sequences do not stand for the pool)."""
    n = sim.inst.n
    made = sim._dec_tokens[:n]
    busy = made > 0
    if not busy.any():
        sim.ts_token_steps[sim.tick] = 0.0
        return
    tau = sim._dec_steps[:n]
    if len(sim.services) == 1:
        sim.ts_token_steps[sim.tick, 0] = float(np.mean(tau[busy])) * float(np.sum(made))
        return
    svc = sim.inst.svc[:n]
    k = len(sim.services)
    steps = np.bincount(svc[busy], weights=tau[busy], minlength=k)
    count = np.bincount(svc[busy], minlength=k)
    tokens = np.bincount(svc, weights=made, minlength=k)
    sim.ts_token_steps[sim.tick] = np.divide(steps, np.maximum(count, 1)) * tokens


def _sums(sim: ClusterSim, lay: Layout, t1: float) -> np.ndarray:
    """The tick's sum of every series (`SERIES`) per (service, role) bin."""
    T = sim.inst
    rows = lay.rows
    st = T.state[rows]
    cum_work, free_at = T.cum_work[rows], T.free_at[rows]
    held_out = (st == SOFT) & (lay.t_ready <= t1)  # soft scale-in, model loaded
    ready = st == READY
    leaving = (st == DRAINING) | held_out
    serving = ready | leaving
    # prefill busy: work executed by t1 = assigned work minus what is still queued
    executed = cum_work - np.maximum(0.0, free_at - np.maximum(t1, lay.t_ready))
    worked = cum_work > 0
    executed = np.where(worked, executed, 0.0)
    busy_p = np.minimum(np.maximum((executed - T.exec_prev[rows]) / sim.dt, 0.0), 1.0)
    flops_rate = np.divide(T.cum_flops[rows], cum_work, out=np.zeros(len(st)), where=worked)
    sm_p = busy_p * flops_rate / lay.den
    T.exec_prev[rows] = executed
    sm_d = sim._dec_flops[rows] / (sim.dt * lay.den)
    busy = np.where(lay.prefill, busy_p, np.minimum(sim._dec_busy[rows], 1.0))
    sm = np.minimum(np.where(lay.prefill, sm_p, sm_d), 1.0)
    busy = np.where(serving, busy, 0.0)
    sm = np.where(serving, sm, 0.0)
    W = lay.weights
    W[0] = ready
    W[1] = st == STARTING
    W[2] = leaving
    W[3] = lay.gpus
    W[4] = lay.gpu_cost
    W[5] = busy
    W[6] = sm
    np.multiply(busy, lay.gpus, out=W[7])
    np.multiply(sm, lay.gpus, out=W[8])
    W[9] = np.where(serving & lay.decode, T.kv_used[rows] / np.maximum(T.kv_cap[rows], 1.0), 0.0)
    W[10] = np.where(serving, sim._dec_tokens[rows], 0.0)
    return np.bincount(lay.keys, weights=W.ravel(), minlength=len(SERIES) * lay.size)


def _ongoing(sim: ClusterSim, waiting: np.ndarray) -> None:
    """Requests in each pool: prefill = those with no first token yet (`waiting`: routed with
    the first token after the tick's end, and those at the ingress: the backlog); decode = in
    the pool.

    Every request waiting at the ingress counts, however long it has waited: a Serve handle
    counts the calls it holds among its ongoing requests, and those that waited longest are
    served last (`ClusterSim._ingress_order`), so a window of recent arrivals would hide them.
    """
    t = sim.tick
    w = sim.w
    n_svc = len(sim.services)
    backlog = sim._backlog
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
