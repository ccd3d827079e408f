"""Random traffic: no shape anyone chose. Each case is a 3-hour trace drawn from one seeded rule,
its changes as likely anywhere as the generator allows, so a policy meets changes no benchmark
names (made_up.py and drift.py each hold one shape still and vary another):

- segments of 10-45 minutes; in each, a rate drawn log-uniform in 2-30 req/s, a prompt mean in
  300-10,000 tokens and an output mean in 20-2,000 (lognormal lengths, capped at 32k in and
  16k out; the spreads drawn once a case);
- at a segment's start its lengths change at once; its rate steps, or (half the time) ramps
  from the last segment's over up to 15 minutes;
- in two cases of five, one to four crowds (disjoint) of 1-5 minutes at 3-8x the rate;
- in one case of five, requests sent in instants of 5, 10 or 20 s (a batch API's submits).

Replayed as made_up.py's cases are (the CLI's fleet, service `general`, heteroscale, static and
oracle, issue 10's goals per case). A reactive policy sees each change once it has come, so
beside each row: its misses (requests past an SLO or never done) that arrived within
`NEAR_S` of a change (a segment's start, a crowd's start or end), and the share of the trace
that arrived then. Writes results/random_traffic/summary.json; the last stdout line is one
JSON object.
Run: .venv/bin/python benchmarks/random_traffic.py [--cases ...] [--policies ...] [--out DIR]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import generalization as G  # noqa: E402
import made_up as M  # noqa: E402
import shapes  # noqa: E402
import stress  # noqa: E402

from heteroscale_ray.sim.summary import request_tbt, within_slo  # noqa: E402
from heteroscale_ray.traces import Trace  # noqa: E402

SEED = 2026
SPAN_S = 3 * 3600.0
CASE_COUNT = 12
SEGMENT_S = (600.0, 2700.0)
RATE = (2.0, 30.0)  # req/s
PROMPT_MEAN = (300.0, 10_000.0)
OUTPUT_MEAN = (20.0, 2_000.0)
NEAR_S = 300.0  # a start-up (90 s), a control period, and the queue it leaves draining


@dataclass(frozen=True)
class RandomCase:
    """One draw of the rule: the trace, what was drawn, and the times its traffic changes."""

    trace: Trace
    starts: np.ndarray  # s: each segment's start (the first at 0)
    rates: np.ndarray  # req/s: each segment's (after its ramp)
    ramps: np.ndarray  # s: how long each segment's rate ramps from the last one's (0: a step)
    prompt_means: np.ndarray
    output_means: np.ndarray
    crowds: tuple[tuple[float, float, float], ...]  # (start s, seconds, times the rate)
    instants: float  # s: requests sent at the start of each such slot (0: as they came)
    what: str

    @property
    def changes(self) -> np.ndarray:
        """Seconds at which the traffic changes: segment starts after the first, and each
        crowd's start and end."""
        crowd_edges = [
            edge for start, seconds, _ in self.crowds for edge in (start, start + seconds)
        ]
        return np.sort(np.concatenate([self.starts[1:], crowd_edges]))


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float], n: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]), n))


def draw_case(case: int, draw: int = 0) -> RandomCase:
    """Case `case` of the rule: draw 0 is the tables' trace, another draw the same rule anew."""
    rng = np.random.default_rng([SEED, case] if draw == 0 else [SEED, case, draw])
    starts = [0.0]
    while starts[-1] + SEGMENT_S[0] < SPAN_S:
        starts.append(starts[-1] + rng.uniform(*SEGMENT_S))
    bounds = np.array([*starts[:-1], SPAN_S])
    n = len(bounds) - 1
    rates = _log_uniform(rng, RATE, n)
    prompt_means = _log_uniform(rng, PROMPT_MEAN, n)
    output_means = _log_uniform(rng, OUTPUT_MEAN, n)
    ramps = np.where(rng.uniform(size=n) < 0.5, rng.uniform(0.0, 900.0, n), 0.0)
    ramps[0] = 0.0
    crowds: list[tuple[float, float, float]] = []
    if rng.uniform() < 0.4:
        n_crowds = int(rng.integers(1, 5))
        while not crowds or any(a[0] + a[1] > b[0] for a, b in pairwise(crowds)):
            crowds = sorted(  # redrawn until disjoint: each crowd is 3-8x, never their product
                (rng.uniform(0.0, SPAN_S - 300.0), rng.uniform(60, 300), rng.uniform(3, 8))
                for _ in range(n_crowds)
            )

    def segment(t: np.ndarray) -> np.ndarray:
        return np.clip(np.searchsorted(bounds, t, side="right") - 1, 0, n - 1)

    def rate(t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=float)
        i = segment(t)
        into = t - bounds[i]
        ramping = ramps[i] > into
        share = np.where(ramping, into / np.maximum(ramps[i], 1.0), 1.0)
        r = rates[np.maximum(i - 1, 0)] + (rates[i] - rates[np.maximum(i - 1, 0)]) * share
        for start, seconds, x in crowds:
            r = np.where((t >= start) & (t < start + seconds), r * x, r)
        return r

    t = M._arrivals(rng, rate, SPAN_S)
    i = segment(t)
    prompts = M._lognormal(rng, prompt_means[i], rng.uniform(0.4, 1.0), len(t), M.PROMPT_CAP)
    outputs = M._lognormal(rng, output_means[i], rng.uniform(0.4, 1.1), len(t), M.OUTPUT_CAP)
    trace = M._trace(t, prompts, outputs, SPAN_S)
    instants = 0.0
    if rng.uniform() < 0.2:
        instants = float(rng.choice([5.0, 10.0, 20.0]))
        trace = stress.bunch(trace, instants)
    ramped = int(np.count_nonzero(ramps > 0))
    what = (
        f"{n} segments ({ramped} ramped), {rates.min():.0f}-{rates.max():.0f} req/s, prompts "
        f"{prompt_means.min():,.0f}-{prompt_means.max():,.0f}, outputs "
        f"{output_means.min():,.0f}-{output_means.max():,.0f}, "
        + ("no crowds" if not crowds else f"{len(crowds)} crowd" + "s" * (len(crowds) > 1))
        + (f", in {instants:.0f}-s instants" if instants else "")
    )
    return RandomCase(
        trace,
        bounds[:-1],
        rates,
        ramps,
        prompt_means,
        output_means,
        tuple(crowds),
        instants,
        what,
    )


def near_changes(arrival: np.ndarray, changes: np.ndarray, within_s: float = NEAR_S) -> np.ndarray:
    """Whether each arrival came within `within_s` after a change."""
    if not len(changes):
        return np.zeros(len(arrival), dtype=bool)
    last = np.searchsorted(changes, arrival, side="right") - 1
    since = arrival - changes[np.maximum(last, 0)]
    return (last >= 0) & (since < within_s)


def misses_near_changes(changes: np.ndarray) -> Callable[[Any], dict[str, Any]]:
    """A row's extra fields (`shapes.replay_rows`): its misses, and those near a change."""

    def extra(res: Any) -> dict[str, Any]:
        sim = res.sim
        spec = sim.services[0]
        arrival = sim.w.arrival
        ids = np.arange(len(arrival))
        ttft = sim.t_first - arrival
        tbt = request_tbt(sim, ids)
        ok = within_slo(np.isfinite(sim.t_done), ttft, tbt, spec.slo.ttft_s, spec.slo.tbt_s)
        near = near_changes(arrival, changes)
        return {
            "misses": int(np.count_nonzero(~ok)),
            "misses_near_changes": int(np.count_nonzero(~ok & near)),
            "share_near_changes": float(near.mean()) if len(near) else 0.0,
        }

    return extra


def _builder(case: int) -> Callable[..., Trace]:
    return lambda draw=0: draw_case(case, draw).trace


CASES: dict[str, tuple[Callable[..., Trace], bool, str]] = {
    f"random-{k}": (_builder(k), False, "random segments, ramps, crowds") for k in range(CASE_COUNT)
}


def run_case(label: str, services: Any, policies: tuple[str, ...]) -> dict[str, Any]:
    case = draw_case(int(label.rsplit("-", 1)[1]))
    spec = services.by_name()[G.SERVICE]
    counts, topo = M.fleet(spec, services, case.trace)
    result = shapes.replay_case(
        label,
        case.what,
        services,
        case.trace,
        topo,
        counts,
        policies,
        False,
        extra=misses_near_changes(case.changes),
    )
    for row in result["rows"]:
        near, all_ = row["misses_near_changes"], row["misses"]
        print(
            f"  {row['policy']}: {all_:,} misses, {near:,} of them within {NEAR_S:.0f} s of a "
            f"change ({row['share_near_changes']:.0%} of requests arrived then)"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    return shapes.run_cli(
        "random_traffic", "cases", CASES, run_case, shapes.POLICIES, __doc__, argv
    )


if __name__ == "__main__":
    sys.exit(main())
