"""Request bodies of the serving API, validated with pydantic.

Each body has a strict variant (unknown fields are an error, so a typo such as ``round``
instead of ``rounds`` is reported instead of silently ignored) and a lenient one; the server's
``strict`` setting picks. Limits that depend on the server's config (``max_rounds``,
``max_tokens_cap``) are checked in :mod:`ptr_ray.serve.deps`, which knows the config.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ChatMessage(BaseModel):
    """An OpenAI chat message; content may be a string or a list of text parts."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str | list[dict[str, Any]]

    @field_validator("content")
    @classmethod
    def _text_only(cls, v: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        if isinstance(v, list):
            for part in v:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError(
                        "only text content parts ({'type': 'text', 'text': ...}) are supported"
                    )
        return v

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p["text"] for p in self.content)


def to_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.text()} for m in messages]


class _Sampling(BaseModel):
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_when_stable: bool = False
    stream: bool = False

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class RefineRequest(_Sampling):
    """``POST /v1/refine``: a query (or a chat prefix) refined over ``rounds`` rounds."""

    model_config = ConfigDict(extra="forbid")

    query: str | None = None
    messages: list[ChatMessage] | None = None
    rounds: int | None = Field(None, ge=1)
    model: str | None = None

    @model_validator(mode="after")
    def _one_input(self) -> RefineRequest:
        if (self.query is None) == (self.messages is None):
            raise ValueError("give exactly one of 'query' or 'messages'")
        if self.query is not None and not self.query.strip():
            raise ValueError("'query' is empty")
        if self.messages is not None:
            _check_messages(self.messages)
        return self


class LenientRefineRequest(RefineRequest):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``: OpenAI's body plus ``refinement_rounds``."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    messages: list[ChatMessage]
    refinement_rounds: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float = Field(0.0, ge=0, le=0, description="not supported: 0 only")
    frequency_penalty: float = Field(0.0, ge=0, le=0, description="not supported: 0 only")

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        _check_messages(self.messages)
        return self

    def effective_max_tokens(self) -> int | None:
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )


class LenientChatCompletionRequest(ChatCompletionRequest):
    model_config = ConfigDict(extra="ignore")


def _check_messages(messages: list[ChatMessage]) -> None:
    if not messages:
        raise ValueError("'messages' is empty")
    if messages[-1].role != "user":
        raise ValueError("the last message must come from the user")
    if not messages[-1].text().strip():
        raise ValueError("the last user message is empty")
