"""OpenAI request parsing and validation at the ingress, and the error that answers a bad one.

Why apart from router.py: turning body bytes into a validated request (a 400 naming the
offending parameter when it is not) and checking it against the served model's context is
pure, testable without Serve; the ingress deployment only calls it. The request models
themselves are in api_types.py.

Hostile bodies are 4xx, never 500: a body over `MAX_BODY_BYTES` (2 MiB) is a 413, a declared
content type other than JSON a 415, and bytes that are not UTF-8 JSON, nest too deeply to
parse, or are not one JSON object a 400. Error messages name the parameter and never internal
classes; an unexpected failure becomes `internal_error`'s generic 500.

What FastAPI answers itself before a route runs (an unknown URL 404, a wrong method 405, a
request-validation 422) gets the same OpenAI envelope and status through
`install_error_handlers`, instead of FastAPI's `{"detail": ...}`.
"""

import json
import math
import re
from http import HTTPStatus
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from heteroscale_ray.serving.api_types import (
    ChatCompletionRequest,
    CompletionRequest,
    _FieldError,
    error_body,
)
from heteroscale_ray.serving.routing_table import ServiceRoute
from heteroscale_ray.serving.tokenizer import apply_chat_template

_R = TypeVar("_R", CompletionRequest, ChatCompletionRequest)

MAX_BODY_BYTES = 2 * 1024 * 1024  # a request body above this is a 413 (prompts are far smaller)
MAX_REPORTED_ERRORS = 5  # problems listed in one 400; the rest are counted
_MAX_MESSAGE_CHARS = 2000  # client-visible text, so that no echoed input makes a huge body


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

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        """The error as JSON; text that echoes input is cut short and made encodable."""
        param = None if self.param is None else _printable(self.param, 200)
        body = error_body(
            _printable(str(self), _MAX_MESSAGE_CHARS), type_=self.type_, code=self.code, param=param
        )
        return JSONResponse(body, status_code=self.status, headers=headers)


def _printable(text: str, limit: int) -> str:
    """`text` as valid UTF-8 (lone surrogates escaped), at most `limit` characters."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def internal_error() -> ApiError:
    """What the client sees when something fails inside the server: a generic OpenAI 500,
    never a class name, actor id or traceback (those go to the log)."""
    return ApiError(
        500,
        "The server had an error while processing your request; retry it, or report it if it "
        "persists",
        "server_error",
        "internal_error",
    )


def _bad_request(message: str, code: str | None = None, param: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param)


def _param_of(err: dict[str, Any]) -> str | None:
    """The OpenAI `param` of a pydantic error: its field path, or a cross-field check's name."""
    ctx_err = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_err, _FieldError):
        return ctx_err.param
    loc = [str(p) for p in err["loc"]]
    # Union members add their type name to the path (e.g. "stop.str"); keep the field's path.
    # Never the first part: that is the client's own key, whatever it is called ("str").
    members = {"str", "list[str]", "list[TextPart]", "int", "float"}
    loc = loc[:1] + [p for p in loc[1:] if p not in members]
    return ".".join(loc) or None


def _message_of(err: dict[str, Any]) -> str:
    """pydantic's message in the client's terms: JSON types, no model class names."""
    if err["type"] in {"model_type", "model_attributes_type", "dict_type"}:
        return "Input should be a JSON object"
    if err["type"] == "string_unicode":  # a lone surrogate escape in a key (values: api_types)
        return "Input should be Unicode text (it holds an unpaired surrogate such as \\ud800)"
    return str(err["msg"]).removeprefix("Value error, ")


def _parse_int(text: str) -> int | float:
    """A JSON integer; one longer than Python parses (4,300 digits) reads as +/-inf, which
    validation rejects naming its parameter (instead of a parse error naming none)."""
    if len(text) <= 4000:
        return int(text)
    return -math.inf if text.startswith("-") else math.inf


_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _deepest_key(raw: bytes) -> str | None:
    """The top-level key under which `raw` nests deepest (None: not under a key), for naming
    the parameter of a body too deep to parse. One pass over strings and brackets."""
    depth, deepest, key, last_string, deepest_key = 0, 0, None, None, None
    for m in _JSON_TOKEN.finditer(raw):
        tok = m.group()
        if tok in (b"[", b"{"):
            if depth == 1 and last_string is not None:
                key = last_string
            depth += 1
            if depth > deepest:
                deepest, deepest_key = depth, key if depth > 1 else None
        elif tok in (b"]", b"}"):
            depth -= 1
        elif depth == 1:
            last_string = tok
            key = tok
    if deepest_key is None:
        return None
    try:
        return str(json.loads(deepest_key))
    except ValueError:
        return None


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, or a 415 for a declared non-JSON content type and a 413 above
    `limit` bytes (checked on Content-Length first, then while reading)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype and ctype != "application/json" and not ctype.endswith("+json"):
        raise ApiError(
            415,
            f"Content-Type '{ctype}' is not supported: send the body as JSON with "
            "Content-Type: application/json",
            "invalid_request_error",
            "unsupported_media_type",
        )
    too_large = ApiError(
        413,
        f"request body is larger than {limit} bytes",
        "invalid_request_error",
        "request_too_large",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def parse_request(raw: bytes, model: type[_R]) -> _R:
    """Body bytes -> request of type `model`, or a 400 that names the offending parameter."""
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(
            413,
            f"request body is larger than {MAX_BODY_BYTES} bytes",
            "invalid_request_error",
            "request_too_large",
        )
    if not raw.strip():
        raise _bad_request("request body is empty: send a JSON object", "invalid_json")
    try:
        data = json.loads(raw, parse_int=_parse_int)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad_request(f"request body is not valid JSON: {e}", "invalid_json") from None
    except RecursionError:
        key = _deepest_key(raw)
        where = f"'{key}'" if key is not None else "the body"
        raise _bad_request(
            f"{where} nests arrays or objects too deeply to parse", "invalid_json", key
        ) from None
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
        shown = errors[:MAX_REPORTED_ERRORS]
        msgs = "; ".join(f"{_param_of(err) or 'body'}: {_message_of(err)}" for err in shown)
        if len(errors) > len(shown):
            msgs += f" (and {len(errors) - len(shown)} more problems)"
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


def check_context(
    service: ServiceRoute,
    prompt_tokens: int,
    max_tokens: int,
    *,
    chat: bool = False,
    limit_param: str = "max_tokens",
) -> None:
    """400 unless prompt + max_tokens fits the model context and one decode replica's KV.

    The prompt's parameter is `messages` for chat, `prompt` for completions (as OpenAI names it);
    the limit's is the one the client sent (`max_completion_tokens` or `max_tokens`)."""
    limit = service.engine.max_context
    prompt = "messages" if chat else "prompt"
    if prompt_tokens >= limit:
        raise _bad_request(
            f"This model's maximum context length is {limit} tokens, however you requested "
            f"{prompt_tokens} prompt tokens. Please reduce the length of the {prompt}.",
            "context_length_exceeded",
            prompt,
        )
    if prompt_tokens + max_tokens > limit:
        raise _bad_request(
            f"This model's maximum context length is {limit} tokens, however you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {prompt}, {max_tokens} "
            f"for the completion). Please reduce the {prompt} or {limit_param}.",
            "context_length_exceeded",
            limit_param,
        )
    if prompt_tokens + max_tokens > service.engine.kv_capacity_tokens:
        raise _bad_request(
            f"request needs {prompt_tokens + max_tokens} KV tokens, more than one decode "
            f"replica holds ({service.engine.kv_capacity_tokens}): lower {limit_param}",
            "context_length_exceeded",
            limit_param,
        )


# ---- errors FastAPI raises before a route runs ----
ROUTES_HINT = (
    "this server serves POST /v1/completions, POST /v1/chat/completions, GET /v1/models, "
    "/health, /healthz, /version and /metrics"
)
_REQUEST_PARTS = {"body", "query", "path", "header", "cookie"}  # first item of a FastAPI loc


def http_error(
    method: str, path: str, status: int, detail: Any, allow: str | None = None
) -> ApiError:
    """FastAPI's own HTTP error (unknown URL, wrong method, ...) as an OpenAI error; the
    messages say what OpenAI's say ("Invalid URL (GET /x)") plus what to do instead
    (`allow`: the methods the URL takes, from a 405's Allow header)."""
    where = f"{method} {_printable(path, 200)}"
    if status == 404:
        return ApiError(
            404, f"Invalid URL ({where}): {ROUTES_HINT}", "invalid_request_error", "not_found"
        )
    if status == 405:
        return ApiError(
            405,
            f"Invalid method for URL ({where}): "
            + (f"it accepts {allow}" if allow else ROUTES_HINT),
            "invalid_request_error",
            "method_not_allowed",
        )
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "HTTP error"
    message = detail if isinstance(detail, str) and detail else phrase
    type_ = "server_error" if status >= 500 else "invalid_request_error"
    return ApiError(status, f"{message} ({where})", type_)


def validation_error(errors: list[dict[str, Any]], status: int = 422) -> ApiError:
    """FastAPI's request validation as an OpenAI error naming the parameter, in the terms
    `parse_request` uses (FastAPI's location prefix "body"/"query" dropped)."""
    shown = []
    for err in errors[:MAX_REPORTED_ERRORS]:
        loc = list(err.get("loc") or ())
        if loc and loc[0] in _REQUEST_PARTS:
            loc = loc[1:]
        shown.append({**err, "loc": loc})
    if not shown:
        return ApiError(
            status, "the request is not valid", "invalid_request_error", "invalid_value"
        )
    msgs = "; ".join(f"{_param_of(err) or 'body'}: {_message_of(err)}" for err in shown)
    if len(errors) > len(shown):
        msgs += f" (and {len(errors) - len(shown)} more problems)"
    code = "missing_field" if shown[0].get("type") == "missing" else "invalid_value"
    return ApiError(status, msgs, "invalid_request_error", code, _param_of(shown[0]))


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    detail = exc.detail if isinstance(exc, StarletteHTTPException) else None
    headers = dict(exc.headers or {}) if isinstance(exc, StarletteHTTPException) else {}
    allow = next((v for k, v in headers.items() if k.lower() == "allow"), None)
    err = http_error(request.method, request.url.path, status, detail, allow)
    return err.response(headers=headers or None)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    errors = list(exc.errors()) if isinstance(exc, RequestValidationError) else []
    return validation_error(errors).response()


def install_error_handlers(app: FastAPI) -> None:
    """Answer FastAPI's own errors with OpenAI envelopes, status (and Allow header) kept.

    Call it before `serve.ingress(app)`: Serve freezes a copy of the app there."""
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
