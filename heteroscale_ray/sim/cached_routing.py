"""Routing with a prefix cache (Mooncake `hash_ids`): the cache-aware DG choice and the LRU pools.

`routing.route` hands a service's requests here when the workload has prefix hashes. Kept apart
from the plain routing loop: it carries state of its own (pool sizes and prefill coefficients
per pool shape), drives the sim's `PrefixCache` and has its own compiled twin (`cache_kernels`).
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

import numpy as np

from heteroscale_ray.sim import cache_kernels
from heteroscale_ray.sim.pools import Pools, PoolShape
from heteroscale_ray.sim.prefix_cache import cached_tokens, pool_blocks

if TYPE_CHECKING:
    from heteroscale_ray.perf.instance_kind import InstanceKind
    from heteroscale_ray.sim.cluster import ClusterSim


# `InstanceKind.prefill_one`'s coefficients, in the order `cache_kernels.prefill_one` reads them
PREFILL_COEFFS = (
    "flops_per_token",
    "flops_per_pair",
    "w_shared",
    "w_experts",
    "q_untouched",
    "mem_bw",
    "prefill_flops_s",
    "prefill_overhead_s",
)


class _CacheShape:
    """What the cached routing loop reads of a `PoolShape` that stays with it (pool sizes,
    prefill kinds): built once per shape rather than once per tick."""

    def __init__(self, sim: ClusterSim, shape: PoolShape) -> None:
        T = sim.inst
        sizes = pool_blocks(T.kv_cap[shape.pre], T.dg[shape.pre])
        self.caps: list[int] = [sizes.get(g, 0) for g in shape.groups]
        self.kind_at: list[InstanceKind] = [sim.kinds[k] for k in shape.pkind]
        # for the compiled loop
        self.cap_arr = np.array(self.caps, dtype=np.int64)
        self.coeffs = np.array(
            [[float(getattr(k, c)) for c in PREFILL_COEFFS] for k in self.kind_at], dtype=float
        ).reshape(len(self.kind_at), len(PREFILL_COEFFS))
        self.slots: np.ndarray | None = None  # rows of the sim's `LruArrays`, on first use


_CACHE_SHAPES: WeakKeyDictionary[PoolShape, _CacheShape] = WeakKeyDictionary()


def _cache_shape(sim: ClusterSim, shape: PoolShape) -> _CacheShape:
    found = _CACHE_SHAPES.get(shape)
    if found is None:
        found = _CACHE_SHAPES[shape] = _CacheShape(sim, shape)
    return found


def assign_cached(
    sim: ClusterSim,
    s: int,
    ids: np.ndarray,
    t0: float,
    pools: Pools,
    inc: list[np.ndarray],
    hold: float,
) -> tuple[np.ndarray, ...]:
    """`routing._assign` with the prefix cache (Mooncake `hash_ids`); also returns each request's
    prefill seconds, FLOPs and cached tokens. As there, only the first requests up to one held
    at the ingress (`hold`) are routed, and the arrays hold those. `inc[c][j]`: the KV load
    request j adds on a decode instance of class c.

    The DG choice is cache-aware (as Mooncake's conductor): the prefill seconds a DG's
    cached prefix would save count against its queue. The reference for `route_compiled`,
    which gives the same numbers.
    """
    cshape = _cache_shape(sim, pools.shape)
    ttft_slo = sim.services[s].slo.ttft_s
    inc_by_pos = [inc[c].tolist() for c in pools.shape.dcls]
    w, cache = sim.w, sim.prefix_cache
    hashes = w.hash_ids
    assert hashes is not None
    shape = pools.shape
    groups, ph, dh = shape.groups, pools.ph, pools.dh
    caps, kind_at = cshape.caps, cshape.kind_at
    kv, seqs, per_seq = pools.kv, pools.seqs, shape.per_seq
    arr = w.arrival[ids].tolist()
    inp = w.input_tokens[ids].tolist()
    m = len(ids)
    p_sel, d_sel = [0] * m, [0] * m
    fins, works, flops_l, cached_l = [0.0] * m, [0.0] * m, [0.0] * m, [0] * m
    n_groups = len(groups)
    hits = [0] * n_groups  # leading cached blocks of the prompt, per DG
    for j, rid in enumerate(ids.tolist()):
        a = arr[j]
        a0 = max(a, t0)
        gi = 0
        tokens = inp[j]
        blocks = hashes[rid]
        if n_groups > 1:
            best = float("inf")
            gi = -1
            for i in range(n_groups):
                if ph[i][0][0] - a0 > hold:  # this DG would hold it: it may go elsewhere
                    continue
                wait = ph[i][0][0] - a
                score = (wait if wait > 0 else 0.0) / ttft_slo + dh[i][0][0]
                if blocks:  # cache-aware: the prefill time a hit in this DG saves
                    hits[i] = cache.hits(groups[i], blocks)
                    hit = cached_tokens(hits[i], tokens)
                    if hit:
                        ck = kind_at[ph[i][0][1]]
                        saved = ck.prefill_one(tokens, 0)[0] - ck.prefill_one(tokens, hit)[0]
                        score -= saved / ttft_slo
                if score < best:
                    best, gi = score, i
            if gi < 0:
                m = j
                break
        elif blocks:
            hits[0] = cache.hits(groups[0], blocks)
        heap = ph[gi]
        free, r = heap[0]
        if free - a0 > hold:
            m = j
            break
        cached = 0
        if blocks:  # the pool has not changed since `hits`
            cache.use(groups[gi], blocks, hits[gi], caps[gi])
            cached = cached_tokens(hits[gi], tokens)
        svc_time, flops = kind_at[r].prefill_one(tokens, cached)
        start = free if free > a else a0
        fin = start + svc_time
        heapq.heapreplace(heap, (fin, r))
        heap = dh[gi]
        d = heap[0][1]
        k = kv[d] = kv[d] + inc_by_pos[d][j]
        q = seqs[d] = seqs[d] + per_seq[d]
        heapq.heapreplace(heap, (k if k > q else q, d))
        p_sel[j], d_sel[j], fins[j] = r, d, fin
        works[j], flops_l[j], cached_l[j] = svc_time, flops, cached
    return (
        np.array(p_sel[:m], dtype=np.int64),
        np.array(d_sel[:m], dtype=np.int64),
        np.array(fins[:m], dtype=float),
        np.array(works[:m], dtype=float),
        np.array(flops_l[:m], dtype=float),
        np.array(cached_l[:m], dtype=np.int64),
    )


def route_compiled(
    sim: ClusterSim,
    shape: PoolShape,
    ids: np.ndarray,
    inc: np.ndarray,
    t0: float,
    ttft_slo: float,
    hold: float,
    keys: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, ...]:
    """`assign_cached` by `cache_kernels.route_cached` on the pools as arrays (`keys`:
    `kernels.pool_keys`, updated); `inc[c][j]` as there, one row per decode class."""
    blocks = sim.w.blocks
    assert blocks is not None
    cshape = _cache_shape(sim, shape)
    lru = sim.prefix_cache.arrays(blocks.n_distinct)
    if cshape.slots is None:
        cshape.slots = lru.slots(shape.groups)
    lru.reserve(cshape.slots, int((blocks.start[ids + 1] - blocks.start[ids]).sum()))
    m = len(ids)
    out = (
        np.empty(m, dtype=np.int64),
        np.empty(m, dtype=np.int64),
        np.empty(m),
        np.empty(m),
        np.empty(m),
        np.empty(m, dtype=np.int64),
    )
    n_routed = cache_kernels.route_cached(
        ids,
        sim.w.arrival,
        sim.w.input_tokens,
        blocks.start,
        blocks.ids,
        t0,
        cshape.coeffs,
        *keys,
        inc,
        shape.dcls_arr,
        shape.per_seq_arr,
        shape.pstart,
        shape.ppos_flat,
        shape.dstart,
        shape.dpos_flat,
        cshape.slots,
        cshape.cap_arr,
        lru.pos,
        lru.fifo,
        lru.head,
        lru.tail,
        lru.size,
        ttft_slo,
        hold,
        *out,
    )
    return tuple(a[:n_routed] for a in out)
