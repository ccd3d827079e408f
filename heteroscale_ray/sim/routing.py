"""Routing in the simulator: each arriving request picks a Deployment Group, a prefill instance
and a decode instance, the way the real router does (least combined pressure: prefill wait over
the TTFT SLO plus decode KV load; cache-aware where prompts share prefixes).

Functions of the `ClusterSim` they route for; kept apart from the tick loop in `cluster.py`.
The per-request loop is the simulator's hottest code (one pass per request of a trace), so it
works on plain lists with positions into the tick's instance lists, and everything per request
that does not depend on the choice is priced in bulk beforehand (`RequestColumns`). This
Python is the reference; with numba installed `compiled_routing` routes by the kernels, with
the same numbers.
"""

from __future__ import annotations

import heapq
import math
from typing import TYPE_CHECKING

import numpy as np

from heteroscale_ray.perf.network import SharedLevel
from heteroscale_ray.sim import cached_routing, kernels
from heteroscale_ray.sim.compiled_routing import route_compiled
from heteroscale_ray.sim.instances import PREFILL, distinct
from heteroscale_ray.sim.pools import Pools, PoolShape, shapes
from heteroscale_ray.sim.request_batch import RequestBatch

if TYPE_CHECKING:
    from heteroscale_ray.sim.cluster import ClusterSim


def route(sim: ClusterSim, todo: np.ndarray, t0: float) -> np.ndarray:
    """Assign prefill and decode instances; returns the requests left at the ingress (arrival
    order within a service): those that found no DG, and those held (`hold_s`)."""
    by_svc = shapes(sim)
    if len(sim.services) == 1:
        if 0 not in by_svc:
            return todo
        return _route_service(sim, 0, todo, t0, by_svc[0])
    left: list[np.ndarray] = []
    svc_of = sim.w.service[todo]
    for s in distinct(svc_of, len(sim.services)):
        ids = todo[svc_of == s]
        if s in by_svc:
            ids = _route_service(sim, s, ids, t0, by_svc[s])
        if len(ids):
            left.append(ids)
    return np.concatenate(left) if left else np.empty(0, dtype=np.int64)


def hold_s(sim: ClusterSim, s: int) -> float:
    """How much queued prefill work a request may find ahead of it and still be routed: two
    ticks, so an instance never runs dry between two routing passes while work is held.

    Past it the request waits at the ingress, as a Serve handle holds requests beyond a
    replica's `max_ongoing_requests`. Routed on arrival, a request stays pinned to a long
    queue while instances that start later idle; held, it goes to whichever frees up first,
    in the ingress's order (`ClusterSim._ingress_order`: those still able to make the TTFT SLO
    first). A longer bound lets the late ones fill the queues the fresh ones then wait behind:
    at one TTFT SLO, every request admitted while a backlog drained waited about the SLO.
    """
    if not sim.cfg.ingress_hold:
        return math.inf
    return 2.0 * sim.dt


def _route_service(
    sim: ClusterSim, s: int, ids: np.ndarray, t0: float, shape: PoolShape
) -> np.ndarray:
    """Route the requests `ids` of service `s` (arrival order) over its ready DGs; returns
    those held at the ingress (a suffix of `ids`).

    A request goes to the DG with the least combined pressure (prefill wait over the TTFT SLO
    + decode load), then to that DG's prefill instance whose queue empties first and its
    least-loaded decode instance. Ties go to the lower DG index, then to the lower row.
    A DG whose first free prefill instance has more than `hold_s` of work queued is passed
    over; routing stops at the first request every DG would hold: it and the later ones wait,
    in order, for the next tick.
    """
    T = sim.inst
    batch = RequestBatch(sim, s, ids, shape)
    ttft_slo = sim.services[s].slo.ttft_s
    hold = hold_s(sim, s)
    if kernels.ENABLED:
        return route_compiled(sim, s, shape, batch, t0, ttft_slo, hold)
    pools = Pools(sim, shape, t0)
    cached_l: np.ndarray | None = None  # no hits: `sim.cached` stays 0
    if sim.w.hash_ids is not None:
        p_pos, d_pos, fin_l, work_l, flops_l, cached_l = cached_routing.assign_cached(
            sim, s, ids, t0, pools, batch.inc, hold
        )
        batch = batch.first(len(p_pos))
    else:
        inc_c = [inc.tolist() for inc in batch.inc]
        svc_k = {k: work[0].tolist() for k, work in batch.work.items()}
        p_pos, d_pos, fin_l = _assign(
            pools,
            batch.arrival.tolist(),
            np.maximum(batch.arrival, t0).tolist(),
            [svc_k[k] for k in shape.pkind],
            [inc_c[c] for c in shape.dcls],
            ttft_slo,
            hold,
        )
        batch = batch.first(len(p_pos))
        work_l, flops_l = _per_request(p_pos, shape.pkind, batch.work)
    (res_l,) = _per_request(d_pos, shape.dcls, {c: (r,) for c, r in enumerate(batch.res)})
    pos, free = pools.free_at()
    T.free_at[shape.pre[pos]] = free
    if len(p_pos):
        _commit(sim, s, shape, batch, p_pos, d_pos, fin_l, work_l, flops_l, res_l, cached_l)
    return ids[len(p_pos) :]


def _commit(
    sim: ClusterSim,
    s: int,
    shape: PoolShape,
    batch: RequestBatch,
    p_pos: np.ndarray,
    d_pos: np.ndarray,
    fin_l: np.ndarray,
    work_l: np.ndarray,
    flops_l: np.ndarray,
    res_l: np.ndarray,
    cached_l: np.ndarray | None,
) -> None:
    """Write the routed requests' choices and times into the simulator: prefill work on
    the chosen instances, first-token times, and the KV transfer to decode."""
    T, kinds = sim.inst, sim.kinds
    ids, at, inp_a = batch.ids, batch.at, batch.inp
    p_rows = shape.pre[p_pos]
    np.add.at(T.cum_work, p_rows, work_l)
    np.add.at(T.cum_flops, p_rows, flops_l)
    sim.p_inst[at] = p_rows
    sim.t_first[at] = fin_l
    sim.p_work[at] = work_l
    sim.reserve[at] = res_l
    new_tokens = inp_a
    if cached_l is not None:
        sim.cached[at] = cached_l
        new_tokens = inp_a - cached_l
    done_tick = np.minimum((fin_l / sim.dt).astype(np.int64), sim.n_ticks_max - 1)
    np.add.at(sim.ts_tokens[:, s, PREFILL], done_tick, new_tokens)
    # single-token outputs finish at prefill; the rest go to decode after the KV copy
    one = batch.out <= 1
    at_d: slice | np.ndarray = at
    ids_d, dp_go, pp_go, res_d, inp_d, fin_d = ids, d_pos, p_pos, res_l, inp_a, fin_l
    if np.count_nonzero(one):
        sim.t_done[ids[one]] = fin_l[one]
        go = np.flatnonzero(~one)
        ids_d, dp_go, pp_go = ids[go], d_pos[go], p_pos[go]
        res_d, inp_d, fin_d = res_l[go], inp_a[go], fin_l[go]
        at_d = ids_d
    d_go = shape.dec[dp_go]
    sim.d_inst[at_d] = d_go
    np.add.at(T.kv_promised, d_go, res_d)
    T.n_pending[: T.n] += np.bincount(d_go, minlength=T.n)
    level = sim.shared_level(shape.phost[pp_go], shape.dhost[dp_go])
    inp_d = inp_d.astype(float)
    if len(shape.pkinds) == 1:
        kv_t = kinds[shape.pkinds[0]].kv_transfer_seconds(inp_d, level)
    else:
        pk = T.kind[shape.pre[pp_go]]
        kv_t = np.empty(len(inp_d))
        for k in distinct(pk, len(kinds)):
            sel = pk == k
            kv_t[sel] = kinds[k].kv_transfer_seconds(inp_d[sel], level[sel])
    sim.kv_level[at_d] = level
    sim.kv_time[at_d] = kv_t
    sim.t_kv[at_d] = fin_d + kv_t
    sim.ts_routed_kvlevel[sim.tick] += np.bincount(level, minlength=len(SharedLevel))
    sim._pending = np.concatenate([sim._pending, ids_d])
    sim._first_new.append(ids)


def _assign(
    pools: Pools,
    arr: list[float],
    a0: list[float],
    svc_by_pos: list[list[float]],
    inc_by_pos: list[list[float]],
    ttft_slo: float,
    hold: float = math.inf,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The routing loop without a prefix cache: (prefill position, decode position, first-token
    time) per routed request, the first ones up to a request held at the ingress.

    `a0[j]` is request j's arrival clamped to the tick start, `svc_by_pos[p][j]` its prefill
    seconds on prefill position p, `inc_by_pos[d][j]` the KV load it adds on decode position d.
    The DG of least score = max(prefill wait, 0) / TTFT SLO + decode load, the lowest index
    among equal scores, of the DGs whose first free prefill instance is busy for at most
    `hold` after the request's `a0`. With no such DG the request is held, and so are the ones
    after it.
    """
    ph, dh = pools.ph, pools.dh
    kv, seqs, per_seq = pools.kv, pools.seqs, pools.shape.per_seq
    m = len(arr)
    p_sel = [0] * m
    d_sel = [0] * m
    fins = [0.0] * m
    replace = heapq.heapreplace
    n_groups = len(ph)
    if n_groups == 1:
        pheap, dheap = ph[0], dh[0]
        for j in range(m):
            free, r = pheap[0]
            if free - a0[j] > hold:
                m = j
                break
            a = arr[j]
            fin = (free if free > a else a0[j]) + svc_by_pos[r][j]
            replace(pheap, (fin, r))
            d = dheap[0][1]
            k = kv[d] = kv[d] + inc_by_pos[d][j]
            q = seqs[d] = seqs[d] + per_seq[d]
            replace(dheap, (k if k > q else q, d))
            p_sel[j] = r
            d_sel[j] = d
            fins[j] = fin
    else:
        pmin = [h[0][0] for h in ph]
        dmin = [h[0][0] for h in dh]
        order = range(n_groups)
        for j in range(m):
            a = arr[j]
            aj = a0[j]
            best = float("inf")
            gi = -1
            for i in order:
                p = pmin[i]
                if p - aj > hold:  # this DG would hold the request: it may go elsewhere
                    continue
                score = (p - a) / ttft_slo + dmin[i] if p > a else dmin[i]
                if score < best:
                    best = score
                    gi = i
            if gi < 0:
                m = j
                break
            heap = ph[gi]
            free, r = heap[0]
            fin = (free if free > a else aj) + svc_by_pos[r][j]
            replace(heap, (fin, r))
            pmin[gi] = heap[0][0]
            heap = dh[gi]
            d = heap[0][1]
            k = kv[d] = kv[d] + inc_by_pos[d][j]
            q = seqs[d] = seqs[d] + per_seq[d]
            replace(heap, (k if k > q else q, d))
            dmin[gi] = heap[0][0]
            p_sel[j] = r
            d_sel[j] = d
            fins[j] = fin
    return (
        np.array(p_sel[:m], dtype=np.int64),
        np.array(d_sel[:m], dtype=np.int64),
        np.array(fins[:m], dtype=float),
    )


def _per_request(
    pos: np.ndarray, class_of: list[int], arrays_of: dict[int, tuple[np.ndarray, ...]]
) -> tuple[np.ndarray, ...]:
    """Per request j, the arrays of the class of instance position `pos[j]`, at j."""
    if len(arrays_of) == 1:
        return next(iter(arrays_of.values()))
    first = next(iter(arrays_of.values()))
    out = tuple(np.empty(len(pos), dtype=a.dtype) for a in first)
    tag = np.array(class_of, dtype=np.int64)[pos]
    for c, arrays in arrays_of.items():
        sel = tag == c
        for o, a in zip(out, arrays, strict=True):
            o[sel] = a[sel]
    return out
