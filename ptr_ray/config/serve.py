"""``ptr-ray serve``'s config: the Serve application, its two deployments and request limits.

The same settings are what a Ray Serve config file (``serve_configs/*.yaml``) passes to the
application as ``args``, so :class:`ServeConfig` also accepts such a whole file; the file format
itself is read by :mod:`ptr_ray.serve.config_file`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ptr_ray.config.base import StrictModel
from ptr_ray.config.common import EngineConfig, PromptConfig, RayConfig

__all__ = ["DeploymentConfig", "ServeConfig"]


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
    api_key_env: str = Field("PTR_API_KEY", description="env var holding the bearer token")
    engine_timeout_s: float = Field(
        60.0,
        gt=0,
        description="wait this long for the engine to start a round (first token), "
        "e.g. while a crashed replica is replaced; then 503",
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

    @model_validator(mode="after")
    def _check_limits(self) -> ServeConfig:
        if self.default_rounds > self.max_rounds:
            raise ValueError(f"default_rounds {self.default_rounds} > max_rounds {self.max_rounds}")
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError(
                f"default_max_tokens {self.default_max_tokens} > max_tokens_cap {self.max_tokens_cap}"
            )
        if not self.route_prefix.startswith("/"):
            raise ValueError(f"route_prefix must start with '/', got {self.route_prefix!r}")
        return self

    @property
    def served_model_name(self) -> str:
        """The model name clients see in /v1/models and answers."""
        return self.model_name or self.engine.model
