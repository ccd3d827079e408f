"""The simulated ingress: requests that would queue past the hold wait there, not pinned to an
instance; new instances take them; those that can no longer make the TTFT SLO go after the
fresh ones; and the work
held there still reads as queued prefill."""

from __future__ import annotations

import numpy as np
import pytest
from sim_builders import H20_HOSTS, L20_HOSTS, small_sim

from heteroscale_ray.config import Role
from heteroscale_ray.sim.cluster import ClusterSim
from heteroscale_ray.sim.observe import queues
from heteroscale_ray.sim.routing import hold_s

BURST = 300  # 2,000-token prompts at t in [0, 1): minutes of prefill for one L20


def burst_sim(*, extra: list[float] = (), hold: bool = True) -> ClusterSim:
    """One prefill and one decode instance, a burst at t=0, and `extra` single arrivals."""
    arrivals = np.concatenate([np.linspace(0.0, 0.99, BURST), np.array(extra, dtype=float)])
    n = len(arrivals)
    sim = small_sim(arrivals, [2000] * n, [8] * n, drain_timeout_s=3600, ingress_hold=hold)
    sim.add_instance("p0", "svc", Role.PREFILL, "dg0", L20_HOSTS[0], "L20", 1, 0.0)
    sim.add_instance("d0", "svc", Role.DECODE, "dg0", H20_HOSTS[0], "H20", 1, 0.0)
    return sim


def prefill_one_s(sim: ClusterSim) -> float:
    return float(sim.kinds[int(sim.inst.kind[0])].prefill_one(2000, 0)[0])


def test_a_burst_waits_at_the_ingress_and_every_request_finishes() -> None:
    sim = burst_sim()
    hold, one = hold_s(sim, 0), prefill_one_s(sim)
    assert BURST * one > 20 * hold  # far more work than the hold lets one instance queue
    held_ticks = 0
    while not sim.done:
        sim.step()
        # the instance never queues more than the hold plus the request that crossed it
        assert sim.inst.free_at[0] - sim.now <= hold + one + 1e-9
        held_ticks += bool(len(sim._backlog))
    assert held_ticks > 10
    assert np.isfinite(sim.t_done).all()


def test_an_instance_that_starts_later_takes_held_work() -> None:
    """Routed on arrival, the whole burst would be pinned to p0; held, p1 shares it."""
    for hold in (True, False):
        sim = burst_sim(hold=hold)
        sim.add_instance("p1", "svc", Role.PREFILL, "dg0", L20_HOSTS[1], "L20", 1, 10.0)
        while not sim.done:
            sim.step()
        on_p1 = int(np.count_nonzero(sim.p_inst == 2))
        assert np.isfinite(sim.t_done).all()
        if hold:
            assert on_p1 > BURST // 3
        else:
            assert on_p1 == 0


def test_late_requests_go_after_fresh_ones() -> None:
    """A request arriving at t=30 into a held burst: the burst's requests have all waited past
    the TTFT SLO, so it is routed first and waits no more than the hold."""
    sim = burst_sim(extra=[30.0])
    while not sim.done:
        sim.step()
    fresh = BURST
    wait = sim.t_first[fresh] - 30.0
    assert wait <= hold_s(sim, 0) + sim.dt + prefill_one_s(sim)
    assert np.count_nonzero(sim.t_first[:BURST] > sim.t_first[fresh]) > BURST // 2
    assert np.isfinite(sim.t_done).all()


def test_a_request_past_half_its_slo_goes_after_fresh_ones() -> None:
    """The late test counts the time still ahead of a request: at t=1.6 the burst's requests
    have waited 0.6-1.6 s of a 1-s SLO, so with its queue and prefill still to come none can
    make it, and the fresh request goes first (waited-past-the-SLO alone would put the ~120
    that waited 0.6-1.0 s ahead of it)."""
    arrivals = np.concatenate([np.linspace(0.0, 0.99, BURST), [1.6]])
    n = len(arrivals)
    sim = small_sim(arrivals, [2000] * n, [8] * n, drain_timeout_s=3600, tick_s=0.1)
    sim.add_instance("p0", "svc", Role.PREFILL, "dg0", L20_HOSTS[0], "L20", 1, 0.0)
    sim.add_instance("d0", "svc", Role.DECODE, "dg0", H20_HOSTS[0], "H20", 1, 0.0)
    while not sim.done:
        sim.step()
    wait = sim.t_first[BURST] - 1.6
    assert wait <= hold_s(sim, 0) + 2 * sim.dt + prefill_one_s(sim)
    assert np.isfinite(sim.t_done).all()


def test_held_work_reads_as_queued_prefill() -> None:
    """Moving the queue from the instance to the ingress does not hide it: the prefill queue
    signal is the same work either way."""
    signal = {}
    for hold in (True, False):
        sim = burst_sim(hold=hold)
        for _ in range(5):
            sim.step()
        assert bool(len(sim._backlog)) is hold
        signal[hold] = queues(sim, 0)[0]
    assert signal[True] == pytest.approx(signal[False], rel=1e-9)
    assert signal[True] > 20 * hold_s(burst_sim(), 0)


def test_every_request_without_a_first_token_counts_as_ongoing_prefill() -> None:
    """Serve-default reads the prefill pool's ongoing requests: held ones count however long
    they have waited (the longest-waiting are served last, so they are the ones a window of
    recent arrivals would drop)."""
    n = 600  # 8,000-token prompts: over ten minutes of prefill for one L20
    sim = small_sim(np.linspace(0.0, 0.99, n), [8000] * n, [4] * n, drain_timeout_s=3600)
    sim.add_instance("p0", "svc", Role.PREFILL, "dg0", L20_HOSTS[0], "L20", 1, 0.0)
    sim.add_instance("d0", "svc", Role.DECODE, "dg0", H20_HOSTS[0], "H20", 1, 0.0)
    oldest = 0.0
    while not sim.done:
        sim.step()
        t1 = sim.now
        no_first = (sim.w.arrival < t1) & ~(sim.t_first <= t1)
        assert sim.ts_ongoing[sim.tick - 1, 0, 0] == np.count_nonzero(no_first)
        if no_first.any():
            oldest = max(oldest, t1 - float(sim.w.arrival[no_first].min()))
    assert oldest > 600.0


def test_a_dg_that_would_hold_the_request_is_passed_over() -> None:
    """dgA's decode is idle but its prefill is busy for 100 s; dgB's prefill is idle behind a
    loaded decode. By score alone the request would pick dgA and wait at the ingress while
    dgB's prefill idles; it goes to dgB."""
    sim = small_sim([0.5], [1000], [8])
    for g, i in (("dgA", 0), ("dgB", 1)):
        sim.add_instance(f"{g}p", "svc", Role.PREFILL, g, L20_HOSTS[i], "L20", 1, 0.0)
        sim.add_instance(f"{g}d", "svc", Role.DECODE, g, H20_HOSTS[i], "H20", 1, 0.0)
    T = sim.inst
    a_pre, b_pre, b_dec = sim.row_of["dgAp"], sim.row_of["dgBp"], sim.row_of["dgBd"]
    T.free_at[a_pre] = 100.0
    T.kv_promised[b_dec] = 1e3 * T.kv_cap[b_dec]  # a score far above dgA's 99.5
    sim.step()
    assert not len(sim._backlog)
    assert sim.p_inst[0] == b_pre
