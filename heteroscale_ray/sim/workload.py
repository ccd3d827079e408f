"""The simulator's input: every request of a replay, services merged, sorted by arrival."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from heteroscale_ray.traces.prompt_blocks import PromptBlocks


@dataclass(frozen=True)
class Workload:
    """All requests of a replay, services merged, sorted by arrival."""

    arrival: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    service: np.ndarray  # index into the simulator's service list
    hash_ids: tuple[tuple[int, ...], ...] | None  # None: no prefix-cache information
    # `hash_ids` densely numbered (None without them); numbered here unless given
    blocks: PromptBlocks | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.hash_ids is None:
            object.__setattr__(self, "blocks", None)
        elif self.blocks is None:
            object.__setattr__(self, "blocks", PromptBlocks.number(self.hash_ids))

    @staticmethod
    def from_traces(traces: Mapping[str, object], service_names: Sequence[str]) -> Workload:
        """Merge one trace per service (objects with arrival_s/input_tokens/... columns)."""
        idx = {n: i for i, n in enumerate(service_names)}
        parts = [(idx[name], t) for name, t in traces.items()]
        if len(parts) == 1:
            shared = Workload._shared(*parts[0])
            if shared is not None:
                return shared
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

    @staticmethod
    def _shared(service: int, trace: object) -> Workload | None:
        """One service's trace already in arrival order (a `Trace` always is) as the workload
        itself: its columns are used, not copied, and the service index is one value seen n
        times. A week's replay holds ~100M requests, ~32 bytes each that need not be twice."""
        arrival = np.asarray(trace.arrival_s, dtype=float)  # type: ignore[attr-defined]
        if np.any(arrival[1:] < arrival[:-1]):
            return None
        hashes = getattr(trace, "hash_ids", ())
        has_hashes = any(hashes)
        return Workload(
            arrival=arrival,
            input_tokens=np.asarray(trace.input_tokens, dtype=np.int64),  # type: ignore[attr-defined]
            output_tokens=np.asarray(trace.output_tokens, dtype=np.int64),  # type: ignore[attr-defined]
            service=np.broadcast_to(np.int64(service), arrival.shape),
            hash_ids=tuple(hashes) if has_hashes else None,
            # a `Trace` numbers its blocks once, however many replays read it
            blocks=getattr(trace, "prompt_blocks", None) if has_hashes else None,
        )

    def __len__(self) -> int:
        return len(self.arrival)
