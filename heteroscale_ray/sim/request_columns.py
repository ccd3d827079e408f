"""Per-request values priced in blocks: routing reads a slice instead of pricing every tick.

A value here depends on the request and one key only (an instance kind, a decode class) and is
computed elementwise, so a block gives, bit for bit, what a per-tick computation over the same
requests would.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CHUNK = 1 << 16  # requests priced at once


class RequestColumns:
    """Blocks of per-request arrays, one block per key (the last one asked for)."""

    def __init__(self) -> None:
        self._blocks: dict[object, tuple[int, int, tuple[np.ndarray, ...]]] = {}

    def get(
        self,
        key: object,
        lo: int,
        hi: int,
        n: int,
        compute: Callable[[int, int], tuple[np.ndarray, ...]],
        axis: int = 0,
    ) -> tuple[np.ndarray, ...]:
        """The arrays for requests [lo, hi) of `n`; `compute(a, b)` prices requests [a, b)
        along `axis` of each array."""
        got = self._blocks.get(key)
        if got is None or lo < got[0] or hi > got[1]:
            b = min(n, max(hi, lo + CHUNK))
            got = (lo, b, compute(lo, b))
            self._blocks[key] = got
        a = got[0]
        if axis == 0:
            return tuple(x[lo - a : hi - a] for x in got[2])
        return tuple(x[:, lo - a : hi - a] for x in got[2])
