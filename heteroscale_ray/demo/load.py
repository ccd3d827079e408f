"""Open-loop HTTP load: Poisson arrivals at a time-varying rate against /v1/completions.

Runs its own asyncio loop in a background thread so a driver (the demo, a test) can watch the
cluster meanwhile. Every request is recorded (send time, latency, HTTP status, tokens) so a
caller can assert that none failed and plot what the clients saw.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class RequestRecord:
    sent_at: float  # seconds since the generator started
    latency_s: float
    status: int
    tokens: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error


@dataclass
class LoadGenerator:
    """Send requests at ``rate(t)`` per second (t: seconds since start) until stopped."""

    url: str
    model: str
    rate: Callable[[float], float]
    prompt_bytes: int = 48
    max_tokens: int = 24
    seed: int = 0
    timeout_s: float = 120.0
    records: list[RequestRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started_at = 0.0

    def start(self) -> LoadGenerator:
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def stop(self, drain_s: float = 120.0) -> None:
        """Stop sending; wait (up to ``drain_s``) for requests in flight to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=drain_s)

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def failures(self) -> list[RequestRecord]:
        return [r for r in self.records if not r.ok]

    async def _run(self) -> None:
        import aiohttp

        rng = random.Random(self.seed)
        tasks: set[asyncio.Task[None]] = set()
        conn = aiohttp.TCPConnector(limit=512)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
            k = 0
            while not self._stop.is_set():
                r = max(self.rate(self.elapsed()), 0.0)
                if r <= 0:
                    await asyncio.sleep(0.2)
                    continue
                wait = rng.expovariate(r)
                await asyncio.sleep(min(wait, 1.0))  # wakes at least once a second to re-read r
                if wait > 1.0:  # no arrival yet: waiting is memoryless, so a fresh draw is exact
                    continue
                if self._stop.is_set() or rng.random() > min(1.0, self.rate(self.elapsed()) / r):
                    continue
                k += 1
                task = asyncio.create_task(self._one(session, k))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, session: object, k: int) -> None:
        body = {
            "model": self.model,
            "prompt": (f"request {k}: " + "lorem ipsum " * 64)[: self.prompt_bytes],
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        t0 = self.elapsed()
        try:
            async with session.post(f"{self.url}/v1/completions", json=body) as resp:  # type: ignore[attr-defined]
                data = await resp.json(content_type=None)
                tokens = (
                    int(data.get("usage", {}).get("completion_tokens", 0))
                    if resp.status == 200
                    else 0
                )
                err = (
                    ""
                    if resp.status == 200
                    else str(data.get("error", {}).get("message", ""))[:200]
                )
                self.records.append(
                    RequestRecord(t0, self.elapsed() - t0, resp.status, tokens, err)
                )
        except Exception as e:  # connection reset, timeout: a failed request
            self.records.append(
                RequestRecord(t0, self.elapsed() - t0, 0, 0, f"{type(e).__name__}: {e}")
            )
