"""DecodeServer: the decode role of a DG as a Ray Serve deployment class.

Each replica runs one continuous-batching loop in the background: apply new arrivals and
aborts, step the engine in a worker thread, sleep out the emulated step time, then hand every
sequence's new text to its request's asyncio queue. `generate` is a streaming method: it pulls
the prefill's KV from the object store itself (so it can time the handoff), joins the batch
and yields one chunk per generated token.

Graceful shutdown: a streaming call counts as in flight until its last chunk, and Serve only
stops a replica when none are left, so a scale-in never cuts a running sequence.

What it measures for the control plane (`ReplicaStats`): sequences running (time-mean of the
batch over the window) and waiting (KV fetched, not yet admitted), the mean batched step time
(real compute plus the emulated GPU time it sleeps out: the step, without transfer or
queueing), and the output length of every request that finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from heteroscale_ray.serving.model import DecodeEngine, SamplingParams, StepOutput, TokenLogprob
from heteroscale_ray.serving.prefill import PrefillOutput
from heteroscale_ray.serving.replica import ReplicaBase, ReplicaSpec

logger = logging.getLogger(__name__)


class KvHandoffError(Exception):
    """The prefill's KV could not be fetched: its replica died before producing it
    (`producer_died`), or the object was lost (its node left). The router prefills again; this
    replica is fine, which is why it is not reported as the Ray error it wraps."""

    def __init__(self, message: str, producer_died: bool) -> None:
        super().__init__(message, producer_died)
        self.producer_died = producer_died

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class ResumePoint:
    """Where a migrated request's stream stopped: the output tokens the router received (the
    KV it comes with ends with them) and the chars of their text the client already has."""

    tokens: tuple[int, ...]
    chars: int


@dataclass(frozen=True)
class DecodeRequest:
    """`kv_ref` holds one ObjectRef to a `PrefillOutput`, nested in a list so that neither
    Serve nor Ray resolves it before the call: the decode replica fetches (and times) it.
    `resume` is set when the request migrated here from a failed replica mid-stream."""

    request_id: str
    kv_ref: list[Any]
    params: SamplingParams
    arrival_wall_s: float
    resume: ResumePoint | None = None


@dataclass
class DecodeChunk:
    """One streamed step of one request; the first chunk also carries the handoff facts."""

    text: str
    num_generated: int
    finished: bool
    finish_reason: str | None
    meta: dict[str, Any] | None = None
    logprobs: tuple[TokenLogprob, ...] = ()  # tokens of this chunk (params.logprobs set)
    tokens: tuple[int, ...] = ()  # ids of this chunk's tokens: what a migration resumes from


@dataclass
class _Track:
    queue: asyncio.Queue[StepOutput | BaseException] = field(default_factory=asyncio.Queue)
    arrival_wall_s: float = 0.0
    last_emit: float | None = None


class DecodeServer(ReplicaBase):
    """Serve deployment body; `deployments.py` wraps it with placement and scaling options."""

    async def __init__(self, spec: ReplicaSpec, prefill: Any = None) -> None:
        self._setup(spec)
        self._prefill = prefill  # binding it makes the DG's prefill deployment part of this app
        self.engine = DecodeEngine(spec.engine)
        self._tracks: dict[str, _Track] = {}
        self._pending: list[tuple[str, PrefillOutput, DecodeRequest]] = []
        self._aborts: list[str] = []
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop().create_task(self._step_loop())
        self._start_reporter()

    def _gauges(self) -> dict[str, Any]:
        cap = self.engine.kv_capacity_tokens
        used = self.engine.kv_reserved_tokens
        return {
            "emulation_overruns": self.device.overruns,
            "queue_length": self.engine.num_waiting + len(self._pending),
            "running": self.engine.num_running,
            "kv_used_tokens": used,
            "kv_capacity_tokens": cap,
            "kv_use": used / cap if cap else 0.0,
        }

    async def generate(self, req: DecodeRequest) -> AsyncIterator[DecodeChunk]:
        t0 = time.perf_counter()
        recv_wall = time.time()
        try:
            out: PrefillOutput = await req.kv_ref[0]
        except Exception as e:
            from ray.exceptions import ObjectLostError

            lost = isinstance(e, ObjectLostError) or isinstance(
                getattr(e, "cause", None), ObjectLostError
            )
            raise KvHandoffError(
                f"KV of {req.request_id} unavailable ({type(e).__name__})", not lost
            ) from None
        fetch_s = time.perf_counter() - t0
        nbytes = out.kv.nbytes
        self.metrics.handoff(nbytes, fetch_s)
        meta = {
            "prompt_tokens": out.prompt_tokens,
            "cached_tokens": out.cached_tokens,
            "kv_bytes": nbytes,
            "kv_fetch_s": fetch_s,
            "handoff_s": max(0.0, recv_wall + fetch_s - out.produced_wall_s),
            "prefill_s": out.prefill_wall_s,
            "prefill_queue_s": out.queue_s,
            "prefill_replica": out.replica_id,
            "decode_replica": self.replica_id,
        }
        rid = req.request_id
        track = _Track(arrival_wall_s=req.arrival_wall_s)
        self._tracks[rid] = track
        self._pending.append((rid, out, req))
        self._wake.set()
        finished = False
        try:
            while not finished:
                item = await track.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield DecodeChunk(
                    item.text_delta,
                    item.num_generated,
                    finished,
                    item.finish_reason,
                    meta,
                    item.logprobs,
                    item.tokens,
                )
                meta = None
        finally:
            self._tracks.pop(rid, None)
            if not finished:  # client went away: free the KV at the next step
                self._aborts.append(rid)
                self._wake.set()

    def _apply_and_step(
        self,
        pending: list[tuple[str, PrefillOutput, DecodeRequest]],
        aborts: list[str],
    ) -> tuple[list[StepOutput], dict[str, BaseException], int, int]:
        """Worker-thread body: arrivals, aborts, then one batched step."""
        errors: dict[str, BaseException] = {}
        for rid, out, req in pending:
            resume = req.resume or ResumePoint((), 0)
            try:
                self.engine.add(
                    rid,
                    out.kv,
                    out.first_token,
                    req.params,
                    out.first_logprob,
                    prior=resume.tokens,
                    emitted_chars=resume.chars,
                )
            except ValueError as e:
                errors[rid] = e
        for rid in aborts:
            self.engine.abort(rid)
        if not self.engine.has_work:
            return [], errors, 0, 0
        outs = self.engine.step()
        batch = sum(1 for o in outs if o.token is not None)
        context = self.engine.kv_used_tokens + batch
        return outs, errors, batch, context

    async def _step_loop(self) -> None:
        while True:
            if not (self.engine.has_work or self._pending or self._aborts):
                self._wake.clear()
                await self._wake.wait()
            pending, self._pending = self._pending, []
            aborts, self._aborts = self._aborts, []
            try:
                (outs, errors, batch, context), timing = await self.device.run(
                    lambda p=pending, a=aborts: self._apply_and_step(p, a),
                    lambda r: self.device.decode_step_s(r[2], r[3]),
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:  # engine bug: fail the affected requests, keep serving
                logger.exception("decode step failed")
                for track in self._tracks.values():
                    track.queue.put_nowait(e)
                continue
            if batch:
                self.metrics.decode_step(
                    batch, timing.wall_s, self.device.decode_flops(batch, context), context
                )
            for rid, err in errors.items():
                if (track := self._tracks.get(rid)) is not None:
                    track.queue.put_nowait(err)
            now_wall, now = time.time(), time.perf_counter()
            for o in outs:
                if o.finished:
                    self.metrics.request_finished(o.num_generated)
                track = self._tracks.get(o.seq_id)
                if track is None:
                    continue
                if track.last_emit is None:
                    # two hosts' wall clocks: a skew must not read as a negative latency
                    self.metrics.ttft(max(0.0, now_wall - track.arrival_wall_s))
                elif o.token is not None:
                    self.metrics.tbt(now - track.last_emit)
                track.last_emit = now
                track.queue.put_nowait(o)

    async def __del__(self) -> None:
        self._loop.cancel()
        with contextlib.suppress(BaseException):
            await self._loop
        await self._stop_reporter()
