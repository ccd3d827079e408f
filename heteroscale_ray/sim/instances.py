"""The simulator's instance table: lifecycle states, roles, and one numpy column per field."""

from __future__ import annotations

import numpy as np

STARTING, READY, DRAINING, GONE, SOFT = 0, 1, 2, 3, 4
# SOFT: soft scale-in window: out of routing, finishing in-flight work, GPUs held until the
# control loop stops it (-> DRAINING) or puts it back (-> READY, or STARTING if still loading).
PREFILL, DECODE = 0, 1


def distinct(values: np.ndarray, n_values: int) -> list[int]:
    """The distinct entries of `values`, ints in [0, n_values), ascending (np.unique's order)."""
    if n_values == 1:
        return [0] if len(values) else []
    return np.flatnonzero(np.bincount(values, minlength=n_values)).tolist()


class InstanceTable:
    """Column store of instances; rows are never reused so ids stay stable."""

    FIELDS = {
        "svc": np.int64,
        "role": np.int64,
        "kind": np.int64,
        "host": np.int64,
        "dg": np.int64,
        "gpus": np.int64,
        "state": np.int64,
        "t_ready": float,
        "t_created": float,
        "t_removed": float,
        "free_at": float,  # prefill: when the FIFO queue empties
        "cum_work": float,  # prefill: seconds of work ever assigned
        "cum_flops": float,
        "exec_prev": float,  # prefill: work executed by the previous tick's end
        "kv_cap": float,
        "max_seqs": np.int64,
        "kv_used": float,  # decode: KV tokens reserved by admitted sequences
        "kv_promised": float,  # decode: KV of routed, not yet finished requests (for balancing)
        "n_active": np.int64,
        "n_pending": np.int64,
        # READY but moved to another DG: serves until its replacement does, counted in no
        # target (the control loop's make-before-break; `ClusterSim.keep_serving`)
        "leaving": np.bool_,
    }

    def __init__(self, capacity: int = 256) -> None:
        self.n = 0
        self.version = 0  # bumped when a row is added or removed (GONE): caches key on it
        for name, dt in self.FIELDS.items():
            setattr(self, name, np.zeros(capacity, dtype=dt))

    def add(self, **values: float) -> int:
        if self.n == len(self.svc):
            for name in self.FIELDS:
                old = getattr(self, name)
                new = np.zeros(2 * len(old), dtype=old.dtype)
                new[: len(old)] = old
                setattr(self, name, new)
        row = self.n
        for name, v in values.items():
            getattr(self, name)[row] = v
        self.n += 1
        self.version += 1
        return row
