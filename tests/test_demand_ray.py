"""`signal: demand` on the real path: a prefill-heavy load scales prefill out within 3 periods.

A control plane on the shared local Ray cluster runs one `signal: demand` service (prefill on
L20, decode on H20) whose emulated GPUs are TIME_SCALE x slower than the roofline prior
assumes. Long prompts with 2-token outputs arrive over the OpenAI endpoint at a rate one
prefill replica cannot carry. The demand signals (ingress arrivals, prefill busy time) and the
learned capacity must make a decision scale prefill out within 3 control periods of the load
starting; `status` then shows the learned capacity and the new observation fields (the
ingress's heaviest bursts among them), and the metrics export it. Everything started here is stopped at the end.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from test_serving import _wait_routed

from heteroscale_ray.config import ServicesConfig, parse_yaml_text

pytestmark = pytest.mark.slow

SERVICE = "heavy"
PERIOD_S = 2.5
TIME_SCALE = 4.0  # a 450-token prompt takes ~0.5 s on the emulated L20: ~2 req/s saturate it
PROMPT_BYTES = 450  # the byte tokenizer: ~450 prompt tokens
RATE = 4.0  # requests/s: about twice what one prefill replica carries
SERVICES_YAML = f"""
services:
  - name: {SERVICE}
    slo: {{ttft_s: 5.0, tbt_s: 1.0}}
    pd_ratio: "1:2"
    prefill: {{gpu_types: [L20], min_instances: 1, max_instances: 3}}
    decode: {{gpu_types: [H20], min_instances: 2, max_instances: 3}}
    affinity: S1
    policy:
      signal: demand
      scale_out_cooldown_s: 2
      scale_in_cooldown_s: 60
      stale_after_s: 30
      demand: {{learn_smoothing_s: 10, drain_s: 10}}
      latency_guard: {{enabled: false}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status() -> dict[str, Any]:
    from heteroscale_ray.actors.control_plane import control_plane_status

    return control_plane_status(200)


def _wait(what: str, check: Any, timeout_s: float, every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as e:  # actor busy or restarting: try again
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}; last: {last!r}")


def test_prefill_heavy_load_scales_prefill_out_within_three_periods(ray_cluster: object) -> None:
    import ray
    from ray import serve

    from heteroscale_ray.actors.control_plane import (
        ControlPlaneSettings,
        format_status,
        policy_engine,
        start_control_plane,
        stop_control_plane,
    )
    from heteroscale_ray.actors.serving_adapter import ServingOptions
    from heteroscale_ray.demo.load import LoadGenerator
    from heteroscale_ray.serving.emulation import EmulationConfig
    from heteroscale_ray.serving.model import ModelConfig

    port = _free_port()
    options = ServingOptions(
        engine=ModelConfig(n_layers=2, d_model=64, n_heads=4, max_context=512),
        emulation=EmulationConfig(enabled=True, time_scale=TIME_SCALE),
        graceful_shutdown_timeout_s=30.0,
    )
    settings = ControlPlaneSettings(period_s=PERIOD_S, soft_window_s=5.0, options=options)
    config = parse_yaml_text(SERVICES_YAML, ServicesConfig, "test services")
    load = None
    try:
        start_control_plane(config, settings=settings, http_host="127.0.0.1", http_port=port)
        _wait(
            "the first DG (1P/2D) running with its gate open",
            lambda: (
                (dgs := _status()["pre_scheduler"].get("dgs"))
                and all(d["gate_open"] for d in dgs)
                and sum(d["running"]["prefill"] for d in dgs) == 1
            ),
            120,
        )
        _wait_routed(f"http://127.0.0.1:{port}")  # the proxy can lag the deploy under load
        started = time.time()
        load = LoadGenerator(
            f"http://127.0.0.1:{port}",
            SERVICE,
            lambda t: RATE,
            prompt_bytes=PROMPT_BYTES,
            max_tokens=2,
        ).start()

        def prefill_out() -> dict[str, Any] | None:
            for e in _status()["decisions"]:
                mine = e["service"] == SERVICE and e["time"] > started
                if mine and e["prefill"] > e["had_prefill"]:
                    return e
            return None

        out = _wait("a decision that scales prefill out", prefill_out, 60)
        st = _status()
        ours = [e for e in st["decisions"] if e["service"] == SERVICE and e["time"] > started]
        trail = [(round(e["time"] - started, 1), e["reason"], e["message"]) for e in ours]
        # Periods are counted as control cycles (one decision each), not read off the wall
        # clock: a machine that stalls every process stalls the loop too, and its cycles then
        # come late without the policy being any slower to react. A cycle that came within a
        # period of the load's start saw only part of a period of it (its phase is the loop's,
        # anywhere in the period): the count starts at the first that saw a whole one.
        cycles = [e for e in ours if started + PERIOD_S <= e["time"] <= out["time"]]
        assert len(cycles) <= 3, trail
        assert out["reason"] in ("scale_out", "backlog_growth", "latency_guard"), trail
        assert out["prefill"] >= 2 and "tok/s/instance" in out["message"], trail

        # status: the capacity in force and the demand-side observations, as data and text
        cap = st["capacity"][SERVICE]
        assert cap["prefill_tps"] > 0 and cap["decode_batch"] > 0, cap
        assert cap["source"] in ("learned", "prior"), cap
        obs = st["observations"][SERVICE]
        for key in ("request_rate", "prompt_mean", "ttft_wait_p99_s", "prefill_queue_s"):
            assert key in obs, obs
        assert obs["request_rate"] and obs["prompt_mean"] and obs["prompt_mean"] > 200, obs
        # the ingress's heaviest bursts reach the policy, one count per span, a prompt at least
        bursts = obs["prompt_bursts"]
        assert bursts is not None and len(bursts) == 4 and 0 < bursts[0] <= bursts[-1], obs
        text = format_status(st)
        assert "capacity: prefill" in text and "rate " in text, text
        assert "heaviest burst " in text, text
        metrics = ray.get(policy_engine().metrics_text.remote(), timeout=30)
        gauge = f'heteroscale_cp_capacity{{kind="tokens_per_s",role="prefill",service="{SERVICE}"}}'
        assert gauge in metrics, metrics[-2000:]
        assert "heteroscale_cp_capacity_scale" in metrics
        assert 'signal="prompt_burst_1s"' in metrics, metrics[-2000:]
        took = out["time"] - started
        print(f"\nprefill scaled out at cycle {len(cycles)}, {took:.1f} s after the load started:")
        for row in trail[:4]:
            print("  ", row)
        print("  ", cap["text"])
        assert not load.failures(), load.failures()[:3]
    finally:
        if load is not None:
            load.stop(drain_s=30)
        stop_control_plane(purge=True)
        serve.shutdown()
