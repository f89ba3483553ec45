"""Who may call the API: the bearer keys, the fail-closed start rule, per-key concurrency.

Auth fails closed. A server that listens beyond loopback without a key refuses to start (one
line naming the variable to set) unless the config says ``auth: off``, so forgetting to set
the key can never expose an open server; ``auth: required`` demands a key even on loopback
(the shipped cluster config uses it, since under ``serve deploy`` the ingress cannot see the
proxy's bind address). Whether auth is on is logged once per app.

This module holds the decisions; :mod:`ptr_ray.serve.deps` turns them into FastAPI
dependencies. It imports neither FastAPI nor Ray.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections import Counter

from ptr_ray.config import ServeConfig
from ptr_ray.errors import PtrRayValueError

log = logging.getLogger(__name__)

__all__ = ["AuthConfigError", "KeySlots", "check_key", "is_loopback", "parse_keys", "resolve_auth"]


class AuthConfigError(PtrRayValueError):
    """The server would listen without auth where that is not allowed."""


def parse_keys(raw: str | None) -> tuple[str, ...]:
    """The keys in a variable's value: one key, or several separated by commas."""
    return tuple(k.strip() for k in (raw or "").split(",") if k.strip())


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine. Anything unknown (a
    hostname, ``0.0.0.0``, ``::``, an empty string) counts as reachable from outside."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_auth(
    cfg: ServeConfig, api_key: str | None = None, bind_host: str | None = None
) -> tuple[str, ...]:
    """The accepted keys (empty: no auth), or :class:`AuthConfigError` when a key is needed.

    ``api_key`` defaults to ``$cfg.api_key_env``; ``bind_host`` (the address the HTTP server
    listens on) defaults to ``cfg.host``. Logs whether auth is on.
    """
    raw = api_key if api_key is not None else os.environ.get(cfg.api_key_env)
    keys = parse_keys(raw)
    if cfg.auth == "off":
        ignored = f"; ${cfg.api_key_env} is set but ignored" if keys else ""
        log.warning("auth is OFF (auth: off in the serve config)%s", ignored)
        return ()
    if keys:
        log.info("auth is on: %d key(s) from $%s", len(keys), cfg.api_key_env)
        return keys
    host = bind_host if bind_host is not None else cfg.host
    if cfg.auth == "required" or not is_loopback(host):
        why = "auth: required" if cfg.auth == "required" else f"host {host} is not loopback"
        raise AuthConfigError(
            f"refusing to serve without an API key ({why}): set ${cfg.api_key_env}, "
            "or put 'auth: off' in the serve config to serve without auth"
        )
    log.warning("auth is OFF: $%s is unset (allowed on loopback host %s)", cfg.api_key_env, host)
    return ()


def check_key(header: str, keys: tuple[str, ...]) -> str | None:
    """The key an ``Authorization`` header carries when it is one of ``keys``, else None.

    Compared in constant time against every key, so response timing does not leak how much
    of a guess matched, nor which key it was close to.
    """
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    got = token.strip().encode()
    found = None
    for key in keys:
        if hmac.compare_digest(got, key.encode()):
            found = key
    return found


class KeySlots:
    """Requests in flight per caller (an API key, or a client address without auth), capped.

    Counted per ingress replica: with several replicas a caller may have up to
    ``limit x replicas`` requests running (documented in the README).
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.running: Counter[str] = Counter()

    def acquire(self, caller: str) -> bool:
        if self.limit is not None and self.running[caller] >= self.limit:
            return False
        self.running[caller] += 1
        return True

    def release(self, caller: str) -> None:
        self.running[caller] -= 1
        if self.running[caller] <= 0:
            del self.running[caller]
