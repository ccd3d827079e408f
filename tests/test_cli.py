"""The CLI's cheap commands: validate explains errors with exit code 2; schema writes files;
every command ends on a closed pipe or Ctrl-C with one line and exit code 141 / 130."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from heteroscale_ray.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_validate_ok(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "validate",
            str(ROOT / "examples/services.yaml"),
            "--topology",
            str(ROOT / "examples/topology.yaml"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "2 service(s): chat, summarise" in out
    assert "64 GPUs" in out


def test_validate_bad_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("services:\n  - name: Chat!\n")
    rc = main(["validate", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{bad}: services[0].name" in err


def test_schema_writes(tmp_path: Path) -> None:
    assert main(["schema", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "topology.schema.json").exists()


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 1
    assert "heteroscale demo" in capsys.readouterr().out


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nobody listens


@pytest.mark.parametrize("command", ["status", "stop"])
def test_unreachable_address_fails_fast_with_a_hint(command: str) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(SystemExit) as e:
        main([command, "--address", address])
    message = str(e.value.code)
    assert f"cannot reach a Ray cluster at {address!r}" in message
    assert "--address" in message


def test_malformed_address_says_the_expected_form() -> None:
    with pytest.raises(SystemExit) as e:
        main(["status", "--address", "head-node:port"])
    assert "host:port" in str(e.value.code)


def _demand_status() -> dict[str, object]:
    """A `PolicyEngine.status()` as a demand service's control plane returns it (no Ray)."""
    from heteroscale_ray.demo import scenario
    from heteroscale_ray.policy import PolicyState
    from heteroscale_ray.policy.capacity import capacity
    from heteroscale_ray.policy.types import Signals

    spec = scenario.services().services[0]
    state = PolicyState(
        prefill_capacity_scale=0.25, decode_capacity_scale=0.5, capacity_learned_at=1.0
    )
    cap = capacity(spec, Signals(prompt_mean=400, output_mean=32), state)
    return {
        "advisory": False,
        "period_s": 2.0,
        "cycles": 7,
        "services": [
            {
                "name": spec.name,
                "pd_ratio": "1:2",
                "active_ratio": "1:2",
                "priority": 0,
                "signal": "demand",
                "target_per_instance": None,
            }
        ],
        "capacity": {
            spec.name: {
                "prefill_tps": cap.prefill_tps,
                "decode_batch": cap.decode_batch,
                "decode_tps": cap.decode_tps,
                "prefill_scale": cap.prefill_scale,
                "decode_scale": cap.decode_scale,
                "source": cap.source,
                "prompt_mean": 400.0,
                "output_mean": 32.0,
                "learned_at": 1.0,
                "startup_s": 7.0,
                "burst_horizon_s": 22.0,
                "window_holds_down_to": {"prefill": 0.05, "decode": 1.0},
                "text": cap.describe() + ", instances start in 7 s (timed)",
            }
        },
        "observations": {
            spec.name: {
                "request_rate": 2.5,
                "prompt_mean": 400.0,
                "prefill_queue_s": 0.8,
                "decode_running": 3.0,
                "decode_queue": 0.0,
                "ttft_p99_s": 1.4,
                "ttft_wait_p99_s": 0.9,
                "ttft_service_p99_s": 0.5,
                "tbt_p99_s": 0.06,
                "decode_step_s": 0.045,
                "prompt_bursts": (900.0, 1200.0, 1600.0, 2400.0),
            }
        },
        "pre_scheduler": {"dgs": [], "pending_removals": []},
        "decisions": [],
    }


def test_status_text_shows_learned_capacity_and_demand_signals() -> None:
    from heteroscale_ray.actors.control_plane import format_status

    st = _demand_status()
    text = format_status(st)
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("capacity:"))
    assert "tok/s/instance (x0.25)" in line and "(x0.50)" in line and "learned" in line
    assert "at prompt 400 / output 32 tokens" in line
    assert "instances start in 7 s (timed)" in line
    assert "scale-in window holds falls to 5% / 100% of a peak (prefill / decode)" in line
    observed = next(ln for ln in text.splitlines() if ln.strip().startswith("observed:"))
    for part in ("rate 2.50 req/s", "prefill queue 0.80 s", "wait 900 ms", "decode step 45.0 ms"):
        assert part in observed, observed
    assert "heaviest burst 900/1,200/1,600/2,400 tok within 1/2/4/8 s" in observed
    assert "demand (learned)" in text  # no target_per_instance to print for a demand service


def test_capacity_gauges_in_the_metrics_text() -> None:
    from heteroscale_ray.actors.metrics import ControlPlaneMetrics

    st = _demand_status()
    metrics = ControlPlaneMetrics(None)
    metrics.record_capacity(st["capacity"])  # type: ignore[arg-type]
    text = metrics.text()
    assert 'heteroscale_cp_capacity{kind="batch",role="decode",service="chat"}' in text
    assert 'heteroscale_cp_capacity_scale{role="prefill",service="chat"} 0.25' in text
    assert 'heteroscale_cp_capacity_learned{service="chat"} 1.0' in text
    assert 'heteroscale_cp_burst_horizon_seconds{service="chat"} 22.0' in text
    assert 'heteroscale_cp_window_holds_down_to{role="prefill",service="chat"} 0.05' in text


# --- closed pipes and Ctrl-C, as subprocesses (what a shell sees) ----------------------------

EXE = str(Path(sys.executable).with_name("heteroscale"))
TRACEBACK = "Traceback (most recent call last)"


def _closed_pipe(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run `heteroscale argv` with a stdout reader that has already left (`| head -0`)."""
    proc = subprocess.Popen(
        [EXE, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the command writes: it needs far longer to start Python
    err = proc.stderr.read()
    return proc.wait(timeout=300), err


@pytest.mark.parametrize(
    "argv",
    [
        ["validate", str(ROOT / "examples/services.yaml")],
        [
            "replay", "--trace", "azure-conv", "--services", str(ROOT / "examples/sim_services.yaml"),
            "--duration", "30", "--gpus", "64", "--policy", "static", "--out", "out",
        ],
    ],
    ids=["validate", "replay"],
)  # fmt: skip
def test_closed_pipe_ends_with_one_line_and_141(argv: list[str], tmp_path: Path) -> None:
    code, err = _closed_pipe(argv, tmp_path)
    assert code == 141, err
    assert TRACEBACK not in err
    # replay's progress lines come first; the message is the one last line
    assert err.splitlines()[-1] == (
        f"heteroscale {argv[0]}: output closed by the reader (broken pipe); stopped"
    )


def interruptible() -> None:
    """In the child before exec: SIGINT back to its default. A test run started as a background
    job (`make test &`, nohup) ignores SIGINT, children inherit that, and Python then installs
    no KeyboardInterrupt handler, so the Ctrl-C under test would never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_ends_with_one_line_and_130(tmp_path: Path) -> None:
    # a replay long enough to be interrupted mid-way: five policies on 20 min of ServeGen x64, minutes of work even on an idle machine
    argv = [
        "replay", "--trace", "servegen-mlarge", "--services", str(ROOT / "examples/sim_services.yaml"),
        "--service", "general", "--rate-scale", "64", "--policy", "all", "--out", "out",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [EXE, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        preexec_fn=interruptible,
    )
    assert proc.stdout is not None and proc.stderr is not None
    err: list[str] = []
    running = threading.Event()

    def read_stderr() -> None:  # progress lines end in \r, not \n: read by character
        while char := proc.stderr.read(1):
            err.append(char)
            if not running.is_set() and "simulated" in "".join(err[-40:]):
                running.set()  # the replay loop runs

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert running.wait(timeout=240), "".join(err)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=30)
    text = "".join(err)
    assert code == 130, text
    assert TRACEBACK not in text
    assert text.splitlines()[-1] == "heteroscale replay: interrupted (Ctrl-C)"
    assert proc.stdout.read() == ""  # stopped before the summary table
    assert not (tmp_path / "out" / "summary.json").exists()


def test_watch_interval_is_checked_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["status", "--watch", "--interval", "0.05"])
    assert e.value.code == 2
    assert "--interval: must be at least 0.2 s (got 0.05)" in capsys.readouterr().err


def test_run_command_turns_broken_pipe_and_ctrl_c_into_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import argparse

    from heteroscale_ray.cli import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, run_command

    def raises(exc: type[BaseException]):  # noqa: ANN202
        def func(args: argparse.Namespace) -> int:
            raise exc()

        return func

    ctrl_c = argparse.Namespace(command="status", func=raises(KeyboardInterrupt))
    assert run_command(ctrl_c) == EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == "heteroscale status: interrupted (Ctrl-C)\n"
    pipe = argparse.Namespace(command="replay", func=raises(BrokenPipeError))
    assert run_command(pipe) == EXIT_BROKEN_PIPE == 141
    assert "heteroscale replay: output closed by the reader" in capsys.readouterr().err
    other = argparse.Namespace(command="status", func=raises(ValueError))
    with pytest.raises(ValueError):  # real bugs keep their traceback
        run_command(other)

    def wrapped(args: argparse.Namespace) -> int:  # Ctrl-C inside a C callback (numba)
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise SystemError("returned a result with an exception set") from exc

    in_numba = argparse.Namespace(command="replay", func=wrapped)
    assert run_command(in_numba) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "heteroscale replay: interrupted (Ctrl-C)\n"
    with pytest.raises(SystemError):
        run_command(argparse.Namespace(command="replay", func=raises(SystemError)))


def test_demo_trace_defaults_to_the_packaged_sample_without_shared(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from heteroscale_ray.demo import commands
    from heteroscale_ray.traces.samples import SAMPLES

    monkeypatch.setattr(commands, "REPO_TRACE", tmp_path / "absent.csv")
    assert commands.default_trace() == SAMPLES["azure-conv"].path


@pytest.mark.parametrize(
    ("trace", "message"),
    [("mooncake", "Azure-format CSV"), ("nope", "packaged samples: azure-conv, mooncake")],
)
def test_demo_rejects_a_trace_it_cannot_use_before_starting(trace: str, message: str) -> None:
    with pytest.raises(SystemExit) as e:
        main(["demo", "--trace", trace])
    assert message in str(e.value.code)


def test_status_text_shows_a_target_carried_to_todays_lengths() -> None:
    from heteroscale_ray.actors.control_plane import format_status

    st = _demand_status()
    row = {**st["services"][0], "signal": "decode_tps", "target_per_instance": 750.0}
    st["services"] = [{**row, "carried_target_per_instance": 1062.4}]
    st["capacity"] = {}
    assert "decode_tps (750 -> 1,062)" in format_status(st)
    st["services"] = [{**row, "carried_target_per_instance": None}]  # no tuned_at: as configured
    assert "decode_tps (750)" in format_status(st)


@pytest.mark.parametrize("option", ["--metrics-port", "--http-port"])
def test_a_port_past_65535_is_refused_where_it_is_typed(
    option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--metrics-port 70000` had printed "started" while the policy engine died on it."""
    with pytest.raises(SystemExit) as e:
        main(["start", "--services", "examples/services.yaml", option, "70000"])
    assert e.value.code == 2
    assert "must be a TCP port in 0..65535 (got 70000)" in capsys.readouterr().err


def test_a_plan_line_belongs_to_its_service_not_one_whose_name_it_starts() -> None:
    from heteroscale_ray.actors.policy_engine import _about

    lines = ["add 1 prefill to svc2-dg0", "delete svc-dg10 (soft)", "unplaced 2 decode of svc2: x",
             "add 1 decode to svc-dg1-dg0", "unplaced 1 decode of svc-dg1: x"]  # fmt: skip
    assert [line for line in lines if _about(line, "svc")] == ["delete svc-dg10 (soft)"]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"prefill": "{gpu_types: [L20]}", "model": "dense-70b"},
         "prefill: dense-70b does not fit on 1 GPU(s) of L20"),
        ({"tbt_s": "0.001"}, "decode: no GPU type of H20 steps even one sequence within 85% of the 1 ms"),
        ({"ttft_s": "0.001"}, "at or above the 1 ms TTFT SLO"),
        ({"topology": "L20=2", "prefill": "{gpu_types: [L20], gpus_per_instance: 4}"},
         "prefill: no host of L20 holds 4 GPU(s) for one instance"),
        ({"topology": "H2O=4"}, "GPU type(s) ['H2O'] the catalog lacks"),
    ],
)  # fmt: skip
def test_validate_refuses_a_service_no_fleet_can_serve(
    change: dict[str, str], error: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each was OK to `validate`, then a replay scored 0% or blamed the fleet's size."""
    c = {"model": "dense-8b", "ttft_s": "1.0", "tbt_s": "0.05",
         "prefill": "{gpu_types: [L20]}", **change}  # fmt: skip
    services = tmp_path / "s.yaml"
    services.write_text(
        f"services:\n  - name: x\n    model: {c['model']}\n"
        f"    slo: {{ttft_s: {c['ttft_s']}, tbt_s: {c['tbt_s']}}}\n    pd_ratio: '1:1'\n"
        f"    prefill: {c['prefill']}\n    decode: {{gpu_types: [H20]}}\n"
        "    policy: {signal: demand}\n"
    )
    argv = ["validate", str(services)]
    if "topology" in c:
        gpu, n = c["topology"].split("=")
        hosts = f"[{{name: a, gpu_type: {gpu}, gpus: {n}}}, {{name: b, gpu_type: H20, gpus: 8}}]"
        (tmp_path / "t.yaml").write_text(
            "big_pods: [{name: p, mini_pods: [{name: m, leaves: [{name: l, hosts: "
            f"{hosts}}}]}}]}}]\n"
        )
        argv += ["--topology", str(tmp_path / "t.yaml")]
    assert main(argv) == 2
    assert error in capsys.readouterr().err


def test_status_imports_neither_the_router_nor_the_replicas() -> None:
    """`heteroscale status` is an operator's quick look: its imports (the control plane's
    status and the routing table's query) must not pull in Serve's router, FastAPI or the
    replica servers, which took 1.4 s of its 3.8 s before they were kept out. Runs status's
    own code with the two cluster reads stubbed, in a fresh interpreter."""
    probe = (
        "import argparse, sys\n"
        "import heteroscale_ray.actors.control_plane as cp\n"
        "import heteroscale_ray.serving.routing_table as rt\n"
        "from heteroscale_ray.actors.commands import _status_text\n"
        "cp.control_plane_status = lambda last: {'decisions': []}\n"
        "rt.request_migrations = lambda: None\n"
        "args = argparse.Namespace(metrics=False, json=True, last=10)\n"
        "assert 'request_migrations' in _status_text(args)\n"
        "heavy = ('fastapi', 'heteroscale_ray.serving.router', 'heteroscale_ray.serving.deployments',\n"
        "    'heteroscale_ray.serving.decode', 'heteroscale_ray.serving.prefill')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "", out.stdout
