"""Simulator mechanics on tiny scenarios whose numbers can be checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sim_builders import GRAPH, H20_HOSTS, L20_HOSTS, SERVICES, small_sim

from heteroscale_ray.config import DEFAULT_CATALOG, AffinityLevel, Role
from heteroscale_ray.perf.network import SharedLevel
from heteroscale_ray.perf.profiles import get_profile
from heteroscale_ray.perf.roofline import decode_step_time_s, prefill_time_s
from heteroscale_ray.sim.cluster import (
    DRAINING,
    GONE,
    READY,
    SOFT,
    STARTING,
    ClusterSim,
)
from heteroscale_ray.sim.routing import hold_s


def make_sim(arrivals: list[float], inputs: list[int], outputs: list[int]) -> ClusterSim:
    return small_sim(arrivals, inputs, outputs, drain_timeout_s=300)


def l20_host() -> str:
    return next(h.name for h in GRAPH.hosts if h.gpu_type == "L20")


def h20_host(k: int = 0) -> str:
    return [h.name for h in GRAPH.hosts if h.gpu_type == "H20"][k]


def add_pair(sim: ClusterSim, ready_at: float = 0.0) -> None:
    sim.add_instance("p0", "svc", Role.PREFILL, "dg0", l20_host(), "L20", 1, ready_at)
    sim.add_instance("d0", "svc", Role.DECODE, "dg0", h20_host(), "H20", 1, ready_at)


def run(sim: ClusterSim) -> None:
    while not sim.done:
        sim.step()


def test_one_request_latency_by_hand() -> None:
    sim = make_sim([0.25], [1000], [11])
    add_pair(sim)
    run(sim)
    prof, l20, h20 = get_profile("dense-8b"), DEFAULT_CATALOG["L20"], DEFAULT_CATALOG["H20"]
    ttft = prefill_time_s(prof, l20, 1000)
    assert sim.t_first[0] - 0.25 == pytest.approx(ttft)
    # the L20 and H20 hosts sit in different S1s of one S2
    assert sim.kv_level[0] == SharedLevel.S2
    kind = sim.kinds[sim.inst.kind[0]]
    kv = kind.kv_transfer_seconds(np.array([1000.0]), np.array([int(SharedLevel.S2)]))[0]
    step = decode_step_time_s(prof, h20, 1, 1000)  # fluid model: the tick's batch sets the step
    assert sim.t_done[0] == pytest.approx(0.25 + ttft + kv + 10 * step)


def test_startup_delay_holds_traffic_until_ready() -> None:
    sim = make_sim([0.0, 5.0], [500, 500], [5, 5])
    add_pair(sim, ready_at=90.0)
    assert sim.inst.state[0] == STARTING
    run(sim)
    assert sim.inst.state[0] == READY
    assert np.all(sim.t_first >= 90.0)  # nothing ran before the model was loaded
    assert np.all(np.isfinite(sim.t_done))


def test_drain_finishes_in_flight_work_then_removes() -> None:
    sim = make_sim([0.0], [500], [400])  # ~400 decode steps of ~10 ms: a few seconds
    add_pair(sim)
    sim.step()
    sim.step()
    assert sim.inst.n_active[1] == 1
    sim.drain_instance("d0")
    assert sim.inst.state[1] == DRAINING
    run(sim)
    sim.step()  # removal happens in the lifecycle stage of the tick after the last token
    assert sim.inst.state[1] == GONE
    assert np.isfinite(sim.t_done[0])
    assert sim.inst.t_removed[1] >= sim.t_done[0]
    assert sim.removed == ["d0"]


def test_draining_instance_gets_no_new_requests() -> None:
    sim = make_sim([0.0, 3.0], [500, 500], [50, 50])
    add_pair(sim)
    sim.add_instance("d1", "svc", Role.DECODE, "dg0", h20_host(1), "H20", 1, 0.0)
    sim.step()
    sim.drain_instance("d0")
    run(sim)
    assert sim.d_inst[1] == 2  # the second request went to d1


def test_kv_capacity_bounds_the_decode_batch() -> None:
    n = 20
    sim = make_sim([0.0] * n, [1000] * n, [200] * n)
    add_pair(sim)
    sim.inst.kv_cap[1] = 5 * 1200  # room for 5 reservations of 1000 + 200 tokens
    peak = 0
    while not sim.done:
        sim.step()
        peak = max(peak, int(sim.inst.n_active[1]))
        assert sim.inst.kv_used[1] <= 5 * 1200
    assert peak == 5
    assert np.all(np.isfinite(sim.t_done))


def test_slo_accounting_in_summary() -> None:
    from heteroscale_ray.sim.actuator import SimActuator
    from heteroscale_ray.sim.replay import ReplayOptions
    from heteroscale_ray.sim.summary import summarize

    # request 0 meets both SLOs; request 1 waits 90 s for a starting instance and misses TTFT
    sim = make_sim([0.0, 1.0], [500, 500], [5, 5])
    add_pair(sim)
    run(sim)
    s = summarize(sim, SERVICES.services, 2.0, ReplayOptions(), 1.0, 0, 0, SimActuator(sim, 0))
    assert s["slo_attainment"] == 1.0
    sim2 = make_sim([0.0, 100.0], [500, 500], [5, 5])
    add_pair(sim2)
    while sim2.now < 50:
        sim2.step()
    sim2.drain_instance("p0")
    sim2.add_instance("p1", "svc", Role.PREFILL, "dg0", l20_host(), "L20", 1, 190.0)
    run(sim2)
    s2 = summarize(sim2, SERVICES.services, 100.0, ReplayOptions(), 1.0, 0, 0, SimActuator(sim2, 0))
    assert s2["slo_attainment"] == 0.5
    assert s2["completed"] == 2


@pytest.mark.parametrize(("n", "tokens", "saturated"), [(10, 100, False), (120, 4000, True)])
def test_offered_prefill_load_keeps_rising_when_prefill_saturates(
    n: int, tokens: int, saturated: bool
) -> None:
    from heteroscale_ray.sim.observe import observe

    arrivals = list(np.linspace(0.5, 29.5, n))
    sim = make_sim(arrivals, [tokens] * n, [4] * n)
    add_pair(sim)
    while sim.now < 30.0:
        sim.step()
    sig = observe(sim, 30.0)["svc"].signals
    assert sig.prefill_offered_tps == pytest.approx(n * tokens / 30.0)
    if saturated:  # one L20 cannot keep up: processed tokens lag what arrived
        assert sig.prefill_tps < 0.8 * sig.prefill_offered_tps
    else:
        assert sig.prefill_tps == pytest.approx(sig.prefill_offered_tps, rel=0.15)


def bunched_and_even(
    every_s: float, n: int, prompt: int, output: int, prefill: int
) -> tuple[ClusterSim, ClusterSim]:
    """Two sims run to 29 s: `n` requests sent together every `every_s` s, and the same
    requests sent evenly, on `prefill` L20 prefill instances and one H20 decode instance."""
    sims = []
    bunches = round(30.0 / every_s)
    for arrivals in (
        [every_s * k + 0.1 for k in range(bunches) for _ in range(n // bunches)],
        np.linspace(0.1, 29.9, n),
    ):
        sim = small_sim(arrivals, [prompt] * n, [output] * n, drain_timeout_s=300)
        for k in range(prefill):
            sim.add_instance(f"p{k}", "svc", Role.PREFILL, "dg0", L20_HOSTS[k % 4], "L20", 1, 0.0)
        sim.add_instance("d0", "svc", Role.DECODE, "dg0", H20_HOSTS[0], "H20", 1, 0.0)
        while sim.now < 29.0:
            sim.step()
        sims.append(sim)
    return sims[0], sims[1]


def test_the_token_step_sees_decode_batches_that_spike_between_snapshots() -> None:
    """200 requests landing together every 5 s make their tokens in one large batch, and a
    snapshot between bunches finds decode idle. The window's tokens say at what step they
    were made: about twice the step of the same requests arriving evenly."""
    from heteroscale_ray.sim.observe import observe

    # prefill to spare: decode sees the bunches as they came
    sims = bunched_and_even(5.0, 1200, 20, 20, prefill=8)
    bunched, even = (observe(sim, 30.0)["svc"].signals for sim in sims)
    assert bunched.decode_step_s is None  # nothing running at the snapshot
    assert even.decode_step_s == pytest.approx(even.decode_token_step_s, rel=0.05)
    assert bunched.decode_token_step_s > 1.7 * even.decode_token_step_s
    assert bunched.decode_token_step_s == pytest.approx(bunched.tbt_p99_s, rel=0.2)


def test_the_prefill_queue_peak_sees_prompts_that_landed_together() -> None:
    """40 prompts of 1,000 tokens landing together every 10 s queue for seconds on four
    prefill instances, and are drained before a snapshot between bunches: the snapshot's
    queue is empty, the window's peak is the work queued at the end of the bunch's tick (a
    second of it already done). Prompts arriving evenly never queue. Over the last period only,
    a queue drained before it is left out (the TTFT p99 still counts it: the past)."""
    from heteroscale_ray.sim.observe import observe

    sims = bunched_and_even(10.0, 120, 1000, 4, prefill=4)
    bunched, even = (observe(sim, 30.0)["svc"].signals for sim in sims)
    assert bunched.prefill_queue_s == 0.0  # the snapshot finds the last bunch drained
    assert bunched.ttft_wait_p99_s > 2.0  # yet prompts waited seconds
    assert bunched.prefill_queue_peak_s > 0.4 * bunched.ttft_wait_p99_s
    assert even.prefill_queue_peak_s < 0.1 * bunched.prefill_queue_peak_s
    assert observe(sims[0], 30.0, 5.0)["svc"].signals.prefill_queue_peak_s == 0.0


def test_window_latencies_count_requests_however_long_they_waited() -> None:
    """A backlog past a quarter hour: the requests whose first token lands in the window
    waited longest, and the window's TTFT p99 must say so (it once looked back 900 s only)."""
    from heteroscale_ray.sim.observe import observe

    n = 4000  # 2,000-token prompts at t < 1 s: more than half an hour of prefill for one L20
    sim = small_sim(np.linspace(0.0, 0.99, n), [2000] * n, [4] * n, drain_timeout_s=3600)
    add_pair(sim)
    p99 = []
    while sim.now < 1500.0:
        sim.step()
        if round(sim.now / sim.dt) % round(15.0 / sim.dt) == 0:  # every 15 s, as a replay
            got = observe(sim, 30.0)["svc"].signals.ttft_p99_s
            first = (sim.t_first >= sim.now - 30.0) & (sim.t_first < sim.now)
            true = np.percentile((sim.t_first - sim.w.arrival)[first], 99)
            p99.append((got, true))
    assert max(true for _, true in p99) > 1200.0
    assert all(got == pytest.approx(true) for got, true in p99)


def test_hold_out_keeps_the_instance_and_put_back_routes_to_it_again() -> None:
    sim = make_sim([0.5, 1.5, 2.5], [100, 100, 100], [4, 4, 4])
    add_pair(sim)
    sim.step()
    sim.hold_out("d0")  # soft scale-in: out of routing, GPUs held
    row = sim.row_of["d0"]
    for _ in range(3):
        sim.step()
    assert sim.inst.state[row] == SOFT and sim.counts("svc")[2] == 0
    assert sim.ts_gpus[sim.tick - 1].sum() == 2  # both GPUs still held
    sim.put_back("d0")
    assert sim.inst.state[row] == READY
    run(sim)
    assert np.all(np.isfinite(sim.t_done))  # the held-back requests finished after put_back
    sim.hold_out("d0")
    sim.drain_instance("d0")  # the window passed: stop it
    sim.step()
    assert sim.inst.state[row] == GONE


def test_soft_scale_in_holds_gpus_for_the_window_then_stops() -> None:
    """A load drop in a replay: with a window the removed instances keep their GPUs about that
    long before stopping; without one they stop at once. Same decisions either way."""
    from heteroscale_ray.sim.replay import ReplayOptions, run_replay
    from heteroscale_ray.traces import Trace

    rng = np.random.default_rng(0)
    high = np.sort(rng.uniform(0, 300, 3000))
    low = np.sort(rng.uniform(300, 900, 300))
    arrivals = np.concatenate([high, low])
    trace = Trace.from_columns(arrivals, [200] * len(arrivals), [100] * len(arrivals))
    spec = SERVICES.services[0]
    fast = spec.policy.model_copy(
        update={"scale_in_cooldown_s": 30, "scale_in_damping": 1.0, "target_per_instance": 100}
    )
    spec = spec.model_copy(update={"policy": fast, "affinity": AffinityLevel.S2})
    services = SERVICES.model_copy(update={"services": [spec]})
    runs = {
        w: run_replay(services, GRAPH, {"svc": trace}, ReplayOptions(soft_window_s=w))
        for w in (0.0, 120.0)
    }
    off, on = runs[0.0].summary, runs[120.0].summary
    assert off["scaling_actions"] == on["scaling_actions"] > 0
    held = on["gpu_hours"] - off["gpu_hours"]
    assert held > 0  # instances kept their GPUs through the window
    assert on["completed"] == off["completed"] == len(trace)


def test_vectorised_prefill_time_is_the_scalar_one_bit_for_bit() -> None:
    """Routing prices prompts in bulk (`prefill_many`); it must equal `prefill_one` exactly,
    dense and MoE alike."""
    from heteroscale_ray.perf.instance_kind import InstanceKind
    from heteroscale_ray.perf.profiles import builtin_profiles

    tokens = np.r_[
        1, 2, 3, 511, 512, 4097, 65_536, np.random.default_rng(1).integers(1, 200_000, 500)
    ]
    for prof in builtin_profiles().values():
        for gpu in ("L20", "H20"):
            kind = InstanceKind.build(prof, DEFAULT_CATALOG[gpu], 8)
            secs, flops = kind.prefill_many(tokens)
            want = [kind.prefill_one(t, 0) for t in tokens.tolist()]
            assert secs.tolist() == [s for s, _ in want], (prof.name, gpu)
            assert flops.tolist() == [f for _, f in want], (prof.name, gpu)


def test_routing_over_several_dgs_matches_the_plain_scan() -> None:
    """One busy tick over three DGs of unequal shape: every request goes where a plain scan of
    all DGs (least prefill wait / TTFT SLO + decode load, first minimum) and the per-DG least
    loaded instances send it, passing over DGs where it would queue longer than the hold, up to
    the first one every DG would hold; it and the later ones stay at the ingress."""
    rng = np.random.default_rng(3)
    n = 400
    arrivals = np.sort(rng.uniform(0.0, 1.0, n))
    inputs = rng.integers(50, 6000, n)
    outputs = rng.integers(2, 400, n)
    sim = make_sim(arrivals.tolist(), inputs.tolist(), outputs.tolist())
    l20 = [h.name for h in GRAPH.hosts if h.gpu_type == "L20"]
    layout = {"dgA": (2, 1), "dgB": (1, 2), "dgC": (1, 1)}
    for g, (n_p, n_d) in layout.items():
        for i in range(n_p):
            sim.add_instance(f"{g}p{i}", "svc", Role.PREFILL, g, l20[i % len(l20)], "L20", 1, 0.0)
        for i in range(n_d):
            sim.add_instance(f"{g}d{i}", "svc", Role.DECODE, g, h20_host(i), "H20", 1, 0.0)
    T = sim.inst
    T.free_at[: T.n] = rng.uniform(0.0, 0.5, T.n)  # prefill queues left from earlier ticks
    T.kv_promised[: T.n] = rng.uniform(0.0, 4000.0, T.n).round()
    free0, prom0 = T.free_at[: T.n].copy(), T.kv_promised[: T.n].copy()
    sim.step()
    # the plain scan, request by request
    slo = SERVICES.services[0].slo.ttft_s
    free = {r: max(float(free0[r]), 0.0) for r in range(T.n) if T.role[r] == 0}
    # decode load: the binding one of KV promised and sequences (none running yet)
    kv, seqs, load = {}, {}, {}
    for r in range(T.n):
        if T.role[r] == 1:
            kv[r] = prom0[r] / (sim.kv_full(0, int(T.kind[r])) * T.kv_cap[r])
            seqs[r] = 0.0
            load[r] = kv[r]
    dgs = sorted(set(T.dg[: T.n].tolist()))
    hold = hold_s(sim, 0)
    routed = n
    for j in range(n):
        a = float(arrivals[j])
        best, g = float("inf"), None
        for cand in dgs:
            p = min((f, r) for r, f in free.items() if T.dg[r] == cand)
            d = min((v, r) for r, v in load.items() if T.dg[r] == cand)
            wait = p[0] - a
            if wait > hold:  # this DG would hold it
                continue
            score = (wait if wait > 0 else 0.0) / slo + d[0]
            if score < best:
                best, g = score, cand
        if g is None:  # every DG would hold it
            routed = j
            break
        f, r = min((f, r) for r, f in free.items() if T.dg[r] == g)
        v, d = min((v, r) for r, v in load.items() if T.dg[r] == g)
        kind = sim.kinds[int(T.kind[r])]
        fin = (f if f > a else a) + kind.prefill_one(int(inputs[j]), 0)[0]
        free[r] = fin
        res = min(float(inputs[j] + outputs[j]), float(T.kv_cap[d]))
        kv[d] += res / (sim.kv_full(0, int(T.kind[d])) * T.kv_cap[d])
        seqs[d] += 1.0 / sim.batch_full(0, int(T.kind[d]))
        load[d] = max(kv[d], seqs[d])
        assert (sim.p_inst[j], sim.d_inst[j], sim.t_first[j]) == (r, d, fin), j
    assert 0 < routed < n  # the tick is busy enough to hold some
    assert sim._backlog.tolist() == list(range(routed, n))
    assert (sim.p_inst[routed:] == -1).all()


def test_prefill_ongoing_counts_recent_requests_without_a_first_token() -> None:
    """The per-tick prefill pool size: requests of the last 600 s whose first token is still
    ahead (routed and queued, or not routed yet)."""
    rng = np.random.default_rng(5)
    n = 600
    arrivals = np.sort(rng.uniform(0.0, 60.0, n))
    sim = make_sim(arrivals.tolist(), rng.integers(2000, 8000, n).tolist(), [20] * n)
    add_pair(sim, ready_at=10.0)  # requests wait unrouted for 10 s, then queue on one prefill
    while not sim.done:
        sim.step()
        t1 = sim.now
        arrived = np.flatnonzero((sim.w.arrival < t1) & (sim.w.arrival >= t1 - 600.0))
        tf = sim.t_first[arrived]
        want = int(np.sum((tf > t1) | np.isnan(tf)))
        assert sim.ts_ongoing[sim.tick - 1, 0, 0] == want, sim.tick


def test_decode_queue_counts_only_requests_whose_kv_has_arrived() -> None:
    """A request whose KV is still being copied is in flight, not waiting for a decode slot: it
    rises with the prefill rate and would read as decode demand (issue 10)."""
    from heteroscale_ray.sim.observe import queues

    sim = make_sim([0.0, 0.0], [2000, 2000], [50, 50])
    add_pair(sim)
    sim.inst.max_seqs[1] = 1  # d0 runs one sequence at a time: the other one waits
    sim.step()
    assert sim.inst.n_active[1] == 1 and len(sim._pending) == 1
    waiter = sim._pending[0]
    sim.t_kv[waiter] = sim.now + 5.0  # its KV still on the wire
    _, running, waiting = queues(sim, 0)
    assert (running, waiting) == (1.0, 0.0)
    sim.t_kv[waiter] = sim.now - 0.5  # arrived, no slot
    _, running, waiting = queues(sim, 0)
    assert (running, waiting) == (1.0, 1.0)


def test_queued_prefill_is_the_work_not_started_as_a_replica_reports_it() -> None:
    """The prompt on the GPU is service, not queue: the prefill queue signal counts only the
    prompts waiting behind it, as a Serve prefill replica's `queued_prompt_tokens` does (a
    steady long-prompt load would otherwise read as a backlog to drain)."""
    from heteroscale_ray.sim.observe import queues

    sim = small_sim([0.0] * 3, [8000] * 3, [4] * 3, drain_timeout_s=300, ingress_hold=False)
    add_pair(sim)  # all three queue on p0, none held at the ingress
    one = float(sim.kinds[int(sim.inst.kind[0])].prefill_one(8000, 0)[0])
    assert one > 2 * sim.dt  # the first prompt is still on the GPU after a tick
    sim.step()
    started = sim.t_first[:3] - one <= sim.now
    assert started.sum() == 1
    assert queues(sim, 0)[0] == pytest.approx(2 * one)
    while sim.t_first[0] > sim.now:  # until the second prompt starts
        sim.step()
    assert len(sim._backlog) == 0 and sim.t_first[2] - one > sim.now
    assert queues(sim, 0)[0] == pytest.approx(one)


def _one_domain():
    """The test service with its DGs allowed anywhere in one S2 domain (placeable here)."""
    spec = SERVICES.services[0].model_copy(update={"affinity": AffinityLevel.S2})
    return SERVICES.model_copy(update={"services": [spec]})


def test_a_quiet_stretch_at_the_trace_end_is_held_like_any_other() -> None:
    """A trace whose span runs past its last arrival (a quiet end): the static fleet holds its
    GPUs to the span's end, and the averages are over time that was simulated."""
    from heteroscale_ray.sim.replay import ReplayOptions, run_replay
    from heteroscale_ray.traces.trace import Trace

    trace = Trace.from_columns([1.0, 2.0, 3.0], [200] * 3, [20] * 3, duration_s=900.0)
    run = run_replay(_one_domain(), GRAPH, {"svc": trace}, ReplayOptions(policy="static"))
    s = run.summary
    assert s["completed"] == 3 and s["sim_time_s"] >= 900.0
    assert s["avg_gpus"] == pytest.approx(s["peak_gpus"])
    assert s["gpu_hours"] == pytest.approx(s["peak_gpus"] * 900.0 / 3600, rel=0.01)


def test_a_backlog_left_at_the_trace_end_shows_as_drain_time_and_gpus() -> None:
    """GPU-hours cover the trace's span; requests still decoding after it keep their GPUs,
    and the replay says how long (`drain_s`) and how many GPU-hours that took."""
    from heteroscale_ray.sim.replay import ReplayOptions, run_replay
    from heteroscale_ray.traces.trace import Trace

    trace = Trace.from_columns([0.0, 1.0], [200, 200], [20, 4000])  # ~minutes of decode
    run = run_replay(_one_domain(), GRAPH, {"svc": trace}, ReplayOptions(policy="static"))
    s = run.summary
    assert s["completed"] == 2 and s["drain_s"] > 30 * s["duration_s"]
    assert s["gpu_hours"] == pytest.approx(s["peak_gpus"] * s["duration_s"] / 3600, rel=0.01)
    assert s["gpu_hours_after"] == pytest.approx(s["peak_gpus"] * s["drain_s"] / 3600, rel=0.05)
