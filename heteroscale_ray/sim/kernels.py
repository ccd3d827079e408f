"""Compiled twins of the simulator's per-request loops, used when numba is installed.

A replay spends its time in loops over requests: the routing loop (one pass per request, in
arrival order, because each choice changes the queues the next one sees) and the per-tick
bookkeeping of decode admission, decode progress and the per-tick series. In Python and numpy
they cost microseconds per request and tens of numpy calls per tick; compiled, nanoseconds.
The Python and numpy versions (`routing._assign` and `_commit`, `decode_phase.admit_fifo` and
`_progress`, `tick_record._sums`) stay the reference and the fallback: each kernel here performs
the same floating-point operations in the same order, so a replay gives the same numbers bit
for bit either way (tests/test_sim_kernels.py runs both on the same scenarios). The timing
formulas stay in `perf` (applied per tick, or per block of requests); the one twin here,
decode's step time on a dense kind (`_price_steps`, priced three times a tick), performs
`InstanceKind.step_seconds`' operations in their order.
The prefix-cache path (cache-aware routing and its LRU) has its twins in `cache_kernels.py`.

Set HETEROSCALE_SIM_KERNELS=0 to use the reference code even when numba is installed.
"""

from __future__ import annotations

import os

import numpy as np

try:  # numba is optional: without it the reference code runs
    from numba import njit
except ImportError:  # pragma: no cover - depends on the environment
    njit = None

ENABLED = njit is not None and os.environ.get("HETEROSCALE_SIM_KERNELS", "1") != "0"


def compiled(fn):
    """`fn` compiled (cached on disk beside its module) when the kernels are on."""
    return njit(cache=True, nogil=True)(fn) if ENABLED else fn


@compiled
def group_min(key, pos, lo, hi):
    """Smallest `key[pos[x]]` for x in [lo, hi) (inf if empty)."""
    best = np.inf
    for x in range(lo, hi):
        v = key[pos[x]]
        if v < best:
            best = v
    return best


@compiled
def group_argmin(key, pos, lo, hi):
    """Position of the smallest (key, position) among `pos[lo:hi]` (positions ascending):
    what a heap of (key, position) tuples pops."""
    r = pos[lo]
    best = key[r]
    for x in range(lo + 1, hi):
        q = pos[x]
        if key[q] < best:
            best = key[q]
            r = q
    return r


@compiled
def route_tick(
    ids,  # int64[m]: the requests, arrival order
    arr,  # float64[m]: their arrivals
    inp,  # int64[m]: prompt tokens
    out,  # int64[m]: output tokens
    t0,  # tick start
    svc,  # float64[kinds, m]: prefill seconds per prefill kind
    flops,  # float64[kinds, m]: prefill FLOPs per prefill kind
    kv_secs,  # float64[kinds, levels, m]: KV transfer seconds per prefill kind and level
    pk,  # int64[P]: prefill position -> row of svc/flops/kv_secs
    inc,  # float64[classes, m]: decode load added per decode class
    res,  # float64[classes, m]: KV reserved per decode class
    dc,  # int64[D]: decode position -> row of inc/res
    pre,  # int64[P]: prefill position -> instance row
    dec,  # int64[D]: decode position -> instance row
    level,  # int64[P, D]: switch level a prefill and a decode position share
    pstart,  # int64[G+1], ppos: prefill positions of DG i are ppos[pstart[i]:pstart[i+1]]
    ppos,
    dstart,  # int64[G+1], dpos: as pstart, ppos for decode
    dpos,
    full_row,  # float64[D]: KV a batch at the TBT SLO holds
    batch_row,  # float64[D]: that batch
    per_seq,  # float64[D]: 1 / batch
    ttft_slo,
    hold,  # routing stops at a request its prefill instance would queue for longer than this
    dt,
    free_at,  # per instance: updated
    cum_work,
    cum_flops,
    kv_promised,
    n_active,
    n_pending,
    p_inst,  # per request: written
    d_inst,
    t_first,
    p_work,
    t_done,
    reserve,
    kv_level,
    kv_time,
    t_kv,
    ts_prefill_tokens,  # per tick: prefill tokens done; updated
    level_counts,  # int64[levels], zeros: requests routed per level (out)
    go_ids,  # out int64[m]: the requests that go on to decode (first n_go entries)
):
    """`routing.Pools`, `routing._assign` and `routing._commit` in one pass, for requests
    without prefix hashes; returns how many requests were routed (the first ones; the rest
    are held) and how many of those go on to decode. See those for the rules; every value is
    computed by the same operations in the same order."""
    n_groups = len(pstart) - 1
    n_pre, n_dec = len(pre), len(dec)
    pkey = np.empty(n_pre)
    for p in range(n_pre):
        f = free_at[pre[p]]
        pkey[p] = f if f > t0 else t0
    dkv = np.empty(n_dec)
    dseqs = np.empty(n_dec)
    dload = np.empty(n_dec)
    for d in range(n_dec):
        row = dec[d]
        dkv[d] = kv_promised[row] / full_row[d]
        dseqs[d] = (n_active[row] + n_pending[row]) / batch_row[d]
        dload[d] = dkv[d] if dkv[d] >= dseqs[d] else dseqs[d]
    pmin = np.empty(n_groups)
    dmin = np.empty(n_groups)
    for i in range(n_groups):
        pmin[i] = group_min(pkey, ppos, pstart[i], pstart[i + 1])
        dmin[i] = group_min(dload, dpos, dstart[i], dstart[i + 1])
    last_tick = len(ts_prefill_tokens) - 1
    gi = 0
    n_go = 0
    n_routed = len(arr)
    for j in range(len(arr)):
        a = arr[j]
        a0 = a if a > t0 else t0
        if n_groups > 1:
            best = np.inf
            gi = -1
            for i in range(n_groups):
                p = pmin[i]
                if p - a0 > hold:
                    continue
                score = (p - a) / ttft_slo + dmin[i] if p > a else dmin[i]
                if score < best:
                    best = score
                    gi = i
            if gi < 0:
                n_routed = j
                break
        r = group_argmin(pkey, ppos, pstart[gi], pstart[gi + 1])
        free = pkey[r]
        if free - a0 > hold:
            n_routed = j
            break
        kr = pk[r]
        fin = (free if free > a else a0) + svc[kr, j]
        pkey[r] = fin
        pmin[gi] = group_min(pkey, ppos, pstart[gi], pstart[gi + 1])
        d = group_argmin(dload, dpos, dstart[gi], dstart[gi + 1])
        c = dc[d]
        k = dkv[d] + inc[c, j]
        dkv[d] = k
        q = dseqs[d] + per_seq[d]
        dseqs[d] = q
        dload[d] = k if k > q else q
        dmin[gi] = group_min(dload, dpos, dstart[gi], dstart[gi + 1])
        # commit: the prefill instance's work, the request's first token and reservation
        rid = ids[j]
        row = pre[r]
        cum_work[row] += svc[kr, j]
        cum_flops[row] += flops[kr, j]
        p_inst[rid] = row
        t_first[rid] = fin
        p_work[rid] = svc[kr, j]
        reserve[rid] = res[c, j]
        tick = int(fin / dt)
        ts_prefill_tokens[tick if tick < last_tick else last_tick] += inp[j]
        if out[j] <= 1:  # a single-token output is done at prefill
            t_done[rid] = fin
        else:  # the rest go to decode after the KV copy
            drow = dec[d]
            d_inst[rid] = drow
            kv_promised[drow] += res[c, j]
            n_pending[drow] += 1
            lvl = level[r, d]
            secs = kv_secs[kr, lvl, j]
            kv_level[rid] = lvl
            kv_time[rid] = secs
            t_kv[rid] = fin + secs
            level_counts[lvl] += 1
            go_ids[n_go] = rid
            n_go += 1
    for p in range(n_pre):
        free_at[pre[p]] = pkey[p]
    return n_routed, n_go


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


@compiled
def record(
    rows,  # int64[m]: held instances
    key,  # int64[m]: their (service, role) bin
    prefill,  # bool[m]
    t_ready,  # float64[m]
    gpus,  # float64[m]
    gpu_cost,  # float64[m]
    den,  # float64[m]: SM-activity denominator (peak FLOP/s)
    state,  # per instance
    cum_work,
    free_at,
    cum_flops,
    exec_prev,  # updated
    kv_used,
    kv_cap,
    dec_busy,
    dec_flops,
    dec_tokens,
    t1,
    dt,
    sums,  # float64[series, bins], zeros: the tick's row of every series (out)
):
    """`tick_record.record_tick`'s per-instance part: the same sums in the same row order
    (numpy's maximum/minimum spelled out: `a if a >= b else b`, `a if a <= b else b`)."""
    for i in range(len(rows)):
        row = rows[i]
        st = state[row]
        held_out = st == 4 and t_ready[i] <= t1  # SOFT, model loaded
        ready = st == 1  # READY
        leaving = st == 2 or held_out  # DRAINING
        serving = ready or leaving
        cw = cum_work[row]
        ready_at = t1 if t1 >= t_ready[i] else t_ready[i]
        queued = free_at[row] - ready_at
        executed = cw - (0.0 if queued <= 0.0 else queued)
        if not cw > 0:
            executed = 0.0
        x = (executed - exec_prev[row]) / dt
        x = x if x >= 0.0 else 0.0
        busy_p = x if x <= 1.0 else 1.0
        flops_rate = cum_flops[row] / cw if cw > 0 else 0.0
        sm_p = busy_p * flops_rate / den[i]
        exec_prev[row] = executed
        sm_d = dec_flops[row] / (dt * den[i])
        bd = dec_busy[row]
        busy = busy_p if prefill[i] else (bd if bd <= 1.0 else 1.0)
        sm = sm_p if prefill[i] else sm_d
        sm = sm if sm <= 1.0 else 1.0
        if not serving:
            busy = 0.0
            sm = 0.0
        cap = kv_cap[row]
        kv = kv_used[row] / (cap if cap >= 1.0 else 1.0) if serving and not prefill[i] else 0.0
        b = key[i]
        sums[0, b] += 1.0 if ready else 0.0
        sums[1, b] += 1.0 if st == 0 else 0.0  # STARTING
        sums[2, b] += 1.0 if leaving else 0.0
        sums[3, b] += gpus[i]
        sums[4, b] += gpu_cost[i]
        sums[5, b] += busy
        sums[6, b] += sm
        sums[7, b] += busy * gpus[i]
        sums[8, b] += sm * gpus[i]
        sums[9, b] += kv
        sums[10, b] += dec_tokens[row] if serving else 0.0


@compiled
def in_window(t_first, t_done, lo, hi, a, b):
    """Requests in [lo, hi) whose first token, and those whose last token, fell in [a, b):
    `np.flatnonzero((x >= a) & (x < b)) + lo` for x = t_first[lo:hi] and t_done[lo:hi]."""
    first = np.empty(hi - lo, dtype=np.int64)
    done = np.empty(hi - lo, dtype=np.int64)
    n_first = 0
    n_done = 0
    for i in range(lo, hi):
        x = t_first[i]
        if x >= a and x < b:
            first[n_first] = i
            n_first += 1
        x = t_done[i]
        if x >= a and x < b:
            done[n_done] = i
            n_done += 1
    return first[:n_first].copy(), done[:n_done].copy()
