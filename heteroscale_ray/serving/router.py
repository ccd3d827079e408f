"""Ingress router: OpenAI-compatible HTTP in front of the services' Deployment Groups.

For each request it picks one DG of the requested service (least in-flight load relative to
capacity, skipping draining DGs and DGs whose ratio gate is closed while others can serve),
runs prefill there, then decode in the SAME DG. The prefill's KV never enters the router: it
passes the prefill's ObjectRef to the decode call. Errors use the OpenAI envelope; nothing
waits forever (bounded in-flight count, timeouts on prefill and on every token).

Routes: POST /v1/completions (stream or not), GET /v1/models, GET /healthz, GET /metrics.
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
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve

from heteroscale_ray.serving.api_types import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    Usage,
    error_body,
    new_completion_id,
)
from heteroscale_ray.serving.decode import DecodeChunk, DecodeRequest
from heteroscale_ray.serving.metrics import ArrivalMeter
from heteroscale_ray.serving.model import SamplingParams
from heteroscale_ray.serving.prefill import PrefillRequest
from heteroscale_ray.serving.routing_table import (
    DgRoute,
    ServiceRoute,
    choose_dg,
    get_routing_table,
)
from heteroscale_ray.serving.tokenizer import ByteTokenizer

logger = logging.getLogger(__name__)
# asyncio.wait_for raises asyncio.TimeoutError, distinct from the builtin before Python 3.11.
_TIMEOUTS = (asyncio.TimeoutError, TimeoutError)

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


def parse_completion(raw: bytes) -> CompletionRequest:
    """Body bytes -> request, or a 400 that says what is wrong."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad_request(f"request body is not valid JSON: {e}", "invalid_json") from None
    if not isinstance(data, dict):
        raise _bad_request("request body must be a JSON object", "invalid_json")
    try:
        return CompletionRequest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        msgs = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        code = "missing_field" if first["type"] == "missing" else "invalid_value"
        raise _bad_request(msgs, code, param) from None


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

    # ---- routes ----
    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "services": sorted(self._services), "inflight": self._inflight}

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        cards = [ModelCard(id=name) for name in sorted(self._services)]
        return ModelList(data=cards).model_dump()

    @api.get("/metrics")
    async def metrics(self) -> Response:
        from heteroscale_ray.serving.metrics import render_arrivals, render_prometheus

        stats = await self._table.replica_stats.remote()
        text = render_prometheus(stats) + render_arrivals(self._arrivals.loads())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        arrival = time.time()
        try:
            req = parse_completion(await request.body())
            service = self._services.get(req.model)
            if service is None:
                raise ApiError(
                    404,
                    f"The model '{req.model}' does not exist; GET /v1/models lists the served ones.",
                    "invalid_request_error",
                    "model_not_found",
                    "model",
                )
            tokens = self.tokenizer.encode(req.prompt_text, add_bos=True)
            # Offered load (one request, its prompt tokens): before any admission check.
            self._arrivals.add(req.model, len(tokens))
            check_context(service, len(tokens), req.max_tokens)
            if self._inflight >= self.max_inflight:
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
            return e.response()
        params = SamplingParams(
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            seed=req.seed,
            stop=req.stop_list,
            ignore_eos=req.ignore_eos,
        )
        rid = new_completion_id()
        self._enter(dg)
        handed_off = False
        try:
            gen, first = await self._start(dg, rid, tokens, params, arrival)
            if req.stream:
                handed_off = True
                return StreamingResponse(
                    self._sse(dg, gen, first, rid, req.model), media_type="text/event-stream"
                )
            return await self._collect(gen, first, rid, req.model)
        except ApiError as e:
            return e.response()
        except Exception as e:
            logger.exception("completion %s failed", rid)
            return ApiError(
                500, f"internal error: {type(e).__name__}: {e}", "server_error"
            ).response()
        finally:
            if not handed_off:
                self._leave(dg)

    # ---- request plumbing ----
    def _enter(self, dg: DgRoute) -> None:
        self._inflight += 1
        self._inflight_by_app[dg.app_name] += 1

    def _leave(self, dg: DgRoute) -> None:
        self._inflight -= 1
        self._inflight_by_app[dg.app_name] -= 1

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

    async def _collect(self, gen: Any, first: DecodeChunk, rid: str, model: str) -> JSONResponse:
        meta = first.meta or {}
        parts, chunk, last = [first.text], first, first
        try:
            while not chunk.finished:
                nxt = await self._next(gen)
                if nxt is None:
                    break
                chunk = last = nxt
                parts.append(chunk.text)
        except BaseException:
            with contextlib.suppress(Exception):
                gen.cancel()
            raise
        prompt = int(meta.get("prompt_tokens", 0))
        body = CompletionResponse(
            id=rid,
            model=model,
            choices=[CompletionChoice(text="".join(parts), finish_reason=last.finish_reason)],
            usage=Usage(
                prompt_tokens=prompt,
                completion_tokens=last.num_generated,
                total_tokens=prompt + last.num_generated,
            ),
        )
        return JSONResponse(body.model_dump())

    async def _sse(
        self, dg: DgRoute, gen: Any, first: DecodeChunk, rid: str, model: str
    ) -> AsyncIterator[str]:
        """Server-sent events as OpenAI sends them; an error mid-stream becomes an error event."""
        done = False
        try:
            chunk: DecodeChunk | None = first
            while chunk is not None:
                if chunk.text or chunk.finished:
                    body = CompletionResponse(
                        id=rid,
                        model=model,
                        choices=[
                            CompletionChoice(text=chunk.text, finish_reason=chunk.finish_reason)
                        ],
                    )
                    yield f"data: {body.model_dump_json()}\n\n"
                if chunk.finished:
                    done = True
                    break
                chunk = await self._next(gen)
            done = True
            yield "data: [DONE]\n\n"
        except ApiError as e:
            err = error_body(str(e), type_=e.type_, code=e.code)
            yield f"data: {json.dumps(err)}\n\n"
        except Exception as e:
            logger.exception("stream %s failed", rid)
            err = error_body(f"{type(e).__name__}: {e}", type_="server_error")
            yield f"data: {json.dumps(err)}\n\n"
        finally:
            if not done:  # client went away or error: free the decode slot
                with contextlib.suppress(Exception):
                    gen.cancel()
            self._leave(dg)
