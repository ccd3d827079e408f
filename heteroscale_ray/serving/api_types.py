"""OpenAI-shaped request/response models for the ingress, plus the OpenAI error envelope.

Only the `/v1/completions` fields this engine can honour are modelled; unknown fields are
ignored (as OpenAI-compatible servers commonly do) so stock clients keep working.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class CompletionRequest(BaseModel):
    """Body of POST /v1/completions."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="Service name, as listed by GET /v1/models.")
    prompt: str | list[str] = Field(description="Prompt text; a list must hold exactly one string.")
    max_tokens: int = Field(default=16, ge=1, description="Tokens to generate, >= 1.")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, description="0 = greedy.")
    seed: int | None = Field(default=None, description="Seed for temperature sampling.")
    stop: str | list[str] | None = Field(default=None, description="Up to 4 stop strings.")
    stream: bool = Field(default=False, description="Server-sent events when true.")
    ignore_eos: bool = Field(default=False, description="Extension: keep going past EOS.")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and len(v) != 1:
            raise ValueError("exactly one prompt per request is supported (batch on the client)")
        return v

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    @property
    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    text: str
    index: int = 0
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class CompletionResponse(BaseModel):
    """Non-streaming response, and (with `usage=None`) one SSE chunk of a streaming one."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


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


def error_body(
    message: str, *, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """The OpenAI error envelope: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
