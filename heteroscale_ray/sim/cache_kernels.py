"""The compiled twin of the cache-aware routing loop (`cached_routing.assign_cached`) and of
its exact LRU (`prefix_cache.LruArrays`), used when numba is installed.

Kept apart from the per-tick kernels in `kernels.py` (whose `compiled` decorator and switch
they share): these serve only replays with prefix hashes (Mooncake). `PrefixCache` and
`InstanceKind.prefill_one` stay the reference; every value here is computed by the same
operations in the same order (tests/test_prefix_cache_speed.py).
"""

from __future__ import annotations

import numpy as np

from heteroscale_ray.sim.kernels import compiled, group_argmin, group_min
from heteroscale_ray.traces.trace import BLOCK_TOKENS


@compiled
def prefill_one(kp, tokens, cached):
    """`InstanceKind.prefill_one` (seconds, FLOPs) by the same operations, the kind's
    coefficients in `kp` (`cached_routing.PREFILL_COEFFS` order). The power takes a float exponent:
    numba's integer power multiplies, C's `pow` (Python's) rounds once."""
    new_t = tokens - cached
    flops = kp[0] * new_t + kp[1] * (new_t * cached + new_t * (new_t + 1) / 2)
    mem = (kp[2] + kp[3] * (1.0 - kp[4] ** float(new_t))) / kp[5]
    compute = flops / kp[6]
    return (mem if mem > compute else compute) + kp[7], flops


@compiled
def lru_hits(pos, s, blocks, lo, hi):
    """Leading blocks of `blocks[lo:hi]` cached in row `s` (`prefix_cache.LruArrays`)."""
    for x in range(lo, hi):
        if pos[s, blocks[x]] < 0:
            return x - lo
    return hi - lo


@compiled
def lru_use(pos, fifo, head, tail, size, s, blocks, lo, hi, hit, cap):
    """`PrefixCache.use` on row `s` of `prefix_cache.LruArrays` (room reserved beforehand)."""
    t = tail[s]
    for x in range(lo, hi):
        b = blocks[x]
        if x < lo + hit or pos[s, b] < 0:  # a hit moves to the back; a miss is appended
            if x >= lo + hit:
                size[s] += 1
            fifo[s, t] = b
            pos[s, b] = t
            t += 1
    tail[s] = t
    h = head[s]
    while size[s] > cap:
        b = fifo[s, h]
        if pos[s, b] == h:  # the block's newest entry: evict it
            pos[s, b] = -1
            size[s] -= 1
        h += 1
    head[s] = h


@compiled
def route_cached(
    ids,  # int64[m]: the requests, arrival order
    arrival,  # float64[n requests]
    input_tokens,  # int64[n requests]
    block_start,  # int64[n requests + 1], block_ids: `traces.prompt_blocks.PromptBlocks`
    block_ids,
    t0,  # tick start
    kp,  # float64[P, coefficients]: prefill position -> its kind's `prefill_one` coefficients
    pkey,  # float64[P]: when each prefill queue empties (>= t0); updated
    dkv,  # float64[D]: decode KV load; updated
    dseqs,  # float64[D]: decode sequence load; updated
    dload,  # float64[D]: the binding one of the two; updated
    inc,  # float64[classes, m]: KV load each request adds per decode class
    dc,  # int64[D]: decode position -> row of inc
    per_seq,  # float64[D]: sequence load per request
    pstart,  # int64[G+1], ppos: prefill positions of DG i are ppos[pstart[i]:pstart[i+1]]
    ppos,
    dstart,  # int64[G+1], dpos: as pstart, ppos for decode
    dpos,
    slot,  # int64[G]: each DG's row of the LRU arrays
    cap,  # int64[G]: each DG's pool size in blocks
    pos,  # the LRU arrays (`prefix_cache.LruArrays`); updated
    fifo,
    head,
    tail,
    size,
    ttft_slo,
    hold,  # routing stops at a request its prefill instance would queue for longer than this
    p_sel,  # out int64[m]: prefill position
    d_sel,  # out int64[m]: decode position
    fins,  # out float64[m]: first-token time
    works,  # out float64[m]: prefill seconds
    flops,  # out float64[m]: prefill FLOPs
    cached,  # out int64[m]: cached prompt tokens
):
    """`cached_routing.assign_cached`'s loop, the cache-aware DG choice and the prefix cache
    included; every value by the same operations in the same order. Returns how many requests
    were routed (the first ones; the rest are held)."""
    n_groups = len(pstart) - 1
    parg = np.empty(n_groups, dtype=np.int64)
    pmin = np.empty(n_groups)
    dmin = np.empty(n_groups)
    hits = np.zeros(n_groups, dtype=np.int64)
    for i in range(n_groups):
        parg[i] = group_argmin(pkey, ppos, pstart[i], pstart[i + 1])
        pmin[i] = pkey[parg[i]]
        dmin[i] = group_min(dload, dpos, dstart[i], dstart[i + 1])
    for j in range(len(ids)):
        rid = ids[j]
        a = arrival[rid]
        tokens = input_tokens[rid]
        lo, hi = block_start[rid], block_start[rid + 1]
        a0 = t0 if t0 > a else a
        gi = 0
        if n_groups > 1:
            best = np.inf
            gi = -1
            for i in range(n_groups):
                if pmin[i] - a0 > hold:
                    continue
                wait = pmin[i] - a
                score = (wait if wait > 0 else 0.0) / ttft_slo + dmin[i]
                if hi > lo:  # cache-aware: the prefill time a hit in this DG saves
                    hits[i] = lru_hits(pos, slot[i], block_ids, lo, hi)
                    hit = min(hits[i] * BLOCK_TOKENS, tokens - 1)
                    if hit:
                        ck = kp[parg[i]]
                        saved = prefill_one(ck, tokens, 0)[0] - prefill_one(ck, tokens, hit)[0]
                        score -= saved / ttft_slo
                if score < best:
                    best = score
                    gi = i
            if gi < 0:
                return j
        elif hi > lo:
            hits[0] = lru_hits(pos, slot[0], block_ids, lo, hi)
        r = parg[gi]
        free = pkey[r]
        if free - a0 > hold:
            return j
        c = 0
        if hi > lo:
            lru_use(pos, fifo, head, tail, size, slot[gi], block_ids, lo, hi, hits[gi], cap[gi])
            c = min(hits[gi] * BLOCK_TOKENS, tokens - 1)
        svc_time, fl = prefill_one(kp[r], tokens, c)
        start = free if free > a else a0
        fin = start + svc_time
        pkey[r] = fin
        parg[gi] = group_argmin(pkey, ppos, pstart[gi], pstart[gi + 1])
        pmin[gi] = pkey[parg[gi]]
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
        works[j] = svc_time
        flops[j] = fl
        cached[j] = c
    return len(ids)


@compiled
def lru_compact(pos, fifo, head, tail, s):
    """Drop row `s`'s stale queue entries (`prefix_cache.LruArrays`): the live ones move to
    the front of the queue, in order."""
    x = 0
    for y in range(head[s], tail[s]):
        b = fifo[s, y]
        if pos[s, b] == y:
            fifo[s, x] = b
            pos[s, b] = x
            x += 1
    head[s] = 0
    tail[s] = x
