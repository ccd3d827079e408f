"""Fuzzing the trace loaders: generated Azure CSV and Mooncake JSONL files, each row valid or
broken in one known way (bad UTF-8, wrong column count, a bad date, a year numpy cannot hold,
counts negative, fractional, huge or not numbers, JSON that is not an object or nests deeply).

With `skip_malformed` a load keeps exactly the valid rows (with the same values a file of only
those rows gives: the clean fast path and the per-row path agree) and counts the broken ones;
without it, the first broken row is a TraceError naming its line. Random bytes give a Trace or
a TraceError, never another exception.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heteroscale_ray.traces import Trace, TraceError, load_trace
from heteroscale_ray.traces.loaders import MAX_TOKENS, YEARS

FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-traces")


# ---- Azure CSV ----
stamps = st.builds(
    lambda t, frac, sep, zone: (
        t.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + (f".{frac}" if frac else "") + zone
    ),
    st.datetimes(dt.datetime(YEARS[0], 1, 1), dt.datetime(YEARS[1], 12, 31, 23, 59, 59)),
    st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=9)),
    st.sampled_from([" ", "T"]),
    st.sampled_from(["", "", "Z", "+00:00", "-05:30", "+0100", "+23:59"]),
)
bad_stamps = st.one_of(
    st.sampled_from(["2023-02-30 00:00:00", "2023-13-01 00:00:00", "2023-01-01 24:00:00",
                     "2023-01-01 00:60:00", "2023-01-01", "0000-01-01 00:00:00", "",
                     "2023-01-01 00:00:00.1234567890", "2023-01-01 00:00:00+24:00",
                     "2023-01-01 00:00:00+01:60", "2023-01-01 00:00:00+1", "2023-01-01 00:00:00 Z"]),
    st.integers(1000, YEARS[0] - 1).map(lambda y: f"{y}-06-01 00:00:00"),
    st.integers(YEARS[1] + 1, 9999).map(lambda y: f"{y}-06-01 00:00:00"),
    st.text("abcxyz :-./", min_size=1, max_size=12),
)  # fmt: skip


def counts(minimum: int) -> st.SearchStrategy[str]:
    return st.integers(minimum, MAX_TOKENS).map(str)


def bad_counts(minimum: int) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["1.5", "abc", "", "1e3", "--1", "1\x00", "9" * 5000, str(MAX_TOKENS + 1)]),
        st.integers(-(10**30), minimum - 1).map(str),
        st.integers(MAX_TOKENS + 1, 10**30).map(str),
    )


@st.composite
def azure_file(draw: st.DrawFn) -> tuple[bytes, list[int], list[tuple[str, int, int]]]:
    """(file bytes, lines of broken rows, the valid rows in file order)."""
    extra = draw(st.lists(st.sampled_from(["Model", "Region", "x"]), max_size=2, unique=True))
    header = draw(st.permutations(["TIMESTAMP", "ContextTokens", "GeneratedTokens", *extra]))
    lines: list[bytes] = [",".join(header).encode()]
    bad: list[int] = []
    good: list[tuple[str, int, int]] = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(
            st.sampled_from(["good", "good", "blank", "stamp", "in", "out", "cols", "utf8"])
        )
        cells = {
            "TIMESTAMP": draw(stamps),
            "ContextTokens": draw(counts(1)),
            "GeneratedTokens": draw(counts(0)),
            **{name: draw(st.text("abc", max_size=3)) for name in extra},
        }
        if kind == "stamp":
            cells["TIMESTAMP"] = draw(bad_stamps)
        elif kind == "in":
            cells["ContextTokens"] = draw(bad_counts(1))
        elif kind == "out":
            cells["GeneratedTokens"] = draw(bad_counts(0))
        row = [cells[name] for name in header]
        if kind == "cols":
            row = row[:-1] if draw(st.booleans()) else [*row, "1"]
        text = ",".join(row).encode()
        if kind == "blank":
            text = b"," * draw(st.integers(0, 3))
        elif kind == "utf8":
            text += draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"]))
        lines.append(text)
        if kind == "good":
            good.append(
                (cells["TIMESTAMP"], int(cells["ContextTokens"]), int(cells["GeneratedTokens"]))
            )
        elif kind != "blank":
            bad.append(len(lines))
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    return newline.join(lines) + draw(st.sampled_from([b"", newline])), bad, good


# ---- Mooncake JSONL ----
good_objects = st.fixed_dictionaries(
    {
        "timestamp": st.one_of(st.integers(0, 10**12), st.floats(0, 1e12)),
        "input_length": st.integers(1, MAX_TOKENS),
        "output_length": st.integers(0, MAX_TOKENS),
    },
    optional={"hash_ids": st.lists(st.integers(0, 2**63 - 1), max_size=4), "x": st.text()},
)
bad_lines = st.one_of(
    st.sampled_from(
        [b"[]", b"5", b'"x"', b"null", b"{", b"{}", b'{"timestamp": 1}', b"\xff", b"{\"a\": \xc3}",
         b'{"timestamp": NaN, "input_length": 1, "output_length": 1}',
         b'{"timestamp": -1, "input_length": 1, "output_length": 1}',
         b'{"timestamp": 1, "input_length": 1.5, "output_length": 1}',
         b'{"timestamp": 1, "input_length": true, "output_length": 1}',
         b'{"timestamp": 1, "input_length": 1e300, "output_length": 1}',
         b'{"timestamp": 1, "input_length": 1, "output_length": -1}',
         b'{"timestamp": 1, "input_length": 1, "output_length": 1, "hash_ids": [-1]}',
         b'{"timestamp": 1, "input_length": 1, "output_length": 1, "hash_ids": [18446744073709551616]}',
         b'{"timestamp": 1, "input_length": 1, "output_length": 1, "hash_ids": 3}',
         b'{"timestamp": 1, "input_length": 1, "output_length": 1, "hash_ids": [1, 2]}',
         b'{"timestamp": 1, "input_length": ' + b"9" * 5000 + b', "output_length": 1}']
    ),
    st.integers(100, 20_000).map(lambda d: b"[" * d + b"]" * d),
)  # fmt: skip


@st.composite
def mooncake_file(draw: st.DrawFn) -> tuple[bytes, list[int], list[dict[str, Any]]]:
    lines: list[bytes] = []
    bad: list[int] = []
    good: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["good", "good", "blank", "bad"]))
        if kind == "good":
            obj = draw(good_objects)
            if "hash_ids" in obj:  # one id per 512-token block of the prompt, at most
                obj["hash_ids"] = obj["hash_ids"][: -(-obj["input_length"] // 512)]
            lines.append(json.dumps(obj).encode())  # ensure_ascii: U+2028 stays escaped
            if draw(st.booleans()):  # ... or raw, which splitlines() would cut in two
                lines[-1] = json.dumps({**obj, "x": "a\u2028b"}, ensure_ascii=False).encode()
            good.append(obj)
        elif kind == "blank":
            lines.append(draw(st.sampled_from([b"", b"  ", b"\t", b"\r"])))
        else:
            lines.append(draw(bad_lines))
            bad.append(len(lines))
    return b"\n".join(lines) + draw(st.sampled_from([b"", b"\n"])), bad, good


# ---- the properties ----
def _loads(path: Path, data: bytes, bad: list[int]) -> Trace:
    """Load `data` both ways; check skip counts and the strict load's first error; return the
    lenient load's trace."""
    path.write_bytes(data)
    lenient = load_trace(path, skip_malformed=True)
    assert lenient.skipped == len(bad), (lenient.skip_reasons, bad)
    assert [int(r.split(":")[0].removeprefix("line ")) for r in lenient.skip_reasons] == bad[:5]
    if bad:
        with pytest.raises(TraceError) as err:
            load_trace(path)
        assert err.value.line == bad[0] and err.value.path == str(path), str(err.value)
        assert (
            str(err.value) == f"{path} line {bad[0]}: {lenient.skip_reasons[0].split(': ', 1)[1]}"
        )
    else:
        strict = load_trace(path)
        assert np.array_equal(strict.arrival_s, lenient.arrival_s)
    return lenient


@FUZZ
@given(case=azure_file())
def test_azure_rows_are_kept_or_counted_and_named(
    workdir: Path, case: tuple[bytes, list[int], list[tuple[str, int, int]]]
) -> None:
    data, bad, good = case
    trace = _loads(workdir / "t.csv", data, bad)
    assert len(trace) == len(good)
    # The same valid rows alone (the clean-file fast path) give the same trace.
    header = data.split(b"\n", 1)[0].rstrip(b"\r")
    order = header.decode().split(",")
    clean = [header] + [
        ",".join(
            {"TIMESTAMP": s, "ContextTokens": str(i), "GeneratedTokens": str(o)}.get(n, "")
            for n in order
        ).encode()
        for s, i, o in good
    ]
    alone = workdir / "clean.csv"
    alone.write_bytes(b"\n".join(clean))
    ref = load_trace(alone)
    assert np.array_equal(ref.arrival_s, trace.arrival_s)
    assert np.array_equal(ref.input_tokens, trace.input_tokens)
    assert sorted(trace.input_tokens.tolist()) == sorted(i for _, i, _ in good)


@FUZZ
@given(case=mooncake_file())
def test_mooncake_rows_are_kept_or_counted_and_named(
    workdir: Path, case: tuple[bytes, list[int], list[dict[str, Any]]]
) -> None:
    data, bad, good = case
    trace = _loads(workdir / "t.jsonl", data, bad)
    assert len(trace) == len(good)
    want = sorted((o["input_length"], o["output_length"]) for o in good)
    got = sorted(zip(trace.input_tokens.tolist(), trace.output_tokens.tolist(), strict=True))
    assert got == want


@settings(FUZZ, max_examples=200)
@given(suffix=st.sampled_from([".csv", ".jsonl"]), data=st.binary(max_size=300))
def test_random_bytes_give_a_trace_or_a_trace_error(
    workdir: Path, suffix: str, data: bytes
) -> None:
    path = workdir / f"r{suffix}"
    path.write_bytes(data)
    for skip in (False, True):
        try:
            load_trace(path, skip_malformed=skip)
        except TraceError as e:
            assert str(e).startswith(str(path)) and e.reason
