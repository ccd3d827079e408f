"""The decode side of a simulator tick: FIFO admission and continuous batching.

A request reserves input + output KV tokens; each decode instance admits FIFO (by KV arrival)
while its batch fits the sequence cap and its KV capacity. Every running sequence then advances
by (time available in the tick) / (step time of its instance's batch) tokens. Split out of
`sim/cluster.py`; both functions update the simulator's request and instance state in place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from heteroscale_ray.sim.instances import distinct

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
    k = len(cand)
    if not k:
        return
    d = sim.d_inst[cand]
    order = np.lexsort((sim.t_kv[cand], d))
    cand, d = cand[order], d[order]
    res = sim.reserve[cand]
    # segments of equal d: rank within the segment and KV reserved up to and including it
    first_of = np.empty(k, dtype=bool)
    first_of[0] = True
    np.not_equal(d[1:], d[:-1], out=first_of[1:])
    starts = np.flatnonzero(first_of)
    head = starts[np.cumsum(first_of) - 1]
    rank = np.arange(k) - head
    csum0 = np.empty(k + 1)
    csum0[0] = 0.0
    np.cumsum(res, out=csum0[1:])
    cum = csum0[1:] - csum0[head]
    admit = (rank < T.max_seqs[d] - T.n_active[d]) & (cum <= T.kv_cap[d] - T.kv_used[d])
    a_ids, a_d = cand[admit], d[admit]
    if not len(a_ids):
        return
    sim.t_dstart[a_ids] = np.maximum(sim.t_kv[a_ids], t0)
    np.add.at(T.kv_used, a_d, res[admit])
    n_adm = np.bincount(a_d, minlength=T.n)
    T.n_active[: T.n] += n_adm
    T.n_pending[: T.n] -= n_adm
    keep = np.ones(len(p), dtype=bool)
    keep[np.flatnonzero(ok)[order[admit]]] = False
    sim._pending = p[keep]
    sim._active = np.concatenate([sim._active, a_ids])


def advance_decode(sim: ClusterSim, t0: float, t1: float) -> None:
    T, w = sim.inst, sim.w
    n = T.n
    sim._dec_busy = np.zeros(n)
    sim._dec_flops = np.zeros(n)
    A = sim._active
    if not len(A):
        sim._dec_tokens = np.zeros(n)
        return
    d = sim.d_inst[A]
    gen = sim.gen[A]
    ctx = w.input_tokens[A] + gen
    B = np.bincount(d, minlength=n).astype(float)
    C = np.bincount(d, weights=ctx, minlength=n)
    tau = np.zeros(n)
    live = np.flatnonzero(B > 0)
    kind_live = T.kind[live]
    present = distinct(kind_live, len(sim.kinds))
    by_kind = [(k, live if len(present) == 1 else live[kind_live == k]) for k in present]
    for k, rows in by_kind:
        tau[rows] = sim.kinds[k].step_seconds(B[rows], C[rows])
    st = np.maximum(sim.t_dstart[A], t0)
    step = tau[d]
    can = (t1 - st) / step
    need = (w.output_tokens[A] - 1) - gen
    fin = can >= need
    made = np.where(fin, need, can)
    sim.gen[A] = gen + made
    end = np.where(fin, st + need * step, t1)
    np.maximum.at(sim._dec_busy, d, (end - st) / sim.dt)
    sim._dec_tokens = np.bincount(d, weights=made, minlength=n)
    steps = sim._dec_busy * sim.dt / np.where(tau > 0, tau, 1.0)
    for k, rows in by_kind:
        sim._dec_flops[rows] = steps[rows] * sim.kinds[k].decode_flops(B[rows], C[rows])
    if fin.any():
        done_ids = A[fin]
        dd = d[fin]
        sim.t_done[done_ids] = end[fin]
        freed = sim.reserve[done_ids]
        np.subtract.at(T.kv_used, dd, freed)
        np.subtract.at(T.kv_promised, dd, freed)
        T.n_active[:n] -= np.bincount(dd, minlength=n)
        sim._active = A[~fin]
