"""OpenAI request parsing and validation at the ingress, and the error that answers a bad one.

Why apart from router.py: turning body bytes into a validated request (a 400 naming the
offending parameter when it is not) and checking it against the served model's context is
pure, testable without Serve; the ingress deployment only calls it. The request models
themselves are in api_types.py.
"""

import json
from typing import Any, TypeVar

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from heteroscale_ray.serving.api_types import (
    ChatCompletionRequest,
    CompletionRequest,
    _FieldError,
    error_body,
)
from heteroscale_ray.serving.routing_table import ServiceRoute
from heteroscale_ray.serving.tokenizer import apply_chat_template

_R = TypeVar("_R", CompletionRequest, ChatCompletionRequest)


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
