"""Compiled twins of the simulator's per-request loops, used when numba is installed.

A replay spends its time in loops over requests: the routing loop (one pass per request, in
arrival order, because each choice changes the queues the next one sees) and the per-tick
bookkeeping of decode admission, decode progress and the per-tick series. In Python and numpy
they cost microseconds per request and tens of numpy calls per tick; compiled, nanoseconds.
The Python and numpy versions (`routing._assign` and `_commit`, `tick_record._sums`, ...) stay
the reference and the fallback: each kernel performs the same floating-point operations in the
same order, so a replay gives the same numbers bit for bit either way (tests/test_sim_kernels.py
runs both on the same scenarios). The timing formulas stay in `perf` (applied per tick, or per
block of requests), not here.

This module holds the switch, the `compiled` decorator and the routing loop. The twins of the
rest of a tick live beside it: the decode side (admission, step times, progress) in
`decode_kernels.py`, the per-tick series in `tick_kernels.py`, the observation's scans in
`observe_kernels.py`, and the prefix-cache path (cache-aware routing and its LRU) in
`cache_kernels.py`.

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
def pool_keys(t0, pre, dec, free_at, kv_promised, n_active, n_pending, full_row, batch_row):
    """`routing.Pools` as arrays: per prefill position when its queue empties (clamped to the
    tick start); per decode position its KV load, its sequence load and the binding one."""
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
    return pkey, dkv, dseqs, dload


@compiled
def commit(
    ids,  # int64[m]: the routed requests, arrival order
    p_sel,  # int64[m]: prefill position
    d_sel,  # int64[m]: decode position
    fins,  # float64[m]: first-token time
    works,  # float64[m]: prefill seconds
    flops,  # float64[m]: prefill FLOPs
    new_tokens,  # int64[m]: prompt tokens prefilled (not cached)
    out,  # int64[m]: output tokens
    kv_secs,  # float64[kinds, levels, m]: KV transfer seconds per prefill kind and level
    pk,  # int64[P]: prefill position -> row of kv_secs
    res,  # float64[classes, m]: KV reserved per decode class
    dc,  # int64[D]: decode position -> row of res
    pre,  # int64[P]: prefill position -> instance row
    dec,  # int64[D]: decode position -> instance row
    level,  # int64[P, D]: switch level a prefill and a decode position share
    dt,
    cum_work,  # per instance: updated
    cum_flops,
    kv_promised,
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
    level_counts,  # int64[levels]: requests routed per level; updated
    go_ids,  # out int64[m]: the requests that go on to decode (first n_go entries)
):
    """`routing._commit`: write the routed requests' choices and times into the simulator;
    returns how many go on to decode. The same operations in the same order."""
    last_tick = len(ts_prefill_tokens) - 1
    n_go = 0
    for j in range(len(ids)):
        rid = ids[j]
        r = p_sel[j]
        d = d_sel[j]
        fin = fins[j]
        row = pre[r]
        cum_work[row] += works[j]
        cum_flops[row] += flops[j]
        p_inst[rid] = row
        t_first[rid] = fin
        p_work[rid] = works[j]
        reserve[rid] = res[dc[d], j]
        tick = int(fin / dt)
        ts_prefill_tokens[tick if tick < last_tick else last_tick] += new_tokens[j]
        if out[j] <= 1:  # a single-token output is done at prefill
            t_done[rid] = fin
        else:  # the rest go to decode after the KV copy
            drow = dec[d]
            d_inst[rid] = drow
            kv_promised[drow] += res[dc[d], j]
            n_pending[drow] += 1
            lvl = level[r, d]
            secs = kv_secs[pk[r], lvl, j]
            kv_level[rid] = lvl
            kv_time[rid] = secs
            t_kv[rid] = fin + secs
            level_counts[lvl] += 1
            go_ids[n_go] = rid
            n_go += 1
    return n_go


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
    """`routing.Pools`, `routing._assign` and `routing._commit` in one call, for requests
    without prefix hashes; returns how many requests were routed (the first ones; the rest
    are held) and how many of those go on to decode. See those for the rules; every value is
    computed by the same operations in the same order."""
    n_groups = len(pstart) - 1
    pkey, dkv, dseqs, dload = pool_keys(
        t0, pre, dec, free_at, kv_promised, n_active, n_pending, full_row, batch_row
    )
    pmin = np.empty(n_groups)
    dmin = np.empty(n_groups)
    for i in range(n_groups):
        pmin[i] = group_min(pkey, ppos, pstart[i], pstart[i + 1])
        dmin[i] = group_min(dload, dpos, dstart[i], dstart[i + 1])
    m = len(arr)
    p_sel = np.empty(m, dtype=np.int64)
    d_sel = np.empty(m, dtype=np.int64)
    fins = np.empty(m)
    works = np.empty(m)
    fl = np.empty(m)
    gi = 0
    n_routed = m
    for j in range(m):
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
        k = dkv[d] + inc[dc[d], j]
        dkv[d] = k
        q = dseqs[d] + per_seq[d]
        dseqs[d] = q
        dload[d] = k if k > q else q
        dmin[gi] = group_min(dload, dpos, dstart[gi], dstart[gi + 1])
        p_sel[j] = r
        d_sel[j] = d
        fins[j] = fin
        works[j] = svc[kr, j]
        fl[j] = flops[kr, j]
    for p in range(len(pre)):
        free_at[pre[p]] = pkey[p]
    n = n_routed
    n_go = commit(
        ids[:n],
        p_sel[:n],
        d_sel[:n],
        fins[:n],
        works[:n],
        fl[:n],
        inp[:n],
        out[:n],
        kv_secs[:, :, :n],
        pk,
        res[:, :n],
        dc,
        pre,
        dec,
        level,
        dt,
        cum_work,
        cum_flops,
        kv_promised,
        n_pending,
        p_inst,
        d_inst,
        t_first,
        p_work,
        t_done,
        reserve,
        kv_level,
        kv_time,
        t_kv,
        ts_prefill_tokens,
        level_counts,
        go_ids,
    )
    return n_routed, n_go
