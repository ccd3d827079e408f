"""Rate scaling and splicing of traces, for runs heavier or longer than the public hour.

Two ways to scale load by k, which reports must name: ``superpose`` overlays time-shifted copies
(same span, same per-request lengths, arrivals stay Poisson-like); ``compress`` divides time by k
(same requests, span shrinks by k, burst structure sharpens).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from heteroscale_ray.traces.synthetic import make_rng
from heteroscale_ray.traces.trace import Trace

# Superposed copies of a trace spanning hours shift by at most SHAPE_SHIFT_S: shifts over its
# whole span would wrap its busy hours onto its quiet ones (x10 flattened the ServeGen day's
# 1.8x hourly swing to 1.3x). A trace of at most LONG_TRACE_S is read as a stationary sample and
# shifts over its whole span: nearly aligned copies would multiply its minute-scale bursts by k.
SHAPE_SHIFT_S = 600.0
LONG_TRACE_S = 3 * 3600.0
# A superposed trace past this many requests cannot be held (each holds ~170 bytes in a
# replay): refused before the first copy is made, not after an hour of copying.
MAX_SUPERPOSED_REQUESTS = 1_000_000_000


def shape_keeping_shift(span_s: float) -> float | None:
    """The ``max_shift_s`` that keeps a trace's time-of-day shape: SHAPE_SHIFT_S for a trace
    longer than LONG_TRACE_S, None (its whole span) for a shorter one."""
    return SHAPE_SHIFT_S if span_s > LONG_TRACE_S else None


def time_compress(trace: Trace, factor: float) -> Trace:
    """Divide every arrival time and the duration by ``factor`` (> 1 speeds the trace up)."""
    if factor <= 0:
        raise ValueError(f"factor must be > 0 (got {factor})")
    return Trace.from_columns(
        trace.arrival_s / factor,
        trace.input_tokens,
        trace.output_tokens,
        trace.hash_ids if trace.has_hashes else None,
        trace.request_ids,
        duration_s=trace.duration_s / factor,
        source=f"{trace.source} compressed x{factor:g}",
    )


def slice_trace(trace: Trace, start_s: float, end_s: float) -> Trace:
    """Requests arriving in [start_s, end_s), re-based to start at 0 (same as Trace.slice)."""
    return trace.slice(start_s, end_s)


def _offset_hashes(hashes: Sequence[tuple[int, ...]], offset: int) -> list[tuple[int, ...]]:
    if offset == 0:
        return list(hashes)
    return [tuple(h + offset for h in hs) for hs in hashes]


def _dense_hashes(hashes: Sequence[tuple[int, ...]]) -> tuple[list[tuple[int, ...]], int]:
    """The ids renumbered 0..n-1 (equal stays equal), and n. Copies are then offset by n, not
    past the largest id: a trace hashed into 63-bit ids (Qwen-Bailian's, regrouped) would
    overflow int64 at its second copy."""
    lens = [len(h) for h in hashes]
    flat = np.fromiter((i for h in hashes for i in h), dtype=np.int64, count=sum(lens))
    uniq, dense = np.unique(flat, return_inverse=True)
    bounds = np.cumsum([0, *lens]).tolist()
    ids = dense.tolist()
    return [tuple(ids[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)], len(uniq)


def _superpose(
    trace: Trace,
    k: float,
    rng: np.random.Generator,
    max_shift_s: float | None,
    distinct_prefixes: bool,
) -> Trace:
    n, span = len(trace), trace.duration_s
    whole, frac = int(math.floor(k)), k - math.floor(k)
    shift_cap = span if max_shift_s is None else min(max_shift_s, span)
    keep_hashes = trace.has_hashes
    source_hashes: Sequence[tuple[int, ...]] = trace.hash_ids
    id_stride = 0
    if keep_hashes and distinct_prefixes:
        source_hashes, id_stride = _dense_hashes(trace.hash_ids)
    parts: list[tuple[np.ndarray, np.ndarray]] = []  # (row indices, arrival times) per copy
    copies = whole + (1 if frac > 0 else 0)
    for copy in range(copies):
        rows = np.arange(n)
        if copy == whole:  # the fractional copy: an exact-size random subset of the rows
            rows = np.sort(rng.choice(n, size=int(round(frac * n)), replace=False))
        shift = 0.0 if copy == 0 else float(rng.random() * shift_cap)
        times = trace.arrival_s[rows] + shift
        if span > 0:
            times = np.where(times > span, times - span, times)  # wrap around: span is kept
        parts.append((rows, times))
    arrivals = np.concatenate([t for _, t in parts]) if parts else np.empty(0)
    rows_all = np.concatenate([r for r, _ in parts]) if parts else np.empty(0, dtype=np.int64)
    hashes: list[tuple[int, ...]] = []
    for copy, (rows, _) in enumerate(parts if keep_hashes else ()):
        offset = copy * id_stride if distinct_prefixes else 0
        hashes.extend(_offset_hashes([source_hashes[i] for i in rows.tolist()], offset))
    order = np.argsort(arrivals, kind="stable")
    return Trace.from_columns(
        arrivals[order],
        trace.input_tokens[rows_all][order],
        trace.output_tokens[rows_all][order],
        [hashes[i] for i in order.tolist()] if keep_hashes else None,
        duration_s=span,
        source=f"{trace.source} superposed x{k:g}",
    )


def scale_rate(
    trace: Trace,
    k: float,
    *,
    method: Literal["superpose", "compress"] = "superpose",
    seed: int | np.random.Generator | None = None,
    max_shift_s: float | None = None,
    distinct_prefixes: bool = True,
) -> Trace:
    """Multiply the request rate by ``k``.

    superpose: the original plus floor(k) - 1 copies, each circularly shifted by a random offset
    (up to ``max_shift_s``, default the whole span; a small cap keeps a diurnal shape), plus a
    random round(frac(k) * n) rows of one more shifted copy; k < 1 thins. Needs ``seed``.
    Request ids are renumbered 0..n-1 in arrival order. With ``distinct_prefixes`` hash ids are
    renumbered densely (equal stays equal) and each copy takes a range of its own, so copies do
    not hit each other's prefix cache (no inflated hit rate).
    compress: ``time_compress(trace, k)``; deterministic.
    """
    if not (math.isfinite(k) and k > 0):
        raise ValueError(f"k must be a finite number > 0 (got {k})")
    if method == "compress":
        return time_compress(trace, k)
    if method != "superpose":
        raise ValueError(f"unknown method {method!r}; use 'superpose' or 'compress'")
    if seed is None:
        raise ValueError("superpose draws random shifts: pass seed= (an int or a numpy Generator)")
    if max_shift_s is not None and max_shift_s < 0:
        raise ValueError(f"max_shift_s must be >= 0 (got {max_shift_s})")
    if max(len(trace), 1) * k > MAX_SUPERPOSED_REQUESTS:
        raise ValueError(
            f"k={k:g} would make {len(trace) * k:,.0f} requests of {len(trace):,}, more than "
            f"{MAX_SUPERPOSED_REQUESTS:,}: use a smaller k or a slice of the trace"
        )
    return _superpose(trace, k, make_rng(seed), max_shift_s, distinct_prefixes)


def concat(traces: Sequence[Trace], gap_s: float = 0.0) -> Trace:
    """Play traces one after another: each starts ``gap_s`` after the previous one's duration.

    Request ids are renumbered 0..n-1; hash ids are kept (the same prompt stays cacheable).
    """
    if gap_s < 0:
        raise ValueError(f"gap_s must be >= 0 (got {gap_s})")
    if not traces:
        return Trace.from_columns([], [], [])
    starts = np.cumsum([0.0] + [t.duration_s + gap_s for t in traces[:-1]])
    return Trace.from_columns(
        np.concatenate([t.arrival_s + s for t, s in zip(traces, starts, strict=True)]),
        np.concatenate([t.input_tokens for t in traces]),
        np.concatenate([t.output_tokens for t in traces]),
        [h for t in traces for h in t.hash_ids] if any(t.has_hashes for t in traces) else None,
        duration_s=float(starts[-1] + traces[-1].duration_s),
        source=" + ".join(t.source for t in traces),
        skipped=sum(t.skipped for t in traces),
    )


def thin(
    trace: Trace,
    keep: Callable[[np.ndarray], np.ndarray],
    *,
    seed: int | np.random.Generator,
) -> Trace:
    """Keep each request with probability ``keep(arrival_s)`` (0..1, vectorised), e.g. a ramp
    that makes one kind of request come and go over the day. Times and lengths are unchanged."""
    p = np.asarray(keep(trace.arrival_s), dtype=np.float64)
    if p.shape != trace.arrival_s.shape or not np.all((p >= 0) & (p <= 1)):
        raise ValueError("keep(arrival_s) must return one probability in [0, 1] per request")
    rows = np.flatnonzero(make_rng(seed).random(len(trace)) < p)
    return Trace.from_columns(
        trace.arrival_s[rows],
        trace.input_tokens[rows],
        trace.output_tokens[rows],
        [trace.hash_ids[i] for i in rows.tolist()] if trace.has_hashes else None,
        duration_s=trace.duration_s,
        source=f"{trace.source} thinned",
    )


def overlay(traces: Sequence[Trace]) -> Trace:
    """Play traces at the same time (e.g. two request mixes of one service).

    Request ids are renumbered 0..n-1 in arrival order; each trace's hash ids are renumbered
    densely into a range of their own, so two traces never share a cached prefix by accident.
    """
    if not traces:
        return Trace.from_columns([], [], [])
    hashes: list[tuple[int, ...]] = []
    offset = 0
    for t in traces:
        dense, n_ids = _dense_hashes(t.hash_ids)
        hashes.extend(_offset_hashes(dense, offset))
        offset += n_ids
    arrivals = np.concatenate([t.arrival_s for t in traces])
    order = np.argsort(arrivals, kind="stable")
    return Trace.from_columns(
        arrivals[order],
        np.concatenate([t.input_tokens for t in traces])[order],
        np.concatenate([t.output_tokens for t in traces])[order],
        [hashes[i] for i in order.tolist()],
        duration_s=max(t.duration_s for t in traces),
        source=" + ".join(t.source for t in traces),
        skipped=sum(t.skipped for t in traces),
    )
