"""OpenAI response formatting at the ingress: the JSON body and the server-sent events.

Why apart from router.py: the shape of what the client receives (completion or chat, whole or
streamed, with logprobs and usage as requested) is OpenAI's format, independent of how the
choices were produced; the ingress deployment hands the absorbed choices here.

A stream is: (chat only) one assistant-role chunk per choice, one chunk per absorbed decode
chunk that carries something, then with `include_usage` a last chunk with the request's usage
and no choices, then `[DONE]`. With `include_usage` every other chunk has `"usage": null`
(OpenAI's format), or with vLLM's `continuous_usage_stats` the running usage of its choice:
prompt tokens, the tokens that choice generated so far (0 in a role chunk) and their sum, as
vLLM sends it.
"""

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from heteroscale_ray.serving.api_types import Usage, chat_logprobs, completion_logprobs
from heteroscale_ray.serving.choices import _Choice, _Request
from heteroscale_ray.serving.decode import DecodeChunk


def usage_dict(choices: list[_Choice], ctx: _Request) -> dict[str, int]:
    """The OpenAI `usage` object of a request: its prompt and all its choices' tokens."""
    completion = sum(c.num_generated for c in choices)
    return Usage(
        prompt_tokens=ctx.prompt_tokens,
        completion_tokens=completion,
        total_tokens=ctx.prompt_tokens + completion,
    ).model_dump()


def choice_usage(c: _Choice | None, ctx: _Request) -> dict[str, int]:
    """Running usage of one choice (None: before it generated anything), for vLLM's
    `continuous_usage_stats`: the prompt and the tokens this choice generated so far."""
    completion = c.num_generated if c is not None else 0
    return Usage(
        prompt_tokens=ctx.prompt_tokens,
        completion_tokens=completion,
        total_tokens=ctx.prompt_tokens + completion,
    ).model_dump()


def completion_body(choices: list[_Choice], ctx: _Request) -> dict[str, Any]:
    """The non-streamed response body of a request whose choices are all absorbed."""
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
        "usage": usage_dict(choices, ctx),
    }
    return body


def sse_event(ctx: _Request, choices: list[dict[str, Any]], usage: Any = None) -> str:
    """One server-sent event of the stream (`usage` only when the request asked for it)."""
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


def role_events(choices: list[_Choice], ctx: _Request) -> list[str]:
    """Chat streams open with the assistant role, once per choice; completions send none."""
    if not ctx.chat:
        return []
    usage = choice_usage(None, ctx) if ctx.req.continuous_usage else None
    return [
        sse_event(
            ctx,
            [
                {
                    "index": c.index,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
            usage,
        )
        for c in choices
    ]


def usage_event(choices: list[_Choice], ctx: _Request) -> str | None:
    """The last chunk with `include_usage`: the whole request's usage and no choices."""
    return sse_event(ctx, [], usage_dict(choices, ctx)) if ctx.req.include_usage else None


def chunk_event(c: _Choice, chunk: DecodeChunk, ctx: _Request) -> str | None:
    """The SSE event for one chunk already absorbed into `c`, or None when it carries
    nothing to send."""
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
    return sse_event(ctx, [choice], choice_usage(c, ctx) if ctx.req.continuous_usage else None)


class ReleasingStream(StreamingResponse):
    """A server-sent-event stream that calls `close` however the response ends: sent in full,
    the client gone mid-stream, or gone before the first read. The body generator's own
    `finally` runs only once it has started, and a client that disconnects before starlette
    first reads it (or Serve cancelling the request while the headers wait) never starts it:
    the request's in-flight slots then stayed held for good, and enough such requests turned
    every later one away with 429. `close` must be idempotent (the generator's `finally` may
    run it too)."""

    def __init__(self, body: AsyncIterator[str], close: Callable[[], None]) -> None:
        super().__init__(body, media_type="text/event-stream")
        self._close = close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._close()
