"""Ingress router: OpenAI-compatible HTTP in front of the services' Deployment Groups.

For each request it picks one DG of the requested service (least in-flight load relative to
capacity, skipping draining DGs and DGs whose ratio gate is closed while others can serve),
runs prefill there, then decode in the SAME DG. The prefill's KV never enters the router: it
passes the prefill's ObjectRef to the decode call. Errors use the OpenAI envelope; nothing
waits forever (bounded in-flight count, timeouts on prefill and on every token).

Routes: POST /v1/completions and /v1/chat/completions (stream or not, n choices), GET
/v1/models, /health (vLLM's), /healthz, /version, /metrics. Every OpenAI parameter is honoured
or rejected with a 400 naming it (api_types.py lists which).
"""

# No `from __future__ import annotations` here: FastAPI resolves the route signatures of the
# class-based view at runtime, and string annotations turned `Request` into a 422 body field.
import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve

from heteroscale_ray import __version__
from heteroscale_ray.serving.api_types import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    Usage,
    _FieldError,
    chat_logprobs,
    completion_logprobs,
    error_body,
    new_chat_id,
    new_completion_id,
    now_s,
)
from heteroscale_ray.serving.decode import DecodeChunk, DecodeRequest
from heteroscale_ray.serving.metrics import (
    ArrivalMeter,
    RequestMetrics,
    render_arrivals,
    render_prometheus,
)
from heteroscale_ray.serving.model import SamplingParams, TokenLogprob
from heteroscale_ray.serving.prefill import PrefillRequest
from heteroscale_ray.serving.routing_table import (
    DgRoute,
    ServiceRoute,
    choose_dg,
    get_routing_table,
)
from heteroscale_ray.serving.tokenizer import (
    ByteTokenizer,
    IncrementalDecoder,
    apply_chat_template,
)

logger = logging.getLogger(__name__)
# asyncio.wait_for raises asyncio.TimeoutError, distinct from the builtin before Python 3.11.
_TIMEOUTS = (asyncio.TimeoutError, TimeoutError)

_R = TypeVar("_R", CompletionRequest, ChatCompletionRequest)

PREFILL_DEPLOYMENT = "PrefillServer"
DECODE_DEPLOYMENT = "DecodeServer"

api = FastAPI(title="heteroscale ingress")


class ApiError(Exception):
    """An error that becomes an OpenAI-shaped JSON response."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.type_, self.code, self.param = status, type_, code, param

    def response(self) -> JSONResponse:
        body = error_body(str(self), type_=self.type_, code=self.code, param=self.param)
        return JSONResponse(body, status_code=self.status)


def _bad_request(message: str, code: str | None = None, param: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param)


def _param_of(err: dict[str, Any]) -> str | None:
    """The OpenAI `param` of a pydantic error: its field path, or a cross-field check's name."""
    ctx_err = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_err, _FieldError):
        return ctx_err.param
    loc = [str(p) for p in err["loc"]]
    # Union members add their type name to the path (e.g. "stop.str"); keep the field's path.
    loc = [p for p in loc if p not in {"str", "list[str]", "list[TextPart]", "int", "float"}]
    return ".".join(loc) or None


def parse_request(raw: bytes, model: type[_R]) -> _R:
    """Body bytes -> request of type `model`, or a 400 that names the offending parameter."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad_request(f"request body is not valid JSON: {e}", "invalid_json") from None
    if not isinstance(data, dict):
        raise _bad_request("request body must be a JSON object", "invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        # An unsupported parameter first: it is what the caller must change.
        extra = [err for err in errors if err["type"] == "extra_forbidden"]
        if extra:
            name = _param_of(extra[0])
            raise _bad_request(
                f"unsupported parameter '{name}': this server does not implement it "
                "(every OpenAI parameter is either honoured or rejected, never ignored)",
                "unsupported_parameter",
                name,
            ) from None
        first = errors[0]
        msgs = "; ".join(f"{_param_of(err) or 'body'}: {err['msg']}" for err in errors)
        code = "missing_field" if first["type"] == "missing" else "invalid_value"
        raise _bad_request(msgs, code, _param_of(first)) from None


def parse_completion(raw: bytes) -> CompletionRequest:
    """Body bytes -> completions request, or a 400 that says what is wrong."""
    return parse_request(raw, CompletionRequest)


def parse_chat(raw: bytes) -> ChatCompletionRequest:
    """Body bytes -> chat completions request, or a 400 that says what is wrong."""
    return parse_request(raw, ChatCompletionRequest)


def chat_prompt(req: ChatCompletionRequest) -> str:
    """The prompt text of a chat request (the documented template; see tokenizer.py)."""
    return apply_chat_template((m.role, m.text) for m in req.messages)


def default_max_tokens(service: ServiceRoute, prompt_tokens: int) -> int:
    """Chat without max_tokens: the rest of the context (and of one decode replica's KV)."""
    room = min(service.engine.max_context, service.engine.kv_capacity_tokens) - prompt_tokens
    return max(1, room)


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


def check_context(service: ServiceRoute, prompt_tokens: int, max_tokens: int) -> None:
    """400 unless prompt + max_tokens fits the model context and one decode replica's KV."""
    limit = service.engine.max_context
    if prompt_tokens >= limit:
        raise _bad_request(
            f"This model's maximum context length is {limit} tokens, however you requested "
            f"{prompt_tokens} prompt tokens. Please reduce the length of the prompt.",
            "context_length_exceeded",
            "prompt",
        )
    if prompt_tokens + max_tokens > limit:
        raise _bad_request(
            f"This model's maximum context length is {limit} tokens, however you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} "
            "for the completion). Please reduce the prompt or max_tokens.",
            "context_length_exceeded",
            "max_tokens",
        )
    if prompt_tokens + max_tokens > service.engine.kv_capacity_tokens:
        raise _bad_request(
            f"request needs {prompt_tokens + max_tokens} KV tokens, more than one decode "
            f"replica holds ({service.engine.kv_capacity_tokens})",
            "context_length_exceeded",
            "max_tokens",
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


@serve.ingress(api)
class Router:
    """Serve ingress deployment body; `deployments.deploy_ingress` sets its options."""

    async def __init__(
        self,
        max_inflight: int = 256,
        prefill_timeout_s: float = 60.0,
        token_timeout_s: float = 30.0,
        refresh_s: float = 0.5,
    ) -> None:
        self.max_inflight = max_inflight
        self.prefill_timeout_s = prefill_timeout_s
        self.token_timeout_s = token_timeout_s
        self.refresh_s = refresh_s
        self.tokenizer = ByteTokenizer()
        self._table = get_routing_table()
        self._services: dict[str, ServiceRoute] = {}
        self._version = -1
        self._inflight = 0
        self._inflight_by_app: dict[str, int] = defaultdict(int)
        self._handles: dict[tuple[str, str], Any] = {}
        self._arrivals = ArrivalMeter()
        self._requests = RequestMetrics(mirror_to_ray=True)
        self._ingress_id = f"ingress-{uuid.uuid4().hex[:12]}"
        await self._refresh()
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    # ---- routing table cache ----
    async def _refresh(self) -> None:
        version, services = await self._table.snapshot.remote()
        if version != self._version:
            self._version, self._services = version, services
            live = {d.app_name for s in services.values() for d in s.dgs.values()}
            for key in [k for k in self._handles if k[0] not in live]:
                del self._handles[key]

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self._refresh()
                await self._table.report_arrivals.remote(self._ingress_id, self._arrivals.loads())
            except Exception as e:  # table restarting: keep the last good view
                logger.warning("routing table refresh failed: %s", e)
                with contextlib.suppress(Exception):
                    self._table = get_routing_table()

    def _handle(self, app_name: str, deployment: str) -> Any:
        key = (app_name, deployment)
        if key not in self._handles:
            self._handles[key] = serve.get_deployment_handle(deployment, app_name)
        return self._handles[key]

    # ---- operational routes (vLLM's names) ----
    @api.get("/health")
    async def health(self) -> Response:
        """200 with an empty body while the ingress is up (vLLM's health check)."""
        return Response(status_code=200)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "services": sorted(self._services), "inflight": self._inflight}

    @api.get("/version")
    async def version(self) -> dict[str, str]:
        return {"version": __version__}

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        cards = [ModelCard(id=name) for name in sorted(self._services)]
        return ModelList(data=cards).model_dump()

    @api.get("/metrics")
    async def metrics(self) -> Response:
        stats = await self._table.replica_stats.remote()
        text = (
            render_prometheus(stats)
            + render_arrivals(self._arrivals.loads())
            + self._requests.render()
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    # ---- OpenAI routes ----
    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._serve(request, chat=False)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, chat=True)

    def _error(self, e: ApiError, service: str) -> JSONResponse:
        self._requests.error(service, e.status)
        return e.response()

    async def _serve(self, request: Request, chat: bool) -> Response:
        arrival, started = time.time(), time.perf_counter()
        service_name = ""
        try:
            raw = await request.body()
            req: CompletionRequest | ChatCompletionRequest
            req = parse_chat(raw) if chat else parse_completion(raw)
            service = self._services.get(req.model)
            if service is None:
                raise ApiError(
                    404,
                    f"The model '{req.model}' does not exist; GET /v1/models lists the served ones.",
                    "invalid_request_error",
                    "model_not_found",
                    "model",
                )
            service_name = req.model
            if isinstance(req, ChatCompletionRequest):
                prompt = chat_prompt(req)
                tokens = self.tokenizer.encode(prompt, add_bos=True)
                max_tokens = req.requested_max_tokens or default_max_tokens(service, len(tokens))
            else:
                prompt = req.prompt_text
                tokens = self.tokenizer.encode(prompt, add_bos=True)
                max_tokens = req.max_tokens
            # Offered load (each choice is one prefill of the prompt): before any admission.
            for _ in range(req.n):
                self._arrivals.add(req.model, len(tokens))
            check_context(service, len(tokens), max_tokens)
            if self._inflight + req.n > self.max_inflight:
                raise ApiError(
                    429,
                    f"server overloaded: {self._inflight} requests in flight; retry later",
                    "server_overloaded",
                    "overloaded",
                )
            dg = choose_dg(service.dgs, self._inflight_by_app)
            if dg is None:
                raise ApiError(
                    503,
                    f"service '{req.model}' has no deployment group ready; retry later",
                    "service_unavailable",
                    "no_capacity",
                )
        except ApiError as e:
            return self._error(e, service_name)
        rid = new_chat_id() if chat else new_completion_id()
        ctx = _Request(rid, req.model, chat, req, prompt, len(tokens), started)
        for _ in range(req.n):
            self._enter(dg)
        handed_off = False
        try:
            choices = await self._start_all(dg, ctx, tokens, max_tokens, arrival)
            prompt_tokens = int((choices[0].first.meta or {}).get("prompt_tokens", len(tokens)))
            ctx.prompt_tokens = prompt_tokens
            self._requests.prompt(req.model, prompt_tokens)
            if req.stream:
                handed_off = True
                return StreamingResponse(
                    self._sse(dg, choices, ctx), media_type="text/event-stream"
                )
            return await self._collect(choices, ctx)
        except ApiError as e:
            return self._error(e, service_name)
        except Exception as e:
            logger.exception("completion %s failed", rid)
            return self._error(
                ApiError(500, f"internal error: {type(e).__name__}: {e}", "server_error"),
                service_name,
            )
        finally:
            if not handed_off:
                for _ in range(req.n):
                    self._leave(dg)

    # ---- request plumbing ----
    def _enter(self, dg: DgRoute) -> None:
        self._inflight += 1
        self._inflight_by_app[dg.app_name] += 1

    def _leave(self, dg: DgRoute) -> None:
        self._inflight -= 1
        self._inflight_by_app[dg.app_name] -= 1

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

    def _usage(self, choices: list[_Choice], ctx: _Request) -> dict[str, int]:
        completion = sum(c.num_generated for c in choices)
        return Usage(
            prompt_tokens=ctx.prompt_tokens,
            completion_tokens=completion,
            total_tokens=ctx.prompt_tokens + completion,
        ).model_dump()

    async def _collect(self, choices: list[_Choice], ctx: _Request) -> JSONResponse:
        try:
            async for c, chunk in self._merged(choices):
                self._absorb(c, chunk, ctx)
        finally:
            for c in choices:
                if not c.finished:
                    with contextlib.suppress(Exception):
                        c.gen.cancel()
        out = []
        for c in sorted(choices, key=lambda c: c.index):
            text = "".join(c.text)
            if ctx.chat:
                out.append(
                    {
                        "index": c.index,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": chat_logprobs(c.logprobs) if ctx.wants_logprobs else None,
                        "finish_reason": c.finish_reason,
                    }
                )
            else:
                lp = completion_logprobs(c.logprobs, c.offsets) if ctx.wants_logprobs else None
                out.append(
                    {
                        "index": c.index,
                        "text": (ctx.prompt if ctx.echo else "") + text,
                        "logprobs": lp,
                        "finish_reason": c.finish_reason,
                    }
                )
        body = {
            "id": ctx.rid,
            "object": "chat.completion" if ctx.chat else "text_completion",
            "created": ctx.created,
            "model": ctx.model,
            "choices": out,
            "usage": self._usage(choices, ctx),
        }
        return JSONResponse(body)

    def _event(self, ctx: _Request, choices: list[dict[str, Any]], usage: Any = None) -> str:
        body: dict[str, Any] = {
            "id": ctx.rid,
            "object": "chat.completion.chunk" if ctx.chat else "text_completion",
            "created": ctx.created,
            "model": ctx.model,
            "choices": choices,
        }
        if ctx.req.include_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    def _chunk_event(self, c: _Choice, chunk: DecodeChunk, ctx: _Request) -> str | None:
        """The SSE event for one absorbed chunk, or None when it carries nothing to send."""
        text = chunk.text
        if ctx.echo and c.seen == 1:
            text = ctx.prompt + text
        lps = list(chunk.logprobs) if ctx.wants_logprobs else []
        if not (text or lps or chunk.finished):
            return None
        if ctx.chat:
            choice: dict[str, Any] = {
                "index": c.index,
                "delta": {"content": text} if text else {},
                "logprobs": chat_logprobs(lps) if lps else None,
                "finish_reason": chunk.finish_reason if chunk.finished else None,
            }
        else:
            choice = {
                "index": c.index,
                "text": text,
                "logprobs": completion_logprobs(lps, c.chunk_offsets) if lps else None,
                "finish_reason": chunk.finish_reason if chunk.finished else None,
            }
        return self._event(ctx, [choice])

    async def _sse(self, dg: DgRoute, choices: list[_Choice], ctx: _Request) -> AsyncIterator[str]:
        """Server-sent events as OpenAI sends them; an error mid-stream becomes an error event."""
        try:
            if ctx.chat:  # the assistant role first, once per choice
                for c in choices:
                    delta = {"role": "assistant", "content": ""}
                    yield self._event(
                        ctx,
                        [
                            {
                                "index": c.index,
                                "delta": delta,
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ],
                    )
            async for c, chunk in self._merged(choices):
                self._absorb(c, chunk, ctx)
                if (event := self._chunk_event(c, chunk, ctx)) is not None:
                    yield event
            if ctx.req.include_usage:
                yield self._event(ctx, [], self._usage(choices, ctx))
            yield "data: [DONE]\n\n"
        except ApiError as e:
            self._requests.error(ctx.model, e.status)
            err = error_body(str(e), type_=e.type_, code=e.code)
            yield f"data: {json.dumps(err)}\n\n"
        except Exception as e:
            logger.exception("stream %s failed", ctx.rid)
            self._requests.error(ctx.model, 500)
            err = error_body(f"{type(e).__name__}: {e}", type_="server_error")
            yield f"data: {json.dumps(err)}\n\n"
        finally:
            for c in choices:
                if not c.finished:  # client went away or error: free the decode slot
                    with contextlib.suppress(Exception):
                        c.gen.cancel()
                self._leave(dg)
