"""Counts whole Deployment Groups can hold: every DG holds both roles, at most
`PLACEMENT_MAX_N` of one per instance of the other, so the smaller role is raised to open the
DGs the larger needs (reasoning traffic: ~30 decode instances per prefill)."""

from __future__ import annotations

import argparse
import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_demand_policy import NOW, counts, make_service, signals

from heteroscale_ray.config import Role, load_services
from heteroscale_ray.policy import PolicyState, Reason, decide
from heteroscale_ray.policy.dg_shape import PLACEMENT_MAX_N, placeable_counts, placement_ratio
from heteroscale_ray.sim.commands import register
from heteroscale_ray.sim.fleet import fleet_for
from heteroscale_ray.sim.replay import ReplayOptions, run_replay
from heteroscale_ray.topology import ClusterGraph, ScaleRequest, plan_cycle
from heteroscale_ray.traces.trace import Trace

SERVICES_YAML = Path(__file__).parents[1] / "examples" / "sim_services.yaml"
SERVICES = load_services(SERVICES_YAML)
GENERAL = SERVICES.by_name()["general"]


@given(st.integers(0, 2000), st.integers(0, 2000))
def test_placeable_counts_are_the_fewest_that_fill_whole_dgs(p: int, d: int) -> None:
    fp, fd = placeable_counts(p, d)
    assert fp >= p and fd >= d
    if p and d:
        assert fp >= math.ceil(fd / PLACEMENT_MAX_N) and fd >= math.ceil(fp / PLACEMENT_MAX_N)
        assert fp == max(p, math.ceil(d / PLACEMENT_MAX_N))
        assert fd == max(d, math.ceil(fp / PLACEMENT_MAX_N))
    else:
        assert (fp, fd) == (p, d)  # a role at zero opens no DG
    assert placeable_counts(fp, fd) == (fp, fd)


def _placed(p: int, d: int) -> tuple[int, int]:
    spec = GENERAL.model_copy(update={"pd_ratio": str(placement_ratio(p, d))})
    graph = ClusterGraph.from_topology(fleet_for([GENERAL], 1024), SERVICES.catalog)
    dgs = plan_cycle(graph, {spec.name: spec}, (), [ScaleRequest(spec.name, p, d)]).apply(())
    return sum(g.count(Role.PREFILL) for g in dgs), sum(g.count(Role.DECODE) for g in dgs)


def test_decode_past_sixteen_per_prefill_is_placed_only_with_its_dgs() -> None:
    # The CLI's default 1,024-GPU fleet: 2 prefill hold 32 decode however many H20s are free.
    assert _placed(2, 58) == (2, 32)
    assert _placed(*placeable_counts(2, 58)) == (4, 58)


def test_the_policy_opens_the_dgs_its_decode_needs() -> None:
    spec = make_service()
    # ~60k output tok/s and 3,000 running sequences: ~35 decode; prompts need ~1 prefill.
    sig = signals(request_rate=15.0, output_mean=4000.0, decode_running=3000.0)
    decision, _ = decide(spec, sig, counts(1, 16), PolicyState(), NOW)
    assert decision.decode > 2 * PLACEMENT_MAX_N
    assert decision.prefill == math.ceil(decision.decode / PLACEMENT_MAX_N)
    assert decision.reason is Reason.SCALE_OUT
    assert f"DGs (at most {PLACEMENT_MAX_N} per prefill instance)" in decision.message
    # held there while decode needs it, though prefill's own need would scale in
    held, _ = decide(spec, sig, counts(decision.prefill, decision.decode), PolicyState(), NOW)
    assert held.prefill == decision.prefill


def test_the_floor_follows_decode_as_bounded() -> None:
    spec = make_service()
    spec = spec.model_copy(update={"decode": spec.decode.model_copy(update={"max_instances": 40})})
    sig = signals(request_rate=40.0, output_mean=4000.0, decode_running=8000.0)
    decision, _ = decide(spec, sig, counts(1, 16), PolicyState(), NOW)
    assert decision.decode == 40
    assert decision.prefill == math.ceil(40 / PLACEMENT_MAX_N)  # not raised for 140 decode


def test_reasoning_traffic_gets_the_decode_it_asks_for() -> None:
    """Outputs of 4,000 tokens at 25 req/s need ~30 decode instances per prefill; asked at
    that ratio, decode stopped at 16 per prefill instance: 48 of ~58, 32% attainment."""
    rng = np.random.default_rng(3)
    n = 25 * 900
    trace = Trace.from_columns(
        np.sort(rng.uniform(0, 900, n)), rng.integers(400, 1200, n), np.full(n, 4000)
    )
    res = run_replay(SERVICES, fleet_for([GENERAL], 1024), {"general": trace}, ReplayOptions())
    assert res.summary["unplaced_instances"] == 0
    assert res.summary["slo_attainment"] >= 0.99


@pytest.mark.parametrize(
    ("counts", "want"),
    [
        (None, {"H800": 768, "H20": 256}),  # the paper's prefill-heavy default
        ((40, 10), {"H800": 768, "H20": 256}),
        ((20, 20), {"H800": 512, "H20": 512}),
        ((5, 70), {"H800": 256, "H20": 768}),  # reasoning: decode-heavy
        ((0, 100), {"H800": 256, "H20": 768}),  # never a type missing
    ],
)
def test_a_fleet_sized_for_a_trace_splits_its_gpus_as_the_counts_do(
    counts: tuple[int, int] | None, want: dict[str, int]
) -> None:
    assert fleet_for([GENERAL], 1024, counts).gpus_by_type() == want


def _reasoning_csv(tmp_path: Path) -> str:
    """Five minutes at 30 req/s of 4,000-token outputs, as an Azure CSV."""
    rng = np.random.default_rng(4)
    n = 30 * 300
    t = np.sort(rng.uniform(0, 300, n))
    rows = [
        f"{datetime.fromtimestamp(1.7e9 + x, UTC):%Y-%m-%d %H:%M:%S.%f}0,{i},4000"
        for x, i in zip(t, rng.integers(400, 1200, n), strict=True)
    ]
    path = tmp_path / "reasoning.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    return str(path)


def test_the_replay_cli_lays_the_fleet_out_for_the_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["replay", "--trace", _reasoning_csv(tmp_path), "--services", str(SERVICES_YAML)]
    args += ["--service", "general", "--policy", "static", "--out", str(tmp_path), "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    # at the paper's 3:1 (768 H800, 256 H20) 64 decode instances fit, and static asks ~80
    assert json.loads(captured.out.strip().splitlines()[-1])["unplaced_instances"] == 0
    assert "1024 GPUs (256 H800, 768 H20" in captured.err


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="heteroscale")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_the_replay_cli_says_when_asks_went_unplaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = _reasoning_csv(tmp_path)
    args = ["replay", "--trace", trace, "--services", str(SERVICES_YAML), "--gpus", "128"]
    args += ["--service", "general", "--policy", "static", "--out", str(tmp_path), "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    unplaced = json.loads(captured.out.strip().splitlines()[-1])["unplaced_instances"]
    assert unplaced > 0
    assert f"[static] {unplaced:,} instance-periods were asked for and not placed" in captured.err
