"""What the simulator's commands share: the trace `--trace` names, a progress line, JSON-safe
numbers."""

from __future__ import annotations

import math
import sys
from typing import Any

SKIP_HINT = " (--skip-malformed skips such rows and counts them)"
# A file of at least IMPLAUSIBLE_MIN_REQUESTS read at this many requests a second or more, over
# a short span, more likely holds timestamps in a coarser unit than its format reads (a Mooncake
# file written in seconds reads 1,000x faster).
IMPLAUSIBLE_MIN_REQUESTS = 1000
IMPLAUSIBLE_RATE = 2_000.0
IMPLAUSIBLE_SPAN_S = 600.0
UNIT_HINT = (
    "if its timestamps are in a coarser unit than the format reads (Mooncake's are "
    "milliseconds: a file written in seconds replays 1,000x compressed), the load is not real"
)


def progress(label: str):  # noqa: ANN202
    """Progress on stderr: one line redrawn in place on a terminal; into a file or pipe, whole
    lines at every 10% (no partial line is left behind when the run is interrupted)."""
    redraw = sys.stderr.isatty()
    shown = [-1]

    def report(now: float, total: float) -> None:
        pct = min(100.0, 100.0 * now / total) if total > 0 else 100.0
        text = f"[{label}] {now:7.0f}/{total:.0f} s simulated ({pct:5.1f}%)"
        # one write() per line: Ctrl-C cannot land between a line and its newline
        if redraw:
            sys.stderr.write(f"\r{text}")
            sys.stderr.flush()
        elif int(pct // 10) > shown[0]:
            shown[0] = int(pct // 10)
            sys.stderr.write(f"{text}\n")

    return report


def clean(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    return obj


def load_trace_or_say(arg: str, skip_malformed: bool = False) -> Any:
    """The trace `--trace` names, or None after printing why not. A bad row's error says how
    to skip such rows; skipped rows are counted on stderr, so a report can say what it left out."""
    from heteroscale_ray.traces import TraceError
    from heteroscale_ray.traces.samples import load_trace_arg

    try:
        trace = load_trace_arg(arg, skip_malformed=skip_malformed)
    except (TraceError, OSError) as err:
        hint = isinstance(err, TraceError) and err.row and not skip_malformed
        print(f"{err}{SKIP_HINT if hint else ''}", file=sys.stderr)
        return None
    if trace.skipped:
        reasons = "; ".join(trace.skip_reasons)
        print(f"skipped {trace.skipped} malformed row(s) of {arg} ({reasons})", file=sys.stderr)
    if note := rate_note(len(trace), trace.duration_s):
        print(f"{trace.source}: {note}", file=sys.stderr)
    return trace


def rate_note(requests: int, span_s: float) -> str | None:
    """A note when `requests` over `span_s` arrive implausibly fast for a real trace."""
    if requests < IMPLAUSIBLE_MIN_REQUESTS or span_s >= IMPLAUSIBLE_SPAN_S:
        return None
    rate = requests / max(span_s, 1e-3)
    if rate < IMPLAUSIBLE_RATE:
        return None
    return f"{requests:,} requests arrive within {span_s:,.1f} s ({rate:,.0f} req/s): {UNIT_HINT}"
