"""The compiled kernels (sim/kernels.py, with numba) give the reference code's numbers bit for bit.

Each scenario replays twice in one process, once with the kernels and once with the numpy and
Python reference (`kernels.ENABLED` off), and compares every per-request and per-tick array.
Skipped where numba is not installed: then only the reference code runs anyway.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba")

from sim_builders import H20_HOSTS, L20_HOSTS, small_sim  # noqa: E402

from heteroscale_ray.config import BUILTIN_GPUS, Role, load_services  # noqa: E402
from heteroscale_ray.perf.capacity import prefill_work_s  # noqa: E402
from heteroscale_ray.perf.instance_kind import InstanceKind  # noqa: E402
from heteroscale_ray.perf.profiles import BUILTIN_PROFILES  # noqa: E402
from heteroscale_ray.policy.arrival_bursts import heaviest  # noqa: E402
from heteroscale_ray.sim import (  # noqa: E402
    decode_kernels,
    kernels,
    observe_kernels,
    tick_kernels,
)
from heteroscale_ray.sim.cluster import ClusterSim  # noqa: E402
from heteroscale_ray.sim.fleet import fleet_for  # noqa: E402
from heteroscale_ray.sim.layout import STEP_COEFFS, layout  # noqa: E402
from heteroscale_ray.sim.replay import ReplayOptions, run_replay  # noqa: E402
from heteroscale_ray.traces import load_trace, scale_rate  # noqa: E402
from heteroscale_ray.traces.samples import SAMPLES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REQUEST_ARRAYS = ("p_inst", "d_inst", "cached", "t_first", "p_work", "t_kv", "t_dstart")
REQUEST_ARRAYS += ("t_done",)
REQUEST_ARRAYS += ("kv_level", "kv_time", "gen", "reserve")


def _state(sim: ClusterSim) -> dict[str, np.ndarray]:
    out = {name: getattr(sim, name).copy() for name in REQUEST_ARRAYS}
    for name in vars(sim):
        if name.startswith("ts_"):
            out[name] = getattr(sim, name).copy()
    T = sim.inst
    for name in ("free_at", "cum_work", "cum_flops", "kv_used", "kv_promised", "n_active"):
        out[f"inst.{name}"] = getattr(T, name)[: T.n].copy()
    return out


def _both(monkeypatch: pytest.MonkeyPatch, run) -> tuple[dict, dict]:  # noqa: ANN001
    if not kernels.ENABLED:
        pytest.skip("kernels switched off (HETEROSCALE_SIM_KERNELS=0)")
    compiled = run()
    monkeypatch.setattr(kernels, "ENABLED", False)
    reference = run()
    return compiled, reference


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name, strict=True)


@pytest.mark.parametrize("policy", ["heteroscale", "hpa-util", "oracle"])
def test_replay_is_the_same_with_and_without_kernels(
    monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    services = load_services(ROOT / "examples" / "sim_services.yaml")
    spec = services.by_name()["dialogue"]
    trace = scale_rate(load_trace(SAMPLES["azure-conv"].path).slice(0, 300), 8, seed=7)

    def run() -> dict:
        res = run_replay(
            services, fleet_for([spec], 512), {"dialogue": trace}, ReplayOptions(policy=policy)
        )
        return {**_state(res.sim), "summary": np.array([_numbers(res.summary)])}

    _assert_same(*_both(monkeypatch, run))


def test_prefix_cache_replay_is_the_same_with_and_without_kernels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mooncake: the cache-aware routing loop, decode and the series all have compiled twins."""
    services = load_services(ROOT / "examples" / "sim_services.yaml")
    spec = services.by_name()["longctx"]
    trace = load_trace(SAMPLES["mooncake"].path).slice(0, 240)

    def run() -> dict:
        res = run_replay(services, fleet_for([spec], 512), {"longctx": trace}, ReplayOptions())
        return _state(res.sim)

    _assert_same(*_both(monkeypatch, run))


def test_full_decode_instances_admit_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three DGs, tight KV and sequence caps: admission waits, ties of KV arrival time, and
    prefill queues left from earlier ticks."""
    rng = np.random.default_rng(5)
    n = 600
    arrivals = np.sort(rng.uniform(0.0, 20.0, n))
    arrivals[100:140] = arrivals[100]  # one burst at the same instant
    inputs = rng.integers(50, 6000, n)
    outputs = rng.integers(1, 300, n)
    free0 = rng.uniform(0.0, 0.5, 8)  # prefill queues left from earlier ticks

    def run() -> dict:
        sim = small_sim(arrivals, inputs, outputs, drain_timeout_s=600)
        l20, h20 = L20_HOSTS, H20_HOSTS
        for g, (n_p, n_d) in {"dgA": (2, 1), "dgB": (1, 2), "dgC": (1, 1)}.items():
            for i in range(n_p):
                sim.add_instance(f"{g}p{i}", "svc", Role.PREFILL, g, l20[i], "L20", 1, 0.0)
            for i in range(n_d):
                sim.add_instance(f"{g}d{i}", "svc", Role.DECODE, g, h20[i], "H20", 1, 0.0)
        T = sim.inst
        dec = T.role[: T.n] == 1
        T.kv_cap[: T.n][dec] = 12_000.0
        T.max_seqs[: T.n][dec] = 6
        T.free_at[: T.n] = free0
        while not sim.done:
            if sim.tick == 8:
                sim.drain_instance("dgBd1")
            sim.step()
        return _state(sim)

    _assert_same(*_both(monkeypatch, run))


@pytest.mark.parametrize("prefix_hashes", [False, True])
def test_requests_held_at_the_ingress_are_the_same(
    monkeypatch: pytest.MonkeyPatch, prefix_hashes: bool
) -> None:
    """A burst far beyond two DGs' prefill: routing stops at the hold, the rest wait at the
    ingress and go late-last; with and without the prefix cache, compiled or not."""
    rng = np.random.default_rng(11)
    n = 900
    arrivals = np.sort(rng.uniform(0.0, 30.0, n))
    inputs = rng.integers(500, 8000, n)
    outputs = rng.integers(1, 200, n)
    hashes = None
    if prefix_hashes:  # eight shared system prompts of 1-3 blocks, then the request's own
        heads = [tuple(range(100 * h, 100 * h + 1 + h % 3)) for h in range(8)]
        hashes = tuple(
            heads[int(rng.integers(8))] + (10_000 + j,) * int(inputs[j] > 2048) for j in range(n)
        )

    def run() -> dict:
        sim = small_sim(arrivals, inputs, outputs, hash_ids=hashes, drain_timeout_s=900)
        for g, i in (("dgA", 0), ("dgB", 1)):
            sim.add_instance(f"{g}p", "svc", Role.PREFILL, g, L20_HOSTS[i], "L20", 1, 0.0)
            sim.add_instance(f"{g}d", "svc", Role.DECODE, g, H20_HOSTS[i], "H20", 1, 0.0)
        most_held = 0
        while not sim.done:
            sim.step()
            most_held = max(most_held, len(sim._backlog))
        return {**_state(sim), "most_held": np.array([most_held])}

    compiled, reference = _both(monkeypatch, run)
    _assert_same(compiled, reference)
    assert compiled["most_held"][0] > 100  # the hold was exercised
    assert np.isfinite(compiled["t_done"]).all()  # and every request finished


@pytest.mark.parametrize(
    ("sample", "model"),
    [("azure-conv", None), ("azure-conv", "moe-a3b"), ("mooncake", None)],
)
def test_each_routed_prompt_keeps_its_kinds_own_prefill_price(
    monkeypatch: pytest.MonkeyPatch, sample: str, model: str | None
) -> None:
    """The prefill queue and the TTFT split read `p_work`, routing's price of each prompt, for
    the price of its kind: the same number, whether routing ran compiled or not, on a dense
    model, an MoE one (the weights read depend on the tokens) and prefix-cache hits."""
    services = load_services(ROOT / "examples" / "sim_services.yaml")
    spec = services.by_name()["general"]
    if model is not None:
        spec = spec.model_copy(update={"model": model})
    one = services.model_copy(update={"services": [spec]})
    trace = load_trace(SAMPLES[sample].path).slice(0, 240)

    def run() -> dict:
        sim = run_replay(one, fleet_for([spec], 256), {"general": trace}, ReplayOptions()).sim
        ids = np.flatnonzero(sim.p_inst >= 0)
        kinds = sim.inst.kind[sim.p_inst[ids]]
        own = np.empty(len(ids))
        for k in np.unique(kinds):
            m = kinds == k
            own[m] = prefill_work_s(sim.kinds[k], sim.w.input_tokens[ids[m]], sim.cached[ids[m]])
        twin = layout(sim).step_coeffs is not None
        return {"routed": sim.p_work[ids], "own": own, "hits": np.array([sim.cached.sum()])} | {
            "twin": np.array([twin])
        }

    for got in _both(monkeypatch, run):
        assert len(got["own"]) > 100
        np.testing.assert_array_equal(got["routed"], got["own"], strict=True)
        # decode's steps are priced by the compiled twin on a dense kind only
        assert got["twin"][0] == (model is None)
    if sample == "mooncake":
        assert got["hits"][0] > 0  # prefix-cache hits were priced


def test_the_step_time_twin_prices_as_the_kind_does() -> None:
    """`decode_kernels._price_steps` against `InstanceKind.step_seconds`, bit for bit, on every dense
    built-in model on every built-in GPU, 4 and 8 to an instance: averaged (fractional)
    batches, empty ones, and both sides of the memory / compute bound."""
    if not kernels.ENABLED:
        pytest.skip("kernels switched off (HETEROSCALE_SIM_KERNELS=0)")
    rng = np.random.default_rng(3)
    n = 2_000
    dense = [
        InstanceKind.build(profile, gpu, n_gpus)
        for profile in BUILTIN_PROFILES
        if profile.n_experts is None
        for gpu in BUILTIN_GPUS
        for n_gpus in (4, 8)  # dense-70b fits on 4 of any built-in GPU
    ]
    assert len(dense) >= 4
    for kind in dense:
        batch = np.where(rng.random(n) < 0.1, 0.0, rng.random(n) * 4_000)
        ctx = batch * np.exp(rng.uniform(0.0, np.log(40_000), n))  # 1-40k tokens a sequence
        coeffs = np.repeat([[getattr(kind, f) for f in STEP_COEFFS]], n, 0)
        tau = np.full(n, -1.0)
        decode_kernels._price_steps(np.arange(n), coeffs, batch, ctx, tau)
        want = kind.step_seconds(batch, ctx)
        np.testing.assert_array_equal(tau, want, strict=True)
        mem = (kind.w_shared + ctx * kind.kv_bytes_per_token) / kind.mem_bw
        compute = kind.decode_flops(batch, ctx) / kind.decode_flops_s
        assert (mem > compute).any() and (compute > mem).any()  # both bounds were priced


def _numbers(summary: dict) -> str:
    """The summary's numbers (not its wall time) as one comparable string."""
    kept = {k: v for k, v in summary.items() if k not in ("wall_s", "speedup")}
    return json.dumps(kept, sort_keys=True, default=str)


def test_the_burst_scan_twin_finds_the_same_heaviest_bursts() -> None:
    """Poisson arrivals, prompts sent at one instant, one arrival, and spans longer than the
    trace: the compiled scan and numpy's searchsorted agree bit for bit."""
    rng = np.random.default_rng(7)
    poisson = np.cumsum(rng.exponential(0.01, 5_000))
    instants = np.repeat(np.arange(0.0, 30.0, 5.0), 150)
    for arrivals in (poisson, instants, np.array([3.0]), np.array([0.0, 0.5, 0.5, 9.0])):
        tokens = rng.lognormal(7.0, 1.2, len(arrivals)) * 0.37  # a cache-miss share
        reference = heaviest(arrivals, tokens)
        assert heaviest(arrivals, tokens, observe_kernels.heaviest_scan) == reference
        assert reference[0] > 0 and reference == tuple(sorted(reference))


def test_the_pairwise_sum_twin_adds_as_numpy_does() -> None:
    """Lengths on both sides of every block edge: numpy's pairwise sum, bit for bit, where a
    sum in order rounds differently."""
    rng = np.random.default_rng(11)
    lengths = [0, 1, 7, 8, 9, 15, 16, 127, 128, 129, 255, 256, 257, 1000, 8191, 8192, 8193]
    lengths += [int(n) for n in rng.integers(0, 20_000, 200)]
    in_order_differs = 0
    for n in lengths:
        a = rng.lognormal(0.0, 2.0, n) * rng.choice([1e-3, 1.0, 1e6])
        assert tick_kernels.pairwise_sum(a, 0, n) == np.sum(a), n
        lo = n // 3
        assert tick_kernels.pairwise_sum(a, lo, n - lo) == np.sum(a[lo:]), n
        in_order_differs += float(sum(a.tolist())) != np.sum(a)
    assert in_order_differs > 0  # the test can tell the two apart


def test_two_services_replay_the_same_with_and_without_kernels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Series kept per service (the prefill queue, decode's token steps) on a shared fleet."""
    services = load_services(ROOT / "examples" / "sim_services.yaml")
    specs = [services.by_name()[name] for name in ("dialogue", "general")]
    azure = load_trace(SAMPLES["azure-conv"].path).slice(0, 240)
    traces = {"dialogue": scale_rate(azure, 6, seed=3), "general": scale_rate(azure, 4, seed=4)}

    def run() -> dict:
        res = run_replay(services, fleet_for(specs, 1024), traces, ReplayOptions())
        return _state(res.sim)

    _assert_same(*_both(monkeypatch, run))


def test_the_percentile_twin_interpolates_as_numpy_does() -> None:
    """Continuous values, ties, one value, and the quantiles at and near the ends."""
    rng = np.random.default_rng(13)
    for n in [1, 2, 3, 99, 100, 101, 1_000, *(int(v) for v in rng.integers(1, 30_000, 60))]:
        for x in (rng.lognormal(0.0, 1.5, n), rng.integers(0, 4, n).astype(float)):
            before = x.copy()
            for q in (0.0, 50.0, 90.0, 99.0, 99.9, 100.0):
                assert observe_kernels.percentile(x, q) == np.percentile(x, q), (n, q)
            np.testing.assert_array_equal(x, before)
    assert np.isnan(observe_kernels.percentile(np.array([1.0, np.nan, 2.0]), 99.0))
