"""Answering one request's n choices: prefill then decode in one DG, and their token streams.

Why apart from router.py: the ingress deployment (HTTP routes, routing-table cache, admission)
and the orchestration of a request's choices are separate concerns. `ChoiceStreams` is a mixin
of the `Router`: it starts each choice (prefill, then decode with the prefill's KV ref, both
bounded by timeouts), merges the choices' decode streams, and absorbs each chunk into its
`_Choice`, recording the ingress's per-request metrics as it goes.

When a replica fails under a choice (prefill or decode replica, its node, the KV handoff), the
choice moves (migration.py decides whether and where): a prefill is retried, a decode stream
resumes from what the client already has, and the client's stream goes on unbroken. After the
service's `migration_limit` moves the request ends with one clean OpenAI error.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from heteroscale_ray.config.services import DEFAULT_MIGRATION_LIMIT
from heteroscale_ray.serving.admission import PrefillGate
from heteroscale_ray.serving.api_requests import ApiError, internal_error
from heteroscale_ray.serving.api_types import ChatCompletionRequest, CompletionRequest, now_s
from heteroscale_ray.serving.decode import DecodeChunk, DecodeRequest
from heteroscale_ray.serving.metrics import ArrivalMeter
from heteroscale_ray.serving.migration import (
    Budget,
    MigrationReason,
    Progress,
    Stage,
    StreamEnded,
    failure_reason,
    migration_target,
)
from heteroscale_ray.serving.model import SamplingParams, TokenLogprob
from heteroscale_ray.serving.prefill import PrefillRequest
from heteroscale_ray.serving.request_metrics import RequestMetrics
from heteroscale_ray.serving.routing_table import DgRoute, ServiceRoute
from heteroscale_ray.serving.tokenizer import IncrementalDecoder

logger = logging.getLogger(__name__)

# asyncio.wait_for raises asyncio.TimeoutError, distinct from the builtin before Python 3.11.
_TIMEOUTS = (asyncio.TimeoutError, TimeoutError)

PREFILL_DEPLOYMENT = "PrefillServer"
DECODE_DEPLOYMENT = "DecodeServer"


def _prefill_timed_out() -> ApiError:
    return ApiError(
        503, "prefill timed out (overloaded); retry later", "server_overloaded", "timeout"
    )


def sampling_params(
    req: CompletionRequest | ChatCompletionRequest, max_tokens: int, index: int
) -> SamplingParams:
    """The engine's parameters for choice `index` (seeded choices use seed + index)."""
    logprobs = req.logprobs if isinstance(req, CompletionRequest) else req.logprobs_k
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=req.temperature,
        seed=None if req.seed is None else req.seed + index,
        stop=req.stop_list,
        ignore_eos=req.ignore_eos,
        top_p=req.top_p,
        logprobs=logprobs,
    )


@dataclass
class _Request:
    """What every choice of one request shares while it is answered."""

    rid: str
    model: str
    chat: bool
    req: CompletionRequest | ChatCompletionRequest
    prompt: str
    prompt_tokens: int
    started: float  # perf_counter at arrival
    created: int = field(default_factory=now_s)
    tokens: list[int] = field(default_factory=list)  # the prompt's token ids
    max_tokens: int = 16
    arrival: float = 0.0  # time.time() at arrival (the replicas' TTFT clock)
    budget: Budget = field(default_factory=lambda: Budget(DEFAULT_MIGRATION_LIMIT))

    @property
    def echo(self) -> bool:
        return isinstance(self.req, CompletionRequest) and self.req.echo

    @property
    def wants_logprobs(self) -> bool:
        if isinstance(self.req, CompletionRequest):
            return self.req.logprobs is not None
        return self.req.logprobs


@dataclass
class _Slot:
    """One choice's place in the router's in-flight count of a DG; it moves with the choice."""

    dg: DgRoute
    held: bool = True


@dataclass
class _Choice:
    """One of a request's n independent generations: its decode stream and what it produced."""

    index: int
    rid: str
    params: SamplingParams
    slot: _Slot
    gen: Any = None  # the current decode stream (a new one after each migration)
    first: DecodeChunk | None = None  # first chunk of the first stream (carries the handoff facts)
    last_t: float = 0.0  # perf_counter of its latest chunk
    progress: Progress = field(default_factory=Progress)  # what the streams delivered so far
    kv_ref: Any = None  # prefill output not yet decoded from: reusable if decode fails first
    failed: set[str] = field(default_factory=set)  # DG apps whose replica failed this choice
    moves: int = 0
    moved_wall_s: float = 0.0  # time.time() of the latest move
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # text_offset of each logprob entry
    chunk_offsets: list[int] = field(default_factory=list)  # those of the latest chunk
    chars: int = 0
    decoder: IncrementalDecoder = field(default_factory=IncrementalDecoder)
    num_generated: int = 0
    finish_reason: str | None = None
    finished: bool = False
    seen: int = 0  # chunks absorbed

    @property
    def engine_rid(self) -> str:
        """The id replicas know this attempt by: a moved choice must not collide with its
        old sequence (a stalled replica may still hold it)."""
        return self.rid if not self.moves else f"{self.rid}~m{self.moves}"

    def arrival_wall_s(self, ctx: _Request) -> float:
        """What replicas time TTFT from: the request's arrival, or for a moved choice the move
        (a resumed stream's wait is not the time its old stream ran)."""
        return self.moved_wall_s if self.moves else ctx.arrival

    def cancel(self) -> None:
        """Stop the current decode stream (frees its slot and KV on the replica)."""
        if self.gen is not None:
            with contextlib.suppress(Exception):
                self.gen.cancel()


class ChoiceStreams:
    """Mixin of the ingress `Router`: starting, merging and absorbing a request's choices, and
    moving a choice to another replica or DG when the one serving it fails."""

    prefill_timeout_s: float
    token_timeout_s: float
    _requests: RequestMetrics
    _arrivals: ArrivalMeter
    _handle: Callable[[str, str], Any]
    _services: dict[str, ServiceRoute]
    _inflight_by_app: dict[str, int]
    _migrations: dict[str, dict[str, int]]  # service -> reason -> count (for `status`)
    _move: Callable[[_Slot, DgRoute], None]
    _gate: PrefillGate

    async def _start_all(self, slots: list[_Slot], ctx: _Request) -> list[_Choice]:
        """Start the n choices concurrently (prefill, then decode in the same DG)."""
        n = ctx.req.n

        async def one(i: int) -> _Choice:
            rid = ctx.rid if n == 1 else f"{ctx.rid}-{i}"
            params = sampling_params(ctx.req, ctx.max_tokens, i)
            c = _Choice(i, rid, params, slots[i])
            try:
                c.first = await self._open(c, ctx)
            except BaseException:
                c.cancel()
                raise
            c.last_t = time.perf_counter()
            self._requests.first_token(ctx.model, c.last_t - ctx.started)
            return c

        results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
        choices = [r for r in results if isinstance(r, _Choice)]
        errors = [r for r in results if not isinstance(r, _Choice)]
        if errors:
            for c in choices:
                c.cancel()
            err = errors[0]
            if isinstance(err, (ApiError, asyncio.CancelledError)):
                raise err
            logger.error("request %s failed to start", ctx.rid, exc_info=err)
            raise internal_error() from None
        return choices

    async def _open(self, c: _Choice, ctx: _Request) -> DecodeChunk:
        """Start the choice's stream where its progress stands (prefill unless a KV from an
        earlier attempt can be reused, then decode) and return its first chunk; a failed
        replica moves the choice, within the request's migration budget."""
        while True:
            stage = Stage.PREFILL
            try:
                if c.kv_ref is None:
                    c.kv_ref = await self._prefill(c, ctx)
                stage = Stage.DECODE
                return await self._decode(c, ctx)
            except Exception as e:
                reason = failure_reason(e, stage)
                if reason is None:
                    raise
                if reason is not MigrationReason.DECODE_FAILED:
                    c.kv_ref = None  # lost, or never made: prefill again
                if reason is MigrationReason.PREFILL_FAILED:
                    stage = Stage.PREFILL  # seen by decode when the prefill died producing it
                self._migrate(c, ctx, stage, reason, e)

    async def _prefill(self, c: _Choice, ctx: _Request) -> Any:
        """Prefill the prompt plus what the choice already delivered; returns the KV's ref."""
        dg = c.slot.dg
        prefill = self._handle(dg.app_name, PREFILL_DEPLOYMENT)
        req = PrefillRequest(
            c.engine_rid,
            c.progress.prefill_tokens(ctx.tokens),
            c.params,
            c.arrival_wall_s(ctx),
            resume_at=len(c.progress.tokens),
        )
        # Until a replica takes the call it is held: at the ingress's gate (admission.py, in
        # its order), then by Serve's handle while every replica is at max_ongoing_requests.
        # Reported as held prefill work; held at most prefill_timeout_s in all.
        held = len(req.prompt_tokens)
        self._arrivals.hold(ctx.model, held)
        deadline = time.monotonic() + self.prefill_timeout_s
        svc = self._services.get(dg.service)
        fresh = svc.dgs.get(dg.dg_id, dg) if svc is not None else dg
        try:
            await asyncio.wait_for(
                self._gate.acquire(
                    dg.app_name,
                    fresh.prefill_serving,
                    req.arrival_wall_s,
                    None if svc is None else svc.ttft_slo_s,
                ),
                self.prefill_timeout_s,
            )
        except BaseException as e:
            self._arrivals.release(ctx.model, held)
            if isinstance(e, _TIMEOUTS):
                raise _prefill_timed_out() from None
            raise
        try:
            return await self._call_prefill(prefill, req, ctx.model, held, deadline)
        finally:
            self._gate.release(dg.app_name)

    async def _call_prefill(
        self, prefill: Any, req: PrefillRequest, model: str, held: int, deadline: float
    ) -> Any:
        """The admitted call: held by Serve until `deadline` at most, then its prefill."""
        resp = prefill.prefill.remote(req)
        try:
            try:
                left = max(deadline - time.monotonic(), 0.01)
                ref = await asyncio.wait_for(resp._to_object_ref(), left)
            finally:
                self._arrivals.release(model, held)
            await asyncio.wait_for(ref._ready(), self.prefill_timeout_s)
        except _TIMEOUTS:
            resp.cancel()
            raise _prefill_timed_out() from None
        except BaseException:  # failed, or the client went away: do not leave it running
            with contextlib.suppress(Exception):
                resp.cancel()
            raise
        return ref

    async def _decode(self, c: _Choice, ctx: _Request) -> DecodeChunk:
        """Start decode from `c.kv_ref` (resuming at the choice's progress); its first chunk."""
        decode = self._handle(c.slot.dg.app_name, DECODE_DEPLOYMENT).options(stream=True)
        req = DecodeRequest(
            c.engine_rid, [c.kv_ref], c.params, c.arrival_wall_s(ctx), c.progress.resume_point()
        )
        c.gen = decode.generate.remote(req)
        try:
            first = await asyncio.wait_for(c.gen.__anext__(), self.token_timeout_s)
        except _TIMEOUTS:
            c.cancel()
            raise ApiError(
                503, "decode timed out (overloaded); retry later", "server_overloaded", "timeout"
            ) from None
        except StopAsyncIteration:  # ended without a token: as if the replica had failed
            raise StreamEnded() from None
        except BaseException:  # failed, or the client went away: free the slot and its KV
            c.cancel()
            raise
        c.kv_ref = None  # decoding from it now; a later failure prefills prompt + output
        c.progress.absorb(first)
        return first

    def _migrate(
        self,
        c: _Choice,
        ctx: _Request,
        stage: Stage,
        reason: MigrationReason,
        error: BaseException,
    ) -> None:
        """Move the choice to another DG (or the same one's other replicas) after a failure;
        raises the request's one clean error when the budget or the service's DGs run out."""
        c.cancel()
        app = c.slot.dg.app_name
        service = self._services.get(ctx.model)
        dgs = service.dgs if service is not None else {}
        target = migration_target(dgs, app, stage, c.failed, self._inflight_by_app)
        c.failed.add(app)
        logger.warning(
            "request %s: %s on %s after %d tokens (%s: %s)",
            c.engine_rid,
            reason.value,
            app,
            len(c.progress.tokens),
            type(error).__name__,
            str(error).splitlines()[0] if str(error) else "",
        )
        if target is None or not ctx.budget.left:
            raise ApiError(
                503,
                f"the request failed: the servers answering it failed {ctx.budget.used + 1} "
                f"time(s) (this service moves a request at most {ctx.budget.limit} time(s)); "
                "retry later",
                "service_unavailable",
                "replica_failure",
            )
        ctx.budget = ctx.budget.spend()
        c.moves += 1
        c.moved_wall_s = time.time()
        self._requests.migration(ctx.model, reason.value)
        counts = self._migrations.setdefault(ctx.model, {})
        counts[reason.value] = counts.get(reason.value, 0) + 1
        self._move(c.slot, target)

    async def _next(self, c: _Choice, ctx: _Request) -> DecodeChunk | None:
        """The choice's next chunk; a failed or stalled stream resumes elsewhere, so the
        chunk may come from a new stream (it continues exactly where the old one stopped)."""
        try:
            chunk = await asyncio.wait_for(c.gen.__anext__(), self.token_timeout_s)
        except StopAsyncIteration:  # ended before its last chunk: the replica went away
            reason, error = MigrationReason.DECODE_FAILED, StreamEnded()
        except _TIMEOUTS as e:
            reason, error = MigrationReason.DECODE_STALLED, e
        except Exception as e:
            found = failure_reason(e, Stage.DECODE)
            if found is None:
                if isinstance(e, ApiError):
                    raise
                logger.error("request %s failed in decode", c.engine_rid, exc_info=e)
                raise internal_error() from None
            reason, error = found, e
        else:
            c.progress.absorb(chunk)
            return chunk
        self._migrate(c, ctx, Stage.DECODE, reason, error)
        try:
            return await self._open(c, ctx)
        except ApiError:
            raise
        except Exception as e:
            logger.error("request %s failed to resume", c.engine_rid, exc_info=e)
            raise internal_error() from None

    async def _merged(
        self, choices: list[_Choice], ctx: _Request
    ) -> AsyncIterator[tuple[_Choice, DecodeChunk]]:
        """Every choice's chunks as they come (one choice: in order; several: interleaved)."""
        if len(choices) == 1:
            c = choices[0]
            chunk: DecodeChunk | None = c.first
            while chunk is not None:
                yield c, chunk
                if chunk.finished:
                    return
                chunk = await self._next(c, ctx)
            return
        queue: asyncio.Queue[tuple[_Choice, DecodeChunk | None, Exception | None]]
        queue = asyncio.Queue()

        async def pump(c: _Choice) -> None:
            try:
                item: DecodeChunk | None = c.first
                while item is not None:
                    queue.put_nowait((c, item, None))
                    if item.finished:
                        break
                    item = await self._next(c, ctx)
                queue.put_nowait((c, None, None))
            except Exception as e:
                queue.put_nowait((c, None, e))

        tasks = [asyncio.get_running_loop().create_task(pump(c)) for c in choices]
        try:
            live = len(choices)
            while live:
                c, got, err = await queue.get()
                if err is not None:
                    raise err
                if got is None:
                    live -= 1
                    continue
                yield c, got
        finally:
            for t in tasks:
                t.cancel()

    def _absorb(self, c: _Choice, chunk: DecodeChunk, ctx: _Request) -> None:
        """Add one chunk to its choice; record inter-token time and, at the end, the request."""
        now = time.perf_counter()
        if c.seen:
            self._requests.inter_token(ctx.model, now - c.last_t)
        c.seen += 1
        c.last_t = now
        c.text.append(chunk.text)
        c.chunk_offsets = []
        base = len(ctx.prompt) if ctx.echo else 0
        for entry in chunk.logprobs:
            c.chunk_offsets.append(base + c.chars)
            c.chars += len(c.decoder.push(entry.token))
        c.logprobs.extend(chunk.logprobs)
        c.offsets.extend(c.chunk_offsets)
        c.num_generated = chunk.num_generated
        if chunk.finished:
            c.finished, c.finish_reason = True, chunk.finish_reason
            self._requests.finished(
                ctx.model, chunk.finish_reason or "stop", chunk.num_generated, now - ctx.started
            )
