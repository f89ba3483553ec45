"""FastAPI dependencies: what every route needs before it may talk to the engine.

- :func:`serve_context`: the app's config, engine backend and metrics (one per app, so several
  apps, e.g. unit tests, can live in one process);
- :func:`require_api_key`: the optional bearer token, on every ``/v1`` route;
- :func:`refine_plan` / :func:`chat_plan`: the request preamble (size limit, JSON parsing,
  validation into the request schema, model name, the server's limits) turned into a
  :class:`RunPlan`.

We parse the body ourselves instead of declaring a pydantic body parameter, so that every
failure (empty body, bad JSON, a JSON array, a wrong field) gets the same OpenAI-style 400
with one readable line, and the strict or lenient schema can be chosen by the server's config.
"""

from __future__ import annotations

import hmac
import json
import os
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from ptr_ray import prompts
from ptr_ray.config import SamplingConfig, ServeConfig
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

MAX_BODY_BYTES = 4 << 20


@dataclass
class ServeContext:
    """What the routes of one app share; kept on ``app.state.serve``."""

    cfg: ServeConfig
    backend: EngineBackend
    metrics: ServeMetrics
    api_key: str | None  # None: no auth
    created: int = field(default_factory=lambda: int(time.time()))
    engine_info: dict[str, Any] = field(default_factory=dict)  # filled by the first /v1/models

    @classmethod
    def build(cls, backend: EngineBackend, cfg: ServeConfig, api_key: str | None) -> ServeContext:
        """``api_key`` defaults to ``$cfg.api_key_env``; "" turns auth off."""
        key = (api_key if api_key is not None else os.environ.get(cfg.api_key_env)) or None
        return cls(
            cfg=cfg, backend=backend, metrics=ServeMetrics(cfg.served_model_name), api_key=key
        )


def serve_context(request: Request) -> ServeContext:
    return request.app.state.serve


Context = Annotated[ServeContext, Depends(serve_context)]


def require_api_key(request: Request, ctx: Context) -> None:
    """With a key configured, the request must carry ``Authorization: Bearer <key>``.

    Compared in constant time, so response timing does not leak how much of a guess matched.
    """
    if ctx.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), ctx.api_key.encode()
    ):
        raise APIError(
            401,
            "missing or wrong API key: send 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def parse_body(request: Request, model: type[BaseModel]) -> Any:
    """The body as ``model``, or a 4xx naming what is wrong with it."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise APIError(
            413, f"request body is larger than {MAX_BODY_BYTES} bytes", code="body_too_large"
        )
    if not raw.strip():
        raise APIError(400, "request body is empty; send a JSON object", code="invalid_json")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f": {e.msg} at position {e.pos}" if isinstance(e, json.JSONDecodeError) else ""
        raise APIError(400, f"request body is not valid JSON{where}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
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


def _capped(param: str, value: Any, default: Any, cap: Any) -> Any:
    """``value`` (or the server's default when unset), or a 400 naming the cap it exceeds."""
    got = default if value is None else value
    if got > cap:
        raise APIError(
            400,
            f"'{param}' is {got}, this server allows at most {cap}",
            param=param,
            code="invalid_value",
        )
    return got


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
    n = _capped(rounds_param, rounds, cfg.default_rounds, cfg.max_rounds)
    mt = _capped("max_tokens", max_tokens, cfg.default_max_tokens, cfg.max_tokens_cap)
    temp = _capped("temperature", temperature, cfg.default_temperature, cfg.max_temperature)
    sampling = SamplingConfig(
        max_tokens=mt, temperature=temp, top_p=1.0 if top_p is None else top_p, seed=seed, stop=stop
    )
    return n, sampling


async def refine_plan(request: Request, ctx: Context) -> RunPlan:
    """The preamble of ``POST /v1/refine``."""
    cfg = ctx.cfg
    body = await parse_body(request, RefineRequest if cfg.strict else LenientRefineRequest)
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
    return RunPlan(query, rounds, sampling, body.stream, body.stop_when_stable)


async def chat_plan(request: Request, ctx: Context) -> RunPlan:
    """The preamble of ``POST /v1/chat/completions``."""
    cfg = ctx.cfg
    body = await parse_body(
        request, ChatCompletionRequest if cfg.strict else LenientChatCompletionRequest
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
    return RunPlan(
        to_messages(body.messages),
        rounds,
        sampling,
        body.stream,
        body.stop_when_stable,
        include_usage,
    )


__all__ = [
    "MAX_BODY_BYTES",
    "Context",
    "RunPlan",
    "ServeContext",
    "chat_plan",
    "check_model",
    "parse_body",
    "refine_plan",
    "require_api_key",
    "resolve_limits",
    "serve_context",
]
