"""Made-up traffic, replayed as a new user would: `heteroscale replay --gpus 1024` on traces of
shapes the shared files do not have, generated here from a seeded generator (no number fitted
to any trace; `build(label, draw)` draws a case's rule anew, and benchmarks/seed_spread.py
replays several draws). Each case is one plain rule:

- reasoning: 15 req/s for 1 h, prompts ~1k, outputs lognormal mean ~3.8k (<= 16k);
- reasoning-2x: the same at 30 req/s (decode ~70 instances: past what a fleet split 3:1 holds);
- step-5x: chat lengths, 5 req/s for 20 min, then 25 req/s;
- on-off-30s: chat lengths, 30 req/s for 30 s, none for 30 s, for 1 h;
- cron-30s: chat lengths at 20 req/s, each request sent at the start of its 30-s slot (a
  cron's or a batch API's submits: 600 at once), 1 h;
- flash-20m: chat lengths, 4 req/s with a 2-min flash crowd at 40 req/s every 20 min, 6 h
  (a batch job or a push notification on a timer: each spike ends before a start-up lands);
- flash-irregular: the same spikes 10-40 min apart (drawn), 4 h;
- flash-hourly: the same spike every hour, up to a minute either side of it (drawn: a cron
  job's start), 8 h;
- fan-out: chat lengths at 5 req/s, and every ~3 min (drawn, exponential) an agent's or a
  batch job's fan-out of 150 prompts of ~6k tokens sent within 2 s, 2 h (a burst shorter
  than a control period, which its mean rate hides);
- ramp-6h: chat lengths, 2 -> 20 -> 2 req/s over 6 h (a half sine);
- sawtooth: chat lengths, 2 -> 40 req/s over 20 min, then 2 req/s for 10 min, every 30 min,
  3 h (work that builds up until a cut-off: a ramp that ends in a drop);
- bimodal: 8 req/s, 80% chat, 20% ~20k-token documents;
- classify: 50 req/s, 0.5-4k prompts, one output token;
- high-rate: 300 req/s of ~100-token prompts and ~20-token outputs, 20 min;
- conversation: 5 sessions/s for 1 h (from 15 min before it, so that it opens with sessions
  under way), each ~4 turns a minute apart whose prompt is the
  session so far (a shared system prompt, earlier messages and answers) plus a new message,
  hashed in 512-token blocks as Mooncake's traces are (prompts ~11k tokens, most of each a
  cacheable prefix).

And six 12-h days, each a rate `day(lo, hi)` = lo + (hi - lo) sin^2(pi t / 12 h) (lo at the
ends, hi at 6 h), lengths lognormal with the stated mean (capped at 32k in, 16k out):

- day-chat: day(3, 30) req/s, prompts ~1k, outputs ~250, with six bursts of 10-20 min at
  1.5-2.5x the rate (instant steps at seeded times);
- day-code: twice that rate (own bursts), prompts ~2.5k, outputs ~30 (prefill-heavy);
- day-long-context: day(1, 8), prompts ~12k, outputs ~300;
- day-reasoning: day(0.5, 6), prompts ~1k, outputs ~4k;
- day-mix-shift: day-chat's lengths at day(3, 30) with no bursts, outputs x6 in two 1-h
  windows and prompts x5 in a third (seeded, disjoint);
- day-cron: day-chat's lengths at day(3, 30) with no bursts, the first 2 minutes of every
  hour at 5x the rate (a batch job on the hour).

The fleet is the CLI's: about 1,024 GPUs (or 2.5x the static fleet, if that is more) split
between the GPU types as a static fleet for the trace needs them (sim/fleet.py). Replayed on service `general` under heteroscale, static and
oracle, with issue 10's goals per case (as benchmarks/shapes.py checks them).

Writes results/made_up/summary.json; the last stdout line is one JSON object.
Run: .venv/bin/python benchmarks/made_up.py [--cases ...] [--policies ...] [--out DIR]
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

import generalization as G  # noqa: E402
import shapes  # noqa: E402
import stress  # noqa: E402

from heteroscale_ray.config import ServicesConfig, ServiceSpec, TopologySpec  # noqa: E402
from heteroscale_ray.sim.commands import DEFAULT_FLEET_GPUS  # noqa: E402
from heteroscale_ray.sim.fleet import replay_fleet_for  # noqa: E402
from heteroscale_ray.sim.sizing import static_counts  # noqa: E402
from heteroscale_ray.traces import Trace  # noqa: E402

SEED = 7


def _rng(seed: int, draw: int) -> np.random.Generator:
    """The case's own stream for draw 0 (the tables' numbers), another of the same rule for
    each other draw (benchmarks/seed_spread.py replays several)."""
    return np.random.default_rng(seed if draw == 0 else [seed, draw])


def _arrivals(rng: np.random.Generator, rate: Callable[[np.ndarray], np.ndarray], span: float):
    """A Poisson process of rate `rate(t)` req/s over [0, span) (thinning)."""
    grid = np.linspace(0.0, span, 1001)
    top = float(np.max(rate(grid))) * 1.05
    t = np.sort(rng.uniform(0.0, span, rng.poisson(top * span)))
    return t[rng.uniform(0.0, top, len(t)) < rate(t)]


def _chat(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    prompts = np.maximum(20, rng.lognormal(np.log(1000), 0.6, n)).astype(int)
    outputs = np.maximum(2, rng.lognormal(np.log(200), 0.7, n)).astype(int)
    return prompts, outputs


def _trace(t: np.ndarray, prompts: np.ndarray, outputs: np.ndarray, span: float) -> Trace:
    return Trace.from_columns(t, prompts, outputs, duration_s=span, source="made-up")


def _constant(rate: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda t: np.full(np.shape(t), rate)


def reasoning(rate: float = 15.0, draw: int = 0) -> Trace:
    rng = _rng(SEED, draw)
    t = _arrivals(rng, _constant(rate), 3600.0)
    prompts = np.maximum(50, rng.lognormal(np.log(800), 0.8, len(t))).astype(int)
    outputs = np.clip(rng.lognormal(np.log(3000), 0.7, len(t)), 10, 16_000).astype(int)
    return _trace(t, prompts, outputs, 3600.0)


def chat(rate: Callable[[np.ndarray], np.ndarray], span: float, draw: int = 0) -> Trace:
    rng = _rng(SEED, draw)
    t = _arrivals(rng, rate, span)
    return _trace(t, *_chat(rng, len(t)), span)


CRON_S = 30.0  # cron-30s: each request sent at the start of its slot this long


def chat_in_instants(rate: float, every_s: float, span: float, draw: int = 0) -> Trace:
    """Chat at `rate` req/s, each request sent at the start of its `every_s` slot."""
    return stress.bunch(chat(_constant(rate), span, draw), every_s)


FLASH_S, FLASH_X = 120.0, 10.0  # a flash crowd: 2 minutes at 10x the calm rate


def flash(
    starts: np.ndarray,
    span: float,
    calm: float = 4.0,
    seed: int = SEED,
    x: float = FLASH_X,
    seconds: float = FLASH_S,
    draw: int = 0,
) -> Trace:
    """Chat at `calm` req/s, and `x` times that for `seconds` from each of `starts`."""
    rng = _rng(seed, draw)

    def rate(t: np.ndarray) -> np.ndarray:
        t = np.asarray(t)
        inside = np.zeros(np.shape(t), dtype=bool)
        for s in starts:
            inside |= (t >= s) & (t < s + seconds)
        return np.where(inside, calm * x, calm)

    t = _arrivals(rng, rate, span)
    return _trace(t, *_chat(rng, len(t)), span)


def flash_irregular(span: float = 4 * 3600.0, seed: int = 108, draw: int = 0) -> Trace:
    rng = _rng(seed, draw)
    starts = np.cumsum(rng.uniform(600.0, 2400.0, int(span // 600)))
    return flash(starts[starts < span], span, seed=seed, draw=draw)


def crowds(span: float = 4 * 3600.0, seed: int = 415, draw: int = 0) -> Trace:
    """4-minute crowds at 5x, 15-45 minutes apart: its draw has two intervals that agree by
    chance (37 and 40 minutes) before a third that does not (32)."""
    rng = _rng(seed, draw)
    starts = np.cumsum(rng.uniform(900.0, 2700.0, int(span // 900)))
    return flash(starts[starts < span], span, seed=seed, x=5.0, seconds=240.0, draw=draw)


def flash_hourly(span: float = 8 * 3600.0, seed: int = 109, draw: int = 0) -> Trace:
    rng = _rng(seed, draw)
    hours = np.arange(0.0, span, 3600.0)
    starts = np.maximum(hours + rng.uniform(-60.0, 60.0, len(hours)), 0.0)
    return flash(starts, span, seed=seed, draw=draw)


def bimodal(draw: int = 0) -> Trace:
    rng = _rng(SEED, draw)
    t = _arrivals(rng, _constant(8.0), 3600.0)
    prompts, outputs = _chat(rng, len(t))
    docs = rng.uniform(size=len(t)) < 0.2
    prompts[docs] = np.minimum(30_000, rng.lognormal(np.log(20_000), 0.3, docs.sum())).astype(int)
    return _trace(t, prompts, outputs, 3600.0)


def classify(draw: int = 0) -> Trace:
    rng = _rng(SEED, draw)
    t = _arrivals(rng, _constant(50.0), 1800.0)
    return _trace(t, rng.integers(500, 4000, len(t)), np.ones(len(t), dtype=int), 1800.0)


def high_rate(draw: int = 0) -> Trace:
    rng = _rng(SEED, draw)
    t = _arrivals(rng, _constant(300.0), 1200.0)
    return _trace(t, rng.integers(50, 150, len(t)), rng.integers(5, 40, len(t)), 1200.0)


DAY_S = 12 * 3600.0
PROMPT_CAP, OUTPUT_CAP = 32_000, 16_000


def _day(lo: float, hi: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda t: lo + (hi - lo) * np.sin(np.pi * np.asarray(t) / DAY_S) ** 2


def _lognormal(rng: np.random.Generator, mean: float, sigma: float, n: int, cap: int):
    """Lognormal lengths whose mean is `mean` (before the cap), at least one token."""
    x = rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, n)
    return np.clip(np.rint(x), 1, cap).astype(np.int64)


def _with_bursts(rng: np.random.Generator, base: Callable[[np.ndarray], np.ndarray], n: int = 6):
    """`base` times 1.5-2.5 in n disjoint windows of 10-20 min (redrawn until disjoint)."""
    while True:
        wins = sorted(
            (start, start + rng.uniform(600, 1200), rng.uniform(1.5, 2.5))
            for start in rng.uniform(0, DAY_S - 1200, n)
        )
        if all(wins[i][1] <= wins[i + 1][0] for i in range(n - 1)):
            break

    def rate(t: np.ndarray) -> np.ndarray:
        r = base(t)
        for a, b, m in wins:
            r = np.where((t >= a) & (t < b), r * m, r)
        return r

    return rate


FAN_OUT, FAN_OUT_S = 150, 2.0  # prompts per fan-out, sent within this many seconds


def fan_out(span: float = 2 * 3600.0, seed: int = 111, draw: int = 0) -> Trace:
    rng = _rng(seed, draw)
    calm = _arrivals(rng, _constant(5.0), span)
    starts = np.cumsum(rng.exponential(180.0, int(span // 60)))
    starts = starts[starts < span - FAN_OUT_S]
    fans = np.concatenate([s + rng.uniform(0.0, FAN_OUT_S, FAN_OUT) for s in starts])
    t = np.concatenate([calm, fans])
    prompts = np.concatenate(
        [_chat(rng, len(calm))[0], _lognormal(rng, 6000, 0.3, len(fans), PROMPT_CAP)]
    )
    outputs = np.concatenate(
        [_chat(rng, len(calm))[1], _lognormal(rng, 150, 0.6, len(fans), OUTPUT_CAP)]
    )
    order = np.argsort(t, kind="stable")
    return _trace(t[order], prompts[order], outputs[order], span)


def day_case(
    seed: int,
    lo: float,
    hi: float,
    prompt_mean: float,
    output_mean: float,
    bursts: bool,
    draw: int = 0,
) -> Trace:
    rng = _rng(seed, draw)
    rate = _with_bursts(rng, _day(lo, hi)) if bursts else _day(lo, hi)
    t = _arrivals(rng, rate, DAY_S)
    prompts = _lognormal(rng, prompt_mean, 0.8 if prompt_mean < 2000 else 0.6, len(t), PROMPT_CAP)
    outputs = _lognormal(rng, output_mean, 0.7, len(t), OUTPUT_CAP)
    return _trace(t, prompts, outputs, DAY_S)


def day_cron(seed: int = 106, x: float = 5.0, draw: int = 0) -> Trace:
    """day(3, 30) chat whose first FLASH_S of every hour run at `x` times the rate."""
    rng = _rng(seed, draw)
    day = _day(3, 30)
    t = _arrivals(rng, lambda v: day(v) * np.where(np.asarray(v) % 3600.0 < FLASH_S, x, 1.0), DAY_S)
    prompts = _lognormal(rng, 1000, 0.8, len(t), PROMPT_CAP)
    outputs = _lognormal(rng, 250, 0.7, len(t), OUTPUT_CAP)
    return _trace(t, prompts, outputs, DAY_S)


def day_mix_shift(seed: int = 105, draw: int = 0) -> Trace:
    rng = _rng(seed, draw)
    t = _arrivals(rng, _day(3, 30), DAY_S)
    prompts = _lognormal(rng, 1000, 0.8, len(t), PROMPT_CAP)
    outputs = _lognormal(rng, 250, 0.7, len(t), OUTPUT_CAP)
    while True:  # three 1-h windows on a 5-min grid, at least 30 min apart
        starts = np.sort(rng.choice(np.arange(6, 133) * 300.0, 3, replace=False))
        if np.all(np.diff(starts) >= 5400):
            break
    prompt_window = rng.integers(3)
    for k, s in enumerate(starts):
        inside = (t >= s) & (t < s + 3600)
        if k == prompt_window:
            prompts[inside] = np.minimum(PROMPT_CAP, prompts[inside] * 5)
        else:
            outputs[inside] = np.minimum(OUTPUT_CAP, outputs[inside] * 6)
    return _trace(t, prompts, outputs, DAY_S)


WARM_S = 900.0  # conversation: sessions under way when the hour starts


def conversation(sessions_per_s: float = 5.0, seed: int = 106, draw: int = 0) -> Trace:
    """Multi-turn sessions whose context grows: each turn's prompt is the session so far (one
    of six shared system prompts, earlier messages and answers) plus a new message, hashed in
    512-token blocks as Mooncake's traces are, so a turn's earlier whole blocks are cache hits
    where the prefix cache still holds them."""
    rng = _rng(seed, draw)
    next_id = 0

    def fresh(n: int) -> list[int]:
        nonlocal next_id
        next_id += n
        return list(range(next_id - n, next_id))

    systems = [int(n) for n in rng.integers(1000, 4000, 6)]
    system_ids = [fresh(-(-n // 512)) for n in systems]
    rows: list[tuple[float, int, int, tuple[int, ...]]] = []
    # Sessions start from 15 min before the hour, as in a trace cut from a running service:
    # started at 0, the first minutes hold only first turns (a 4x ramp no real hour begins with).
    for start in _arrivals(rng, _constant(sessions_per_s), 3600.0 + WARM_S) - WARM_S:
        k = int(rng.integers(len(systems)))
        context, shared, at = systems[k], system_ids[k][: systems[k] // 512], float(start)
        for turn in range(int(rng.geometric(0.25))):  # 4 turns on average
            prompt = context + int(rng.lognormal(np.log(3000 if turn == 0 else 800), 0.9))
            ids = shared + fresh(-(-prompt // 512) - len(shared))
            output = max(1, int(rng.lognormal(np.log(250), 0.8)))
            if 0.0 <= at < 3600.0 and prompt <= PROMPT_CAP:
                rows.append((at, prompt, output, tuple(ids)))
            context, shared = prompt + output, ids[: prompt // 512]  # whole blocks stay shared
            at += 5.0 + rng.exponential(60.0)  # the user reads, then writes
    rows.sort(key=lambda r: r[0])
    return Trace.from_columns(
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
        duration_s=3600.0,
        source="made-up",
    )


# label -> (builder, diurnal, what it stands for); builder(draw=k) draws the rule anew (k > 0)
CASES: dict[str, tuple[Callable[..., Trace], bool, str]] = {
    "reasoning": (reasoning, False, "15 req/s, outputs ~3.8k"),
    "reasoning-2x": (lambda draw=0: reasoning(30.0, draw=draw), False, "30 req/s, outputs ~3.8k"),
    "step-5x": (
        lambda draw=0: chat(lambda t: np.where(t < 1200.0, 5.0, 25.0), 3600.0, draw),
        False,
        "chat, 5 -> 25 req/s at 20 min",
    ),
    "on-off-30s": (
        lambda draw=0: chat(lambda t: np.where((t // 30.0) % 2 == 0, 30.0, 0.0), 3600.0, draw),
        False,
        "chat, 30 req/s on 30 s in 60",
    ),
    "cron-30s": (
        lambda draw=0: chat_in_instants(20.0, CRON_S, 3600.0, draw),
        False,
        "chat, 20 req/s sent as 600 at once every 30 s",
    ),
    "flash-20m": (
        lambda draw=0: flash(np.arange(0.0, 6 * 3600.0, 1200.0), 6 * 3600.0, draw=draw),
        False,
        "chat, 4 req/s, a 2-min 10x flash crowd every 20 min, 6 h",
    ),
    "flash-irregular": (
        flash_irregular,
        False,
        "chat, 4 req/s, 2-min 10x flash crowds 10-40 min apart, 4 h",
    ),
    "crowds": (
        crowds,
        False,
        "chat, 4 req/s, 4-min 5x crowds 15-45 min apart, 4 h",
    ),
    "flash-hourly": (
        flash_hourly,
        False,
        "chat, 4 req/s, a 2-min 10x flash crowd every hour (+-1 min), 8 h",
    ),
    "fan-out": (
        fan_out,
        False,
        "chat, 5 req/s, fan-outs of 150 ~6k-token prompts within 2 s every ~3 min, 2 h",
    ),
    "ramp-6h": (
        lambda draw=0: chat(
            lambda t: 2.0 + 18.0 * np.sin(np.pi * t / 21_600.0) ** 2, 21_600.0, draw
        ),
        True,
        "chat, 2 -> 20 -> 2 req/s over 6 h",
    ),
    "sawtooth": (
        lambda draw=0: chat(
            lambda t: np.where(t % 1800.0 < 1200.0, 2.0 + 38.0 * (t % 1800.0) / 1200.0, 2.0),
            3 * 3600.0,
            draw,
        ),
        False,
        "chat, 2 -> 40 req/s over 20 min, then 2 for 10 min, every 30 min, 3 h",
    ),
    "bimodal": (bimodal, False, "8 req/s, 20% ~20k-token documents"),
    "classify": (classify, False, "50 req/s, one output token"),
    "high-rate": (high_rate, False, "300 req/s, ~100 in / ~20 out"),
    "conversation": (
        conversation,
        False,
        "5 sessions/s of ~4 turns, context growing to ~11k tokens, prefixes cached",
    ),
    "day-chat": (
        lambda draw=0: day_case(101, 3, 30, 1000, 250, bursts=True, draw=draw),
        True,
        "12 h, 3 -> 30 -> 3 req/s, six 1.5-2.5x bursts, chat",
    ),
    "day-code": (
        lambda draw=0: day_case(102, 6, 60, 2500, 30, bursts=True, draw=draw),
        True,
        "12 h, 6 -> 60 -> 6 req/s, six bursts, prompts ~2.5k, outputs ~30",
    ),
    "day-long-context": (
        lambda draw=0: day_case(103, 1, 8, 12_000, 300, bursts=False, draw=draw),
        True,
        "12 h, 1 -> 8 -> 1 req/s, prompts ~12k",
    ),
    "day-reasoning": (
        lambda draw=0: day_case(104, 0.5, 6, 1000, 4000, bursts=False, draw=draw),
        True,
        "12 h, 0.5 -> 6 -> 0.5 req/s, outputs ~4k",
    ),
    "day-cron": (
        day_cron,
        True,
        "12 h chat, 3 -> 30 -> 3 req/s, the first 2 min of every hour at 5x",
    ),
    "day-mix-shift": (
        day_mix_shift,
        True,
        "12 h chat, outputs x6 for two hours, prompts x5 for one",
    ),
}


def build(label: str, draw: int = 0, cases: dict[str, Any] | None = None) -> Trace:
    """Case `label`'s trace (of `cases`, these by default): the tables' draw (0), or another
    of the same rule."""
    return (CASES if cases is None else cases)[label][0](draw=draw)


def fleet(
    spec: ServiceSpec, services: ServicesConfig, trace: Trace
) -> tuple[tuple[int, int], TopologySpec]:
    """The static counts and the CLI's fleet a made-up trace replays on."""
    counts = static_counts(spec, services.catalog, trace)
    return counts, replay_fleet_for(spec, counts, DEFAULT_FLEET_GPUS)


def run_case(
    label: str, services: Any, policies: tuple[str, ...], cases: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Replay case `label` of `cases` (these by default) as a new user would."""
    cases = CASES if cases is None else cases
    _, diurnal, what = cases[label]
    spec = services.by_name()[G.SERVICE]
    trace = build(label, cases=cases)
    counts, topo = fleet(spec, services, trace)
    lengths = (
        f" (prompt mean {np.mean(trace.input_tokens):,.0f}, "
        f"output mean {np.mean(trace.output_tokens):,.0f})"
    )
    return shapes.replay_case(
        label, what, services, trace, topo, counts, policies, diurnal, lengths
    )


def main(argv: list[str] | None = None) -> int:
    return shapes.run_cli(
        "made_up", "cases", CASES, run_case, shapes.POLICIES, __doc__, argv, scalable=False
    )


if __name__ == "__main__":
    sys.exit(main())
