"""Roofline performance model: hand-computed timings, bounds, monotonicity and the paper's intuitions.

Default constants used in the hand computations: prefill/decode MFU 0.5, memory-bandwidth
efficiency 0.7, decode overhead 5 ms, prefill overhead 10 ms, 10% memory reserve, NIC 50 GB/s
with level fractions S0 0.9 / S1 0.85 / S2 0.72 / cross-S2 0.45, host link efficiency 0.8,
KV setup 0.5 ms. GPU numbers from the catalog: H20 148 TFLOP/s, 96 GB, 4.0 TB/s, NVLink 900 GB/s;
L20 119 TFLOP/s, 48 GB, 0.86 TB/s, PCIe 64 GB/s.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from heteroscale_ray.config.gpus import DEFAULT_CATALOG
from heteroscale_ray.config.loader import ConfigError
from heteroscale_ray.perf import (
    InstanceKind,
    ModelDoesNotFitError,
    PerfConstants,
    SharedLevel,
    decode_capacity,
    decode_step_time_s,
    fits,
    flops_decode_step,
    flops_prefill,
    get_profile,
    kv_capacity_tokens,
    kv_transfer_bandwidth_gbps,
    kv_transfer_time_s,
    load_perf_constants,
    load_profiles,
    max_decode_batch,
    min_gpus_to_fit,
    prefill_batch_time_s,
    prefill_capacity,
    prefill_time_s,
    prefill_uniform_batch_time_s,
    prefill_work_s,
    profiles_from_dict,
    sm_activity,
    weight_bytes_read,
)
from heteroscale_ray.serving.model import ModelConfig, TinyTransformer

H20 = DEFAULT_CATALOG["H20"]
L20 = DEFAULT_CATALOG["L20"]
D8 = get_profile("dense-8b")
D70 = get_profile("dense-70b")
MOE = get_profile("moe-a3b")
TINY = get_profile("tiny-cpu")
GPU = {"H20": H20, "L20": L20}

# dense-8b attention FLOPs per (query, key) pair: 4 * n_layers * hidden = 4 * 32 * 4096
D8_ATTN = 4 * 32 * 4096


@pytest.mark.parametrize(
    ("profile", "kv_bytes", "weight_bytes"),
    [
        ("dense-8b", 2 * 32 * 8 * 128 * 2, 8.03e9 * 2),
        ("dense-70b", 2 * 80 * 8 * 128 * 2, 70.56e9 * 2),
        ("moe-a3b", 2 * 48 * 4 * 128 * 2, 30.5e9 * 2),
        ("tiny-cpu", 2 * 4 * 8 * 32 * 4, 3_280_640 * 4),
    ],
)
def test_profile_sizes(profile: str, kv_bytes: int, weight_bytes: float) -> None:
    p = get_profile(profile)
    assert p.kv_bytes_per_token == kv_bytes
    assert p.weight_bytes == pytest.approx(weight_bytes)


@pytest.mark.parametrize(
    ("profile", "gpu", "batch", "context", "expected_s"),
    [
        # memory-bound: 16.06 GB of weights over 4.0 TB/s x 0.7, plus 5 ms
        ("dense-8b", "H20", 1, 0, 16.06e9 / (4.0e12 * 0.7) + 0.005),
        ("dense-8b", "L20", 1, 0, 16.06e9 / (0.86e12 * 0.7) + 0.005),
        # H20 at batch 64 x 2000 tokens is compute-bound: 14.8 ms of FLOPs vs 11.7 ms of bytes
        (
            "dense-8b",
            "H20",
            64,
            128_000,
            (2 * 8.03e9 * 64 + D8_ATTN * 128_000) / (148e12 * 0.5) + 0.005,
        ),
        ("dense-8b", "L20", 64, 128_000, (16.06e9 + 128_000 * 131_072) / (0.86e12 * 0.7) + 0.005),
        # MoE at batch 1 reads only the active 3.3B parameters
        ("moe-a3b", "H20", 1, 0, 3.3e9 * 2 / (4.0e12 * 0.7) + 0.005),
        ("dense-8b", "H20", 0, 0, 0.0),
    ],
)
def test_decode_step_hand_computed(
    profile: str, gpu: str, batch: int, context: int, expected_s: float
) -> None:
    assert decode_step_time_s(get_profile(profile), GPU[gpu], batch, context) == pytest.approx(
        expected_s
    )


@pytest.mark.parametrize(
    ("profile", "gpu", "n_tokens", "cached", "expected_s"),
    [
        # compute-bound: 2 * 8.03e9 * 1000 + causal attention over 1000 * 1001 / 2 pairs
        (
            "dense-8b",
            "L20",
            1000,
            0,
            (2 * 8.03e9 * 1000 + D8_ATTN * 500_500) / (119e12 * 0.5) + 0.01,
        ),
        # 600 cached tokens: 400 new ones, pairs = 400 * 600 + 400 * 401 / 2 = 320,200
        (
            "dense-8b",
            "H20",
            1000,
            600,
            (2 * 8.03e9 * 400 + D8_ATTN * 320_200) / (148e12 * 0.5) + 0.01,
        ),
        # one token is memory-bound: the weights still stream once
        ("dense-8b", "L20", 1, 0, 16.06e9 / (0.86e12 * 0.7) + 0.01),
        ("tiny-cpu", "H20", 1, 0, 3_280_640 * 4 / (4.0e12 * 0.7) + 0.01),
        # a full cache hit computes nothing
        ("dense-8b", "H20", 500, 500, 0.01),
    ],
)
def test_prefill_hand_computed(
    profile: str, gpu: str, n_tokens: int, cached: int, expected_s: float
) -> None:
    p = get_profile(profile)
    assert prefill_time_s(p, GPU[gpu], n_tokens, cached_tokens=cached) == pytest.approx(expected_s)


def test_prefill_batch_pays_one_overhead() -> None:
    both = prefill_batch_time_s(D8, L20, [1000, 500])
    flops = 2 * 8.03e9 * 1500 + D8_ATTN * (500_500 + 500 * 501 / 2)
    assert both == pytest.approx(flops / (119e12 * 0.5) + 0.01)
    assert both == pytest.approx(
        prefill_time_s(D8, L20, 1000) + prefill_time_s(D8, L20, 500) - 0.01
    )
    assert prefill_batch_time_s(D8, L20, [800] * 3, [200] * 3) == pytest.approx(
        prefill_uniform_batch_time_s(D8, L20, 800, 3, cached_tokens=200)
    )
    assert prefill_batch_time_s(D8, L20, []) == 0.0
    with pytest.raises(ValueError, match="one per prompt"):
        prefill_batch_time_s(D8, L20, [10, 20], [0])


@pytest.mark.parametrize(("n_new", "n_past"), [(1, 0), (17, 0), (64, 100), (1, 511)])
def test_tiny_cpu_flops_match_the_engine(n_new: int, n_past: int) -> None:
    model = TinyTransformer(ModelConfig())
    assert TINY.params_b * 1e9 == pytest.approx(model.num_params)
    assert flops_prefill(TINY, n_new + n_past, n_past) == pytest.approx(model.flops(n_new, n_past))


def test_decode_flops_count_weights_and_attention() -> None:
    assert flops_decode_step(D8, 8, 4000) == pytest.approx(2 * 8.03e9 * 8 + D8_ATTN * 4000)
    # Qwen3 MoE: attention width is 32 heads x 128 = 4096, twice hidden_size
    assert flops_decode_step(MOE, 1, 1000) == pytest.approx(2 * 3.3e9 + 4 * 48 * 4096 * 1000)


@pytest.mark.parametrize(
    ("n_tokens", "expected_b"),
    [(0, 0.0), (1, 3.3), (10_000, 30.5)],  # shared + experts touched: 1 - (1 - 8/128)^n
)
def test_moe_weight_bytes_read(n_tokens: int, expected_b: float) -> None:
    assert weight_bytes_read(MOE, n_tokens) == pytest.approx(expected_b * 1e9 * 2, rel=1e-6)


def test_moe_reads_more_experts_as_batch_grows() -> None:
    reads = [weight_bytes_read(MOE, n) for n in (1, 2, 8, 64, 512)]
    assert reads == sorted(reads) and len(set(reads)) == len(reads)
    assert weight_bytes_read(D8, 1) == weight_bytes_read(D8, 512) == pytest.approx(16.06e9)


def test_more_work_takes_longer() -> None:
    prefill = [prefill_time_s(D8, L20, n) for n in (1, 100, 1000, 3000, 8000)]
    assert all(a < b for a, b in itertools.pairwise(prefill))
    by_batch = [decode_step_time_s(D8, L20, b, b * 1000) for b in (1, 8, 32, 128)]
    assert all(a < b for a, b in itertools.pairwise(by_batch))
    by_context = [decode_step_time_s(D8, H20, 16, c) for c in (0, 10_000, 100_000)]
    assert all(a < b for a, b in itertools.pairwise(by_context))
    transfers = [kv_transfer_time_s(D8, n, SharedLevel.S1, H20) for n in (1, 1000, 10_000)]
    assert all(a < b for a, b in itertools.pairwise(transfers))


GPU_PAIRS = list(itertools.permutations(DEFAULT_CATALOG.gpus.values(), 2))


@pytest.mark.parametrize(
    ("fast", "slow"),
    [(a, b) for a, b in GPU_PAIRS if a.tflops > b.tflops],
    ids=lambda g: g.name,
)
def test_more_flops_prefill_faster(fast, slow) -> None:
    assert prefill_time_s(D8, fast, 2000) < prefill_time_s(D8, slow, 2000)


@pytest.mark.parametrize(
    ("fast", "slow"),
    [(a, b) for a, b in GPU_PAIRS if a.mem_bw_tbps > b.mem_bw_tbps],
    ids=lambda g: g.name,
)
def test_more_bandwidth_decode_faster(fast, slow) -> None:
    assert decode_step_time_s(D8, fast, 1, 2000) < decode_step_time_s(D8, slow, 1, 2000)


def test_h20_is_the_decode_card_and_l20_the_cheap_prefill_card() -> None:
    """The paper's premise: each phase wants different hardware (Service A: 3000 in / 350 out)."""
    context = 3000 + 350 / 2
    h20_tps = decode_capacity(InstanceKind.build(D8, H20, 1), 0.04, context, 3350, 1.0).tokens_per_s
    l20_tps = decode_capacity(InstanceKind.build(D8, L20, 1), 0.04, context, 3350, 1.0).tokens_per_s
    assert h20_tps / H20.cost_per_hour > 3 * l20_tps / L20.cost_per_hour
    assert decode_step_time_s(D8, H20, 64, 64 * 3000) < decode_step_time_s(D8, L20, 64, 64 * 3000)
    # prefill: H20 is faster, but L20 does the same prompt for less money
    h20_s, l20_s = prefill_time_s(D8, H20, 3000), prefill_time_s(D8, L20, 3000)
    assert h20_s < l20_s
    assert l20_s * L20.cost_per_hour < 0.75 * h20_s * H20.cost_per_hour


@pytest.mark.parametrize(
    ("level", "gpu", "expected_gbps"),
    [
        (SharedLevel.HOST, "H20", 900 * 0.8),
        (SharedLevel.S0, "H20", 50 * 0.9),
        (SharedLevel.S1, "H20", 50 * 0.85),
        (SharedLevel.S2, "H20", 50 * 0.72),
        (SharedLevel.CROSS_S2, "H20", 50 * 0.45),
        (SharedLevel.HOST, "L20", 64 * 0.8),
        (SharedLevel.S0, "L20", 45.0),  # min(PCIe 51.2, NIC 45)
    ],
)
def test_kv_bandwidth_by_level(level: SharedLevel, gpu: str, expected_gbps: float) -> None:
    assert kv_transfer_bandwidth_gbps(level, GPU[gpu]) == pytest.approx(expected_gbps)
    assert kv_transfer_bandwidth_gbps(level, GPU[gpu], n_gpus=2) == pytest.approx(2 * expected_gbps)


def test_kv_transfer_slows_up_the_switch_tree() -> None:
    times = [kv_transfer_time_s(D8, 3000, level, H20) for level in SharedLevel]
    assert all(a < b for a, b in itertools.pairwise(times))
    # 1000 tokens of dense-8b KV = 131.072 MB over 45 GB/s, plus the 0.5 ms setup
    assert kv_transfer_time_s(D8, 1000, SharedLevel.S0, H20) == pytest.approx(
        131.072e6 / 45e9 + 0.0005
    )
    assert kv_transfer_time_s(D8, 0, SharedLevel.CROSS_S2, H20) == 0.0
    # the paper: topology-blind placement loses ~20% of KV bandwidth
    s0 = kv_transfer_bandwidth_gbps(SharedLevel.S0, H20)
    assert kv_transfer_bandwidth_gbps(SharedLevel.S2, H20) / s0 == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("profile", "gpu", "n_gpus", "expected_tokens"),
    [
        ("dense-8b", "H20", 1, 536_651),  # (96e9 * 0.9 - 16.06e9) / 131072 = 536,651.9
        ("dense-8b", "L20", 1, 207_061),  # (48e9 * 0.9 - 16.06e9) / 131072 = 207,061.8
        ("dense-70b", "H20", 2, 96_679),  # (192e9 * 0.9 - 141.12e9) / 327680 = 96,679.7
        ("dense-70b", "L20", 4, 96_679),  # same memory in total
        ("tiny-cpu", "L20", 1, 5_271_835),  # (43.2e9 - 13,122,560) / 8192 = 5,271,835.6
    ],
)
def test_kv_capacity(profile: str, gpu: str, n_gpus: int, expected_tokens: int) -> None:
    assert kv_capacity_tokens(get_profile(profile), GPU[gpu], n_gpus) == expected_tokens


@pytest.mark.parametrize(("gpu", "n_gpus", "needed"), [("H20", 1, 2), ("L20", 1, 4), ("L20", 2, 4)])
def test_model_does_not_fit(gpu: str, n_gpus: int, needed: int) -> None:
    assert not fits(D70, GPU[gpu], n_gpus)
    assert min_gpus_to_fit(D70, GPU[gpu]) == needed
    with pytest.raises(
        ModelDoesNotFitError, match=f"does not fit on {n_gpus} x {gpu}.*n_gpus >= {needed}"
    ):
        kv_capacity_tokens(D70, GPU[gpu], n_gpus)


def test_max_decode_batch() -> None:
    assert max_decode_batch(D8, L20, 2000) == 207_061 // 2000  # 103, memory-bound
    assert max_decode_batch(D8, H20, 2000) == 256  # 268 fit; max_running_seqs caps
    assert max_decode_batch(D8, H20, 2000, const=PerfConstants(max_running_seqs=1000)) == 268
    assert max_decode_batch(D8, L20, 300_000) == 0
    with pytest.raises(ValueError, match="avg_context"):
        max_decode_batch(D8, L20, 0)


def test_decode_capacity_hand_computed() -> None:
    # per sequence at 2000 tokens on H20: compute 0.2312 ms, memory 0.0936 ms (+5.74 ms weights);
    # a 20 ms TBT leaves 15 ms: compute allows 64 sequences, memory 98
    h20 = InstanceKind.build(D8, H20, 1)
    step_64 = 64 * (2 * 8.03e9 + D8_ATTN * 2000) / (148e12 * 0.5) + 0.005
    cap = decode_capacity(h20, 0.020, 2000, 2000, margin=1.0)
    assert (cap.batch, cap.limited_by, cap.feasible) == (64, "tbt", True)
    assert cap.step_s == pytest.approx(step_64)
    assert cap.tokens_per_s == pytest.approx(64 / step_64)
    assert decode_step_time_s(D8, H20, 65, 65 * 2000) > 0.020
    # the default margin: 0.7 x 20 ms less 5 ms leaves 9 ms, and memory binds first there
    # (5.74 ms of weights + 0.0936 ms a sequence): 34
    assert decode_capacity(h20, 0.020, 2000, 2000).batch == 34
    # no binding TBT: the KV reservations cap the batch (the memory cap of max_decode_batch)
    l20 = InstanceKind.build(D8, L20, 1)
    roomy = decode_capacity(l20, 10.0, 2000, 2000)
    assert (roomy.batch, roomy.limited_by) == (max_decode_batch(D8, L20, 2000), "kv")
    assert roomy.batch == 103
    # L20 cannot meet 30 ms even at batch 1 (31.7 ms): batch 1, flagged infeasible
    slow = decode_capacity(l20, 0.030, 2000, 2000, margin=1.0)
    assert (slow.batch, slow.limited_by, slow.feasible) == (1, "tbt", False)
    assert slow.step_s == pytest.approx(decode_step_time_s(D8, L20, 1, 2000))


def test_prefill_capacity_hand_computed() -> None:
    one = (2 * 8.03e9 * 1000 + D8_ATTN * 500_500) / (119e12 * 0.5)  # 0.2743 s of compute
    l20 = InstanceKind.build(D8, L20, 1)
    assert prefill_capacity(l20, 1000, busy_share=1.0) == pytest.approx(1000 / (one + 0.01))
    assert prefill_capacity(l20, 1000) == pytest.approx(0.8 * 1000 / (one + 0.01))
    assert prefill_capacity(l20, 1000, 1.0) == pytest.approx(1000 / prefill_time_s(D8, L20, 1000))
    # a 50% cache hit: 0.1358 s of compute a prompt; only the missed tokens count
    half = (2 * 8.03e9 * 500 + D8_ATTN * (500 * 500 + 500 * 501 / 2)) / (119e12 * 0.5)
    assert prefill_capacity(l20, 1000, 1.0, mean_cached=500) == pytest.approx(500 / (half + 0.01))
    # four GPUs (tensor parallel) compute four times as fast, less the fixed overhead
    l20x4 = InstanceKind.build(D8, L20, 4)
    assert prefill_capacity(l20x4, 1000, 1.0) == pytest.approx(1000 / (one / 4 + 0.01))


def test_prefill_capacity_of_spread_prompts_is_their_mean_work() -> None:
    """Attention makes a long prompt cost more than two short ones of its length: with the
    lengths' standard deviation the rate is the tokens over the mean work, not the rate at the
    mean length (which overstates this long tail by 18%, and Mooncake's by ~15%)."""
    l20 = InstanceKind.build(D8, L20, 1)
    lengths = np.array([500.0, 1500.0, 4000.0, 12000.0, 30000.0])
    exact = lengths.sum() / prefill_work_s(l20, lengths).sum()
    mean, sd = float(lengths.mean()), float(lengths.std())
    assert prefill_capacity(l20, mean, 1.0, sd_input=sd) == pytest.approx(exact, rel=1e-6)
    assert prefill_capacity(l20, mean, 1.0) > 1.15 * exact  # the mean length overstates it
    with pytest.raises(ValueError, match="sd_input"):
        prefill_capacity(l20, mean, 1.0, sd_input=-1.0)
    with pytest.raises(ValueError, match="mean_input"):
        prefill_capacity(l20, 0)
    with pytest.raises(ValueError, match="busy_share"):
        prefill_capacity(l20, 1000, busy_share=0.0)


@pytest.mark.parametrize("model", ["dense-8b", "dense-70b", "moe-a3b"])
@pytest.mark.parametrize(("gpu", "n"), [("H20", 4), ("L20", 8), ("H800", 2)])
def test_vectorised_timing_matches_the_shared_perf_model(model: str, gpu: str, n: int) -> None:
    prof = get_profile(model)
    kind = InstanceKind.build(prof, DEFAULT_CATALOG[gpu], n)
    for tokens, cached in [(1, 0), (1000, 0), (5000, 512), (30000, 20000)]:
        expect = prefill_time_s(prof, DEFAULT_CATALOG[gpu], tokens, n, cached)
        got = float(kind.prefill_seconds(np.array([tokens - cached]), np.array([cached]))[0])
        assert got == pytest.approx(expect, rel=1e-9)
        assert kind.prefill_one(tokens, cached)[0] == pytest.approx(expect, rel=1e-9)
    for batch, ctx in [(1, 100), (64, 64 * 1300), (256, 256 * 4000)]:
        expect = decode_step_time_s(prof, DEFAULT_CATALOG[gpu], batch, ctx, n)
        got = float(kind.step_seconds(np.array([batch]), np.array([float(ctx)]))[0])
        assert got == pytest.approx(expect, rel=1e-9)


def test_sm_activity() -> None:
    compute = (2 * 8.03e9 * 1000 + D8_ATTN * 500_500) / (119e12 * 0.5)
    flops = flops_prefill(D8, 1000)
    assert sm_activity(flops, prefill_time_s(D8, L20, 1000), L20) == pytest.approx(
        0.5 * compute / (compute + 0.01)
    )
    # decode at batch 1 barely uses the SMs; batching raises it (the paper's SM-activity signal)
    light = sm_activity(flops_decode_step(D8, 1, 2000), decode_step_time_s(D8, H20, 1, 2000), H20)
    heavy = sm_activity(
        flops_decode_step(D8, 64, 128_000), decode_step_time_s(D8, H20, 64, 128_000), H20
    )
    assert light < 0.02 < 0.3 < heavy < 0.5
    assert sm_activity(1e12, 0.0, H20) == 0.0


def test_tensor_parallel_divides_time() -> None:
    one = decode_step_time_s(D8, H20, 8, 8000)
    two = decode_step_time_s(D8, H20, 8, 8000, n_gpus=2)
    assert two - 0.005 == pytest.approx((one - 0.005) / 2)
    with pytest.raises(ValueError, match="n_gpus"):
        prefill_time_s(D8, H20, 10, n_gpus=0)


CUSTOM = {
    "name": "dense-1b",
    "params_b": 1.0,
    "active_params_b": 1.0,
    "n_layers": 16,
    "hidden_size": 2048,
    "n_kv_heads": 8,
    "head_dim": 64,
}


def test_profiles_from_dict_add_and_replace() -> None:
    table = profiles_from_dict(
        {"profiles": [CUSTOM, {**CUSTOM, "name": "dense-8b", "params_b": 9, "active_params_b": 9}]}
    )
    assert table["dense-1b"].kv_bytes_per_token == 2 * 16 * 8 * 64 * 2
    assert table["dense-8b"].params_b == 9
    assert table["moe-a3b"] == MOE


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"bogus": 1}, "profiles[0].bogus: unknown key"),
        ({"kv_bytes_per_token": 5}, "kv_bytes_per_token: unknown key"),
        ({"active_params_b": 2.0}, "active_params_b 2.0 exceeds params_b 1.0"),
        ({"n_experts": 8}, "set both n_experts and experts_per_token"),
        ({"n_layers": 0}, "profiles[0].n_layers"),
    ],
)
def test_bad_profiles_are_explained(patch: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        profiles_from_dict({"profiles": [{**CUSTOM, **patch}]}, source="models.yaml")
    assert "models.yaml" in str(err.value)
    assert message in str(err.value)


def test_profiles_and_constants_load_from_yaml(tmp_path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(
        "profiles:\n  - {name: dense-1b, params_b: 1.0, active_params_b: 1.0, n_layers: 16,\n"
        "     hidden_size: 2048, n_kv_heads: 8, head_dim: 64}\n"
    )
    assert load_profiles(models)["dense-1b"].n_layers == 16
    consts = tmp_path / "perf.yaml"
    consts.write_text("prefill_mfu: 0.4\ndecode_step_overhead_s: 0.002\n")
    c = load_perf_constants(consts)
    assert (c.prefill_mfu, c.decode_step_overhead_s, c.mem_bw_efficiency) == (0.4, 0.002, 0.7)
    assert decode_step_time_s(D8, H20, 1, 0, const=c) == pytest.approx(16.06e9 / 2.8e12 + 0.002)


def test_constants_reject_faster_higher_levels() -> None:
    with pytest.raises(ValueError, match="s2_bw_fraction .* exceeds s1_bw_fraction"):
        PerfConstants(s2_bw_fraction=0.95)
    with pytest.raises(ValueError):
        PerfConstants(prefill_mfu=1.5)


@pytest.mark.parametrize("name", ["dense-8b", "dense-70b", "moe-a3b", "tiny-cpu"])
def test_profiles_round_trip_through_json(name: str) -> None:
    profile = get_profile(name)
    assert type(profile).model_validate_json(profile.model_dump_json()) == profile


def test_unknown_profile_lists_known_ones() -> None:
    with pytest.raises(KeyError, match="known profiles: dense-70b, dense-8b, moe-a3b, tiny-cpu"):
        get_profile("gpt-5")
