"""The FastAPI app: /v1/refine, /v1/chat/completions, /v1/models, /healthz.

Routes talk to the engine only through an :class:`~ptr_ray.serve.session.EngineBackend` (in
Serve: a DeploymentHandle to the vLLM engine deployment; in unit tests: a fake), so the app
also runs without Ray. A route is three steps, each in its own module: its dependencies
(:mod:`ptr_ray.serve.deps`: auth, body, limits) give it a validated plan; a
:class:`~ptr_ray.serve.session.Session` runs the rounds; :mod:`ptr_ray.serve.chunks` writes
them as SSE or JSON.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ptr_ray.config import ServeConfig
from ptr_ray.serve import chunks
from ptr_ray.serve.deps import (
    Context,
    RunPlan,
    ServeContext,
    chat_plan,
    refine_plan,
    require_api_key,
)
from ptr_ray.serve.errors import APIError, install_error_handlers
from ptr_ray.serve.session import EngineBackend, RunEnd, Session, refine_events

HEALTH_TIMEOUT_S = 10.0

probes = APIRouter()  # no auth: load balancers and Kubernetes probe without a token
v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


@probes.get("/healthz")
async def healthz(ctx: Context) -> JSONResponse:
    try:
        await asyncio.wait_for(ctx.backend.health(), HEALTH_TIMEOUT_S)
    except APIError as e:
        return e.response()
    except Exception as e:  # noqa: BLE001 - any failure means "not healthy"
        return APIError(
            503, f"engine is not healthy: {type(e).__name__}: {e}", code="engine_unavailable"
        ).response()
    return JSONResponse({"status": "ok", "model": ctx.cfg.served_model_name})


@v1.get("/models")
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


@v1.post("/refine")
async def refine(ctx: Context, plan: Annotated[RunPlan, Depends(refine_plan)]) -> Response:
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


@v1.post("/chat/completions")
async def chat_completions(ctx: Context, plan: Annotated[RunPlan, Depends(chat_plan)]) -> Response:
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


def create_app(backend: EngineBackend, cfg: ServeConfig, api_key: str | None = None) -> FastAPI:
    """The FastAPI app over ``backend``. ``api_key`` defaults to ``$cfg.api_key_env``; when it
    is non-empty, every /v1 route needs ``Authorization: Bearer <key>`` ("" turns auth off)."""
    app = FastAPI(
        title="ptr-ray", description="Progressive Thought Refinement serving", version="0.1.0"
    )
    install_error_handlers(app)
    ctx = ServeContext.build(backend, cfg, api_key)
    app.state.serve = ctx
    app.state.metrics = ctx.metrics
    app.state.backend = backend
    app.include_router(probes)
    app.include_router(v1)
    return app


__all__ = ["EngineBackend", "RunEnd", "create_app", "refine_events"]
