"""Routing by the compiled kernels (`kernels.route_tick`, `cache_kernels.route_cached`): what
`routing._route_service` runs when numba is installed.

The reference is the Python routing in `routing.py` (`Pools`, `_assign`, `_commit`) and
`cached_routing.assign_cached`; this path gives the same numbers bit for bit. It hands the
kernels the pools as flat arrays, and per request what does not depend on the choice, priced
in bulk beforehand (prefill seconds and KV transfer seconds per kind and switch level).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from heteroscale_ray.perf.network import SharedLevel
from heteroscale_ray.sim import cached_routing, kernels
from heteroscale_ray.sim.instances import PREFILL

if TYPE_CHECKING:
    from heteroscale_ray.perf.instance_kind import InstanceKind
    from heteroscale_ray.sim.cluster import ClusterSim
    from heteroscale_ray.sim.pools import PoolShape
    from heteroscale_ray.sim.request_batch import RequestBatch


def _rows(arrays: list[np.ndarray]) -> np.ndarray:
    """The arrays as the rows of one 2-D array (a view when there is one)."""
    return arrays[0].reshape(1, -1) if len(arrays) == 1 else np.stack(arrays)


def route_compiled(
    sim: ClusterSim,
    s: int,
    shape: PoolShape,
    batch: RequestBatch,
    t0: float,
    ttft_slo: float,
    hold: float,
) -> np.ndarray:
    """`Pools`, `_assign` (or `cached_routing.assign_cached`) and `_commit` by the kernels;
    the same numbers. Returns the held requests."""
    T = sim.inst
    m = len(batch.ids)
    go_ids = np.empty(m, dtype=np.int64)
    level_counts = np.zeros(len(SharedLevel), dtype=np.int64)
    if sim.w.hash_ids is None:  # routing and commit in one call
        n_routed, n_go = kernels.route_tick(
            batch.ids,
            batch.arrival,
            batch.inp,
            batch.out,
            t0,
            _rows([batch.work[k][0] for k in shape.pkinds]),
            _rows([batch.work[k][1] for k in shape.pkinds]),
            _kv_seconds(sim, shape, batch),
            shape.pk_row,
            _rows(batch.inc),
            _rows(batch.res),
            shape.dcls_arr,
            shape.pre,
            shape.dec,
            shape.level(sim),
            shape.pstart,
            shape.ppos_flat,
            shape.dstart,
            shape.dpos_flat,
            shape.full_row,
            shape.batch_row,
            shape.per_seq_arr,
            ttft_slo,
            hold,
            sim.dt,
            T.free_at,
            T.cum_work,
            T.cum_flops,
            T.kv_promised,
            T.n_active,
            T.n_pending,
            *_request_columns(sim),
            sim.ts_tokens[:, s, PREFILL],
            level_counts,
            go_ids,
        )
    else:
        keys = kernels.pool_keys(
            t0,
            shape.pre,
            shape.dec,
            T.free_at,
            T.kv_promised,
            T.n_active,
            T.n_pending,
            shape.full_row,
            shape.batch_row,
        )
        p_sel, d_sel, fins, works, flops, cached = cached_routing.route_compiled(
            sim, shape, batch.ids, _rows(batch.inc), t0, ttft_slo, hold, keys
        )
        T.free_at[shape.pre] = keys[0]
        n_routed = len(p_sel)
        head = batch.first(n_routed)
        sim.cached[head.at] = cached
        n_go = kernels.commit(
            head.ids,
            p_sel,
            d_sel,
            fins,
            works,
            flops,
            head.inp - cached,
            head.out,
            _kv_seconds(sim, shape, head),
            shape.pk_row,
            _rows(head.res),
            shape.dcls_arr,
            shape.pre,
            shape.dec,
            shape.level(sim),
            sim.dt,
            T.cum_work,
            T.cum_flops,
            T.kv_promised,
            T.n_pending,
            *_request_columns(sim),
            sim.ts_tokens[:, s, PREFILL],
            level_counts,
            go_ids,
        )
    sim.ts_routed_kvlevel[sim.tick] += level_counts
    if n_routed:
        sim._pending = np.concatenate([sim._pending, go_ids[:n_go]])
        sim._first_new.append(batch.ids[:n_routed])
    return batch.ids[n_routed:]


def _request_columns(sim: ClusterSim) -> tuple[np.ndarray, ...]:
    """The per-request arrays routing writes, in the kernels' order."""
    return (
        sim.p_inst,
        sim.d_inst,
        sim.t_first,
        sim.p_work,
        sim.t_done,
        sim.reserve,
        sim.kv_level,
        sim.kv_time,
        sim.t_kv,
    )


def _kv_seconds(sim: ClusterSim, shape: PoolShape, batch: RequestBatch) -> np.ndarray:
    """KV transfer seconds of each request per prefill kind and switch level [kind, level, j]."""
    w = sim.w

    def price(kind: InstanceKind, inp: np.ndarray) -> tuple[np.ndarray]:
        tokens = inp.astype(float)
        return (
            np.stack(
                [
                    kind.kv_transfer_seconds(tokens, np.full(len(tokens), int(lvl)))
                    for lvl in SharedLevel
                ]
            ),
        )

    out = []
    for k in shape.pkinds:
        kind = sim.kinds[k]
        if isinstance(batch.at, slice):
            lo, hi = batch.at.start, batch.at.stop
            (secs,) = sim.columns.get(
                ("kv_seconds", k),
                lo,
                hi,
                len(w),
                lambda a, b, kind=kind: price(kind, w.input_tokens[a:b]),
                axis=1,
            )
        else:
            (secs,) = price(kind, batch.inp)
        out.append(secs)
    return out[0][None] if len(out) == 1 else np.stack(out)
