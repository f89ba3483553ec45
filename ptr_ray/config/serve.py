"""``ptr-ray serve``'s config: the Serve application, its two deployments and request limits.

The same settings are what a Ray Serve config file (``serve_configs/*.yaml``) passes to the
application as ``args``, so :class:`ServeConfig` also accepts such a whole file; the file format
itself is read by :mod:`ptr_ray.serve.config_file`.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field, model_validator

from ptr_ray.config.base import StrictModel
from ptr_ray.config.common import EngineConfig, PromptConfig, RayConfig

__all__ = ["DeploymentConfig", "ServeConfig"]

log = logging.getLogger(__name__)


class DeploymentConfig(StrictModel):
    """Ray Serve options of one deployment (the ones a serve config's ``deployments:`` sets)."""

    num_replicas: int | Literal["auto"] | None = Field(
        None, description="None: Serve's default (1)"
    )
    max_ongoing_requests: int = Field(16, ge=1, description="concurrent requests per replica")
    max_queued_requests: int = Field(
        64,
        ge=-1,
        description="requests waiting per caller beyond which Serve answers 503 (-1: no limit)",
    )
    autoscaling_config: dict[str, Any] | None = None
    ray_actor_options: dict[str, Any] = Field(default_factory=dict)
    health_check_period_s: float | None = Field(None, gt=0)
    health_check_timeout_s: float | None = Field(None, gt=0)
    graceful_shutdown_timeout_s: float | None = Field(None, ge=0)

    def serve_options(self) -> dict[str, Any]:
        """The kwargs for ``Deployment.options``; unset (None) knobs keep Serve's defaults."""
        out = self.model_dump(exclude_none=True)
        if self.autoscaling_config is not None:
            out.pop("num_replicas", None)
        return out


def _default_engine_deployment() -> DeploymentConfig:
    # vLLM batches concurrent requests itself, so one engine replica takes many at once.
    return DeploymentConfig(
        max_ongoing_requests=64,
        max_queued_requests=256,
        health_check_period_s=10,
        health_check_timeout_s=30,
    )


class ServeConfig(StrictModel):
    """``ptr-ray serve``: one Serve application, a FastAPI ingress in front of a vLLM engine.

    The same settings are the ``args`` of the application in a Ray Serve config file
    (``serve_configs/*.yaml``); validating such a whole file (``applications: [...]``, e.g. via
    ``load_config(ServeConfig, path)``) reads it, so ``ptr-ray serve`` and ``serve run`` take one
    file. Host and port only matter to ``ptr-ray serve`` (``serve run`` reads ``http_options``).
    """

    engine: EngineConfig = Field(default_factory=EngineConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    ray: RayConfig = Field(default_factory=lambda: RayConfig(num_cpus=4))
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    app_name: str = "ptr-ray"
    route_prefix: str = "/"
    model_name: str | None = Field(None, description="name in /v1/models; default: engine.model")
    default_rounds: int = Field(3, ge=1)
    max_rounds: int = Field(8, ge=1)
    default_max_tokens: int = Field(256, ge=1)
    max_tokens_cap: int = Field(1024, ge=1, description="largest max_tokens a request may ask")
    default_temperature: float = Field(0.0, ge=0)
    max_temperature: float = Field(2.0, ge=0)
    strict: bool = Field(True, description="unknown request fields are a 400 (else ignored)")
    # -- auth ----------------------------------------------------------------------------------
    api_key_env: str = Field(
        "PTR_API_KEY",
        description="env var holding the bearer token (several keys: comma-separated)",
    )
    auth: Literal["auto", "required", "off"] = Field(
        "auto",
        description="auto: a key is required when serving on a non-loopback host (the server "
        "refuses to start without one) and optional on loopback; required: always; off: no auth "
        "at all (an explicit choice, logged)",
    )
    # -- per-request limits (each refusal is a 4xx naming the limit) -----------------------------
    max_total_tokens: int = Field(
        4096,
        ge=1,
        description="budget of one request: rounds x max_tokens may not exceed it",
    )
    max_stop_sequences: int = Field(4, ge=0, description="most entries in 'stop'")
    max_stop_chars: int = Field(64, ge=1, description="longest 'stop' entry, in characters")
    max_prompt_chars: int = Field(
        100_000,
        ge=1,
        description="most characters in the query or all messages together (before templating)",
    )
    max_messages: int = Field(256, ge=1, description="most messages in one request")
    max_body_bytes: int = Field(
        1 << 20,
        ge=1024,
        description="largest request body; checked on Content-Length before reading, and the "
        "read stops there",
    )
    max_json_depth: int = Field(
        16, ge=4, le=64, description="deepest nesting of arrays/objects in a request body"
    )
    max_concurrent_per_key: int | None = Field(
        None,
        ge=1,
        description="requests one API key (or, without auth, one client address) may have "
        "running at once on one ingress replica; None: no limit",
    )
    # -- timeouts ------------------------------------------------------------------------------
    first_token_timeout_s: float = Field(
        60.0,
        gt=0,
        description="wait this long for the engine to start a round (queueing + prefill, e.g. "
        "while a crashed replica is replaced); then 503 + Retry-After if no replica had taken the "
        "request yet, else 504",
    )
    stall_timeout_s: float = Field(
        60.0,
        gt=0,
        description="longest silence from the engine inside a round once it has started; then "
        "the round is aborted (504 before the answer starts, an error event in a stream)",
    )
    request_timeout_s: float = Field(
        600.0,
        gt=0,
        description="deadline for a whole request, every round included; then it is aborted "
        "(504 before the answer starts, an error event in a stream)",
    )
    engine_deployment: DeploymentConfig = Field(default_factory=_default_engine_deployment)
    ingress_deployment: DeploymentConfig = Field(
        default_factory=lambda: DeploymentConfig(max_ongoing_requests=32, max_queued_requests=64)
    )

    @model_validator(mode="before")
    @classmethod
    def _from_serve_schema(cls, data: Any) -> Any:
        """Accept a Ray Serve config file (``applications: [...]``) as well as flat settings."""
        if isinstance(data, dict) and "applications" in data:
            # Imported here so that importing ptr_ray.config never pulls in the serve package.
            from ptr_ray.serve.config_file import serve_file_to_settings

            return serve_file_to_settings(data)
        return data

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        """``engine_timeout_s`` (deprecated) is the old name of ``first_token_timeout_s``."""
        if isinstance(data, dict) and "engine_timeout_s" in data:
            data = dict(data)
            old = data.pop("engine_timeout_s")
            new = data.get("first_token_timeout_s")
            if new is not None and new != old:
                raise ValueError(
                    "engine_timeout_s is the deprecated name of first_token_timeout_s; "
                    "set only first_token_timeout_s"
                )
            log.warning(
                "serve config: engine_timeout_s is deprecated, use first_token_timeout_s "
                "(same meaning)"
            )
            data["first_token_timeout_s"] = old
        return data

    @model_validator(mode="after")
    def _check_limits(self) -> ServeConfig:
        if self.default_rounds > self.max_rounds:
            raise ValueError(f"default_rounds {self.default_rounds} > max_rounds {self.max_rounds}")
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError(
                f"default_max_tokens {self.default_max_tokens} > max_tokens_cap {self.max_tokens_cap}"
            )
        budget = self.default_rounds * self.default_max_tokens
        if budget > self.max_total_tokens:
            raise ValueError(
                f"default_rounds x default_max_tokens = {budget} > max_total_tokens "
                f"{self.max_total_tokens}"
            )
        if self.first_token_timeout_s > self.request_timeout_s:
            raise ValueError(
                f"first_token_timeout_s {self.first_token_timeout_s} > request_timeout_s "
                f"{self.request_timeout_s}"
            )
        if not self.route_prefix.startswith("/"):
            raise ValueError(f"route_prefix must start with '/', got {self.route_prefix!r}")
        return self

    @property
    def engine_timeout_s(self) -> float:
        """Deprecated: the old name of :attr:`first_token_timeout_s`."""
        return self.first_token_timeout_s

    @property
    def served_model_name(self) -> str:
        """The model name clients see in /v1/models and answers."""
        return self.model_name or self.engine.model
