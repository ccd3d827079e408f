"""Fuzzing the ingress's request parsing and validation in-process (no Ray): every body, however
hostile, gives a parsed request that the rest of the request path accepts, or an ApiError with
a 4xx status whose message names the parameter and no internal class; never another exception.

`_admit` runs what `Router._serve` runs before dispatch, in the same order: parse, model
look-up, prompt and tokens, max_tokens, the context check, each choice's sampling parameters
and the replica's seeded generator.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from fastapi import Request
from fastapi.responses import JSONResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from heteroscale_ray.serving import api_types
from heteroscale_ray.serving.api_requests import (
    MAX_BODY_BYTES,
    ApiError,
    chat_prompt,
    check_context,
    default_max_tokens,
    internal_error,
    parse_chat,
    parse_completion,
    read_body,
)
from heteroscale_ray.serving.api_types import ChatCompletionRequest
from heteroscale_ray.serving.choices import sampling_params
from heteroscale_ray.serving.model import ModelConfig
from heteroscale_ray.serving.routing_table import ServiceRoute
from heteroscale_ray.serving.tokenizer import ByteTokenizer

SERVICE = ServiceRoute("m", ModelConfig(max_context=512, kv_capacity_tokens=4096))
TOKENIZER = ByteTokenizer()
FUZZ = settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# What a client must never read: our model classes, Python internals, tracebacks.
_INTERNAL_NAMES = sorted(
    name
    for name, obj in vars(api_types).items()
    if inspect.isclass(obj) and issubclass(obj, BaseModel) and obj.__module__ == api_types.__name__
)
_LEAK = re.compile(
    r"Traceback|File \"|pydantic|ValidationError|RecursionError|instance of|"
    + "|".join(rf"\b{n}\b" for n in _INTERNAL_NAMES)
)


def _admit(raw: bytes, chat: bool) -> tuple[Any, int]:
    """Router._serve's request entry, without Serve: the request and its max_tokens."""
    req = parse_chat(raw) if chat else parse_completion(raw)
    if req.model != SERVICE.name:
        raise ApiError(
            404,
            f"The model '{req.model}' does not exist",
            "invalid_request_error",
            "model_not_found",
            "model",
        )  # as Router._serve names it
    if isinstance(req, ChatCompletionRequest):
        prompt = chat_prompt(req)
        tokens = TOKENIZER.encode(prompt, add_bos=True)
        max_tokens = req.requested_max_tokens or default_max_tokens(SERVICE, len(tokens))
    else:
        prompt = req.prompt_text
        tokens = TOKENIZER.encode(prompt, add_bos=True)
        max_tokens = req.max_tokens
    limit = req.max_tokens_param if isinstance(req, ChatCompletionRequest) else "max_tokens"
    check_context(SERVICE, len(tokens), max_tokens, chat=chat, limit_param=limit)
    for i in range(req.n):
        params = sampling_params(req, max_tokens, i)
        np.random.default_rng(params.seed)  # what the replica builds from the seed
    # Echoed text must render: the prompt (echo) and the stop strings go back to the client.
    JSONResponse({"prompt": prompt, "stop": list(req.stop_list), "user": req.user})
    return req, max_tokens


def _check(raw: bytes, chat: bool) -> ApiError | None:
    """Admit `raw`; an ApiError must be a client error that renders and names no internals."""
    try:
        _admit(raw, chat)
    except ApiError as e:
        msg = str(e)
        assert 400 <= e.status < 500, (e.status, msg)
        assert msg.strip()
        assert not _LEAK.search(msg), msg
        if e.param is not None:
            assert e.param in msg or e.param.split(".")[0] in msg, (e.param, msg)
        body = json.loads(e.response().body)["error"]
        assert body["message"] and body["type"] == "invalid_request_error", body
        assert len(body["message"]) <= 2000
        return e
    return None


# ---- strategies ----
@dataclass(frozen=True)
class Raw:
    """JSON text put into a body verbatim (numbers json.dumps will not write, deep nesting)."""

    text: str


def _dump(v: Any) -> str:
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_dump(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ",".join(_dump(x) for x in v) + "]"
    return json.dumps(v)  # NaN/Infinity as Python writes them; lone surrogates as \\udXXX


surrogates = st.sampled_from(["\ud800", "\udfff", "\udc80"])
texts = st.one_of(
    st.text(max_size=20),
    st.lists(st.one_of(st.text(max_size=3), surrogates), min_size=1, max_size=4).map("".join),
    st.integers(0, 20_000).map(lambda n: "x" * n),
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324, 0.5, 2.0, 2.0000001]),
)
ints = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 16, 17, 20, 21, 2**63 - 1, 2**63, 2**64]),
    st.integers(20, 6000).map(lambda n: Raw("9" * n)),  # beyond Python's int-parse limit too
    st.sampled_from([Raw("1e400"), Raw("-1e400"), Raw("1e308"), Raw("1E5"), Raw("-0")]),
)
deep = st.one_of(
    st.integers(1, 20_000).map(lambda d: Raw("[" * d + "]" * d)),
    st.integers(1, 5_000).map(lambda d: Raw('{"a":' * d + "1" + "}" * d)),
)
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
hostile = st.one_of(json_values, deep)

COMPLETION_PARAMS = [
    "model", "prompt", "max_tokens", "echo", "logprobs", "best_of", "suffix", "temperature",
    "top_p", "n", "seed", "stop", "stream", "stream_options", "ignore_eos", "user",
    "presence_penalty", "frequency_penalty", "logit_bias", "response_format",
]  # fmt: skip
CHAT_PARAMS = [
    *[p for p in COMPLETION_PARAMS if p not in ("prompt", "echo", "best_of", "suffix")],
    "messages", "max_completion_tokens", "top_logprobs",
]  # fmt: skip
NESTED = [
    ("messages", 0, "role"),
    ("messages", 0, "content"),
    ("messages", 0, "content", 0, "text"),
    ("messages", 0, "content", 0, "type"),
    ("stream_options", "include_usage"),
]


def _base(chat: bool) -> dict[str, Any]:
    if chat:
        return {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    return {"model": "m", "prompt": "hello", "max_tokens": 4}


@st.composite
def one_hostile_parameter(draw: st.DrawFn) -> tuple[bool, tuple[Any, ...], bytes]:
    """A valid body with one parameter (top-level, nested, or unknown) set to a hostile value."""
    chat = draw(st.booleans())
    body = _base(chat)
    names = CHAT_PARAMS if chat else COMPLETION_PARAMS
    unknown = st.text(min_size=1, max_size=12).filter(lambda k: k not in names).map(lambda k: (k,))
    choices = [st.sampled_from(names).map(lambda n: (n,)), unknown]
    if chat:
        choices.append(st.sampled_from(NESTED))
    path = draw(st.one_of(*choices))
    value = draw(hostile)
    target: Any = body
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    if chat and path[0] in ("stream", "stream_options") and len(path) == 1:
        # stream_options needs stream: keep one of them valid so the error is the mutated one's.
        body.pop("stream_options" if path[0] == "stream" else "stream")
    return chat, path, _dump(body).encode()


# ---- the fuzz tests (>= 1,000 requests in all) ----
@FUZZ
@given(one_hostile_parameter())
def test_one_hostile_parameter_is_parsed_or_a_400_naming_it(
    case: tuple[bool, tuple[Any, ...], bytes],
) -> None:
    chat, path, raw = case
    err = _check(raw, chat)
    if err is not None:
        name = str(path[0])
        assert err.param is not None, (path, str(err))
        assert (
            err.param == name
            or err.param.startswith(f"{name}.")
            or (
                # the prompt's size is checked after parsing: named as max_tokens' or the prompt's
                err.param == "max_tokens" and name in ("prompt", "messages")
            )
        ), (path, err.param, str(err))


bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: _dump(v).encode()),
    deep.map(lambda r: r.text.encode()),
    st.dictionaries(
        st.one_of(st.sampled_from(CHAT_PARAMS + COMPLETION_PARAMS), st.text(max_size=6)),
        hostile,
        max_size=6,
    ).map(lambda d: _dump(d).encode()),
)


@FUZZ
@given(st.booleans(), bodies)
def test_any_body_is_parsed_or_a_4xx_naming_no_internals(chat: bool, raw: bytes) -> None:
    _check(raw, chat)


# ---- the hostile bodies named in the issue, one by one ----
NAMED = {
    "nested-arrays-10k": b"[" * 10_000 + b"]" * 10_000,
    "nested-objects-10k": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "nested-in-a-parameter": b'{"model":"m","prompt":' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    "nan": b'{"model":"m","prompt":"x","temperature":NaN}',
    "infinity": b'{"model":"m","prompt":"x","top_p":Infinity}',
    "huge-int": b'{"model":"m","prompt":"x","max_tokens":' + b"9" * 5000 + b"}",
    "huge-float": b'{"model":"m","prompt":"x","n":1e400}',
    "negative-seed": b'{"model":"m","prompt":"x","seed":-1}',
    "invalid-utf8": b'{"model":"m","prompt":"\xff\xfe"}',
    "lone-surrogate": b'{"model":"m","prompt":"\\ud800"}',
    "surrogate-key": b'{"model":"m","prompt":"x","\\ud800":1}',
    "empty": b"",
    "whitespace": b"  \n",
    "array": b"[]",
    "string": b'"hello"',
    "null": b"null",
    "wrong-types": b'{"model":1,"prompt":{},"max_tokens":"4","stream":"yes"}',
    "oversized": b'{"model":"m","prompt":"' + b"x" * (MAX_BODY_BYTES + 1) + b'"}',
}


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
@pytest.mark.parametrize("name", list(NAMED))
def test_named_hostile_bodies_get_a_4xx(name: str, chat: bool) -> None:
    err = _check(NAMED[name], chat)
    assert err is not None
    if name == "oversized":
        assert err.status == 413 and str(MAX_BODY_BYTES) in str(err)


def test_internal_error_names_nothing_internal() -> None:
    err = internal_error()
    body = json.loads(err.response().body)["error"]
    assert err.status == 500 and body["type"] == "server_error"
    assert not _LEAK.search(body["message"]) and "Error" not in body["message"]


# ---- read_body: content type and size, on Starlette's own Request (in-process) ----
def _read(headers: dict[str, str], chunks: list[bytes]) -> bytes | ApiError:
    """read_body on a Request fed `chunks` as an ASGI server would; how many were pulled is
    checked by the caller through `pulled`."""
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ] or [{"type": "http.request", "body": b"", "more_body": False}]
    pulled.clear()

    async def receive() -> dict[str, Any]:
        pulled.append(1)
        return messages[len(pulled) - 1]

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/completions",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    try:
        return asyncio.run(read_body(Request(scope, receive)))
    except ApiError as e:
        return e


pulled: list[int] = []
JSON = {"content-type": "application/json"}
OK_BODY = b'{"model":"m","prompt":"x"}'


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (JSON, None),
        ({"content-type": "application/json; charset=utf-8"}, None),
        ({"content-type": "application/vnd.api+json"}, None),
        ({}, None),
        ({"content-type": "text/plain"}, 415),
        ({"content-type": "application/x-www-form-urlencoded"}, 415),
        ({"content-type": "multipart/form-data; boundary=x"}, 415),
        ({**JSON, "content-length": str(MAX_BODY_BYTES + 1)}, 413),
    ],
    ids=["json", "json-charset", "json-suffix", "no-type", "text", "form", "multipart", "declared"],
)
def test_read_body_checks_content_type_and_declared_size(
    headers: dict[str, str], status: int | None
) -> None:
    got = _read(headers, [OK_BODY])
    if status is None:
        assert got == OK_BODY
    else:
        assert isinstance(got, ApiError) and got.status == status
        assert _check_error(got)
        assert not pulled  # refused on the headers: the body was never read


def test_read_body_stops_reading_a_chunked_body_at_the_limit() -> None:
    got = _read(JSON, [b"x" * MAX_BODY_BYTES] * 5)
    assert isinstance(got, ApiError) and got.status == 413 and got.code == "request_too_large"
    assert len(pulled) == 2  # stopped at the chunk that crossed the limit


def _check_error(e: ApiError) -> bool:
    body = json.loads(e.response().body)["error"]
    return bool(body["message"]) and not _LEAK.search(body["message"])
