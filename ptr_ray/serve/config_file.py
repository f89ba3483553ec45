"""Reading a Ray Serve config file (``serve_configs/*.yaml``) as ptr-ray serve settings.

``ptr-ray serve`` and ``serve run`` take the same file: Ray Serve's own schema, whose single
application carries ptr-ray's :class:`~ptr_ray.config.ServeConfig` settings as ``args`` and
per-deployment options under ``deployments:``. This module flattens such a file into
ServeConfig keys. It imports neither Ray nor FastAPI, so config loading stays cheap.
"""

from __future__ import annotations

from typing import Any

from ptr_ray.config.base import ConfigError

__all__ = [
    "ENGINE_DEPLOYMENT_NAME",
    "INGRESS_DEPLOYMENT_NAME",
    "SERVE_FILE_KEYS",
    "serve_file_to_settings",
]

ENGINE_DEPLOYMENT_NAME = "PTREngine"
INGRESS_DEPLOYMENT_NAME = "PTRIngress"
SERVE_FILE_KEYS = {
    "proxy_location",
    "http_options",
    "grpc_options",
    "logging_config",
    "applications",
    "target_capacity",
}


def serve_file_to_settings(data: dict[str, Any]) -> dict[str, Any]:
    """Flatten a Serve config file into ServeConfig keys.

    http_options host/port, the application's name and route prefix, its ``args`` and the
    per-deployment overrides of ``deployments:`` (by deployment name). Flat keys placed beside
    ``applications`` (dotted CLI overrides such as ``engine.model=...``) win over the file.

    A file of the wrong shape (``deployments: [3]``, a list where a mapping belongs) is a
    ConfigError naming the key, in the dotted form overrides use
    (``applications.0.deployments.0``); :func:`ptr_ray.config.load_config` adds the file name.
    """
    apps = data.get("applications") or []
    if not isinstance(apps, list):
        raise ConfigError(
            f"serve config key 'applications' must be a list holding one application "
            f"(got {type(apps).__name__})"
        )
    if len(apps) != 1:
        raise ConfigError("a ptr-ray serve config file must hold exactly one application")
    app = _mapping(apps[0], "applications.0")
    out: dict[str, Any] = dict(_mapping(app.get("args"), "applications.0.args"))
    http = _mapping(data.get("http_options"), "http_options")
    for key in ("host", "port"):
        if key in http:
            out[key] = http[key]
    if "name" in app:
        out["app_name"] = app["name"]
    if "route_prefix" in app:
        out["route_prefix"] = app["route_prefix"]
    names = {
        ENGINE_DEPLOYMENT_NAME: "engine_deployment",
        INGRESS_DEPLOYMENT_NAME: "ingress_deployment",
    }
    deployments = app.get("deployments") or []
    if not isinstance(deployments, list):
        raise ConfigError(
            f"serve config key 'applications.0.deployments' must be a list of deployments "
            f"(got {type(deployments).__name__})"
        )
    for i, item in enumerate(deployments):
        key = f"applications.0.deployments.{i}"
        dep = _mapping(item, key, "a mapping of a deployment's name and options")
        name = dep.get("name")
        field = names.get(name) if isinstance(name, str) else None
        if field is None:
            raise ConfigError(
                f"unknown deployment {name!r} at serve config key '{key}.name'; "
                f"known: {', '.join(names)}"
            )
        opts = dict(_mapping(out.get(field), f"applications.0.args.{field}"))
        opts.update({k: v for k, v in dep.items() if k != "name"})
        out[field] = opts
    for key, val in data.items():
        if key in SERVE_FILE_KEYS:
            continue
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], val)
        else:
            out[key] = val
    return out


def _mapping(value: Any, key: str, what: str = "a mapping") -> dict[str, Any]:
    """``value`` as a mapping (absent or null: empty); ConfigError naming ``key`` otherwise."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ConfigError(f"serve config key '{key}' must be {what} (got {shown})")
    return value


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, section by section (a CLI override keeps the file's siblings)."""
    merged = dict(base)
    for k, v in top.items():
        merged[k] = (
            _deep_merge(merged[k], v)
            if isinstance(v, dict) and isinstance(merged.get(k), dict)
            else v
        )
    return merged
