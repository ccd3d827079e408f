"""Instances the known future load needs, priced on a simulator's own instance kinds: what
the oracle schedules, the static fleet holds and every replay's warm start is sized on."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from heteroscale_ray.config import ServiceSpec
from heteroscale_ray.sim.cluster import ClusterSim
from heteroscale_ray.sim.sizing import Needs, needs_per_interval, round_counts
from heteroscale_ray.sim.summary import role_kinds

if TYPE_CHECKING:
    from heteroscale_ray.sim.options import ReplayOptions


def service_needs(
    sim: ClusterSim,
    spec: ServiceSpec,
    trace: Any,
    period_s: float,
    opts: ReplayOptions,
    cached: np.ndarray | None = None,
    until_s: float | None = None,
) -> Needs:
    """Instances per interval from the future load (sizing.py), on the simulator's own kinds.

    `cached` (per request of `trace`, in trace order): prefix-cache hits to discount.
    `until_s`: only the intervals up to this time are read, so the arrivals two intervals
    past it are left out; they cannot change those intervals (a tick's decode need depends
    only on requests whose KV arrived by then), which stay exactly as on the whole trace.
    """
    pk, dk = role_kinds(sim, spec)
    arrival = np.asarray(trace.arrival_s)
    inp, out = np.asarray(trace.input_tokens), np.asarray(trace.output_tokens)
    duration = max(float(trace.duration_s), period_s)
    if until_s is not None:
        cut = read_until(until_s, period_s)
        if cut <= duration:  # as Trace.slice(0, cut): arrivals before the cut
            k = int(np.searchsorted(arrival, cut))
            arrival, inp, out, duration = arrival[:k], inp[:k], out[:k], cut
            cached = None if cached is None else cached[:k]
    return needs_per_interval(
        spec,
        pk,
        dk,
        arrival,
        inp,
        out,
        duration,
        period_s,
        cached_tokens=cached,
        tick_s=sim.dt,
        tbt_margin=opts.sizing_tbt_margin,
        prefill_util=opts.sizing_prefill_util,
    )


def read_until(until_s: float, period_s: float) -> float:
    """Arrivals up to this time decide `service_needs`' intervals up to `until_s`."""
    return (math.ceil(until_s / period_s) + 2) * period_s


def lookahead_counts(
    spec: ServiceSpec, needs: Needs, now: float, lookahead_s: float
) -> tuple[int, int]:
    """Fewest instances covering every interval from `now` to `now + lookahead_s`.

    The look-ahead spans the start-up delay, so capacity is ready before the load arrives.
    """
    a = int(now // needs.period_s)
    b = int(math.ceil((now + lookahead_s) / needs.period_s)) + 1
    p, d = needs.prefill[a:b], needs.decode[a:b]
    return round_counts(spec, float(p.max()) if len(p) else 0.0, float(d.max()) if len(d) else 0.0)


def static_counts_on(
    sim: ClusterSim, spec: ServiceSpec, trace: Any, opts: ReplayOptions, hits: np.ndarray | None
) -> tuple[int, int]:
    """The static fleet: the peak of `opts.static_bin_s` bins, prefill on misses past `hits`."""
    n = service_needs(sim, spec, trace, opts.static_bin_s, opts, hits)
    return round_counts(spec, float(n.prefill.max()), float(n.decode.max()))
