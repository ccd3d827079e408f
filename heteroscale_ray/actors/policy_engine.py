"""PolicyEngine: validated service configs, metrics -> decisions every period, a decision log.

Each period it reads the replica reports (one call to the serving layer's routing table),
turns them into `Observation`s, asks the shared `HeteroScaleAutoscaler` (policy.decide) for
target counts, checkpoints the policy states, and hands the decisions to the pre-scheduler,
which plans and actuates them (or, in advisory mode, only plans them). Every decision is kept
with its reason enum and sentence, exported as metrics, and logged (INFO when it changes
something or its reason changes; repeated identical holds go to DEBUG).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from typing import Any

from heteroscale_ray.actors.checkpoint import (
    NAMESPACE,
    PRE_SCHEDULER,
    kv_get,
    kv_put,
    load_services,
    save_services,
)
from heteroscale_ray.actors.metrics import ControlPlaneMetrics
from heteroscale_ray.actors.observe import build_observations
from heteroscale_ray.config import Role, ServicesConfig, ServiceSpec
from heteroscale_ray.control import Desired, HeteroScaleAutoscaler, Observation
from heteroscale_ray.policy import PolicyState, RoleCounts, falls, startup
from heteroscale_ray.policy.capacity import capacity, lengths
from heteroscale_ray.policy.transport import carried_target
from heteroscale_ray.policy.types import Signals

logger = logging.getLogger(__name__)
STATE_KEY = "policy-engine"
LOG_KEEP = 500
LOG_CHECKPOINT = 50


class PolicyEngine:
    """Actor body (threaded: the control loop runs in its own thread, calls run beside it)."""

    def __init__(
        self,
        config: ServicesConfig,
        period_s: float = 5.0,
        advisory: bool = False,
        metrics_port: int | None = None,
    ) -> None:
        self.period_s = period_s
        self.advisory = advisory
        self._lock = threading.RLock()
        self.config = load_services() or config  # a restart keeps the last accepted update
        save_services(self.config)
        self._counts: dict[str, RoleCounts] | None = None  # from the last cycle's report
        self.autoscaler = HeteroScaleAutoscaler(self.config.services, self.config.catalog)
        saved = kv_get(STATE_KEY) or {}
        for name, js in saved.get("states", {}).items():
            if name in self.autoscaler.states:
                self.autoscaler.states[name] = PolicyState.from_json(js)
        self.log: deque[dict[str, Any]] = deque(saved.get("log", []), maxlen=LOG_KEEP)
        for e in self.log:  # checkpointed mid-cycle (e.g. by an update): we never heard back
            if e.get("outcome") == "planning":
                e["outcome"] = "unknown: the policy engine restarted during the cycle"
        self.restored = bool(saved)
        self.cycles = int(saved.get("cycles", 0))
        self.last_error: str | None = None
        self.last_cycle: dict[str, Any] = {}
        self.last_observations: dict[str, dict[str, Any]] = {}
        self._last_signals: dict[str, Signals] = {}  # for the capacity report (status, metrics)
        try:
            self.metrics = ControlPlaneMetrics(metrics_port)
        except (OSError, OverflowError) as e:  # port taken (a restart on the same node), or bad
            logger.warning("metrics port %s unavailable (%s); text metrics only", metrics_port, e)
            self.metrics = ControlPlaneMetrics(None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="policy-loop", daemon=True)
        self._thread.start()

    # ---- configuration ----
    def update_services(self, config: ServicesConfig) -> tuple[bool, str]:
        """Switch to a new services config (validated where it entered: the CLI or
        `control_plane.update_services`); policy states of kept services carry over."""
        import ray

        with self._lock:
            old = self.autoscaler.states
            self.autoscaler = HeteroScaleAutoscaler(config.services, config.catalog)
            for name in self.autoscaler.states:
                if name in old:
                    self.autoscaler.states[name] = old[name]
            self.config = config
            save_services(config)
            self._checkpoint()
        ray.get(self._pre_scheduler().set_services.remote(config), timeout=30)
        names = ", ".join(s.name for s in config.services)
        logger.info("services updated: %s", names)
        return True, f"accepted {len(config.services)} service(s): {names}"

    # ---- the loop ----
    def _pre_scheduler(self) -> Any:
        import ray

        return ray.get_actor(PRE_SCHEDULER, namespace=NAMESPACE)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
                self.last_error = None
            except Exception as e:  # keep going: the next period retries from fresh state
                self.last_error = f"{type(e).__name__}: {e}"
                logger.warning("control cycle failed: %s", self.last_error)
            self._stop.wait(max(0.1, self.period_s - (time.monotonic() - started)))

    def tick(self) -> dict[str, Any]:
        """One control period: observe, decide, plan (and actuate unless advisory)."""
        import ray

        from heteroscale_ray.serving.deployments import ingress_loads, replica_stats

        t0 = time.perf_counter()
        fps = self._pre_scheduler()
        counts = self._counts
        if counts is None:  # first period (or after an error): ask; later cycles report them
            counts = ray.get(fps.counts.remote(), timeout=60)
        self._counts = None
        stats = replica_stats()
        try:
            arrivals = ingress_loads()
        except Exception as e:  # an optional signal: without it the ratio uses processed tokens
            logger.debug("no ingress arrival rates: %s", e)
            arrivals = {}
        now = time.time()
        with self._lock:
            names = [s.name for s in self.config.services]
            obs = build_observations(names, stats, counts, arrivals)
            before = dict(self.autoscaler.states)
            desired = self.autoscaler.desire(now, obs)
            # Logged before the pre-scheduler can commit the plan, so that nobody reading the
            # status ever sees a plan's effect (e.g. a soft removal) without its decision.
            entries = self._record(now, desired, obs)
        try:
            cycle = ray.get(fps.run_cycle.remote(now, desired, obs, not self.advisory), timeout=180)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as exc:
            # It may have committed (it checkpoints its plan before actuating, and a restarted
            # pre-scheduler re-applies it): keep the new cooldowns, the conservative choice.
            with self._lock:
                for e in entries:
                    e["outcome"] = (
                        f"unknown: the pre-scheduler did not answer ({type(exc).__name__})"
                    )
            raise
        except BaseException as exc:
            # The pre-scheduler raises only before it commits a plan: forget the cooldown
            # timestamps this tick set, so the next period retries instead of holding.
            with self._lock:
                self.autoscaler.states.update(before)
                for e in entries:
                    e["outcome"] = f"not applied: {type(exc).__name__}: {exc}"
            raise
        with self._lock:
            self._counts = cycle.pop("counts")
            snapshot = cycle.pop("snapshot")
            self.cycles += 1
            for e in entries:
                e["plan"] = [line for line in cycle.get("plan", []) if _about(line, e["service"])]
                e["outcome"] = "applied" if cycle.get("applied") else "advisory"
            self.last_observations = {n: _obs_dict(o) for n, o in obs.items()}
            self._last_signals = {n: o.signals for n, o in obs.items()}
            self._checkpoint()
        seconds = time.perf_counter() - t0
        with self._lock:
            self.last_cycle = {**cycle, "seconds": seconds}
            self.metrics.record(desired, obs, snapshot, cycle, seconds)
            self.metrics.record_capacity(self.capacities())
        return self.last_cycle

    def _record(
        self, now: float, desired: dict[str, Desired], obs: dict[str, Observation]
    ) -> list[dict[str, Any]]:
        """Append one log entry per decision (outcome filled in once the cycle returns)."""
        prev = {e["service"]: e for e in self.log}  # later entries win: the latest
        entries = []
        for name, d in desired.items():
            c = obs[name].counts
            entry = {
                "time": now,
                "service": name,
                "reason": d.reason.value,
                "message": d.message,
                "prefill": d.prefill,
                "decode": d.decode,
                "had_prefill": c.prefill,
                "had_decode": c.decode,
                "pd_ratio": None if d.pd_ratio is None else str(d.pd_ratio),
                "advisory": self.advisory,
                "plan": [],
                "outcome": "planning",
            }
            self.log.append(entry)
            entries.append(entry)
            last = prev.get(name)
            changed = (d.prefill, d.decode) != (c.prefill, c.decode)
            same = last is not None and last["reason"] == d.reason.value and not changed
            level = logging.DEBUG if same else logging.INFO
            mode = "advisory " if self.advisory else ""
            logger.log(
                level,
                "%sdecision %s: %s -> %dP/%dD (%s)",
                mode,
                name,
                d.reason.value,
                d.prefill,
                d.decode,
                d.message,
            )
        return entries

    def _checkpoint(self) -> None:
        kv_put(
            STATE_KEY,
            {
                "states": {n: s.to_json() for n, s in self.autoscaler.states.items()},
                "log": list(self.log)[-LOG_CHECKPOINT:],
                "cycles": self.cycles,
            },
        )

    # ---- reporting ----
    def status(self, last: int = 10) -> dict[str, Any]:
        import ray

        # Pre-scheduler first, log second: a decision is logged before its plan is committed,
        # so every removal or DG in this snapshot has its decision in the log read after it.
        try:
            pre = ray.get(self._pre_scheduler().snapshot.remote(), timeout=30)
        except Exception as e:
            pre = {"error": f"{type(e).__name__}: {e}"}
        with self._lock:
            return {
                "services": [
                    {
                        "name": s.name,
                        "pd_ratio": s.pd_ratio,
                        "active_ratio": _active_ratio(s, self.autoscaler.states.get(s.name)),
                        "priority": s.priority,
                        "signal": s.policy.signal,
                        "target_per_instance": s.policy.target_per_instance,
                        "carried_target_per_instance": carried_target(
                            s, self.autoscaler.states.get(s.name)
                        ),
                    }
                    for s in self.config.services
                ],
                "capacity": self.capacities(),
                "advisory": self.advisory,
                "period_s": self.period_s,
                "cycles": self.cycles,
                "restored": self.restored,
                "last_error": self.last_error,
                "last_cycle": dict(self.last_cycle),
                "observations": dict(self.last_observations),
                "decisions": [dict(e) for e in list(self.log)[-last:]],
                "pre_scheduler": pre,
            }

    def capacities(self) -> dict[str, dict[str, Any]]:
        """Per `signal: demand` service, the per-instance capacity in force at the last
        observation's lengths: the roofline prior times the learned scales, or the override."""
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            for spec in self.config.services:
                if spec.policy.signal != "demand":
                    continue
                signals = self._last_signals.get(spec.name, Signals())
                state = self.autoscaler.states.get(spec.name) or PolicyState()
                try:
                    cap = capacity(spec, signals, state, self.config.catalog)
                except Exception as e:  # a report must never break the status
                    out[spec.name] = {"error": f"{type(e).__name__}: {e}"}
                    continue
                lens = lengths(signals, state)
                out[spec.name] = {
                    "prefill_tps": cap.prefill_tps,
                    "decode_batch": cap.decode_batch,
                    "decode_tps": cap.decode_tps,
                    "prefill_scale": cap.prefill_scale,
                    "decode_scale": cap.decode_scale,
                    "source": cap.source,
                    "prompt_mean": lens.prompt,
                    "prompt_sd": lens.prompt_sd,
                    "output_mean": lens.output,
                    "learned_at": state.capacity_learned_at,
                    "startup_s": startup.timed_startup(state),
                    "burst_horizon_s": startup.horizon_s(spec, state),
                    "window_holds_down_to": {
                        role.value: falls.holds_down_to(spec, state, role) for role in Role
                    },
                    "text": cap.describe() + startup.describe(state),
                }
        return out

    def decisions(self, since: float = 0.0) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self.log if e["time"] > since]

    def metrics_text(self) -> str:
        return self.metrics.text()

    def services(self) -> ServicesConfig:
        return self.config

    def shutdown(self) -> None:
        """Stop the loop (before the actor is killed, so no cycle is cut halfway)."""
        self._stop.set()
        self._thread.join(timeout=self.period_s + 30)


def _active_ratio(spec: ServiceSpec, state: PolicyState | None) -> str:
    """The P/D ratio the policy works at now: the configured one unless a dynamic one moved
    (or `tuned_at` carried it to today's lengths)."""
    moves = spec.policy.dynamic_ratio.enabled or spec.policy.tuned_at is not None
    if state is None or state.active_ratio is None or not moves:
        return spec.pd_ratio
    return str(state.active_ratio)


def _obs_dict(obs: Observation) -> dict[str, Any]:
    s = obs.signals
    return {
        "decode_tps": s.decode_tps,
        "prefill_tps": s.prefill_tps,
        "prefill_offered_tps": s.prefill_offered_tps,
        "prompt_bursts": s.prompt_bursts,
        "ttft_p99_s": s.ttft_p99_s,
        "tbt_p99_s": s.tbt_p99_s,
        "prefill_busy": s.prefill_busy,
        "decode_busy": s.decode_busy,
        "kv_use": s.kv_use,
        "request_rate": s.request_rate,
        "prompt_mean": s.prompt_mean,
        "prompt_sd": s.prompt_sd,
        "output_mean": s.output_mean,
        "prefill_queue_s": s.prefill_queue_s,
        "prefill_queue_peak_s": s.prefill_queue_peak_s,
        "decode_running": s.decode_running,
        "decode_queue": s.decode_queue,
        "ttft_wait_p99_s": s.ttft_wait_p99_s,
        "ttft_service_p99_s": s.ttft_service_p99_s,
        "decode_step_s": s.decode_step_s,
        "decode_step_max_s": s.decode_step_max_s,
        "decode_step_batch": s.decode_step_batch,
        "decode_step_context": s.decode_step_context,
        "decode_token_step_s": s.decode_token_step_s,
        "observed_at": s.observed_at,
        "prefill_ready": obs.prefill.ready,
        "prefill_starting": obs.prefill.starting,
        "decode_ready": obs.decode.ready,
        "decode_starting": obs.decode.starting,
    }


def _about(line: str, service: str) -> bool:
    """Whether a `describe_plan` line is about `service`: it names one of its DGs
    (`<service>-dg<n>`) or its unplaced asks (`of <service>:`), not a service whose name
    merely starts the same (`svc` and `svc2-dg0`)."""
    name = re.escape(service)
    return re.search(rf"(?:^| ){name}-dg\d+(?=[\s)]|$)| of {name}: ", line) is not None
