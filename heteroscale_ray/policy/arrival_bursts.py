"""Bursts shorter than a control period: prompts that arrive together must all start within the
TTFT SLO, which no period's mean rate shows.

An agent's fan-out or a batch job's submit of 150 prompts of 6k tokens within 2 s is 60k
tokens/s over a 15-s period, yet to start the last of them within a 5-s TTFT SLO prefill must
take them at 900k / (2 + 5) s = 129k tokens/s. By the arrival-curve bound of network calculus,
prefill at C tokens/s starts every prompt within a slack S when, for every span u, the tokens
A(u) arriving within any u seconds are at most C (u + S): the role needs max_u A(u) / (u + S).
S is the SLO less a mean prompt's compute on one instance, since a prompt is not spread over
the pool. The ingress (and the simulator) measure A(u) at the spans below. On Poisson arrivals
this sits under the period's mean need at any rate (or under the one instance a role holds
anyway), and on the shared traces in more than 99% of periods, so it binds on bursts, not on
noise. The scale-in window holds what it asked for like any need, and lets it go as it lets go
a peak whose fall never came back, so a burst that does not recur is not paid for long. Bursts
that did recur, twice within the window, are held as long as they keep coming within it: the
role is sized for the second heaviest (one outlier is not held), where the learned window,
comparing a calm need's noise with the calm before, let some go between bursts.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from heteroscale_ray.config import ServiceSpec
from heteroscale_ray.policy.types import PolicyState, Signals, evolve

# The spans the heaviest bursts are measured over, seconds: from prompts sent at once to a
# burst about as long as the TTFT SLOs served here; longer ones show in the period's mean.
BURST_SPANS_S = (1.0, 2.0, 4.0, 8.0)


def heaviest(
    arrivals: np.ndarray,
    tokens: np.ndarray,
    scan: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> tuple[float, ...]:
    """The most tokens arriving within any span of each of `BURST_SPANS_S` seconds; `arrivals`
    sorted. A window starting at an arrival holds the most any window of its length does.
    `scan` is a compiled twin of the search below, the same values (the simulator's, on
    thousands of arrivals a snapshot: `sim.observe_kernels.heaviest_scan`)."""
    if len(arrivals) == 0:
        return tuple(0.0 for _ in BURST_SPANS_S)
    t = np.asarray(arrivals, dtype=np.float64)
    total = np.concatenate(([0.0], np.cumsum(np.asarray(tokens, dtype=np.float64))))
    if scan is not None:
        return tuple(scan(t, total, np.asarray(BURST_SPANS_S, dtype=np.float64)).tolist())
    first = total[: len(t)]
    return tuple(
        float(np.max(total[np.searchsorted(t, t + span, side="left")] - first))
        for span in BURST_SPANS_S
    )


def usable(bursts: object) -> bool:
    """A burst curve the policy can read: one finite count >= 0 per span."""
    return (
        isinstance(bursts, tuple)
        and len(bursts) == len(BURST_SPANS_S)
        and all(_finite(a) for a in bursts)
    )


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


def burst_need(spec: ServiceSpec, s: Signals, prefill_tps: float) -> tuple[float, str] | None:
    """Prefill instances at `prefill_tps` each that start the heaviest burst of the snapshot
    within the TTFT SLO, and the sentence that says so; None without a usable curve, or when
    one instance starts it in time (a prompt or two at a low rate is no burst)."""
    bursts = s.prompt_bursts
    if not usable(bursts) or prefill_tps <= 0:
        return None
    slo = spec.slo.ttft_s
    # A prompt runs on one instance, not spread over the pool: the last of a burst ends its
    # own compute after the pool has drained the rest, so that compute (a mean prompt's, at
    # one instance's rate) comes off the SLO.
    service = 0.0
    if _finite(s.prefill_offered_tps) and _finite(s.request_rate) and s.request_rate > 0:  # type: ignore[operator]
        service = s.prefill_offered_tps / s.request_rate / prefill_tps  # type: ignore[operator]
    slack = max(slo - service, 0.0)
    rate, tokens, span = max(
        (a / (u + slack), a, u)
        for a, u in zip(bursts, BURST_SPANS_S, strict=True)  # type: ignore[arg-type]
    )
    if rate <= prefill_tps:  # one instance, which a role with traffic holds, starts it in time
        return None
    why = (
        f"{tokens:,.0f} prompt tokens arrived within {span:g} s: {rate:,.0f} tok/s starts them "
        f"within the {slo:g}-s TTFT SLO less a mean prompt's {service:,.1f} s, / "
        f"{prefill_tps:,.0f} per instance"
    )
    return rate / prefill_tps, why


def remember(
    spec: ServiceSpec,
    state: PolicyState,
    bursty: tuple[float, str] | None,
    level: float | None,
    now: float,
) -> PolicyState:
    """Record a burst that asked for more than the level, for the scale-in window. Snapshots
    in a row that each see one are one burst (the window they measure spans more than one
    period), kept at its heaviest."""
    window = spec.policy.demand.peak_window_s
    kept = tuple(b for b in state.arrival_bursts if now - b[0] <= window)
    if bursty is not None and level is not None and bursty[0] > level:
        last = kept[-1] if kept else None
        if last is not None and last[0] == state.last_decision_at:
            kept = (*kept[:-1], (now, max(last[1], bursty[0])))
        else:
            kept = (*kept, (now, bursty[0]))
    return evolve(state, arrival_bursts=kept) if kept != state.arrival_bursts else state


def recurring(state: PolicyState) -> tuple[float, str] | None:
    """What bursts that came at least twice within the window ask for: the second heaviest."""
    if len(state.arrival_bursts) < 2:
        return None
    need = sorted(n for _, n in state.arrival_bursts)[-2]
    n = len(state.arrival_bursts)
    return (
        need,
        f"{n} prompt bursts within the scale-in window: the second heaviest asks {need:,.1f}",
    )
