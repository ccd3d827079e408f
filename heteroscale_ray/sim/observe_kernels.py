"""The compiled twins of the observation's scans over a window's requests (`observe`), used
when numba is installed: which requests had their first or last token in the window, the
heaviest prompt bursts (`arrival_bursts.heaviest`), and the latency percentiles.

Kept apart from the routing loop in `kernels.py` (whose `compiled` decorator and switch they
share). numpy's `flatnonzero`, `searchsorted` and `percentile` stay the reference; every value
here is the same bit for bit (tests/test_sim_kernels.py).
"""

from __future__ import annotations

import numpy as np

from heteroscale_ray.sim.kernels import compiled


@compiled
def in_window(t_first, t_done, lo, hi, a, b):
    """Requests in [lo, hi) whose first token, and those whose last token, fell in [a, b):
    `np.flatnonzero((x >= a) & (x < b)) + lo` for x = t_first[lo:hi] and t_done[lo:hi]."""
    first = np.empty(hi - lo, dtype=np.int64)
    done = np.empty(hi - lo, dtype=np.int64)
    n_first = 0
    n_done = 0
    for i in range(lo, hi):
        x = t_first[i]
        if x >= a and x < b:
            first[n_first] = i
            n_first += 1
        x = t_done[i]
        if x >= a and x < b:
            done[n_done] = i
            n_done += 1
    return first[:n_first].copy(), done[:n_done].copy()


@compiled
def heaviest_scan(t, total, spans):
    """`arrival_bursts.heaviest`'s scan, one pass per span: for each u in `spans`, the largest
    `total[searchsorted(t, t + u, "left")] - total[:len(t)]` (`t` sorted, `total` its running
    sum from 0). The window's end only moves forward, so it walks instead of searching."""
    n = len(t)
    out = np.empty(len(spans))
    for k in range(len(spans)):
        u = spans[k]
        j = 0
        best = -np.inf
        for i in range(n):
            end = t[i] + u
            while j < n and t[j] < end:
                j += 1
            v = total[j] - total[i]
            if v > best:
                best = v
        out[k] = best
    return out


@compiled
def percentile(x, q):
    """`np.percentile(x, q)` (its default, linear method) of a non-empty float64 array, bit
    for bit: the two order statistics around the virtual index (n - 1) * q / 100, exact
    however they are selected, then numpy's interpolation (from the upper one when the
    weight is at least a half). NaN if any value is. `x` is not changed."""
    n = len(x)
    for i in range(n):
        if np.isnan(x[i]):
            return np.nan
    at = (n - 1) * (q / 100.0)
    if at >= n - 1:
        return np.max(x)
    below = int(np.floor(at))
    part = np.partition(x, below)
    a = part[below]
    b = np.min(part[below + 1 :])
    gamma = at - below
    diff = b - a
    if gamma >= 0.5:
        return b - diff * (1.0 - gamma)
    return a + diff * gamma
