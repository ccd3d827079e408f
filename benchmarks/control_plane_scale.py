"""Control-plane scale benchmark: policy decisions plus placement on a large synthetic fleet.

Builds ``synthetic_topology(--gpus)``, ``--services`` random services (mixed priorities, P/D
ratios, GPU-type preferences, S1/S2 affinities, instance sizes), fills the cluster to a
steady state, then times:

- full control cycles: collect per-service counts, one ``policy.decide`` per service with
  noisy signals, one ``plan_cycle`` over all requests, and ``PlacementPlan.apply``;
- single DG placements: ``place_dg`` of one new DG into the populated cluster (the
  per-cycle capacity ledger is built once beforehand and reported separately).

Prints a table and, as its last line, a JSON summary, also written to ``--out``.
Usage: python benchmarks/control_plane_scale.py --gpus 100000 --services 200 --cycles 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from heteroscale_ray.config import Role, ServiceSpec, synthetic_topology
from heteroscale_ray.policy import PolicyState, RoleCounts, Signals, decide
from heteroscale_ray.topology import (
    ClusterGraph,
    DeploymentGroup,
    FreeCapacity,
    ScaleRequest,
    place_dg,
    plan_cycle,
)

GPU_TYPES = ("H20", "L20", "H800", "A100")  # synthetic_topology's default fleet
PERIOD_S = 15.0  # virtual seconds between control cycles
TARGET_TPS = 2000.0  # decode tokens/s per decode instance at the target load


def make_services(n: int, rng: np.random.Generator) -> dict[str, ServiceSpec]:
    """Random but valid services: the spread a multi-tenant fleet would have.

    About 30% of services have no GPU type in common between their roles, so they can only
    live where types mix (scarce HIGH/MEDIUM capacity); they are what runs short first.
    """
    specs = {}
    for k in range(n):
        p, d = int(rng.integers(1, 4)), int(rng.integers(1, 6))
        prefill_types = [str(t) for t in rng.permutation(GPU_TYPES)[: int(rng.integers(1, 4))]]
        decode_types = [str(t) for t in rng.permutation(GPU_TYPES)[: int(rng.integers(1, 3))]]
        if rng.random() < 0.7 and not set(prefill_types) & set(decode_types):
            decode_types.append(prefill_types[0])  # a homogeneous fallback; 30% stay strict
        dg_max = [None, 16, 32, 64][int(rng.integers(4))]
        name = f"svc-{k:04d}"
        specs[name] = ServiceSpec.model_validate(
            {
                "name": name,
                "priority": int(rng.integers(0, 10)),
                "slo": {"ttft_s": 1.0, "tbt_s": 0.04},
                "pd_ratio": f"{p}:{d}",
                "prefill": {
                    "gpu_types": prefill_types,
                    "gpus_per_instance": int(rng.choice([1, 1, 1, 2, 2, 4, 8])),
                    "max_instances": 20_000,
                },
                "decode": {
                    "gpu_types": decode_types,
                    "gpus_per_instance": int(rng.choice([1, 1, 2, 4])),
                    "max_instances": 20_000,
                },
                "affinity": "S1" if rng.random() < 0.6 else "S2",
                "dg_max_instances": dg_max,
                "policy": {
                    "target_per_instance": TARGET_TPS,
                    "scale_out_cooldown_s": 30,
                    "scale_in_cooldown_s": 120,
                },
            }
        )
    return specs


def steady_targets(
    specs: dict[str, ServiceSpec], gpus: int, fill: float, rng: np.random.Generator
) -> dict[str, tuple[int, int]]:
    """Per-service (prefill, decode) targets in whole P/D units, summing to about fill * gpus."""
    weights = rng.lognormal(0.0, 1.0, size=len(specs))
    weights /= weights.sum()
    targets = {}
    for w, (name, spec) in zip(weights, specs.items(), strict=True):
        p, d = spec.ratio
        unit_gpus = p * spec.prefill.gpus_per_instance + d * spec.decode.gpus_per_instance
        units = max(1, int(fill * gpus * w / unit_gpus))
        targets[name] = (units * p, units * d)
    return targets


def service_counts(dgs: Sequence[DeploymentGroup]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for dg in dgs:
        c = out.setdefault(dg.service, [0, 0])
        for inst in dg.instances:
            c[0 if inst.role is Role.PREFILL else 1] += 1
    return out


def noisy_signals(
    spec: ServiceSpec, decode: int, load: float, now: float, rng: np.random.Generator
) -> Signals:
    return Signals(
        observed_at=now,
        decode_tps=max(decode, 1) * TARGET_TPS * load,
        prefill_tps=max(decode, 1) * TARGET_TPS * load * 8.0,
        ttft_p99_s=spec.slo.ttft_s * float(rng.uniform(0.3, 0.97)),
        tbt_p99_s=spec.slo.tbt_s * float(rng.uniform(0.3, 0.97)),  # guard fires ~3%
        prefill_busy=float(rng.uniform(0.3, 0.9)),
        decode_busy=float(rng.uniform(0.6, 0.95)),
        kv_use=float(rng.uniform(0.3, 0.9)),
    )


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    aware = not args.topology_blind

    t0 = time.perf_counter()
    topology = synthetic_topology(args.gpus, seed=args.seed)
    graph = ClusterGraph.from_topology(topology)
    graph_build_s = time.perf_counter() - t0

    specs = make_services(args.services, rng)
    targets = steady_targets(specs, graph.total_gpus(), args.fill, rng)
    t0 = time.perf_counter()
    fill_plan = plan_cycle(
        graph, specs, [], [ScaleRequest(n, *t) for n, t in targets.items()], topology_aware=aware
    )
    dgs = fill_plan.apply([])
    initial_fill_s = time.perf_counter() - t0
    fill_unplaced = sum(u.count for u in fill_plan.unplaced)

    states = {name: PolicyState() for name in specs}
    load = {name: 1.0 for name in specs}
    now = 1_700_000_000.0
    cycle_s: list[float] = []
    decide_s: list[float] = []
    plan_s: list[float] = []
    apply_s: list[float] = []
    placed = removed = unplaced = unplaced_requests = changed = 0
    for _ in range(args.cycles):
        now += PERIOD_S
        for name in specs:  # mean-reverting load drift, so services scale both ways
            load[name] = float(np.clip(load[name] * rng.lognormal(0.0, 0.12), 0.5, 1.8))
            load[name] = 1.0 + 0.8 * (load[name] - 1.0)
        snapshots = {}
        for name, spec in specs.items():
            snapshots[name] = noisy_signals(spec, targets[name][1], load[name], now, rng)

        t0 = time.perf_counter()
        counts = service_counts(dgs)
        requests = []
        for name, spec in specs.items():
            p, d = counts.get(name, (0, 0))
            decision, states[name] = decide(
                spec,
                snapshots[name],
                RoleCounts(prefill_ready=p, decode_ready=d),
                states[name],
                now,
            )
            requests.append(ScaleRequest(name, decision.prefill, decision.decode))
            changed += (decision.prefill, decision.decode) != (p, d)
        t1 = time.perf_counter()
        plan = plan_cycle(graph, specs, dgs, requests, topology_aware=aware)
        t2 = time.perf_counter()
        dgs = plan.apply(dgs)
        t3 = time.perf_counter()

        decide_s.append(t1 - t0)
        plan_s.append(t2 - t1)
        apply_s.append(t3 - t2)
        cycle_s.append(t3 - t0)
        placed += plan.added()
        removed += plan.removed()
        unplaced += sum(u.count for u in plan.unplaced)
        unplaced_requests += len({u.service for u in plan.unplaced})

    t0 = time.perf_counter()
    capacity = FreeCapacity(graph, dgs)
    ledger_build_ms = (time.perf_counter() - t0) * 1e3
    names = list(specs)
    place_ms: list[float] = []
    place_ok = place_failed = 0
    for k in range(args.place_samples):
        spec = specs[names[int(rng.integers(len(names)))]]
        p, d = spec.ratio
        units = int(rng.integers(1, 5))
        if spec.dg_max_instances is not None:
            units = max(1, min(units, spec.dg_max_instances // (p + d)))
        t0 = time.perf_counter()
        dg = place_dg(
            capacity, spec, units * p, units * d, dg_id=f"bench-dg{k}", topology_aware=aware
        )
        place_ms.append((time.perf_counter() - t0) * 1e3)
        if dg is None:
            place_failed += 1
        else:
            place_ok += 1

    used = sum(len(i.gpus) for dg in dgs for i in dg.instances)
    return {
        "gpus": graph.total_gpus(),
        "hosts": len(graph.hosts),
        "services": len(specs),
        "cycles": args.cycles,
        "seed": args.seed,
        "topology_aware": aware,
        "graph_build_s": round(graph_build_s, 4),
        "initial_fill_s": round(initial_fill_s, 4),
        "initial_fill_unplaced_instances": fill_unplaced,
        "cycle_s_median": round(statistics.median(cycle_s), 4) if cycle_s else None,
        "cycle_s_p90": round(pct(cycle_s, 90), 4),
        "decide_s_median": round(statistics.median(decide_s), 4) if decide_s else None,
        "plan_cycle_s_median": round(statistics.median(plan_s), 4) if plan_s else None,
        "plan_cycle_s_p90": round(pct(plan_s, 90), 4),
        "apply_s_median": round(statistics.median(apply_s), 4) if apply_s else None,
        "decisions_changed": changed,
        "placed_instances": placed,
        "removed_instances": removed,
        "unplaced_instances": unplaced,
        "unplaced_service_cycles": unplaced_requests,
        "ledger_build_ms": round(ledger_build_ms, 2),
        "place_dg_ms_median": round(statistics.median(place_ms), 3) if place_ms else None,
        "place_dg_ms_p90": round(pct(place_ms, 90), 3),
        "place_dg_placed": place_ok,
        "place_dg_unplaced": place_failed,
        "dgs": len(dgs),
        "instances": sum(dg.size for dg in dgs),
        "gpu_used_fraction": round(used / graph.total_gpus(), 4),
    }


def print_table(result: dict[str, Any]) -> None:
    rows = [
        ("cluster", f"{result['gpus']:,} GPUs on {result['hosts']:,} hosts"),
        ("services / cycles", f"{result['services']} / {result['cycles']} (seed {result['seed']})"),
        ("placement", "topology-aware" if result["topology_aware"] else "topology-blind"),
        ("graph build", f"{result['graph_build_s']:.3f} s (once)"),
        ("initial fill", f"{result['initial_fill_s']:.3f} s, "
                         f"{result['initial_fill_unplaced_instances']} instances unplaced"),
        ("cycle median / p90", f"{result['cycle_s_median']:.3f} s / {result['cycle_s_p90']:.3f} s"),
        ("  decide x services", f"{result['decide_s_median']:.3f} s (median)"),
        ("  plan_cycle", f"{result['plan_cycle_s_median']:.3f} s (median), "
                         f"{result['plan_cycle_s_p90']:.3f} s (p90)"),
        ("  apply", f"{result['apply_s_median']:.3f} s (median)"),
        ("decisions that changed", f"{result['decisions_changed']}"),
        ("instances placed / removed", f"{result['placed_instances']} / {result['removed_instances']}"),
        ("instances unplaced", f"{result['unplaced_instances']} "
                               f"({result['unplaced_service_cycles']} service-cycles short)"),
        ("ledger build", f"{result['ledger_build_ms']:.1f} ms (once per cycle, inside plan_cycle)"),
        ("place_dg median / p90", f"{result['place_dg_ms_median']:.3f} ms / "
                                  f"{result['place_dg_ms_p90']:.3f} ms"),
        ("place_dg placed / unplaced", f"{result['place_dg_placed']} / {result['place_dg_unplaced']}"),
        ("final state", f"{result['dgs']} DGs, {result['instances']:,} instances, "
                        f"{result['gpu_used_fraction']:.1%} of GPUs in use"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    print("control-plane scale benchmark")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=100_000, help="fleet size (synthetic)")
    parser.add_argument("--services", type=int, default=200, help="number of services")
    parser.add_argument("--cycles", type=int, default=20, help="control cycles to time")
    parser.add_argument("--seed", type=int, default=0, help="seed for topology, services, load")
    parser.add_argument("--fill", type=float, default=0.7, help="steady-state share of GPUs used")
    parser.add_argument("--place-samples", type=int, default=100, help="place_dg calls to time")
    parser.add_argument("--topology-blind", action="store_true", help="time the blind baseline")
    parser.add_argument("--out", default="results/control_plane_scale", help="output folder")
    args = parser.parse_args(argv)

    result = run(args)
    print_table(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mode = "" if result["topology_aware"] else "_blind"
    path = out / f"control_plane_scale_g{args.gpus}_s{args.services}_seed{args.seed}{mode}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  written to {path}")
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
