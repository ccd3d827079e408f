"""The compiled prefix-cache path gives the reference's numbers bit for bit.

`prefix_cache.LruArrays` (lazy-deletion LRU driven by `cache_kernels.lru_hits`/`lru_use`) against
`PrefixCache`'s ordered dicts, `cache_kernels.prefill_one` against `InstanceKind.prefill_one`, and
a cache-aware replay over three DGs with tight pools routed by `cache_kernels.route_cached` and by
the Python loop. Without numba the kernels run as Python: the array LRU is still checked.
"""

from __future__ import annotations

import numpy as np
import pytest
from sim_builders import GRAPH

from heteroscale_ray.config import DEFAULT_CATALOG, Role, ServicesConfig, parse_model
from heteroscale_ray.perf.instance_kind import InstanceKind
from heteroscale_ray.perf.profiles import get_profile
from heteroscale_ray.sim import cache_kernels, kernels
from heteroscale_ray.sim.cached_routing import PREFILL_COEFFS
from heteroscale_ray.sim.cluster import ClusterSim, SimConfig
from heteroscale_ray.sim.prefix_cache import PREFILL_WORKING_TOKENS, LruArrays, PrefixCache
from heteroscale_ray.sim.workload import Workload
from heteroscale_ray.traces.prompt_blocks import PromptBlocks
from heteroscale_ray.traces.trace import BLOCK_TOKENS


def _prompts(rng: np.random.Generator, n: int, universe: int) -> list[tuple[int, ...]]:
    """Prompts sharing prefixes (a few documents, then own blocks), some with a block twice
    and some without blocks."""
    docs = [tuple(rng.choice(universe, size=rng.integers(1, 12), replace=False)) for _ in range(6)]
    out: list[tuple[int, ...]] = []
    for _ in range(n):
        if rng.random() < 0.05:
            out.append(())
            continue
        doc = docs[rng.integers(len(docs))][: rng.integers(1, 13)]
        own = tuple(rng.integers(universe, size=rng.integers(0, 6)).tolist())
        blocks = tuple(int(b) for b in (*doc, *own))
        if rng.random() < 0.1:
            blocks = (*blocks, blocks[0])
        out.append(blocks)
    return out


def test_array_lru_matches_the_ordered_dict_lru() -> None:
    rng = np.random.default_rng(3)
    universe = 60
    ref, arrays = PrefixCache(), LruArrays(universe)
    dgs = [4, 9, 2]
    slots = arrays.slots(dgs)
    caps = {4: 25, 9: 7, 2: 0}
    for step, blocks in enumerate(_prompts(rng, 3000, universe)):
        if step % 500 == 499:  # pools resize, as prefill instances come and go
            caps = {g: int(rng.integers(0, 30)) for g in dgs}
        i = int(rng.integers(len(dgs)))
        g, s = dgs[i], int(slots[i])
        flat = np.array(blocks, dtype=np.int32)
        arrays.reserve(slots, len(flat))
        hit = cache_kernels.lru_hits(arrays.pos, s, flat, 0, len(flat))
        assert hit == ref.hits(g, blocks)
        ref.use(g, blocks, hit, caps[g])
        cache_kernels.lru_use(
            arrays.pos, arrays.fifo, arrays.head, arrays.tail, arrays.size,
            s, flat, 0, len(flat), hit, caps[g],
        )  # fmt: skip
        assert arrays.blocks_of(g) == list(ref._pools[g]), step
        assert arrays.size[s] == len(ref._pools[g])


def test_a_cache_keeps_one_store() -> None:
    cache = PrefixCache()
    cache.use(0, (1, 2), cache.hits(0, (1, 2)), 4)
    with pytest.raises(AssertionError):
        cache.arrays(8)


@pytest.mark.parametrize("model", ["moe-a3b", "dense-8b"])
def test_compiled_prefill_one_matches_the_kind(model: str) -> None:
    kind = InstanceKind.build(get_profile(model), DEFAULT_CATALOG["H20"], 1)
    kp = np.array([float(getattr(kind, c)) for c in PREFILL_COEFFS])
    rng = np.random.default_rng(0)
    for tokens in [1, 2, 511, 512, 513, *rng.integers(1, 200_000, 300).tolist()]:
        for cached in {0, tokens - 1, (tokens // 2) // BLOCK_TOKENS * BLOCK_TOKENS}:
            want = kind.prefill_one(tokens, cached)
            got = cache_kernels.prefill_one(kp, tokens, cached)
            assert (float(got[0]), float(got[1])) == want, (tokens, cached)


def test_prompt_blocks_number_every_hash_the_same_way() -> None:
    small = ((5, 7, 9), (), (7, 5), (9,))
    large = tuple(tuple(h + 2**62 for h in hs) for hs in small)
    for hashes in (small, large):
        pb = PromptBlocks.number(hashes)
        assert pb.n_distinct == 3
        assert pb.start.tolist() == [0, 3, 3, 5, 6]
        flat = [h for hs in hashes for h in hs]
        assert len({(h, int(i)) for h, i in zip(flat, pb.ids, strict=True)}) == 3
        assert pb.ids.max() < pb.n_distinct


def _state(sim: ClusterSim) -> dict[str, np.ndarray]:
    out = {
        name: getattr(sim, name).copy()
        for name in ("p_inst", "d_inst", "cached", "t_first", "t_kv", "t_done", "reserve")
    }
    T = sim.inst
    for name in ("free_at", "cum_work", "cum_flops", "kv_promised"):
        out[f"inst.{name}"] = getattr(T, name)[: T.n].copy()
    return out


def _services(model: str) -> ServicesConfig:
    return parse_model(
        ServicesConfig,
        {
            "services": [
                {
                    "name": "svc",
                    "model": model,
                    "slo": {"ttft_s": 1.0, "tbt_s": 0.04},
                    "pd_ratio": "1:1",
                    "prefill": {"gpu_types": ["L20"]},
                    "decode": {"gpu_types": ["H20"]},
                    "policy": {"target_per_instance": 1000},
                }
            ]
        },
    )


@pytest.mark.parametrize("model", ["moe-a3b", "dense-8b"])
def test_cache_aware_replay_is_the_same_compiled_and_in_python(
    monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    """Three DGs with small pools (one empty), one resized mid-run: DG choices, hits and
    evictions all count."""
    if not kernels.ENABLED:  # both runs would take the Python path and prove nothing
        pytest.skip("numba kernels are off")
    services = _services(model)
    rng = np.random.default_rng(11)
    n = 1500
    hashes = _prompts(rng, n, 400)
    tokens = np.array([max(1, len(h) * BLOCK_TOKENS - int(rng.integers(0, 600))) for h in hashes])
    arrivals = np.sort(rng.uniform(0.0, 30.0, n))
    outputs = rng.integers(1, 200, n).astype(np.int64)
    gpus = 2 if model == "moe-a3b" else 1  # its weights need two L20s

    def run() -> dict[str, np.ndarray]:
        w = Workload(
            arrival=arrivals,
            input_tokens=tokens.astype(np.int64),
            output_tokens=outputs,
            service=np.zeros(n, dtype=np.int64),
            hash_ids=tuple(hashes),
        )
        sim = ClusterSim(services.services, GRAPH, w, catalog=DEFAULT_CATALOG, config=SimConfig())
        l20 = [h.name for h in GRAPH.hosts if h.gpu_type == "L20"]
        h20 = [h.name for h in GRAPH.hosts if h.gpu_type == "H20"]
        for g, (n_p, n_d) in {"dgA": (2, 1), "dgB": (1, 2), "dgC": (1, 1)}.items():
            for i in range(n_p):
                sim.add_instance(f"{g}p{i}", "svc", Role.PREFILL, g, l20[i], "L20", gpus, 0.0)
            for i in range(n_d):
                sim.add_instance(f"{g}d{i}", "svc", Role.DECODE, g, h20[i], "H20", gpus, 0.0)
        T = sim.inst
        pools = {"dgAp0": 30, "dgAp1": 10, "dgBp0": 25, "dgCp0": 0}  # blocks
        for inst, blocks in pools.items():
            T.kv_cap[sim.row_of[inst]] = PREFILL_WORKING_TOKENS + blocks * BLOCK_TOKENS + 100
        while not sim.done:
            if sim.tick == 12:  # dgA's pool shrinks: evictions down to the new size
                T.kv_cap[sim.row_of["dgAp1"]] = PREFILL_WORKING_TOKENS
            sim.step()
        return _state(sim)

    compiled = run()
    monkeypatch.setattr(kernels, "ENABLED", False)
    reference = run()
    assert compiled["cached"].sum() > 0
    assert len(np.unique(compiled["p_inst"])) == 4  # every prefill instance took prompts
    for name in compiled:
        np.testing.assert_array_equal(compiled[name], reference[name], err_msg=name, strict=True)


@pytest.mark.parametrize("store", ["dicts", "arrays"])
def test_a_dg_that_lost_its_prefill_instances_comes_back_cold(store: str) -> None:
    """A reused DG id maps to the same DG index: its pool must not survive the DG."""
    services = _services("dense-8b")
    one = np.ones(1, dtype=np.int64)
    w = Workload(
        arrival=np.zeros(1), input_tokens=one, output_tokens=one, service=0 * one, hash_ids=None
    )
    sim = ClusterSim(services.services, GRAPH, w, catalog=DEFAULT_CATALOG, config=SimConfig())
    l20, h20 = (next(h.name for h in GRAPH.hosts if h.gpu_type == t) for t in ("L20", "H20"))

    def add(g: str, i: int) -> None:  # loading: a drain removes it at once
        sim.add_instance(f"{g}p{i}", "svc", Role.PREFILL, g, l20, "L20", 1, 10.0)
        sim.add_instance(f"{g}d{i}", "svc", Role.DECODE, g, h20, "H20", 1, 10.0)

    cache = sim.prefix_cache

    def fill(g: int) -> None:
        if store == "dicts":
            cache.use(g, (1, 2, 3), 0, 8)
        else:
            lru = cache.arrays(8)
            s = lru.slots([g])
            lru.reserve(s, 3)
            flat = np.array([1, 2, 3], dtype=np.int32)
            cache_kernels.lru_use(
                lru.pos, lru.fifo, lru.head, lru.tail, lru.size, int(s[0]), flat, 0, 3, 0, 8
            )

    def blocks(g: int) -> list[int]:
        if store == "dicts":
            return list(cache._pools.get(g, ()))
        return cache.arrays(8).blocks_of(g)

    add("dgA", 0)
    add("dgB", 0)
    a, b = sim.dg_index("dgA"), sim.dg_index("dgB")
    fill(a)
    fill(b)
    sim.drain_instance("dgAd0")
    assert blocks(a) == [1, 2, 3]  # a decode instance holds no pool
    add("dgA", 1)
    sim.drain_instance("dgAp0")
    assert blocks(a) == [1, 2, 3]  # the pool lives on in the DG's other prefill instance
    sim.drain_instance("dgAp1")
    sim.drain_instance("dgAd1")
    assert blocks(a) == []
    add("dgA", 2)  # the id comes back
    assert sim.dg_index("dgA") == a and blocks(a) == []
    assert blocks(b) == [1, 2, 3]
    if store == "arrays":
        lru = cache.arrays(8)
        row = lru.slot_of[a]  # the DG keeps its row, emptied
        assert lru.size[row] == 0 and (lru.pos[row] == -1).all()
    fill(a)
    assert blocks(a) == [1, 2, 3]
