"""A request trace stored as numpy columns, so that 20k-row files load and transform fast.

Iterating yields `Request` objects for replay; the columns serve vectorised analysis (rates,
token sums) and transforms. Arrival times count from the trace start (0) and are sorted.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from heteroscale_ray.traces.prompt_blocks import PromptBlocks
from heteroscale_ray.traces.request import Request

BLOCK_TOKENS = 512  # each of a prompt's hash_ids covers this many tokens (Mooncake's block)


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the file, the line and the problem.
    `row`: the problem is one row's, which skipping malformed rows would drop (not the header's
    or the file's)."""

    def __init__(self, path: str, line: int | None, reason: str, row: bool = True) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        self.row = row and line is not None
        where = f"{path} line {line}" if line is not None else path
        super().__init__(f"{where}: {reason}")


def _frozen(values: object, dtype: type) -> np.ndarray:
    arr = np.array(values, dtype=dtype, copy=True)
    if arr.ndim != 1:
        raise ValueError(f"trace columns must be one-dimensional (got shape {arr.shape})")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False, repr=False)
class Trace:
    """Requests sorted by arrival; columns are read-only numpy arrays of equal length.

    ``duration_s`` is the span the trace covers (from 0); it may exceed the last arrival, e.g.
    for a generated trace or a time slice. ``skipped``/``skip_reasons`` record malformed rows a
    loader dropped (the first few reasons only).
    """

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    hash_ids: tuple[tuple[int, ...], ...]
    request_ids: np.ndarray
    duration_s: float
    source: str = ""
    skipped: int = 0
    skip_reasons: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        lengths = {
            len(self.input_tokens),
            len(self.output_tokens),
            len(self.hash_ids),
            len(self.request_ids),
        }
        if lengths != {n}:
            raise ValueError("trace columns must all have the same length")
        if not (math.isfinite(self.duration_s) and np.isfinite(self.arrival_s).all()):
            raise ValueError("arrival_s and duration_s must be finite numbers of seconds")
        if n:
            if self.arrival_s[0] < 0 or np.any(np.diff(self.arrival_s) < 0):
                raise ValueError(
                    "arrival_s must be >= 0 and sorted; build traces with Trace.from_columns"
                )
            if self.duration_s < self.arrival_s[-1]:
                raise ValueError(
                    f"duration_s {self.duration_s} is before the last arrival {self.arrival_s[-1]}"
                )

    @classmethod
    def from_columns(
        cls,
        arrival_s: Sequence[float] | np.ndarray,
        input_tokens: Sequence[int] | np.ndarray,
        output_tokens: Sequence[int] | np.ndarray,
        hash_ids: Sequence[Sequence[int]] | None = None,
        request_ids: Sequence[int] | np.ndarray | None = None,
        duration_s: float | None = None,
        source: str = "",
        skipped: int = 0,
        skip_reasons: Sequence[str] = (),
    ) -> Trace:
        """Sort by arrival (stable), copy into read-only arrays; defaults: ids 0..n-1 in input
        order, no hash ids, duration = last arrival."""
        arr = np.asarray(arrival_s, dtype=np.float64)
        n = len(arr)
        order = np.argsort(arr, kind="stable")
        ids = np.arange(n) if request_ids is None else np.asarray(request_ids, dtype=np.int64)
        hashes = ((),) * n if hash_ids is None else tuple(tuple(h) for h in hash_ids)
        if len(hashes) != n:
            raise ValueError(f"hash_ids has {len(hashes)} entries for {n} requests")
        if hash_ids is not None and not any(hashes):
            hash_ids = None  # all empty: nothing to reorder
        sorted_arr = arr[order]
        if duration_s is None:
            duration_s = float(sorted_arr[-1]) if n else 0.0
        return cls(
            arrival_s=_frozen(sorted_arr, np.float64),
            input_tokens=_frozen(np.asarray(input_tokens, dtype=np.int64)[order], np.int64),
            output_tokens=_frozen(np.asarray(output_tokens, dtype=np.int64)[order], np.int64),
            hash_ids=hashes if hash_ids is None else tuple(hashes[i] for i in order.tolist()),
            request_ids=_frozen(ids[order], np.int64),
            duration_s=float(duration_s),
            source=source,
            skipped=skipped,
            skip_reasons=tuple(skip_reasons),
        )

    def __len__(self) -> int:
        return len(self.arrival_s)

    @cached_property
    def prompt_blocks(self) -> PromptBlocks:
        """`hash_ids` numbered densely, once per trace (a replay and its cache calibration
        read the same trace; numbering Mooncake's 1.7M blocks took about 0.1 s)."""
        return PromptBlocks.number(self.hash_ids)

    @cached_property
    def has_hashes(self) -> bool:
        """Whether any request names prompt blocks (Mooncake); most traces name none, and
        transforms then skip the per-request tuples."""
        return any(self.hash_ids)

    def __iter__(self) -> Iterator[Request]:
        columns = zip(
            self.arrival_s.tolist(),
            self.input_tokens.tolist(),
            self.output_tokens.tolist(),
            self.hash_ids,
            self.request_ids.tolist(),
            strict=True,
        )
        for arrival, inp, out, hashes, rid in columns:
            yield Request(arrival, inp, out, hashes, rid)

    def __getitem__(self, index: int) -> Request:
        i = range(len(self))[index]  # IndexError and negative indices as for a list
        return Request(
            float(self.arrival_s[i]),
            int(self.input_tokens[i]),
            int(self.output_tokens[i]),
            self.hash_ids[i],
            int(self.request_ids[i]),
        )

    def __repr__(self) -> str:
        return (
            f"Trace(source={self.source!r}, requests={len(self)}, duration_s={self.duration_s:.1f}, "
            f"mean_rate={self.mean_rate:.3f}, skipped={self.skipped})"
        )

    @property
    def mean_rate(self) -> float:
        """Requests per second over the trace's duration (0 when the duration is 0)."""
        return len(self) / self.duration_s if self.duration_s > 0 else 0.0

    def slice(self, start_s: float, end_s: float) -> Trace:
        """Requests arriving in [start_s, end_s), re-based so ``start_s`` becomes 0."""
        if end_s < start_s:
            raise ValueError(f"end_s {end_s} is before start_s {start_s}")
        lo, hi = np.searchsorted(self.arrival_s, [start_s, end_s], side="left")
        span = max(0.0, min(end_s, self.duration_s) - start_s)
        return Trace.from_columns(
            self.arrival_s[lo:hi] - start_s,
            self.input_tokens[lo:hi],
            self.output_tokens[lo:hi],
            self.hash_ids[lo:hi] if self.has_hashes else None,
            self.request_ids[lo:hi],
            duration_s=span,
            source=f"{self.source}[{start_s:g}:{end_s:g}]",
            skipped=self.skipped,  # the load's count, as `select` keeps it
            skip_reasons=self.skip_reasons,
        )

    def select(self, keep: np.ndarray) -> Trace:
        """The requests where `keep` (one bool per request, in trace order) is true, over the
        same span."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (len(self),):
            raise ValueError(f"keep has shape {keep.shape}, the trace {len(self)} requests")
        return Trace.from_columns(
            self.arrival_s[keep],
            self.input_tokens[keep],
            self.output_tokens[keep],
            [h for h, k in zip(self.hash_ids, keep, strict=True) if k] if self.has_hashes else None,
            self.request_ids[keep],
            duration_s=self.duration_s,
            source=self.source,
            skipped=self.skipped,
            skip_reasons=self.skip_reasons,
        )

    def describe(self) -> dict[str, float]:
        """The numbers a report cites: count, span, rate, token means, medians and p99s."""
        out: dict[str, float] = {
            "requests": float(len(self)),
            "duration_s": self.duration_s,
            "mean_rate": self.mean_rate,
        }
        for name, col in (("input", self.input_tokens), ("output", self.output_tokens)):
            if len(col):
                out[f"{name}_mean"] = float(col.mean())
                out[f"{name}_median"] = float(np.median(col))
                out[f"{name}_p99"] = float(np.percentile(col, 99))
        return out
