"""Synthetic diurnal traces: a day-shaped Poisson rate, for runs longer than the public traces.

Arrivals are a non-homogeneous Poisson process drawn by thinning; lengths are lognormal with a
given mean and median. Every draw comes from a numpy Generator built from the caller's seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from heteroscale_ray.traces.trace import Trace


def make_rng(seed: int | np.random.Generator) -> np.random.Generator:
    """A Generator from a seed, or the caller's Generator unchanged."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


@dataclass(frozen=True, slots=True)
class LengthDist:
    """Lognormal token counts fixed by their mean and median (mean >= median), rounded, clipped.

    For a lognormal, median = e^mu and mean = e^(mu + sigma^2/2), so sigma^2 = 2 ln(mean/median).
    """

    mean: float
    median: float
    min_tokens: int = 1
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.median <= 0 or self.mean < self.median:
            raise ValueError(
                f"need 0 < median <= mean for a lognormal (got mean={self.mean}, median={self.median})"
            )
        if self.min_tokens < 0 or (
            self.max_tokens is not None and self.max_tokens < self.min_tokens
        ):
            raise ValueError("need 0 <= min_tokens <= max_tokens")

    @property
    def mu(self) -> float:
        return math.log(self.median)

    @property
    def sigma(self) -> float:
        return math.sqrt(2.0 * math.log(self.mean / self.median))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        values = np.rint(rng.lognormal(self.mu, self.sigma, size=n))
        hi = np.inf if self.max_tokens is None else self.max_tokens
        return np.clip(values, self.min_tokens, hi).astype(np.int64)


# Azure conversation trace statistics (../shared/data/traces/SOURCES.md): input mean 1,155 and
# median 1,020 tokens; output mean 211 and median 129 tokens.
AZURE_CONV_INPUT = LengthDist(mean=1155, median=1020)
AZURE_CONV_OUTPUT = LengthDist(mean=211, median=129)


def diurnal_rate(
    t_s: np.ndarray | float,
    peak_rps: float,
    trough_rps: float,
    period_s: float = 86_400.0,
    phase_s: float = 0.0,
) -> np.ndarray:
    """Expected requests/s at trace time ``t_s`` (noise-free).

    A raised cosine over time of day ``phase_s + t_s``: the trough at time of day 0, the peak
    half a period later. ``phase_s`` is the time of day at which the trace starts.
    """
    day = 2.0 * np.pi * (np.asarray(t_s, dtype=np.float64) + phase_s) / period_s
    return trough_rps + (peak_rps - trough_rps) * 0.5 * (1.0 - np.cos(day))


def _bucket_max_rate(
    starts: np.ndarray, ends: np.ndarray, peak: float, trough: float, period: float, phase: float
) -> np.ndarray:
    """Exact max of the noise-free rate over each [start, end]: an endpoint, or the peak."""
    best = np.maximum(
        diurnal_rate(starts, peak, trough, period, phase),
        diurnal_rate(ends, peak, trough, period, phase),
    )
    # peaks sit at trace times k * period + period / 2 - phase
    k = np.ceil((starts + phase - period / 2) / period)
    has_peak = k * period + period / 2 - phase <= ends
    return np.where(has_peak, peak, best)


def diurnal_trace(
    duration_s: float,
    peak_rps: float,
    trough_rps: float,
    *,
    seed: int | np.random.Generator,
    period_s: float = 86_400.0,
    phase_s: float = 0.0,
    input_len: LengthDist = AZURE_CONV_INPUT,
    output_len: LengthDist = AZURE_CONV_OUTPUT,
    noise: float = 0.1,
    noise_interval_s: float = 60.0,
) -> Trace:
    """A day-shaped Poisson trace over [0, duration_s).

    ``noise`` is the log-std of a mean-one lognormal factor multiplying the rate, redrawn every
    ``noise_interval_s`` (traffic is burstier than a smooth curve); 0 gives the pure curve.
    Thinning runs per noise interval against that interval's exact maximum rate, so the work is
    proportional to the number of arrivals, not to the peak rate times the duration.
    """
    if duration_s <= 0 or noise_interval_s <= 0 or period_s <= 0:
        raise ValueError("duration_s, noise_interval_s and period_s must be > 0")
    if not 0 <= trough_rps <= peak_rps or peak_rps <= 0:
        raise ValueError(
            f"need 0 <= trough_rps <= peak_rps, peak > 0 (got {trough_rps}, {peak_rps})"
        )
    if noise < 0:
        raise ValueError(f"noise must be >= 0 (got {noise})")
    rng = make_rng(seed)
    starts = np.arange(0.0, duration_s, noise_interval_s)
    ends = np.minimum(starts + noise_interval_s, duration_s)
    factors = np.exp(noise * rng.standard_normal(len(starts)) - noise**2 / 2)
    bound = _bucket_max_rate(starts, ends, peak_rps, trough_rps, period_s, phase_s) * factors
    counts = rng.poisson(bound * (ends - starts))
    bucket = np.repeat(np.arange(len(starts)), counts)
    t = starts[bucket] + rng.random(len(bucket)) * (ends - starts)[bucket]
    rate = diurnal_rate(t, peak_rps, trough_rps, period_s, phase_s) * factors[bucket]
    keep = rng.random(len(t)) * bound[bucket] < rate
    arrivals = np.sort(t[keep])
    n = len(arrivals)
    return Trace.from_columns(
        arrivals,
        input_len.sample(rng, n),
        output_len.sample(rng, n),
        duration_s=duration_s,
        source=f"diurnal(peak={peak_rps:g}, trough={trough_rps:g}, period={period_s:g}s)",
    )
