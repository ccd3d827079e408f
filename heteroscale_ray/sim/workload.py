"""The simulator's input: every request of a replay, services merged, sorted by arrival."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

BLOCK_TOKENS = 512  # Mooncake hash_ids cover 512-token prompt blocks


@dataclass(frozen=True)
class Workload:
    """All requests of a replay, services merged, sorted by arrival."""

    arrival: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    service: np.ndarray  # index into the simulator's service list
    hash_ids: tuple[tuple[int, ...], ...] | None  # None: no prefix-cache information

    @staticmethod
    def from_traces(traces: Mapping[str, object], service_names: Sequence[str]) -> Workload:
        """Merge one trace per service (objects with arrival_s/input_tokens/... columns)."""
        idx = {n: i for i, n in enumerate(service_names)}
        parts = [(idx[name], t) for name, t in traces.items()]
        arrival = np.concatenate([t.arrival_s for _, t in parts]).astype(float)
        order = np.argsort(arrival, kind="stable")
        has_hashes = any(any(getattr(t, "hash_ids", ())) for _, t in parts)
        hashes_all = [h for _, t in parts for h in getattr(t, "hash_ids", ())] if has_hashes else []
        return Workload(
            arrival=arrival[order],
            input_tokens=np.concatenate([t.input_tokens for _, t in parts]).astype(np.int64)[order],
            output_tokens=np.concatenate([t.output_tokens for _, t in parts]).astype(np.int64)[
                order
            ],
            service=np.concatenate([np.full(len(t.arrival_s), i) for i, t in parts])[order],
            hash_ids=tuple(hashes_all[i] for i in order.tolist()) if has_hashes else None,
        )

    def __len__(self) -> int:
        return len(self.arrival)
