"""One request of a trace: when it arrives and how many tokens it reads and writes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Request:
    """A replayable request; equal ``hash_ids`` prefixes mean a shared, cacheable prompt prefix.

    ``hash_ids`` name 512-token prompt blocks (Mooncake convention) and are empty when the trace
    does not say. ``request_id`` is unique within its trace.
    """

    arrival_s: float
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()
    request_id: int = 0
