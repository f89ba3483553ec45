"""Reading a Ray Serve config file (``serve_configs/*.yaml``) as ptr-ray serve settings.

``ptr-ray serve`` and ``serve run`` take the same file: Ray Serve's own schema, whose single
application carries ptr-ray's :class:`~ptr_ray.config.ServeConfig` settings as ``args`` and
per-deployment options under ``deployments:``. This module flattens such a file into
ServeConfig keys. It imports neither Ray nor FastAPI, so config loading stays cheap.
"""

from __future__ import annotations

from typing import Any

from ptr_ray.errors import PtrRayValueError

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
    """
    apps = data.get("applications") or []
    if not isinstance(apps, list) or len(apps) != 1 or not isinstance(apps[0], dict):
        raise PtrRayValueError("a ptr-ray serve config file must hold exactly one application")
    app = apps[0]
    out: dict[str, Any] = dict(app.get("args") or {})
    http = data.get("http_options") or {}
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
    for dep in app.get("deployments") or []:
        field = names.get(dep.get("name"))
        if field is None:
            raise PtrRayValueError(
                f"unknown deployment {dep.get('name')!r} in the serve config; "
                f"known: {', '.join(names)}"
            )
        opts = dict(out.get(field) or {})
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
