"""Readers for JSON-lines traces: Mooncake's and Alibaba's Qwen-Bailian usage traces.

Both hold one request a line with `timestamp`, `input_length`, `output_length` and optional
`hash_ids` (ids of the prompt's blocks: equal ids, a shared cacheable prefix), but they differ
where a wrong guess is silent: Mooncake's timestamps are milliseconds and its blocks 512
tokens; Qwen-Bailian's (rows that also carry `chat_id` and `parent_chat_id`) are seconds and
16-token blocks. Read as Mooncake, a two-hour Bailian trace would arrive within 7.2 s. A file
is one format, told by its first row that parses; a row of the other is malformed.

The simulator's prefix cache counts 512-token blocks (`trace.BLOCK_TOKENS`), so Bailian's
16-token ids are regrouped at load: each run of 32 becomes one id, chained to the ids before it
as a prefix hash is, so two prompts share a 512-token block exactly when they share all 32 of
its small blocks and everything before them. A shared prefix shorter than one 512-token block
(a short system prompt) is then no hit, as on Mooncake's traces.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heteroscale_ray.traces.reading import (
    MAX_TOKENS,
    RowError,
    Skips,
    good_rows,
    short,
    stream_lines,
    utf8_lines,
)
from heteroscale_ray.traces.trace import BLOCK_TOKENS, Trace

REQUIRED_KEYS = ("timestamp", "input_length", "output_length")
BAILIAN_KEYS = ("chat_id", "parent_chat_id")  # on every Qwen-Bailian row, on no Mooncake row
MAX_HASH_ID = 2**63 - 1


@dataclass(frozen=True)
class JsonlFormat:
    """What a JSONL trace's timestamps and hash ids mean."""

    name: str
    timestamp_unit: str  # as errors name it
    units_per_second: float
    block_tokens: int  # tokens each hash id covers


MOONCAKE = JsonlFormat("Mooncake", "milliseconds", 1000.0, BLOCK_TOKENS)
QWEN_BAILIAN = JsonlFormat("Qwen-Bailian", "seconds", 1.0, 16)


def format_of(obj: dict[str, Any]) -> JsonlFormat:
    return QWEN_BAILIAN if all(k in obj for k in BAILIAN_KEYS) else MOONCAKE


def _json_count(obj: dict[str, Any], key: str, minimum: int) -> int:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RowError(f"{key} {short(value)} is not an integer")
    if isinstance(value, float) and not value.is_integer():
        raise RowError(f"{key} {value!r} is not an integer")
    if value < minimum:
        raise RowError(f"{key} must be >= {minimum} (got {short(value)})")
    if value > MAX_TOKENS:
        raise RowError(f"{key} must be <= {MAX_TOKENS} (got {short(value)})")
    return int(value)


def _json_object(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise RowError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    except ValueError as e:  # e.g. an integer of more than 4,300 digits
        raise RowError(f"not valid JSON ({e})") from None
    except RecursionError:
        raise RowError("not valid JSON (nests too deeply to parse)") from None
    if not isinstance(obj, dict):
        raise RowError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _finite(x: int | float) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an integer past float's range (JSON sets no limit)
        return False


def regroup(ids: list[int], block_tokens: int) -> tuple[int, ...]:
    """Ids of `block_tokens`-token blocks as ids of BLOCK_TOKENS-token blocks, each chained to
    all ids before it (equal output ids: equal prompts up to the end of that block)."""
    per = BLOCK_TOKENS // block_tokens
    if per == 1:
        return tuple(ids)
    data = struct.pack(f"<{len(ids)}Q", *ids)  # each id's 8 little-endian bytes, in order
    step = per * 8
    out: list[int] = []
    prefix = hashlib.blake2b(digest_size=8)
    for lo in range(0, len(data), step):
        prefix.update(data[lo : lo + step])
        out.append(int.from_bytes(prefix.copy().digest(), "little") & MAX_HASH_ID)
    return tuple(out)


class _Rows:
    """Parses a file's rows; the first row that parses fixes the file's format."""

    def __init__(self) -> None:
        self.format: JsonlFormat | None = None

    def parse(self, text: str) -> tuple[float, int, int, tuple[int, ...]]:
        obj = _json_object(text)
        missing = [k for k in REQUIRED_KEYS if k not in obj]
        if missing:
            raise RowError(f"missing key {', '.join(missing)}")
        fmt = format_of(obj)
        if self.format is not None and fmt is not self.format:
            raise RowError(
                f"a {fmt.name} row in a {self.format.name} trace (the first row that parsed "
                f"decides: {' and '.join(BAILIAN_KEYS)} on a row mean Qwen-Bailian)"
            )
        ts = obj["timestamp"]
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not _finite(ts) or ts < 0:
            raise RowError(
                f"timestamp {short(ts)} is not a non-negative number of {fmt.timestamp_unit}"
            )
        inp = _json_count(obj, "input_length", 1)
        out = _json_count(obj, "output_length", 0)
        raw = obj.get("hash_ids", [])
        # `type(h) is int` keeps out bools, which JSON's true and false would be
        if not isinstance(raw, list) or (
            raw
            and not (all(type(h) is int for h in raw) and min(raw) >= 0 and max(raw) <= MAX_HASH_ID)
        ):
            raise RowError("hash_ids must be a list of integers in [0, 2**63)")
        blocks = -(-inp // fmt.block_tokens)
        if len(raw) > blocks:
            # extra ids would fill the prefix cache with blocks no prompt holds
            raise RowError(
                f"hash_ids lists {len(raw)} blocks, but an input_length of {inp} tokens has "
                f"{blocks} of {fmt.block_tokens} tokens (a trace hashed in smaller blocks?)"
            )
        self.format = fmt
        return float(ts), inp, out, regroup(raw, fmt.block_tokens)


def _jsonl_lines(lines: Iterator[bytes], skips: Skips) -> Iterator[tuple[int, str]]:
    """The non-blank lines with their numbers; one that is not UTF-8 goes to `skips`. Lines
    end at "\\n" only: JSON strings may hold U+2028 and friends, which splitlines cuts."""
    bad: list[tuple[int, str]] = []
    for line, raw in enumerate(utf8_lines(lines, bad), start=1):
        if bad:
            skips.bad(*bad.pop())
        elif raw.strip():
            yield line, raw


def load_jsonl(path: str | Path, *, skip_malformed: bool = False) -> Trace:
    """A Mooncake or Qwen-Bailian JSONL trace (see the module's docstring for how they are
    told apart). Arrivals count from the earliest row."""
    path = Path(path)
    skips = Skips(path, skip_malformed)
    rows = _Rows()
    with contextlib.closing(stream_lines(path)) as lines:
        parsed = list(good_rows(_jsonl_lines(lines, skips), rows.parse, skips))
    stamps = [r[0] for r in parsed]  # in the format's unit
    first = min(stamps, default=0.0)
    per_s = (rows.format or MOONCAKE).units_per_second
    return Trace.from_columns(
        [(s - first) / per_s for s in stamps],
        [r[1] for r in parsed],
        [r[2] for r in parsed],
        hash_ids=[r[3] for r in parsed],
        source=path.name,
        skipped=skips.count,
        skip_reasons=skips.reasons,
    )
