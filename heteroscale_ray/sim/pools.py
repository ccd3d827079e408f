"""What routing sees of a service's ready instances: its Deployment Groups, their prefill and
decode instances, and the heaps the routing loop pops (`sim/routing.py`).

The shape of the pools (which instances, in which DG, of which kind and KV class) changes only
when an instance changes state or is added; it is cached on that (`shapes`). The heaps are
rebuilt every tick from the instances' queues and loads.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

import numpy as np

from heteroscale_ray.sim.instances import DECODE, READY

if TYPE_CHECKING:
    from heteroscale_ray.sim.cluster import ClusterSim


class PoolShape:
    """The ready DGs of one service and their instances, numbered by position.

    Prefill and decode instances are numbered by position in `pre` and `dec` (ascending rows,
    so position order is row order and ties break as by row). Only DGs with a ready prefill
    and a ready decode instance take requests (`groups`, ascending); `ppos[i]` and `dpos[i]`
    are the positions in DG `groups[i]`. Decode instances fall in classes (kind, KV capacity)
    that fix the KV a batch at the TBT SLO holds (`full`) and that batch (`batch`).
    """

    def __init__(self, sim: ClusterSim, s: int, pre_rows: np.ndarray, dec_rows: np.ndarray):
        T = sim.inst
        self.pre = pre_rows
        self.dec = dec_rows
        self.pkind: list[int] = T.kind[pre_rows].tolist()
        self.pkinds: list[int] = sorted(set(self.pkind))  # the prefill kinds, ascending
        pdg = T.dg[pre_rows].tolist()
        self.groups: list[int] = sorted(set(pdg))
        slot = {g: i for i, g in enumerate(self.groups)}
        self.ppos: list[list[int]] = [[] for _ in self.groups]
        for p, g in enumerate(pdg):
            self.ppos[slot[g]].append(p)
        self.classes: list[tuple[int, float]] = []
        self.full: list[float] = []
        cls_of: dict[tuple[int, float], int] = {}
        self.dcls: list[int] = []
        self.dpos: list[list[int]] = [[] for _ in self.groups]
        full_row, batch_row = [], []
        for d, (k, cap, g) in enumerate(
            zip(
                T.kind[dec_rows].tolist(),
                T.kv_cap[dec_rows].tolist(),
                T.dg[dec_rows].tolist(),
                strict=True,
            )
        ):
            key = (k, cap)
            c = cls_of.get(key)
            if c is None:
                c = cls_of[key] = len(self.classes)
                self.classes.append(key)
                self.full.append(sim.kv_full(s, k) * cap)
            self.dcls.append(c)
            full_row.append(self.full[c])
            batch_row.append(sim.batch_full(s, k))
            if g in slot:  # a DG without a ready prefill instance takes no requests
                self.dpos[slot[g]].append(d)
        self.full_row = np.array(full_row, dtype=float)
        self.batch_row = np.array(batch_row, dtype=float)
        self.per_seq: list[float] = (1.0 / self.batch_row).tolist()
        self.phost = T.host[pre_rows]
        self.dhost = T.host[dec_rows]
        # the same as flat arrays, for `kernels.route_tick` and `cache_kernels.route_cached`
        self.pk_row = np.array([self.pkinds.index(k) for k in self.pkind], dtype=np.int64)
        self.dcls_arr = np.array(self.dcls, dtype=np.int64)
        self.per_seq_arr = np.array(self.per_seq, dtype=float)
        self.ppos_flat = np.array([p for pos in self.ppos for p in pos], dtype=np.int64)
        self.pstart = np.cumsum([0] + [len(pos) for pos in self.ppos]).astype(np.int64)
        self.dpos_flat = np.array([d for pos in self.dpos for d in pos], dtype=np.int64)
        self.dstart = np.cumsum([0] + [len(pos) for pos in self.dpos]).astype(np.int64)
        self._level: np.ndarray | None = None

    def level(self, sim: ClusterSim) -> np.ndarray:
        """[prefill position, decode position] -> the switch level their hosts share."""
        if self._level is None:
            P, D = len(self.pre), len(self.dec)
            self._level = sim.shared_level(
                np.repeat(self.phost, D), np.tile(self.dhost, P)
            ).reshape(P, D)
        return self._level


def shapes(sim: ClusterSim) -> dict[int, PoolShape]:
    """Service index -> its `PoolShape`, for services with at least one routable DG; cached
    until an instance is added or changes state (or a KV capacity changes)."""
    T = sim.inst
    n = T.n
    key = (T.version, T.state[:n].tobytes(), T.kv_cap[:n].tobytes())
    cached = sim._pool_shapes
    if cached is not None and cached[0] == key:
        return cached[1]
    ready = np.flatnonzero(T.state[:n] == READY)
    ready_svc, ready_dec = T.svc[ready], T.role[ready] == DECODE
    out: dict[int, PoolShape] = {}
    for s in range(len(sim.services)):
        mine = ready_svc == s
        dec_rows = ready[mine & ready_dec]
        pre_all = ready[mine & ~ready_dec]
        pre_rows = pre_all[np.isin(T.dg[pre_all], T.dg[dec_rows])]
        if len(pre_rows):
            out[s] = PoolShape(sim, s, pre_rows, dec_rows)
    sim._pool_shapes = (key, out)
    return out


class Pools:
    """A `PoolShape` at a tick start, as the routing loop reads and updates it.

    Per DG i: `ph[i]` a heap of (when the prefill queue empties, clamped to the tick start;
    prefill position) and `dh[i]` a heap of (decode load, decode position). A decode
    instance's load is the binding one of its KV (`kv`: promised over what a batch at the TBT
    SLO holds) and its sequences (`seqs`: running and pending over that batch, `per_seq` more
    per request): KV alone sends many short requests to one instance beside a few long ones
    elsewhere, and its step time, which TBT follows, grows with the batch.
    """

    def __init__(self, sim: ClusterSim, shape: PoolShape, t0: float) -> None:
        T = sim.inst
        self.shape = shape
        free = T.free_at[shape.pre].tolist()
        self.ph: list[list[tuple[float, int]]] = []
        for pos in shape.ppos:
            heap = [(free[p] if free[p] > t0 else t0, p) for p in pos]
            heapq.heapify(heap)
            self.ph.append(heap)
        dec = shape.dec
        kv = T.kv_promised[dec] / shape.full_row
        seqs = (T.n_active[dec] + T.n_pending[dec]) / shape.batch_row
        load = np.maximum(kv, seqs).tolist()
        self.kv: list[float] = kv.tolist()
        self.seqs: list[float] = seqs.tolist()
        self.dh: list[list[tuple[float, int]]] = []
        for pos in shape.dpos:
            heap = [(load[d], d) for d in pos]
            heapq.heapify(heap)
            self.dh.append(heap)

    def free_at(self) -> tuple[list[int], list[float]]:
        """(prefill positions, when each one's queue empties) after routing."""
        pos = [p for heap in self.ph for _, p in heap]
        return pos, [f for heap in self.ph for f, _ in heap]
