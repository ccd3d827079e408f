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
roles), `prefix_cache` (the per-DG pool),
`decode_phase` (step 4) and `tick_record` (the per-tick series); per-kind timing is
`perf.instance_kind`, per-instance capacity `perf.capacity`.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from heteroscale_ray.config import GpuCatalog, Role, ServiceSpec
from heteroscale_ray.perf.capacity import decode_capacity
from heteroscale_ray.perf.constants import DEFAULT_CONSTANTS, PerfConstants
from heteroscale_ray.perf.instance_kind import InstanceKind
from heteroscale_ray.perf.network import SharedLevel
from heteroscale_ray.perf.profiles import ModelProfile, get_profile
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
from heteroscale_ray.sim.prefix_cache import PrefixCache, pool_blocks
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
    drain_timeout_s: float = 900.0  # after the last arrival, keep running this long at most


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
    ) -> None:
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
        self.kinds: list[InstanceKind] = []
        self._kind_of: dict[tuple[str, str, int], int] = {}
        self.inst = InstanceTable()
        self.inst_ids: list[str] = []
        self.row_of: dict[str, int] = {}
        self.dg_names: list[str] = []
        self._dg_index: dict[str, int] = {}
        self.prefix_cache = PrefixCache()
        self._kv_full_cache: dict[tuple[int, int], float] = {}
        n = len(workload)
        self.horizon = float(workload.arrival[-1]) + self.dt if n else self.dt
        self.n_ticks_max = int(np.ceil((self.horizon + config.drain_timeout_s) / self.dt)) + 2
        # per-request results
        self.p_inst = np.full(n, -1, dtype=np.int64)
        self.d_inst = np.full(n, -1, dtype=np.int64)
        self.cached = np.zeros(n, dtype=np.int64)
        self.t_first = np.full(n, np.nan)
        self.t_kv = np.full(n, np.nan)
        self.t_dstart = np.full(n, np.nan)
        self.t_done = np.full(n, np.nan)
        self.kv_level = np.full(n, -1, dtype=np.int64)
        self.kv_time = np.full(n, np.nan)
        self.gen = np.zeros(n)
        self.reserve = np.zeros(n)
        self._next_arrival = 0
        self._backlog = np.empty(0, dtype=np.int64)
        self._pending = np.empty(0, dtype=np.int64)
        self._active = np.empty(0, dtype=np.int64)
        self.removed: list[str] = []  # instance ids removed since the actuator last looked
        # per-tick series [tick, service, role]
        s = len(self.services)
        shape = (self.n_ticks_max, s, 2)
        self.ts_ready = np.zeros(shape)
        self.ts_starting = np.zeros(shape)
        self.ts_draining = np.zeros(shape)
        self.ts_gpus = np.zeros(shape)  # GPUs held (any state)
        self.ts_cost = np.zeros(shape)  # relative cost per hour of GPUs held
        self.ts_busy = np.zeros(shape)  # sum over ready/draining instances of busy share
        self.ts_gpu_busy = np.zeros(shape)  # sum over all held GPUs of busy share
        self.ts_gpu_sm = np.zeros(shape)  # sum over all held GPUs of SM activity
        self.ts_sm = np.zeros(shape)  # sum over ready/draining instances of SM activity
        self.ts_kv = np.zeros(shape)  # decode: sum of KV use share
        self.ts_tokens = np.zeros(shape)  # prefill: cache-miss tokens done; decode: tokens made
        self.ts_ongoing = np.zeros(shape)  # requests in the pool (queued + running)
        self.ts_arrivals = np.zeros((self.n_ticks_max, s))
        self.ts_routed_kvlevel = np.zeros((self.n_ticks_max, len(SharedLevel)))

    # -- instances ---------------------------------------------------------------------

    def kind_for(self, spec: ServiceSpec, gpu: str, n_gpus: int) -> int:
        key = (spec.model, gpu, n_gpus)
        if key not in self._kind_of:
            prof = get_profile(spec.model, dict(self.profiles) if self.profiles else None)
            self._kind_of[key] = len(self.kinds)
            self.kinds.append(InstanceKind.build(prof, self.catalog[gpu], n_gpus, self.const))
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

    def put_back(self, instance_id: str) -> None:
        """Undo `hold_out`: the instance takes requests again (once loaded)."""
        row = self.row_of[instance_id]
        if self.inst.state[row] == SOFT:
            loaded = self.inst.t_ready[row] <= self.now
            self.inst.state[row] = READY if loaded else STARTING

    def _remove(self, row: int) -> None:
        self.inst.state[row] = GONE
        self.inst.t_removed[row] = self.now
        self.removed.append(self.inst_ids[row])

    def counts(self, service: str) -> tuple[int, int, int, int]:
        """(prefill ready, prefill starting, decode ready, decode starting) of a service."""
        T = self.inst
        m = T.svc[: T.n] == self.svc_index[service]
        st, ro = T.state[: T.n][m], T.role[: T.n][m]
        return (
            int(np.sum((st == READY) & (ro == PREFILL))),
            int(np.sum((st == STARTING) & (ro == PREFILL))),
            int(np.sum((st == READY) & (ro == DECODE))),
            int(np.sum((st == STARTING) & (ro == DECODE))),
        )

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
            np.add.at(self.ts_arrivals[self.tick], self.w.service[new], 1)
        todo = np.concatenate([self._backlog, new]) if len(self._backlog) else new
        self._backlog = self._route(todo, t0) if len(todo) else todo
        admit_fifo(self, t0, t1)
        advance_decode(self, t0, t1)
        record_tick(self, t1)
        self.now = t1
        self.tick += 1

    def _lifecycle(self, t0: float) -> None:
        T = self.inst
        n = T.n
        st = T.state[:n]
        st[(st == STARTING) & (T.t_ready[:n] <= t0)] = READY
        draining = np.flatnonzero(st == DRAINING)
        for row in draining.tolist():
            if T.role[row] == PREFILL:
                idle = T.free_at[row] <= t0
            else:
                idle = T.n_active[row] == 0 and T.n_pending[row] == 0
            if idle:
                self._remove(row)

    def _route(self, todo: np.ndarray, t0: float) -> np.ndarray:
        """Assign prefill and decode instances; returns the requests that found no DG."""
        T, w = self.inst, self.w
        n = T.n
        st, role, dg = T.state[:n], T.role[:n], T.dg[:n]
        ready = st == READY
        left: list[np.ndarray] = []
        svc_of = w.service[todo]
        hashes = w.hash_ids
        kinds = self.kinds
        for s in np.unique(svc_of).tolist():
            ids = todo[svc_of == s]
            mine = ready & (T.svc[:n] == s)
            dec_rows = np.flatnonzero(mine & (role == DECODE))
            dg_ok = set(dg[dec_rows].tolist())
            pre_rows = [
                r for r in np.flatnonzero(mine & (role == PREFILL)).tolist() if dg[r] in dg_ok
            ]
            if not pre_rows:
                left.append(ids)
                continue
            # Per-DG heaps: prefill by when its queue empties, decode by KV promised over the
            # KV a batch at the TBT SLO holds. A request goes to the DG with the least combined
            # pressure (prefill wait over the TTFT SLO + decode load), then to that DG's
            # least-loaded prefill and decode instances.
            pheaps: dict[int, list[tuple[float, int]]] = {}
            for r in pre_rows:
                pheaps.setdefault(int(dg[r]), []).append((max(float(T.free_at[r]), t0), r))
            dheaps: dict[int, list[tuple[float, int]]] = {}
            for r in dec_rows.tolist():
                full = self._kv_full(s, int(T.kind[r])) * T.kv_cap[r]
                dheaps.setdefault(int(dg[r]), []).append((T.kv_promised[r] / full, r))
            for h in (*pheaps.values(), *dheaps.values()):
                heapq.heapify(h)
            groups = sorted(pheaps)
            pools: dict[int, int] = {}
            if hashes is not None:
                pools = pool_blocks(T.kv_cap[pre_rows], dg[pre_rows])
            ttft_slo = self.services[s].slo.ttft_s
            arr = w.arrival[ids].tolist()
            inp = w.input_tokens[ids].tolist()
            out = w.output_tokens[ids].tolist()
            p_rows = np.empty(len(ids), dtype=np.int64)
            d_rows = np.empty(len(ids), dtype=np.int64)
            fin_l = np.empty(len(ids))
            work_l = np.empty(len(ids))
            flops_l = np.empty(len(ids))
            cached_l = np.zeros(len(ids), dtype=np.int64)
            res_l = np.empty(len(ids))
            for j, rid in enumerate(ids.tolist()):
                a = arr[j]
                g = groups[0]
                tokens = inp[j]
                blocks = hashes[rid] if hashes is not None else ()
                if len(groups) > 1:
                    best = float("inf")
                    for cand in groups:
                        wait = pheaps[cand][0][0] - a
                        score = (wait if wait > 0 else 0.0) / ttft_slo + dheaps[cand][0][0]
                        if blocks:  # cache-aware: the prefill time a hit in this DG saves
                            hit = self.prefix_cache.peek(cand, blocks, tokens)
                            if hit:
                                ck = kinds[T.kind[pheaps[cand][0][1]]]
                                saved = (
                                    ck.prefill_one(tokens, 0)[0] - ck.prefill_one(tokens, hit)[0]
                                )
                                score -= saved / ttft_slo
                        if score < best:
                            best, g = score, cand
                heap = pheaps[g]
                free, r = heap[0]
                kind = kinds[T.kind[r]]
                cached = 0
                if blocks:
                    cached = self.prefix_cache.lookup(g, blocks, tokens, pools.get(g, 0))
                svc_time, flops = kind.prefill_one(tokens, cached)
                start = free if free > arr[j] else max(arr[j], t0)
                fin = start + svc_time
                heapq.heapreplace(heap, (fin, r))
                dh = dheaps[g]
                load, d = dh[0]
                res = min(float(tokens + out[j]), float(T.kv_cap[d]))
                full = self._kv_full(s, int(T.kind[d])) * T.kv_cap[d]
                heapq.heapreplace(dh, (load + res / full, d))
                p_rows[j], d_rows[j], fin_l[j] = r, d, fin
                work_l[j], flops_l[j], cached_l[j], res_l[j] = svc_time, flops, cached, res
            for heap in pheaps.values():
                for fin, r in heap:
                    T.free_at[r] = fin
            np.add.at(T.cum_work, p_rows, work_l)
            np.add.at(T.cum_flops, p_rows, flops_l)
            self.p_inst[ids] = p_rows
            self.cached[ids] = cached_l
            self.t_first[ids] = fin_l
            self.reserve[ids] = res_l
            new_tokens = w.input_tokens[ids] - cached_l
            done_tick = np.minimum((fin_l / self.dt).astype(np.int64), self.n_ticks_max - 1)
            np.add.at(self.ts_tokens[:, s, PREFILL], done_tick, new_tokens)
            # single-token outputs finish at prefill; the rest go to decode after the KV copy
            one = w.output_tokens[ids] <= 1
            self.t_done[ids[one]] = fin_l[one]
            go = ~one
            ids_d, d_go, p_go = ids[go], d_rows[go], p_rows[go]
            self.d_inst[ids_d] = d_go
            np.add.at(T.kv_promised, d_go, res_l[go])
            np.add.at(T.n_pending, d_go, 1)
            level = self._shared_level(T.host[p_go], T.host[d_go])
            kv_t = np.empty(len(ids_d))
            pk = T.kind[p_go]
            for k in np.unique(pk).tolist():
                m = pk == k
                kv_t[m] = kinds[k].kv_transfer_seconds(
                    w.input_tokens[ids_d[m]].astype(float), level[m]
                )
            self.kv_level[ids_d] = level
            self.kv_time[ids_d] = kv_t
            self.t_kv[ids_d] = fin_l[go] + kv_t
            np.add.at(self.ts_routed_kvlevel[self.tick], level, 1)
            self._pending = np.concatenate([self._pending, ids_d])
        return np.concatenate(left) if left else np.empty(0, dtype=np.int64)

    def _kv_full(self, s: int, kind: int) -> float:
        """Share of a decode instance's KV capacity a batch at the TBT SLO holds (cached)."""
        key = (s, kind)
        if key not in self._kv_full_cache:
            m = self.w.service == s
            inp = self.w.input_tokens[m].astype(float)
            out = self.w.output_tokens[m].astype(float)
            wt = np.maximum(out, 1.0)
            ctx = float(np.average(inp + out / 2, weights=wt)) if len(inp) else 1.0
            res = float(np.average(inp + out, weights=wt)) if len(inp) else 1.0
            k = self.kinds[kind]
            cap = decode_capacity(k, self.services[s].slo.tbt_s, ctx, res)
            self._kv_full_cache[key] = max(cap.batch * res / k.kv_capacity_tokens, 1e-6)
        return self._kv_full_cache[key]

    def _shared_level(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        sa, sb = self.host_sw[a], self.host_sw[b]
        level = np.full(len(a), int(SharedLevel.CROSS_S2), dtype=np.int64)
        level[sa[:, 2] == sb[:, 2]] = SharedLevel.S2
        level[sa[:, 1] == sb[:, 1]] = SharedLevel.S1
        level[sa[:, 0] == sb[:, 0]] = SharedLevel.S0
        level[a == b] = SharedLevel.HOST
        return level
