"""The decode side of a simulator tick: FIFO admission and continuous batching.

A request reserves input + output KV tokens; each decode instance admits FIFO (by KV arrival)
while its batch fits the sequence cap and its KV capacity. Every running sequence then advances
by (time available in the tick) / (step time of its instance's batch) tokens. Split out of
`sim/cluster.py`; both functions update the simulator's request and instance state in place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from heteroscale_ray.sim import kernels
from heteroscale_ray.sim.layout import layout

if TYPE_CHECKING:
    from heteroscale_ray.sim.cluster import ClusterSim


def admit_fifo(sim: ClusterSim, t0: float, t1: float) -> None:
    """FIFO admission per decode instance while sequences and KV reservations fit."""
    p = sim._pending
    if not len(p):
        return
    T = sim.inst
    if kernels.ENABLED:
        left, admitted = kernels.admit(
            p,
            sim.t_kv,
            sim.d_inst,
            sim.reserve,
            sim.t_dstart,
            T.max_seqs,
            T.kv_cap,
            T.n_active,
            T.n_pending,
            T.kv_used,
            t0,
            t1,
        )
        if len(admitted):
            sim._pending = left
            sim._active = np.concatenate([sim._active, admitted])
        return
    t_kv = sim.t_kv[p]
    ok = t_kv < t1
    at = ok.nonzero()[0]
    k = len(at)
    if not k:
        return
    cand, t_kv = p[at], t_kv[at]
    d = sim.d_inst[cand]
    order = np.lexsort((t_kv, d))
    cand, d, t_kv = cand[order], d[order], t_kv[order]
    res = sim.reserve[cand]
    # segments of equal d: rank within the segment and KV reserved up to and including it
    first_of = np.empty(k, dtype=bool)
    first_of[0] = True
    np.not_equal(d[1:], d[:-1], out=first_of[1:])
    head = first_of.nonzero()[0][first_of.cumsum() - 1]
    rank = np.arange(k) - head
    csum0 = np.empty(k + 1)
    csum0[0] = 0.0
    res.cumsum(out=csum0[1:])
    cum = csum0[1:] - csum0[head]
    admit = (rank < T.max_seqs[d] - T.n_active[d]) & (cum <= T.kv_cap[d] - T.kv_used[d])
    if admit.all():  # the usual case: every arrived request fits
        a_ids, a_d, a_res, a_kv = cand, d, res, t_kv
        sim._pending = p[~ok]
    else:
        sel = admit.nonzero()[0]
        if not len(sel):
            return
        a_ids, a_d, a_res, a_kv = cand[sel], d[sel], res[sel], t_kv[sel]
        keep = np.ones(len(p), dtype=bool)
        keep[at[order[sel]]] = False
        sim._pending = p[keep]
    sim.t_dstart[a_ids] = np.maximum(a_kv, t0)
    np.add.at(T.kv_used, a_d, a_res)
    n_adm = np.bincount(a_d, minlength=T.n)
    T.n_active[: T.n] += n_adm
    T.n_pending[: T.n] -= n_adm
    sim._active = np.concatenate([sim._active, a_ids])


def advance_decode(sim: ClusterSim, t0: float, t1: float) -> None:
    """Every running sequence advances by the time it has in the tick over its instance's step.

    Step times are evaluated per kind over all held decode instances (`Layout`): an instance
    with no sequence gets a zero step and zero FLOPs, as if it were skipped.
    """
    T, w = sim.inst, sim.w
    n = T.n
    sim._dec_busy = np.zeros(n)
    sim._dec_flops = np.zeros(n)
    A = sim._active
    if not len(A):
        sim._dec_tokens = np.zeros(n)
        return
    by_kind = layout(sim).decode_by_kind
    if kernels.ENABLED:
        B, C = kernels.batch_sums(A, sim.d_inst, w.input_tokens, sim.gen, n)
    else:
        d = sim.d_inst[A]
        gen = sim.gen[A]
        B = np.bincount(d, minlength=n).astype(float)
        C = np.bincount(d, weights=w.input_tokens[A] + gen, minlength=n)
    tau = np.zeros(n)
    for k, rows in by_kind:
        tau[rows] = sim.kinds[k].step_seconds(B[rows], C[rows])
    if kernels.ENABLED:
        sim._dec_tokens = np.zeros(n)
        sim._active = kernels.progress(
            A,
            sim.d_inst,
            w.output_tokens,
            sim.gen,
            sim.t_dstart,
            sim.reserve,
            sim.t_done,
            tau,
            T.kv_used,
            T.kv_promised,
            T.n_active,
            sim._dec_busy,
            sim._dec_tokens,
            t0,
            t1,
            sim.dt,
        )
    else:
        _progress(sim, A, d, gen, tau, t0, t1)
    steps = sim._dec_busy * sim.dt / np.where(tau > 0, tau, 1.0)
    for k, rows in by_kind:
        sim._dec_flops[rows] = steps[rows] * sim.kinds[k].decode_flops(B[rows], C[rows])


def _progress(
    sim: ClusterSim,
    A: np.ndarray,
    d: np.ndarray,
    gen: np.ndarray,
    tau: np.ndarray,
    t0: float,
    t1: float,
) -> None:
    """Each running sequence `A` (on instances `d`, `gen` tokens made) advances by its time
    in the tick over its instance's step `tau`; finished ones free their KV."""
    T, w = sim.inst, sim.w
    n = T.n
    st = np.maximum(sim.t_dstart[A], t0)
    step = tau[d]
    can = (t1 - st) / step
    need = (w.output_tokens[A] - 1) - gen
    fin = can >= need
    made = np.minimum(can, need)  # = need where fin
    sim.gen[A] = gen + made
    end = np.where(fin, st + need * step, t1)
    np.maximum.at(sim._dec_busy, d, (end - st) / sim.dt)
    sim._dec_tokens = np.bincount(d, weights=made, minlength=n)
    if fin.any():
        done_ids = A[fin]
        dd = d[fin]
        sim.t_done[done_ids] = end[fin]
        freed = sim.reserve[done_ids]
        np.subtract.at(T.kv_used, dd, freed)
        np.subtract.at(T.kv_promised, dd, freed)
        T.n_active[:n] -= np.bincount(dd, minlength=n)
        sim._active = A[~fin]
