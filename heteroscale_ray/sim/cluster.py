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
from bisect import bisect_left, insort
from collections.abc import Hashable, Mapping, Sequence
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
    distinct,
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
        self._level_table: np.ndarray | None = None  # [host, host] -> SharedLevel
        self.kinds: list[InstanceKind] = []
        self._kind_of: dict[tuple[str, str, int], int] = {}
        self.inst = InstanceTable()
        self.inst_ids: list[str] = []
        self.row_of: dict[str, int] = {}
        self.dg_names: list[str] = []
        self._dg_index: dict[str, int] = {}
        self.prefix_cache = PrefixCache()
        self._kv_full_cache: dict[tuple[int, int], float] = {}
        # per kind, for the per-tick series: SM-activity denominator and cost per GPU-hour
        self._kind_peak_den = np.zeros(0)
        self._kind_cost = np.zeros(0)
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
        # routed requests that may still wait for their first token (see `first_pending`)
        self._first_wait = np.empty(0, dtype=np.int64)
        self._first_new: list[np.ndarray] = []
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
            if len(self.services) == 1:
                self.ts_arrivals[self.tick, 0] += len(new)
            else:
                self.ts_arrivals[self.tick] += np.bincount(
                    self.w.service[new], minlength=len(self.services)
                )
        todo = np.concatenate([self._backlog, new]) if len(self._backlog) else new
        self._backlog = self._route(todo, t0) if len(todo) else todo
        admit_fifo(self, t0, t1)
        advance_decode(self, t0, t1)
        record_tick(self, t1)
        self.now = t1
        self.tick += 1

    def first_pending(self, t1: float) -> np.ndarray:
        """Routed requests whose first token comes after `t1` (any order).

        Called with a non-decreasing `t1` (once per tick): a request whose first token is at or
        before one call's `t1` is dropped for good.
        """
        cand = self._first_wait
        if self._first_new:
            cand = np.concatenate([cand, *self._first_new])
            self._first_new = []
        cand = cand[self.t_first[cand] > t1]
        self._first_wait = cand
        return cand

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
        ready = np.flatnonzero(T.state[: T.n] == READY)
        ready_svc, ready_dec = T.svc[ready], T.role[ready] == DECODE
        left: list[np.ndarray] = []
        svc_of = w.service[todo]
        one_svc = len(self.services) == 1
        for s in distinct(svc_of, len(self.services)):
            ids = todo if one_svc else todo[svc_of == s]
            mine = ready_svc == s
            dec_rows = ready[mine & ready_dec]
            dg_ok = set(T.dg[dec_rows].tolist())
            pre_all = ready[mine & ~ready_dec]
            pre_rows = [
                r
                for r, g in zip(pre_all.tolist(), T.dg[pre_all].tolist(), strict=True)
                if g in dg_ok
            ]
            if not pre_rows:
                left.append(ids)
                continue
            self._route_service(s, ids, t0, pre_rows, dec_rows)
        return np.concatenate(left) if left else np.empty(0, dtype=np.int64)

    def _route_service(
        self, s: int, ids: np.ndarray, t0: float, pre_rows: list[int], dec_rows: np.ndarray
    ) -> None:
        """Route the requests `ids` of service `s` (arrival order) over its ready DGs.

        Per-DG heaps: prefill by when its queue empties, decode by KV promised over the KV a
        batch at the TBT SLO holds. A request goes to the DG with the least combined pressure
        (prefill wait over the TTFT SLO + decode load), then to that DG's least-loaded prefill
        and decode instances. Ties go to the lower DG index, then to the lower row.
        """
        T, w = self.inst, self.w
        dg, kinds = T.dg, self.kinds
        pre_arr = np.array(pre_rows, dtype=np.int64)
        pheaps: dict[int, list[tuple[float, int]]] = {}
        for r, f, g in zip(
            pre_rows, T.free_at[pre_arr].tolist(), dg[pre_arr].tolist(), strict=True
        ):
            pheaps.setdefault(g, []).append((max(f, t0), r))
        # decode rows by class (kind, KV capacity): the KV share a batch at the TBT SLO holds
        full_of: dict[tuple[int, float], float] = {}
        dcls_row: dict[int, tuple[int, float]] = {}
        dheaps: dict[int, list[tuple[float, int]]] = {}
        for r, k, cap, prom, g in zip(
            dec_rows.tolist(),
            T.kind[dec_rows].tolist(),
            T.kv_cap[dec_rows].tolist(),
            T.kv_promised[dec_rows].tolist(),
            dg[dec_rows].tolist(),
            strict=True,
        ):
            key = (k, cap)
            if key not in full_of:
                full_of[key] = self._kv_full(s, k) * cap
            dcls_row[r] = key
            dheaps.setdefault(g, []).append((prom / full_of[key], r))
        for h in (*pheaps.values(), *dheaps.values()):
            heapq.heapify(h)
        groups = sorted(pheaps)
        ttft_slo = self.services[s].slo.ttft_s
        m = len(ids)
        inp_a = w.input_tokens[ids]
        out_a = w.output_tokens[ids]
        # per request and decode class: KV reserved, and the load it adds to the instance
        want = (inp_a + out_a).astype(float)
        res_of = {key: np.minimum(want, key[1]) for key in full_of}
        inc_of = {key: (res_of[key] / full).tolist() for key, full in full_of.items()}
        inc_row = {r: inc_of[key] for r, key in dcls_row.items()}
        pkind = dict(zip(pre_rows, T.kind[pre_arr].tolist(), strict=True))
        arr_a = w.arrival[ids]
        arr = arr_a.tolist()
        ph = [pheaps[g] for g in groups]
        dh = [dheaps[g] for g in groups]
        n_groups = len(groups)
        if self.w.hash_ids is None:
            # no prefix cache: a prompt's prefill time depends on its instance's kind only
            work_of = {k: kinds[k].prefill_many(inp_a) for k in set(pkind.values())}
            svc_of = {k: work[0].tolist() for k, work in work_of.items()}
            svc_row = {r: svc_of[k] for r, k in pkind.items()}
            a0 = np.maximum(arr_a, t0).tolist()
            pmin = [h[0][0] for h in ph]
            dmin = [h[0][0] for h in dh]
            p_sel = [0] * m
            d_sel = [0] * m
            fins = [0.0] * m
            replace = heapq.heapreplace
            # The DG of least score = max(prefill wait, 0) / TTFT SLO + decode load, the lowest
            # index among equal scores. A score is never below its DG's decode load (a wait of
            # 0 adds exactly 0.0), so DGs are visited by increasing load until the next load
            # exceeds the best score found.
            by_load = sorted((dl, i) for i, dl in enumerate(dmin))
            multi = n_groups > 1
            gi = 0
            for j, a in enumerate(arr):
                if multi:
                    best = float("inf")
                    for dl, i in by_load:
                        if dl > best:
                            break
                        p = pmin[i]
                        score = (p - a) / ttft_slo + dl if p > a else dl
                        if score < best or (score == best and i < gi):
                            best, gi = score, i
                heap = ph[gi]
                free, r = heap[0]
                fin = (free if free > a else a0[j]) + svc_row[r][j]
                replace(heap, (fin, r))
                pmin[gi] = heap[0][0]
                heap = dh[gi]
                load, d = heap[0]
                replace(heap, (load + inc_row[d][j], d))
                if multi:
                    del by_load[bisect_left(by_load, (dmin[gi], gi))]
                    insort(by_load, (heap[0][0], gi))
                dmin[gi] = heap[0][0]
                p_sel[j], d_sel[j], fins[j] = r, d, fin
            p_rows = np.array(p_sel, dtype=np.int64)
            d_rows = np.array(d_sel, dtype=np.int64)
            fin_l = np.array(fins, dtype=float)
            cached_l: np.ndarray | None = None  # no hits: `self.cached` stays 0
            work_l, flops_l = self._by_class(p_rows, pkind, work_of, m)
        else:
            p_rows, d_rows, fin_l, work_l, flops_l, cached_l = self._route_cached(
                s, ids, t0, groups, ph, dh, pkind, inc_row, pre_rows
            )
        (res_l,) = self._by_class(d_rows, dcls_row, {key: (res,) for key, res in res_of.items()}, m)
        for heap in ph:
            for fin, r in heap:
                T.free_at[r] = fin
        np.add.at(T.cum_work, p_rows, work_l)
        np.add.at(T.cum_flops, p_rows, flops_l)
        self.p_inst[ids] = p_rows
        self.t_first[ids] = fin_l
        self.reserve[ids] = res_l
        new_tokens = inp_a
        if cached_l is not None:
            self.cached[ids] = cached_l
            new_tokens = inp_a - cached_l
        done_tick = np.minimum((fin_l / self.dt).astype(np.int64), self.n_ticks_max - 1)
        np.add.at(self.ts_tokens[:, s, PREFILL], done_tick, new_tokens)
        # single-token outputs finish at prefill; the rest go to decode after the KV copy
        one = out_a <= 1
        if one.any():
            self.t_done[ids[one]] = fin_l[one]
            go = ~one
            ids_d, d_go, p_go = ids[go], d_rows[go], p_rows[go]
            res_d, inp_d, fin_d = res_l[go], inp_a[go], fin_l[go]
        else:
            ids_d, d_go, p_go, res_d, inp_d, fin_d = ids, d_rows, p_rows, res_l, inp_a, fin_l
        self.d_inst[ids_d] = d_go
        np.add.at(T.kv_promised, d_go, res_d)
        T.n_pending[: T.n] += np.bincount(d_go, minlength=T.n)
        level = self._shared_level(T.host[p_go], T.host[d_go])
        inp_d = inp_d.astype(float)
        pk = T.kind[p_go]
        present = distinct(pk, len(kinds))
        if len(present) == 1:
            kv_t = kinds[present[0]].kv_transfer_seconds(inp_d, level)
        else:
            kv_t = np.empty(len(ids_d))
            for k in present:
                sel = pk == k
                kv_t[sel] = kinds[k].kv_transfer_seconds(inp_d[sel], level[sel])
        self.kv_level[ids_d] = level
        self.kv_time[ids_d] = kv_t
        self.t_kv[ids_d] = fin_d + kv_t
        self.ts_routed_kvlevel[self.tick] += np.bincount(level, minlength=len(SharedLevel))
        self._pending = np.concatenate([self._pending, ids_d])
        self._first_new.append(ids)

    @staticmethod
    def _by_class(
        rows: np.ndarray,
        class_of: Mapping[int, Hashable],
        arrays_of: Mapping[Hashable, tuple[np.ndarray, ...]],
        m: int,
    ) -> tuple[np.ndarray, ...]:
        """Per request j, the arrays of the class of instance `rows[j]`, at j."""
        if len(arrays_of) == 1:
            return next(iter(arrays_of.values()))
        first = next(iter(arrays_of.values()))
        out = tuple(np.empty(m, dtype=a.dtype) for a in first)
        keys = list(arrays_of)
        index = {key: i for i, key in enumerate(keys)}
        tag = np.array([index[class_of[r]] for r in rows.tolist()], dtype=np.int64)
        for i, key in enumerate(keys):
            sel = tag == i
            for o, a in zip(out, arrays_of[key], strict=True):
                o[sel] = a[sel]
        return out

    def _route_cached(
        self,
        s: int,
        ids: np.ndarray,
        t0: float,
        groups: list[int],
        ph: list[list[tuple[float, int]]],
        dh: list[list[tuple[float, int]]],
        pkind: Mapping[int, int],
        inc_row: Mapping[int, list[float]],
        pre_rows: list[int],
    ) -> tuple[np.ndarray, ...]:
        """`_route_service`'s loop with the prefix cache (Mooncake `hash_ids`).

        The DG choice is cache-aware (as Mooncake's conductor): the prefill seconds a DG's
        cached prefix would save count against its queue.
        """
        T, w, kinds, cache = self.inst, self.w, self.kinds, self.prefix_cache
        hashes = w.hash_ids
        assert hashes is not None
        rows = np.array(pre_rows, dtype=np.int64)
        pools = pool_blocks(T.kv_cap[rows], T.dg[rows])
        ttft_slo = self.services[s].slo.ttft_s
        arr = w.arrival[ids].tolist()
        inp = w.input_tokens[ids].tolist()
        m = len(ids)
        p_sel, d_sel = [0] * m, [0] * m
        fins, works, flops_l, cached_l = [0.0] * m, [0.0] * m, [0.0] * m, [0] * m
        n_groups = len(groups)
        for j, rid in enumerate(ids.tolist()):
            a = arr[j]
            gi = 0
            tokens = inp[j]
            blocks = hashes[rid]
            if n_groups > 1:
                best = float("inf")
                for i in range(n_groups):
                    wait = ph[i][0][0] - a
                    score = (wait if wait > 0 else 0.0) / ttft_slo + dh[i][0][0]
                    if blocks:  # cache-aware: the prefill time a hit in this DG saves
                        hit = cache.peek(groups[i], blocks, tokens)
                        if hit:
                            ck = kinds[pkind[ph[i][0][1]]]
                            saved = ck.prefill_one(tokens, 0)[0] - ck.prefill_one(tokens, hit)[0]
                            score -= saved / ttft_slo
                    if score < best:
                        best, gi = score, i
            g = groups[gi]
            heap = ph[gi]
            free, r = heap[0]
            cached = 0
            if blocks:
                cached = cache.lookup(g, blocks, tokens, pools.get(g, 0))
            svc_time, flops = kinds[pkind[r]].prefill_one(tokens, cached)
            start = free if free > a else max(a, t0)
            fin = start + svc_time
            heapq.heapreplace(heap, (fin, r))
            heap = dh[gi]
            load, d = heap[0]
            heapq.heapreplace(heap, (load + inc_row[d][j], d))
            p_sel[j], d_sel[j], fins[j] = r, d, fin
            works[j], flops_l[j], cached_l[j] = svc_time, flops, cached
        return (
            np.array(p_sel, dtype=np.int64),
            np.array(d_sel, dtype=np.int64),
            np.array(fins, dtype=float),
            np.array(works, dtype=float),
            np.array(flops_l, dtype=float),
            np.array(cached_l, dtype=np.int64),
        )

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
