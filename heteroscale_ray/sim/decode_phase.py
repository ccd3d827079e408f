"""The decode side of a simulator tick: FIFO admission and continuous batching.

A request reserves input + output KV tokens; each decode instance admits FIFO (by KV arrival)
while its batch fits the sequence cap and its KV capacity. Every running sequence then advances
by (time available in the tick) / (step time of its instance's batch) tokens. Split out of
`sim/cluster.py`; both functions update the simulator's request and instance state in place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from heteroscale_ray.sim.cluster import ClusterSim


def admit_fifo(sim: ClusterSim, t0: float, t1: float) -> None:
    """FIFO admission per decode instance while sequences and KV reservations fit."""
    if not len(sim._pending):
        return
    T = sim.inst
    p = sim._pending
    ok = sim.t_kv[p] < t1
    cand = p[ok]
    if not len(cand):
        return
    d = sim.d_inst[cand]
    order = np.lexsort((sim.t_kv[cand], d))
    cand, d = cand[order], d[order]
    res = sim.reserve[cand]
    starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
    seg = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(d)]))
    rank = np.arange(len(d)) - starts[seg]
    csum = np.cumsum(res)
    before = np.r_[0.0, csum][starts][seg]
    cum = csum - before
    admit = (rank < T.max_seqs[d] - T.n_active[d]) & (cum <= T.kv_cap[d] - T.kv_used[d])
    a_ids, a_d = cand[admit], d[admit]
    if not len(a_ids):
        return
    sim.t_dstart[a_ids] = np.maximum(sim.t_kv[a_ids], t0)
    np.add.at(T.kv_used, a_d, sim.reserve[a_ids])
    np.add.at(T.n_active, a_d, 1)
    np.add.at(T.n_pending, a_d, -1)
    keep = np.ones(len(p), dtype=bool)
    keep[np.flatnonzero(ok)[order[admit]]] = False
    sim._pending = p[keep]
    sim._active = np.concatenate([sim._active, a_ids])


def advance_decode(sim: ClusterSim, t0: float, t1: float) -> None:
    T, w = sim.inst, sim.w
    n = T.n
    sim._dec_busy = np.zeros(n)
    sim._dec_tokens = np.zeros(n)
    sim._dec_flops = np.zeros(n)
    A = sim._active
    if not len(A):
        return
    d = sim.d_inst[A]
    ctx = w.input_tokens[A] + sim.gen[A]
    B = np.bincount(d, minlength=n).astype(float)
    C = np.bincount(d, weights=ctx, minlength=n)
    tau = np.zeros(n)
    live = np.flatnonzero(B > 0)
    kind_live = T.kind[live]
    for k in np.unique(kind_live).tolist():
        rows = live[kind_live == k]
        tau[rows] = sim.kinds[k].step_seconds(B[rows], C[rows])
    st = np.maximum(sim.t_dstart[A], t0)
    avail = t1 - st
    step = tau[d]
    can = avail / step
    need = (w.output_tokens[A] - 1) - sim.gen[A]
    fin = can >= need
    made = np.where(fin, need, can)
    sim.gen[A] += made
    end = np.where(fin, st + need * step, t1)
    np.maximum.at(sim._dec_busy, d, (end - st) / sim.dt)
    sim._dec_tokens = np.bincount(d, weights=made, minlength=n)
    steps = sim._dec_busy * sim.dt / np.where(tau > 0, tau, 1.0)
    for k in np.unique(kind_live).tolist():
        rows = live[kind_live == k]
        sim._dec_flops[rows] = steps[rows] * sim.kinds[k].decode_flops(B[rows], C[rows])
    done_ids = A[fin]
    if len(done_ids):
        dd = d[fin]
        sim.t_done[done_ids] = end[fin]
        np.subtract.at(T.kv_used, dd, sim.reserve[done_ids])
        np.subtract.at(T.kv_promised, dd, sim.reserve[done_ids])
        np.add.at(T.n_active, dd, -1)
        sim._active = A[~fin]
