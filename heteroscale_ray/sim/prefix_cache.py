"""The simulator's prefix cache: one pooled LRU store of prompt blocks per Deployment Group.

Mooncake's design: prefill instances' spare KV memory is pooled and read over RDMA. A DG's pool
holds as many `BLOCK_TOKENS`-token blocks as its ready prefill instances have KV memory beyond
`PREFILL_WORKING_TOKENS` each; a prompt hits the leading blocks it shares with earlier prompts.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from heteroscale_ray.sim.workload import BLOCK_TOKENS

# KV tokens a prefill instance keeps for the prompt it is computing; the rest of its KV memory
# is spare and joins its DG's pooled prefix cache. One 64k-token prompt (Mooncake's p99 is 66k).
PREFILL_WORKING_TOKENS = 65_536


def pool_blocks(kv_cap: np.ndarray, dgs: np.ndarray) -> dict[int, int]:
    """Blocks each DG's pool holds, from its prefill instances' KV capacities (`kv_cap`)."""
    blocks: dict[int, int] = {}
    spare = np.maximum(kv_cap - PREFILL_WORKING_TOKENS, 0.0)
    for g_, sp in zip(dgs.tolist(), spare.tolist(), strict=True):
        blocks[g_] = blocks.get(g_, 0) + int(sp) // BLOCK_TOKENS
    return blocks


class PrefixCache:
    """Per-DG LRU stores of block hashes (Mooncake `hash_ids`), keyed by DG index."""

    def __init__(self) -> None:
        self._pools: dict[int, OrderedDict[int, None]] = {}

    def peek(self, dg: int, blocks: tuple[int, ...], tokens: int) -> int:
        """Cached tokens the prompt would hit in the DG's pool (no insertion, no LRU refresh)."""
        cache = self._pools.get(dg)
        if not cache:
            return 0
        hit = 0
        for b in blocks:
            if b not in cache:
                break
            hit += 1
        return min(hit * BLOCK_TOKENS, tokens - 1)

    def lookup(self, dg: int, blocks: tuple[int, ...], tokens: int, cap: int) -> int:
        """Cached tokens of the prompt's leading blocks in the DG's pooled prefix cache.

        Then the prompt's blocks are inserted (or refreshed) and the least recently used
        blocks evicted down to `cap` blocks, the pool's current size.
        """
        cache = self._pools.get(dg)
        if cache is None:
            cache = OrderedDict()
            self._pools[dg] = cache
        hit = 0
        for b in blocks:
            if b in cache:
                hit += 1
            else:
                break
        for b in blocks[:hit]:
            cache.move_to_end(b)
        for b in blocks[hit:]:
            cache[b] = None
        while len(cache) > cap:
            cache.popitem(last=False)
        return min(hit * BLOCK_TOKENS, tokens - 1)
