"""How a trace file is read, whatever its format: lines streamed as needed (through gzip for
a .gz name), UTF-8 checked line by line, CSV rows in batches with their line numbers, and the
bad-row bookkeeping (raise on the first, or skip and count). A week of Azure traffic is tens
of millions of rows: only parsed columns outlive a batch."""

from __future__ import annotations

import csv
import gzip
import itertools
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from heteroscale_ray.traces.trace import TraceError

BATCH_ROWS = 1 << 16  # rows parsed at a time: their Python objects are freed before the next
KEPT_REASONS = 5  # skip reasons kept on the trace; the count covers all of them
MAX_TOKENS = 2**31 - 1  # token counts above this are malformed (and would overflow columns)

_Row = TypeVar("_Row")
_Parsed = TypeVar("_Parsed")


class RowError(Exception):
    """What is wrong with one row; the loader adds file and line."""


class Skips:
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


def good_rows(
    rows: Iterable[tuple[int, _Row]], parse: Callable[[_Row], _Parsed], skips: Skips
) -> Iterator[_Parsed]:
    """Each (line, row) parsed; a row `parse` refuses (RowError) goes to `skips`, which
    raises unless skipping."""
    for line, row in rows:
        try:
            yield parse(row)
        except RowError as e:
            skips.bad(line, str(e))


def count_field(text: str, column: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise RowError(f"{column} {short(text)} is not an integer") from None
    if value < minimum:
        raise RowError(f"{column} must be >= {minimum} (got {short(value)})")
    if value > MAX_TOKENS:
        raise RowError(f"{column} must be <= {MAX_TOKENS} (got {short(value)})")
    return value


def short(value: object) -> str:
    """A value quoted in an error, cut to 60 characters (a field may be 128 KiB)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def utf8_lines(
    lines: Iterable[bytes], bad: list[tuple[int, str]], first_line: int = 1
) -> Iterator[str]:
    """Each line (split after b"\\n") decoded as it is read; a line that is not UTF-8 is
    appended to `bad` and read as an empty line (so later line numbers stay right)."""
    for line, chunk in enumerate(lines, start=first_line):
        try:
            text = chunk.decode("utf-8-sig" if line == 1 else "utf-8")
        except UnicodeDecodeError as e:
            bad.append((line, f"not UTF-8 (byte 0x{chunk[e.start]:02x} at column {e.start + 1})"))
            text = "\n" if chunk.endswith(b"\n") else ""
        yield text


GZIP_MAGIC = b"\x1f\x8b"


def stream_lines(path: Path) -> Iterator[bytes]:
    """The file's lines, each with its b"\\n", read as they are needed (through gzip when
    the name ends in .gz). Gzip under another name is refused with the name to use: read as
    text its first line is not UTF-8, and skipping such rows leaves nothing."""
    packed = is_gzipped(path)
    try:
        with gzip.open(path, "rb") if packed else path.open("rb") as f:
            if not packed and f.peek(len(GZIP_MAGIC)).startswith(GZIP_MAGIC):
                raise TraceError(
                    str(path), None, f"looks gzipped: name it {path.name}.gz", row=False
                )
            yield from f
    except (OSError, EOFError, zlib.error) as e:  # gzip: cut short, corrupt
        raise TraceError(
            str(path), None, f"cannot read file: {getattr(e, 'strerror', None) or e}"
        ) from None


def is_gzipped(path: Path) -> bool:
    return path.suffix.lower() == ".gz"


def csv_batches(lines: Iterator[bytes]) -> Iterator[list[tuple[int, list[str] | str]]]:
    """`csv_rows` in lists of `BATCH_ROWS`."""
    rows = csv_rows(lines)
    while batch := list(itertools.islice(rows, BATCH_ROWS)):
        yield batch


def csv_rows(lines: Iterator[bytes]) -> Iterator[tuple[int, list[str] | str]]:
    """The non-blank CSV rows after the header, in file order with their line numbers; a line
    that is not UTF-8 or a row the csv module refuses (e.g. a field over its size limit) comes
    as the reason it is bad instead of a row."""
    bad: list[tuple[int, str]] = []
    reader = csv.reader(utf8_lines(lines, bad, first_line=2))
    while True:
        before = reader.line_num
        try:
            row: list[str] | None = next(reader)
        except StopIteration:
            yield from bad
            return
        except csv.Error as e:
            bad.append((reader.line_num + 1, f"not valid CSV ({e})"))
            row = None
            if reader.line_num == before:  # no progress: nothing more can be read
                yield from bad
                return
        yield from bad
        bad.clear()
        if row is not None and any(cell.strip() for cell in row):
            yield reader.line_num + 1, row


def columnar(parsed: tuple[list[Any], list[int], list[int]]) -> tuple[np.ndarray, ...]:
    """One batch's parsed lists as arrays: a batch's Python objects are freed before the next."""
    stamps, inputs, outputs = parsed
    return np.array(stamps), np.array(inputs, dtype=np.int64), np.array(outputs, dtype=np.int64)


def joined(parts: list[tuple[np.ndarray, ...]], i: int, dtype: type) -> np.ndarray:
    return (
        np.concatenate([p[i] for p in parts]).astype(dtype, copy=False)
        if parts
        else np.zeros(0, dtype)
    )
