"""The CLI's cheap commands: validate explains errors with exit code 2; schema writes files."""

from __future__ import annotations

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
                "text": cap.describe(),
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
    observed = next(ln for ln in text.splitlines() if ln.strip().startswith("observed:"))
    for part in ("rate 2.50 req/s", "prefill queue 0.80 s", "wait 900 ms", "decode step 45.0 ms"):
        assert part in observed, observed
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
