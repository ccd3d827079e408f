"""Answering one request's n choices: prefill then decode in one DG, and their token streams.

Why apart from router.py: the ingress deployment (HTTP routes, routing-table cache, admission)
and the orchestration of a request's choices are separate concerns. `ChoiceStreams` is a mixin
of the `Router`: it starts each choice (prefill, then decode with the prefill's KV ref, both
bounded by timeouts), merges the choices' decode streams, and absorbs each chunk into its
`_Choice`, recording the ingress's per-request metrics as it goes.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from heteroscale_ray.serving.api_requests import ApiError
from heteroscale_ray.serving.api_types import ChatCompletionRequest, CompletionRequest, now_s
from heteroscale_ray.serving.decode import DecodeChunk, DecodeRequest
from heteroscale_ray.serving.model import SamplingParams, TokenLogprob
from heteroscale_ray.serving.prefill import PrefillRequest
from heteroscale_ray.serving.request_metrics import RequestMetrics
from heteroscale_ray.serving.routing_table import DgRoute
from heteroscale_ray.serving.tokenizer import IncrementalDecoder

# asyncio.wait_for raises asyncio.TimeoutError, distinct from the builtin before Python 3.11.
_TIMEOUTS = (asyncio.TimeoutError, TimeoutError)

PREFILL_DEPLOYMENT = "PrefillServer"
DECODE_DEPLOYMENT = "DecodeServer"


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

    @property
    def echo(self) -> bool:
        return isinstance(self.req, CompletionRequest) and self.req.echo

    @property
    def wants_logprobs(self) -> bool:
        if isinstance(self.req, CompletionRequest):
            return self.req.logprobs is not None
        return self.req.logprobs


@dataclass
class _Choice:
    """One of a request's n independent generations: its decode stream and what it produced."""

    index: int
    gen: Any
    first: DecodeChunk
    last_t: float  # perf_counter of its latest chunk
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


class ChoiceStreams:
    """Mixin of the ingress `Router`: starting, merging and absorbing a request's choices."""

    prefill_timeout_s: float
    token_timeout_s: float
    _requests: RequestMetrics
    _handle: Callable[[str, str], Any]

    async def _start_all(
        self, dg: DgRoute, ctx: _Request, tokens: list[int], max_tokens: int, arrival: float
    ) -> list[_Choice]:
        """Start the n choices concurrently (prefill, then decode in the same DG)."""
        n = ctx.req.n

        async def one(i: int) -> _Choice:
            rid = ctx.rid if n == 1 else f"{ctx.rid}-{i}"
            params = sampling_params(ctx.req, max_tokens, i)
            gen, first = await self._start(dg, rid, tokens, params, arrival)
            now = time.perf_counter()
            self._requests.first_token(ctx.model, now - ctx.started)
            return _Choice(i, gen, first, last_t=now)

        results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
        choices = [r for r in results if isinstance(r, _Choice)]
        errors = [r for r in results if not isinstance(r, _Choice)]
        if errors:
            for c in choices:
                with contextlib.suppress(Exception):
                    c.gen.cancel()
            raise errors[0]
        return choices

    async def _start(
        self, dg: DgRoute, rid: str, tokens: list[int], params: SamplingParams, arrival: float
    ) -> tuple[Any, DecodeChunk]:
        """Prefill, then start decode with the KV ref; returns the stream and its first chunk."""
        prefill = self._handle(dg.app_name, PREFILL_DEPLOYMENT)
        resp = prefill.prefill.remote(PrefillRequest(rid, tokens, params, arrival))
        try:
            ref = await asyncio.wait_for(resp._to_object_ref(), self.prefill_timeout_s)
            await asyncio.wait_for(ref._ready(), self.prefill_timeout_s)
        except _TIMEOUTS:
            resp.cancel()
            raise ApiError(
                503, "prefill timed out (overloaded); retry later", "server_overloaded", "timeout"
            ) from None
        except BaseException:  # client went away: do not leave the prefill running
            with contextlib.suppress(Exception):
                resp.cancel()
            raise
        decode = self._handle(dg.app_name, DECODE_DEPLOYMENT).options(stream=True)
        gen = decode.generate.remote(DecodeRequest(rid, [ref], params, arrival))
        try:
            first = await asyncio.wait_for(gen.__anext__(), self.token_timeout_s)
        except _TIMEOUTS:
            gen.cancel()
            raise ApiError(
                503, "decode timed out (overloaded); retry later", "server_overloaded", "timeout"
            ) from None
        except BaseException:  # client went away: free the decode slot and its KV
            with contextlib.suppress(Exception):
                gen.cancel()
            raise
        return gen, first

    async def _next(self, gen: Any) -> DecodeChunk | None:
        try:
            return await asyncio.wait_for(gen.__anext__(), self.token_timeout_s)
        except StopAsyncIteration:
            return None
        except _TIMEOUTS:
            gen.cancel()
            raise ApiError(504, "decode stalled", "server_error", "timeout") from None

    async def _merged(self, choices: list[_Choice]) -> AsyncIterator[tuple[_Choice, DecodeChunk]]:
        """Every choice's chunks as they come (one choice: in order; several: interleaved)."""
        if len(choices) == 1:
            c = choices[0]
            chunk: DecodeChunk | None = c.first
            while chunk is not None:
                yield c, chunk
                if chunk.finished:
                    return
                chunk = await self._next(c.gen)
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
                    item = await self._next(c.gen)
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
