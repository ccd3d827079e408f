"""The operator's path (runs after test_control_plane): `heteroscale start --advisory`,
`status` and `stop --purge` as subprocesses against the shared local cluster. Advisory mode
must decide and export, and actuate nothing."""

from __future__ import annotations

import json
import os
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
