"""`heteroscale replay --json`: the last stdout line is one JSON object with the promised keys."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from heteroscale_ray.sim.commands import register

ROOT = Path(__file__).resolve().parents[1]
SIM_SERVICES = str(ROOT / "examples" / "sim_services.yaml")
# --trace takes the packaged samples by name (heteroscale_ray/traces/data), so no ../shared


def main(argv: Sequence[str]) -> int:
    """The simulator's commands as `heteroscale` registers them (independent of other modules)."""
    parser = argparse.ArgumentParser(prog="heteroscale")
    register(parser.add_subparsers(dest="command"))
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exit_:  # argparse refuses a bad option as the CLI does: exit 2
        return int(exit_.code or 0)
    return int(args.func(args))


def test_replay_json_last_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "replay",
            "--trace",
            "mooncake",
            "--services",
            SIM_SERVICES,
            "--service",
            "longctx",
            "--gpus",
            "256",
            "--duration",
            "120",
            "--policy",
            "heteroscale",
            "--out",
            str(tmp_path),
            "--json",
        ]
    )
    captured = capsys.readouterr()
    out = captured.out.strip().splitlines()
    assert rc == 0
    # the fleet's split is sized before the prefix cache: static then runs fewer prefill
    assert "split as a static fleet for the trace needs: " in captured.err
    assert "before prefix-cache hits" in captured.err
    summary = json.loads(out[-1])
    for key in (
        "policy",
        "requests",
        "gpu_hours",
        "slo_attainment",
        "avg_gpu_util",
        "avg_sm_activity",
        "scaling_actions",
        "ttft_p99_s",
        "tbt_p99_s",
    ):
        assert key in summary
    assert summary["policy"] == "heteroscale"
    assert summary["requests"] > 0
    assert (tmp_path / "timeline.png").stat().st_size > 0
    assert "GPU-h" in "\n".join(out)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--policy", "nope"], "unknown policy"),
        (["--rate-scale", "2", "--rate-shift-max", "-1"], "--rate-shift-max: must be a finite"),
        (["--rate-scale", "0"], "--rate-scale: must be a finite number > 0 (got 0)"),
        (["--rate-scale", "nan"], "--rate-scale: must be a finite number > 0"),
        (["--rate-scale", "inf"], "--rate-scale: must be a finite number > 0"),
        (["--duration", "-5"], "--duration: must be a finite number > 0"),
        (["--control-period-s", "0"], "--control-period-s: must be a finite number > 0"),
        (["--startup-s", "-1"], "--startup-s: must be a finite number >= 0"),
        (["--gpus", "0"], "--gpus: must be >= 1"),
        (["--gpus", "many"], "--gpus: 'many' is not a whole number"),
        (["--seed", "-1"], "--seed: must be >= 0"),
        (["--rate-scale", "1e12"], "a replay holds in memory: lower --rate-scale"),
    ],
)
def test_replay_bad_argument_exits_2(
    args: list[str], error: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    services = SIM_SERVICES
    head = ["replay", "--trace", "azure-conv", "--services", services, "--duration", "10"]
    assert main([*head, *args, "--out", str(tmp_path)]) == 2
    assert error in capsys.readouterr().err


def test_a_compressed_rate_is_not_refused_for_a_count_it_does_not_make(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--rate-method compress divides time, not multiplies requests: the request cap that
    stops a superposed replay running out of memory does not apply."""
    argv = ["replay", "--trace", "azure-conv", "--services", SIM_SERVICES, "--duration", "60"]
    argv += ["--rate-scale", "2e6", "--rate-method", "compress", "--policy", "static"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    assert "a replay holds in memory" not in capsys.readouterr().err


def test_a_policy_list_is_read_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spaces after the commas are a list's, and a policy named twice runs once."""
    services = SIM_SERVICES
    head = ["replay", "--trace", "azure-conv", "--services", services, "--duration", "10"]
    policies = "static, oracle,static"
    assert main([*head, "--policy", policies, "--out", str(tmp_path), "--json"]) == 0
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert [r["policy"] for r in rows] == ["static", "oracle"]


def test_the_papers_rule_is_a_replay_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--policy paper-fixed` tunes the paper's rule on the trace (Algorithm 1) and replays the
    service under it, as the generalization benchmark's row does, in one command."""
    services = SIM_SERVICES
    head = ["replay", "--trace", "azure-conv", "--services", services, "--service", "general"]
    argv = [*head, "--duration", "120", "--policy", "paper-fixed,static"]
    assert main([*argv, "--out", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    assert "[paper-fixed] tuned on the first 120 s: pd_ratio" in captured.err
    rows = json.loads(captured.out.strip().splitlines()[-1])["runs"]
    assert [r["policy"] for r in rows] == ["paper-fixed", "static"]
    assert rows[0]["completed"] == rows[0]["requests"] > 0


def test_replay_refuses_a_trace_with_no_requests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "empty.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    services = SIM_SERVICES
    assert main(["replay", "--trace", str(trace), "--services", services]) == 2
    assert "holds no requests to replay" in capsys.readouterr().err


def test_replay_refuses_a_span_of_years_and_names_the_way_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stray row from another year would step through a year tick by tick (hours, GBs)."""
    trace = tmp_path / "stray.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46,1000,100\n"
        "2024-11-16 18:15:46,1000,100\n"
    )
    services = SIM_SERVICES
    assert main(["replay", "--trace", str(trace), "--services", services]) == 2
    err = capsys.readouterr().err
    assert "spans 366 days" in err and "--duration" in err


def test_a_mooncake_file_in_seconds_is_named_and_a_period_past_the_trace_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """1,000 s of Mooncake rows at 4 requests a second, written in seconds, read as 1 s of
    arrivals (Mooncake's are milliseconds): 1,000x compressed, so the rate is said with the
    unit. A control period as long as the trace decides nothing before its last arrival, which
    is said too."""
    trace = tmp_path / "seconds.jsonl"
    rows = (
        json.dumps({"timestamp": i // 4, "input_length": 500, "output_length": 20})
        for i in range(4000)
    )
    trace.write_text("\n".join(rows) + "\n")
    argv = ["replay", "--trace", str(trace), "--services", SIM_SERVICES, "--service", "general"]
    argv += ["--policy", "static", "--control-period-s", "3600", "--out", str(tmp_path)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "4,000 requests arrive within 1.0 s" in err and "Mooncake's are milliseconds" in err
    assert "no policy decides before its last arrival" in err


def test_replay_finishes_a_request_longer_than_the_default_drain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 30k-token answer takes 1,500 s at the 50-ms TBT SLO, past the 900-s drain the
    replay used to stop at: it was cut off and lost without a word."""
    trace = tmp_path / "long_answer.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,1000,30000\n")
    services = SIM_SERVICES
    argv = ["replay", "--trace", str(trace), "--services", services, "--service", "general"]
    assert main([*argv, "--policy", "static", "--out", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["requests"] == summary["completed"] == 1
    assert "did not finish" not in captured.err
    assert summary["drain_s"] > 300 and summary["gpu_hours_after"] > summary["gpu_hours"]
    assert "its last request finished" in captured.err  # the drain is said, not hidden
    assert "before prefix-cache hits" not in captured.err  # no hashes: no cache to discount


def test_pd_sweep_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "pd-sweep",
            "--services",
            SIM_SERVICES,
            "--service",
            "service-a",
            "--input-tokens",
            "3000",
            "--output-tokens",
            "350",
            "--instances",
            "3",
            "--duration",
            "90",
            "--out",
            str(tmp_path),
            "--json",
        ]
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    result = json.loads(out[-1])
    assert result["service"] == "service-a"
    assert [p["ratio"] for p in result["points"]] == ["1:2", "2:1"]
    assert result["best_ratio"] in ("1:2", "2:1")
    assert result["best_goodput_rps"] > 0
    assert (tmp_path / "service-a.png").stat().st_size > 0
    assert (tmp_path / "service-a.json").exists()


def test_pd_sweep_cli_needs_lengths(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["pd-sweep", "--services", SIM_SERVICES, "--instances", "2"])
    assert rc == 2
    assert "--trace" in capsys.readouterr().err


def test_replay_with_topology_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "replay",
            "--trace",
            "azure-conv",
            "--services",
            SIM_SERVICES,
            "--service",
            "dialogue",
            "--topology",
            str(ROOT / "examples" / "topology.yaml"),
            "--duration",
            "60",
            "--policy",
            "heteroscale",
            "--out",
            str(tmp_path),
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0
    assert "64 GPUs" in captured.err  # the file's fleet, not the default --gpus 1024
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["requests"] > 0
    assert summary["completed"] == summary["requests"]
    # L20 prefill and H20 decode only meet inside s2-b: every KV copy stays within that S2
    assert summary["kv_level_share"]["CROSS_S2"] == 0.0
    assert (tmp_path / "summary.json").exists()


@pytest.mark.parametrize("policy", ["heteroscale", "hpa-util", "serve-default", "static", "oracle"])
def test_replay_general_keeps_the_json_contract(
    policy: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 10's contract: `--service general --policy P --rate-scale K --json` ends with one
    JSON object holding gpu_hours, slo_attainment, slo_ceiling, completed and requests."""
    rc = main(
        [
            "replay",
            "--trace",
            "mooncake",
            "--services",
            SIM_SERVICES,
            "--service",
            "general",
            "--policy",
            policy,
            "--rate-scale",
            "2",
            "--gpus",
            "512",
            "--duration",
            "90",
            "--seed",
            "1",
            "--out",
            str(tmp_path),
            "--json",
        ]
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and summary["policy"] == policy
    for key in ("gpu_hours", "slo_attainment", "slo_ceiling", "completed", "requests"):
        assert isinstance(summary[key], (int, float)), key
    assert 0 < summary["completed"] <= summary["requests"]


def test_replay_bad_row_names_the_fix_then_skips_and_counts_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,100,20\n"
        "2023-11-16 18:15:47.6805900,0,20\n"
        "2023-11-16 18:15:48.6805900,300,5\n"
    )
    argv = [
        "replay",
        "--trace",
        str(trace),
        "--services",
        SIM_SERVICES,
        "--service",
        "general",
        "--policy",
        "static",
        "--out",
        str(tmp_path / "out"),
        "--json",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "line 3: ContextTokens must be >= 1 (got 0)" in err
    assert "--skip-malformed" in err

    assert main([*argv, "--skip-malformed"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 malformed row(s)" in captured.err
    assert "line 3" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["requests"] == 2


def test_a_bad_header_is_not_offered_the_skip_and_a_gzipped_csv_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--skip-malformed skips rows, never a header; a gzipped file named .csv says so."""
    import gzip

    services = SIM_SERVICES
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("time,prompt,output\n1,100,20\n")
    packed = tmp_path / "packed.csv"
    packed.write_bytes(gzip.compress(b"TIMESTAMP,ContextTokens,GeneratedTokens\n"))
    for path, error in ((wrong, "header lacks TIMESTAMP"), (packed, "looks gzipped")):
        assert main(["replay", "--trace", str(path), "--services", services]) == 2
        err = capsys.readouterr().err
        assert error in err and "--skip-malformed" not in err


def test_requests_without_output_are_counted_aloud(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """BurstGPT logs a failed request with 0 response tokens: the replay says how many."""
    trace = tmp_path / "burst.csv"
    trace.write_text(
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        "0,ChatGPT,100,20,120,Conversation log\n"
        "1,ChatGPT,200,0,200,Conversation log\n"
        "2,ChatGPT,300,30,330,Conversation log\n"
    )
    services = SIM_SERVICES
    argv = ["replay", "--trace", str(trace), "--services", services, "--policy", "static"]
    assert main([*argv, "--out", str(tmp_path / "out"), "--json"]) == 0
    assert "1 of 3 requests have no output tokens" in capsys.readouterr().err


def test_rate_scaling_keeps_a_long_traces_day() -> None:
    """Copies of a trace spanning hours shift by minutes, not its whole span: x10 of a day
    keeps its hourly swing; a one-hour sample still shifts over all of it."""
    from heteroscale_ray.traces import Trace, scale_rate, shape_keeping_shift

    rng = np.random.default_rng(0)
    hours = np.arange(24)
    rate = 1 + (hours >= 8) * (hours < 20) * 2.0  # 3x the load from 08:00 to 20:00
    arrivals = np.concatenate(
        [
            h * 3600 + np.sort(rng.random(int(r * 200)) * 3600)
            for h, r in zip(hours, rate, strict=True)
        ]
    )
    day = Trace.from_columns(arrivals, np.full(len(arrivals), 100), np.full(len(arrivals), 10))
    assert shape_keeping_shift(day.duration_s) == 600.0
    assert shape_keeping_shift(3600.0) is None

    def swing(t: Trace) -> float:
        per_hour = np.histogram(t.arrival_s, bins=np.arange(0, 86_401, 3600))[0]
        return per_hour.max() / per_hour.min()

    kept = scale_rate(day, 10, seed=0, max_shift_s=shape_keeping_shift(day.duration_s))
    smeared = scale_rate(day, 10, seed=0)
    assert swing(kept) > 2.5  # the day's 3x swing, less the edges of its two steps
    assert swing(smeared) < 2.0


def _fleet_line(argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> str:
    base = [
        "replay",
        "--trace",
        "azure-conv",
        "--services",
        SIM_SERVICES,
    ]
    rc = main([*base, "--service", "general", "--duration", "20", "--rate-scale", "1200",
               "--policy", "static", "--out", str(tmp_path), "--json", *argv])  # fmt: skip
    assert rc == 0
    return capsys.readouterr().err


def test_the_default_fleet_holds_a_heavy_traces_static_fleet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 20 s of Azure conversation at x1200 needs about 1,536 GPUs of static fleet: a 1,024-GPU
    # default ran such traffic overloaded (queues without end, 30-50x slower to replay); the
    # fleet now grows to hold it, and a --gpus too small for it says so.
    err = _fleet_line([], capsys, tmp_path)
    gpus = int(err.split(" GPUs (")[0].rsplit(" ", 1)[-1].replace(",", ""))
    assert gpus > 1024 and "overloaded" not in err
    err = _fleet_line(["--gpus", "1024"], capsys, tmp_path)
    assert "1024 GPUs (" in err
    assert "the one built for --gpus 1,024 has 1,024: results are for an overloaded fleet" in err


def test_a_request_no_instance_holds_does_not_size_the_fleet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ingress rejects a 20M-token prompt; sized with it, one servable request got a
    5,376-GPU fleet (and a 2e9-token row ran the machine out of memory sizing decode)."""
    head = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,1000,200\n"
    services = SIM_SERVICES
    argv = ["replay", "--services", services, "--service", "general", "--policy", "static"]
    fleets = []
    for name, extra in (("one", ""), ("mixed", "2023-11-16 18:15:47,20000000,200\n")):
        trace = tmp_path / f"{name}.csv"
        trace.write_text(head + extra)
        assert main([*argv, "--trace", str(trace), "--out", str(tmp_path)]) == 0
        fleets.append(capsys.readouterr().err.split(" GPUs (")[0].rsplit(" ", 1)[-1])
    assert fleets[0] == fleets[1] == "1024"
    (tmp_path / "huge.csv").write_text(
        head.splitlines()[0] + "\n2023-11-16 18:15:46,2000000000,1\n"
    )
    assert main([*argv, "--trace", str(tmp_path / "huge.csv"), "--out", str(tmp_path)]) == 2
    assert "no request of service 'general' fits" in capsys.readouterr().err


def test_an_slo_no_instance_count_meets_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (ROOT / "examples" / "sim_services.yaml").read_text()
    services = tmp_path / "tight.yaml"
    services.write_text(text.replace("tbt_s: 0.05", "tbt_s: 0.001"))
    assert "tbt_s: 0.001" in services.read_text()
    argv = ["replay", "--trace", "azure-conv", "--services", str(services), "--service", "general"]
    assert main([*argv, "--duration", "30", "--out", str(tmp_path)]) == 2
    assert "steps even one sequence within 85% of the 1 ms TBT SLO" in capsys.readouterr().err


def test_a_peak_past_max_instances_is_said_not_served_short_in_silence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `general` held each role to 400 instances: Mooncake x100 asks ~600 prefill, and every
    # policy replayed a capped service (55% attainment, TTFT p99 1,100 s) without a word.
    text = (ROOT / "examples" / "sim_services.yaml").read_text()
    services = tmp_path / "capped.yaml"
    services.write_text(text.replace("max_instances: 2000}", "max_instances: 3}"))
    assert services.read_text().count("max_instances: 3}") == 2
    argv = ["replay", "--trace", "azure-conv", "--services", str(services), "--service",
            "general", "--duration", "20", "--rate-scale", "40", "--policy", "static",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "the trace's peak needs" in err and "where max_instances is 3" in err
    assert "raise max_instances" in err
    argv[argv.index(str(services))] = SIM_SERVICES
    assert main(argv) == 0
    assert "max_instances" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["pd-sweep", "--input-tokens", "1000", "--output-tokens", "200", "--duration", "30"],
         "a stress run of 30 s is all warm-up"),
        (["tune", "--trace", "azure-conv", "--duration", "40"], "a stress run of 40 s is all warm-up"),
        (["pd-sweep", "--trace", "EMPTY"], "holds no requests to draw lengths from"),
    ],
)  # fmt: skip
def test_sweeps_that_could_measure_nothing_say_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], error: str
) -> None:
    """A run within its warm-up measured no request: pd-sweep printed 0.00 req/s for every
    split and a best ratio; an empty trace raised from the Poisson draw."""
    empty = tmp_path / "empty.csv"
    empty.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    argv = [str(empty) if a == "EMPTY" else a for a in args]
    services = SIM_SERVICES
    out = ["--out", str(tmp_path)] if argv[0] == "pd-sweep" else []  # tune writes no files
    assert main([*argv, "--services", services, *out]) == 2
    assert error in capsys.readouterr().err


def test_the_replay_fleet_hosts_an_s1_service_whose_roles_differ_in_gpu_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """S1 is the default affinity: a DG must fit in one mini-pod. The replay's fleet gave each
    mini-pod one GPU type, so prefill on L20 and decode on H20 placed nothing (0% attainment,
    and a hint to pass a larger --gpus)."""
    services = tmp_path / "s1.yaml"
    services.write_text(
        "services:\n  - name: s1chat\n    model: dense-8b\n"
        "    slo: {ttft_s: 2.0, tbt_s: 0.05}\n    pd_ratio: '1:2'\n"
        "    prefill: {gpu_types: [L20], min_instances: 1, max_instances: 200}\n"
        "    decode: {gpu_types: [H20], min_instances: 1, max_instances: 200}\n"
        "    policy: {signal: demand}\n"
    )
    argv = ["replay", "--trace", "azure-conv", "--services", str(services), "--duration", "300"]
    assert main([*argv, "--policy", "static", "--out", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["slo_attainment"] > 0.99 and "not placed" not in captured.err


def test_a_topology_with_no_host_for_a_role_is_refused_before_replaying(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`validate` refuses a --topology with no host a role's instance fits on; replay had run
    it to 0% with no instance ever placed, and exited 0."""
    topo = tmp_path / "l40s.yaml"
    text = (ROOT / "examples" / "topology.yaml").read_text()
    for gpu in ("H800", "H20", "L20", "A100"):
        text = text.replace(gpu, "L40S")
    topo.write_text(text)
    argv = ["replay", "--trace", "azure-conv", "--services", SIM_SERVICES, "--service", "general"]
    assert main([*argv, "--topology", str(topo), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot replay on" in err and "no host of H800 holds 4 GPU(s)" in err
    assert not (tmp_path / "summary.json").exists()


def test_an_out_folder_that_cannot_be_made_is_refused_before_replaying(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file given as --out (or a path under one) failed only after every policy had run,
    and the results went with it; an empty --out wrote into the working folder."""
    blocker = tmp_path / "afile"
    blocker.write_text("")
    argv = ["replay", "--trace", "azure-conv", "--services", SIM_SERVICES, "--service", "general"]
    for out, said in ((blocker, "cannot make folder"), (blocker / "sub", "cannot make folder")):
        assert main([*argv, "--out", str(out)]) == 2
        assert said in capsys.readouterr().err
    assert main([*argv, "--out", ""]) == 2
    assert "is empty: name a folder" in capsys.readouterr().err
    assert main([*argv, "--service", "", "--out", str(tmp_path)]) == 2
    assert "--service '' is not in" in capsys.readouterr().err


def test_a_gzipped_jsonl_named_jsonl_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Read as text its first line is not UTF-8, and the skip that offered left nothing."""
    import gzip

    packed = tmp_path / "mc.jsonl"
    packed.write_bytes(gzip.compress(b'{"timestamp": 0, "input_length": 9, "output_length": 2}\n'))
    assert main(["replay", "--trace", str(packed), "--services", SIM_SERVICES]) == 2
    err = capsys.readouterr().err
    assert "looks gzipped: name it mc.jsonl.gz" in err and "--skip-malformed" not in err
