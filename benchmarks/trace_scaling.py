"""A shared trace rate-scaled until the static policy needs >= 400 GPUs, and the fleet around it.

The benchmarks compare policies on a fleet of a realistic size, not on a trace's own (the shared
traces are one service's sampled traffic): K time-shifted copies are superposed (traces.scale_rate,
seed 0; on a diurnal trace each copy shifts by at most 600 s so the day's shape survives) with
the smallest K for which the static policy's sizing (the peak of 15-s bins, sim/sizing.py, as
`make_autoscaler('static')` sizes it, without the prefix-cache discount) reaches the target. The
fleet then holds 2.5x those GPUs of each type. Used by generalization.py and shapes.py, with
the command-line helpers the benchmarks share (`--static-gpus`, a chosen subset of names).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from heteroscale_ray.config import ServicesConfig, ServiceSpec  # noqa: E402
from heteroscale_ray.sim import sizing  # noqa: E402
from heteroscale_ray.sim.fleet import FLEET_FACTOR, gpus_to_hold  # noqa: E402
from heteroscale_ray.sim.sizing import round_counts  # noqa: E402
from heteroscale_ray.traces import Trace, scale_rate  # noqa: E402
from heteroscale_ray.traces.transforms import SHAPE_SHIFT_S  # noqa: E402

STATIC_GPUS = 400  # scale each trace until the static fleet is at least this
MAX_SHIFT_S = SHAPE_SHIFT_S  # diurnal traces: copies shift by at most this (keeps the day's shape)
# Short stationary traces (Azure, Mooncake) shift over their whole span: nearly aligned copies
# of an hour would multiply its minute-scale bursts by K, a load no real service sees (as
# `heteroscale replay --rate-scale` does by default: traces.transforms.shape_keeping_shift).


def shift_cap(diurnal: bool) -> float | None:
    return MAX_SHIFT_S if diurnal else None


def shift_text(diurnal: bool) -> str:
    return f"<= {MAX_SHIFT_S:.0f} s" if diurnal else "over the whole span"


SEED = 0
BIN_S = 15.0  # static sizing bins (ReplayOptions.static_bin_s)


def _needs(services: ServicesConfig, spec: ServiceSpec, trace: Trace) -> tuple[Any, Any]:
    n = sizing.trace_needs(spec, services.catalog, trace, BIN_S)
    return n.prefill, n.decode


def gpus_of(spec: ServiceSpec, p: int, d: int) -> int:
    return p * spec.prefill.gpus_per_instance + d * spec.decode.gpus_per_instance


def static_counts(services: ServicesConfig, spec: ServiceSpec, trace: Trace) -> tuple[int, int]:
    """Prefill and decode instances of the static policy (peak of 15-s bins, no prefix-cache
    discount)."""
    return sizing.static_counts(spec, services.catalog, trace, BIN_S)


def static_gpus(services: ServicesConfig, spec: ServiceSpec, trace: Trace) -> int:
    """GPUs of the static policy's fleet (peak of 15-s bins, no prefix-cache discount)."""
    return gpus_of(spec, *static_counts(services, spec, trace))


def fleet_gpus(spec: ServiceSpec, counts: tuple[int, int], factor: float = FLEET_FACTOR) -> int:
    """Fleet size for fleet_for([spec], n) holding `factor` x the static need of each GPU type
    (`sim.fleet.gpus_to_hold`)."""
    return gpus_to_hold(spec, counts, factor)


def _first_guess(
    services: ServicesConfig, spec: ServiceSpec, trace: Trace, target: int, diurnal: bool
) -> int:
    """K from the unscaled needs smoothed over the shift window (superposed copies average
    the bursts out); the replayed sizing then corrects it."""
    p, d = _needs(services, spec, trace)
    w = max(1, int((shift_cap(diurnal) or trace.duration_s) / BIN_S))
    kernel = np.ones(w) / w
    ps = np.convolve(np.concatenate([p, p[: w - 1]]), kernel, "valid")
    ds = np.convolve(np.concatenate([d, d[: w - 1]]), kernel, "valid")
    pm, dm = float(ps.max()), float(ds.max())
    for k in range(1, 100_000):
        if gpus_of(spec, *round_counts(spec, k * pm, k * dm)) >= target:
            return k
    return 100_000


def scale(trace: Trace, k: int, diurnal: bool, seed: int = SEED) -> Trace:
    return scale_rate(trace, k, seed=seed, max_shift_s=shift_cap(diurnal)) if k != 1 else trace


def rate_factor(
    services: ServicesConfig,
    spec: ServiceSpec,
    trace: Trace,
    target: int = STATIC_GPUS,
    diurnal: bool = True,
    seed: int = SEED,
) -> tuple[int, Trace, int, int]:
    """Smallest K found with static sizing >= target: (K, scaled trace, its static GPUs,
    the unscaled static GPUs). `seed` draws the superposed copies' shifts."""
    g0 = static_gpus(services, spec, trace)
    k = max(math.ceil(target / max(g0, 1)), _first_guess(services, spec, trace, target, diurnal))
    # step down while the guess overshoots, then up until the target is met
    scaled = scale(trace, k, diurnal, seed)
    est = static_gpus(services, spec, scaled)
    for _ in range(8):
        if est >= target:
            break
        k = max(k + 1, math.ceil(k * target / max(est, 1)))
        scaled = scale(trace, k, diurnal, seed)
        est = static_gpus(services, spec, scaled)
    return k, scaled, est, g0


def add_static_gpus(ap: Any, why: str) -> None:
    """`--static-gpus N`: rate-scale each case until static sizing holds at least N GPUs."""
    ap.add_argument(
        "--static-gpus",
        type=int,
        default=STATIC_GPUS,
        help=f"rate-scale each case until static sizing holds at least this many GPUs "
        f"(default {STATIC_GPUS}; {why})",
    )


def refuse_static_gpus(n: int) -> bool:
    """True, with the reason on stderr, when `--static-gpus` is below one GPU."""
    if n < 1:
        print("--static-gpus must be at least 1", file=sys.stderr)
        return True
    return False


def pick(text: str | None, every: Iterable[str]) -> tuple[str, ...]:
    """A comma-separated command-line subset, or all of `every`."""
    return tuple(text.split(",")) if text else tuple(every)


def unknown(chosen: Iterable[str], known: Iterable[str]) -> str | None:
    """The first of `chosen` not in `known`, or None."""
    names = set(known)
    return next((x for x in chosen if x not in names), None)
