"""Queued prefill work: what a prefill replica reports as its queue (the prompts routed to it
and not started; the prompt on the GPU is service, not queue), now and tick by tick. Its peak
over a period shows requests landing together, which queue between snapshots that find them
drained.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from heteroscale_ray.sim import kernels, tick_kernels
from heteroscale_ray.sim.instances import READY

if TYPE_CHECKING:
    from heteroscale_ray.sim.cluster import ClusterSim
    from heteroscale_ray.sim.layout import Layout


def record_queue(sim: ClusterSim, lay: Layout, t1: float, waiting: np.ndarray) -> None:
    """Each service's prefill work routed to its ready prefill instances and not started at
    `t1`, per such instance (s; NaN without one): row `sim.tick` of `ts_prefill_queue`.
    `waiting`: the routed requests with no first token by `t1`. Requests held at the ingress
    are not in it: a queue there comes from routing around full decode, which more prefill
    does not shorten."""
    T = sim.inst
    if kernels.ENABLED:
        tick_kernels.prefill_queue(
            lay.row_ids, lay.prefill, T.svc, T.state, sim.p_inst, waiting, sim.p_work,
            sim.t_first, sim.w.service, t1, sim.ts_prefill_queue[sim.tick],
        )  # fmt: skip
        return
    rows = lay.rows
    k = len(sim.services)
    ready = lay.prefill & (T.state[rows] == READY)
    count = np.bincount(T.svc[rows], weights=ready, minlength=k)
    queued = np.zeros(k)
    ids = waiting[T.state[sim.p_inst[waiting]] == READY] if len(waiting) else waiting
    if len(ids):
        work = sim.p_work[ids]  # routing's price: the instance's own compute, no queueing
        later = sim.t_first[ids] - work > t1
        queued = np.bincount(sim.w.service[ids[later]], weights=work[later], minlength=k)
    sim.ts_prefill_queue[sim.tick] = np.where(count > 0, queued / np.maximum(count, 1.0), np.nan)
