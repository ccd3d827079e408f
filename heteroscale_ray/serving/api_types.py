"""OpenAI-shaped request/response models for the ingress, plus the OpenAI error envelope.

Requests (`CompletionRequest`, `ChatCompletionRequest`) forbid unknown fields: every OpenAI
parameter is either honoured or rejected with a 400 that names it, never silently ignored.
A few OpenAI parameters are accepted only at their neutral value (`presence_penalty` and
`frequency_penalty` 0, an empty `logit_bias`, `best_of` equal to `n`, an empty `suffix`,
`response_format` text), because then honouring them changes nothing; any other value is a 400
naming the parameter. `user` is accepted (it only identifies the caller). `ignore_eos` is an
extension (as in vLLM).

Honoured: `model`, `prompt` (one string, or a list of one) / `messages` (roles system,
developer, user, assistant; text content), `max_tokens` (and `max_completion_tokens` for chat),
`temperature`, `top_p`, `n`, `stop`, `seed` (0 to 2**63 - 17; choice i uses seed + i), `stream`,
`stream_options.include_usage` (and vLLM's `stream_options.continuous_usage_stats`, which load
tools such as GuideLLM send), `logprobs` (completions: top-k per token; chat: `logprobs` +
`top_logprobs`) and `echo` (completions, not together with logprobs: prompt logprobs are not
computed).

Text must be Unicode (no lone surrogate escapes) and numbers finite (no NaN or Infinity); both
are a 400 naming the parameter.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from heteroscale_ray.serving.model import TokenLogprob
from heteroscale_ray.serving.tokenizer import token_bytes, token_text

MAX_N = 16  # choices per request
MAX_LOGPROBS = 20  # top-k logprobs per token (vLLM's default cap)
MAX_SEED = 2**63 - 1 - MAX_N  # choice i samples with seed + i: every seed stays an int64


def _unicode_text(name: str, value: Any) -> Any:
    """Reject strings holding lone surrogates (JSON escapes such as "\\ud800"): they are not
    Unicode text, so they can neither be tokenized as UTF-8 nor echoed back in a response."""
    for text in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
        if isinstance(text, str):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    f"'{name}' is not valid Unicode text (it holds an unpaired surrogate such as "
                    "\\ud800): send UTF-8 text"
                ) from None
    return value


def _neutral_only(name: str, value: Any, neutral: tuple[Any, ...]) -> Any:
    if value is not None and value not in neutral:
        raise ValueError(
            f"'{name}' is not supported by this server (only {neutral[0]!r} or null is accepted)"
        )
    return value


class StreamOptions(BaseModel):
    """`stream_options`; null reads as false (as vLLM reads it)."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool | None = Field(
        default=False, description="Send a last chunk with `usage` and no choices."
    )
    continuous_usage_stats: bool | None = Field(
        default=False,
        description=(
            "vLLM's extension: with include_usage, every chunk also carries `usage` with the "
            "running counts (prompt tokens, and the tokens its choice generated so far)."
        ),
    )


class _SamplingRequest(BaseModel):
    """What completions and chat share; unknown fields are a 400 naming them, and so are NaN
    and Infinity (JSON has no such numbers; Python's parser reads them)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(description="Service name, as listed by GET /v1/models.")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, description="0 = greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    n: int = Field(default=1, ge=1, le=MAX_N, description="Independent choices.")
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="Choice i samples with seed + i."
    )
    stop: str | list[str] | None = Field(default=None, description="Up to 4 stop strings.")
    stream: bool = Field(default=False, description="Server-sent events when true.")
    stream_options: StreamOptions | None = None
    ignore_eos: bool = Field(default=False, description="Extension: keep going past EOS.")
    user: str | None = Field(default=None, description="Caller id; no effect on output.")
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("model", "stop", "user")
    @classmethod
    def _text(cls, v: Any, info: Any) -> Any:
        return _unicode_text(info.field_name, v)

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v: float | None, info: Any) -> float | None:
        return _neutral_only(info.field_name, v, (0, 0.0))

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v:
            raise ValueError("'logit_bias' is not supported by this server (only {} or null)")
        return v

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and v != {"type": "text"}:
            raise ValueError("only response_format {'type': 'text'} is supported")
        return v

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _SamplingRequest:
        if self.stream_options is not None and not self.stream:
            raise _FieldError(
                "stream_options", "stream_options is only allowed when stream is true"
            )
        return self

    @property
    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        """Usage on every chunk: vLLM's `continuous_usage_stats`, which (as in vLLM) takes
        effect only together with `include_usage`."""
        return self.include_usage and bool(
            self.stream_options and self.stream_options.continuous_usage_stats
        )


class CompletionRequest(_SamplingRequest):
    """Body of POST /v1/completions."""

    prompt: str | list[str] = Field(description="Prompt text; a list must hold exactly one string.")
    max_tokens: int = Field(default=16, ge=1, description="Tokens to generate, >= 1.")
    echo: bool = Field(default=False, description="Prepend the prompt to each choice's text.")
    logprobs: int | None = Field(
        default=None, ge=0, le=MAX_LOGPROBS, description="Top-k logprobs per generated token."
    )
    best_of: int | None = Field(default=None, ge=1, description="Accepted only equal to n.")
    suffix: str | None = Field(default=None, description="Accepted only empty.")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and len(v) != 1:
            raise ValueError("exactly one prompt per request is supported (batch on the client)")
        return _unicode_text("prompt", v)

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        return _neutral_only("suffix", _unicode_text("suffix", v), ("",))

    @model_validator(mode="after")
    def _checks(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise _FieldError("best_of", "best_of other than n is not supported")
        if self.echo and self.logprobs is not None:
            raise _FieldError("echo", "echo together with logprobs is not supported")
        return self

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return _unicode_text("text", v)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    @field_validator("content")
    @classmethod
    def _text(cls, v: str | list[TextPart]) -> str | list[TextPart]:
        return _unicode_text("content", v)

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(_SamplingRequest):
    """Body of POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, description="Deprecated alias.")
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="Tokens to generate; default: the rest of the context."
    )
    logprobs: bool = Field(default=False, description="Logprobs of the generated tokens.")
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)

    @model_validator(mode="after")
    def _checks(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise _FieldError("top_logprobs", "top_logprobs needs logprobs: true")
        if (
            self.max_tokens is not None
            and self.max_completion_tokens is not None
            and self.max_tokens != self.max_completion_tokens
        ):
            raise _FieldError("max_tokens", "max_tokens and max_completion_tokens disagree")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def max_tokens_param(self) -> str:
        """The limit's name as the client sent it, for an error that names it."""
        return "max_tokens" if self.max_completion_tokens is None else "max_completion_tokens"

    @property
    def logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class _FieldError(ValueError):
    """A cross-field check failing: carries the parameter to name in the 400."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "heteroscale"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def new_completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"


def new_chat_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def now_s() -> int:
    return int(time.time())


def completion_logprobs(entries: list[TokenLogprob], offsets: list[int]) -> dict[str, Any]:
    """The completions `logprobs` object: tokens, token_logprobs, top_logprobs, text_offset.

    Each `top_logprobs` dict holds the top-k tokens plus the sampled one (so up to k+1)."""
    tops = []
    for e in entries:
        top = {token_text(t): lp for t, lp in e.top}
        top.setdefault(token_text(e.token), e.logprob)
        tops.append(top)
    return {
        "tokens": [token_text(e.token) for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": tops,
        "text_offset": list(offsets),
    }


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    """The chat `logprobs` object: {"content": [{token, logprob, bytes, top_logprobs}]}."""

    def one(token: int, lp: float) -> dict[str, Any]:
        return {"token": token_text(token), "logprob": lp, "bytes": token_bytes(token)}

    return {
        "content": [
            {**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}
            for e in entries
        ]
    }


def error_body(
    message: str, *, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """The OpenAI error envelope: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
