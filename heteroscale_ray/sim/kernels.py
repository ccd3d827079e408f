"""Compiled twins of the simulator's per-request loops, used when numba is installed.

A replay spends its time in loops over requests: the routing loop (one pass per request, in
arrival order, because each choice changes the queues the next one sees) and the per-tick
bookkeeping of decode admission, decode progress and the per-tick series. In Python and numpy
they cost microseconds per request and tens of numpy calls per tick; compiled, nanoseconds.
The Python and numpy versions (`routing._assign` and `_commit`, `tick_record._sums`) stay the
reference and the fallback: each kernel here performs the same floating-point operations in the
same order, so a replay gives the same numbers bit for bit either way (tests/test_sim_kernels.py
runs both on the same scenarios). The timing formulas stay in `perf` (applied per tick, or per
block of requests), not here. The decode side of a tick (admission, step times, progress) has
its twins in `decode_kernels.py`; the prefix-cache path (cache-aware routing and its LRU) in
`cache_kernels.py`.

Set HETEROSCALE_SIM_KERNELS=0 to use the reference code even when numba is installed.
"""

from __future__ import annotations

import os

import numpy as np

from heteroscale_ray.sim.instances import READY

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


@compiled
def heaviest_scan(t, total, spans):
    """`arrival_bursts.heaviest`'s scan, one pass per span: for each u in `spans`, the largest
    `total[searchsorted(t, t + u, "left")] - total[:len(t)]` (`t` sorted, `total` its running
    sum from 0). The window's end only moves forward, so it walks instead of searching."""
    n = len(t)
    out = np.empty(len(spans))
    for k in range(len(spans)):
        u = spans[k]
        j = 0
        best = -np.inf
        for i in range(n):
            end = t[i] + u
            while j < n and t[j] < end:
                j += 1
            v = total[j] - total[i]
            if v > best:
                best = v
        out[k] = best
    return out


@compiled
def pairwise_sum(a, lo, n):
    """`np.sum(a[lo:lo + n])` of float64 values, bit for bit: numpy adds a contiguous array
    pairwise (halves, cut at a multiple of 8, down to blocks of at most 128, each summed in
    eight interleaved lanes), not in order, so a loop that adds in order rounds differently.
    Walked with a stack: numba's on-disk cache mishandles recursive functions."""
    if n <= 128:
        return _block_sum(a, lo, n)
    starts = np.empty(64, dtype=np.int64)  # the halving is at most 64 levels deep
    sizes = np.empty(64, dtype=np.int64)
    stage = np.zeros(64, dtype=np.int64)  # 0: go left, 1: go right, 2: add the two
    sums = np.empty(64)
    top, held = 0, 0
    starts[0], sizes[0] = lo, n
    while top >= 0:
        m = sizes[top]
        if m <= 128:
            sums[held] = _block_sum(a, starts[top], m)
            held += 1
            top -= 1
            continue
        half = m // 2
        half -= half % 8
        if stage[top] == 2:
            held -= 1
            sums[held - 1] = sums[held - 1] + sums[held]
            top -= 1
            continue
        right = stage[top] == 1
        stage[top] += 1
        top += 1
        starts[top] = starts[top - 1] + (half if right else 0)
        sizes[top] = m - half if right else half
        stage[top] = 0
    return sums[0]


@compiled
def _block_sum(a, lo, n):
    """numpy's pairwise sum of at most 128 values: in order under 8, else 8 lanes."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    while i < n - (n % 8):
        j = lo + i
        r0 += a[j]
        r1 += a[j + 1]
        r2 += a[j + 2]
        r3 += a[j + 3]
        r4 += a[j + 4]
        r5 += a[j + 5]
        r6 += a[j + 6]
        r7 += a[j + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@compiled
def token_steps(made, tau, svc, out):
    """`tick_record._token_steps` into `out` (one value per service): each service's decode
    tokens of the tick times its busy instances' mean step (`made`, `tau` and `svc` per
    instance)."""
    n = len(made)
    k = len(out)
    busy = np.empty(n)
    count = np.zeros(k)
    steps = np.zeros(k)
    tokens = np.zeros(k)
    m = 0
    for i in range(n):
        tokens[svc[i]] += made[i]
        if made[i] > 0:
            busy[m] = tau[i]
            m += 1
            steps[svc[i]] += tau[i]
            count[svc[i]] += 1.0
    if m == 0:
        out[:] = 0.0
    elif k == 1:
        out[0] = (0.0 + pairwise_sum(busy, 0, m)) / m * (0.0 + pairwise_sum(made, 0, n))
    else:
        for s in range(k):
            out[s] = steps[s] / (count[s] if count[s] >= 1.0 else 1.0) * tokens[s]


@compiled
def prefill_queue(row_ids, prefill, svc, state, p_inst, waiting, p_work, t_first, service, t1, out):
    """`prefill_queue.record_queue` into `out` (one value per service): the work routed to
    each service's ready prefill instances and not started at `t1`, per such instance (NaN
    without one); `waiting` in the reference's order, so each sum adds as its bincount does."""
    k = len(out)
    count = np.zeros(k)
    queued = np.zeros(k)
    for i in range(len(row_ids)):
        r = row_ids[i]
        if prefill[i] and state[r] == READY:
            count[svc[r]] += 1.0
    for x in range(len(waiting)):
        rid = waiting[x]
        if state[p_inst[rid]] != READY:
            continue
        work = p_work[rid]
        if t_first[rid] - work > t1:
            queued[service[rid]] += work
    for s in range(k):
        out[s] = queued[s] / (count[s] if count[s] >= 1.0 else 1.0) if count[s] > 0 else np.nan


@compiled
def percentile(x, q):
    """`np.percentile(x, q)` (its default, linear method) of a non-empty float64 array, bit
    for bit: the two order statistics around the virtual index (n - 1) * q / 100, exact
    however they are selected, then numpy's interpolation (from the upper one when the
    weight is at least a half). NaN if any value is. `x` is not changed."""
    n = len(x)
    for i in range(n):
        if np.isnan(x[i]):
            return np.nan
    at = (n - 1) * (q / 100.0)
    if at >= n - 1:
        return np.max(x)
    below = int(np.floor(at))
    part = np.partition(x, below)
    a = part[below]
    b = np.min(part[below + 1 :])
    gamma = at - below
    diff = b - a
    if gamma >= 0.5:
        return b - diff * (1.0 - gamma)
    return a + diff * gamma
