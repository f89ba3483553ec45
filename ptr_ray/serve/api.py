"""The FastAPI app: /v1/refine, /v1/chat/completions, /v1/models, /healthz, and the API's
own documentation (/openapi.json, /docs, /redoc), which needs the key like every route but
/healthz when auth is on.

Routes talk to the engine only through an :class:`~ptr_ray.serve.session.EngineBackend` (in
Serve: a DeploymentHandle to the vLLM engine deployment; in unit tests: a fake), so the app
also runs without Ray. A route is three steps, each in its own module: its dependencies
(:mod:`ptr_ray.serve.deps`: auth, body, limits) give it a validated plan; a
:class:`~ptr_ray.serve.session.Session` runs the rounds; :mod:`ptr_ray.serve.chunks` writes
them as SSE or JSON.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from ptr_ray.config import ServeConfig
from ptr_ray.serve import chunks
from ptr_ray.serve.deps import (
    Context,
    RunPlan,
    ServeContext,
    chat_plan,
    concurrency_slot,
    refine_plan,
    require_api_key,
)
from ptr_ray.serve.errors import APIError, install_error_handlers
from ptr_ray.serve.schemas import ErrorResponse, openapi_components
from ptr_ray.serve.session import EngineBackend, RunEnd, Session, refine_events

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 10.0

probes = APIRouter()  # no auth: load balancers and Kubernetes probe without a token
v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
docs = APIRouter(dependencies=[Depends(require_api_key)], include_in_schema=False)

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in {
        400: "bad request: a field, the JSON, or a limit of this server (named in the message)",
        401: "missing or wrong API key",
        404: "unknown model",
        413: "body larger than max_body_bytes",
        429: "too many requests in flight for this key (max_concurrent_per_key)",
        503: "overloaded or the engine is unavailable; retry",
        504: "request_timeout_s passed",
    }.items()
}


def _body(component: str) -> dict[str, Any]:
    """The ``openapi_extra`` that documents a route's JSON body (read by hand, see deps)."""
    ref = {"$ref": f"#/components/schemas/{component}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


@probes.get("/healthz", responses={503: _ERRORS[503]})
async def healthz(ctx: Context) -> JSONResponse:
    """200 when the engine answers its health check, else 503. Says nothing about why:
    the probe needs no key, so exception text (paths, hosts) stays in the server's log."""
    try:
        await asyncio.wait_for(ctx.backend.health(), HEALTH_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - any failure means "not healthy"
        log.warning("health check failed: %s: %s", type(e).__name__, e)
        return APIError(503, "engine is not healthy", code="engine_unavailable").response()
    return JSONResponse({"status": "ok", "model": ctx.cfg.served_model_name})


@docs.get("/openapi.json")
async def openapi_json(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


def _openapi_url(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/") + "/openapi.json"


@docs.get("/docs")
async def swagger_docs(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url=_openapi_url(request), title="ptr-ray API")


@docs.get("/redoc")
async def redoc_docs(request: Request) -> HTMLResponse:
    return get_redoc_html(openapi_url=_openapi_url(request), title="ptr-ray API")


@v1.get("/models", responses={401: _ERRORS[401]})
async def list_models(ctx: Context) -> JSONResponse:
    cfg = ctx.cfg
    if not ctx.engine_info:  # the engine's model does not change while the app lives
        ctx.engine_info.update(await ctx.backend.info())
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {
                    "id": cfg.served_model_name,
                    "object": "model",
                    "created": ctx.created,
                    "owned_by": "ptr-ray",
                    "root": ctx.engine_info.get("model_path"),
                    "max_model_len": ctx.engine_info.get("max_model_len"),
                    "max_rounds": cfg.max_rounds,
                    "default_rounds": cfg.default_rounds,
                }
            ],
        }
    )


async def _start(ctx: ServeContext, plan: RunPlan, rid: str) -> Session:
    events = refine_events(
        ctx.backend,
        plan.query,
        plan.rounds,
        plan.sampling,
        ctx.cfg,
        plan.stop_when_stable,
        rid,
        ctx.metrics,
        deltas=plan.stream,
    )
    return await Session.start(events)


def _stream(body: AsyncIterator[bytes], rid: str) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={**chunks.SSE_HEADERS, "X-PTR-Request-Id": rid},
    )


def _post_doc(component: str) -> dict[str, Any]:
    return {
        "openapi_extra": _body(component),
        "responses": {
            200: {
                "description": "the run as one JSON body, or server-sent events with "
                "'stream': true",
                "content": {"application/json": {}, "text/event-stream": {}},
            },
            **_ERRORS,
        },
        "dependencies": [Depends(concurrency_slot)],
    }


@v1.post("/refine", **_post_doc("RefineRequest"))
async def refine(ctx: Context, plan: Annotated[RunPlan, Depends(refine_plan)]) -> Response:
    """Refine a query (or a chat) over N rounds: every round, the final answer, usage."""
    rid = f"refine-{uuid.uuid4().hex[:16]}"
    session = await _start(ctx, plan, rid)
    ctx.metrics.request("refine", 200)
    if plan.stream:
        return _stream(chunks.refine_stream(rid, session), rid)
    done, end = await session.collect()
    return JSONResponse(
        chunks.refinement(rid, ctx.cfg.served_model_name, done, end),
        headers={"X-PTR-Request-Id": rid},
    )


@v1.post("/chat/completions", **_post_doc("ChatCompletionRequest"))
async def chat_completions(ctx: Context, plan: Annotated[RunPlan, Depends(chat_plan)]) -> Response:
    """OpenAI chat completions; ``refinement_rounds`` rounds, the last one is the answer."""
    rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    session = await _start(ctx, plan, rid)
    ctx.metrics.request("chat", 200)
    now = int(time.time())
    model = ctx.cfg.served_model_name
    if plan.stream:
        return _stream(
            chunks.chat_stream(rid, now, model, plan.rounds, plan.include_usage, session), rid
        )
    done, end = await session.collect()
    return JSONResponse(
        chunks.chat_completion(rid, now, model, done, end), headers={"X-PTR-Request-Id": rid}
    )


def create_app(
    backend: EngineBackend,
    cfg: ServeConfig,
    api_key: str | None = None,
    bind_host: str | None = None,
) -> FastAPI:
    """The FastAPI app over ``backend``.

    ``api_key`` defaults to ``$cfg.api_key_env`` (several keys: comma-separated); with a key,
    every route but /healthz needs ``Authorization: Bearer <key>``. ``bind_host`` is the
    address the HTTP server listens on (default ``cfg.host``): without a key, a non-loopback
    one raises :class:`~ptr_ray.serve.auth.AuthConfigError` unless ``cfg.auth`` is ``off``
    (see :func:`~ptr_ray.serve.auth.resolve_auth`).
    """
    ctx = ServeContext.build(backend, cfg, api_key, bind_host)
    # FastAPI's own /docs, /redoc and /openapi.json would be open to anyone: ours (the docs
    # router) sit behind the same key as the API.
    app = FastAPI(
        title="ptr-ray",
        description="Progressive Thought Refinement serving: every request is refined over N "
        "rounds. Errors are OpenAI-style JSON (ErrorResponse).",
        version="0.1.0",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.state.serve = ctx
    app.state.metrics = ctx.metrics
    app.state.backend = backend
    app.include_router(probes)
    app.include_router(v1)
    app.include_router(docs)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(openapi_components(cfg))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


__all__ = ["EngineBackend", "RunEnd", "create_app", "refine_events"]
