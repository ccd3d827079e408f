"""Readers for the public traces: Azure LLM inference CSV and Mooncake JSONL.

A bad row stops the load with the file, line and problem named, unless the caller asks to skip
such rows; skipped rows are counted on the trace so a report can say how many were dropped.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from heteroscale_ray.traces.trace import Trace, TraceError

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")
KEPT_REASONS = 5  # skip reasons kept on the trace; the count covers all of them

# '2023-11-16 18:15:46.6805900': up to 9 fractional digits (Azure writes 7), no zone.
_TIMESTAMP = re.compile(r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?")


_EPOCH_DAY = dt.date(1970, 1, 1).toordinal()  # same origin as numpy's datetime64


class _RowError(Exception):
    """Internal: what is wrong with one row; the loader adds file and line."""


class _Skips:
    """Either raise on the first bad row or count bad rows, keeping the first reasons."""

    def __init__(self, path: Path, skip: bool) -> None:
        self.path = str(path)
        self.skip = skip
        self.count = 0
        self.reasons: list[str] = []

    def bad(self, line: int, reason: str) -> None:
        if not self.skip:
            raise TraceError(self.path, line, reason)
        self.count += 1
        if len(self.reasons) < KEPT_REASONS:
            self.reasons.append(f"line {line}: {reason}")


def _count(text: str, column: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _RowError(f"{column} {text!r} is not an integer") from None
    if value < minimum:
        raise _RowError(f"{column} must be >= {minimum} (got {value})")
    return value


def _timestamp_ns(text: str) -> int:
    """Nanoseconds since 1970-01-01 of a zone-less timestamp (integer: no float rounding)."""
    m = _TIMESTAMP.fullmatch(text.strip())
    if m is None:
        raise _RowError(f"TIMESTAMP {text!r} is not like '2023-11-16 18:15:46.6805900'")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    try:
        days = dt.date(year, month, day).toordinal() - _EPOCH_DAY
    except ValueError as e:
        raise _RowError(f"TIMESTAMP {text!r} is not a valid date ({e})") from None
    if hour > 23 or minute > 59 or second > 59:
        raise _RowError(f"TIMESTAMP {text!r} is not a valid time of day")
    frac = m.group(7) or ""
    nanos = int(frac.ljust(9, "0")) if frac else 0
    return ((days * 24 + hour) * 60 + minute) * 60 * 10**9 + second * 10**9 + nanos


def _azure_fast(
    rows: list[tuple[int, list[str]]], cols: tuple[int, int, int], width: int
) -> tuple[Any, ...]:
    """Clean-file path: cheap per-row checks, timestamps parsed by numpy in one call.

    Returns None at the first doubt (any bad row, any date numpy rejects); the per-row path
    then finds and words the problem. Both paths accept exactly the same rows.
    """
    i_ts, i_in, i_out = cols
    stamps, inputs, outputs = [], [], []
    match = _TIMESTAMP.fullmatch
    for _, row in rows:
        if len(row) != width:
            return None
        ts = row[i_ts].strip()
        if match(ts) is None:
            return None
        try:
            inp, out = int(row[i_in]), int(row[i_out])
        except ValueError:
            return None
        if inp < 1 or out < 0:
            return None
        stamps.append(ts)
        inputs.append(inp)
        outputs.append(out)
    try:
        ns = np.array(stamps, dtype="datetime64[ns]").astype(np.int64)
    except ValueError:
        return None
    return ns, inputs, outputs


def _azure_slow(
    rows: list[tuple[int, list[str]]], cols: tuple[int, int, int], names: list[str], skips: _Skips
) -> tuple[Any, ...]:
    i_ts, i_in, i_out = cols
    stamps: list[int] = []
    inputs: list[int] = []
    outputs: list[int] = []
    for line, row in rows:
        try:
            if len(row) != len(names):
                raise _RowError(
                    f"expected {len(names)} columns ({','.join(names)}), got {len(row)}"
                )
            ts = _timestamp_ns(row[i_ts])
            inp = _count(row[i_in].strip(), "ContextTokens", 1)
            out = _count(row[i_out].strip(), "GeneratedTokens", 0)
        except _RowError as e:
            skips.bad(line, str(e))
            continue
        stamps.append(ts)
        inputs.append(inp)
        outputs.append(out)
    return np.array(stamps, dtype=np.int64), inputs, outputs


def load_azure_csv(path: str | Path, *, skip_malformed: bool = False) -> Trace:
    """Azure LLM inference trace: ``TIMESTAMP,ContextTokens,GeneratedTokens``.

    Arrivals count from the earliest row. Extra columns are ignored; a missing column in the
    header is always an error.
    """
    path = Path(path)
    skips = _Skips(path, skip_malformed)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as e:
        raise TraceError(str(path), None, f"cannot read file: {e.strerror}") from None
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise TraceError(
                str(path), None, "file is empty; expected a header " + ",".join(AZURE_COLUMNS)
            )
        names = [h.strip() for h in header]
        missing = [c for c in AZURE_COLUMNS if c not in names]
        if missing:
            raise TraceError(
                str(path),
                1,
                f"header lacks {', '.join(missing)}; expected {','.join(AZURE_COLUMNS)}",
            )
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    cols = (
        names.index(AZURE_COLUMNS[0]),
        names.index(AZURE_COLUMNS[1]),
        names.index(AZURE_COLUMNS[2]),
    )
    parsed = _azure_fast(rows, cols, len(names)) or _azure_slow(rows, cols, names, skips)
    stamps, inputs, outputs = parsed
    first = stamps.min() if len(stamps) else 0
    return Trace.from_columns(
        (stamps - first) / 1e9,
        inputs,
        outputs,
        source=path.name,
        skipped=skips.count,
        skip_reasons=skips.reasons,
    )


def _json_count(obj: dict[str, Any], key: str, minimum: int) -> int:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _RowError(f"{key} {value!r} is not an integer")
    if isinstance(value, float) and not value.is_integer():
        raise _RowError(f"{key} {value!r} is not an integer")
    if value < minimum:
        raise _RowError(f"{key} must be >= {minimum} (got {value})")
    return int(value)


def _mooncake_row(text: str) -> tuple[float, int, int, tuple[int, ...]]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise _RowError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise _RowError(f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in MOONCAKE_KEYS if k not in obj]
    if missing:
        raise _RowError(f"missing key {', '.join(missing)}")
    ts = obj["timestamp"]
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts) or ts < 0:
        raise _RowError(f"timestamp {ts!r} is not a non-negative number of milliseconds")
    inp = _json_count(obj, "input_length", 1)
    out = _json_count(obj, "output_length", 0)
    raw = obj.get("hash_ids", [])
    if not isinstance(raw, list) or any(
        isinstance(h, bool) or not isinstance(h, int) or h < 0 for h in raw
    ):
        raise _RowError("hash_ids must be a list of non-negative integers")
    return float(ts), inp, out, tuple(raw)


def load_mooncake_jsonl(path: str | Path, *, skip_malformed: bool = False) -> Trace:
    """Mooncake trace: one JSON object a line with ``timestamp`` (ms), ``input_length``,
    ``output_length`` and ``hash_ids``. Arrivals count from the earliest row."""
    path = Path(path)
    skips = _Skips(path, skip_malformed)
    stamps: list[float] = []
    inputs: list[int] = []
    outputs: list[int] = []
    hashes: list[tuple[int, ...]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise TraceError(str(path), None, f"cannot read file: {e.strerror}") from None
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            ts, inp, out, h = _mooncake_row(raw)
        except _RowError as e:
            skips.bad(line, str(e))
            continue
        stamps.append(ts)
        inputs.append(inp)
        outputs.append(out)
        hashes.append(h)
    first = min(stamps, default=0.0)
    return Trace.from_columns(
        [(s - first) / 1000.0 for s in stamps],
        inputs,
        outputs,
        hash_ids=hashes,
        source=path.name,
        skipped=skips.count,
        skip_reasons=skips.reasons,
    )


def load_trace(path: str | Path, *, skip_malformed: bool = False) -> Trace:
    """Load by suffix: ``.csv`` (Azure) or ``.jsonl``/``.json`` (Mooncake)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return load_azure_csv(path, skip_malformed=skip_malformed)
    if suffix in (".jsonl", ".json"):
        return load_mooncake_jsonl(path, skip_malformed=skip_malformed)
    raise TraceError(
        str(path), None, f"unknown trace format {suffix!r}; use .csv (Azure) or .jsonl (Mooncake)"
    )
