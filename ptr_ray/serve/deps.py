"""FastAPI dependencies: what every route needs before it may talk to the engine.

- :func:`serve_context`: the app's config, engine backend and metrics (one per app, so several
  apps, e.g. unit tests, can live in one process);
- :func:`require_api_key`: the bearer token (:mod:`ptr_ray.serve.auth` decides whether one is
  needed), on every route but ``/healthz``;
- :func:`concurrency_slot`: the optional cap on one caller's requests in flight;
- :func:`refine_plan` / :func:`chat_plan`: the request preamble (size limits, JSON parsing,
  validation into the request schema, model name, the server's limits) turned into a
  :class:`RunPlan`.

We parse the body ourselves instead of declaring a pydantic body parameter, so that auth is
checked before a byte of the body is read, the read is capped (:mod:`ptr_ray.serve.body`),
every failure (empty body, bad JSON, a JSON array, a nesting bomb, a wrong field) gets the
same OpenAI-style 400 with one readable line, and the strict or lenient schema can be chosen
by the server's config. The routes still publish their bodies in the OpenAPI schema
(:func:`ptr_ray.serve.schemas.openapi_components`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError

from ptr_ray import prompts
from ptr_ray.config import SamplingConfig, ServeConfig
from ptr_ray.serve.auth import KeySlots, check_key, resolve_auth
from ptr_ray.serve.body import parse_json, read_capped
from ptr_ray.serve.errors import APIError, validation_error
from ptr_ray.serve.metrics import ServeMetrics
from ptr_ray.serve.schemas import (
    ChatCompletionRequest,
    LenientChatCompletionRequest,
    LenientRefineRequest,
    RefineRequest,
    to_messages,
)
from ptr_ray.serve.session import EngineBackend


@dataclass
class ServeContext:
    """What the routes of one app share; kept on ``app.state.serve``."""

    cfg: ServeConfig
    backend: EngineBackend
    metrics: ServeMetrics
    keys: tuple[str, ...]  # empty: no auth
    slots: KeySlots
    created: int = field(default_factory=lambda: int(time.time()))
    engine_info: dict[str, Any] = field(default_factory=dict)  # filled by the first /v1/models

    @classmethod
    def build(
        cls,
        backend: EngineBackend,
        cfg: ServeConfig,
        api_key: str | None = None,
        bind_host: str | None = None,
    ) -> ServeContext:
        """``api_key`` defaults to ``$cfg.api_key_env``; see :func:`~ptr_ray.serve.auth.resolve_auth`
        (raises :class:`~ptr_ray.serve.auth.AuthConfigError` where a key is needed and missing)."""
        return cls(
            cfg=cfg,
            backend=backend,
            metrics=ServeMetrics(cfg.served_model_name),
            keys=resolve_auth(cfg, api_key, bind_host),
            slots=KeySlots(cfg.max_concurrent_per_key),
        )


def serve_context(request: Request) -> ServeContext:
    return request.app.state.serve


Context = Annotated[ServeContext, Depends(serve_context)]

# Declared for the OpenAPI schema (generated clients learn the scheme); the check is ours.
_bearer = HTTPBearer(
    auto_error=False, description="'Authorization: Bearer <key>' when the server has auth on"
)


def require_api_key(
    request: Request,
    ctx: Context,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """With auth on, the request must carry ``Authorization: Bearer <key>`` for one of the
    keys. Records the caller (the key, or the client address without auth) for
    :func:`concurrency_slot`."""
    if not ctx.keys:
        request.state.caller = f"addr:{request.client.host if request.client else '?'}"
        return
    key = check_key(request.headers.get("authorization", ""), ctx.keys)
    if key is None:
        raise APIError(
            401,
            "missing or wrong API key: send 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    request.state.caller = f"key:{key}"


async def concurrency_slot(request: Request, ctx: Context) -> AsyncIterator[None]:
    """Hold one of the caller's ``max_concurrent_per_key`` slots until the response (a
    stream included) is finished; beyond the cap, a 429."""
    caller = getattr(request.state, "caller", "?")
    if not ctx.slots.acquire(caller):
        raise APIError(
            429,
            f"too many requests in flight for this API key: at most "
            f"{ctx.cfg.max_concurrent_per_key} at once (max_concurrent_per_key)",
            code="limit_exceeded",
            headers={"Retry-After": "1"},
        )
    try:
        yield
    finally:
        ctx.slots.release(caller)


async def parse_body(request: Request, model: type[BaseModel], cfg: ServeConfig) -> Any:
    """The body as ``model``, or a 4xx naming what is wrong with it (or the limit it breaks)."""
    raw = await read_capped(
        request.headers.get("content-length"), request.stream(), cfg.max_body_bytes
    )
    data = parse_json(raw, cfg.max_json_depth)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from None


@dataclass(frozen=True)
class RunPlan:
    """A validated request, reduced to what a refinement session needs."""

    query: prompts.Query
    rounds: int
    sampling: SamplingConfig
    stream: bool
    stop_when_stable: bool
    include_usage: bool = False  # chat streams only: OpenAI's stream_options.include_usage


def check_model(cfg: ServeConfig, name: str | None) -> None:
    """Clients may name the served model or the engine's model; anything else is a 404."""
    if name is not None and name not in {cfg.served_model_name, cfg.engine.model}:
        raise APIError(
            404,
            f"model '{name}' is not served here; GET /v1/models lists '{cfg.served_model_name}'",
            param="model",
            code="model_not_found",
        )


def _limit(param: str, message: str, limit: str) -> APIError:
    return APIError(400, f"{message} ({limit})", param=param, code="limit_exceeded")


def _capped(param: str, value: Any, default: Any, cap: Any, limit: str) -> Any:
    """``value`` (or the server's default when unset), or a 400 naming the cap it exceeds."""
    got = default if value is None else value
    if got > cap:
        raise _limit(param, f"'{param}' is {got}, this server allows at most {cap}", limit)
    return got


def check_stop(cfg: ServeConfig, stop: list[str]) -> None:
    """At most ``max_stop_sequences`` non-empty entries of at most ``max_stop_chars`` each:
    every entry is matched against every generated token."""
    if len(stop) > cfg.max_stop_sequences:
        raise _limit(
            "stop",
            f"'stop' has {len(stop)} entries, this server allows at most {cfg.max_stop_sequences}",
            "max_stop_sequences",
        )
    for s in stop:
        if not s:
            raise APIError(400, "'stop' entries must not be empty", "stop", "invalid_value")
        if len(s) > cfg.max_stop_chars:
            raise _limit(
                "stop",
                f"a 'stop' entry has {len(s)} characters, this server allows at most "
                f"{cfg.max_stop_chars}",
                "max_stop_chars",
            )


def check_prompt(cfg: ServeConfig, query: prompts.Query, param: str) -> None:
    """The prompt's size before any templating or tokenizing is spent on it."""
    if isinstance(query, str):
        chars = len(query)
    else:
        if len(query) > cfg.max_messages:
            raise _limit(
                param,
                f"'{param}' has {len(query)} messages, this server allows at most "
                f"{cfg.max_messages}",
                "max_messages",
            )
        chars = sum(len(m["content"]) for m in query)
    if chars > cfg.max_prompt_chars:
        raise _limit(
            param,
            f"the prompt has {chars} characters, this server allows at most {cfg.max_prompt_chars}",
            "max_prompt_chars",
        )


def resolve_limits(
    cfg: ServeConfig,
    rounds: int | None,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    seed: int | None,
    stop: list[str],
    rounds_param: str,
) -> tuple[int, SamplingConfig]:
    """Fill in the server's defaults and enforce its caps (the schemas cannot: they are
    config-independent). ``rounds_param`` names the rounds field in the error message."""
    n = _capped(rounds_param, rounds, cfg.default_rounds, cfg.max_rounds, "max_rounds")
    mt = _capped(
        "max_tokens", max_tokens, cfg.default_max_tokens, cfg.max_tokens_cap, "max_tokens_cap"
    )
    temp = _capped(
        "temperature",
        temperature,
        cfg.default_temperature,
        cfg.max_temperature,
        "max_temperature",
    )
    if n * mt > cfg.max_total_tokens:
        raise _limit(
            "max_tokens",
            f"{rounds_param} x max_tokens is {n} x {mt} = {n * mt}, this server allows at most "
            f"{cfg.max_total_tokens} tokens per request",
            "max_total_tokens",
        )
    check_stop(cfg, stop)
    sampling = SamplingConfig(
        max_tokens=mt, temperature=temp, top_p=1.0 if top_p is None else top_p, seed=seed, stop=stop
    )
    return n, sampling


async def refine_plan(request: Request, ctx: Context) -> RunPlan:
    """The preamble of ``POST /v1/refine``."""
    cfg = ctx.cfg
    body = await parse_body(request, RefineRequest if cfg.strict else LenientRefineRequest, cfg)
    check_model(cfg, body.model)
    rounds, sampling = resolve_limits(
        cfg,
        body.rounds,
        body.max_tokens,
        body.temperature,
        body.top_p,
        body.seed,
        body.stop_list(),
        "rounds",
    )
    query: prompts.Query = body.query if body.query is not None else to_messages(body.messages)
    check_prompt(cfg, query, "query" if body.query is not None else "messages")
    return RunPlan(query, rounds, sampling, body.stream, body.stop_when_stable)


async def chat_plan(request: Request, ctx: Context) -> RunPlan:
    """The preamble of ``POST /v1/chat/completions``."""
    cfg = ctx.cfg
    body = await parse_body(
        request, ChatCompletionRequest if cfg.strict else LenientChatCompletionRequest, cfg
    )
    check_model(cfg, body.model)
    rounds, sampling = resolve_limits(
        cfg,
        body.refinement_rounds,
        body.effective_max_tokens(),
        body.temperature,
        body.top_p,
        body.seed,
        body.stop_list(),
        "refinement_rounds",
    )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    messages = to_messages(body.messages)
    check_prompt(cfg, messages, "messages")
    return RunPlan(
        messages,
        rounds,
        sampling,
        body.stream,
        body.stop_when_stable,
        include_usage,
    )


__all__ = [
    "Context",
    "RunPlan",
    "ServeContext",
    "chat_plan",
    "check_model",
    "check_prompt",
    "check_stop",
    "concurrency_slot",
    "parse_body",
    "refine_plan",
    "require_api_key",
    "resolve_limits",
    "serve_context",
]
