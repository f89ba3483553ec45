"""Ray Serve side: the vLLM engine deployment, the FastAPI ingress deployment, the app builder
for serve config files (``import_path: ptr_ray.serve.app:build_app``) and ``ptr-ray serve``.

The engine runs in its own deployment so it scales (and is replaced after a crash) on its own,
and so several ingress replicas can share one batched engine. The ingress reaches it through a
DeploymentHandle; token deltas come back through ``handle.options(stream=True)``.
``max_ongoing_requests`` / ``max_queued_requests`` on both deployments bound the work in
flight: beyond them Serve answers 503 at once instead of letting requests pile up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from ptr_ray.config import (
    EngineConfig,
    SamplingConfig,
    ServeConfig,
)
from ptr_ray.serve.api import create_app
from ptr_ray.serve.config_file import ENGINE_DEPLOYMENT_NAME, INGRESS_DEPLOYMENT_NAME
from ptr_ray.serve.errors import APIError
from ptr_ray.serve.metrics import EngineMetrics

log = logging.getLogger(__name__)

DELTA_FLUSH_S = 0.02  # streamed token deltas are sent at most this often per round


@serve.deployment(name=ENGINE_DEPLOYMENT_NAME)
class EngineDeployment:
    """One vLLM ``AsyncLLM`` (prefix caching on) per replica; requests are batched by vLLM."""

    # An async constructor (Serve awaits it), so loading the model does not block the replica.
    async def __init__(self, engine_cfg: dict[str, Any]) -> None:  # type: ignore[misc]
        from ptr_ray.engine import AsyncVLLMEngine

        self.engine = AsyncVLLMEngine(EngineConfig.model_validate(engine_cfg))
        # Operators (and the integration tests, from outside) see on Ray's metrics endpoint
        # that a disconnected client's rounds really stopped.
        self.metrics = EngineMetrics()

    async def stream(
        self,
        messages: list[dict[str, str]],
        sampling: dict[str, Any],
        request_id: str,
        deltas: bool = True,
    ) -> AsyncIterator[dict[str, Any]]:
        """Token deltas (if ``deltas``), then the round's result (see session.EngineBackend).

        Every streamed item is a Ray object crossing processes, so deltas are coalesced into
        at most one item per DELTA_FLUSH_S, and a caller that does not stream asks for none.
        """
        from ptr_ray.engine import Generation, PromptTooLongError

        self.metrics.started()
        outcome = "cancelled"  # unless the round ends: the caller closed the stream
        pending: list[str] = []
        last_flush = time.monotonic()
        try:
            async for item in self.engine.stream(
                messages, SamplingConfig.model_validate(sampling), request_id
            ):
                if isinstance(item, Generation):
                    if pending:
                        yield {"type": "delta", "text": "".join(pending)}
                    c = item.completions[0]
                    outcome = "finished"
                    yield {
                        "type": "result",
                        "text": c.text,
                        "tokens": c.tokens,
                        "finish_reason": c.finish_reason,
                        "prompt_tokens": item.prompt_tokens,
                        "cached_tokens": item.cached_tokens,
                        "latency_s": item.latency_s,
                    }
                elif deltas:
                    pending.append(item)
                    now = time.monotonic()
                    if now - last_flush >= DELTA_FLUSH_S:
                        yield {"type": "delta", "text": "".join(pending)}
                        pending.clear()
                        last_flush = now
        except PromptTooLongError as e:
            outcome = "rejected"
            yield {
                "type": "error",
                "status": 400,
                "code": "context_length_exceeded",
                "message": str(e),
            }
        finally:
            self.metrics.ended(outcome)

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/models`` reports about the engine."""
        return {
            "model_path": self.engine.model_path,
            "max_model_len": self.engine.max_model_len,
            "prefix_caching": self.engine.cfg.enable_prefix_caching,
        }

    async def check_health(self) -> None:
        """Serve calls this periodically; a dead engine core makes Serve replace the replica."""
        await self.engine.check_health()

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


class HandleBackend:
    """The ingress's view of the engine deployment (ptr_ray.serve.session.EngineBackend)."""

    def __init__(self, handle: DeploymentHandle, first_item_timeout_s: float = 60.0) -> None:
        self.handle = handle
        self._streaming = handle.options(stream=True)
        self.first_item_timeout_s = first_item_timeout_s

    async def stream(
        self,
        messages: list[dict[str, str]],
        sampling: dict[str, Any],
        request_id: str,
        deltas: bool = True,
    ) -> AsyncIterator[dict[str, Any]]:
        """Items of one round. The first must come within ``first_item_timeout_s``: a request
        that meets no live engine replica (one is being replaced) gets a 503, not a hang."""
        gen = self._streaming.stream.remote(messages, sampling, request_id, deltas)
        finished = False
        try:
            it = gen.__aiter__()
            try:
                first = await asyncio.wait_for(it.__anext__(), self.first_item_timeout_s)
            except StopAsyncIteration:
                first = None
            except TimeoutError:
                raise APIError(
                    503,
                    f"the engine did not start the round within "
                    f"{self.first_item_timeout_s:.0f}s (overloaded or restarting); "
                    "retry",
                    code="engine_unavailable",
                    headers={"Retry-After": "5"},
                ) from None
            if first is not None:
                yield first
                async for item in it:
                    yield item
            finished = True
        except APIError:
            raise
        except Exception as e:  # noqa: BLE001 - mapped to a 503 the client can retry
            raise _unavailable(e) from e
        finally:
            if not finished:
                gen.cancel()  # client gone or error: stop the engine's work on this round

    async def info(self) -> dict[str, Any]:
        try:
            return await self.handle.info.remote()
        except Exception as e:  # noqa: BLE001
            raise _unavailable(e) from e

    async def health(self) -> None:
        try:
            await self.handle.check_health.remote()
        except Exception as e:  # noqa: BLE001
            raise _unavailable(e) from e


def _unavailable(e: BaseException) -> APIError:
    from ray.serve.exceptions import BackPressureError

    if isinstance(e, APIError):
        return e
    if isinstance(e, BackPressureError):
        return APIError(
            503,
            f"the engine is overloaded ({e.message}); retry later",
            code="overloaded",
            headers={"Retry-After": "1"},
        )
    log.warning("engine call failed: %s: %s", type(e).__name__, e)
    return APIError(
        503,
        f"the engine is unavailable ({type(e).__name__}); retry shortly",
        code="engine_unavailable",
        headers={"Retry-After": "2"},
    )


@serve.deployment(name=INGRESS_DEPLOYMENT_NAME)
@serve.ingress()
class IngressDeployment:
    """The FastAPI app (ptr_ray.serve.api), built inside each replica around the handle.

    Built in ``__serve_build_asgi_app__`` rather than at import time, so each replica's app
    holds its own handle and metrics."""

    def __init__(self, engine: DeploymentHandle, settings: dict[str, Any]) -> None:
        self.cfg = ServeConfig.model_validate(settings)
        self.backend = HandleBackend(engine, self.cfg.engine_timeout_s)

    def __serve_build_asgi_app__(self):
        return create_app(self.backend, self.cfg)


def build_application(cfg: ServeConfig):
    """The Serve application (ingress bound to the engine) for a validated config."""
    eng_opts = cfg.engine_deployment.serve_options()
    actor = {"num_cpus": cfg.engine.num_cpus, "num_gpus": cfg.engine.num_gpus}
    actor.update(eng_opts.get("ray_actor_options") or {})
    eng_opts["ray_actor_options"] = actor
    # @serve.deployment turned the classes into Deployments; mypy ignores class decorators.
    engine_dep = EngineDeployment.options(**eng_opts)  # type: ignore[attr-defined]
    ingress_dep = IngressDeployment.options(**cfg.ingress_deployment.serve_options())  # type: ignore[attr-defined]
    return ingress_dep.bind(
        engine_dep.bind(cfg.engine.model_dump(mode="json")), cfg.model_dump(mode="json")
    )


def build_app(args: dict[str, Any]):
    """``import_path`` of serve config files: ``args`` are ServeConfig settings."""
    return build_application(ServeConfig.model_validate(dict(args or {})))


def run_serve(cfg: ServeConfig) -> None:
    """``ptr-ray serve``: start (or join) Ray, deploy, print the URL, serve until Ctrl-C."""
    import ray

    from ptr_ray.models import resolve_model
    from ptr_ray.ray_utils import init_ray

    # Resolve (and convert, once) the model here: a bad source is a one-line error now, not a
    # replica that fails to start over and over.
    resolve_model(cfg.engine.model)
    key = os.environ.get(cfg.api_key_env)
    if key:
        # The ingress replicas may run on other nodes: hand them the token explicitly rather
        # than rely on inheriting this process's environment (auth must never silently lapse).
        actor = dict(cfg.ingress_deployment.ray_actor_options)
        runtime_env = dict(actor.get("runtime_env") or {})
        runtime_env["env_vars"] = {**(runtime_env.get("env_vars") or {}), cfg.api_key_env: key}
        actor["runtime_env"] = runtime_env
        cfg.ingress_deployment.ray_actor_options = actor
    own_ray = init_ray(cfg.ray, min_cpus=4)  # engine + ingress + Serve's controller/proxy
    stop = threading.Event()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve.start(http_options={"host": cfg.host, "port": cfg.port})
        t0 = time.time()
        log.info(
            "deploying %s (engine: %s); the first start loads the model",
            cfg.app_name,
            cfg.engine.model,
        )
        serve.run(build_application(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix)
        url = f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"
        auth = f" (bearer token from ${cfg.api_key_env})" if key else ""
        print(
            f"ptr-ray serve: {cfg.served_model_name} ready at {url}{auth} after "
            f"{time.time() - t0:.0f}s; Ctrl-C stops",
            flush=True,
        )
        for s in previous:
            signal.signal(s, lambda *_: stop.set())
        while not stop.wait(1.0):
            pass
        print("ptr-ray serve: stopping", flush=True)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        try:
            if own_ray:
                serve.shutdown()
            else:  # a shared cluster: remove only our application
                serve.delete(cfg.app_name)
        finally:
            if own_ray:
                ray.shutdown()


__all__ = [
    "EngineDeployment",
    "IngressDeployment",
    "HandleBackend",
    "build_app",
    "build_application",
    "run_serve",
]
