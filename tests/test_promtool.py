"""The ingress's /metrics text passes `promtool check metrics` (Prometheus naming conventions).

Rendered in-process from sample reports of both roles plus the ingress's own request metrics;
tests/test_serving.py checks a live endpoint the same way. promtool comes with Debian's
`prometheus` package, which .ci/run installs when apt-get is there.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from heteroscale_ray.serving.metrics import (
    REPLICA_METRICS,
    RequestMetrics,
    render_arrivals,
    render_prometheus,
)
from heteroscale_ray.serving.replica_stats import IngressLoad, ReplicaStats

IDENTITY = {"app_name": "s-a", "service": "s", "dg_id": "a", "gpu_type": "H20"}


def sample_text() -> str:
    decode = ReplicaStats(
        replica_id="d",
        role="decode",
        ttft_p99=0.3,
        tbt_p99=0.05,
        step_mean_s=0.02,
        step_batch_mean=12.0,
        step_context_mean=1500.0,
        step_token_mean_s=0.025,
        output_tokens_mean=10.0,
        kv_handoff_count=3,
        kv_handoff_bytes_total=1000,
        kv_handoff_seconds_total=0.01,
        **IDENTITY,
    )
    prefill = ReplicaStats(
        replica_id="p",
        role="prefill",
        ttft_wait_p99=0.1,
        ttft_service_p99=0.2,
        prefill_queue_s=0.0,
        prefill_queue_peak_s=0.5,
        prefill_tokens_per_busy_s=1000.0,
        requests_total=3,
        **IDENTITY,
    )
    req = RequestMetrics()
    req.prompt("s", 10)
    req.first_token("s", 0.1)
    req.inter_token("s", 0.02)
    req.finished("s", "length", 5, 0.5)
    req.error("s", 429)
    req.migration("s", "decode_failed")
    arrivals = render_arrivals({"s": IngressLoad(10.0, 1.0)})
    return render_prometheus([decode, prefill]) + arrivals + req.render()


def promtool_problems(text: str) -> str:
    """promtool's complaints about `text` ("" when clean); skips when promtool is absent."""
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip(
            "promtool not installed (Debian package `prometheus`; .ci/run installs it with "
            "apt-get when it can)"
        )
    res = subprocess.run(
        [exe, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    return (res.stdout + res.stderr).strip() if res.returncode else ""


def test_ingress_metrics_pass_promtool() -> None:
    assert promtool_problems(sample_text()) == ""


def test_conventions_hold_without_promtool() -> None:
    text = sample_text()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    for name, kind in types.items():
        if kind == "counter":  # the text format's TYPE line names the sample: `..._total`
            assert name.endswith("_total") and re.search(rf"^{name}\{{", text, re.M), name
        else:
            assert not name.endswith("_total"), name
        assert not re.search(r"_(s|ms|per_s)(_|$)", name), name
    assert "quantile=" not in text
    for hist in (
        "heteroscale_time_to_first_token_seconds",
        "heteroscale_inter_token_latency_seconds",
        "heteroscale_e2e_request_latency_seconds",
    ):
        assert types[hist] == "histogram"
        for suffix in ("_bucket{", "_sum{", "_count{"):
            assert hist + suffix in text
    for counter in (
        "heteroscale_prompt_tokens",
        "heteroscale_generation_tokens",
        "heteroscale_request_success",
        "heteroscale_request_migrations",
    ):
        assert types[counter + "_total"] == "counter"
    for gauge in (
        "heteroscale_num_requests_running",
        "heteroscale_num_requests_waiting",
        "heteroscale_kv_cache_usage_perc",
    ):
        assert types[gauge] == "gauge"


def test_each_role_exports_only_its_own_metrics() -> None:
    text = sample_text()
    for m in REPLICA_METRICS:
        for role, replica in (("prefill", "p"), ("decode", "d")):
            present = re.search(rf'^heteroscale_{m.name}\{{[^}}]*replica="{replica}"', text, re.M)
            assert bool(present) == (role in m.roles), (m.name, role)
