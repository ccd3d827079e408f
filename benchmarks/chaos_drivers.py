"""The threads that drive and watch a chaos run.

OpenLoopLoad sends the seeded open-loop arrivals and records every request's outcome,
Monitor polls the control plane's status (timeline, decision log, snapshot invariants),
Scaler forces scale events through the update API, and read_migrations reads the ingress's
migrations counter. benchmarks/chaos.py starts and stops them around the faults; how a
request or a status snapshot is judged is the pure benchmarks/chaos_core.py, tested alone.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from chaos_core import (
    LEVELS,
    SERVICE,
    Clock,
    Mode,
    RequestRecord,
    RequestSpec,
    classify,
    counter_total,
    decision_key,
    invariant_violations,
    is_scale_event,
    level_yaml,
    prompt_text,
    request_plan,
)
from chaos_faults import cp_status


class OpenLoopLoad:
    """Seeded open-loop arrivals through /v1/completions on a background asyncio loop; every
    request is recorded with its outcome. ``stop`` ends the arrivals and waits for those in
    flight (up to ``drain_s``); any still running then is recorded as failed."""

    def __init__(self, url: str, seed: int, mode: Mode, clock: Clock) -> None:
        self.url, self.seed, self.mode, self.clock = url, seed, mode, clock
        self.records: list[RequestRecord] = []
        self._stop = threading.Event()
        self._drain_s = mode.drain_s
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> OpenLoopLoad:
        self._thread.start()
        return self

    def stop(self, drain_s: float | None = None) -> None:
        if drain_s is not None:
            self._drain_s = drain_s
        self._stop.set()
        self._thread.join(timeout=self._drain_s + 30)

    async def _run(self) -> None:
        import aiohttp

        tasks: set[asyncio.Task[None]] = set()
        conn = aiohttp.TCPConnector(limit=1024)
        timeout = aiohttp.ClientTimeout(total=180)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
            for spec in request_plan(self.seed, self.mode):
                while not self._stop.is_set() and self.clock() < spec.at:
                    await asyncio.sleep(min(0.2, spec.at - self.clock()))
                if self._stop.is_set():
                    break
                task = asyncio.create_task(self._one(session, spec))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                _, pending = await asyncio.wait(set(tasks), timeout=self._drain_s)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

    async def _one(self, session: Any, spec: RequestSpec) -> None:
        body: dict[str, Any] = {
            "model": SERVICE,
            "prompt": prompt_text(self.seed, spec),
            "max_tokens": spec.max_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": spec.stream,
        }
        if spec.stream:
            body["stream_options"] = {"include_usage": True}
        sent = self.clock()
        status, error, finish, tokens = 0, "", None, 0
        try:
            async with session.post(f"{self.url}/v1/completions", json=body) as resp:
                status = resp.status
                if status != 200:
                    error = (await resp.text())[:200]
                elif not spec.stream:
                    data = await resp.json(content_type=None)
                    finish = data["choices"][0].get("finish_reason")
                    tokens = int(data.get("usage", {}).get("completion_tokens", 0))
                else:
                    finish, tokens, error = await _read_stream(resp)
        except asyncio.CancelledError:
            error = "still running when the benchmark ended"
            raise
        except Exception as e:  # connection reset, timeout, bad body: a failed request
            error = f"{type(e).__name__}: {e}"[:200]
        finally:
            outcome = classify(status, error, finish, tokens, spec.max_tokens)
            self.records.append(
                RequestRecord(
                    spec.index,
                    round(sent, 3),
                    round(self.clock(), 3),
                    spec.stream,
                    spec.max_tokens,
                    status,
                    tokens,
                    finish,
                    error,
                    outcome,
                )
            )


async def _read_stream(resp: Any) -> tuple[str | None, int, str]:
    """(finish_reason, completion tokens, error) of one SSE stream."""
    finish, tokens, chunks, error, usage = None, 0, 0, "", False
    async for raw in resp.content:
        line = raw.decode(errors="replace").strip()
        if not line.startswith("data: "):
            continue
        payload = line[6:]
        if payload == "[DONE]":
            break
        data = json.loads(payload)
        if "error" in data:
            error = str(data["error"].get("message", data["error"]))[:200]
            break
        for choice in data.get("choices", []):
            if choice.get("text"):
                chunks += 1
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
        if data.get("usage"):
            tokens, usage = int(data["usage"]["completion_tokens"]), True
    return finish, (tokens if usage else chunks), error


class Monitor:
    """Polls the control plane's status every second: instance targets and running counts for
    the timeline, the decision log (merged across policy-engine restarts), and the snapshot's
    invariants (DG ids unique, every GPU held at most once)."""

    def __init__(self, clock: Clock, every_s: float = 1.0) -> None:
        self.clock, self.every_s = clock, every_s
        self.samples: list[dict[str, Any]] = []
        self.decisions: dict[tuple[str, float], dict[str, Any]] = {}
        self.dup_ids: set[str] = set()
        self.double_booked: set[tuple[str, int]] = set()
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=70)

    def scale_events(self, since_wall: float = 0.0) -> int:
        return sum(
            1
            for e in list(self.decisions.values())
            if e["service"] == SERVICE and e["time"] >= since_wall and is_scale_event(e)
        )

    def poll(self) -> dict[str, Any] | None:
        try:
            st = cp_status(40)
        except Exception:  # the policy engine restarting: the next poll sees it again
            self.errors += 1
            return None
        for e in st.get("decisions", []):
            self.decisions.setdefault(decision_key(e), e)
        pre = st.get("pre_scheduler", {})
        if "dgs" in pre:
            dup, double = invariant_violations(pre)
            self.dup_ids |= dup
            self.double_booked |= double
            dgs = [d for d in pre["dgs"] if d["service"] == SERVICE]
            self.samples.append(
                {
                    "t": round(self.clock(), 2),
                    "prefill_target": sum(d["prefill"] for d in dgs),
                    "decode_target": sum(d["decode"] for d in dgs),
                    "prefill_running": sum(d["running"]["prefill"] for d in dgs),
                    "decode_running": sum(d["running"]["decode"] for d in dgs),
                    "dgs": len(dgs),
                    "pending_removals": len(pre.get("pending_removals", [])),
                    "cycles": st.get("cycles"),
                }
            )
        return st

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.poll()
            self._stop.wait(max(0.05, self.every_s - (time.monotonic() - started)))


class Scaler:
    """Forces scale events: alternates the service's minimum instances between LEVELS through
    the control plane's update API every few (seeded) seconds."""

    def __init__(
        self, seed: int, mode: Mode, clock: Clock, levels: Sequence[tuple[int, int]] = LEVELS
    ) -> None:
        self.levels = levels
        self.rng = np.random.default_rng([seed, 3])
        self.mode, self.clock = mode, clock
        self.updates: list[dict[str, Any]] = []
        self.level = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Scaler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=90)

    def _run(self) -> None:
        from heteroscale_ray.actors.control_plane import update_services

        while not self._stop.wait(float(self.rng.uniform(*self.mode.scale_every_s))):
            want = 1 - self.level
            t = self.clock()
            try:
                ok, message = update_services(level_yaml(self.levels, want))
            except Exception as e:  # the policy engine restarting: try again next period
                ok, message = False, f"{type(e).__name__}: {e}"[:200]
            if ok:
                self.level = want
            self.updates.append(
                {"t": round(t, 2), "level": list(self.levels[want]), "ok": ok, "message": message}
            )


def read_migrations(url: str) -> tuple[float | None, str]:
    """The ingress's heteroscale_request_migrations_total for the service (None: not exported)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=30) as resp:
            text = resp.read().decode()
    except Exception as e:
        return None, f"GET /metrics failed: {type(e).__name__}"
    total = counter_total(text, "heteroscale_request_migrations", {"service": SERVICE})
    return total, "ingress /metrics heteroscale_request_migrations_total"
