"""The compiled twins of the per-tick series `ClusterSim.step` records (`tick_record`,
`prefill_queue`), used when numba is installed: each series' sums per (service, role), decode's
token steps and the prefill queue per ready instance.

Kept apart from the routing loop in `kernels.py` (whose `compiled` decorator and switch they
share). `tick_record._sums`, `_token_steps` and `prefill_queue.record_queue` stay the
reference; every value here is computed by the same operations in the same order, numpy's
pairwise sums included (`pairwise_sum`; tests/test_sim_kernels.py).
"""

from __future__ import annotations

import numpy as np

from heteroscale_ray.sim.instances import DRAINING, READY, SOFT, STARTING
from heteroscale_ray.sim.kernels import compiled


@compiled
def record(
    rows,  # int64[m]: held instances
    key,  # int64[m]: their (service, role) bin
    prefill,  # bool[m]
    t_ready,  # float64[m]
    gpus,  # float64[m]
    gpu_cost,  # float64[m]
    den,  # float64[m]: SM-activity denominator (peak FLOP/s)
    state,  # per instance
    cum_work,
    free_at,
    cum_flops,
    exec_prev,  # updated
    kv_used,
    kv_cap,
    dec_busy,
    dec_flops,
    dec_tokens,
    t1,
    dt,
    sums,  # float64[series, bins], zeros: the tick's row of every series (out)
):
    """`tick_record.record_tick`'s per-instance part: the same sums in the same row order
    (numpy's maximum/minimum spelled out: `a if a >= b else b`, `a if a <= b else b`)."""
    for i in range(len(rows)):
        row = rows[i]
        st = state[row]
        held_out = st == SOFT and t_ready[i] <= t1  # model loaded
        ready = st == READY
        leaving = st == DRAINING or held_out
        serving = ready or leaving
        cw = cum_work[row]
        ready_at = t1 if t1 >= t_ready[i] else t_ready[i]
        queued = free_at[row] - ready_at
        executed = cw - (0.0 if queued <= 0.0 else queued)
        if not cw > 0:
            executed = 0.0
        x = (executed - exec_prev[row]) / dt
        x = x if x >= 0.0 else 0.0
        busy_p = x if x <= 1.0 else 1.0
        flops_rate = cum_flops[row] / cw if cw > 0 else 0.0
        sm_p = busy_p * flops_rate / den[i]
        exec_prev[row] = executed
        sm_d = dec_flops[row] / (dt * den[i])
        bd = dec_busy[row]
        busy = busy_p if prefill[i] else (bd if bd <= 1.0 else 1.0)
        sm = sm_p if prefill[i] else sm_d
        sm = sm if sm <= 1.0 else 1.0
        if not serving:
            busy = 0.0
            sm = 0.0
        cap = kv_cap[row]
        kv = kv_used[row] / (cap if cap >= 1.0 else 1.0) if serving and not prefill[i] else 0.0
        b = key[i]
        sums[0, b] += 1.0 if ready else 0.0
        sums[1, b] += 1.0 if st == STARTING else 0.0
        sums[2, b] += 1.0 if leaving else 0.0
        sums[3, b] += gpus[i]
        sums[4, b] += gpu_cost[i]
        sums[5, b] += busy
        sums[6, b] += sm
        sums[7, b] += busy * gpus[i]
        sums[8, b] += sm * gpus[i]
        sums[9, b] += kv
        sums[10, b] += dec_tokens[row] if serving else 0.0


@compiled
def pairwise_sum(a, lo, n):
    """`np.sum(a[lo:lo + n])` of float64 values, bit for bit: numpy adds a contiguous array
    pairwise (halves, cut at a multiple of 8, down to blocks of at most 128, each summed in
    eight interleaved lanes), not in order, so a loop that adds in order rounds differently.
    Walked with a stack: numba's on-disk cache mishandles recursive functions."""
    if n <= 128:
        return _block_sum(a, lo, n)
    starts = np.empty(64, dtype=np.int64)  # the halving is at most 64 levels deep
    sizes = np.empty(64, dtype=np.int64)
    stage = np.zeros(64, dtype=np.int64)  # 0: go left, 1: go right, 2: add the two
    sums = np.empty(64)
    top, held = 0, 0
    starts[0], sizes[0] = lo, n
    while top >= 0:
        m = sizes[top]
        if m <= 128:
            sums[held] = _block_sum(a, starts[top], m)
            held += 1
            top -= 1
            continue
        half = m // 2
        half -= half % 8
        if stage[top] == 2:
            held -= 1
            sums[held - 1] = sums[held - 1] + sums[held]
            top -= 1
            continue
        right = stage[top] == 1
        stage[top] += 1
        top += 1
        starts[top] = starts[top - 1] + (half if right else 0)
        sizes[top] = m - half if right else half
        stage[top] = 0
    return sums[0]


@compiled
def _block_sum(a, lo, n):
    """numpy's pairwise sum of at most 128 values: in order under 8, else 8 lanes."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    while i < n - (n % 8):
        j = lo + i
        r0 += a[j]
        r1 += a[j + 1]
        r2 += a[j + 2]
        r3 += a[j + 3]
        r4 += a[j + 4]
        r5 += a[j + 5]
        r6 += a[j + 6]
        r7 += a[j + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@compiled
def token_steps(made, tau, svc, out):
    """`tick_record._token_steps` into `out` (one value per service): each service's decode
    tokens of the tick times its busy instances' mean step (`made`, `tau` and `svc` per
    instance)."""
    n = len(made)
    k = len(out)
    busy = np.empty(n)
    count = np.zeros(k)
    steps = np.zeros(k)
    tokens = np.zeros(k)
    m = 0
    for i in range(n):
        tokens[svc[i]] += made[i]
        if made[i] > 0:
            busy[m] = tau[i]
            m += 1
            steps[svc[i]] += tau[i]
            count[svc[i]] += 1.0
    if m == 0:
        out[:] = 0.0
    elif k == 1:
        out[0] = pairwise_sum(busy, 0, m) / m * pairwise_sum(made, 0, n)
    else:
        for s in range(k):
            out[s] = steps[s] / (count[s] if count[s] >= 1.0 else 1.0) * tokens[s]


@compiled
def prefill_queue(row_ids, prefill, svc, state, p_inst, waiting, p_work, t_first, service, t1, out):
    """`prefill_queue.record_queue` into `out` (one value per service): the work routed to
    each service's ready prefill instances and not started at `t1`, per such instance (NaN
    without one); `waiting` in the reference's order, so each sum adds as its bincount does."""
    k = len(out)
    count = np.zeros(k)
    queued = np.zeros(k)
    for i in range(len(row_ids)):
        r = row_ids[i]
        if prefill[i] and state[r] == READY:
            count[svc[r]] += 1.0
    for x in range(len(waiting)):
        rid = waiting[x]
        if state[p_inst[rid]] != READY:
            continue
        work = p_work[rid]
        if t_first[rid] - work > t1:
            queued[service[rid]] += work
    for s in range(k):
        out[s] = queued[s] / (count[s] if count[s] >= 1.0 else 1.0) if count[s] > 0 else np.nan
