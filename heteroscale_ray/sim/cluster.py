"""The cluster simulator: a fixed-tick fluid model of P/D-disaggregated serving.

Why this shape: the speed goal (an hour of a 1,000-GPU cluster in well under a minute on one
core) rules out a per-token event loop. Per tick (1 s by default):

1. lifecycle: starting instances whose model load finished become ready; draining instances
   with no work left are removed;
2. routing: each arrival goes to the ready prefill instance of its service with the least work
   left (join-the-least-work, a heap), which fixes its Deployment Group; a decode instance of
   that DG is picked by the least KV promised over capacity. Prefill is a FIFO server per
   instance (exact Lindley recursion in continuous time), its time from the roofline model on
   cache-miss tokens only. Prefix cache: one pooled KV store per DG over Mooncake `hash_ids`
   (Mooncake's design: prefill instances' spare memory pooled and read over RDMA), holding as
   many 512-token blocks as the DG's ready prefill instances have KV memory beyond
   `prefix_cache.PREFILL_WORKING_TOKENS` each; LRU eviction; a hit costs no prefill FLOPs
   and its transfer from the pool is not modelled. The DG choice is cache-aware (as
   Mooncake's conductor): the prefill seconds a DG's cached prefix would save count against
   its queue;
3. KV transfer: prompt KV bytes over the bandwidth of the lowest switch level the two hosts
   share; the request then waits for decode admission;
4. decode: continuous batching per instance, admission FIFO while the batch fits the KV
   capacity and the sequence cap (a request reserves input + output tokens). Every active
   sequence advances by (time available in the tick) / (step time of its batch) tokens.

Latency per request: TTFT = first token at prefill end (queueing included); TBT = mean gap from
the first to the last token, so KV transfer and decode queueing show up in TBT. Hardware
signals per tick and instance: busy share (the GPU-utilisation analogue: a decode instance with
any sequence running counts as busy) and SM activity (achieved FLOP/s over peak).

Pieces in sibling modules: `workload` (the requests), `instances` (instance table, states,
roles), `layout` (what the per-tick code reads of the held instances), `pools` (what routing
sees of them), `routing` (step 2), `request_columns` (per-request prices, by block),
`prefix_cache` (the per-DG pool) and `cached_routing` (step 2 with it), `decode_phase` (step
4), `tick_record` (the per-tick series) and `kernels` / `cache_kernels` (compiled twins of the
per-request loops, when numba is installed: a two-day, 24M-request replay then runs in under
two minutes, Mooncake's 17 minutes with its prefix cache in about a second); per-kind timing is
`perf.instance_kind`, per-instance capacity `perf.capacity`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from heteroscale_ray.config import GpuCatalog, Role, ServiceSpec
from heteroscale_ray.control.counts import RunningReplicas
from heteroscale_ray.perf.capacity import decode_capacity
from heteroscale_ray.perf.constants import DEFAULT_CONSTANTS, PerfConstants
from heteroscale_ray.perf.instance_kind import InstanceKind
from heteroscale_ray.perf.network import SharedLevel
from heteroscale_ray.perf.profiles import ModelProfile, get_profile
from heteroscale_ray.serving.admission import on_time
from heteroscale_ray.sim.decode_phase import admit_fifo, advance_decode
from heteroscale_ray.sim.instances import (
    DECODE,
    DRAINING,
    GONE,
    PREFILL,
    READY,
    SOFT,
    STARTING,
    InstanceTable,
)
from heteroscale_ray.sim.layout import SERIES, Layout
from heteroscale_ray.sim.pools import PoolShape
from heteroscale_ray.sim.prefix_cache import PrefixCache
from heteroscale_ray.sim.request_columns import RequestColumns
from heteroscale_ray.sim.routing import route
from heteroscale_ray.sim.tick_record import record_tick
from heteroscale_ray.sim.workload import Workload
from heteroscale_ray.topology import ClusterGraph

__all__ = [
    "DECODE",
    "DRAINING",
    "GONE",
    "PREFILL",
    "READY",
    "SOFT",
    "STARTING",
    "ClusterSim",
    "SimConfig",
    "Workload",
]


@dataclass(frozen=True)
class SimConfig:
    """Knobs of the simulator itself (the performance constants live in PerfConstants)."""

    tick_s: float = 1.0
    startup_s: float = 90.0  # model load of a new instance (60-120 s is typical for 8-70B)
    # after the last arrival, keep running this long at most, plus the longest request's
    # output at its TBT SLO's pace (a 100k-token answer takes 5,000 s at 50 ms a token)
    drain_timeout_s: float = 900.0
    # hold arrivals at the ingress while every DG's prefill queue is longer than two ticks
    # (`routing.hold_s`); off: every request is queued at an instance on arrival
    ingress_hold: bool = True


class ClusterSim:
    """Simulated cluster state plus the request bookkeeping; `step()` advances one tick."""

    def __init__(
        self,
        services: Sequence[ServiceSpec],
        graph: ClusterGraph,
        workload: Workload,
        *,
        catalog: GpuCatalog,
        profiles: Mapping[str, ModelProfile] | None = None,
        const: PerfConstants = DEFAULT_CONSTANTS,
        config: SimConfig = SimConfig(),
        span_s: float = 0.0,
    ) -> None:
        """`span_s`: the span the traffic covers (a trace's `duration_s`): the cluster runs at
        least that long, so a quiet stretch after the last arrival is held like any other."""
        self.services = list(services)
        self.svc_index = {s.name: i for i, s in enumerate(self.services)}
        self.graph = graph
        self.w = workload
        self.catalog = catalog
        self.profiles = profiles
        self.const = const
        self.cfg = config
        self.now = 0.0
        self.dt = config.tick_s
        self.tick = 0
        # hosts -> integer switch ids, for the shared-level computation
        s0 = {n: i for i, n in enumerate(sorted({h.s0 for h in graph.hosts}))}
        s1 = {n: i for i, n in enumerate(sorted({h.s1 for h in graph.hosts}))}
        s2 = {n: i for i, n in enumerate(sorted({h.s2 for h in graph.hosts}))}
        self.host_sw = np.array(
            [[s0[h.s0], s1[h.s1], s2[h.s2]] for h in graph.hosts], dtype=np.int64
        )
        self._level_table: np.ndarray | None = None  # [host, host] -> SharedLevel
        self.kinds: list[InstanceKind] = []
        self._kind_of: dict[tuple[str, str, int], int] = {}
        self.inst = InstanceTable()
        self.inst_ids: list[str] = []
        self.row_of: dict[str, int] = {}
        self.dg_names: list[str] = []
        self._dg_index: dict[str, int] = {}
        self.prefix_cache = PrefixCache()
        self.columns = RequestColumns()  # per-request prices, by block (routing)
        self._layout: Layout | None = None  # held instances, for the per-tick series
        self._pool_shapes: tuple[tuple, dict[int, PoolShape]] | None = None  # for routing
        self._calm = b""  # instance states with none starting or draining (`_lifecycle`)
        self._decode_full_cache: dict[tuple[int, int], tuple[float, float]] = {}
        # per kind, for the per-tick series: SM-activity denominator and cost per GPU-hour
        self._kind_peak_den = np.zeros(0)
        self._kind_cost = np.zeros(0)
        n = len(workload)
        last = float(workload.arrival[-1]) + self.dt if n else self.dt
        self.horizon = max(last, float(span_s))
        self.drain_s = config.drain_timeout_s + self._longest_output_s()
        self.n_ticks_max = int(np.ceil((self.horizon + self.drain_s) / self.dt)) + 2
        # per-request results
        self.p_inst = np.full(n, -1, dtype=np.int64)
        self.d_inst = np.full(n, -1, dtype=np.int64)
        self.cached = np.zeros(n, dtype=np.int64)
        self.t_first = np.full(n, np.nan)
        self.p_work = np.full(n, np.nan)  # its prefill's own seconds, as routing priced it
        self.t_kv = np.full(n, np.nan)
        self.t_dstart = np.full(n, np.nan)
        self.t_done = np.full(n, np.nan)
        self.kv_level = np.full(n, -1, dtype=np.int64)
        self.kv_time = np.full(n, np.nan)
        self.gen = np.zeros(n)
        self.reserve = np.zeros(n)
        self._next_arrival = 0
        self._backlog = np.empty(0, dtype=np.int64)
        self._ttft_slo = np.array([s.slo.ttft_s for s in self.services])
        self._pending = np.empty(0, dtype=np.int64)
        self._active = np.empty(0, dtype=np.int64)
        # routed requests that may still wait for their first token (see `first_pending`)
        self._first_wait = np.empty(0, dtype=np.int64)
        self._first_new: list[np.ndarray] = []
        # every request before the floor had finished by the time beside it (`open_from`)
        self._floors: deque[tuple[float, int]] = deque([(0.0, 0)])
        self.removed: list[str] = []  # instance ids removed since the actuator last looked
        # per-tick series [tick, service, role]
        s = len(self.services)
        shape = (self.n_ticks_max, s, 2)
        # the series `record_tick` sums (SERIES but ts_tokens): views of one block, one write
        self.series = np.zeros((len(SERIES) - 1, *shape))
        (
            self.ts_ready,
            self.ts_starting,
            self.ts_draining,
            self.ts_gpus,  # GPUs held (any state)
            self.ts_cost,  # relative cost per hour of GPUs held
            self.ts_busy,  # sum over ready/draining instances of busy share
            self.ts_sm,  # sum over ready/draining instances of SM activity
            self.ts_gpu_busy,  # sum over all held GPUs of busy share
            self.ts_gpu_sm,  # sum over all held GPUs of SM activity
            self.ts_kv,  # decode: sum of KV use share
        ) = self.series
        self.ts_tokens = np.zeros(shape)  # prefill: cache-miss tokens done; decode: tokens made
        self.ts_ongoing = np.zeros(shape)  # requests in the pool (queued + running)
        # decode: the tick's tokens times its busy instances' mean step (over ts_tokens: the
        # step tokens were made at, whatever the batch did between snapshots)
        self.ts_token_steps = np.zeros((self.n_ticks_max, s))
        # prefill: work routed and not started per ready instance at the tick's end (its
        # window peak shows requests landing together, which the snapshot between them misses)
        self.ts_prefill_queue = np.zeros((self.n_ticks_max, s))
        self.ts_arrivals = np.zeros((self.n_ticks_max, s))
        self.ts_routed_kvlevel = np.zeros((self.n_ticks_max, len(SharedLevel)))

    def _longest_output_s(self) -> float:
        """The longest output at its service's TBT SLO: the drain must outlast it, or a
        request the fleet serves within its SLO is cut off and lost."""
        if not len(self.w):
            return 0.0
        tbt = np.array([s.slo.tbt_s for s in self.services])[self.w.service]
        return float(np.max(self.w.output_tokens * tbt))

    # -- instances ---------------------------------------------------------------------

    def kind_for(self, spec: ServiceSpec, gpu: str, n_gpus: int) -> int:
        key = (spec.model, gpu, n_gpus)
        if key not in self._kind_of:
            prof = get_profile(spec.model, dict(self.profiles) if self.profiles else None)
            self._kind_of[key] = len(self.kinds)
            self.kinds.append(InstanceKind.build(prof, self.catalog[gpu], n_gpus, self.const))
            peak = np.array([k.peak_flops for k in self.kinds], dtype=float)
            self._kind_peak_den = np.where(peak > 0, peak, 1.0)
            self._kind_cost = np.array([k.cost_per_gpu_hour for k in self.kinds], dtype=float)
        return self._kind_of[key]

    def dg_index(self, dg_id: str) -> int:
        if dg_id not in self._dg_index:
            self._dg_index[dg_id] = len(self.dg_names)
            self.dg_names.append(dg_id)
        return self._dg_index[dg_id]

    def add_instance(
        self,
        instance_id: str,
        service: str,
        role: Role,
        dg_id: str,
        host: str,
        gpu_type: str,
        n_gpus: int,
        ready_at: float,
    ) -> int:
        """Start an instance; it takes traffic from `ready_at` on (model load before)."""
        spec = self.services[self.svc_index[service]]
        k = self.kind_for(spec, gpu_type, n_gpus)
        kind = self.kinds[k]
        row = self.inst.add(
            svc=self.svc_index[service],
            role=PREFILL if role is Role.PREFILL else DECODE,
            kind=k,
            host=self.graph.host_index[host],
            dg=self.dg_index(dg_id),
            gpus=n_gpus,
            state=READY if ready_at <= self.now else STARTING,
            t_ready=ready_at,
            t_created=self.now,
            t_removed=np.inf,
            free_at=ready_at,
            kv_cap=kind.kv_capacity_tokens,
            max_seqs=kind.max_seqs,
        )
        self.inst.exec_prev[row] = 0.0
        self.inst_ids.append(instance_id)
        self.row_of[instance_id] = row
        return row

    def drain_instance(self, instance_id: str) -> None:
        """Stop routing to the instance; it is removed once its in-flight work is done."""
        row = self.row_of[instance_id]
        state = self.inst.state[row]
        if state == STARTING or (state == SOFT and self.inst.t_ready[row] > self.now):
            self._remove(row)
        elif state in (READY, SOFT):
            self.inst.state[row] = DRAINING

    def hold_out(self, instance_id: str) -> None:
        """Soft scale-in: no new requests, in-flight work finishes, the instance stays up."""
        row = self.row_of[instance_id]
        if self.inst.state[row] in (READY, STARTING):
            self.inst.state[row] = SOFT
        self.inst.leaving[row] = False

    def keep_serving(self, instance_id: str) -> None:
        """A moved instance: it takes requests until `hold_out`, but no target counts it (as
        Serve keeps a replica pending removal running, and counts only up to the target). One
        still loading has nothing to serve and is held out at once."""
        row = self.row_of[instance_id]
        if self.inst.state[row] == READY:
            self.inst.leaving[row] = True
        else:
            self.hold_out(instance_id)

    def put_back(self, instance_id: str) -> None:
        """Undo `hold_out` or `keep_serving`: the instance takes requests again (once loaded)."""
        row = self.row_of[instance_id]
        self.inst.leaving[row] = False
        if self.inst.state[row] == SOFT:
            loaded = self.inst.t_ready[row] <= self.now
            self.inst.state[row] = READY if loaded else STARTING

    def _remove(self, row: int) -> None:
        self.inst.state[row] = GONE
        self.inst.version += 1
        self.inst.t_removed[row] = self.now
        self.removed.append(self.inst_ids[row])
        T, dg = self.inst, self.inst.dg[row]
        if T.role[row] == PREFILL and not np.any(
            (T.dg[: T.n] == dg) & (T.role[: T.n] == PREFILL) & (T.state[: T.n] != GONE)
        ):
            self.prefix_cache.forget(int(dg))  # the pool dies with the DG's last prefill

    def counts(self, service: str) -> tuple[int, int, int, int]:
        """(prefill ready, prefill starting, decode ready, decode starting) of a service."""
        T = self.inst
        m = (T.svc[: T.n] == self.svc_index[service]) & ~T.leaving[: T.n]
        st, ro = T.state[: T.n][m], T.role[: T.n][m]
        return (
            int(np.sum((st == READY) & (ro == PREFILL))),
            int(np.sum((st == STARTING) & (ro == PREFILL))),
            int(np.sum((st == READY) & (ro == DECODE))),
            int(np.sum((st == STARTING) & (ro == DECODE))),
        )

    def running_by_dg(self) -> dict[str, RunningReplicas]:
        """DG id -> instances up (loaded, in routing or held out of it), as Serve reports the
        replicas it runs per DG: the target plus pending removals."""
        T = self.inst
        st = T.state[: T.n]
        soft_up = (st == SOFT) & (T.t_ready[: T.n] <= self.now)
        ready = np.flatnonzero((st == READY) | soft_up)
        counts = np.zeros((len(self.dg_names), 2), dtype=np.int64)
        np.add.at(counts, (T.dg[ready], T.role[ready]), 1)
        return {
            name: RunningReplicas(int(counts[k, PREFILL]), int(counts[k, DECODE]))
            for k, name in enumerate(self.dg_names)
            if counts[k].any()
        }

    # -- one tick ----------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """All arrivals routed and finished, or the drain timeout passed."""
        if self.tick >= self.n_ticks_max - 1:
            return True
        return (
            self._next_arrival >= len(self.w)
            and not len(self._backlog)
            and not len(self._pending)
            and not len(self._active)
            and self.now >= self.horizon
        )

    def step(self) -> None:
        t0, t1 = self.now, self.now + self.dt
        self._lifecycle(t0)
        hi = int(np.searchsorted(self.w.arrival, t1, side="left"))
        new = np.arange(self._next_arrival, hi)
        self._next_arrival = hi
        if len(new):
            if len(self.services) == 1:
                self.ts_arrivals[self.tick, 0] += len(new)
            else:
                self.ts_arrivals[self.tick] += np.bincount(
                    self.w.service[new], minlength=len(self.services)
                )
        todo = self._ingress_order(new, t0) if len(self._backlog) else new
        self._backlog = route(self, todo, t0) if len(todo) else todo
        admit_fifo(self, t0, t1)
        advance_decode(self, t0, t1)
        record_tick(self, t1)
        self.now = t1
        self.tick += 1

    def _ingress_order(self, new: np.ndarray, t0: float) -> np.ndarray:
        """The requests waiting at the ingress, then the new ones, in the order they are
        offered to routing, the real ingress's (`serving/admission.py`): those still able to
        make their TTFT SLO first (arrival order), then the others. Under overload, serving
        the late ones first would make every later one late too; they are still served, as
        soon as there is room."""
        held = self._backlog
        slo = self._ttft_slo[self.w.service[held]] if len(self.services) > 1 else self._ttft_slo[0]
        late = ~on_time(t0 - self.w.arrival[held], slo)
        if not late.any():
            return np.concatenate([held, new])
        return np.concatenate([held[~late], new, held[late]])

    def first_pending(self, t1: float) -> np.ndarray:
        """Routed requests whose first token comes after `t1` (any order).

        Called with a non-decreasing `t1` (each tick, and by the observation between ticks): a
        request whose first token is at or before one call's `t1` is dropped for good.
        """
        cand = self._first_wait
        if self._first_new:
            cand = np.concatenate([cand, *self._first_new])
            self._first_new = []
        cand = cand[self.t_first[cand] > t1]
        self._first_wait = cand
        return cand

    def open_from(self, since: float) -> int:
        """The first request, by arrival, that may have its first token or finish at or after
        `since`: every one before it had finished earlier. Called once a control period with
        a non-decreasing `since`, so a window's signals see a request however long it waited
        or decoded, and scan only the requests open around the window."""
        floor = self._floors[-1][1]
        done = self.t_done[floor : self._next_arrival] < self.now  # NaN (open) compares False
        floor += len(done) if done.all() else int(done.argmin())
        self._floors.append((self.now, floor))
        while len(self._floors) > 1 and self._floors[1][0] <= since:
            self._floors.popleft()
        return self._floors[0][1]

    def _lifecycle(self, t0: float) -> None:
        T = self.inst
        n = T.n
        st = T.state[:n]
        if st.tobytes() == self._calm:  # no instance starting or draining: nothing to do
            return
        st[(st == STARTING) & (T.t_ready[:n] <= t0)] = READY
        draining = np.flatnonzero(st == DRAINING)
        for row in draining.tolist():
            if T.role[row] == PREFILL:
                idle = T.free_at[row] <= t0
            else:
                idle = T.n_active[row] == 0 and T.n_pending[row] == 0
            if idle:
                self._remove(row)
        if not np.any((st == STARTING) | (st == DRAINING)):
            self._calm = st.tobytes()

    def kv_full(self, s: int, kind: int) -> float:
        """Share of a decode instance's KV capacity a batch at the TBT SLO holds (cached)."""
        return self._decode_full(s, kind)[0]

    def batch_full(self, s: int, kind: int) -> float:
        """Sequences a decode instance runs at the TBT SLO (cached)."""
        return self._decode_full(s, kind)[1]

    def _decode_full(self, s: int, kind: int) -> tuple[float, float]:
        key = (s, kind)
        if key not in self._decode_full_cache:
            m = self.w.service == s
            inp = self.w.input_tokens[m].astype(float)
            out = self.w.output_tokens[m].astype(float)
            wt = np.maximum(out, 1.0)
            ctx = float(np.average(inp + out / 2, weights=wt)) if len(inp) else 1.0
            res = float(np.average(inp + out, weights=wt)) if len(inp) else 1.0
            k = self.kinds[kind]
            cap = decode_capacity(k, self.services[s].slo.tbt_s, ctx, res)
            share = max(cap.batch * res / k.kv_capacity_tokens, 1e-6)
            self._decode_full_cache[key] = (share, float(max(cap.batch, 1)))
        return self._decode_full_cache[key]

    def shared_level(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Lowest switch level hosts `a[i]` and `b[i]` share (from a [host, host] table on
        fleets of up to 1024 hosts, built on first use)."""
        n_hosts = len(self.host_sw)
        if self._level_table is None and n_hosts <= 1024:
            h = np.arange(n_hosts)
            self._level_table = (
                self._shared_level_of(np.repeat(h, n_hosts), np.tile(h, n_hosts))
                .astype(np.int8)
                .reshape(n_hosts, n_hosts)
            )
        if self._level_table is not None:
            return self._level_table[a, b].astype(np.int64)
        return self._shared_level_of(a, b)

    def _shared_level_of(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        sa, sb = self.host_sw[a], self.host_sw[b]
        level = np.full(len(a), int(SharedLevel.CROSS_S2), dtype=np.int64)
        level[sa[:, 2] == sb[:, 2]] = SharedLevel.S2
        level[sa[:, 1] == sb[:, 1]] = SharedLevel.S1
        level[sa[:, 0] == sb[:, 0]] = SharedLevel.S0
        level[a == b] = SharedLevel.HOST
        return level
