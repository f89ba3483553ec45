"""OpenAI-style errors: every failure a client can cause becomes a 4xx with a JSON body.

The body is OpenAI's ``{"error": {"message", "type", "param", "code"}}`` so OpenAI SDKs raise
their usual exception classes (``BadRequestError``, ``AuthenticationError``, ...) with the
server's message.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ptr_ray.errors import PtrRayError

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout_error",
    500: "server_error",
}


class APIError(PtrRayError):
    """An error with an HTTP status and an OpenAI-style body; the app's handler turns it into
    the response, so code at any depth can refuse a request with one ``raise``."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def validation_error(err: ValidationError | RequestValidationError) -> APIError:
    """The first problem of a pydantic error as one readable line naming the field."""
    errors = err.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value"))
    if first.get("type") == "extra_forbidden":
        msg = f"unknown field '{param}'"
    elif first.get("type") == "missing":
        msg = f"missing field '{param}'"
    elif param:
        got = first.get("input")
        got_txt = (
            "" if isinstance(got, (dict, list)) else f" (got {json.dumps(got, default=str)[:80]})"
        )
        msg = f"'{param}': {msg.removeprefix('Value error, ')}{got_txt}"
    else:
        msg = msg.removeprefix("Value error, ")
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return APIError(400, msg + more, param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    """Map FastAPI/Starlette errors onto OpenAI-style bodies (never an HTML or bare 500)."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(json.JSONDecodeError)
    async def _bad_json(_: Request, exc: json.JSONDecodeError) -> JSONResponse:
        return APIError(
            400,
            f"request body is not valid JSON: {exc.msg} at position {exc.pos}",
            code="invalid_json",
        ).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return APIError(
            exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None)
        ).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error while serving a request")
        return APIError(
            500, f"internal error: {type(exc).__name__}", code="internal_error"
        ).response()
