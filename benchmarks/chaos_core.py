"""The chaos benchmark's pure part: scenario, seeded schedule and arrivals, request outcomes,
recovery windows and the status-snapshot invariants.

No Ray here (benchmarks/chaos.py runs the cluster; benchmarks/chaos_faults.py breaks it;
benchmarks/chaos_report.py turns what a run saw into its summary, goals, table and figure),
so tests/test_chaos_bench.py checks all of it in a second.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "chaos"
RECOVERY_GOAL_S = 10.0
SCALE_EVENTS_GOAL = 20
RECOVERY_WINDOW_S = 5.0  # recovered: every request sent in this long after is served in time

DECODE_REPLICA = "decode_replica"
PREFILL_REPLICA = "prefill_replica"
POLICY_ENGINE = "policy_engine"
PRE_SCHEDULER = "pre_scheduler"
SUB_CLUSTER = "sub_cluster"
GPU_NODE = "gpu_node"
ROUTING_TABLE = "routing_table"  # the ingress's routes: requests must not notice its restart
NODE = "node"
NODE_RESTORE = "node_restore"  # not a kill: the removed host comes back; its disruption counts
KILL_KINDS = (
    DECODE_REPLICA,
    PREFILL_REPLICA,
    POLICY_ENGINE,
    PRE_SCHEDULER,
    SUB_CLUSTER,
    GPU_NODE,
    ROUTING_TABLE,
    NODE,
)
CONTROL_PLANE_KINDS = (POLICY_ENGINE, PRE_SCHEDULER, SUB_CLUSTER, GPU_NODE)
# Recovery measured on the requests; the routing table's own restart is its refill.
SERVING_KINDS = (DECODE_REPLICA, PREFILL_REPLICA, ROUTING_TABLE, NODE, NODE_RESTORE)

TOPOLOGY = {
    "big_pods": [
        {
            "name": "pod-c",
            "mini_pods": [
                {
                    "name": "mini-c0",
                    "leaves": [
                        {"name": f"leaf-{h}", "hosts": [{"name": h, "gpu_type": t, "gpus": 4}]}
                        for h, t in (
                            ("h20-a", "H20"),
                            ("h20-b", "H20"),
                            ("l20-a", "L20"),
                            ("l20-b", "L20"),
                        )
                    ],
                }
            ],
        }
    ]
}
# (prefill, decode) minimum instances the scaler alternates between. Every role keeps two
# replicas at least: a request on a killed replica then always has a peer to move to. With one
# (`--levels 1,1 2,2`) the recovery from a kill is that role's restart time instead.
LEVELS = ((2, 2), (3, 3))


def level_yaml(levels: Sequence[tuple[int, int]], k: int) -> str:
    """The service at ``levels[k]``, with maxima that admit every level."""
    p, d = levels[k]
    return services_yaml(p, d, max(x for x, _ in levels), max(y for _, y in levels))


def services_yaml(min_prefill: int, min_decode: int, max_prefill: int, max_decode: int) -> str:
    """The service at one scale level. The per-instance target is far above the offered load,
    so the minimums decide the counts: raising one scales out (clamped_min_max), lowering it
    lets the policy scale in (soft, through the observation window)."""
    return f"""
services:
  - name: {SERVICE}
    model: dense-8b
    slo: {{ttft_s: 10.0, tbt_s: 2.0}}
    pd_ratio: "1:1"
    prefill: {{gpu_types: [L20], min_instances: {min_prefill}, max_instances: {max_prefill}}}
    decode: {{gpu_types: [H20], min_instances: {min_decode}, max_instances: {max_decode}}}
    affinity: S1
    policy:
      target_per_instance: 5000
      scale_out_tolerance: 0.1
      scale_in_tolerance: 0.2
      scale_out_cooldown_s: 1
      scale_in_cooldown_s: 2
      scale_in_damping: 1.0
      stale_after_s: 30
      latency_guard: {{enabled: false}}
"""


@dataclass(frozen=True)
class Mode:
    """One run's size: load, faults per kind, pacing. Times in seconds."""

    name: str
    rate: float  # requests/s, Poisson
    warmup_s: float  # load before the first fault (the latency baseline)
    kills: Mapping[str, int]
    gap_s: tuple[float, float]  # pause before each fault, uniform
    window_s: float  # at least this long between a fault and the next (recovery window)
    scale_every_s: tuple[float, float]  # scaler period, uniform
    refill_cap_s: float  # stop waiting for a refill / actor recovery after this
    drain_s: float  # wait this long for requests in flight after the last arrival
    stream_fraction: float = 0.5
    prompt_bytes: tuple[int, int] = (48, 200)
    max_tokens: tuple[int, int] = (24, 80)


QUICK = Mode(
    name="quick",
    rate=2.0,
    warmup_s=12.0,
    kills={
        DECODE_REPLICA: 2,
        PREFILL_REPLICA: 1,
        POLICY_ENGINE: 1,
        PRE_SCHEDULER: 1,
        SUB_CLUSTER: 1,
        GPU_NODE: 1,
        ROUTING_TABLE: 1,
        NODE: 1,
    },
    gap_s=(1.0, 3.0),
    window_s=12.0,
    scale_every_s=(4.0, 7.0),
    refill_cap_s=45.0,
    drain_s=45.0,
)
FULL = Mode(
    name="full",
    rate=3.0,
    warmup_s=20.0,
    kills={
        DECODE_REPLICA: 4,
        PREFILL_REPLICA: 3,
        POLICY_ENGINE: 2,
        PRE_SCHEDULER: 2,
        SUB_CLUSTER: 2,
        GPU_NODE: 2,
        ROUTING_TABLE: 2,
        NODE: 2,
    },
    gap_s=(2.0, 6.0),
    window_s=15.0,
    scale_every_s=(4.0, 9.0),
    refill_cap_s=60.0,
    drain_s=60.0,
)


# ------------------------------------------------------------------------- pure helpers


class Clock:
    """Seconds since the load started, shared by every thread of the run."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.t0


@dataclass(frozen=True)
class Fault:
    """One scheduled fault: what to break, after how long, and which target (``pick`` in
    [0, 1) indexes the sorted candidates found at run time, so the choice is seeded too)."""

    kind: str
    gap_s: float
    pick: float


def make_schedule(seed: int, mode: Mode) -> list[Fault]:
    """Every kill of the mode once, in a seeded order with seeded gaps and targets."""
    rng = np.random.default_rng(seed)
    kinds = [k for k in KILL_KINDS for _ in range(mode.kills.get(k, 0))]
    order = rng.permutation(len(kinds))
    return [
        Fault(kinds[i], round(float(rng.uniform(*mode.gap_s)), 2), float(rng.random()))
        for i in order
    ]


def pick(candidates: Sequence[str], u: float) -> str:
    """The seeded choice among sorted candidates."""
    ordered = sorted(candidates)
    return ordered[min(int(u * len(ordered)), len(ordered) - 1)]


@dataclass(frozen=True)
class RequestSpec:
    index: int
    at: float  # seconds after the load started
    stream: bool
    prompt_bytes: int
    max_tokens: int


def request_plan(seed: int, mode: Mode) -> Iterator[RequestSpec]:
    """Seeded open-loop arrivals (Poisson at ``mode.rate``), endless; the caller stops."""
    rng = np.random.default_rng([seed, 1])
    t, k = 0.0, 0
    while True:
        t += float(rng.exponential(1.0 / mode.rate))
        stream = bool(rng.random() < mode.stream_fraction)
        n_in = int(rng.integers(mode.prompt_bytes[0], mode.prompt_bytes[1] + 1))
        n_out = int(rng.integers(mode.max_tokens[0], mode.max_tokens[1] + 1))
        yield RequestSpec(k, t, stream, n_in, n_out)
        k += 1


def prompt_text(seed: int, spec: RequestSpec) -> str:
    rng = np.random.default_rng([seed, 2, spec.index])
    return "".join(chr(c) for c in rng.integers(97, 123, spec.prompt_bytes))


COMPLETED, FAILED, TRUNCATED = "completed", "failed", "truncated"


def classify(
    status: int, error: str, finish_reason: str | None, tokens: int, max_tokens: int
) -> str:
    """Failed: an HTTP error, an error event, a broken connection. Truncated: ended cleanly but
    without a finish_reason, or short of ``max_tokens`` without a stop."""
    if status != 200 or error:
        return FAILED
    if finish_reason is None or (finish_reason != "stop" and tokens < max_tokens):
        return TRUNCATED
    return COMPLETED


@dataclass
class RequestRecord:
    index: int
    sent: float
    done: float
    stream: bool
    max_tokens: int
    status: int
    tokens: int
    finish_reason: str | None
    error: str
    outcome: str

    @property
    def latency_s(self) -> float:
        return self.done - self.sent


def verdict(
    sent: float, done: float, completed: bool, bound_s: float, until_t: float
) -> bool | None:
    """Whether a request was served at the offered rate: completed within ``bound_s``. None
    (unknown) when it went wrong only after ``until_t``, the next fault, which it may owe to."""
    if completed and done - sent <= bound_s:
        return True
    went_bad = min(sent + bound_s, math.inf if completed else done)
    return False if went_bad < until_t else None


def recovery_s(
    fault_t: float,
    until_t: float,
    sent_good: Sequence[tuple[float, bool | None]],
    window_s: float = RECOVERY_WINDOW_S,
) -> float | None:
    """Seconds from ``fault_t`` until new requests succeed again: the earliest start (the fault
    itself, or a good request's send time) from which every request sent in the next
    ``window_s`` (cut at ``until_t``, the next fault) is good, with at least one sent; requests
    of unknown verdict are left out. None when that never happens before ``until_t``."""
    after = sorted((s, g) for s, g in sent_good if fault_t <= s < until_t and g is not None)
    starts = [fault_t] + [s for s, g in after if g]
    for start in starts:
        end = min(start + window_s, until_t)
        inside = [g for s, g in after if start <= s < end]
        if inside and all(inside):
            return round(start - fault_t, 2)
    return None


def invariant_violations(snapshot: Mapping[str, Any]) -> tuple[set[str], set[tuple[str, int]]]:
    """From the pre-scheduler's status snapshot: DG ids held twice (two live DGs, or a live DG
    and a whole-DG removal) and (host, GPU) pairs held twice (DG instances + pending removals)."""
    dgs = snapshot.get("dgs", [])
    pending = snapshot.get("pending_removals", [])
    ids = [d["dg_id"] for d in dgs] + [p["dg_id"] for p in pending if p.get("whole_dg")]
    dup_ids = {i for i, n in Counter(ids).items() if n > 1}
    gpus = [(i["host"], int(g)) for d in dgs for i in d.get("instances", []) for g in i["gpus"]]
    gpus += [(h, int(g)) for p in pending for h, g in p.get("gpus", [])]
    double = {k for k, n in Counter(gpus).items() if n > 1}
    return dup_ids, double


def decision_key(entry: Mapping[str, Any]) -> tuple[str, float]:
    return entry["service"], float(entry["time"])


def is_scale_event(entry: Mapping[str, Any]) -> bool:
    """A decision that changed the service's instance targets (the initial one excluded)."""
    return entry.get("reason") != "initial" and (entry["prefill"], entry["decode"]) != (
        entry["had_prefill"],
        entry["had_decode"],
    )


def counter_total(text: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """Sum of a Prometheus counter's samples (``name`` without ``_total``) whose labels include
    ``labels``; None when the exposition does not declare the metric at all."""
    if not re.search(rf"^# TYPE {re.escape(name)}(_total)? counter", text, re.M):
        return None
    total = 0.0
    sample = re.compile(rf"^{re.escape(name)}_total(?:\{{([^}}]*)\}})?\s+(\S+)", re.M)
    for m in sample.finditer(text):
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in (labels or {}).items()):
            total += float(m.group(2))
    return total


def longest_stall(samples: Sequence[Mapping[str, Any]]) -> float:
    """The longest time the control loop's cycle counter stood still between two status
    samples that saw it (seconds): how long the control plane was not acting."""
    seen = [(s["t"], s["cycles"]) for s in samples if s.get("cycles") is not None]
    if not seen:
        return 0.0
    longest, since = 0.0, seen[0][0]
    for (t, c), (_, prev) in zip(seen[1:], seen[:-1], strict=True):
        if c != prev:
            longest, since = max(longest, t - since), t
    return round(max(longest, seen[-1][0] - since), 1)


def good_latency_bound(latencies: Sequence[float]) -> float:
    """The latency under which a request counts as served at the offered rate: 3x the p99
    seen before any fault, at least 5 s."""
    if not latencies:
        return 10.0
    return round(max(5.0, 3.0 * float(np.percentile(latencies, 99))), 2)
