"""The operator's path (runs after test_control_plane): `heteroscale start --advisory`,
`status` (also `--watch`, Ctrl-C and a closed pipe) and `stop --purge` as subprocesses against
the shared local cluster. Advisory mode must decide and export, and actuate nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

SERVICES_YAML = """
services:
  - name: advised
    slo: {ttft_s: 2.0, tbt_s: 0.2}
    pd_ratio: "1:2"
    prefill: {gpu_types: [L20], min_instances: 1, max_instances: 2}
    decode: {gpu_types: [H20], min_instances: 2, max_instances: 4}
    affinity: S1
    policy: {target_per_instance: 30}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("heteroscale")
    return subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "RAY_DEDUP_LOGS": "0"},
    )


def _status(address: str) -> dict[str, Any]:
    out = _cli("status", "--address", address, "--json", "--last", "50")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _exe() -> str:
    return str(Path(sys.executable).with_name("heteroscale"))


def _watch(address: str, *extra: str, frames: int = 2) -> tuple[int, list[str], str]:
    """`status --watch` into a pipe until `frames` whole frames arrived, then Ctrl-C."""
    proc = subprocess.Popen(
        [_exe(), "status", "--address", address, "--watch", "--interval", "0.5", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
        env={**os.environ, "RAY_DEDUP_LOGS": "0"},
    )
    assert proc.stdout is not None
    lines: list[str] = []
    json_mode = "--json" in extra
    try:
        for line in proc.stdout:  # each frame is flushed whole
            lines.append(line.rstrip("\n"))
            done = len(lines) if json_mode else sum(x.startswith(HEADER) for x in lines) - 1
            if done >= frames:
                break
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, lines + rest.splitlines(), err


HEADER = "heteroscale status at "


def interruptible() -> None:
    """In the child before exec: SIGINT back to its default (a background test run ignores it,
    and children inherit that; see tests/test_cli.py)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_start_advisory_status_metrics_stop(ray_cluster: Any, tmp_path: Path) -> None:
    from ray import serve

    address = ray_cluster.address
    services = tmp_path / "services.yaml"
    services.write_text(SERVICES_YAML)

    bad = tmp_path / "bad.yaml"
    bad.write_text(SERVICES_YAML.replace('"1:2"', '"one to two"'))
    rejected = _cli("start", "--address", address, "--services", str(bad))
    assert rejected.returncode == 2
    assert "services[0].pd_ratio" in rejected.stderr

    started = _cli(
        "start", "--address", address, "--services", str(services), "--advisory",
        "--period", "1", "--metrics-port", "0", "--http-host", "127.0.0.1",
        "--http-port", str(_free_port()),
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert "advisory mode" in started.stdout
    try:
        deadline = time.monotonic() + 90
        st = _status(address)
        while time.monotonic() < deadline and len(st["decisions"]) < 3:
            time.sleep(1)
            st = _status(address)
        decisions = [d for d in st["decisions"] if d["service"] == "advised"]
        assert len(decisions) >= 3
        assert all(d["advisory"] for d in decisions)
        # It wants the service's minimum (1P/2D) and says why, but creates nothing.
        assert (decisions[-1]["prefill"], decisions[-1]["decode"]) == (1, 2)
        assert decisions[-1]["message"]
        assert not [a for a in serve.status().applications if a.startswith("advised-")]
        assert st["pre_scheduler"]["dgs"] == []

        text = _cli("status", "--address", address)
        assert text.returncode == 0 and "ADVISORY" in text.stdout

        # --watch: frames until Ctrl-C, which ends it with one line and 130, no traceback
        code, lines, err = _watch(address)
        assert code == 130, err
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1] == "heteroscale status: interrupted (Ctrl-C)"
        frames = "\n".join(lines).split(HEADER)[1:]
        assert len(frames) >= 2 and all("ADVISORY" in f for f in frames[:2]), lines
        assert "every 0.5s (Ctrl-C to stop)" in frames[0]
        code, lines, err = _watch(address, "--json")
        assert code == 130, err
        objs = [json.loads(x) for x in lines[:2]]  # one JSON object a line
        assert all(o["advisory"] and "decisions" in o for o in objs)

        # `heteroscale status | head` with the reader gone: one line and 141, no traceback
        proc = subprocess.Popen(
            [_exe(), "status", "--address", address],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        proc.stdout.close()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 141, err
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1] == (
            "heteroscale status: output closed by the reader (broken pipe); stopped"
        )

        metrics = _cli("status", "--address", address, "--metrics")
        assert metrics.returncode == 0, metrics.stderr
        assert 'service="advised"' in metrics.stdout
        assert "heteroscale_" in metrics.stdout
    finally:
        stopped = _cli("stop", "--address", address, "--purge")
        serve.shutdown()  # the CLI started Serve on its own port; later tests start their own
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped heteroscale-" in stopped.stdout
    again = _cli("stop", "--address", address)
    assert "no HeteroScale control plane was running" in again.stdout
