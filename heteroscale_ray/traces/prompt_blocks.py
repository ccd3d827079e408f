"""A trace's prompt block hashes (Mooncake `hash_ids`) numbered densely, for array indexing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np


@dataclass(frozen=True)
class PromptBlocks:
    """Every prompt's block hashes renumbered 0..n_distinct-1, flat: request j's blocks are
    `ids[start[j]:start[j + 1]]`. Dense numbers let the compiled prefix cache index arrays
    by block (`prefix_cache.LruArrays`) instead of hashing Python ints."""

    start: np.ndarray  # int64[n + 1]
    ids: np.ndarray  # int32[total blocks]
    n_distinct: int

    @staticmethod
    def number(hash_ids: Sequence[Sequence[int]]) -> PromptBlocks:
        lens = np.fromiter(map(len, hash_ids), dtype=np.int64, count=len(hash_ids))
        start = np.zeros(len(hash_ids) + 1, dtype=np.int64)
        np.cumsum(lens, out=start[1:])
        flat = np.fromiter(chain.from_iterable(hash_ids), dtype=np.int64, count=int(start[-1]))
        if not len(flat):
            return PromptBlocks(start, np.zeros(0, dtype=np.int32), 0)
        top = int(flat.max())
        if flat.min() >= 0 and top < 4 * len(flat) + 1024:  # small (Mooncake's): a table
            seen = np.zeros(top + 1, dtype=np.int32)
            seen[flat] = 1
            rank = np.cumsum(seen) - 1
            n_distinct = int(rank[-1]) + 1
            ids = rank[flat]
        else:
            uniq, ids = np.unique(flat, return_inverse=True)
            n_distinct = len(uniq)
        return PromptBlocks(start, ids.astype(np.int32), n_distinct)
