"""Traffic that drifts: lengths that creep, a mix that alternates, growth, an outage. Made-up
traffic as made_up.py's (seeded rules, no number fitted to any trace; `build(label, draw)`
draws a case anew, and benchmarks/seed_spread.py replays several draws), of the kinds a
service sees over hours and the other benchmarks hold still:

- context-creep: 6 req/s, prompt mean 1k -> 16k tokens over 4 h (an agent's context grows),
  outputs ~200: prefill's need per request climbs 16x at a flat request rate;
- output-creep: 8 req/s, prompts ~1k, output mean 100 -> 2,000 over 4 h: decode's need
  climbs 20x at a flat rate, and the finished requests' mean output lags it;
- swap: 15-minute phases alternating between code completion (12 req/s, prompts ~2.5k,
  outputs ~30) and reasoning (3 req/s, prompts ~1k, outputs ~3k), 3 h: the P/D ratio swings
  from about 3:1 to 1:6 every phase, on a timer the policy has to learn;
- viral: chat, 2 req/s doubling every 36 minutes, 3 h (to 64 req/s): growth with no top;
- outage: chat at 10 req/s, none for 10 minutes (40-50 min: an upstream outage), then 25
  req/s for 5 minutes (the retries) and 10 again, 2 h.

Lengths are lognormal with the stated mean (capped at 32k in, 16k out); chat's are
made_up.py's. The fleet is the CLI's (made_up.py), on service `general` under heteroscale,
static and oracle, with issue 10's goals per case. Writes results/drift/summary.json; the last
stdout line is one JSON object.
Run: .venv/bin/python benchmarks/drift.py [--cases ...] [--policies ...] [--out DIR]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import made_up as M  # noqa: E402
import shapes  # noqa: E402

from heteroscale_ray.traces import Trace  # noqa: E402

HOUR = 3600.0
PHASE_S = 900.0  # swap: each phase's length


def drifting(
    seed: int,
    rate: Callable[[np.ndarray], np.ndarray],
    span: float,
    prompt_mean: Callable[[np.ndarray], np.ndarray],
    output_mean: Callable[[np.ndarray], np.ndarray],
    draw: int = 0,
) -> Trace:
    """Arrivals at `rate(t)` whose lengths' means at arrival are `prompt_mean(t)` and
    `output_mean(t)`."""
    rng = M._rng(seed, draw)
    t = M._arrivals(rng, rate, span)
    prompts = M._lognormal(rng, prompt_mean(t), 0.6, len(t), M.PROMPT_CAP)
    outputs = M._lognormal(rng, output_mean(t), 0.7, len(t), M.OUTPUT_CAP)
    return M._trace(t, prompts, outputs, span)


def _creep(start: float, end: float, span: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda t: start + (end - start) * np.asarray(t) / span


def _coding(t: np.ndarray) -> np.ndarray:
    """swap: whether `t` falls in a code-completion phase (the even ones, from the first)."""
    return (np.asarray(t) // PHASE_S) % 2 == 0


def swap(draw: int = 0) -> Trace:
    return drifting(
        303,
        lambda t: np.where(_coding(t), 12.0, 3.0),
        3 * HOUR,
        lambda t: np.where(_coding(t), 2500.0, 1000.0),
        lambda t: np.where(_coding(t), 30.0, 3000.0),
        draw,
    )


def outage(draw: int = 0) -> Trace:
    def rate(t: np.ndarray) -> np.ndarray:
        t = np.asarray(t)
        return np.select([(t >= 2400) & (t < 3000), (t >= 3000) & (t < 3300)], [0.0, 25.0], 10.0)

    return M.chat(rate, 2 * HOUR, draw)


# label -> (builder, diurnal, what it stands for); builder(draw=k) draws the rule anew (k > 0)
CASES: dict[str, tuple[Callable[..., Trace], bool, str]] = {
    "context-creep": (
        lambda draw=0: drifting(
            301, M._constant(6.0), 4 * HOUR, _creep(1000, 16_000, 4 * HOUR), M._constant(200), draw
        ),
        False,
        "6 req/s, prompt mean 1k -> 16k over 4 h",
    ),
    "output-creep": (
        lambda draw=0: drifting(
            302, M._constant(8.0), 4 * HOUR, M._constant(1000), _creep(100, 2000, 4 * HOUR), draw
        ),
        False,
        "8 req/s, output mean 100 -> 2,000 over 4 h",
    ),
    "swap": (swap, False, "15-min phases: code 12 req/s (2.5k / 30), reasoning 3 (1k / 3k), 3 h"),
    "viral": (
        lambda draw=0: M.chat(lambda t: 2.0 * 2.0 ** (np.asarray(t) / 2160.0), 3 * HOUR, draw),
        False,
        "chat, 2 req/s doubling every 36 min, 3 h",
    ),
    "outage": (outage, False, "chat, 10 req/s, none at 40-50 min, 25 at 50-55 min, 2 h"),
}


def build(label: str, draw: int = 0) -> Trace:
    """Case `label`'s trace: the tables' draw (0), or another of the same rule."""
    return M.build(label, draw, CASES)


def run_case(label: str, services: Any, policies: tuple[str, ...]) -> dict[str, Any]:
    return M.run_case(label, services, policies, CASES)


def main(argv: list[str] | None = None) -> int:
    return shapes.run_cli("drift", "cases", CASES, run_case, shapes.POLICIES, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
