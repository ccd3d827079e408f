"""The held instances of the simulator, and what about them stays fixed while they are held.

The per-tick code (`tick_record`, `decode_phase`) reads the same per-instance constants every
tick; a `Layout` gathers them once per change of the instance set (`InstanceTable.version`:
an instance added or removed), not once per tick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from heteroscale_ray.sim.instances import DECODE, GONE, PREFILL

if TYPE_CHECKING:
    from heteroscale_ray.sim.cluster import ClusterSim

# the series summed per (service, role) each tick, in the order of `Layout.keys`' blocks
SERIES = (
    "ts_ready",
    "ts_starting",
    "ts_draining",
    "ts_gpus",
    "ts_cost",
    "ts_busy",
    "ts_sm",
    "ts_gpu_busy",
    "ts_gpu_sm",
    "ts_kv",
    "ts_tokens",  # decode's column only: prefill's is written by routing
)
# `InstanceKind.step_seconds`' coefficients of a dense kind, in the order
# `decode_kernels.decode_step_times` reads them
STEP_COEFFS = (
    "w_shared",
    "kv_bytes_per_token",
    "mem_bw",
    "flops_per_token",
    "flops_per_pair",
    "decode_flops_s",
    "step_overhead_s",
)


class Layout:
    """The held (not GONE) instances and what about them stays fixed while they are held:
    rebuilt only when an instance is added or removed (`InstanceTable.version`)."""

    def __init__(self, sim: ClusterSim) -> None:
        T = sim.inst
        n = T.n
        live = np.flatnonzero(T.state[:n] != GONE)
        self.version = T.version
        self.n = n
        self.rows: slice | np.ndarray = slice(0, n) if len(live) == n else live
        rows = self.rows
        m = len(live)
        kind = T.kind[rows]
        role = T.role[rows]
        self.gpus = T.gpus[rows].astype(float)
        self.gpu_cost = self.gpus * sim._kind_cost[kind]
        self.den = sim._kind_peak_den[kind]
        self.t_ready = T.t_ready[rows]
        self.prefill = role == PREFILL
        self.decode = ~self.prefill
        size = 2 * len(sim.services)
        key = T.svc[rows] * 2 + role
        self.key = key
        self.row_ids = live
        # one bincount sums every series: block f of the weights goes to bins f*size + key
        self.keys = (key[None, :] + size * np.arange(len(SERIES))[:, None]).ravel()
        self.size = size
        self.weights = np.zeros((len(SERIES), m))
        # held decode instances by kind (kinds ascending): decode steps are timed per kind
        dec = np.flatnonzero(T.state[:n] != GONE)
        dec = dec[T.role[dec] == DECODE]
        dkind = T.kind[dec]
        self.decode_by_kind: list[tuple[int, np.ndarray]] = [
            (k, dec[dkind == k]) for k in np.unique(dkind).tolist()
        ]
        # the same rows, each with its kind's step coefficients, for the compiled twin of
        # `step_seconds`; None when a kind is an MoE (its weights read depend on the batch)
        by_kind = self.decode_by_kind
        self.decode_rows = np.concatenate([r for _, r in by_kind]) if by_kind else dec
        self.step_coeffs: np.ndarray | None = None
        if all(sim.kinds[k].w_experts == 0.0 for k, _ in by_kind):
            coeffs = [[float(getattr(sim.kinds[k], f)) for f in STEP_COEFFS] for k, _ in by_kind]
            self.step_coeffs = np.repeat(
                np.array(coeffs).reshape(-1, len(STEP_COEFFS)), [len(r) for _, r in by_kind], 0
            )


def layout(sim: ClusterSim) -> Layout:
    """The current `Layout`, cached on the simulator."""
    lay = sim._layout
    if lay is None or lay.version != sim.inst.version:
        lay = sim._layout = Layout(sim)
    return lay
