"""Readers for the public traces: Azure LLM inference CSV and BurstGPT CSV here, Mooncake and
Qwen-Bailian JSONL in `jsonl.py`; each plain or gzipped.

A bad row stops the load with the file, line and problem named, unless the caller asks to skip
such rows; skipped rows are counted on the trace so a report can say how many were dropped.
Bad rows: a line that is not UTF-8, a CSV row with the wrong column count or a field over the
csv module's limit (128 KiB), a JSONL line that is not one JSON object (or nests too deeply to
parse), a timestamp outside 1678-2261 (numpy's nanosecond range) or not a date, token counts
that are not integers in [min, MAX_TOKENS], hash ids outside [0, 2**63). Lines holding only
whitespace are not rows. Nothing but TraceError leaves a loader.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from heteroscale_ray.traces.jsonl import load_jsonl
from heteroscale_ray.traces.reading import (
    MAX_TOKENS,
    RowError,
    Skips,
    columnar,
    count_field,
    csv_batches,
    good_rows,
    is_gzipped,
    joined,
    short,
    stream_lines,
    utf8_lines,
)
from heteroscale_ray.traces.trace import Trace, TraceError

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT_COLUMNS = ("Timestamp", "Request tokens", "Response tokens")
YEARS = (1678, 2261)  # whole years numpy's datetime64[ns] holds

# '2023-11-16 18:15:46.6805900': up to 9 fractional digits (Azure writes 7), then an optional
# zone: the 2024 week-long Azure traces write '2024-05-12 00:00:01.5+00:00', some rows
# without the fraction. A zoned stamp is taken in UTC; a zone-less one as it is.
_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(Z|[+-]\d{2}:?\d{2})?"
)
TIMESTAMP_EXAMPLE = "'2023-11-16 18:15:46.6805900' (optionally with a zone: +00:00)"


_EPOCH_DAY = dt.date(1970, 1, 1).toordinal()  # same origin as numpy's datetime64
# A CSV format's reader: (path, header names, the lines after the header, skips) -> trace.
_CsvReader = Callable[[Path, list[str], Iterator[bytes], Skips], Trace]


def _timestamp_ns(text: str) -> int:
    """Nanoseconds since 1970-01-01 UTC (integer: no float rounding); a zone-less stamp is
    taken as UTC, a zoned one shifted by its offset."""
    m = _TIMESTAMP.fullmatch(text.strip())
    if m is None:
        raise RowError(f"TIMESTAMP {short(text)} is not like {TIMESTAMP_EXAMPLE}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if not YEARS[0] <= year <= YEARS[1]:
        raise RowError(f"TIMESTAMP {text!r}: the year must be in {YEARS[0]}..{YEARS[1]}")
    try:
        days = dt.date(year, month, day).toordinal() - _EPOCH_DAY
    except ValueError as e:
        raise RowError(f"TIMESTAMP {text!r} is not a valid date ({e})") from None
    if hour > 23 or minute > 59 or second > 59:
        raise RowError(f"TIMESTAMP {text!r} is not a valid time of day")
    frac = m.group(7) or ""
    nanos = int(frac.ljust(9, "0")) if frac else 0
    local = ((days * 24 + hour) * 60 + minute) * 60 * 10**9 + second * 10**9 + nanos
    return local - _zone_ns(m.group(8))


def _zone_ns(zone: str | None) -> int:
    """Nanoseconds a zone suffix ('Z', '+05:30', '-0800') is ahead of UTC; 0 without one."""
    if not zone or zone == "Z":
        return 0
    digits = zone[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:])
    if hours > 23 or minutes > 59:
        raise RowError(f"TIMESTAMP zone {zone!r} is not a valid UTC offset")
    sign = 1 if zone[0] == "+" else -1
    return sign * (hours * 60 + minutes) * 60 * 10**9


def _azure_fast(
    rows: list[tuple[int, list[str] | str]], cols: tuple[int, int, int], width: int
) -> tuple[Any, ...]:
    """Clean-file path: cheap per-row checks, timestamps parsed by numpy in one call.

    Returns None at the first doubt (any bad row, any date numpy rejects); the per-row path
    then finds and words the problem. Both paths accept exactly the same rows.
    """
    i_ts, i_in, i_out = cols
    stamps, inputs, outputs, zones = [], [], [], []
    match = _TIMESTAMP.fullmatch
    for _, row in rows:
        if isinstance(row, str) or len(row) != width:
            return None
        ts = row[i_ts].strip()
        m = match(ts)
        if m is None or not YEARS[0] <= int(ts[:4]) <= YEARS[1]:
            return None
        if m.group(8):  # numpy parses zone-less stamps only: the offset is taken off after
            try:
                zones.append((len(stamps), _zone_ns(m.group(8))))
            except RowError:
                return None
            ts = ts[: m.start(8)]
        try:
            inp, out = int(row[i_in]), int(row[i_out])
        except ValueError:
            return None
        if not (1 <= inp <= MAX_TOKENS and 0 <= out <= MAX_TOKENS):
            return None
        stamps.append(ts)
        inputs.append(inp)
        outputs.append(out)
    try:
        ns = np.array(stamps, dtype="datetime64[ns]").astype(np.int64)
    except ValueError:
        return None
    for i, offset in zones:
        ns[i] -= offset
    return ns, np.array(inputs, dtype=np.int64), np.array(outputs, dtype=np.int64)


def _azure_slow(
    rows: list[tuple[int, list[str] | str]],
    cols: tuple[int, int, int],
    names: list[str],
    skips: Skips,
) -> tuple[Any, ...]:
    return columnar(_parse_rows(rows, cols, names, skips, _timestamp_ns, AZURE_COLUMNS))


def _parse_rows(
    rows: list[tuple[int, list[str] | str]],
    cols: tuple[int, int, int],
    names: list[str],
    skips: Skips,
    stamp: Callable[[str], Any],
    columns: tuple[str, str, str],
) -> tuple[list[Any], list[int], list[int]]:
    """Each good CSV row's (`stamp` of its time, prompt, output tokens); a bad one is handed
    to `skips` (which raises unless skipping). `columns` name the three in errors."""
    i_ts, i_in, i_out = cols

    def parse(row: list[str] | str) -> tuple[Any, int, int]:
        if isinstance(row, str):
            raise RowError(row)
        if len(row) != len(names):
            raise RowError(f"expected {len(names)} columns ({','.join(names)}), got {len(row)}")
        return (
            stamp(row[i_ts]),
            count_field(row[i_in].strip(), columns[1], 1),
            count_field(row[i_out].strip(), columns[2], 0),
        )

    parsed = list(good_rows(rows, parse, skips))
    return [p[0] for p in parsed], [p[1] for p in parsed], [p[2] for p in parsed]


def load_azure_csv(path: str | Path, *, skip_malformed: bool = False) -> Trace:
    """Azure LLM inference trace: ``TIMESTAMP,ContextTokens,GeneratedTokens``.

    Arrivals count from the earliest row. Extra columns are ignored; a missing column in the
    header is always an error.
    """
    return _read_csv(path, skip_malformed, lambda _: _azure)


def load_burstgpt_csv(path: str | Path, *, skip_malformed: bool = False) -> Trace:
    """BurstGPT (github.com/HPMLL/BurstGPT): ``Timestamp,Model,Request tokens,Response
    tokens,Total tokens,Log Type``, Timestamp in seconds.

    Every row is one request of the replayed service, whatever its Model (filter the file
    first to replay one model). BurstGPT writes whole seconds, so requests logged in the
    same second arrive together. Arrivals count from the earliest row; extra columns are
    ignored.
    """
    return _read_csv(path, skip_malformed, lambda _: _burstgpt)


def load_csv(path: str | Path, *, skip_malformed: bool = False) -> Trace:
    """A CSV trace in whichever format its header names: BurstGPT when it has BurstGPT's
    columns and none of Azure's, else Azure (whose error then names what is missing)."""
    return _read_csv(path, skip_malformed, _format_of)


def _format_of(names: list[str]) -> _CsvReader:
    if not set(AZURE_COLUMNS) & set(names) and set(BURSTGPT_COLUMNS) & set(names):
        return _burstgpt
    return _azure


def _read_csv(
    path: str | Path, skip_malformed: bool, reader_for: Callable[[list[str]], _CsvReader]
) -> Trace:
    """Open `path`, read its header, and let the reader `reader_for` picks read the rest."""
    path = Path(path)
    with contextlib.closing(stream_lines(path)) as lines:
        names = _csv_header(path, lines)
        return reader_for(names)(path, names, lines, Skips(path, skip_malformed))


def _csv_header(path: Path, lines: Iterator[bytes]) -> list[str]:
    """The header's column names (stripped), read off `lines`."""
    bad_header: list[tuple[int, str]] = []
    first = next(lines, b"")
    header_text = next(utf8_lines([first], bad_header))
    for line, reason in bad_header:  # a bad header is never skipped
        raise TraceError(str(path), line, f"header is {reason}", row=False)
    try:
        header = next(csv.reader([header_text]), None)
    except csv.Error as e:
        raise TraceError(str(path), 1, f"header is not valid CSV ({e})", row=False) from None
    if not header_text.strip() or header is None:
        raise TraceError(
            str(path), None, "file is empty; expected a header " + ",".join(AZURE_COLUMNS)
        )
    return [h.strip() for h in header]


def _columns(path: Path, names: list[str], wanted: tuple[str, ...]) -> tuple[int, ...]:
    """Where each wanted column is; a missing one is always an error."""
    missing = [c for c in wanted if c not in names]
    if missing:
        raise TraceError(
            str(path),
            1,
            f"header lacks {', '.join(missing)}; expected {','.join(wanted)}",
            row=False,
        )
    return tuple(names.index(c) for c in wanted)


def _azure(path: Path, names: list[str], lines: Iterator[bytes], skips: Skips) -> Trace:
    cols = _columns(path, names, AZURE_COLUMNS)
    parts = [
        _azure_fast(rows, cols, len(names)) or _azure_slow(rows, cols, names, skips)
        for rows in csv_batches(lines)
    ]
    stamps, inputs, outputs = (joined(parts, i, np.int64) for i in range(3))
    return Trace.from_columns(
        _seconds_from_first(stamps),
        inputs,
        outputs,
        source=path.name,
        skipped=skips.count,
        skip_reasons=skips.reasons,
    )


def _burstgpt(path: Path, names: list[str], lines: Iterator[bytes], skips: Skips) -> Trace:
    cols = _columns(path, names, BURSTGPT_COLUMNS)
    parts = [
        columnar(_parse_rows(rows, cols, names, skips, _seconds, BURSTGPT_COLUMNS))
        for rows in csv_batches(lines)
    ]
    stamps = joined(parts, 0, np.float64)
    inputs, outputs = joined(parts, 1, np.int64), joined(parts, 2, np.int64)
    return Trace.from_columns(
        stamps - stamps.min() if len(stamps) else stamps,
        inputs,
        outputs,
        source=path.name,
        skipped=skips.count,
        skip_reasons=skips.reasons,
    )


def _seconds(text: str) -> float:
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise RowError(f"Timestamp {short(text)} is not a non-negative number of seconds")
    return value


def _seconds_from_first(stamps: np.ndarray) -> np.ndarray:
    """Nanosecond stamps -> seconds since the earliest. A span over 292 years would overflow
    int64 nanoseconds: whole seconds and nanoseconds are then subtracted apart."""
    if not len(stamps):
        return np.zeros(0)
    first = stamps.min()
    if int(stamps.max()) - int(first) < 2**63:
        return (stamps - first) / 1e9
    secs, nanos = np.divmod(stamps, 10**9)
    fs, fn = divmod(int(first), 10**9)
    return (secs - fs).astype(np.float64) + (nanos - fn) / 1e9


def load_trace(path: str | Path, *, skip_malformed: bool = False) -> Trace:
    """Load by suffix: ``.csv`` (Azure or BurstGPT, by its header) or ``.jsonl``/``.json``
    (Mooncake or Qwen-Bailian, by its first row), each also gzipped (``.csv.gz``, as Azure
    publishes some)."""
    path = Path(path)
    suffix = (path.with_suffix("") if is_gzipped(path) else path).suffix.lower()
    if suffix == ".csv":
        return load_csv(path, skip_malformed=skip_malformed)
    if suffix in (".jsonl", ".json"):
        return load_jsonl(path, skip_malformed=skip_malformed)
    raise TraceError(
        str(path),
        None,
        f"unknown trace format {suffix!r}; use .csv (Azure, BurstGPT) or .jsonl (Mooncake,"
        " Qwen-Bailian), optionally gzipped (.csv.gz)",
    )
