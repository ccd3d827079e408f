"""Boundary types of the policy core: what goes in (signals, counts, state) and what comes out.

Other layers (actors, simulator, CLI) code against these names, so they stay stable.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any, NamedTuple

from heteroscale_ray.config import PdRatio, Role


@dataclass(frozen=True)
class Signals:
    """One metrics snapshot of a service. Any field may be None or NaN: the policy copes."""

    observed_at: float | None = None  # epoch seconds (UTC) the snapshot was taken
    decode_tps: float | None = None  # decode tokens/s, all instances
    prefill_tps: float | None = None  # prefill tokens/s, KV-cache misses only
    # Cache-miss prompt tokens/s *arriving* at prefill: unlike prefill_tps it keeps rising when
    # prefill falls behind, so the dynamic P/D ratio can see how far behind it is.
    prefill_offered_tps: float | None = None
    # The most cache-miss prompt tokens arriving within any span of each of
    # policy/arrival_bursts.BURST_SPANS_S seconds: a burst shorter than the window, which its
    # mean rate hides (a tuple, one count per span).
    prompt_bursts: tuple[float, ...] | None = None
    ttft_p99_s: float | None = None
    tbt_p99_s: float | None = None
    prefill_busy: float | None = None  # 0..1, the GPU-utilisation analogue
    decode_busy: float | None = None  # 0..1; misleading for scaling (paper), kept for reports
    kv_use: float | None = None  # 0..1 share of KV-cache blocks in use
    # Demand where work arrives (signal 'demand', and the backlog rule of every mode):
    request_rate: float | None = None  # requests/s arriving at the ingress
    prompt_mean: float | None = None  # mean prompt tokens of arriving requests
    prompt_sd: float | None = None  # their standard deviation (the prefill prior's spread)
    output_mean: float | None = None  # mean output tokens of finished requests
    prefill_queue_s: float | None = None  # queued prefill work per prefill instance, seconds
    # The most prefill work queued per instance at once over the last period (routed, not
    # started; a replica's, over its window): prompts that land together queue and drain
    # between snapshots. A queue drained before the period is the past the p99 still counts.
    prefill_queue_peak_s: float | None = None
    decode_running: float | None = None  # sequences in decode, all instances (mean)
    decode_queue: float | None = None  # sequences waiting for a decode slot (KV or batch)
    # TTFT split into the part more prefill instances shorten (queueing: the latency guard's)
    # and the part they cannot (the prompt's own compute: reports and status), and decode's
    # pure step time (the TBT guard's, and learning per-instance capacity).
    ttft_wait_p99_s: float | None = None
    ttft_service_p99_s: float | None = None
    decode_step_s: float | None = None  # mean decode step time (TBT without transfer/queueing)
    # The slowest decode instance's step: exported beside the mean (the control plane's signal
    # gauges), so a TBT p99 from a few loaded instances shows; the guard judges the mean.
    decode_step_max_s: float | None = None
    # The step decode's tokens were made at over the window (each instance's tokens weigh the
    # steps they were made at; instances weigh alike). Snapshots of the busy instances' step
    # miss batches that spike between them (requests landing together); those tokens do not.
    decode_token_step_s: float | None = None
    # What decode_step_s was measured at: sequences per step and KV tokens per sequence, as
    # means over the steps taken. Learning compares the prior's step at these, not at the
    # running sequences per ready instance (idle instances take no step) and the arrivals'
    # lengths (long sequences outlive short ones, so the running ones are longer).
    decode_step_batch: float | None = None
    decode_step_context: float | None = None

    @staticmethod
    def empty() -> Signals:
        """No data at all: the policy holds (or starts at the minimums)."""
        return Signals()


@dataclass(frozen=True)
class RoleCounts:
    """Instances per role as the substrate reports them; starting ones count as capacity to come."""

    prefill_ready: int = 0
    prefill_starting: int = 0
    decode_ready: int = 0
    decode_starting: int = 0

    def __post_init__(self) -> None:
        negative = {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) < 0
        }
        if negative:
            raise ValueError(f"instance counts cannot be negative, got {negative}")

    @property
    def prefill(self) -> int:
        return self.prefill_ready + self.prefill_starting

    @property
    def decode(self) -> int:
        return self.decode_ready + self.decode_starting

    def of(self, role: Role) -> int:
        return self.prefill if role is Role.PREFILL else self.decode

    def starting_of(self, role: Role) -> int:
        return self.prefill_starting if role is Role.PREFILL else self.decode_starting


class Reason(str, Enum):
    """Why a decision came out as it did; exported as a metric label and logged."""

    INITIAL = "initial"  # no instances yet: start at the minimums (or what the load needs)
    SCALE_OUT = "scale_out"  # proportional control: signal / target above the dead-band
    SCALE_IN = "scale_in"  # proportional control: signal / target below the dead-band
    LATENCY_GUARD = "latency_guard"  # latency near or over the SLO: tiered fixed step out
    KV_PRESSURE = "kv_pressure"  # decode KV memory nearly full: fixed step out
    PERIODIC = "periodic"  # the time table sets the counts
    RATIO_REPAIR = "ratio_repair"  # counts were off the P/D ratio: the lagging role is fixed
    RATIO_DRIFT = "ratio_drift"  # the dynamic P/D ratio followed the workload: one role moves
    CLAMPED_MIN_MAX = "clamped_min_max"  # the wanted counts hit a role's min or max
    CLAMPED_BUDGET = "clamped_budget"  # the wanted counts exceed the service's GPU budget
    HOLD_DEADBAND = "hold_deadband"  # signal within the scale-out/scale-in tolerances
    HOLD_COOLDOWN = "hold_cooldown"  # a change is wanted but too soon after the last one
    HOLD_MISSING_SIGNAL = "hold_missing_signal"  # signal missing, NaN or stale: never scale in
    # a change is wanted but min/max/budget (or the other role's DGs) leave nothing to do
    HOLD_AT_BOUND = "hold_at_bound"
    HOLD_OUTSIDE_SCHEDULE = "hold_outside_schedule"  # periodic mode, no time-table row active
    # A growing prefill queue that the instances already starting drain before any asked now
    # could land: more would land after it is gone (policy/backlog.py).
    HOLD_STARTING = "hold_starting"
    # The baseline autoscalers' rules (control/baselines.py), so every decision has one type.
    HPA = "hpa"  # Kubernetes HPA on GPU utilisation
    SERVE = "serve"  # Ray Serve's ongoing-requests rule
    STATIC = "static"  # fixed provisioning
    SCHEDULED = "scheduled"  # counts from a precomputed schedule (the oracle)
    BACKLOG_GROWTH = "backlog_growth"  # a role's queue grew K periods in a row: it steps out
    LATENCY_FLOOR = "latency_floor"  # latency over the SLO, but not from queueing: no step
    LATENCY_NO_GAIN = "latency_no_gain"  # the last guard step did not lower latency: no more
    # The paper's rule, blind to prefill demand, sized prefill below what arriving prompts
    # need at its measured rate: prefill goes to that need instead (never in below it).
    PREFILL_DEMAND = "prefill_demand"
    # A surge recurring on a timer is due: the role is sized for it before it comes.
    SURGE_DUE = "surge_due"
    # Prompts arrived in a burst shorter than the period: prefill is sized to start them all
    # within the TTFT SLO, which their mean rate would not have asked for.
    ARRIVAL_BURST = "arrival_burst"


@dataclass(frozen=True)
class Decision:
    """Target totals per role (ready + starting) for one service, with the reason and a sentence."""

    service: str
    prefill: int
    decode: int
    reason: Reason
    message: str
    signal_value: float | None = None
    required_decode: float | None = None
    required_prefill: float | None = None
    pd_ratio: PdRatio | None = None  # the P/D ratio the counts are at; dynamic ratios change it

    def changed(self, counts: RoleCounts) -> bool:
        return (self.prefill, self.decode) != (counts.prefill, counts.decode)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reason"] = self.reason.value
        out["pd_ratio"] = None if self.pd_ratio is None else str(self.pd_ratio)
        return out


@dataclass(frozen=True)
class BurstMemory:
    """One role's recent needs (time, instances) and the rises over a start-up horizon measured
    from them (policy/burst.py), learned only from `settled_at` on: before it, the need was
    still in the climb the policy started into (the fleet filling)."""

    needs: tuple[tuple[float, float], ...] = ()
    rises: tuple[float, ...] = ()
    rises_at: tuple[float, ...] = ()
    tops: tuple[float, ...] = ()  # the need each rise reached (instances)
    strained_at: float | None = None  # last time the role's fixable latency neared the SLO
    settled_at: float | None = None  # when a covered horizon first showed no climb
    # Each rise's climb: the largest, over a remembered span (start-up horizon and held window)
    # from that span's first need, of the spans it was recorded in; a climb measured in steps
    # of one horizon is still one surge (policy/burst.py).
    spans: tuple[float, ...] = ()

    @staticmethod
    def from_dict(data: dict[str, Any] | None) -> BurstMemory:
        data = data or {}
        rises = tuple(float(r) for r in data.get("rises", ()))
        tops = tuple(float(n) for n in data.get("tops", ()))
        if len(tops) != len(rises):  # saved before tops were kept: each insures as it did
            tops = (math.inf,) * len(rises)
        spans = tuple(float(r) for r in data.get("spans", ()))
        if len(spans) != len(rises):  # saved before spans were kept: each its own rise
            spans = rises
        spans = tuple(max(sp, r) for sp, r in zip(spans, rises, strict=True))  # a climb >= its step
        return BurstMemory(
            needs=_pairs(data.get("needs", ())),
            rises=rises,
            rises_at=tuple(float(t) for t in data.get("rises_at", ())),
            tops=tops,
            spans=spans,
            strained_at=None if data.get("strained_at") is None else float(data["strained_at"]),
            settled_at=None if data.get("settled_at") is None else float(data["settled_at"]),
        )


class Return(NamedTuple):
    """A role's need back from a fall (policy/falls.py): when; how deep the fall went (its
    lowest need over the need back); how long the need stayed away (the lull); the need it
    came back to; and how long it stayed there (0 until it falls again)."""

    at: float
    depth: float
    lull: float = 0.0
    back: float = 0.0
    stay: float = 0.0


class Onset(NamedTuple):
    """A role's surge (policy/recurrence.py): when it started; the need it rose from (the
    lowest of the horizon before); the highest need it reached; when it fell back (0 until
    then); and whether it came when the onsets before it said one was due."""

    at: float
    base: float
    top: float
    end: float = 0.0
    foreseen: bool = False


@dataclass(frozen=True)
class PolicyState:
    """What the policy remembers between calls; saved as JSON so it survives an actor restart."""

    last_scale_out_at: float | None = None  # epoch s of the last decision that grew any role
    last_scale_in_at: float | None = None  # epoch s of the last decision that shrank any role
    last_guard_at: float | None = None  # epoch s of the last latency-guard scale-out
    last_kv_guard_at: float | None = None  # epoch s of the last KV-pressure scale-out
    last_decision_at: float | None = None
    started_at: float | None = None  # epoch s of the first decision (demand mode): a fresh
    # control plane waits a scale-in cooldown before its first scale-in, as HPA's window does
    last_decision_reason: Reason | None = None
    # The P/D ratio in force, moved by the dynamic ratio or carried to today's lengths by
    # `tuned_at` (None: the configured one), and the smoothed prefill/decode need behind it.
    active_ratio: PdRatio | None = None
    ratio_estimate: float | None = None
    ratio_estimate_at: float | None = None  # epoch s of the last measurement folded in
    # Backlog rule: the last queue per role and how many periods in a row it grew; whether the
    # prefill queue fell at the last snapshot (demand's TTFT guard waits while it drains).
    prefill_queue_last: float | None = None
    decode_queue_last: float | None = None
    prefill_growth_streak: int = 0
    decode_growth_streak: int = 0
    prefill_queue_fell: bool = False
    # Marginal-gain check: the fixable latency (s) when the guard last stepped, and its role.
    guard_fixable_s: float | None = None
    guard_role: str | None = None
    # that role's load per instance when the guard stepped: its need (demand) or its tokens/s
    # (the paper's rule)
    guard_load: float | None = None
    guard_calm_since: float | None = None  # epoch s that role's latency fell under every tier
    # Learned capacity: measured over roofline prior per role (1.0 = the prior is right).
    prefill_capacity_scale: float | None = None
    decode_capacity_scale: float | None = None
    capacity_learned_at: float | None = None
    # The arriving prompts' spread (standard deviation over mean), averaged like the learned
    # capacity: one window's few long prompts must not swing the prior.
    prompt_spread: float | None = None
    prompt_spread_at: float | None = None
    decode_context: float | None = None  # the last snapshot's running context (see capacity)
    # A tuned target carried to today's lengths (policy/transport.py): capacity today over at
    # the tuned load per role, averaged the same way, so one window's mix does not swing it.
    carried_prefill: float | None = None
    carried_decode: float | None = None
    carried_work: float | None = None  # prompt tokens per decode token, today over tuned
    carried_at: float | None = None
    # Scale-in stabilisation (demand mode): each role's needs within the window as (time,
    # instances with the burst margin, without it), those no later need matches in both.
    prefill_peaks: tuple[tuple[float, float, float], ...] = ()
    decode_peaks: tuple[tuple[float, float, float], ...] = ()
    # Guard steps the window holds as (time, instances, the sized need they were taken at):
    # held like a need while that load holds (policy/peak_window.py).
    prefill_steps: tuple[tuple[float, float, float], ...] = ()
    decode_steps: tuple[tuple[float, float, float], ...] = ()
    # Returns each role's need made (policy/falls.py), those no later one covers: which falls
    # the window holds, and for how long.
    prefill_returns: tuple[Return, ...] = ()
    decode_returns: tuple[Return, ...] = ()
    # and each role's needs within the window no later one is under, as (time, need)
    prefill_lows: tuple[tuple[float, float], ...] = ()
    decode_lows: tuple[tuple[float, float], ...] = ()
    # Each role's last surges (policy/recurrence.py): when the next is due, if they recur.
    prefill_onsets: tuple[Onset, ...] = ()
    decode_onsets: tuple[Onset, ...] = ()
    # Demand mode: when each role last grew. A role's scale-out cooldown counts from its own
    # growth: the other role's step does not change what this one's arriving demand asks for.
    prefill_grew_at: float | None = None
    decode_grew_at: float | None = None
    # The count each role's last decision asked for (both rules). Part of an ask the fleet
    # could not place stays asked while the need holds, and asking again is no new growth.
    prefill_asked: int | None = None
    decode_asked: int | None = None
    # Learned burst headroom (demand mode): each role's needs and rises over a start-up horizon.
    prefill_burst: BurstMemory = BurstMemory()
    decode_burst: BurstMemory = BurstMemory()
    # Capacity the latency guard proved (policy/proof.py): (sized need, instances, load it
    # lapses from) per role, and a first guard step not yet repeated at its load (which
    # proves nothing on its own).
    prefill_proof: tuple[float, float, float] | None = None
    decode_proof: tuple[float, float, float] | None = None
    prefill_first_step: tuple[float, float, float] | None = None
    decode_first_step: tuple[float, float, float] | None = None
    # Each role's sized needs within a start-up horizon, (time, need): the load a guard step
    # was taken at holds while any of them reaches it (one period's dip is no new load).
    prefill_loads: tuple[tuple[float, float], ...] = ()
    decode_loads: tuple[tuple[float, float], ...] = ()
    # Instance start-up, timed (policy/startup.py): each role's ask being timed (when, and the
    # role's count before it until it is seen placed), the last timings and their horizon.
    prefill_launch_at: float | None = None
    prefill_launch_from: int | None = None
    decode_launch_at: float | None = None
    decode_launch_from: int | None = None
    startups: tuple[float, ...] = ()
    startup_horizon_s: float | None = None
    # Bursts shorter than a period that asked prefill for more than its level, (seen at,
    # instances) within the scale-in window (policy/arrival_bursts.py).
    arrival_bursts: tuple[tuple[float, float], ...] = ()

    def after_decision(
        self,
        now: float,
        reason: Reason,
        *,
        grew: bool,
        shrank: bool,
        guarded: bool,
        kv_guarded: bool,
    ) -> PolicyState:
        """The scale events and cooldown clocks a decision leaves behind: any decision that
        grows a role is a scale-out event, any that shrinks one a scale-in event."""
        return evolve(
            self,
            last_scale_out_at=now if grew else self.last_scale_out_at,
            last_scale_in_at=now if shrank else self.last_scale_in_at,
            last_guard_at=now if guarded else self.last_guard_at,
            last_kv_guard_at=now if kv_guarded else self.last_kv_guard_at,
            last_decision_at=now,
            last_decision_reason=reason,
        )

    def asked(self, role: Role) -> int:
        """The count the role's last decision asked for (0 before any)."""
        return (self.prefill_asked if role is Role.PREFILL else self.decode_asked) or 0

    def held_ask(self, role: Role, current: int, desired: int) -> int:
        """What a scale-out its cooldown holds still asks for. Counts include starting
        instances, so an ask above them was not placed (a full fleet): ask again, up to what
        the need still wants, rather than drop to the placed count and back every period."""
        asked = self.asked(role)
        return min(asked, desired) if asked > current else current

    def grows(self, role: Role, target: int, have: int) -> bool:
        """Whether ``target`` is new growth; asking again for what was not placed is not."""
        return target > max(have, self.asked(role))

    @property
    def last_scaled_at(self) -> float | None:
        """The latest scaling event in either direction: the paper's rule counts both
        cooldowns from it, demand its scale-in cooldown (`role_plan`)."""
        stamps = [t for t in (self.last_scale_out_at, self.last_scale_in_at) if t is not None]
        return max(stamps) if stamps else None

    def to_json(self) -> str:
        data = asdict(self)
        data["last_decision_reason"] = self.last_decision_reason and self.last_decision_reason.value
        return json.dumps(data, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> PolicyState:
        """Inverse of to_json; unknown keys (from a newer version) are ignored."""
        data = json.loads(text)
        known = {f.name for f in fields(PolicyState)}
        state = PolicyState(**{k: v for k, v in data.items() if k in known})
        reason = state.last_decision_reason
        ratio = state.active_ratio
        return evolve(
            state,
            last_decision_reason=None if reason is None else Reason(reason),
            active_ratio=None if ratio is None else PdRatio(int(ratio[0]), int(ratio[1])),
            prefill_peaks=_peaks(data.get("prefill_peaks", ())),
            decode_peaks=_peaks(data.get("decode_peaks", ())),
            prefill_steps=_peaks(data.get("prefill_steps", ())),
            decode_steps=_peaks(data.get("decode_steps", ())),
            prefill_returns=_returns(data.get("prefill_returns", ())),
            decode_returns=_returns(data.get("decode_returns", ())),
            prefill_lows=_pairs(data.get("prefill_lows", ())),
            decode_lows=_pairs(data.get("decode_lows", ())),
            prefill_onsets=_onsets(data.get("prefill_onsets", ())),
            decode_onsets=_onsets(data.get("decode_onsets", ())),
            prefill_burst=BurstMemory.from_dict(data.get("prefill_burst")),
            decode_burst=BurstMemory.from_dict(data.get("decode_burst")),
            prefill_proof=_step(data.get("prefill_proof")),
            decode_proof=_step(data.get("decode_proof")),
            prefill_first_step=_step(data.get("prefill_first_step")),
            decode_first_step=_step(data.get("decode_first_step")),
            prefill_loads=_pairs(data.get("prefill_loads", ())),
            decode_loads=_pairs(data.get("decode_loads", ())),
            startups=tuple(float(t) for t in data.get("startups", ())),
            arrival_bursts=_pairs(data.get("arrival_bursts", ())),
        )


def _step(value: Any) -> tuple[float, float, float] | None:
    """(sized need, instances, load it lapses from); an older state's pair lapsed from the need."""
    if value is None:
        return None
    return (float(value[0]), float(value[1]), float(value[2] if len(value) > 2 else value[0]))


def _pairs(value: Any) -> tuple[tuple[float, float], ...]:
    return tuple((float(e[0]), float(e[1])) for e in value)


def _returns(value: Any) -> tuple[Return, ...]:
    """An older state's returns lack the lull, the need back and the stay: held within the
    window only, as they were."""
    return tuple(Return(*(float(x) for x in e)) for e in value)


def _onsets(value: Any) -> tuple[Onset, ...]:
    """An older state's onsets lack `foreseen`: none proved a timer."""
    return tuple(Onset(*(float(x) for x in e[:4]), *(bool(x) for x in e[4:5])) for e in value)


def evolve(state: PolicyState, **changes: Any) -> PolicyState:
    """`dataclasses.replace` for the policy's state, at a tenth of its cost: a decision copies
    its state about 17 times, and replace rebuilds all of its ~65 fields through `__init__`
    each time (about a fifth of a decision's time on a replay). PolicyState has no
    `__post_init__` and every field is an init field, so a copy of its fields with `changes`
    set is what replace builds."""
    unknown = changes.keys() - _STATE_FIELDS
    if unknown:
        raise TypeError(f"PolicyState has no field {', '.join(sorted(unknown))}")
    new = object.__new__(PolicyState)
    new.__dict__.update(state.__dict__)
    new.__dict__.update(changes)
    return new


_STATE_FIELDS = frozenset(f.name for f in fields(PolicyState))


def _peaks(value: Any) -> tuple[tuple[float, float, float], ...]:
    """Window entries as (time, margined, bare); an older state's (time, need) pairs held
    one need for both."""
    return tuple((float(e[0]), float(e[1]), float(e[2] if len(e) > 2 else e[1])) for e in value)
