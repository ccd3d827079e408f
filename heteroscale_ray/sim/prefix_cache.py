"""The simulator's prefix cache: one pooled LRU store of prompt blocks per Deployment Group.

Mooncake's design: prefill instances' spare KV memory is pooled and read over RDMA. A DG's pool
holds as many `BLOCK_TOKENS`-token blocks as its ready prefill instances have KV memory beyond
`PREFILL_WORKING_TOKENS` each; a prompt hits the leading blocks it shares with earlier prompts.

Two stores with the same LRU semantics: `PrefixCache`'s ordered dicts, the reference the Python
routing loop uses, and `LruArrays`, the arrays the compiled loop (`cache_kernels.route_cached`)
keeps when numba is installed. A replay uses one of them throughout.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from heteroscale_ray.sim import cache_kernels
from heteroscale_ray.traces.trace import BLOCK_TOKENS

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


def cached_tokens(hit: int, tokens: int) -> int:
    """Prompt tokens `hit` leading cached blocks spare (the last token is always computed)."""
    return min(hit * BLOCK_TOKENS, tokens - 1)


class PrefixCache:
    """Per-DG LRU stores of block hashes (Mooncake `hash_ids`), keyed by DG index.

    A prompt hits its leading cached blocks (`hits`); using a pool (`use`) then refreshes the
    hit blocks in order, appends the prompt's blocks not yet cached (a cached block past the
    first miss keeps its place) and evicts the least recently used down to the pool's size.
    """

    def __init__(self) -> None:
        self._pools: dict[int, OrderedDict[int, None]] = {}
        self._arrays: LruArrays | None = None

    def hits(self, dg: int, blocks: tuple[int, ...]) -> int:
        """Leading blocks of the prompt in the DG's pool (no insertion, no LRU refresh)."""
        assert self._arrays is None, "this replay keeps its cache in arrays (kernels on)"
        cache = self._pools.get(dg)
        hit = 0
        if cache:
            for b in blocks:
                if b not in cache:
                    break
                hit += 1
        return hit

    def use(self, dg: int, blocks: tuple[int, ...], hit: int, cap: int) -> None:
        """Insert (or refresh) the prompt's blocks, `hit` of them leading cached ones, and
        evict the least recently used blocks down to `cap`, the pool's current size."""
        cache = self._pools.get(dg)
        if cache is None:
            cache = self._pools[dg] = OrderedDict()
        for b in blocks[:hit]:
            cache.move_to_end(b)
        for b in blocks[hit:]:
            cache[b] = None
        for _ in range(len(cache) - cap):
            cache.popitem(last=False)

    def forget(self, dg: int) -> None:
        """Empty the DG's pool, in whichever store holds it: the pool lives in its prefill
        instances' KV memory and dies with the last of them, so a DG that comes back under the
        same index (a reused DG id) starts cold."""
        self._pools.pop(dg, None)
        if self._arrays is not None:
            self._arrays.clear(dg)

    def arrays(self, n_blocks: int) -> LruArrays:
        """The array store of the compiled routing loop, over dense block ids < `n_blocks`."""
        if self._arrays is None:
            assert not self._pools, "this replay keeps its cache in dicts (kernels off)"
            self._arrays = LruArrays(n_blocks)
        return self._arrays


class LruArrays:
    """`PrefixCache`'s pools as arrays, one row per DG (`slot`), for compiled code.

    Exact LRU by lazy deletion: each use of a block appends it to its DG's queue `fifo[slot]`
    and stores that position in `pos[slot, block]` (-1: not cached); an older entry of the
    block no longer matches and is skipped when evicting from the head. O(1) amortised per
    block. `pos` costs 4 bytes per distinct block of the workload per DG.
    """

    def __init__(self, n_blocks: int) -> None:
        self.n_blocks = n_blocks
        self.slot_of: dict[int, int] = {}  # DG index -> row
        self.pos = np.empty((0, n_blocks), dtype=np.int32)
        self.fifo = np.empty((0, 0), dtype=np.int32)
        self.head = np.empty(0, dtype=np.int64)  # oldest possibly live entry
        self.tail = np.empty(0, dtype=np.int64)  # next free entry
        self.size = np.empty(0, dtype=np.int64)  # blocks cached

    def slots(self, dgs: list[int]) -> np.ndarray:
        """The rows of the DGs, adding empty pools for DGs not seen before."""
        new = [g for g in dgs if g not in self.slot_of]
        if new:
            k = len(new)
            for g in new:
                self.slot_of[g] = len(self.slot_of)
            self.pos = np.concatenate([self.pos, np.full((k, self.n_blocks), -1, np.int32)])
            self.fifo = np.concatenate([self.fifo, np.zeros((k, self.fifo.shape[1]), np.int32)])
            self.head, self.tail, self.size = (
                np.concatenate([a, np.zeros(k, dtype=np.int64)])
                for a in (self.head, self.tail, self.size)
            )
        return np.array([self.slot_of[g] for g in dgs], dtype=np.int64)

    def reserve(self, slots: np.ndarray, pushes: int) -> None:
        """Room for `pushes` more queue entries in each of the rows `slots`. The queues stay
        at least twice as long as their live blocks and the pushes, so a compaction (which
        makes the room) frees half a queue or more and runs once per many requests."""
        need = int(self.size[slots].max(initial=0)) + pushes
        width = self.fifo.shape[1]
        if 2 * need > width:
            grown = np.zeros((len(self.fifo), 4 * need), dtype=np.int32)
            grown[:, :width] = self.fifo
            self.fifo, width = grown, 4 * need
        for s in slots.tolist():
            if self.tail[s] + pushes > width:
                cache_kernels.lru_compact(self.pos, self.fifo, self.head, self.tail, s)

    def clear(self, dg: int) -> None:
        """Empty the DG's row; the row stays the DG's (routing keeps the slots it looked up)."""
        s = self.slot_of.get(dg)
        if s is None:
            return
        self.pos[s, self.fifo[s, self.head[s] : self.tail[s]]] = -1
        self.head[s] = self.tail[s] = self.size[s] = 0

    def blocks_of(self, dg: int) -> list[int]:
        """The DG's cached blocks, least recently used first (for tests)."""
        s = self.slot_of.get(dg)
        if s is None:
            return []
        entries = self.fifo[s, self.head[s] : self.tail[s]]
        return entries[self.pos[s, entries] == np.arange(self.head[s], self.tail[s])].tolist()
