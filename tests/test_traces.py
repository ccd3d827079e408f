"""Traces: the two public files load with the SOURCES.md statistics, the packaged samples are
exact excerpts of them, bad rows are named or counted, the diurnal generator follows its curve
reproducibly, and rate scaling scales.

Most tests read the packaged samples; those about the full files skip without ../shared."""

from __future__ import annotations

import dataclasses
import fnmatch
import gzip
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import shared_trace

from heteroscale_ray.traces import (
    LengthDist,
    Request,
    Trace,
    TraceError,
    concat,
    diurnal_rate,
    diurnal_trace,
    load_azure_csv,
    load_burstgpt_csv,
    load_jsonl,
    load_trace,
    overlay,
    reading,
    scale_rate,
    slice_trace,
    thin,
    time_compress,
)
from heteroscale_ray.traces.samples import (
    DATA_DIR,
    SAMPLES,
    load_trace_arg,
    resolve_trace,
    samples_help,
)

# Full files in ../shared/data/traces (CI clones the repo with shared/ beside it)
AZURE_FULL = "AzureLLMInferenceTrace_conv.csv"
MOONCAKE_FULL = "synthetic_trace.jsonl"
# Packaged samples: the first 900 s of the Azure file, the first 300 s of the Mooncake file
AZURE = SAMPLES["azure-conv"].path
MOONCAKE = SAMPLES["mooncake"].path
HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


@pytest.fixture(scope="module")
def azure() -> Trace:
    return load_trace(AZURE)


@pytest.fixture(scope="module")
def mooncake() -> Trace:
    return load_trace(MOONCAKE)


@pytest.fixture(scope="module")
def azure_full() -> Trace:
    return load_trace(shared_trace(AZURE_FULL))


@pytest.fixture(scope="module")
def mooncake_full() -> Trace:
    return load_trace(shared_trace(MOONCAKE_FULL))


@pytest.mark.parametrize(
    (
        "name",
        "rows",
        "span_s",
        "rate",
        "input_mean",
        "input_median",
        "output_mean",
        "output_median",
    ),
    [
        # SOURCES.md: 58.4 min, 5.53 req/s, input 1,155 / 1,020, output 211 / 129
        ("azure_full", 19_366, 3501.721937, 5.53, 1155, 1020, 211, 129),
        # SOURCES.md: 17.0 min, 3.91 req/s, input 15,326 / 11,587, output 149 / 69
        ("mooncake_full", 3_993, 1022.025, 3.91, 15_326, 11_587, 149, 69),
        # the packaged samples (heteroscale_ray/traces/data/SOURCES.md)
        ("azure", 4_424, 899.881888, 4.92, 1173, 1047, 254, 205),
        ("mooncake", 1_091, 298.716, 3.65, 11_798, 2_969, 196, 172),
    ],
)
def test_public_traces_match_sources(
    request, name, rows, span_s, rate, input_mean, input_median, output_mean, output_median
) -> None:
    trace: Trace = request.getfixturevalue(name)
    stats = trace.describe()
    assert len(trace) == rows and trace.skipped == 0
    assert trace.arrival_s[0] == 0.0
    assert trace.duration_s == pytest.approx(span_s, abs=1e-6)
    assert trace.mean_rate == pytest.approx(rate, abs=0.005)
    assert stats["input_mean"] == pytest.approx(input_mean, abs=1)
    assert stats["input_median"] == input_median
    assert stats["output_mean"] == pytest.approx(output_mean, abs=1)
    assert stats["output_median"] == output_median
    assert np.all(np.diff(trace.arrival_s) >= 0)


def test_azure_rows_parse_exactly(azure: Trace) -> None:
    # first rows: 18:15:46.6805900,374,44 and 18:15:50.9951690,396,109
    assert azure[0] == Request(0.0, 374, 44, (), 0)
    assert azure[1].arrival_s == pytest.approx(4.314579, abs=1e-9)
    assert (azure[1].input_tokens, azure[1].output_tokens, azure[1].request_id) == (396, 109, 1)
    assert azure[-1].request_id == 4_423


def test_mooncake_rows_keep_hash_ids(mooncake: Trace) -> None:
    first = mooncake[0]
    assert (first.input_tokens, first.output_tokens) == (40_160, 6)
    assert first.hash_ids == tuple(range(79))  # ceil(40160 / 512) = 79 blocks
    assert all(
        len(h) == math.ceil(n / 512)
        for h, n in zip(mooncake.hash_ids, mooncake.input_tokens.tolist(), strict=True)
    )


def test_iteration_yields_requests(mooncake: Trace) -> None:
    requests = list(mooncake)
    assert len(requests) == len(mooncake)
    assert all(isinstance(r, Request) for r in requests)
    assert requests[-1] == mooncake[-1]
    assert sum(r.input_tokens for r in requests) == int(mooncake.input_tokens.sum())


def test_requests_and_columns_are_immutable(mooncake: Trace) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        mooncake[0].input_tokens = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        mooncake.input_tokens[0] = 1
    assert not hasattr(mooncake[0], "__dict__")  # slots


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def assert_bad_line_named(
    path: Path, line: int, reason: str, load: Callable[..., Trace] = load_trace
) -> None:
    """The strict load names the file, the line and the reason; the lenient one skips that
    line alone (the file holds two good lines around it) and keeps its reason."""
    with pytest.raises(TraceError) as err:
        load(path)
    assert str(err.value).startswith(f"{path} line {line}: ")
    assert reason in str(err.value)
    assert err.value.line == line
    skipped = load(path, skip_malformed=True)
    assert (len(skipped), skipped.skipped) == (2, 1)
    assert skipped.skip_reasons[0].startswith(f"line {line}: ")


GOOD_CSV_ROW = "2023-11-16 18:15:46.6805900,374,44\n"


@pytest.mark.parametrize(
    ("bad_row", "reason"),
    [
        ("2023-11-16 18:15:4x.1,10,5", "TIMESTAMP '2023-11-16 18:15:4x.1' is not like"),
        ("2023-02-30 10:00:00.0,10,5", "TIMESTAMP '2023-02-30 10:00:00.0' is not a valid date"),
        ("2023-11-16 25:00:00.0,10,5", "is not a valid time of day"),
        ("2023-11-16 18:15:47.0,10,abc", "GeneratedTokens 'abc' is not an integer"),
        ("2023-11-16 18:15:47.0,1.5,3", "ContextTokens '1.5' is not an integer"),
        (
            "2023-11-16 18:15:47.0,10",
            "expected 3 columns (TIMESTAMP,ContextTokens,GeneratedTokens), got 2",
        ),
        ("2023-11-16 18:15:47.0,-5,3", "ContextTokens must be >= 1 (got -5)"),
        ("2023-11-16 18:15:47.0,5,-1", "GeneratedTokens must be >= 0 (got -1)"),
        ("2023-11-16 18:15:47.0+25:00,5,1", "zone '+25:00' is not a valid UTC offset"),
    ],
)
def test_azure_bad_row_names_file_and_line(tmp_path: Path, bad_row: str, reason: str) -> None:
    path = write(tmp_path, "trace.csv", HEADER + GOOD_CSV_ROW + bad_row + "\n" + GOOD_CSV_ROW)
    assert_bad_line_named(path, 3, reason, load_azure_csv)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("TIMESTAMP,ContextTokens\n" + GOOD_CSV_ROW, "line 1: header lacks GeneratedTokens"),
        ("", "file is empty"),
    ],
)
def test_azure_bad_header_is_fatal_even_when_skipping(
    tmp_path: Path, text: str, reason: str
) -> None:
    path = write(tmp_path, "trace.csv", text)
    with pytest.raises(TraceError, match=reason):
        load_azure_csv(path, skip_malformed=True)


def test_azure_sorts_and_rebases_to_the_earliest_row(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.csv",
        HEADER
        + "2023-11-16 18:00:02.5,30,3\n2023-11-16 18:00:00.25,10,1\n\n2023-11-16 18:00:01,20,2\n",
    )
    trace = load_azure_csv(path)
    assert trace.arrival_s.tolist() == [0.0, 0.75, 2.25]
    assert trace.input_tokens.tolist() == [10, 20, 30]
    assert trace.request_ids.tolist() == [1, 2, 0]  # ids keep file order


def test_row_by_row_path_agrees_with_the_fast_path(tmp_path: Path, azure: Trace) -> None:
    # one bad row sends its batch (here the whole file) through the per-row parser
    path = write(
        tmp_path, "azure_bad.csv", AZURE.read_text().rstrip("\n") + "\n2023-11-16 19:20:00.0,x,1\n"
    )
    slow = load_azure_csv(path, skip_malformed=True)
    assert (len(slow), slow.skipped) == (len(azure), 1)
    assert np.array_equal(slow.arrival_s, azure.arrival_s)
    assert np.array_equal(slow.output_tokens, azure.output_tokens)


@pytest.mark.parametrize(
    ("header", "row", "bad", "load"),
    [
        (HEADER, "2023-11-16 18:00:{:02d}.5,{},3\n", "2023-11-16 18:00:xx,5,1\n", load_azure_csv),
        (
            "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n",
            "{}.5,ChatGPT,{},3,4,Conversation log\n",
            "-1,ChatGPT,5,1,6,Conversation log\n",
            load_burstgpt_csv,
        ),
    ],
)
def test_rows_are_parsed_in_batches_with_file_line_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, header: str, row: str, bad: str, load: Any
) -> None:
    """A long file is read a batch of rows at a time (a week of Azure traffic does not fit in
    memory as Python rows): a bad row in a later batch is named by its line in the file, and
    skipping it keeps every other batch's rows in file order."""
    rows = [row.format(i, 10 + i) for i in range(8)]
    text = header + "".join(rows[:5]) + bad + "".join(rows[5:])
    path = write(tmp_path, "t.csv", text)
    whole = load(path, skip_malformed=True)
    monkeypatch.setattr(reading, "BATCH_ROWS", 3)
    with pytest.raises(TraceError, match=f"{path} line 7: "):
        load(path)
    batched = load(path, skip_malformed=True)
    assert (len(batched), batched.skipped) == (8, 1)
    assert batched.input_tokens.tolist() == list(range(10, 18)) == whole.input_tokens.tolist()
    assert batched.arrival_s.tolist() == whole.arrival_s.tolist() == [float(i) for i in range(8)]


def test_extra_csv_columns_are_ignored(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.csv",
        "Id,GeneratedTokens,TIMESTAMP,ContextTokens\n7,5,2023-11-16 18:00:00,10\n",
    )
    assert load_azure_csv(path)[0] == Request(0.0, 10, 5, (), 0)


GOOD_JSON = '{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]}\n'


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ('{"timestamp": 5, "input_length": 600', "not valid JSON"),
        ('{"timestamp": 5, "input_length": 600, "hash_ids": []}', "missing key output_length"),
        (
            '{"timestamp": 5, "input_length": "600", "output_length": 5}',
            "input_length '600' is not an integer",
        ),
        (
            '{"timestamp": 5, "input_length": 600, "output_length": 2.5}',
            "output_length 2.5 is not an integer",
        ),
        (
            '{"timestamp": -1, "input_length": 600, "output_length": 5}',
            "timestamp -1 is not a non-negative",
        ),
        (
            '{"timestamp": 5, "input_length": -3, "output_length": 5}',
            "input_length must be >= 1 (got -3)",
        ),
        (
            '{"timestamp": 5, "input_length": 6, "output_length": 5, "hash_ids": [1, "x"]}',
            "hash_ids must be",
        ),
        *(
            (
                f'{{"timestamp": 5, "input_length": 1500, "output_length": 5, "hash_ids": {ids}}}',
                "hash_ids must be a list of integers in [0, 2**63)",
            )
            for ids in ("[1, true]", "[-1, 2]", "[1, 9223372036854775808]", "[1.0]", "{}")
        ),
        (  # 1,025 tokens are three 512-token blocks; a fourth id names a block no prompt holds
            '{"timestamp": 5, "input_length": 1025, "output_length": 5, "hash_ids": [1, 2, 3, 4]}',
            "hash_ids lists 4 blocks, but an input_length of 1025 tokens has 3 of 512 tokens",
        ),
        ("[1, 2, 3]", "expected a JSON object, got list"),
    ],
)
def test_mooncake_bad_line_names_file_and_line(tmp_path: Path, bad_line: str, reason: str) -> None:
    path = write(tmp_path, "trace.jsonl", GOOD_JSON + bad_line + "\n" + GOOD_JSON)
    assert_bad_line_named(path, 2, reason, load_jsonl)


def test_skipping_counts_all_but_keeps_few_reasons(tmp_path: Path) -> None:
    path = write(
        tmp_path, "t.jsonl", GOOD_JSON + "oops\n" * 8 + GOOD_JSON.replace(": 0,", ": 1500,")
    )
    trace = load_jsonl(path, skip_malformed=True)
    assert (len(trace), trace.skipped, len(trace.skip_reasons)) == (2, 8, 5)
    assert trace.skip_reasons[0].startswith("line 2: not valid JSON")
    assert trace.arrival_s.tolist() == [0.0, 1.5]  # milliseconds to seconds


def bailian_row(ts: float, inp: int, ids: list[int], out: int = 8, chat: int = 1) -> str:
    """A row as Alibaba's Qwen-Bailian usage traces write it (seconds, 16-token blocks)."""
    row = {
        "chat_id": chat,
        "parent_chat_id": -1,
        "timestamp": ts,
        "input_length": inp,
        "output_length": out,
        "type": "text",
        "turn": 1,
        "hash_ids": ids,
    }
    return json.dumps(row) + "\n"


def test_qwen_bailian_rows_are_seconds_and_16_token_blocks(tmp_path: Path) -> None:
    # Read as Mooncake (milliseconds), this hour would arrive within 3.6 s, and its 40 ids
    # for a 640-token prompt would be malformed (two 512-token blocks at most).
    a = list(range(40))  # 640 tokens: 32 + 8 small blocks -> 2 blocks of 512
    b = list(range(32)) + list(range(100, 131))  # shares a's first 512 tokens, then differs
    c = list(range(31)) + [999]  # differs inside the first block
    d = list(range(500, 532)) + list(range(32, 40))  # a's second run after another first one
    text = "".join(
        bailian_row(ts, inp, ids)
        for ts, inp, ids in ((61.114, 640, a), (62.5, 1000, b), (3661.0, 512, c), (70, 640, d))
    )
    trace = load_jsonl(write(tmp_path, "qwen_traceA_blksz_16.jsonl", text))
    assert trace.arrival_s.tolist() == pytest.approx([0.0, 1.386, 8.886, 3599.886])
    ha, hb, hd, hc = trace.hash_ids  # in arrival order
    assert [len(h) for h in (ha, hb, hc, hd)] == [2, 2, 1, 2]  # ceil(tokens / 512)
    assert ha[0] == hb[0] and ha[1] != hb[1]  # one shared 512-token prefix block
    assert hc[0] != ha[0]  # 31 of 32 small blocks shared is no shared block
    assert hd[1] != ha[1]  # a block is its prefix: same small ids after another start differ
    assert load_trace(tmp_path / "qwen_traceA_blksz_16.jsonl").hash_ids == trace.hash_ids


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        (
            bailian_row(5, 33, [1, 2, 3, 4]),
            "hash_ids lists 4 blocks, but an input_length of 33 tokens has 3 of 16 tokens",
        ),
        (bailian_row(-1.5, 33, []), "timestamp -1.5 is not a non-negative number of seconds"),
        (
            '{"timestamp": 5, "input_length": 600, "output_length": 5}\n',
            "a Mooncake row in a Qwen-Bailian trace",
        ),
    ],
)
def test_qwen_bailian_bad_line_names_file_and_line(
    tmp_path: Path, bad_line: str, reason: str
) -> None:
    good = bailian_row(1.0, 600, list(range(38)))
    path = write(tmp_path, "trace.jsonl", good + bad_line + good)
    assert_bad_line_named(path, 2, reason, load_jsonl)


def test_a_skipped_first_row_does_not_decide_the_format(tmp_path: Path) -> None:
    rows = [bailian_row(t, 600, []).replace(', "hash_ids": []', "") for t in (2.0, 5.5)]
    path = write(tmp_path, "t.jsonl", "oops\n" + "".join(rows))
    trace = load_jsonl(path, skip_malformed=True)
    assert (len(trace), trace.skipped, trace.has_hashes) == (2, 1, False)
    assert trace.arrival_s.tolist() == [0.0, 3.5]  # Qwen-Bailian's seconds, no ids needed


def test_a_timestamp_past_floats_range_is_a_bad_row(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.jsonl",
        GOOD_JSON
        + '{"timestamp": 1'
        + "0" * 400
        + ', "input_length": 6, "output_length": 5}\n'
        + GOOD_JSON,
    )
    assert_bad_line_named(path, 2, "is not a non-negative number of milliseconds", load_jsonl)


def test_a_trace_keeps_the_format_of_its_first_row(tmp_path: Path) -> None:
    path = write(tmp_path, "t.jsonl", GOOD_JSON + bailian_row(1.0, 600, []) + GOOD_JSON)
    assert_bad_line_named(path, 2, "a Qwen-Bailian row in a Mooncake trace", load_jsonl)


def test_load_trace_rejects_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"unknown trace format '\.parquet'"):
        load_trace(tmp_path / "t.parquet")
    with pytest.raises(TraceError, match="cannot read file"):
        load_trace(tmp_path / "absent.csv")


def test_gzipped_traces_load_as_the_plain_ones(tmp_path: Path, azure: Trace) -> None:
    """Azure publishes some traces as .csv.gz: read as a stream, never unpacked to disk."""
    packed = tmp_path / "azure.csv.gz"
    packed.write_bytes(gzip.compress(AZURE.read_bytes()))
    trace = load_trace(packed)
    assert np.array_equal(trace.arrival_s, azure.arrival_s)
    assert np.array_equal(trace.input_tokens, azure.input_tokens)
    assert trace.source == "azure.csv.gz"
    jsonl = tmp_path / "t.jsonl.gz"
    jsonl.write_bytes(gzip.compress(GOOD_JSON.encode()))
    assert len(load_trace(jsonl)) == 1


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"TIMESTAMP,ContextTokens,GeneratedTokens\n", "Not a gzipped file"),
        (gzip.compress(b"TIMESTAMP,ContextTokens,GeneratedTokens\n" * 50)[:-12], "ended before"),
        (gzip.compress(b"x" * 1000)[:10] + b"\xff" * 40, "invalid block type"),
    ],
    ids=["not-gzip", "cut-short", "corrupt"],
)
def test_a_broken_gzip_is_a_trace_error(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "t.csv.gz"
    path.write_bytes(content)
    with pytest.raises(TraceError, match=f"{path}: cannot read file: .*{reason}"):
        load_trace(path, skip_malformed=True)


def small_trace() -> Trace:
    return Trace.from_columns(
        [0.0, 1.0, 2.0, 3.0, 4.0],
        [10, 20, 30, 40, 50],
        [1, 2, 3, 4, 5],
        duration_s=5.0,
        source="small",
    )


def test_slice_rebases_and_keeps_ids() -> None:
    part = slice_trace(small_trace(), 1.0, 3.0)
    assert part.arrival_s.tolist() == [0.0, 1.0]
    assert part.request_ids.tolist() == [1, 2]
    assert part.duration_s == 2.0
    assert small_trace().slice(3.5, 99).duration_s == 1.5  # clipped to the source span


def test_time_compress_divides_times() -> None:
    fast = time_compress(small_trace(), 4)
    assert fast.arrival_s.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert (fast.duration_s, fast.mean_rate) == (1.25, 4.0)


def test_concat_plays_in_sequence() -> None:
    both = concat([small_trace(), small_trace()], gap_s=1.0)
    assert both.arrival_s.tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert both.request_ids.tolist() == list(range(10))
    assert both.duration_s == 11.0


@pytest.mark.parametrize(
    ("k", "expected_rows"),
    [(2, 2 * 4_424), (3, 3 * 4_424), (1.5, 4_424 + 2_212), (0.25, round(0.25 * 4_424))],
)
def test_superpose_scales_the_count_not_the_span(
    azure: Trace, k: float, expected_rows: int
) -> None:
    scaled = scale_rate(azure, k, seed=7)
    assert len(scaled) == expected_rows
    assert scaled.duration_s == azure.duration_s
    assert scaled.mean_rate == pytest.approx(k * azure.mean_rate, rel=2e-4)
    assert scaled.arrival_s[0] >= 0 and scaled.arrival_s[-1] <= azure.duration_s
    assert scaled.request_ids.tolist() == list(range(expected_rows))


def test_superpose_copies_the_requests(azure: Trace) -> None:
    scaled = scale_rate(azure, 2, seed=1)
    assert np.array_equal(np.sort(scaled.input_tokens), np.sort(np.repeat(azure.input_tokens, 2)))
    same = scale_rate(azure, 2, seed=1)
    assert np.array_equal(scaled.arrival_s, same.arrival_s)
    assert not np.array_equal(scaled.arrival_s, scale_rate(azure, 2, seed=2).arrival_s)
    unshifted = scale_rate(azure, 2, seed=1, max_shift_s=0)
    assert np.array_equal(unshifted.arrival_s, np.repeat(azure.arrival_s, 2))


def test_superpose_keeps_prefix_sharing_inside_a_copy_only(mooncake: Trace) -> None:
    ids = {h for hs in mooncake.hash_ids for h in hs}
    distinct = scale_rate(mooncake, 2, seed=3)
    assert len({h for hs in distinct.hash_ids for h in hs}) == 2 * len(ids)
    shared = scale_rate(mooncake, 2, seed=3, distinct_prefixes=False)
    assert {h for hs in shared.hash_ids for h in hs} == ids


def test_compress_halves_the_span(azure: Trace) -> None:
    scaled = scale_rate(azure, 2, method="compress")
    assert len(scaled) == len(azure)
    assert scaled.duration_s == pytest.approx(azure.duration_s / 2)
    assert np.allclose(scaled.arrival_s, azure.arrival_s / 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 2}, "pass seed="),
        ({"k": 0, "seed": 1}, "k must be a finite number > 0"),
        ({"k": float("nan"), "seed": 1}, "k must be a finite number > 0"),
        ({"k": 2, "seed": 1, "method": "stretch"}, "unknown method 'stretch'"),
        ({"k": 1e12, "seed": 1}, "more than 1,000,000,000: use a smaller k"),
    ],
)
def test_scale_rate_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        scale_rate(small_trace(), **kwargs)


@pytest.mark.parametrize(
    ("t_s", "expected"),
    [(0.0, 1.0), (21_600.0, 2.5), (43_200.0, 4.0), (64_800.0, 2.5), (86_400.0, 1.0)],
)
def test_diurnal_rate_curve(t_s: float, expected: float) -> None:
    assert diurnal_rate(t_s, peak_rps=4, trough_rps=1) == pytest.approx(expected)
    # starting the trace at noon puts the peak at t = 0
    assert diurnal_rate(t_s - 43_200, 4, 1, phase_s=43_200) == pytest.approx(expected)


@pytest.fixture(scope="module")
def day() -> Trace:
    return diurnal_trace(86_400, peak_rps=4, trough_rps=1, seed=11)


@pytest.fixture(scope="module")
def smooth_day() -> Trace:
    return diurnal_trace(86_400, peak_rps=20, trough_rps=5, seed=12, noise=0.0)


@pytest.mark.parametrize(
    ("start_s", "window_s", "expected_rps"),
    [
        # mean of cos over +-30 min (or the first 30 min) = sin(pi/24) / (pi/24) = 0.99715
        (43_200 - 1_800, 3_600, 5 + 15 * (1 + 0.99715) / 2),  # peak hour: 19.98
        (0, 1_800, 5 + 15 * (1 - 0.99715) / 2),  # first half hour, the trough: 5.02
        (21_600 - 1_800, 3_600, 12.5),  # a quarter day in: half way
    ],
)
def test_diurnal_trace_follows_the_curve(
    smooth_day: Trace, start_s: float, window_s: float, expected_rps: float
) -> None:
    arrivals = smooth_day.arrival_s
    count = np.count_nonzero((arrivals >= start_s) & (arrivals < start_s + window_s))
    assert count / window_s == pytest.approx(expected_rps, rel=0.05)


def test_diurnal_trace_totals_and_lengths(day: Trace) -> None:
    # mean rate of the curve = (peak + trough) / 2 = 2.5 req/s over 86,400 s
    assert day.duration_s == 86_400
    assert len(day) == pytest.approx(2.5 * 86_400, rel=0.02)
    assert day.arrival_s[-1] < 86_400
    stats = day.describe()
    assert stats["input_mean"] == pytest.approx(1155, rel=0.03)
    assert stats["input_median"] == pytest.approx(1020, rel=0.03)
    assert stats["output_median"] == pytest.approx(129, rel=0.05)


def test_diurnal_trace_is_reproducible_from_the_seed() -> None:
    a = diurnal_trace(3_600, 5, 1, seed=3, period_s=3_600)
    b = diurnal_trace(3_600, 5, 1, seed=np.random.default_rng(3), period_s=3_600)
    c = diurnal_trace(3_600, 5, 1, seed=4, period_s=3_600)
    assert np.array_equal(a.arrival_s, b.arrival_s)
    assert np.array_equal(a.output_tokens, b.output_tokens)
    assert not np.array_equal(a.arrival_s[:10], c.arrival_s[:10])


def test_noise_free_constant_rate_is_poisson() -> None:
    flat = diurnal_trace(10_000, 3, 3, seed=5, noise=0.0)
    gaps = np.diff(flat.arrival_s)
    assert len(flat) == pytest.approx(30_000, rel=0.03)
    assert gaps.mean() == pytest.approx(1 / 3, rel=0.03)
    assert gaps.std() == pytest.approx(1 / 3, rel=0.05)  # exponential: std = mean


@pytest.mark.parametrize(
    ("mean", "median", "sigma"),
    [(1155, 1020, math.sqrt(2 * math.log(1155 / 1020))), (100, 100, 0.0)],
)
def test_length_dist_parameters(mean: float, median: float, sigma: float) -> None:
    dist = LengthDist(mean, median)
    assert dist.mu == pytest.approx(math.log(median))
    assert dist.sigma == pytest.approx(sigma)


def test_length_dist_rejects_mean_below_median() -> None:
    with pytest.raises(ValueError, match="median <= mean"):
        LengthDist(mean=10, median=20)


def _uniform(n: int, span: float, hashes: bool = False) -> Trace:
    t = np.linspace(0, span, n, endpoint=False)
    return Trace.from_columns(
        t,
        np.full(n, 100),
        np.full(n, 10),
        [(k % 5, 7) for k in range(n)] if hashes else None,
        duration_s=span,
        source="uniform",
    )


def test_thin_follows_the_keep_probability() -> None:
    trace = _uniform(20000, 1000.0)
    ramp = thin(trace, lambda t: t / 1000.0, seed=0)  # 0 at the start, 1 at the end
    first, last = ramp.slice(0, 250), ramp.slice(750, 1000)
    assert len(first) == pytest.approx(20000 / 4 * 0.125, rel=0.1)
    assert len(last) == pytest.approx(20000 / 4 * 0.875, rel=0.05)
    assert ramp.duration_s == 1000.0
    assert len(thin(trace, lambda t: np.ones_like(t), seed=1)) == 20000
    assert len(thin(trace, lambda t: np.zeros_like(t), seed=1)) == 0
    again = thin(trace, lambda t: t / 1000.0, seed=0)
    assert np.array_equal(ramp.arrival_s, again.arrival_s)


@pytest.mark.parametrize("keep", [lambda t: t, lambda t: -np.ones_like(t), lambda t: np.ones(3)])
def test_thin_rejects_bad_probabilities(keep: Any) -> None:
    with pytest.raises(ValueError, match=r"probability in \[0, 1\]"):
        thin(_uniform(10, 100.0), keep, seed=0)


def test_overlay_merges_in_arrival_order_and_keeps_prefixes_apart() -> None:
    a, b = _uniform(10, 100.0, hashes=True), _uniform(4, 200.0, hashes=True)
    both = overlay([a, b])
    assert len(both) == 14 and both.duration_s == 200.0
    assert np.all(np.diff(both.arrival_s) >= 0)
    assert list(both.request_ids) == list(range(14))
    a_ids = {h for hs in a.hash_ids for h in hs}
    b_ids = {h for hs in both.hash_ids for h in hs} - a_ids
    assert len(b_ids) == len({h for hs in b.hash_ids for h in hs})  # b's all moved past a's
    assert len(overlay([])) == 0


def test_hashed_ids_scale_and_overlay_without_overflow() -> None:
    # 63-bit ids (a Qwen-Bailian trace's, regrouped): copies were offset past the largest id,
    # past int64 at the second copy, and the replay crashed numbering them.
    big = 2**63 - 10
    trace = Trace.from_columns(
        [0.0, 1.0, 2.0], [600, 600, 600], [5, 5, 5], [(big, big - 1), (big,), (7,)], duration_s=3.0
    )
    for scaled in (scale_rate(trace, 3, seed=0), overlay([trace, trace])):
        ids = [h for hs in scaled.hash_ids for h in hs]
        assert all(0 <= h < 2**63 for h in ids)
        copies = len(scaled) // len(trace)
        assert len(set(ids)) == 3 * copies  # each copy keeps its own three distinct blocks
        firsts = {hs[0] for hs in scaled.hash_ids if len(hs)}
        assert len(firsts) == 2 * copies  # within a copy, two prompts still share a block


# --- packaged samples ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SAMPLES))
def test_every_sample_loads_clean(name: str) -> None:
    trace = load_trace_arg(name)
    assert trace.skipped == 0 and len(trace) > 1_000
    assert trace.source == SAMPLES[name].path.name
    assert f"{len(trace):,} requests" in SAMPLES[name].description
    assert np.all(np.diff(trace.arrival_s) >= 0)


@pytest.mark.parametrize(
    ("sample", "full"),
    [("azure-conv", AZURE_FULL), ("mooncake", MOONCAKE_FULL), ("servegen-mlarge", None)],
)
def test_samples_are_unmodified_excerpts_of_the_shared_files(sample: str, full: str | None) -> None:
    text = SAMPLES[sample].path.read_text()
    if full is None:  # a window from the middle of a day: a contiguous block of the file
        source = shared_trace("servegen_mlarge_day1.csv").read_text()
        header, _, body = text.partition("\n")
        at = source.find("\n" + body)
        assert source.startswith(header + "\n") and at > 0
        before = source[:at].rsplit("\n", 1)[-1]
        after = source[at + 1 + len(body) :].split("\n", 1)[0]
        assert before < "2025-01-01 08:00:00" <= body < "2025-01-01 08:20:00" <= after
    else:
        assert shared_trace(full).read_text().startswith(text)


@pytest.mark.parametrize(
    ("sample", "full", "start", "end"),
    [
        ("azure-conv", AZURE_FULL, 0, 300),  # tests/test_replay_golden.py
        ("azure-conv", AZURE_FULL, 300, 450),  # tests/test_reference_policies.py
        ("mooncake", MOONCAKE_FULL, 0, 180),  # tests/test_sim_sizing.py
    ],
)
def test_sample_slices_equal_the_full_trace_slices(
    sample: str, full: str, start: float, end: float
) -> None:
    # so the tests that moved to the samples kept their numbers
    a = load_trace_arg(sample).slice(start, end)
    b = load_trace(shared_trace(full)).slice(start, end)
    assert a.duration_s == b.duration_s
    for col in ("arrival_s", "input_tokens", "output_tokens", "request_ids"):
        assert np.array_equal(getattr(a, col), getattr(b, col)), col
    assert a.hash_ids == b.hash_ids


def test_trace_argument_is_a_sample_name_or_a_path(tmp_path: Path) -> None:
    assert resolve_trace("azure-conv") == SAMPLES["azure-conv"].path
    own = write(tmp_path, "mine.csv", HEADER + GOOD_CSV_ROW)
    assert resolve_trace(str(own)) == own
    assert len(load_trace_arg(own)) == 1


@pytest.mark.parametrize(
    ("arg", "kind"), [("azure", "trace file or packaged sample"), ("x/t.csv", "file")]
)
def test_unknown_trace_argument_names_the_samples(arg: str, kind: str) -> None:
    with pytest.raises(TraceError) as err:
        resolve_trace(arg)
    assert str(err.value).startswith(f"{arg}: no such {kind};")
    assert "azure-conv, mooncake, servegen-mlarge" in str(err.value)


def test_cli_help_spells_the_sample_names() -> None:
    from heteroscale_ray.sim.commands import SAMPLE_NAMES

    assert samples_help() == SAMPLE_NAMES


def test_samples_are_small_attributed_and_packaged() -> None:
    tomllib = pytest.importorskip("tomllib")
    files = sorted(p for p in DATA_DIR.iterdir() if p.is_file())
    assert sum(p.stat().st_size for p in files) < 1_000_000  # well under the 2 MB budget
    sources = (DATA_DIR / "SOURCES.md").read_text()
    for sample in SAMPLES.values():
        assert sample.path in files
        assert f"`{sample.name}` | {sample.filename}" in sources
    for licence in ("CC-BY 4.0", "Apache-2.0", "Apache License 2.0"):
        assert licence in sources
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["heteroscale_ray"]
    package = DATA_DIR.parents[1]
    for path in files:  # every file in data/ ships in the wheel
        rel = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(rel, g) for g in globs), rel


def test_azure_2024_zoned_timestamps_are_read_in_utc(tmp_path: Path) -> None:
    """The 2024 week-long Azure traces write '+00:00' zones, some rows without a fraction;
    stamps in other zones land on the same UTC clock (the clean and the per-row paths alike)."""
    rows = [
        "2024-05-12 00:00:00.0092340+00:00,100,20",
        "2024-05-12 02:00:01+02:00,50,20",
        "2024-05-11 19:00:01.5-05:00,300,7",
        "2024-05-12 00:00:03Z,30,0",
        "2024-05-12 00:00:04.0092340,30,1",  # zone-less: read as it is
    ]
    want = [0.0, 0.990766, 1.490766, 2.990766, 4.0]
    clean = load_azure_csv(write(tmp_path, "week.csv", HEADER + "\n".join(rows) + "\n"))
    assert clean.arrival_s.tolist() == pytest.approx(want)
    # one bad row sends the file through the per-row path, which must agree
    bad = write(tmp_path, "bad.csv", HEADER + "\n".join([*rows, "x,1,1"]) + "\n")
    slow = load_azure_csv(bad, skip_malformed=True)
    assert slow.skipped == 1
    assert slow.arrival_s.tolist() == pytest.approx(want)


BURST_HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"


def test_burstgpt_csv_is_read_by_its_header(tmp_path: Path) -> None:
    """BurstGPT's seconds and token columns; Model and Log Type are not filtered on; rows of
    one logged second arrive together; BurstGPT_3's extra session columns are ignored."""
    rows = [
        "5,ChatGPT,472,18,490,Conversation log",
        "5,GPT-4,1087,230,1317,Conversation log",
        "45.5,ChatGPT,417,0,417,API log",  # a failed request: no output
        "118,GPT-4,300,276,576,Conversation log",
    ]
    trace = load_trace(write(tmp_path, "burst.csv", BURST_HEADER + "\n".join(rows) + "\n"))
    assert trace.arrival_s.tolist() == [0.0, 0.0, 40.5, 113.0]
    assert trace.input_tokens.tolist() == [472, 1087, 417, 300]
    assert trace.output_tokens.tolist() == [18, 230, 0, 276]
    v3 = "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
    sessions = write(tmp_path, "burst3.csv", v3 + "7,ab-12,0.5,ChatGPT,10,5,15,Conversation log\n")
    assert load_burstgpt_csv(sessions).input_tokens.tolist() == [10]


@pytest.mark.parametrize(
    ("bad_row", "reason"),
    [
        ("x,ChatGPT,10,5,15,Conversation log", "Timestamp 'x' is not a non-negative number"),
        ("-1,ChatGPT,10,5,15,Conversation log", "Timestamp '-1' is not a non-negative number"),
        ("nan,ChatGPT,10,5,15,Conversation log", "Timestamp 'nan' is not a non-negative number"),
        ("9,ChatGPT,0,5,5,Conversation log", "Request tokens must be >= 1 (got 0)"),
        ("9,ChatGPT,10,-5,5,Conversation log", "Response tokens must be >= 0 (got -5)"),
        ("9,ChatGPT,10", "expected 6 columns"),
    ],
)
def test_burstgpt_bad_row_names_file_and_line(tmp_path: Path, bad_row: str, reason: str) -> None:
    good = "5,ChatGPT,472,18,490,Conversation log\n"
    path = write(tmp_path, "burst.csv", BURST_HEADER + good + bad_row + "\n" + good)
    assert_bad_line_named(path, 3, reason)


def test_csv_header_of_neither_format_names_what_azure_lacks(tmp_path: Path) -> None:
    path = write(tmp_path, "other.csv", "time,prompt,output\n1,2,3\n")
    with pytest.raises(TraceError, match="line 1: header lacks TIMESTAMP, ContextTokens"):
        load_trace(path)
    half = write(tmp_path, "half.csv", "Timestamp,Request tokens\n1,2\n")
    with pytest.raises(TraceError, match="line 1: header lacks Response tokens"):
        load_trace(half)


def test_a_trace_refuses_nan_times_and_a_slice_keeps_the_loads_skip_count() -> None:
    """NaN passes both `< 0` and `diff < 0`, so [1.0, nan] made a trace of NaN duration."""
    with pytest.raises(ValueError, match="must be finite"):
        Trace.from_columns([1.0, math.nan], [10, 10], [1, 1])
    skipped = Trace.from_columns([0.0, 1.0, 2.0], [10] * 3, [1] * 3, skipped=3, skip_reasons=["x"])
    part = skipped.slice(0.0, 1.5)
    assert (len(part), part.skipped, part.skip_reasons) == (2, 3, ("x",))
