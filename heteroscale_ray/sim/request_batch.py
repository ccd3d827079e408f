"""The requests one service routes in a tick, and what each costs whatever instance it meets:
read by the Python routing (`routing.py`) and the compiled one (`compiled_routing.py`) alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from heteroscale_ray.sim.cluster import ClusterSim
    from heteroscale_ray.sim.pools import PoolShape


class RequestBatch:
    """The requests one service routes in a tick (arrival order) and what they cost."""

    def __init__(self, sim: ClusterSim, s: int, ids: np.ndarray, shape: PoolShape) -> None:
        w = sim.w
        self.ids = ids
        m = len(ids)
        lo = int(ids[0])
        # consecutive requests (no backlog): slices, and prices read from blocks
        run = int(ids[-1]) - lo + 1 == m
        self.at: slice | np.ndarray = slice(lo, lo + m) if run else ids
        self.arrival = w.arrival[self.at]
        self.inp = w.input_tokens[self.at]
        self.out = w.output_tokens[self.at]
        n = len(w)
        # per decode class: KV each request reserves, and the load it adds to an instance
        self.res: list[np.ndarray] = []
        self.inc: list[np.ndarray] = []
        for cap, full in zip((c for _, c in shape.classes), shape.full, strict=True):
            res, inc = (
                sim.columns.get(
                    ("kv", s, cap, full),
                    lo,
                    lo + m,
                    n,
                    lambda a, b, cap=cap, full=full: price_kv(
                        w.input_tokens[a:b], w.output_tokens[a:b], cap, full
                    ),
                )
                if run
                else price_kv(self.inp, self.out, cap, full)
            )
            self.res.append(res)
            self.inc.append(inc)
        # without a prefix cache, per prefill kind: (seconds, FLOPs) of each prompt
        self.work: dict[int, tuple[np.ndarray, ...]] = {}
        if w.hash_ids is None:
            for k in shape.pkinds:
                kind = sim.kinds[k]
                self.work[k] = (
                    sim.columns.get(
                        ("prefill", k),
                        lo,
                        lo + m,
                        n,
                        lambda a, b, kind=kind: kind.prefill_many(w.input_tokens[a:b]),
                    )
                    if run
                    else kind.prefill_many(self.inp)
                )

    def first(self, k: int) -> RequestBatch:
        """The first `k` requests (the routed ones when the rest are held)."""
        if k == len(self.ids):
            return self
        head = object.__new__(RequestBatch)
        head.ids = self.ids[:k]
        at = self.at
        head.at = slice(at.start, at.start + k) if isinstance(at, slice) else at[:k]
        head.arrival, head.inp, head.out = self.arrival[:k], self.inp[:k], self.out[:k]
        head.res = [r[:k] for r in self.res]
        head.inc = [i[:k] for i in self.inc]
        head.work = {kind: tuple(a[:k] for a in w) for kind, w in self.work.items()}
        return head


def price_kv(
    inp: np.ndarray, out: np.ndarray, cap: float, full: float
) -> tuple[np.ndarray, np.ndarray]:
    """KV a request reserves on a decode class of capacity `cap`, and that over `full`."""
    res = np.minimum((inp + out).astype(float), cap)
    return res, res / full
