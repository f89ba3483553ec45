"""Request bodies of the serving API, validated with pydantic.

Each body has a strict variant (unknown fields are an error, so a typo such as ``round``
instead of ``rounds`` is reported instead of silently ignored) and a lenient one; the server's
``strict`` setting picks. Types are strict in both (``"3"`` is not a number, ``1`` is not a
boolean), so the API accepts exactly what its published schema says. Limits that depend on the
server's config (``max_rounds``, ``max_tokens_cap``, ...) are checked in
:mod:`ptr_ray.serve.deps`, which knows the config, and written into the published schema by
:func:`openapi_components`, so generated clients and schema-driven tools see them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import models_json_schema

if TYPE_CHECKING:
    from ptr_ray.config import ServeConfig

INT64_MAX = 2**63 - 1


class ChatMessage(BaseModel):
    """An OpenAI chat message; content may be a string or a list of text parts."""

    model_config = ConfigDict(extra="ignore", strict=True)

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
    model_config = ConfigDict(strict=True)

    max_tokens: int | None = Field(None, ge=1, description="tokens per round (server default)")
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=-INT64_MAX - 1, le=INT64_MAX)
    stop: str | list[str] | None = Field(None, description="stop sequence(s), non-empty")
    stop_when_stable: bool = Field(
        False, description="end early once a round repeats the previous answer"
    )
    stream: bool = Field(False, description="answer with server-sent events")

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class RefineRequest(_Sampling):
    """``POST /v1/refine``: a query (or a chat prefix) refined over ``rounds`` rounds."""

    model_config = ConfigDict(extra="forbid", strict=True)

    query: str | None = Field(None, description="the question; give this or 'messages'")
    messages: list[ChatMessage] | None = Field(
        None, description="a chat that ends with a user message; give this or 'query'"
    )
    rounds: int | None = Field(None, ge=1, description="refinement rounds (server default)")
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
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``: OpenAI's body plus ``refinement_rounds``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    messages: list[ChatMessage] = Field(description="ends with a user message")
    refinement_rounds: int | None = Field(
        None, ge=1, description="refinement rounds (server default); the last is the answer"
    )
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
    model_config = ConfigDict(extra="ignore", strict=True)


def _check_messages(messages: list[ChatMessage]) -> None:
    if not messages:
        raise ValueError("'messages' is empty")
    if messages[-1].role != "user":
        raise ValueError("the last message must come from the user")
    if not messages[-1].text().strip():
        raise ValueError("the last user message is empty")


class ErrorInfo(BaseModel):
    message: str = Field(description="one line naming the field or limit")
    type: str = Field(description="invalid_request_error, authentication_error, ...")
    param: str | None = Field(None, description="the offending field, if any")
    code: str | None = Field(None, description="invalid_value, limit_exceeded, ...")


class ErrorResponse(BaseModel):
    """Every error the API answers (OpenAI's shape, so OpenAI SDKs raise their usual errors)."""

    error: ErrorInfo


def _branches(prop: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The sub-schemas of ``prop`` (itself or its ``anyOf`` members) of JSON type ``kind``."""
    return [b for b in prop.get("anyOf", [prop]) if b.get("type") == kind]


def _cap(props: dict[str, Any], name: str, kind: str, **limits: Any) -> None:
    for branch in _branches(props[name], kind):
        branch.update(limits)


def openapi_components(cfg: ServeConfig) -> dict[str, dict[str, Any]]:
    """JSON schemas of the request bodies this server takes (strict or lenient, per
    ``cfg.strict``, under one name either way) and of its error body, with the server's limits written in (maximum
    rounds, max_tokens, stop and prompt sizes, the model names), keyed by component name."""
    refine, chat = (
        (RefineRequest, ChatCompletionRequest)
        if cfg.strict
        else (LenientRefineRequest, LenientChatCompletionRequest)
    )
    _, top = models_json_schema(
        [(refine, "validation"), (chat, "validation"), (ErrorResponse, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    defs: dict[str, dict[str, Any]] = top["$defs"]
    for model, name in ((refine, "RefineRequest"), (chat, "ChatCompletionRequest")):
        defs[name] = defs.pop(model.__name__)  # the routes refer to one name in both modes
    names = sorted({cfg.served_model_name, cfg.engine.model})
    budget = (
        f" This server: rounds x max_tokens <= {cfg.max_total_tokens} (max_total_tokens), "
        f"at most {cfg.max_prompt_chars} prompt characters (max_prompt_chars) and "
        f"{cfg.max_messages} messages (max_messages), a body of at most {cfg.max_body_bytes} "
        f"bytes (max_body_bytes) nested at most {cfg.max_json_depth} deep (max_json_depth)."
    )
    for name, rounds_field in (
        ("RefineRequest", "rounds"),
        ("ChatCompletionRequest", "refinement_rounds"),
    ):
        schema = defs[name]
        schema["description"] = (schema.get("description") or "") + budget
        props = schema["properties"]
        _cap(props, rounds_field, "integer", maximum=cfg.max_rounds)
        for name in ("max_tokens", "max_completion_tokens"):
            if name in props:
                _cap(props, name, "integer", maximum=cfg.max_tokens_cap)
        _cap(props, "temperature", "number", maximum=cfg.max_temperature)
        stop_item = {"minLength": 1, "maxLength": cfg.max_stop_chars}
        _cap(props, "stop", "string", **stop_item)
        _cap(props, "stop", "array", maxItems=cfg.max_stop_sequences)
        for branch in _branches(props["stop"], "array"):
            branch["items"].update(stop_item)
        _cap(props, "model", "string", enum=names)
        _cap(props, "messages", "array", minItems=1, maxItems=cfg.max_messages)
    _cap(
        defs["RefineRequest"]["properties"],
        "query",
        "string",
        maxLength=cfg.max_prompt_chars,
        pattern=r"\S",
    )
    content = defs["ChatMessage"]["properties"]
    _cap(content, "content", "string", maxLength=cfg.max_prompt_chars)
    text_part = {
        "type": "object",
        "properties": {
            "type": {"const": "text"},
            "text": {"type": "string", "maxLength": cfg.max_prompt_chars},
        },
        "required": ["type", "text"],
    }
    _cap(content, "content", "array", items=text_part)
    return defs
