"""Trace replay: one simulator, one autoscaler, the shared control tick, and a summary.

The loop is the same for every policy: every `control_period_s` the autoscaler decides on the
simulator's observations, `ControlLoop.step` (the tick the Ray pre-scheduler runs) turns the
decisions into a plan, and the simulator's actuator applies it; in between the simulator
advances tick by tick.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from heteroscale_ray.config import GpuCatalog, ServicesConfig, ServiceSpec, TopologySpec
from heteroscale_ray.control import (
    Autoscaler,
    ControlLoop,
    HeteroScaleAutoscaler,
    HpaUtilAutoscaler,
    LoopState,
    ScheduledAutoscaler,
    ServeDefaultAutoscaler,
    StaticAutoscaler,
    TickInput,
)
from heteroscale_ray.perf.constants import DEFAULT_CONSTANTS, PerfConstants
from heteroscale_ray.perf.profiles import ModelProfile
from heteroscale_ray.policy.dg_shape import placement_ratio
from heteroscale_ray.sim.actuator import SimActuator
from heteroscale_ray.sim.cluster import ClusterSim, SimConfig, Workload
from heteroscale_ray.sim.future_needs import (
    lookahead_counts,
    read_until,
    service_needs,
    static_counts_on,
)
from heteroscale_ray.sim.observe import observe
from heteroscale_ray.sim.options import ReplayOptions
from heteroscale_ray.sim.oversized import KvRoom, admit
from heteroscale_ray.sim.sizing import Needs, round_counts
from heteroscale_ray.sim.summary import summarize
from heteroscale_ray.topology import ClusterGraph, ScaleRequest, plan_cycle

POLICIES = ("heteroscale", "hpa-util", "serve-default", "static", "oracle")
ORACLE_NOTE = (
    "oracle: per-interval (15 s) sizing from the future load at the SLO operating point of the "
    "simulator's own performance model (decode: peak per-tick need from the TBT-step, KV-memory "
    "and sequence bounds; prefill: work at 80% busy, on cache misses measured by calibration "
    "replays), looking ahead by the start-up delay plus two control periods, never above the "
    "static fleet, at its last interval's size after the trace until the queue drains, DGs "
    "placed at its own P/D ratio; not a proven lower bound"
)


FILL_QUANTILE = 0.9  # decode_fill_s: the share of the first outputs a warm start waits out


@dataclass
class ReplayResult:
    summary: dict[str, Any]
    sim: ClusterSim
    cycles: list[dict[str, Any]] = field(default_factory=list)
    rooms: dict[str, KvRoom] = field(default_factory=dict)  # the KV the ingress admitted by


def decode_fill_s(spec: ServiceSpec, trace: Any, ahead_s: float) -> float:
    """How long the requests of a warm start's look-ahead keep filling decode: most of their
    outputs (the 90th percentile) at the TBT SLO's pace.

    A replay starts with no sequence running, where the fleet it stands for holds those of
    the requests before t=0. Sized on the look-ahead alone, decode started at 49 instances on
    ~4k-token outputs that fill 100 within five minutes: every adaptive policy ran behind the
    fill, and heteroscale's steps ran at 3.5x the TBT SLO (98.7% attainment, 1.22x static)."""
    arrival = np.asarray(trace.arrival_s)
    outputs = np.asarray(trace.output_tokens)[: int(np.searchsorted(arrival, ahead_s))]
    if not len(outputs):
        return 0.0
    return float(np.quantile(outputs, FILL_QUANTILE)) * spec.slo.tbt_s


def make_autoscaler(
    policy: str,
    services: list[ServiceSpec],
    sim: ClusterSim,
    traces: Mapping[str, Any],
    opts: ReplayOptions,
    cached: Mapping[str, np.ndarray] | None = None,
    static_hits: Mapping[str, np.ndarray] | None = None,
) -> Autoscaler:
    """Build the named autoscaler; oracle and static read the future load from the traces.

    `cached` (service -> prefix-cache hits per request, trace order) discounts their prefill.
    `static_hits`: the hits the static fleet was sized on (prefix-hashed traces); the oracle
    never holds more than that fleet in any interval.
    """
    hits = dict(cached or {})

    def static_fleet(spec: ServiceSpec, hits_of: Mapping[str, np.ndarray]) -> tuple[int, int]:
        return static_counts_on(sim, spec, traces[spec.name], opts, hits_of.get(spec.name))

    if policy == "heteroscale":
        return HeteroScaleAutoscaler(services, sim.catalog)
    if policy == "hpa-util":
        return HpaUtilAutoscaler(services, target=opts.hpa_target)
    if policy == "serve-default":
        return ServeDefaultAutoscaler(services, target_ongoing_requests=opts.serve_target_ongoing)
    if policy == "static":
        counts = {spec.name: static_fleet(spec, hits) for spec in services}
        return StaticAutoscaler(counts, {k: placement_ratio(*c) for k, c in counts.items()})
    if policy == "oracle":
        # See ORACLE_NOTE: the fewest instances per interval by sizing.py's capacity model,
        # which a replay then checks; a schedule, not a proven optimum.
        lookahead = opts.startup_s + 2 * opts.control_period_s
        table: dict[str, tuple[Needs, ServiceSpec]] = {
            spec.name: (
                service_needs(
                    sim, spec, traces[spec.name], opts.control_period_s, opts, hits.get(spec.name)
                ),
                spec,
            )
            for spec in services
        }
        ratios = {
            name: placement_ratio(
                *round_counts(spec, float(n.prefill.max()), float(n.decode.max()))
            )
            for name, (n, spec) in table.items()
        }

        # Static's fleet serves every interval by the same capacity model (without hashes its
        # peak is the oracle's own), so the oracle never needs more. With prefix caching it
        # could ask more: it is sized on the hits its own smaller pool measured, and a pool
        # too small for the shared documents measures few (2.2x static's GPU-hours on 40
        # shared 30k-token documents), where the fleet those few hits size holds them.
        ceiling = (
            {spec.name: static_fleet(spec, static_hits) for spec in services} if static_hits else {}
        )

        def schedule(name: str, now: float) -> tuple[int, int]:
            needs, spec = table[name]
            # Past the trace no request arrives, but an overloaded fleet still holds a queue:
            # size for the last interval until it drains (the minimums had left 54,940
            # requests unfinished on Mooncake x100).
            end = (len(needs.prefill) - 1) * needs.period_s
            p, d = lookahead_counts(spec, needs, min(now, end), lookahead)
            top = ceiling.get(name)
            return (p, d) if top is None else (min(p, top[0]), min(d, top[1]))

        return ScheduledAutoscaler(schedule, name="oracle", pd_ratios=ratios)
    raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")


def _cache_calibration(
    services: ServicesConfig,
    graph: ClusterGraph,
    traces: Mapping[str, Any],
    opts: ReplayOptions,
    const: PerfConstants,
    profiles: Mapping[str, ModelProfile] | None,
    specs: list[ServiceSpec],
    cached: Mapping[str, np.ndarray] | None,
) -> dict[str, np.ndarray]:
    """Prefix-cache hits per request (trace order) measured by one replay.

    Without `cached`: a static replay sized without any cache discount. With it: a replay of
    `opts.policy` sized with that discount.
    """
    cal = run_replay(
        services,
        graph,
        traces,
        opts if cached is not None else replace(opts, policy="static"),
        const=const,
        profiles=profiles,
        calibrate_cache=False,
        cache_hits=cached,
    )
    w = cal.sim.w
    out = {}
    for i, spec in enumerate(specs):
        order = np.argsort(np.asarray(traces[spec.name].arrival_s), kind="stable")
        hits = np.zeros(len(order))
        hits[order] = cal.sim.cached[w.service == i]
        out[spec.name] = hits
    return out


STATIC_ROUNDS = 8  # `_static_hits`' calibration replays at most (Mooncake x15 takes 6)


@dataclass(frozen=True)
class StaticCalibration:
    """The static fleet's prefix-cache hits (service -> per request, trace order)."""

    sized_on: dict[str, np.ndarray]  # the hits that size the static fleet
    measured: dict[str, np.ndarray]  # the hits that fleet measures in its replay


def _static_hits(
    services: ServicesConfig,
    graph: ClusterGraph,
    traces: Mapping[str, Any],
    opts: ReplayOptions,
    const: PerfConstants,
    profiles: Mapping[str, ModelProfile] | None,
    sim: ClusterSim,
) -> StaticCalibration:
    """The smallest static fleet met that covers its own peak at the hits it measures itself.

    A pooled prefix cache hits more in a bigger prefill pool, so the hits one fleet measures
    size another. Sized once on the hits of a fleet sized without them (35% on Mooncake
    x15), static held 89 prefill instances that measured 27% and needed 102 by the same
    capacity model. Each round replays the fleet sized on the last round's hits, until one
    sizes itself (98 there, after 89, 102, 97 and 99) or a fleet comes back (what a round measures
    depends on its fleet alone). If none covers, the fleet sized without hits.
    """
    specs = list(sim.services)

    def size(hits: Mapping[str, np.ndarray]) -> dict[str, tuple[int, int]]:
        return {s.name: static_counts_on(sim, s, traces[s.name], opts, hits[s.name]) for s in specs}

    def gpus(fleet: Mapping[str, tuple[int, int]]) -> int:
        return sum(
            fleet[s.name][0] * s.prefill.gpus_per_instance
            + fleet[s.name][1] * s.decode.gpus_per_instance
            for s in specs
        )

    def key(fleet: Mapping[str, tuple[int, int]]) -> tuple[tuple[int, int], ...]:
        return tuple(fleet[s.name] for s in specs)

    sized_on = {s.name: np.zeros(len(traces[s.name])) for s in specs}  # no discount
    fleet = size(sized_on)
    as_static = replace(opts, policy="static")
    fallback: StaticCalibration | None = None
    best: tuple[int, StaticCalibration] | None = None
    replayed = set()
    for _ in range(STATIC_ROUNDS):
        measured = _cache_calibration(
            services, graph, traces, as_static, const, profiles, specs, sized_on
        )
        got = StaticCalibration(sized_on, measured)
        fallback = fallback or got
        replayed.add(key(fleet))
        need = size(measured)
        covered = all(fleet[n][0] >= need[n][0] and fleet[n][1] >= need[n][1] for n in fleet)
        if covered and (best is None or gpus(fleet) < best[0]):
            best = (gpus(fleet), got)
        if key(need) in replayed:  # sizes itself, or a fleet already replayed comes back
            break
        sized_on, fleet = measured, need
    assert fallback is not None  # STATIC_ROUNDS >= 1
    return best[1] if best is not None else fallback


def run_replay(
    services: ServicesConfig,
    topology: TopologySpec | ClusterGraph,
    traces: Mapping[str, Any],
    opts: ReplayOptions = ReplayOptions(),
    *,
    const: PerfConstants = DEFAULT_CONSTANTS,
    profiles: Mapping[str, ModelProfile] | None = None,
    progress: Callable[[float, float], None] | None = None,
    autoscaler: Autoscaler | None = None,
    initial: Mapping[str, tuple[int, int]] | None = None,
    calibrate_cache: bool = True,
    cache_hits: Mapping[str, np.ndarray] | None = None,
) -> ReplayResult:
    """Replay `traces` (service name -> Trace) under `opts.policy`; deterministic for fixed input.

    `autoscaler` replaces the named policy (e.g. a fixed P/D pair for a stress test) and
    `initial` the counts provisioned before t=0. Static and oracle on a trace with prefix
    hashes first run calibration replays to learn each request's cache hits (static's until
    its fleet sizes itself, `_static_hits`; the oracle one more at its own sizes), then size
    prefill on cache misses; `calibrate_cache=False` skips that, `cache_hits` gives the hits.
    """
    catalog: GpuCatalog = services.catalog
    graph = (
        topology
        if isinstance(topology, ClusterGraph)
        else ClusterGraph.from_topology(topology, catalog)
    )
    specs = [s for s in services.services if s.name in traces]
    if not specs:
        raise ValueError(
            f"no service matches the traces {sorted(traces)}: name a service of the services file"
        )
    # The requests no instance can hold get the real ingress's 400: nothing sizes or routes
    # them, and they count as missed SLOs (sim/oversized.py).
    admitted = admit(specs, traces, catalog, const, profiles)
    traces = {**traces, **admitted.traces}
    if cache_hits is not None:
        cache_hits = {
            n: h[admitted.keep[n]] if n in admitted.keep else h for n, h in cache_hits.items()
        }
    by_name = {s.name: s for s in specs}
    workload = Workload.from_traces(traces, [s.name for s in specs])
    duration = max(float(max(t.duration_s for t in traces.values())), opts.tick_s)
    sim = ClusterSim(
        specs,
        graph,
        workload,
        catalog=catalog,
        profiles=profiles,
        const=const,
        config=SimConfig(tick_s=opts.tick_s, startup_s=opts.startup_s),
        span_s=duration,
    )
    actuator = SimActuator(sim, opts.startup_s)
    cached = static_hits = cache_hits
    if (
        autoscaler is None
        and calibrate_cache
        and opts.policy in ("static", "oracle")
        and workload.hash_ids is not None
    ):
        # static: on the hits of the fleet they size (`_static_hits`); the oracle then
        # re-measures at its own (smaller) sizes, since a smaller prefill pool also means a
        # smaller pooled cache
        static = _static_hits(services, graph, traces, opts, const, profiles, sim)
        cached = static_hits = static.sized_on
        if opts.policy == "oracle":
            cached = _cache_calibration(
                services, graph, traces, opts, const, profiles, specs, static.measured
            )
    if autoscaler is None:
        autoscaler = make_autoscaler(opts.policy, specs, sim, traces, opts, cached, static_hits)
    # Static and oracle place their DGs at their own P/D ratio (see StaticAutoscaler).
    own = dict(getattr(autoscaler, "pd_ratios", None) or {})

    # Provision before t=0: every policy starts where the oracle would (static: its fixed
    # counts), placed by the same placement cycle and ready at once, so no policy pays for a
    # cold start the others skip. Decode is sized for the look-ahead's requests once their
    # sequences have filled it (`decode_fill_s`).
    ahead = opts.startup_s + 2 * opts.control_period_s
    filled = {spec.name: ahead + decode_fill_s(spec, traces[spec.name], ahead) for spec in specs}
    start_hits = cached
    if start_hits is None and initial is None and calibrate_cache and workload.hash_ids is not None:
        # Sized on cache misses, as the oracle's start: the hits of the requests the start is
        # sized on, from a static replay of just those (uncached, heteroscale started Mooncake
        # x15 with 106 prefill instances, the oracle with 85).
        head = {
            n: t.slice(0, read_until(filled.get(n, ahead), opts.control_period_s))
            for n, t in traces.items()
        }
        start_hits = _cache_calibration(services, graph, head, opts, const, profiles, specs, None)
    first: list[ScaleRequest] = []
    for spec in specs:
        if initial is not None:
            p, d = initial[spec.name]
        elif isinstance(autoscaler, StaticAutoscaler):
            p, d = autoscaler.counts[spec.name]
        else:
            hits = None if start_hits is None else start_hits.get(spec.name)
            n = service_needs(
                sim,
                spec,
                traces[spec.name],
                opts.control_period_s,
                opts,
                hits,
                until_s=filled[spec.name],
            )
            p, _ = lookahead_counts(spec, n, 0.0, ahead)
            _, d = lookahead_counts(spec, n, 0.0, filled[spec.name])
            p, d = round_counts(spec, p, d)  # the DGs the filled decode needs
        first.append(ScaleRequest(spec.name, p, d))
        if isinstance(autoscaler, HeteroScaleAutoscaler):
            # The first DGs take the shape of the counts they hold, whatever the configured
            # ratio: at 2:3, a warm start of 83 prefill / 11 decode placed only 48 prefill.
            own.setdefault(spec.name, placement_ratio(p, d))
    placed = {n: s.placed_at(own[n]) if n in own else s for n, s in by_name.items()}
    plan0 = plan_cycle(graph, placed, (), first, catalog, topology_aware=opts.topology_aware)
    actuator.apply(plan0, warm=True)

    result = ReplayResult(summary={}, sim=sim, rooms=admitted.rooms)
    unplaced = sum(u.count for u in plan0.unplaced)
    scaling_actions = 0
    # Soft scale-in is HeteroScale's (the control plane's --soft-window); baselines stop at once.
    soft = opts.soft_window_s > 0 and isinstance(autoscaler, HeteroScaleAutoscaler)
    loop = ControlLoop(
        catalog=catalog,
        soft_window_s=opts.soft_window_s if soft else None,
        topology_aware=opts.topology_aware,
    )
    state = LoopState(plan0.apply(()))
    next_control = opts.control_period_s
    wall0 = time.perf_counter()
    while not sim.done:
        if sim.now + 1e-9 >= next_control and sim.now < duration + opts.control_period_s:
            obs = observe(sim, opts.window_s, opts.control_period_s)
            desired = autoscaler.desire(sim.now, obs)
            tick = TickInput(sim.now, desired, obs, by_name, graph, running=sim.running_by_dg())
            step = loop.step(state, tick)
            for p in step.stopped:
                for inst in p.instances:
                    actuator.stop(inst.instance_id)
            for p in step.restored:
                for inst in p.instances:
                    sim.put_back(inst.instance_id)
            for p in step.held_out:
                for inst in p.instances:
                    sim.hold_out(inst.instance_id)
            if not step.plan.is_empty:
                moving = frozenset(
                    i.instance_id for p in step.state.pending if p.moving for i in p.instances
                )
                actuator.apply(step.plan, soft=loop.soft, moving=moving)
                scaling_actions += len(step.requests)
            unplaced += sum(u.count for u in step.plan.unplaced)
            state = step.state
            result.cycles.append(
                {
                    "t": sim.now,
                    **{
                        f"{n}.{k}": v
                        for n, d in desired.items()
                        for k, v in (
                            ("prefill", d.prefill),
                            ("decode", d.decode),
                            ("reason", d.reason.value),
                            ("pd_ratio", None if d.pd_ratio is None else str(d.pd_ratio)),
                            ("message", d.message),
                        )
                    },
                }
            )
            next_control += opts.control_period_s
        sim.step()
        if progress is not None and sim.tick % 60 == 0:
            progress(sim.now, duration)
    wall = time.perf_counter() - wall0
    result.summary = summarize(
        sim, specs, duration, opts, wall, scaling_actions, unplaced, actuator, admitted.rejected
    )
    return result
