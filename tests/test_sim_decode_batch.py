"""The batch a decode step is priced at is the concurrency over the tick, not the tick's count.

Short outputs live a fraction of a one-second tick: priced at every sequence the tick held, a
code-completion load broke the TBT SLO in the simulator that a real engine (admitting at every
step) meets. Long outputs that run the whole tick are priced at their count, as before.
"""

from __future__ import annotations

import numpy as np
from sim_builders import GRAPH, SERVICES

from heteroscale_ray.config import DEFAULT_CATALOG, Role
from heteroscale_ray.sim.cluster import ClusterSim, SimConfig, Workload

RATE = 150.0  # requests/s, spread evenly over each tick
SECONDS = 20


def _sim(arrivals: np.ndarray, output_tokens: int) -> ClusterSim:
    n = len(arrivals)
    w = Workload(
        arrival=arrivals,
        input_tokens=np.full(n, 400, dtype=np.int64),
        output_tokens=np.full(n, output_tokens, dtype=np.int64),
        service=np.zeros(n, dtype=np.int64),
        hash_ids=None,
    )
    sim = ClusterSim(SERVICES.services, GRAPH, w, catalog=DEFAULT_CATALOG, config=SimConfig())
    l20 = [h.name for h in GRAPH.hosts if h.gpu_type == "L20"]
    h20 = [h.name for h in GRAPH.hosts if h.gpu_type == "H20"]
    for i in range(4):  # prefill never the bottleneck
        sim.add_instance(f"p{i}", "svc", Role.PREFILL, "dg", l20[i], "L20", 1, 0.0)
    sim.add_instance("d0", "svc", Role.DECODE, "dg", h20[0], "H20", 1, 0.0)
    return sim


def _decode_kind(sim: ClusterSim):  # noqa: ANN202
    T = sim.inst
    row = int(np.flatnonzero(T.role[: T.n] == 1)[0])
    return sim.kinds[T.kind[row]]


def test_short_outputs_are_priced_at_their_overlap_not_at_the_tick_count() -> None:
    n = int(RATE * SECONDS)
    sim = _sim((np.arange(n) + 0.5) / RATE, output_tokens=5)
    while not sim.done:
        sim.step()
    per_token = (sim.t_done - sim.t_dstart) / 4
    kind = _decode_kind(sim)
    step = float(np.median(per_token[n // 2 :]))  # past the first ticks
    at_tick_count = float(kind.step_seconds(np.array([RATE]), np.array([RATE * 402.0]))[0])
    overlap = max(RATE * 4 * step, 1.0)  # Little's law: arrivals x lifetime
    at_overlap = float(kind.step_seconds(np.array([overlap]), np.array([overlap * 402.0]))[0])
    assert step < at_tick_count
    assert abs(step - at_overlap) <= 0.05 * at_overlap


def test_sequences_running_the_whole_tick_are_priced_at_their_count() -> None:
    sim = _sim(np.zeros(30), output_tokens=2000)
    for _ in range(5):  # prefill, KV transfer, admission: all 30 run from here on
        sim.step()
    running = np.flatnonzero(np.isfinite(sim.t_dstart) & ~np.isfinite(sim.t_done))
    assert len(running) == 30
    before = sim.gen.copy()
    ctx = float((400 + before[running]).sum())
    sim.step()
    made = sim.gen[running] - before[running]
    step = float(_decode_kind(sim).step_seconds(np.array([30.0]), np.array([ctx]))[0])
    np.testing.assert_allclose(made, sim.dt / step, rtol=1e-12)
