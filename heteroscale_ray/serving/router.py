"""Ingress router: OpenAI-compatible HTTP in front of the services' Deployment Groups.

For each request it picks one DG of the requested service (least in-flight load relative to
capacity, skipping draining DGs and DGs whose ratio gate is closed while others can serve),
runs prefill there, then decode in the SAME DG. The prefill's KV never enters the router: it
passes the prefill's ObjectRef to the decode call. Errors use the OpenAI envelope; nothing
waits forever (bounded in-flight count, timeouts on prefill and on every token).

Routes: POST /v1/completions and /v1/chat/completions (stream or not, n choices), GET
/v1/models, /health (vLLM's), /healthz, /version, /metrics. Every OpenAI parameter is honoured
or rejected with a 400 naming it (api_types.py lists which).

This module is the Serve ingress deployment and its HTTP routes. Request parsing and validation
are in api_requests.py, running a request's choices in choices.py (`ChoiceStreams`, a mixin of
`Router`), and the response body and stream events in api_responses.py; the names tests and
deployments.py import from here are re-exported.
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
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from ray import serve

from heteroscale_ray import __version__
from heteroscale_ray.serving.admission import PrefillGate
from heteroscale_ray.serving.api_requests import (
    ApiError,
    chat_prompt,
    check_context,
    default_max_tokens,
    install_error_handlers,
    internal_error,
    parse_chat,
    parse_completion,
    parse_request,
    read_body,
)
from heteroscale_ray.serving.api_responses import (
    ReleasingStream,
    chunk_event,
    completion_body,
    role_events,
    usage_event,
)
from heteroscale_ray.serving.api_types import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    error_body,
    new_chat_id,
    new_completion_id,
)
from heteroscale_ray.serving.choices import (
    DECODE_DEPLOYMENT,
    PREFILL_DEPLOYMENT,
    ChoiceStreams,
    _Choice,
    _Request,
    _Slot,
    sampling_params,
)
from heteroscale_ray.serving.metrics import ArrivalMeter
from heteroscale_ray.serving.metrics_export import render_arrivals, render_prometheus
from heteroscale_ray.serving.migration import Budget
from heteroscale_ray.serving.request_metrics import RequestMetrics
from heteroscale_ray.serving.routing_table import (
    DgRoute,
    ServiceRoute,
    choose_dg,
    get_routing_table,
)
from heteroscale_ray.serving.tokenizer import ByteTokenizer

__all__ = [  # re-exported: imported from here by deployments.py and the tests
    "DECODE_DEPLOYMENT",
    "PREFILL_DEPLOYMENT",
    "ApiError",
    "ChatCompletionRequest",
    "CompletionRequest",
    "Router",
    "chat_prompt",
    "check_context",
    "default_max_tokens",
    "parse_chat",
    "parse_completion",
    "parse_request",
    "sampling_params",
]

logger = logging.getLogger(__name__)

api = FastAPI(title="heteroscale ingress")
install_error_handlers(api)  # 404/405/422 as OpenAI errors; before serve.ingress copies `api`


# How long a request waits for a fresh view before a 404 / 503 (the table may be restarting: a
# restart on a loaded head node took up to ~7 s) and how often it asks again meanwhile.
REFRESH_ON_MISS_S = 10.0
REFRESH_RETRY_S = 0.25


@serve.ingress(api)
class Router(ChoiceStreams):
    """Serve ingress deployment body; `deployments.deploy_ingress` sets its options."""

    async def __init__(
        self,
        max_inflight: int = 256,
        prefill_timeout_s: float = 60.0,
        token_timeout_s: float = 30.0,
        refresh_s: float = 0.5,
        refresh_on_miss_s: float = REFRESH_ON_MISS_S,
    ) -> None:
        self.max_inflight = max_inflight
        self.prefill_timeout_s = prefill_timeout_s
        self.token_timeout_s = token_timeout_s
        self.refresh_s = refresh_s
        self.refresh_on_miss_s = refresh_on_miss_s
        self.tokenizer = ByteTokenizer()
        self._table = get_routing_table()
        self._services: dict[str, ServiceRoute] = {}
        self._inflight = 0
        self._inflight_by_app: dict[str, int] = defaultdict(int)
        self._handles: dict[tuple[str, str], Any] = {}
        self._arrivals = ArrivalMeter()
        # a request held this long goes first again, before the prefill timeout ends it
        self._gate = PrefillGate(patience_s=prefill_timeout_s / 2)
        self._requests = RequestMetrics(mirror_to_ray=True)
        self._migrations: dict[str, dict[str, int]] = {}  # service -> reason -> count, ever
        self._ingress_id = f"ingress-{uuid.uuid4().hex[:12]}"
        if not await self._refreshed():  # Serve retries a replica whose constructor raised
            raise RuntimeError("the routing table did not answer; the ingress cannot start")
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    # ---- routing table cache ----
    async def _refresh(self) -> None:
        """Adopt the table's routes. Every snapshot, not only a new version: a copy of a few
        routes each period is cheap, and a view is then never older than one period. When the
        table does not answer, look its actor up again (it may have been re-created) and raise."""
        try:
            _, services = await self._table.snapshot.remote()
        except Exception:
            with contextlib.suppress(Exception):
                self._table = get_routing_table()
            raise
        self._services = services
        self._arrivals.keep(services)
        live = {d.app_name for s in services.values() for d in s.dgs.values()}
        for key in [k for k in self._handles if k[0] not in live]:
            del self._handles[key]

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self._refresh()
                await self._table.report_arrivals.remote(
                    self._ingress_id, self._arrivals.loads(), self._migrations
                )
            except Exception as e:  # table restarting: keep the last good view
                logger.warning("routing table refresh failed: %s", e)

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

    async def _refreshed(self) -> bool:
        """Fetch the routing table now; False if it did not answer within `refresh_on_miss_s`.

        While the table restarts Ray fails calls to it (ActorUnavailableError) rather than
        queueing them, so one failed call says nothing about the routes: ask again until the
        restarted table (its routes read back from the checkpoint) answers."""
        deadline = time.monotonic() + self.refresh_on_miss_s
        while True:
            try:
                left = max(deadline - time.monotonic(), 0.01)
                await asyncio.wait_for(self._refresh(), timeout=left)
                return True
            except Exception as e:
                if time.monotonic() + REFRESH_RETRY_S >= deadline:
                    logger.warning(
                        "routing table did not answer in %.1f s: %s", self.refresh_on_miss_s, e
                    )
                    return False
            await asyncio.sleep(REFRESH_RETRY_S)

    async def _confirm_view(self) -> None:
        """Refresh the view before refusing a request from it: it is up to one refresh period
        old (a DG registered a moment ago) and frozen while the table restarts. A request is
        never refused from a view the table did not confirm; if the table stays silent the
        client gets a retryable 503, not a 404 for a model that may well exist."""
        if not await self._refreshed():
            raise ApiError(
                503,
                "the routing table is not answering; retry later",
                "service_unavailable",
                "routing_unavailable",
            )

    async def _serve(self, request: Request, chat: bool) -> Response:
        arrival, started = time.time(), time.perf_counter()
        service_name = ""
        try:
            raw = await read_body(request)
            req: CompletionRequest | ChatCompletionRequest
            req = parse_chat(raw) if chat else parse_completion(raw)
            service = self._services.get(req.model)
            if service is None:
                await self._confirm_view()
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
            limit = req.max_tokens_param if isinstance(req, ChatCompletionRequest) else "max_tokens"
            check_context(service, len(tokens), max_tokens, chat=chat, limit_param=limit)
            if self._inflight + req.n > self.max_inflight:
                raise ApiError(
                    429,
                    f"server overloaded: {self._inflight} requests in flight; retry later",
                    "server_overloaded",
                    "overloaded",
                )
            dg = choose_dg(service.dgs, self._inflight_by_app)
            if dg is None:
                await self._confirm_view()
                service = self._services.get(req.model, service)
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
        except Exception:  # a bug, never the client's fault: a generic 500, details in the log
            logger.exception("request entry failed")
            return self._error(internal_error(), service_name)
        rid = new_chat_id() if chat else new_completion_id()
        ctx = _Request(rid, req.model, chat, req, prompt, len(tokens), started)
        ctx.tokens, ctx.max_tokens, ctx.arrival = tokens, max_tokens, arrival
        ctx.budget = Budget(service.migration_limit)
        slots = [self._occupy(dg) for _ in range(req.n)]
        handed_off = False
        try:
            choices = await self._start_all(slots, ctx)
            first = choices[0].first
            meta = (first.meta if first is not None else None) or {}
            prompt_tokens = int(meta.get("prompt_tokens", len(tokens)))
            ctx.prompt_tokens = prompt_tokens
            self._requests.prompt(req.model, prompt_tokens)
            if req.stream:
                handed_off = True
                return ReleasingStream(
                    self._sse(slots, choices, ctx), lambda: self._close(slots, choices)
                )
            return await self._collect(choices, ctx)
        except ApiError as e:
            return self._error(e, service_name)
        except Exception as e:
            logger.exception("completion %s failed: %s", rid, type(e).__name__)
            return self._error(internal_error(), service_name)
        finally:
            if not handed_off:
                for slot in slots:
                    self._release(slot)

    # ---- request plumbing ----
    def _occupy(self, dg: DgRoute) -> _Slot:
        """Count one choice in flight on `dg`; the slot follows the choice if it migrates."""
        self._inflight += 1
        self._inflight_by_app[dg.app_name] += 1
        return _Slot(dg)

    def _move(self, slot: _Slot, dg: DgRoute) -> None:
        if slot.held:
            self._leave(slot.dg)
            self._inflight_by_app[dg.app_name] += 1
        slot.dg = dg

    def _release(self, slot: _Slot) -> None:
        if slot.held:
            slot.held = False
            self._inflight -= 1
            self._leave(slot.dg)

    def _leave(self, dg: DgRoute) -> None:
        """One choice fewer on `dg`; an app with none is forgotten (DG apps come and go)."""
        left = self._inflight_by_app[dg.app_name] - 1
        if left > 0:
            self._inflight_by_app[dg.app_name] = left
        else:
            self._inflight_by_app.pop(dg.app_name, None)

    async def _collect(self, choices: list[_Choice], ctx: _Request) -> JSONResponse:
        try:
            async for c, chunk in self._merged(choices, ctx):
                self._absorb(c, chunk, ctx)
        finally:
            for c in choices:
                if not c.finished:
                    c.cancel()
        return JSONResponse(completion_body(choices, ctx))

    async def _sse(
        self, slots: list[_Slot], choices: list[_Choice], ctx: _Request
    ) -> AsyncIterator[str]:
        """Server-sent events as OpenAI sends them; an error mid-stream becomes an error event."""
        try:
            for event in role_events(choices, ctx):
                yield event
            async for c, chunk in self._merged(choices, ctx):
                self._absorb(c, chunk, ctx)
                if (event := chunk_event(c, chunk, ctx)) is not None:
                    yield event
            if (event := usage_event(choices, ctx)) is not None:
                yield event
            yield "data: [DONE]\n\n"
        except ApiError as e:
            self._requests.error(ctx.model, e.status)
            err = error_body(str(e), type_=e.type_, code=e.code)
            yield f"data: {json.dumps(err)}\n\n"
        except Exception:
            logger.exception("stream %s failed", ctx.rid)
            e = internal_error()  # never a class name or actor id on the wire
            self._requests.error(ctx.model, e.status)
            err = error_body(str(e), type_=e.type_, code=e.code)
            yield f"data: {json.dumps(err)}\n\n"
        finally:
            self._close(slots, choices)

    def _close(self, slots: list[_Slot], choices: list[_Choice]) -> None:
        """A request's end, however it came (idempotent): the decode streams still running are
        cancelled (the client went away, or an error) and its in-flight slots released."""
        for c in choices:
            if not c.finished:
                c.cancel()
        for slot in slots:
            self._release(slot)
