"""Metrics hub: the latest report of every replica and every ingress, in one place.

Replicas push their `ReplicaStats` about once a second and ingress replicas their arrivals
(`IngressLoad`: prompt tokens/s and requests/s per service) with their request migrations so
far (per service and reason, for `heteroscale status`); the policy engine (and the ingress's GET /metrics) reads them back here instead
of fanning out to every replica. Reports older than `STATS_TTL_S` are dropped (replica gone or
stuck). A malformed replica report (see `stats_problem`) is dropped with a log line and also
removes that replica's previous report, so it counts as missing rather than as stale-but-good;
a malformed ingress entry (see `ingress_problem`) is dropped with a log line.

It runs inside the routing-table actor (`routing_table.ServingDirectory`), which composes it
with the routes; it has no Ray code of its own. Time comes from an injected `Clock`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from numbers import Real

from heteroscale_ray.clock import Clock, WallClock
from heteroscale_ray.policy.arrival_bursts import BURST_SPANS_S
from heteroscale_ray.serving.replica_stats import (
    IngressLoad,
    ReplicaStats,
    ingress_problem,
    stats_problem,
)

logger = logging.getLogger(__name__)

STATS_TTL_S = 10.0  # reports older than this are dropped (replica or ingress gone or stuck)


class MetricsHub:
    """Replica and ingress reports; safe to call from the actor's concurrent threads."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or WallClock()
        self._stats: dict[str, tuple[float, ReplicaStats]] = {}
        self._arrivals: dict[str, tuple[float, dict[str, IngressLoad]]] = {}
        # replica id -> when and why its last report was dropped (kept while it keeps reporting)
        self._rejected: dict[str, tuple[float, str]] = {}
        # ingress id -> service -> reason -> migrations since that ingress started. Totals
        # never expire: a gone ingress's migrations still happened.
        self._migrations: dict[str, dict[str, dict[str, int]]] = {}

    def report_stats(self, replica_id: str, stats: ReplicaStats) -> None:
        """Store a replica's report; a malformed one is dropped (logged once per new reason)."""
        problem = stats_problem(stats)
        if problem is not None:
            self._stats.pop(replica_id, None)
            if self._rejected.get(replica_id, (0.0, None))[1] != problem:
                logger.warning("dropping stats report of replica %s: %s", replica_id, problem)
            self._rejected[replica_id] = (self.clock.monotonic(), problem)
            return
        self._rejected.pop(replica_id, None)
        self._stats[replica_id] = (self.clock.monotonic(), stats)

    def forget_replica(self, replica_id: str) -> None:
        self._stats.pop(replica_id, None)
        self._rejected.pop(replica_id, None)

    def replica_stats(
        self, app_name: str | None = None, role: str | None = None
    ) -> list[ReplicaStats]:
        """Fresh reports, optionally filtered by application (DG) and role."""
        now = self.clock.monotonic()
        # Threaded actor: a concurrent call may prune or add reports, so copy and pop safely.
        for rid in [r for r, (t, _) in list(self._stats.items()) if now - t > STATS_TTL_S]:
            self._stats.pop(rid, None)
        for rid in [r for r, (t, _) in list(self._rejected.items()) if now - t > STATS_TTL_S]:
            self._rejected.pop(rid, None)  # that replica is gone
        return [
            s
            for _, s in list(self._stats.values())
            if (app_name is None or s.app_name == app_name) and (role is None or s.role == role)
        ]

    def report_arrivals(
        self,
        ingress_id: str,
        loads: Mapping[str, IngressLoad | float],
        migrations: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        """One ingress replica's arrivals per service (its `ArrivalMeter.loads()`); a bare
        float is prompt tokens/s alone. A malformed entry is dropped with a log line.
        `migrations`: that ingress's request migrations so far, per service and reason."""
        if migrations is not None:
            self._migrations[ingress_id] = _migration_counts(ingress_id, migrations)
        kept: dict[str, IngressLoad] = {}
        for name, load in dict(loads).items():
            if isinstance(load, (int, float)) and not isinstance(load, bool):
                load = IngressLoad(float(load))
            problem = ingress_problem(load)
            if problem is None and isinstance(load, IngressLoad):
                kept[name] = load
            else:
                logger.warning(
                    "dropping arrivals of %s from ingress %s: %s", name, ingress_id, problem
                )
        self._arrivals[ingress_id] = (self.clock.monotonic(), kept)

    def ingress_loads(self) -> dict[str, IngressLoad]:
        """Arrivals per service, summed over ingress replicas with a fresh report; requests/s
        is None when a fresh report of that service did not count requests."""
        now = self.clock.monotonic()
        tokens: dict[str, float] = {}
        requests: dict[str, float | None] = {}
        squares: dict[str, float | None] = {}
        held: dict[str, float | None] = {}
        bursts: dict[str, tuple[float, ...] | None] = {}
        for ingress_id, (t, loads) in list(self._arrivals.items()):
            if now - t > STATS_TTL_S:  # that ingress is gone (or restarted under a new id)
                self._arrivals.pop(ingress_id, None)
                continue
            for name, load in loads.items():
                tokens[name] = tokens.get(name, 0.0) + load.prompt_tokens_per_s
                have = requests.get(name, 0.0)
                more = load.requests_per_s
                requests[name] = None if have is None or more is None else have + more
                sq, more_sq = squares.get(name, 0.0), load.prompt_tokens_sq_per_s
                squares[name] = None if sq is None or more_sq is None else sq + more_sq
                h, more_h = held.get(name, 0.0), load.held_prompt_tokens
                held[name] = None if h is None or more_h is None else h + more_h
                b, more_b = bursts.get(name, (0.0,) * len(BURST_SPANS_S)), load.prompt_bursts
                bursts[name] = (
                    None
                    if b is None or more_b is None
                    else tuple(x + y for x, y in zip(b, more_b, strict=True))
                )
        return {
            name: IngressLoad(tokens[name], requests[name], squares[name], held[name], bursts[name])
            for name in tokens
        }

    def arrival_rates(self) -> dict[str, float]:
        """Prompt tokens/s per service, summed over ingress replicas with a fresh report."""
        return {name: load.prompt_tokens_per_s for name, load in self.ingress_loads().items()}

    def request_migrations(self) -> dict[str, dict[str, int]]:
        """Request migrations per service and reason, summed over every ingress replica seen."""
        total: dict[str, dict[str, int]] = {}
        for per_service in list(self._migrations.values()):
            for svc, by_reason in per_service.items():
                into = total.setdefault(svc, {})
                for reason, n in by_reason.items():
                    into[reason] = into.get(reason, 0) + n
        return total


def _migration_counts(
    ingress_id: str, migrations: Mapping[str, Mapping[str, int]]
) -> dict[str, dict[str, int]]:
    """An ingress's migration totals, each count checked on its own: a bad one (NaN, None,
    negative, not a whole number) is dropped with a log line, not the whole report."""
    out: dict[str, dict[str, int]] = {}
    for svc, by_reason in dict(migrations).items():
        counts: dict[str, int] = {}
        for reason, n in dict(by_reason).items():
            whole = isinstance(n, Real) and math.isfinite(n) and float(n).is_integer()
            if whole and not isinstance(n, bool) and n >= 0:
                counts[str(reason)] = int(n)
            else:
                logger.warning(
                    "dropping migration count %s/%s=%r from ingress %s", svc, reason, n, ingress_id
                )
        out[str(svc)] = counts
    return out
