"""Per-window signals from the simulator, shaped as the autoscalers' inputs (`Observation`).

Same windows and definitions for every policy, so comparisons are fair: throughput is what was
processed (prefill counts cache-miss tokens only), latency percentiles are over requests whose
first token (TTFT) or last token (TBT) fell in the window, hardware signals are means over the
serving instances of the pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from heteroscale_ray.control.types import Observation, PoolObservation
from heteroscale_ray.perf.capacity import prefill_work_s
from heteroscale_ray.policy.arrival_bursts import heaviest
from heteroscale_ray.policy.types import Signals
from heteroscale_ray.sim import kernels, observe_kernels
from heteroscale_ray.sim.cluster import DECODE, PREFILL, ClusterSim
from heteroscale_ray.sim.instances import READY, distinct


def _peak(values: np.ndarray) -> float | None:
    """The largest value, NaN (no instance to measure on) left out; None if all are."""
    seen = values[~np.isnan(values)]
    return float(np.max(seen)) if len(seen) else None


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _p(values: np.ndarray, q: float) -> float | None:
    if not len(values):
        return None
    return float(
        observe_kernels.percentile(values, q) if kernels.ENABLED else np.percentile(values, q)
    )


def request_tbt(sim: ClusterSim, ids: np.ndarray) -> np.ndarray:
    """Mean inter-token gap per request (0 for single-token outputs)."""
    out = sim.w.output_tokens[ids]
    gaps = np.maximum(out - 1, 1)
    return np.where(out > 1, (sim.t_done[ids] - sim.t_first[ids]) / gaps, 0.0)


def queues(sim: ClusterSim, s: int) -> tuple[float | None, float, float]:
    """Now, for service ``s``: queued prefill work per ready prefill instance (s), and
    sequences running and waiting in decode.

    Queued prefill work is the work not started yet, as a replica reports it (the prompt
    on the GPU is service, not queue: a queue drained by more instances is only the waiting
    part). It counts the requests waiting at the ingress too (held, or with no DG to go to),
    priced uncached on the most common ready prefill kind: a queue that moved to the ingress
    is still demand.
    """
    T, now = sim.inst, sim.now
    n = T.n
    mine = (T.svc[:n] == s) & (T.state[:n] == READY)
    pre = np.flatnonzero(mine & (T.role[:n] == PREFILL))
    dec = np.flatnonzero(mine & (T.role[:n] == DECODE))
    queue_s = None
    if len(pre):
        # routed and not started: the tick that just ended recorded it (sim/prefill_queue.py)
        recorded = float(sim.ts_prefill_queue[sim.tick - 1, s]) if sim.tick else 0.0
        queue_s = recorded if np.isfinite(recorded) else 0.0
        held = sim._backlog
        if len(held) and len(sim.services) > 1:
            held = held[sim.w.service[held] == s]
        if len(held):
            kind = sim.kinds[int(np.bincount(T.kind[pre]).argmax())]
            queue_s += prefill_work_s(kind, sim.w.input_tokens[held], 0).sum() / len(pre)
    running = float(T.n_active[dec].sum())
    # Waiting for a decode slot: the KV has arrived but the batch or the KV space is full.
    # Requests whose KV is still being copied are in flight, not queued (they rise with the
    # prefill rate, and would read as decode demand).
    P = sim._pending
    arrived = P[sim.t_kv[P] <= now] if len(P) else P
    waiting = 0.0
    if len(arrived):
        is_dec = np.zeros(n, dtype=bool)
        is_dec[dec] = True
        waiting = float(np.count_nonzero(is_dec[sim.d_inst[arrived]]))
    return queue_s, running, waiting


@dataclass(frozen=True)
class DecodeSteps:
    """The step time of service ``s``'s busy decode instances now, and what it was taken at
    (the means a replica reports over its steps)."""

    mean_s: float
    slowest_s: float
    batch: float  # sequences per busy instance
    context: float  # KV tokens per running sequence


def decode_steps(sim: ClusterSim, s: int) -> DecodeSteps | None:
    """None while no ready decode instance of ``s`` runs a sequence."""
    T = sim.inst
    n = T.n
    dec = np.flatnonzero((T.svc[:n] == s) & (T.state[:n] == READY) & (T.role[:n] == DECODE))
    A = sim._active
    if not len(A) or not len(dec):
        return None
    d = sim.d_inst[A]
    B = np.bincount(d, minlength=n).astype(float)[dec]
    C = np.bincount(d, weights=sim.w.input_tokens[A] + sim.gen[A], minlength=n)[dec]
    busy = B > 0
    if not busy.any():
        return None
    rows, b_busy, c_busy = dec[busy], B[busy], C[busy]
    kind_of = T.kind[rows]
    taus = np.empty(len(rows))
    for k in distinct(kind_of, len(sim.kinds)):
        kind, m = sim.kinds[k], kind_of == k
        if kind.w_experts == 0.0:  # dense: elementwise, as one instance at a time
            taus[m] = kind.step_seconds(b_busy[m], c_busy[m])
        else:
            taus[m] = [
                float(kind.step_seconds(b, c)) for b, c in zip(b_busy[m], c_busy[m], strict=True)
            ]
    return DecodeSteps(
        mean_s=float(np.mean(taus)),
        slowest_s=float(np.max(taus)),
        batch=float(np.mean(b_busy)),
        context=float(np.sum(c_busy) / np.sum(b_busy)),
    )


def observe(
    sim: ClusterSim, window_s: float, period_s: float | None = None
) -> dict[str, Observation]:
    """One `Observation` per service over the last `window_s` of simulated time. The prefill
    queue's peak is over the last `period_s` (since the last observation; default the
    window): a queue that drained before it is the past, which the window's TTFT p99 still
    counts. (A replica's peak is over its 10-s window, two of the real control plane's 5-s
    periods.)"""
    now = sim.now
    t1 = sim.tick
    t0 = max(0, t1 - int(round(window_s / sim.dt)))
    ticks = max(1, int(round((period_s or window_s) / sim.dt)))
    last_period = slice(max(t0, t1 - ticks), t1)
    span = (t1 - t0) * sim.dt
    w = sim.w
    lo = sim.open_from(now - window_s)
    hi = int(w.arrival.searchsorted(now))
    one = len(sim.services) == 1  # then every recent request is the service's: no filter
    recent = None if one else np.arange(lo, hi)
    out: dict[str, Observation] = {}
    for s, spec in enumerate(sim.services):
        sl = slice(t0, t1)
        if recent is None:
            # requests [lo, hi) by slices; arrival is sorted, so the last `span` is a suffix
            if kernels.ENABLED:
                first_in, finished = observe_kernels.in_window(
                    sim.t_first, sim.t_done, lo, hi, now - window_s, now
                )
            else:
                tf, td = sim.t_first[lo:hi], sim.t_done[lo:hi]
                first_in = np.flatnonzero((tf >= now - window_s) & (tf < now)) + lo
                finished = np.flatnonzero((td >= now - window_s) & (td < now)) + lo
            arrived: slice | np.ndarray = slice(
                max(lo, int(w.arrival.searchsorted(now - span))), hi
            )
            n_arrived = arrived.stop - arrived.start
        else:
            mine = recent[w.service[recent] == s]
            tf, td = sim.t_first[mine], sim.t_done[mine]
            first_in = mine[(tf >= now - window_s) & (tf < now)]
            finished = mine[(td >= now - window_s) & (td < now)]
            arrived = mine[w.arrival[mine] >= now - span]
            n_arrived = len(arrived)
        done_in = finished[w.output_tokens[finished] > 1]
        ttft = sim.t_first[first_in] - w.arrival[first_in]
        prompt = float(np.sum(w.input_tokens[first_in]))
        miss_share = 1.0 - float(np.sum(sim.cached[first_in])) / prompt if prompt > 0 else 1.0
        offered = float(np.sum(w.input_tokens[arrived])) * miss_share / span if span > 0 else 0.0
        bursts = heaviest(
            w.arrival[arrived],
            w.input_tokens[arrived] * miss_share,
            observe_kernels.heaviest_scan if kernels.ENABLED else None,
        )
        tbt = request_tbt(sim, done_in)
        service = sim.p_work[first_in]
        wait = np.maximum(ttft - service, 0.0)
        # p99 of the three per-first-token series (numpy's in one call, row by row)
        if not len(first_in):
            ttft_p99 = wait_p99 = service_p99 = None
        elif kernels.ENABLED:
            ttft_p99, wait_p99, service_p99 = (_p(x, 99.0) for x in (ttft, wait, service))
        else:
            ttft_p99, wait_p99, service_p99 = np.percentile(
                np.stack([ttft, wait, service]), 99, axis=1
            ).tolist()
        queue_s, running, waiting = queues(sim, s)
        steps = decode_steps(sim, s)
        pools = {}
        for role in (PREFILL, DECODE):
            serving = float(np.sum(sim.ts_ready[sl, s, role] + sim.ts_draining[sl, s, role]))
            ticks = max(t1 - t0, 1)
            pools[role] = dict(
                util=_ratio(float(np.sum(sim.ts_busy[sl, s, role])), serving),
                sm=_ratio(float(np.sum(sim.ts_sm[sl, s, role])), serving),
                ongoing=float(np.sum(sim.ts_ongoing[sl, s, role])) / ticks if t1 > t0 else None,
                tps=float(np.sum(sim.ts_tokens[sl, s, role])) / span if span > 0 else None,
                kv=_ratio(float(np.sum(sim.ts_kv[sl, s, role])), serving),
            )
        pr, ps, dr, ds = sim.counts(spec.name)
        have_data = t1 > t0
        signals = Signals(
            observed_at=now if have_data else None,
            decode_tps=pools[DECODE]["tps"],
            prefill_tps=pools[PREFILL]["tps"],
            prefill_offered_tps=offered if have_data else None,
            prompt_bursts=bursts if have_data else None,
            ttft_p99_s=ttft_p99,
            tbt_p99_s=_p(tbt, 99),
            prefill_busy=pools[PREFILL]["util"],
            decode_busy=pools[DECODE]["util"],
            kv_use=pools[DECODE]["kv"],
            request_rate=n_arrived / span if have_data and span > 0 else None,
            prompt_mean=float(np.mean(w.input_tokens[arrived])) if n_arrived else None,
            prompt_sd=float(np.std(w.input_tokens[arrived])) if n_arrived else None,
            output_mean=float(np.mean(w.output_tokens[finished])) if len(finished) else None,
            prefill_queue_s=queue_s if have_data else None,
            decode_running=running if have_data else None,
            decode_queue=waiting if have_data else None,
            ttft_wait_p99_s=wait_p99,
            ttft_service_p99_s=service_p99,
            prefill_queue_peak_s=_peak(sim.ts_prefill_queue[last_period, s]) if have_data else None,
            decode_step_s=None if steps is None else steps.mean_s,
            decode_token_step_s=_ratio(
                float(np.sum(sim.ts_token_steps[sl, s])),
                float(np.sum(sim.ts_tokens[sl, s, DECODE])),
            ),
            decode_step_max_s=None if steps is None else steps.slowest_s,
            decode_step_batch=None if steps is None else steps.batch,
            decode_step_context=None if steps is None else steps.context,
        )
        out[spec.name] = Observation(
            service=spec.name,
            signals=signals,
            prefill=PoolObservation(
                pr,
                ps,
                pools[PREFILL]["util"],
                pools[PREFILL]["sm"],
                pools[PREFILL]["ongoing"],
                pools[PREFILL]["tps"],
            ),
            decode=PoolObservation(
                dr,
                ds,
                pools[DECODE]["util"],
                pools[DECODE]["sm"],
                pools[DECODE]["ongoing"],
                pools[DECODE]["tps"],
            ),
        )
    return out
