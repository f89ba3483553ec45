"""Reading a request body as JSON, with its cost bounded before any of it is trusted.

- The declared ``Content-Length`` is checked before a byte is read, and the read itself stops
  at the cap (a chunked body declares no length), so a huge upload costs the server nothing.
- ``NaN``/``Infinity`` (which Python's json accepts but JSON does not) and numbers too long to
  convert are a 400, not a crash.
- Nesting deeper than the cap is a 400: a ``[[[[...`` bomb would otherwise raise
  ``RecursionError`` somewhere in parsing or validation and answer 500.

Every refusal is an :class:`~ptr_ray.serve.errors.APIError` naming the limit.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from ptr_ray.serve.errors import APIError

__all__ = ["json_depth_exceeds", "parse_json", "read_capped"]


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"request body is larger than {limit} bytes (max_body_bytes)",
        code="limit_exceeded",
    )


async def read_capped(
    content_length: str | None, chunks: AsyncIterator[bytes], limit: int
) -> bytes:
    """The body, read only if its declared length fits, and never past ``limit`` bytes."""
    if content_length is not None:
        declared = content_length.strip()
        if not declared.isdigit():
            raise APIError(400, "Content-Length is not a number", code="invalid_request")
        if int(declared) > limit:
            raise _too_large(limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def json_depth_exceeds(data: Any, limit: int) -> bool:
    """Whether arrays/objects nest deeper than ``limit`` (iterative: no recursion to blow)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def parse_json(raw: bytes, max_depth: int) -> dict[str, Any]:
    """``raw`` as a JSON object no deeper than ``max_depth``, or a 400 saying what is wrong."""
    if not raw.strip():
        raise APIError(400, "request body is empty; send a JSON object", code="invalid_json")
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except json.JSONDecodeError as e:
        raise APIError(
            400, f"request body is not valid JSON: {e.msg} at position {e.pos}", code="invalid_json"
        ) from None
    except RecursionError:
        raise _too_deep(max_depth) from None
    except (UnicodeDecodeError, ValueError) as e:
        # bad UTF-8, NaN/Infinity, an integer with thousands of digits
        what = "not UTF-8" if isinstance(e, UnicodeDecodeError) else str(e).split(";")[0][:120]
        raise APIError(
            400, f"request body is not valid JSON: {what}", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    if json_depth_exceeds(data, max_depth):
        raise _too_deep(max_depth)
    return data


def _too_deep(limit: int) -> APIError:
    return APIError(
        400,
        f"request body nests arrays/objects deeper than {limit} levels (max_json_depth)",
        code="limit_exceeded",
    )
