"""`heteroscale tune` (sim/tune.py): Algorithm 1 on a trace sample -> pd_ratio and target."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml

from heteroscale_ray.config import PdRatio, ServiceSpec, load_services
from heteroscale_ray.sim.commands import register
from heteroscale_ray.sim.tune import TuneResult, paper_rule, small_ratio, tune
from heteroscale_ray.traces import Trace

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / "examples" / "sim_services.yaml"
FAST = dict(instances=3, duration_s=60.0, warmup_s=15.0, iterations=3)


def _trace(n: int = 400, span: float = 600.0) -> Trace:
    rng = np.random.default_rng(1)
    arrivals = np.sort(rng.random(n) * span)
    return Trace.from_columns(
        arrivals,
        rng.integers(200, 2000, n),
        rng.integers(20, 300, n),
        duration_s=span,
        source="test",
    )


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="heteroscale")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def test_small_ratio() -> None:
    assert small_ratio(14, 2) == PdRatio(7, 1)
    assert small_ratio(6, 10) == PdRatio(3, 5)
    assert small_ratio(8, 8) == PdRatio(1, 1)
    r = small_ratio(9, 7, max_term=4)  # 9:7 has terms > 4: nearest allowed ratio
    assert max(r) <= 4 and abs(np.log(r[0] / r[1]) - np.log(9 / 7)) < 0.2


def test_tune_returns_best_split_ratio_and_target() -> None:
    services = load_services(SERVICES)
    res = tune(services, "general", _trace(), sample_s=300.0, **FAST)
    assert isinstance(res, TuneResult)
    assert [r.label for r in res.rows] == ["1:2", "2:1"]
    best = [r for r in res.rows if r.best]
    assert len(best) == 1 and best[0].goodput_rps == max(r.goodput_rps for r in res.rows)
    assert res.best_split == (best[0].prefill, best[0].decode)
    assert res.ratio == small_ratio(*res.best_split)
    assert res.target_per_instance == pytest.approx(best[0].tokens_per_s / best[0].decode)
    assert res.target_per_instance > 0 and res.prefill_target_per_instance > 0
    assert res.sample_s == pytest.approx(300.0) and 0 < res.sample_requests < 400
    # the fragment, pasted into the service's entry, validates and carries the sample's lengths
    spec = services.by_name()["general"]
    frag = res.yaml_fragment()
    assert f'pd_ratio: "{res.ratio}"' in frag and "signal: decode_tps" in frag
    assert f"target_per_instance: {round(res.target_per_instance)}" in frag
    pasted = yaml.safe_load(frag)
    data = spec.model_dump(mode="json")
    data["pd_ratio"] = pasted["pd_ratio"]
    data["policy"] = {**data["policy"], **pasted["policy"]}
    tuned = ServiceSpec.model_validate(data)
    assert tuned.ratio == res.ratio
    assert tuned.policy.tuned_at is not None
    assert tuned.policy.tuned_at.prompt_tokens == round(res.input_mean)
    assert tuned.policy.tuned_at.output_tokens == round(res.output_mean)
    assert tuned.policy.tuned_at.prompt_sd == round(res.input_sd) > 0

    # Given the service, the fragment pasted in place of its policy block is the paper's rule
    # as the benchmarks replay it (`paper_rule`), but the lengths it carries the target to.
    # `general` says only `signal: demand`, whose defaults the bare paper's rule lacks.
    full = yaml.safe_load(res.yaml_fragment(spec))
    assert "latency_guard" in full["policy"] and "scale_out_cooldown_s" in full["policy"]
    replaced = {**spec.model_dump(mode="json", exclude={"policy"}), **full}
    pasted_rule = ServiceSpec.model_validate(replaced).policy
    ruled = paper_rule(spec, res).policy
    assert pasted_rule.model_copy(update={"tuned_at": None, "target_per_instance": 1.0}) == (
        ruled.model_copy(update={"target_per_instance": 1.0})
    )
    assert abs(pasted_rule.target_per_instance - ruled.target_per_instance) <= 0.5


def test_tune_threshold_absolute_or_relative_to_ceiling() -> None:
    """Mooncake's long prompts miss an SLO on an idle fleet too (ceiling ~90%): judged against
    that ceiling a split keeps up a higher rate than against 100%, never a lower one."""
    from heteroscale_ray.traces.samples import load_trace_arg

    services = load_services(SERVICES)
    sample = load_trace_arg("mooncake")
    rel = tune(services, "general", sample, sample_s=300.0, **FAST)
    ab = tune(services, "general", sample, sample_s=300.0, relative=False, **FAST)
    assert rel.relative and not ab.relative
    assert rel.as_dict()["relative_to_ceiling"] is True
    pairs = list(zip(rel.rows, ab.rows, strict=True))
    assert all(r.label == a.label and r.goodput_rps >= a.goodput_rps for r, a in pairs)
    assert any(r.goodput_rps > a.goodput_rps for r, a in pairs)


def test_tune_is_deterministic() -> None:
    services = load_services(SERVICES)
    a = tune(services, "general", _trace(), sample_s=300.0, **FAST)
    b = tune(services, "general", _trace(), sample_s=300.0, **FAST)
    assert a.as_dict() == b.as_dict()


def test_tune_rejects_unknown_service_and_empty_sample() -> None:
    services = load_services(SERVICES)
    with pytest.raises(ValueError, match="nope"):
        tune(services, "nope", _trace(), **FAST)
    late = Trace.from_columns(
        np.array([500.0]), np.array([100]), np.array([10]), duration_s=600.0, source="late"
    )
    with pytest.raises(ValueError, match="no requests"):
        tune(services, "general", late, sample_s=60.0, **FAST)
    silent = Trace.from_columns(np.arange(50.0), np.full(50, 2000), np.zeros(50, dtype=int))
    with pytest.raises(ValueError, match="generate no tokens"):
        tune(services, "general", silent, **FAST)


def test_tune_says_when_its_sample_is_small(capsys: pytest.CaptureFixture[str]) -> None:
    """Five seconds of the Azure trace are a few dozen requests: the result is printed, and
    stderr says how little its lengths stand for."""
    argv = ["tune", "--trace", "azure-conv", "--services", str(SERVICES), "--service", "general"]
    fast = ["--instances", "3", "--duration", "60", "--iterations", "2"]
    assert main([*argv, "--sample-s", "5", *fast]) == 0
    assert "requests in the sample: its lengths stand for" in capsys.readouterr().err


def test_tune_cli_prints_table_and_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "tune",
            "--trace",
            "azure-conv",  # the packaged sample: its first 300 s are the full trace's
            "--services",
            str(SERVICES),
            "--service",
            "general",
            "--sample-s",
            "300",
            "--instances",
            "3",
            "--duration",
            "60",
            "--iterations",
            "3",
            "--json",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["service"] == "general"
    assert [r["ratio"] for r in result["rows"]] == ["1:2", "2:1"]
    assert "<- best" in out
    assert f'pd_ratio: "{result["pd_ratio"]}"' in out
    assert f"target_per_instance: {round(result['target_per_instance'])}" in out
    assert "signal: decode_tps" in out


def test_tune_cli_unknown_service(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["tune", "--trace", "x.csv", "--services", str(SERVICES), "--service", "nope"])
    assert rc == 2
    assert "nope" in capsys.readouterr().err


def test_tune_leaves_out_requests_no_instance_holds() -> None:
    """Two 700k-token prompts among the sample, which the ingress would reject (HTTP 400), had
    taken tuned_at's prompt mean 1,423 -> 24,707; they are left out and counted."""
    services = load_services(SERVICES)
    clean = _trace(60, 60.0)
    huge = np.asarray(clean.input_tokens).copy()
    huge[[10, 40]] = 700_000
    dirty = Trace.from_columns(
        np.asarray(clean.arrival_s), huge, np.asarray(clean.output_tokens), duration_s=60.0
    )
    res = tune(services, "general", dirty, **FAST)
    assert res.rejected == 2 and res.sample_requests == 58
    assert res.input_mean < 2000 and res.as_dict()["rejected"] == 2
    assert tune(services, "general", clean, **FAST).rejected == 0


def test_tune_and_pd_sweep_need_two_instances_to_split(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--services", str(SERVICES), "--service", "general", "--instances", "1"]
    for argv in (
        ["tune", "--trace", "azure-conv", *base],
        ["pd-sweep", "--input-tokens", "1000", "--output-tokens", "200", *base],
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert "a P:D split needs one instance of each" in capsys.readouterr().err
