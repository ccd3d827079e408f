"""benchmarks/generalization.py's helpers: direction changes, goals, fleet size, paper-fixed spec."""

from __future__ import annotations

import pytest
from bench_modules import ROOT, load_benchmark

from heteroscale_ray.config import PdRatio, load_services
from heteroscale_ray.sim.tune import TuneResult

gen = load_benchmark("generalization", "generalization_bench")


def _cycles(key: str, xs: list[int]) -> list[dict[str, object]]:
    return [{"t": 15.0 * i, key: x} for i, x in enumerate(xs)]


def test_direction_changes_counts_sign_flips_of_nonzero_steps() -> None:
    k = "general.decode"
    assert gen.direction_changes(_cycles(k, [1, 2, 2, 3, 5]), k) == 0
    assert gen.direction_changes(_cycles(k, [1, 2, 2, 1, 1, 3]), k) == 2  # up, down, up
    assert gen.direction_changes(_cycles(k, [4, 4, 4]), k) == 0
    assert gen.direction_changes(_cycles(k, [4]), k) == 0
    assert gen.direction_changes(_cycles("other", [1, 2, 1]), k) == 0


def _row(policy: str, gpu_hours: float, att: float = 0.995, flips: float = 1.0) -> dict:
    return {
        "policy": policy,
        "gpu_hours": gpu_hours,
        "slo_attainment": att,
        "slo_ceiling": 1.0,
        "direction_changes_per_h": {"prefill": flips, "decode": flips},
        "speed": 2000.0,
        "wall_total_s": 60.0,
    }


def test_goals() -> None:
    by = {"static": _row("static", 100.0), "oracle": _row("oracle", 50.0)}
    ok = gen.goals(_row("heteroscale", 54.0), by, diurnal=True, two_days_full=True)
    assert ok["all_ok"], ok
    bad = gen.goals(_row("heteroscale", 70.0, 0.95, 6.0), by, diurnal=True, two_days_full=False)
    assert not bad["all_ok"]
    assert not bad["attainment"]["ok"] and not bad["gpu_hours_vs_oracle"]["ok"]
    assert not bad["gpu_hours_diurnal"]["ok"] and not bad["direction_changes"]["ok"]
    assert bad["gpu_hours_vs_static"]["ok"] and "two_day_wall" not in bad
    # the attainment goal follows the trace's ceiling, the static replay's: min(0.99, it - 0.01)
    low = {**_row("heteroscale", 54.0, 0.895), "slo_ceiling": 0.9}
    assert not gen.goals(low, by, diurnal=False, two_days_full=False)["attainment"]["ok"]
    by_low = {**by, "static": {**by["static"], "slo_ceiling": 0.9}}
    assert gen.goals(low, by_low, diurnal=False, two_days_full=False)["attainment"]["ok"]


def test_a_goal_without_its_reference_is_unchecked_not_met() -> None:
    """Without static and oracle rows the GPU-hour goals had been left out, and a row at any
    GPU-hours was reported as meeting every goal."""
    row = _row("heteroscale", 9_999.0)
    alone = gen.goals(row, {"heteroscale": row}, diurnal=True, two_days_full=False)
    assert alone["gpu_hours_vs_static"]["ok"] is None and alone["all_ok"] is None
    rows = [{**row, "goals": alone, "wall_s": 1.0, "completed": 1, "requests": 1}]
    table = gen._fmt_table([{**r, **_table_fields()} for r in rows])
    assert "unchecked: gpu_hours_vs_oracle,gpu_hours_vs_static,gpu_hours_diurnal" in table


def _table_fields() -> dict:
    return {"ttft_p99_s": 1.0, "tbt_p99_s": 0.01, "scaling_actions": 0}


def test_fleet_holds_each_gpu_type() -> None:
    spec = load_services(ROOT / "examples" / "sim_services.yaml").by_name()["general"]
    n = gen.fleet_gpus(spec, (10, 60))  # decode-heavy: 240 decode-type GPUs
    topo = gen.fleet_for([spec], n)
    by_type: dict[str, int] = {}
    for bp in topo.big_pods:
        for mp in bp.mini_pods:
            for leaf in mp.leaves:
                for h in leaf.hosts:
                    by_type[h.gpu_type] = by_type.get(h.gpu_type, 0) + h.gpus
    assert by_type[spec.decode.gpu_types[0]] >= 2.5 * 60 * spec.decode.gpus_per_instance
    assert by_type[spec.prefill.gpu_types[0]] >= 2.5 * 10 * spec.prefill.gpus_per_instance


def test_paper_fixed_spec() -> None:
    """The benchmark's paper-fixed row and `replay --policy paper-fixed` share this rule."""
    from heteroscale_ray.sim.tune import paper_rule

    spec = load_services(ROOT / "examples" / "sim_services.yaml").by_name()["general"]
    tuned = TuneResult(
        service="general",
        ratio=PdRatio(3, 5),
        target_per_instance=1234.4,
        prefill_target_per_instance=9000.0,
        best_split=(6, 10),
    )
    fixed = paper_rule(spec, tuned)
    assert fixed.ratio == PdRatio(3, 5)
    assert fixed.policy.signal == "decode_tps"
    assert fixed.policy.target_per_instance == pytest.approx(1234.4)
    assert fixed.policy.latency_guard.metric == "both"
    assert fixed.name == spec.name and fixed.slo == spec.slo
