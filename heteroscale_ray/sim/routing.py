"""Routing in the simulator: each arriving request picks a Deployment Group, a prefill instance
and a decode instance, the way the real router does (least combined pressure: prefill wait over
the TTFT SLO plus decode KV load; cache-aware where prompts share prefixes).

Functions of the `ClusterSim` they route for; kept apart from the tick loop in `cluster.py`.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from heteroscale_ray.perf.network import SharedLevel
from heteroscale_ray.sim.instances import DECODE, PREFILL, READY, distinct
from heteroscale_ray.sim.prefix_cache import pool_blocks

if TYPE_CHECKING:
    from heteroscale_ray.sim.cluster import ClusterSim


class DecodeLoad:
    """A decode instance's load as routing sees it: the binding one of its KV (promised over
    what a batch at the TBT SLO holds) and its sequences (over that batch). KV alone sends
    many short requests to one instance beside a few long ones elsewhere, and its step time,
    which TBT follows, grows with the batch."""

    __slots__ = ("kv", "seqs", "per_seq")

    def __init__(self) -> None:
        self.kv: dict[int, float] = {}
        self.seqs: dict[int, float] = {}
        self.per_seq: dict[int, float] = {}

    def start(self, row: int, kv_share: float, seqs: float, batch: float) -> float:
        self.kv[row] = kv_share
        self.per_seq[row] = 1.0 / batch
        self.seqs[row] = seqs / batch
        return max(kv_share, self.seqs[row])

    def add(self, row: int, kv_share: float) -> float:
        """One more request of `kv_share` on `row`; its new load."""
        kv = self.kv[row] = self.kv[row] + kv_share
        seqs = self.seqs[row] = self.seqs[row] + self.per_seq[row]
        return kv if kv > seqs else seqs


def route(sim: ClusterSim, todo: np.ndarray, t0: float) -> np.ndarray:
    """Assign prefill and decode instances; returns the requests that found no DG."""
    T, w = sim.inst, sim.w
    ready = np.flatnonzero(T.state[: T.n] == READY)
    ready_svc, ready_dec = T.svc[ready], T.role[ready] == DECODE
    left: list[np.ndarray] = []
    svc_of = w.service[todo]
    one_svc = len(sim.services) == 1
    for s in distinct(svc_of, len(sim.services)):
        ids = todo if one_svc else todo[svc_of == s]
        mine = ready_svc == s
        dec_rows = ready[mine & ready_dec]
        dg_ok = set(T.dg[dec_rows].tolist())
        pre_all = ready[mine & ~ready_dec]
        pre_rows = [
            r for r, g in zip(pre_all.tolist(), T.dg[pre_all].tolist(), strict=True) if g in dg_ok
        ]
        if not pre_rows:
            left.append(ids)
            continue
        _route_service(sim, s, ids, t0, pre_rows, dec_rows)
    return np.concatenate(left) if left else np.empty(0, dtype=np.int64)


def _route_service(
    sim: ClusterSim, s: int, ids: np.ndarray, t0: float, pre_rows: list[int], dec_rows: np.ndarray
) -> None:
    """Route the requests `ids` of service `s` (arrival order) over its ready DGs.

    Per-DG heaps: prefill by when its queue empties, decode by its binding load (`DecodeLoad`:
    KV promised over the KV a batch at the TBT SLO holds, or sequences over that batch). A request goes to the DG with the least combined pressure
    (prefill wait over the TTFT SLO + decode load), then to that DG's least-loaded prefill
    and decode instances. Ties go to the lower DG index, then to the lower row.
    """
    T, w = sim.inst, sim.w
    dg, kinds = T.dg, sim.kinds
    pre_arr = np.array(pre_rows, dtype=np.int64)
    pheaps: dict[int, list[tuple[float, int]]] = {}
    for r, f, g in zip(pre_rows, T.free_at[pre_arr].tolist(), dg[pre_arr].tolist(), strict=True):
        pheaps.setdefault(g, []).append((max(f, t0), r))
    # decode rows by class (kind, KV capacity): the KV a batch at the TBT SLO holds, and that batch
    full_of: dict[tuple[int, float], float] = {}
    batch_of: dict[tuple[int, float], float] = {}
    dcls_row: dict[int, tuple[int, float]] = {}
    dheaps: dict[int, list[tuple[float, int]]] = {}
    dload = DecodeLoad()
    for r, k, cap, prom, seqs, g in zip(
        dec_rows.tolist(),
        T.kind[dec_rows].tolist(),
        T.kv_cap[dec_rows].tolist(),
        T.kv_promised[dec_rows].tolist(),
        (T.n_active[dec_rows] + T.n_pending[dec_rows]).tolist(),
        dg[dec_rows].tolist(),
        strict=True,
    ):
        key = (k, cap)
        if key not in full_of:
            full_of[key] = sim._kv_full(s, k) * cap
            batch_of[key] = sim._batch_full(s, k)
        dcls_row[r] = key
        dheaps.setdefault(g, []).append(
            (dload.start(r, prom / full_of[key], seqs, batch_of[key]), r)
        )
    for h in (*pheaps.values(), *dheaps.values()):
        heapq.heapify(h)
    groups = sorted(pheaps)
    ttft_slo = sim.services[s].slo.ttft_s
    m = len(ids)
    inp_a = w.input_tokens[ids]
    out_a = w.output_tokens[ids]
    # per request and decode class: KV reserved, and the load it adds to the instance
    want = (inp_a + out_a).astype(float)
    res_of = {key: np.minimum(want, key[1]) for key in full_of}
    inc_of = {key: (res_of[key] / full).tolist() for key, full in full_of.items()}
    inc_row = {r: inc_of[key] for r, key in dcls_row.items()}
    pkind = dict(zip(pre_rows, T.kind[pre_arr].tolist(), strict=True))
    arr_a = w.arrival[ids]
    arr = arr_a.tolist()
    ph = [pheaps[g] for g in groups]
    dh = [dheaps[g] for g in groups]
    n_groups = len(groups)
    if sim.w.hash_ids is None:
        # no prefix cache: a prompt's prefill time depends on its instance's kind only
        work_of = {k: kinds[k].prefill_many(inp_a) for k in set(pkind.values())}
        svc_of = {k: work[0].tolist() for k, work in work_of.items()}
        svc_row = {r: svc_of[k] for r, k in pkind.items()}
        a0 = np.maximum(arr_a, t0).tolist()
        pmin = [h[0][0] for h in ph]
        dmin = [h[0][0] for h in dh]
        p_sel = [0] * m
        d_sel = [0] * m
        fins = [0.0] * m
        replace = heapq.heapreplace
        # The DG of least score = max(prefill wait, 0) / TTFT SLO + decode load, the lowest
        # index among equal scores. A score is never below its DG's decode load (a wait of
        # 0 adds exactly 0.0), so DGs are visited by increasing load until the next load
        # exceeds the best score found.
        by_load = sorted((dl, i) for i, dl in enumerate(dmin))
        multi = n_groups > 1
        gi = 0
        for j, a in enumerate(arr):
            if multi:
                best = float("inf")
                for dl, i in by_load:
                    if dl > best:
                        break
                    p = pmin[i]
                    score = (p - a) / ttft_slo + dl if p > a else dl
                    if score < best or (score == best and i < gi):
                        best, gi = score, i
            heap = ph[gi]
            free, r = heap[0]
            fin = (free if free > a else a0[j]) + svc_row[r][j]
            replace(heap, (fin, r))
            pmin[gi] = heap[0][0]
            heap = dh[gi]
            d = heap[0][1]
            replace(heap, (dload.add(d, inc_row[d][j]), d))
            if multi:
                del by_load[bisect_left(by_load, (dmin[gi], gi))]
                insort(by_load, (heap[0][0], gi))
            dmin[gi] = heap[0][0]
            p_sel[j], d_sel[j], fins[j] = r, d, fin
        p_rows = np.array(p_sel, dtype=np.int64)
        d_rows = np.array(d_sel, dtype=np.int64)
        fin_l = np.array(fins, dtype=float)
        cached_l: np.ndarray | None = None  # no hits: `sim.cached` stays 0
        work_l, flops_l = _by_class(p_rows, pkind, work_of, m)
    else:
        p_rows, d_rows, fin_l, work_l, flops_l, cached_l = _route_cached(
            sim, s, ids, t0, groups, ph, dh, pkind, inc_row, dload, pre_rows
        )
    (res_l,) = _by_class(d_rows, dcls_row, {key: (res,) for key, res in res_of.items()}, m)
    for heap in ph:
        for fin, r in heap:
            T.free_at[r] = fin
    np.add.at(T.cum_work, p_rows, work_l)
    np.add.at(T.cum_flops, p_rows, flops_l)
    sim.p_inst[ids] = p_rows
    sim.t_first[ids] = fin_l
    sim.reserve[ids] = res_l
    new_tokens = inp_a
    if cached_l is not None:
        sim.cached[ids] = cached_l
        new_tokens = inp_a - cached_l
    done_tick = np.minimum((fin_l / sim.dt).astype(np.int64), sim.n_ticks_max - 1)
    np.add.at(sim.ts_tokens[:, s, PREFILL], done_tick, new_tokens)
    # single-token outputs finish at prefill; the rest go to decode after the KV copy
    one = out_a <= 1
    if one.any():
        sim.t_done[ids[one]] = fin_l[one]
        go = ~one
        ids_d, d_go, p_go = ids[go], d_rows[go], p_rows[go]
        res_d, inp_d, fin_d = res_l[go], inp_a[go], fin_l[go]
    else:
        ids_d, d_go, p_go, res_d, inp_d, fin_d = ids, d_rows, p_rows, res_l, inp_a, fin_l
    sim.d_inst[ids_d] = d_go
    np.add.at(T.kv_promised, d_go, res_d)
    T.n_pending[: T.n] += np.bincount(d_go, minlength=T.n)
    level = sim._shared_level(T.host[p_go], T.host[d_go])
    inp_d = inp_d.astype(float)
    pk = T.kind[p_go]
    present = distinct(pk, len(kinds))
    if len(present) == 1:
        kv_t = kinds[present[0]].kv_transfer_seconds(inp_d, level)
    else:
        kv_t = np.empty(len(ids_d))
        for k in present:
            sel = pk == k
            kv_t[sel] = kinds[k].kv_transfer_seconds(inp_d[sel], level[sel])
    sim.kv_level[ids_d] = level
    sim.kv_time[ids_d] = kv_t
    sim.t_kv[ids_d] = fin_d + kv_t
    sim.ts_routed_kvlevel[sim.tick] += np.bincount(level, minlength=len(SharedLevel))
    sim._pending = np.concatenate([sim._pending, ids_d])
    sim._first_new.append(ids)


def _by_class(
    rows: np.ndarray,
    class_of: Mapping[int, Hashable],
    arrays_of: Mapping[Hashable, tuple[np.ndarray, ...]],
    m: int,
) -> tuple[np.ndarray, ...]:
    """Per request j, the arrays of the class of instance `rows[j]`, at j."""
    if len(arrays_of) == 1:
        return next(iter(arrays_of.values()))
    first = next(iter(arrays_of.values()))
    out = tuple(np.empty(m, dtype=a.dtype) for a in first)
    keys = list(arrays_of)
    index = {key: i for i, key in enumerate(keys)}
    tag = np.array([index[class_of[r]] for r in rows.tolist()], dtype=np.int64)
    for i, key in enumerate(keys):
        sel = tag == i
        for o, a in zip(out, arrays_of[key], strict=True):
            o[sel] = a[sel]
    return out


def _route_cached(
    sim: ClusterSim,
    s: int,
    ids: np.ndarray,
    t0: float,
    groups: list[int],
    ph: list[list[tuple[float, int]]],
    dh: list[list[tuple[float, int]]],
    pkind: Mapping[int, int],
    inc_row: Mapping[int, list[float]],
    dload: DecodeLoad,
    pre_rows: list[int],
) -> tuple[np.ndarray, ...]:
    """`_route_service`'s loop with the prefix cache (Mooncake `hash_ids`).

    The DG choice is cache-aware (as Mooncake's conductor): the prefill seconds a DG's
    cached prefix would save count against its queue.
    """
    T, w, kinds, cache = sim.inst, sim.w, sim.kinds, sim.prefix_cache
    hashes = w.hash_ids
    assert hashes is not None
    rows = np.array(pre_rows, dtype=np.int64)
    pools = pool_blocks(T.kv_cap[rows], T.dg[rows])
    ttft_slo = sim.services[s].slo.ttft_s
    arr = w.arrival[ids].tolist()
    inp = w.input_tokens[ids].tolist()
    m = len(ids)
    p_sel, d_sel = [0] * m, [0] * m
    fins, works, flops_l, cached_l = [0.0] * m, [0.0] * m, [0.0] * m, [0] * m
    n_groups = len(groups)
    for j, rid in enumerate(ids.tolist()):
        a = arr[j]
        gi = 0
        tokens = inp[j]
        blocks = hashes[rid]
        if n_groups > 1:
            best = float("inf")
            for i in range(n_groups):
                wait = ph[i][0][0] - a
                score = (wait if wait > 0 else 0.0) / ttft_slo + dh[i][0][0]
                if blocks:  # cache-aware: the prefill time a hit in this DG saves
                    hit = cache.peek(groups[i], blocks, tokens)
                    if hit:
                        ck = kinds[pkind[ph[i][0][1]]]
                        saved = ck.prefill_one(tokens, 0)[0] - ck.prefill_one(tokens, hit)[0]
                        score -= saved / ttft_slo
                if score < best:
                    best, gi = score, i
        g = groups[gi]
        heap = ph[gi]
        free, r = heap[0]
        cached = 0
        if blocks:
            cached = cache.lookup(g, blocks, tokens, pools.get(g, 0))
        svc_time, flops = kinds[pkind[r]].prefill_one(tokens, cached)
        start = free if free > a else max(a, t0)
        fin = start + svc_time
        heapq.heapreplace(heap, (fin, r))
        heap = dh[gi]
        d = heap[0][1]
        heapq.heapreplace(heap, (dload.add(d, inc_row[d][j]), d))
        p_sel[j], d_sel[j], fins[j] = r, d, fin
        works[j], flops_l[j], cached_l[j] = svc_time, flops, cached
    return (
        np.array(p_sel, dtype=np.int64),
        np.array(d_sel, dtype=np.int64),
        np.array(fins, dtype=float),
        np.array(works, dtype=float),
        np.array(flops_l, dtype=float),
        np.array(cached_l, dtype=np.int64),
    )
