"""The decode side of a simulator tick: FIFO admission and continuous batching.

A request reserves input + output KV tokens; each decode instance admits FIFO (by KV arrival)
while its batch fits the sequence cap and its KV capacity. Every running sequence then advances
by (time available in the tick) / (step time of its instance's batch) tokens. Split out of
`sim/cluster.py`; both functions update the simulator's request and instance state in place.

The batch a tick's step time is priced at is the instance's concurrency averaged over the span
it was busy, not the count of sequences it held at any time in the tick: a request with five
output tokens lives about 150 ms, so sixty of them arriving over one second overlap about nine
at a time, and a step priced at all sixty (one tick's worth) broke the TBT SLO that a real
engine, admitting at every step, meets. Sequences running the whole tick count fully, so long
outputs are priced as before. The step times and the overlaps depend on each other: the
estimate is refined `BATCH_ROUNDS` times from the plain count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from heteroscale_ray.sim import decode_kernels, kernels
from heteroscale_ray.sim.layout import layout

if TYPE_CHECKING:
    from heteroscale_ray.sim.cluster import ClusterSim

BATCH_ROUNDS = 2


def admit_fifo(sim: ClusterSim, t0: float, t1: float) -> None:
    """FIFO admission per decode instance while sequences and KV reservations fit."""
    p = sim._pending
    if not len(p):
        return
    T = sim.inst
    if kernels.ENABLED:
        left, admitted = decode_kernels.admit(
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
        sim._dec_steps = np.zeros(n)
        return
    lay = layout(sim)
    by_kind = lay.decode_by_kind
    if kernels.ENABLED and lay.step_coeffs is not None:
        B, C, tau = decode_kernels.decode_step_times(
            A, sim.d_inst, w.input_tokens, w.output_tokens, sim.gen, sim.t_dstart,
            lay.decode_rows, lay.step_coeffs, t0, t1, BATCH_ROUNDS, n,
        )  # fmt: skip
    else:
        B, C, tau = _step_times(sim, A, by_kind, t0, t1)
    if kernels.ENABLED:
        sim._dec_tokens = np.zeros(n)
        sim._active = decode_kernels.progress(
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
        _progress(sim, A, sim.d_inst[A], sim.gen[A], tau, t0, t1)
    sim._dec_steps = tau
    steps = sim._dec_busy * sim.dt / np.where(tau > 0, tau, 1.0)
    for k, rows in by_kind:
        sim._dec_flops[rows] = steps[rows] * sim.kinds[k].decode_flops(B[rows], C[rows])


def _step_times(
    sim: ClusterSim,
    A: np.ndarray,
    by_kind: list[tuple[int, np.ndarray]],
    t0: float,
    t1: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each decode instance's batch B, KV tokens C and step time tau in the tick: the batch it
    holds, then `BATCH_ROUNDS` times the batch it held on average at the step times before."""
    w, n = sim.w, sim.inst.n
    if kernels.ENABLED:
        B, C = decode_kernels.batch_sums(A, sim.d_inst, w.input_tokens, sim.gen, n)
    else:
        d = sim.d_inst[A]
        gen = sim.gen[A]
        B = np.bincount(d, minlength=n).astype(float)
        C = np.bincount(d, weights=w.input_tokens[A] + gen, minlength=n)
    tau = np.zeros(n)

    def price() -> None:  # each instance's step at its batch B over C KV tokens
        for k, rows in by_kind:
            tau[rows] = sim.kinds[k].step_seconds(B[rows], C[rows])

    price()
    for _ in range(BATCH_ROUNDS):
        if kernels.ENABLED:
            B, C = decode_kernels.overlap_sums(
                A, sim.d_inst, w.input_tokens, w.output_tokens, sim.gen, sim.t_dstart, tau,
                t0, t1, B, C,
            )  # fmt: skip
        else:
            B, C = _overlap_sums(sim, A, tau, t0, t1, B, C)
        price()
    return B, C, tau


def _overlap_sums(
    sim: ClusterSim,
    A: np.ndarray,
    tau: np.ndarray,
    t0: float,
    t1: float,
    B: np.ndarray,
    C: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per decode instance, the sequences and KV tokens it held on average over the span it was
    busy in the tick, at step times `tau` (B and C where it held none)."""
    n = len(B)
    d = sim.d_inst[A]
    ctx = sim.w.input_tokens[A] + sim.gen[A]
    st = np.maximum(sim.t_dstart[A], t0)
    dur = np.minimum(t1 - st, ((sim.w.output_tokens[A] - 1) - sim.gen[A]) * tau[d])
    lo = np.full(n, np.inf)
    hi = np.full(n, -np.inf)
    np.minimum.at(lo, d, st)
    np.maximum.at(hi, d, st + dur)
    held = np.bincount(d, weights=dur, minlength=n)
    held_ctx = np.bincount(d, weights=dur * ctx, minlength=n)
    span = hi - lo
    busy = span > 0
    safe = np.where(busy, span, 1.0)
    return np.where(busy, held / safe, B), np.where(busy, held_ctx / safe, C)


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
