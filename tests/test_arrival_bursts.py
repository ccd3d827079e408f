"""Bursts shorter than a control period (policy/arrival_bursts.py): measured where prompts
arrive, in the simulator and the real ingress alike, and sized for by prefill."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heteroscale_ray.actors.observe import build_observations
from heteroscale_ray.clock import VirtualClock
from heteroscale_ray.policy import PolicyState, Reason, RoleCounts, Signals, decide
from heteroscale_ray.policy.arrival_bursts import BURST_SPANS_S, burst_need, heaviest, usable
from heteroscale_ray.serving.metrics import ArrivalMeter
from heteroscale_ray.serving.metrics_export import render_arrivals
from heteroscale_ray.serving.metrics_hub import MetricsHub
from heteroscale_ray.serving.replica_stats import IngressLoad, ingress_problem
from tests.test_demand_policy import NOW, make_service, signals
from tests.test_observe import report


def test_the_heaviest_burst_of_each_span() -> None:
    t = np.array([0.0, 0.5, 0.9, 3.0, 10.0])
    tokens = np.array([100, 200, 300, 400, 500])
    assert BURST_SPANS_S == (1.0, 2.0, 4.0, 8.0)
    # 1 s and 2 s: the first three; 4 s and 8 s: the first four (10.0 is 7 s after 3.0)
    assert heaviest(t, tokens) == (600.0, 600.0, 1000.0, 1000.0)
    assert heaviest(np.array([]), np.array([])) == (0.0, 0.0, 0.0, 0.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 60, allow_nan=False), st.integers(1, 40_000)),
        min_size=1,
        max_size=40,
    )
)
def test_heaviest_is_the_most_any_window_holds(rows: list[tuple[float, int]]) -> None:
    rows.sort()
    t = np.array([r[0] for r in rows])
    tokens = np.array([r[1] for r in rows], dtype=float)
    got = heaviest(t, tokens)
    for span, most in zip(BURST_SPANS_S, got, strict=True):
        brute = max(tokens[(t >= a) & (t < a + span)].sum() for a in t)
        assert most == pytest.approx(brute)
    assert list(got) == sorted(got) and got[-1] <= tokens.sum() + 1e-9


@pytest.mark.parametrize("rate", [1.0, 10.0, 100.0, 1000.0])
def test_poisson_arrivals_ask_less_than_their_mean_need(rate: float) -> None:
    """On Poisson arrivals at any rate the burst need sits under the level need (the mean
    over one instance at the configured busy share), so it binds on bursts alone. At a few
    requests a second one long prompt may outweigh the mean, but one instance, which a role
    with traffic holds anyway, starts it in time: no need is asked."""
    spec = make_service()
    per = 10_000.0
    rng = np.random.default_rng(0)
    for _ in range(20):
        t = np.sort(rng.uniform(0, 30.0, rng.poisson(rate * 30.0)))
        tokens = np.maximum(20, rng.lognormal(np.log(1000), 0.8, len(t)))
        mean_need = tokens.sum() / 30.0 / (per * spec.policy.demand.prefill_utilization)
        found = burst_need(spec, Signals(prompt_bursts=heaviest(t, tokens)), per)
        assert found is None or found[0] < mean_need  # None: one instance starts it in time
        assert found is None or rate > 1.0


def test_a_fan_out_needs_what_starts_it_within_the_ttft_slo() -> None:
    spec = make_service()  # TTFT SLO 5 s
    fan_out = (900_000.0, 900_000.0, 900_000.0, 905_000.0)  # 150 x 6k tokens within 1 s
    need, why = burst_need(spec, Signals(prompt_bursts=fan_out), 10_000.0)  # type: ignore[misc]
    assert need == pytest.approx(900_000 / 6 / 10_000)  # A(1 s) / (1 + 5 s)
    assert "900,000 prompt tokens arrived within 1 s" in why
    # the last prompt runs on one instance: the SLO less a mean prompt's compute there (10k
    # cache-miss tokens a request, at 10k tokens/s: 1 s)
    long = Signals(prompt_bursts=fan_out, prefill_offered_tps=50_000.0, request_rate=5.0)
    slow = burst_need(spec, long, 10_000.0)
    assert slow is not None and slow[0] == pytest.approx(900_000 / 5 / 10_000)
    assert "less a mean prompt's 1.0 s" in slow[1]


@pytest.mark.parametrize(
    "bursts",
    [
        None,
        (1.0, 2.0),
        (1.0, float("nan"), 2.0, 3.0),
        (1.0, -2.0, 2.0, 3.0),
        (True,) * 4,
        [1.0] * 4,
    ],
)
def test_an_unusable_burst_curve_is_no_need(bursts: object) -> None:
    assert not usable(bursts)
    assert burst_need(make_service(), Signals(prompt_bursts=bursts), 10_000.0) is None  # type: ignore[arg-type]
    if bursts is not None:
        assert ingress_problem(IngressLoad(1000.0, prompt_bursts=bursts)) is not None  # type: ignore[arg-type]


def test_prefill_scales_out_for_a_fan_out_and_the_window_holds_it() -> None:
    spec = make_service()
    calm = signals(prefill_offered_tps=6_000.0, prompt_bursts=(2_000.0, 3_000.0, 5_000.0, 9_000.0))
    state = PolicyState(started_at=NOW - 3600.0)
    d, state = decide(spec, calm, RoleCounts(prefill_ready=2, decode_ready=4), state, NOW)
    assert d.prefill <= 2  # the calm need: no burst binds
    fan = replace(calm, observed_at=NOW + 15, prompt_bursts=(900_000.0,) * 4)
    d, state = decide(spec, fan, RoleCounts(prefill_ready=2, decode_ready=4), state, NOW + 15)
    assert d.reason is Reason.ARRIVAL_BURST and d.prefill >= 10
    assert "900,000 prompt tokens arrived within 1 s" in d.message
    after = replace(calm, observed_at=NOW + 150)
    held, _ = decide(
        spec, after, RoleCounts(prefill_ready=d.prefill, decode_ready=4), state, NOW + 150
    )
    assert held.prefill == d.prefill and "recent peak" in held.message


def test_the_ingress_measures_bursts_and_the_hub_sums_them() -> None:
    clock = VirtualClock()
    meter = ArrivalMeter(window_s=10.0, clock=clock)
    clock.advance(10.0)
    for _ in range(3):
        meter.add("chat", 1000)
    clock.advance(3.0)
    meter.add("chat", 500)
    load = meter.loads()["chat"]
    assert load.prompt_bursts == (3000.0, 3000.0, 3500.0, 3500.0)
    assert ingress_problem(load) is None
    text = render_arrivals({"chat": load})
    assert 'heteroscale_arrival_prompt_burst_tokens{service="chat",span_s="4"} 3500.0' in text
    hub = MetricsHub(clock)
    hub.report_arrivals("ingress-a", {"chat": load})
    hub.report_arrivals("ingress-b", {"chat": load})
    assert hub.ingress_loads()["chat"].prompt_bursts == (6000.0, 6000.0, 7000.0, 7000.0)
    hub.report_arrivals("ingress-c", {"chat": 100.0})  # an older ingress: bursts unknown
    assert hub.ingress_loads()["chat"].prompt_bursts is None
    # what reaches the policy: the tokens that will miss the prefix cache
    stats = [report("prefill", prefill_tps=300.0, prefill_hit_tps=100.0), report("decode")]
    counts = {"chat": RoleCounts(prefill_ready=1, decode_ready=1)}
    sig = build_observations(["chat"], stats, counts, {"chat": load})["chat"].signals
    assert sig.prompt_bursts == pytest.approx((2250.0, 2250.0, 2625.0, 2625.0))


def test_the_simulator_measures_the_heaviest_bursts_of_its_window() -> None:
    from heteroscale_ray.sim.observe import observe
    from tests.test_sim_engine import add_pair, make_sim

    calm = list(np.linspace(0.5, 29.5, 10))  # 1,000 tokens every 3.2 s
    fan = list(np.linspace(10.0, 10.5, 20))  # 20 x 2,000 tokens within half a second
    order = np.argsort(calm + fan, kind="stable")
    arrivals = np.array(calm + fan)[order]
    tokens = np.array([1000] * 10 + [2000] * 20)[order]
    sim = make_sim(list(arrivals), list(tokens), [4] * 30)
    add_pair(sim)
    while sim.now < 30.0:
        sim.step()
    sig = observe(sim, 30.0)["svc"].signals
    # the fan-out and the calm prompts within 1, 2, 4 and 8 s of it
    assert sig.prompt_bursts == pytest.approx((41_000, 41_000, 42_000, 43_000))


def test_bursts_that_came_twice_within_the_window_are_held_while_they_keep_coming() -> None:
    """A fan-out seen by two snapshots in a row is one burst; alone, the window lets it go
    after its floor. Once a second has come within the window, prefill stays sized for the
    second heaviest until the first leaves the window, and the window lets that go after."""
    spec = make_service()  # peak_window_s 900
    state = PolicyState(started_at=NOW - 3600.0)
    calm = signals(prefill_offered_tps=6_000.0, prompt_bursts=(2_000.0, 3_000.0, 5_000.0, 9_000.0))
    counts = RoleCounts(prefill_ready=2, decode_ready=4)
    fans = {300: 900_000.0, 315: 900_000.0, 900: 700_000.0, 915: 600_000.0}
    by: dict[int, tuple[int, str]] = {}
    for k in range(0, 2400, 15):
        sig = replace(calm, observed_at=NOW + k)
        if k in fans:
            sig = replace(sig, prompt_bursts=(fans[k],) * 4)
        d, state = decide(spec, sig, counts, state, NOW + k)
        counts = RoleCounts(prefill_ready=d.prefill, decode_ready=d.decode)
        by[k] = (d.prefill, d.message)
        if k == 315:
            assert len(state.arrival_bursts) == 1  # one fan-out, seen twice
            assert PolicyState.from_json(state.to_json()).arrival_bursts == state.arrival_bursts
    assert by[300][0] >= 12 and by[735][0] == 1  # one burst: let go after the floor
    assert by[900][0] >= 9
    held = [by[k] for k in range(930, 1215, 15)]
    assert all(p >= 10 for p, _ in held), held
    assert all("2 prompt bursts within the scale-in window" in m for _, m in held)
    assert by[2385][0] == 1
