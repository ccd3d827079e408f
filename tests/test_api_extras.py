"""Ingress follow-ups: vLLM's `continuous_usage_stats` stream events, OpenAI envelopes for the
errors FastAPI raises itself, and `update` handing `migration_limit` to the ingress.

The stream and error tests run in-process (no Ray, no httpx: the ASGI app is called directly);
one test uses the real routing-table actor on the shared `ray_cluster` and is marked slow.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from heteroscale_ray.actors.control_plane import IngressRegistration, ingress_registrations
from heteroscale_ray.config import ServicesConfig, parse_yaml_text
from heteroscale_ray.serving.api_requests import (
    ROUTES_HINT,
    ApiError,
    http_error,
    install_error_handlers,
    parse_chat,
    parse_completion,
    validation_error,
)
from heteroscale_ray.serving.api_responses import chunk_event, role_events, usage_event
from heteroscale_ray.serving.choices import ChoiceStreams, _Choice, _Request, _Slot
from heteroscale_ray.serving.decode import DecodeChunk
from heteroscale_ray.serving.model import ModelConfig, SamplingParams
from heteroscale_ray.serving.request_metrics import RequestMetrics
from heteroscale_ray.serving.routing_table import DgRoute, ServiceRoute

PROMPT_TOKENS = 9
GUIDELLM_OPTIONS = {"include_usage": True, "continuous_usage_stats": True}  # what GuideLLM sends


# ---- continuous_usage_stats ----
def _ctx(chat: bool, n: int, stream_options: dict[str, Any] | None) -> _Request:
    fields: dict[str, Any] = {"model": "m", "n": n, "stream": True}
    if stream_options is not None:
        fields["stream_options"] = stream_options
    if chat:
        req: Any = parse_chat(
            json.dumps({**fields, "messages": [{"role": "user", "content": "hi"}]}).encode()
        )
    else:
        req = parse_completion(json.dumps({**fields, "prompt": "hi"}).encode())
    return _Request("r", "m", chat, req, "hi", PROMPT_TOKENS, started=0.0)


def _chunk(text: str, generated: int, finished: bool = False) -> DecodeChunk:
    return DecodeChunk(text, generated, finished, "length" if finished else None)


# Each choice's decode chunks, interleaved as `_merged` may yield them: (choice, chunk). The
# empty chunk (a token whose UTF-8 is not complete yet) sends nothing.
SCRIPT = [
    (0, _chunk("a", 1)),
    (1, _chunk("x", 1)),
    (0, _chunk("", 2)),
    (0, _chunk("bc", 3)),
    (1, _chunk("y", 2, finished=True)),
    (0, _chunk("d", 4, finished=True)),
]


def _stream(ctx: _Request) -> list[dict[str, Any]]:
    """The events the router sends for SCRIPT (the `_sse` sequence, minus `[DONE]`), parsed;
    chunks are absorbed by the router's own `ChoiceStreams._absorb`."""
    streams = ChoiceStreams()
    streams._requests = RequestMetrics()
    slot = _Slot(DgRoute("m", "a", "m-a"))
    choices = [_Choice(i, f"r-{i}", SamplingParams(), slot) for i in range(ctx.req.n)]
    events = list(role_events(choices, ctx))
    for i, chunk in SCRIPT:
        if i >= len(choices):
            continue
        streams._absorb(choices[i], chunk, ctx)
        if (event := chunk_event(choices[i], chunk, ctx)) is not None:
            events.append(event)
    if (event := usage_event(choices, ctx)) is not None:
        events.append(event)
    out = []
    for e in events:
        assert e.startswith("data: ") and e.endswith("\n\n")
        out.append(json.loads(e[len("data: ") :]))
    return out


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
@pytest.mark.parametrize("n", [1, 2])
def test_continuous_usage_puts_each_choices_running_usage_on_every_chunk(
    chat: bool, n: int
) -> None:
    events = _stream(_ctx(chat, n, GUIDELLM_OPTIONS))
    *chunks, last = events
    roles = [e for e in chunks if chat and e["choices"][0]["delta"].get("role") == "assistant"]
    assert len(roles) == (n if chat else 0)
    assert all(e["usage"] == _usage(PROMPT_TOKENS, 0) for e in roles)  # nothing generated yet
    content = [e for e in chunks if e not in roles]
    # vLLM's semantics: the running count of the chunk's own choice, after that chunk.
    want = {0: [1, 3, 4], 1: [1, 2]}
    got: dict[int, list[int]] = {}
    for e in content:
        (choice,) = e["choices"]
        assert e["usage"]["prompt_tokens"] == PROMPT_TOKENS
        assert e["usage"]["total_tokens"] == PROMPT_TOKENS + e["usage"]["completion_tokens"]
        got.setdefault(choice["index"], []).append(e["usage"]["completion_tokens"])
    assert got == {i: want[i] for i in range(n)}
    # The last chunk: the whole request's usage and no choices, as with include_usage alone.
    assert last["choices"] == [] and last["usage"] == _usage(
        PROMPT_TOKENS, sum(want[i][-1] for i in range(n))
    )
    obj = "chat.completion.chunk" if chat else "text_completion"
    assert all(e["object"] == obj and e["id"] == "r" for e in events)


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
@pytest.mark.parametrize(
    ("options", "null_usage", "last_usage"),
    [
        (None, False, False),
        ({"include_usage": True}, True, True),
        ({"include_usage": True, "continuous_usage_stats": False}, True, True),
        ({"continuous_usage_stats": True}, False, False),  # vLLM: needs include_usage
        ({"include_usage": None, "continuous_usage_stats": None}, False, False),  # null = false
    ],
)
def test_usage_without_continuous_stats_is_unchanged(
    chat: bool, options: dict[str, Any] | None, null_usage: bool, last_usage: bool
) -> None:
    *chunks, last = _stream(_ctx(chat, 2, options))
    if null_usage:  # OpenAI's format: every other chunk has "usage": null
        assert all(e["usage"] is None for e in chunks)
    else:
        assert all("usage" not in e for e in chunks)
    assert (last["choices"] == [] and last["usage"] == _usage(PROMPT_TOKENS, 6)) is last_usage


def test_stream_options_still_reject_unknown_keys_and_need_stream() -> None:
    with pytest.raises(ApiError) as e:
        parse_completion(
            json.dumps(
                {"model": "m", "prompt": "x", "stream": True, "stream_options": {"every": 1}}
            ).encode()
        )
    assert e.value.status == 400 and e.value.param == "stream_options.every"
    with pytest.raises(ApiError) as e:
        parse_completion(
            json.dumps({"model": "m", "prompt": "x", "stream_options": GUIDELLM_OPTIONS}).encode()
        )
    assert e.value.status == 400 and e.value.param == "stream_options"
    req = parse_chat(
        json.dumps(
            {
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "stream": True,
                "stream_options": GUIDELLM_OPTIONS,
            }
        ).encode()
    )
    assert req.include_usage and req.continuous_usage


# ---- FastAPI's own errors as OpenAI envelopes ----
async def _asgi(
    app: Any, method: str, path: str, body: bytes = b""
) -> tuple[int, dict[str, str], Any]:
    """One HTTP request straight into the ASGI app: status, headers, parsed JSON body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "scheme": "http",
        "server": ("test", 80),
        "client": ("test", 1),
        "root_path": "",
    }
    inbox = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


def _envelope(body: Any) -> dict[str, Any]:
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_the_ingress_answers_unknown_urls_and_wrong_methods_with_openai_errors() -> None:
    from heteroscale_ray.serving.router import api  # the ingress's own app and handlers

    status, _, body = asyncio.run(_asgi(api, "GET", "/v1/nope"))
    err = _envelope(body)
    assert status == 404 and err["code"] == "not_found" and err["type"] == "invalid_request_error"
    assert err["message"].startswith("Invalid URL (GET /v1/nope)") and ROUTES_HINT in err["message"]

    for path in ("/v1/completions", "/v1/chat/completions"):
        status, headers, body = asyncio.run(_asgi(api, "GET", path))
        err = _envelope(body)
        assert status == 405 and headers["allow"] == "POST", headers
        assert err["code"] == "method_not_allowed"
        assert err["message"] == f"Invalid method for URL (GET {path}): it accepts POST"
    status, headers, body = asyncio.run(_asgi(api, "POST", "/v1/models"))
    assert (
        status == 405
        and _envelope(body)["code"] == "method_not_allowed"
        and headers["allow"] == "GET"
    )


class _Thing(BaseModel):
    size: int
    name: str


def test_request_validation_errors_keep_422_and_name_the_parameter() -> None:
    """Our routes read the body themselves, so FastAPI validates nothing of theirs today; the
    handler covers any route that lets FastAPI validate (a typed body or query parameter)."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/things")
    async def things(thing: _Thing, limit: int = 10) -> dict[str, int]:
        return {"size": thing.size, "limit": limit}

    status, _, body = asyncio.run(_asgi(app, "POST", "/things", b'{"size": "big", "name": "x"}'))
    err = _envelope(body)
    assert status == 422 and err["param"] == "size" and err["code"] == "invalid_value"
    assert err["message"].startswith("size: ") and "_Thing" not in err["message"]
    status, _, body = asyncio.run(_asgi(app, "POST", "/things", b'{"size": 3}'))
    err = _envelope(body)
    assert status == 422 and err["param"] == "name" and err["code"] == "missing_field"
    status, _, body = asyncio.run(_asgi(app, "POST", "/things", b'{"size": 3, "name": "x"}'))
    assert status == 200 and body == {"size": 3, "limit": 10}  # the handlers change errors only
    status, _, body = asyncio.run(_asgi(app, "DELETE", "/things"))
    assert status == 405 and _envelope(body)["message"].endswith("it accepts POST")


@pytest.mark.parametrize(
    ("status", "detail", "want_type", "want_message"),
    [
        (400, "bad header", "invalid_request_error", "bad header (PUT /x)"),
        (413, None, "invalid_request_error", "Request Entity Too Large (PUT /x)"),
        (503, "", "server_error", "Service Unavailable (PUT /x)"),
        (599, None, "server_error", "HTTP error (PUT /x)"),
    ],
)
def test_other_http_errors_keep_their_status(
    status: int, detail: str | None, want_type: str, want_message: str
) -> None:
    err = http_error("PUT", "/x", status, detail)
    assert (err.status, err.type_, str(err)) == (status, want_type, want_message)


def test_validation_error_without_details_is_still_an_envelope() -> None:
    err = validation_error([])
    assert err.status == 422 and err.code == "invalid_value" and str(err)


# ---- update -> ingress migration_limit ----
def _config(*services: tuple[str, int | None]) -> ServicesConfig:
    rows = []
    for name, limit in services:
        extra = "" if limit is None else f", migration_limit: {limit}"
        rows.append(
            f"  - {{name: {name}, model: dense-8b, slo: {{ttft_s: 1, tbt_s: 0.1}}, pd_ratio: '1:1',"
            f" prefill: {{gpu_types: [L20]}}, decode: {{gpu_types: [H20]}},"
            f" policy: {{target_per_instance: 100}}{extra}}}"
        )
    return parse_yaml_text("services:\n" + "\n".join(rows) + "\n", ServicesConfig, "test")


ENGINE = ModelConfig(n_layers=2, d_model=64, n_heads=4, max_context=512)


def _route(
    name: str, limit: int, engine: ModelConfig = ENGINE, ttft_slo_s: float | None = 1.0
) -> ServiceRoute:
    return ServiceRoute(name, engine, "dense-8b", {}, limit, ttft_slo_s)


@pytest.mark.parametrize(
    ("services", "registered", "want"),
    [
        # A changed limit: the new one, with the engine and profile the service has.
        (
            [("chat", 5)],
            {"chat": _route("chat", 3)},
            [IngressRegistration("chat", ENGINE, "dense-8b", 5, 1.0)],
        ),
        (
            [("chat", 0)],
            {"chat": _route("chat", 3)},
            [IngressRegistration("chat", ENGINE, "dense-8b", 0, 1.0)],
        ),
        # A changed TTFT SLO (or none registered by an older ingress): the config's.
        (
            [("chat", 3)],
            {"chat": _route("chat", 3, ttft_slo_s=2.0)},
            [IngressRegistration("chat", ENGINE, "dense-8b", 3, 1.0)],
        ),
        (
            [("chat", 3)],
            {"chat": _route("chat", 3, ttft_slo_s=None)},
            [IngressRegistration("chat", ENGINE, "dense-8b", 3, 1.0)],
        ),
        # Unchanged (the default is 3): nothing to push.
        ([("chat", None)], {"chat": _route("chat", 3)}, []),
        ([("chat", 3), ("docs", 1)], {"chat": _route("chat", 3), "docs": _route("docs", 1)}, []),
        # A new service: registered as `start` does, with the engine the others run.
        (
            [("chat", 3), ("docs", 2)],
            {"chat": _route("chat", 3)},
            [IngressRegistration("docs", ENGINE, "dense-8b", 2, 1.0)],
        ),
        # Nothing registered yet: the default engine (what `heteroscale start` serves).
        ([("chat", 4)], {}, [IngressRegistration("chat", ModelConfig(), "dense-8b", 4, 1.0)]),
        # A service left out of the update is not touched here (the pre-scheduler unroutes it).
        ([("chat", 3)], {"chat": _route("chat", 3), "old": _route("old", 1)}, []),
    ],
    ids=[
        "changed",
        "to-zero",
        "ttft-changed",
        "ttft-unknown",
        "default-same",
        "all-same",
        "new-service",
        "none-registered",
        "removed",
    ],
)
def test_ingress_registrations(
    services: list[tuple[str, int | None]],
    registered: dict[str, ServiceRoute],
    want: list[IngressRegistration],
) -> None:
    assert ingress_registrations(_config(*services), registered) == want


@pytest.mark.slow
def test_update_pushes_migration_limits_to_the_routing_table(ray_cluster: object) -> None:
    """`push_ingress_registrations` (what `update_services` calls once the policy engine took
    the config) against the real routing-table actor: the limit changes, the engine stays."""
    import ray

    from heteroscale_ray.actors.control_plane import push_ingress_registrations
    from heteroscale_ray.serving.deployments import register_service
    from heteroscale_ray.serving.routing_table import get_routing_table

    table = get_routing_table()
    names = ("limits-a", "limits-b")
    try:
        register_service(names[0], ENGINE, "dense-8b", 3)
        pushed = push_ingress_registrations(_config((names[0], 1), (names[1], 5)))
        assert [(r.name, r.migration_limit) for r in pushed] == [(names[0], 1), (names[1], 5)]
        _, services = ray.get(table.snapshot.remote())
        assert (services[names[0]].migration_limit, services[names[0]].engine) == (1, ENGINE)
        assert services[names[1]].migration_limit == 5  # new: engine of the registered ones
        # A DG re-deploy re-registers without a limit: the pushed one stays.
        register_service(names[1], ENGINE, "dense-8b")
        _, services = ray.get(table.snapshot.remote())
        assert services[names[1]].migration_limit == 5
        assert push_ingress_registrations(_config((names[0], 1), (names[1], 5))) == []
    finally:
        for name in names:
            ray.get(table.remove_service.remote(name))
