"""The compiled twins of the decode side of a tick (`decode_phase`), used when numba is
installed: FIFO admission to decode, the batch each instance steps at and its step time, and
each running sequence's progress.

Kept apart from the routing and per-tick series kernels in `kernels.py` (whose `compiled`
decorator and switch they share). `decode_phase.admit_fifo`, `_step_times` and `_progress`
stay the reference; every value here is computed by the same operations in the same order
(tests/test_sim_kernels.py). The one timing formula here, decode's step time on a dense kind
(`_price_steps`, priced three times a tick), performs `InstanceKind.step_seconds`' operations
in their order.
"""

from __future__ import annotations

import numpy as np

from heteroscale_ray.sim.kernels import compiled


@compiled
def _by_instance_then_kv(cand, d_inst, t_kv):
    """np.lexsort((t_kv[cand], d_inst[cand])): the order by instance, then KV arrival, then
    position (a stable bottom-up merge sort)."""
    k = len(cand)
    order = np.arange(k)
    tmp = np.empty(k, dtype=np.int64)
    d = d_inst[cand]
    tk = t_kv[cand]
    width = 1
    while width < k:
        for lo in range(0, k, 2 * width):
            mid = min(lo + width, k)
            hi = min(lo + 2 * width, k)
            i, j, x = lo, mid, lo
            while i < mid and j < hi:
                a, b = order[i], order[j]
                # take from the right only when strictly smaller: stable
                if d[b] < d[a] or (d[b] == d[a] and tk[b] < tk[a]):
                    tmp[x] = b
                    j += 1
                else:
                    tmp[x] = a
                    i += 1
                x += 1
            while i < mid:
                tmp[x] = order[i]
                i += 1
                x += 1
            while j < hi:
                tmp[x] = order[j]
                j += 1
                x += 1
        order, tmp = tmp, order
        width *= 2
    return order


@compiled
def admit(
    pending,  # int64[k]: requests waiting for a decode slot, in arrival-at-decode order
    t_kv,  # float64[n requests]
    d_inst,
    reserve,
    t_dstart,  # updated
    max_seqs,  # per instance
    kv_cap,
    n_active,  # updated
    n_pending,  # updated
    kv_used,  # updated
    t0,
    t1,
):
    """`decode_phase.admit_fifo`: returns (still pending, admitted) request ids."""
    k_all = len(pending)
    cand_at = np.empty(k_all, dtype=np.int64)
    k = 0
    for i in range(k_all):
        if t_kv[pending[i]] < t1:
            cand_at[k] = i
            k += 1
    if k == 0:
        return pending, pending[:0]
    cand_at = cand_at[:k]
    order = _by_instance_then_kv(pending[cand_at], d_inst, t_kv)
    cand = pending[cand_at[order]]
    csum = np.empty(k + 1)
    csum[0] = 0.0
    for i in range(k):
        csum[i + 1] = csum[i] + reserve[cand[i]]
    admit_it = np.zeros(k, dtype=np.bool_)
    head = 0
    for i in range(k):
        d = d_inst[cand[i]]
        if i > 0 and d != d_inst[cand[i - 1]]:
            head = i
        cum = csum[i + 1] - csum[head]
        admit_it[i] = (i - head < max_seqs[d] - n_active[d]) & (cum <= kv_cap[d] - kv_used[d])
    n_adm = 0
    for i in range(k):
        if admit_it[i]:
            n_adm += 1
    if n_adm == 0:
        return pending, pending[:0]
    admitted = np.empty(n_adm, dtype=np.int64)
    taken = np.zeros(k_all, dtype=np.bool_)
    x = 0
    for i in range(k):
        if admit_it[i]:
            rid = cand[i]
            d = d_inst[rid]
            tk = t_kv[rid]
            t_dstart[rid] = tk if tk > t0 else t0
            kv_used[d] += reserve[rid]
            admitted[x] = rid
            x += 1
            taken[cand_at[order[i]]] = True
    for i in range(n_adm):
        d = d_inst[admitted[i]]
        n_active[d] += 1
        n_pending[d] -= 1
    left = np.empty(k_all - n_adm, dtype=np.int64)
    x = 0
    for i in range(k_all):
        if not taken[i]:
            left[x] = pending[i]
            x += 1
    return left, admitted


@compiled
def batch_sums(active, d_inst, input_tokens, gen, n):
    """Per decode instance: sequences running (B) and the KV tokens they hold (C)."""
    B = np.zeros(n)
    C = np.zeros(n)
    for rid in active:
        d = d_inst[rid]
        B[d] += 1.0
        C[d] += input_tokens[rid] + gen[rid]
    return B, C


@compiled
def overlap_sums(active, d_inst, input_tokens, output_tokens, gen, t_dstart, tau, t0, t1, B, C):
    """`decode_phase._overlap_sums`: per instance, the sequences and KV tokens held on average
    over the span it was busy in the tick (B and C where it held none)."""
    n = len(B)
    lo = np.full(n, np.inf)
    hi = np.full(n, -np.inf)
    held = np.zeros(n)
    held_ctx = np.zeros(n)
    for rid in active:
        d = d_inst[rid]
        ts = t_dstart[rid]
        st = ts if ts > t0 else t0
        run = ((output_tokens[rid] - 1) - gen[rid]) * tau[d]
        dur = t1 - st if t1 - st < run else run
        if st < lo[d]:
            lo[d] = st
        if st + dur > hi[d]:
            hi[d] = st + dur
        held[d] += dur
        held_ctx[d] += dur * (input_tokens[rid] + gen[rid])
    Bo = B.copy()
    Co = C.copy()
    for d in range(n):
        span = hi[d] - lo[d]
        if span > 0:
            Bo[d] = held[d] / span
            Co[d] = held_ctx[d] / span
    return Bo, Co


@compiled
def decode_step_times(
    active, d_inst, input_tokens, output_tokens, gen, t_dstart, rows, coeffs, t0, t1, rounds, n
):
    """`decode_phase.advance_decode`'s step times on dense kinds: each instance's batch
    (`batch_sums`), then `rounds` times its average over the tick (`overlap_sums`), each
    priced by `InstanceKind.step_seconds`' operations in their order (the instances `rows`,
    their kinds' coefficients in `coeffs`, `layout.STEP_COEFFS` order). Returns B, C, tau."""
    B, C = batch_sums(active, d_inst, input_tokens, gen, n)
    tau = np.zeros(n)
    _price_steps(rows, coeffs, B, C, tau)
    for _ in range(rounds):
        B, C = overlap_sums(
            active, d_inst, input_tokens, output_tokens, gen, t_dstart, tau, t0, t1, B, C
        )
        _price_steps(rows, coeffs, B, C, tau)
    return B, C, tau


@compiled
def _price_steps(rows, coeffs, B, C, tau):
    """`tau[rows] = step_seconds(B[rows], C[rows])` of a dense kind: max(weights and KV
    read, compute) + the step's overhead; 0 with no sequence."""
    for i in range(len(rows)):
        d = rows[i]
        b = B[d]
        if b > 0:
            k = coeffs[i]
            c = C[d]
            mem = (k[0] + c * k[1]) / k[2]
            comp = (k[3] * b + k[4] * c) / k[5]
            tau[d] = (mem if mem >= comp else comp) + k[6]
        else:
            tau[d] = 0.0


@compiled
def progress(
    active,  # int64[k]: running sequences, in admission order
    d_inst,
    output_tokens,
    gen,  # tokens made so far (fractional); updated
    t_dstart,
    reserve,
    t_done,  # written for the sequences that finish
    tau,  # per instance: this tick's step time
    kv_used,  # per instance: updated
    kv_promised,
    n_active,
    dec_busy,  # per instance, zeros: busy share of the tick (out)
    dec_tokens,  # per instance, zeros: tokens made (out)
    t0,
    t1,
    dt,
):
    """`decode_phase.advance_decode` but the step times and FLOPs: every running sequence
    advances by its time in the tick over its instance's step; returns those still running."""
    k = len(active)
    keep = np.empty(k, dtype=np.bool_)
    n_left = 0
    for i in range(k):
        rid = active[i]
        d = d_inst[rid]
        ts = t_dstart[rid]
        st = ts if ts > t0 else t0
        step = tau[d]
        can = (t1 - st) / step
        g = gen[rid]
        need = (output_tokens[rid] - 1) - g
        fin = can >= need
        made = need if fin else can
        gen[rid] = g + made
        end = st + need * step if fin else t1
        busy = (end - st) / dt
        if busy > dec_busy[d]:
            dec_busy[d] = busy
        dec_tokens[d] += made
        keep[i] = not fin
        if fin:
            t_done[rid] = end
        else:
            n_left += 1
    left = np.empty(n_left, dtype=np.int64)
    x = 0
    for i in range(k):
        rid = active[i]
        if keep[i]:
            left[x] = rid
            x += 1
        else:
            d = d_inst[rid]
            freed = reserve[rid]
            kv_used[d] -= freed
            kv_promised[d] -= freed
            n_active[d] -= 1
    return left
