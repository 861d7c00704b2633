"""One error body for every HTTP failure: ``{"code", "message", "request_id"}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from parley.errors import ParleyError

__all__ = ["ERROR_RESPONSES", "ErrorBody", "error_response", "install_error_handlers"]

log = logging.getLogger("parley.api")

_HTTP_CODES = {
    400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
    422: "invalid_request", 429: "rate_limited", 503: "unavailable",
}


class ErrorBody(BaseModel):
    """What every failed request returns."""

    code: str
    message: str
    request_id: str
    details: list[dict[str, Any]] | None = None


_E: dict[str, Any] = {"model": ErrorBody}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {**_E, "description": "Malformed request"},
    401: {**_E, "description": "Missing or invalid credentials or access token"},
    403: {**_E, "description": "Not permitted"},
    404: {**_E, "description": "No such object (or not visible to the caller)"},
    409: {**_E, "description": "Conflicts with the current state"},
    422: {**_E, "description": "Invalid fields (see details)"},
    429: {**_E, "description": "Too many requests; retry after Retry-After seconds"},
    503: {**_E, "description": "Temporarily unavailable; retry"},
}
"""The error answers every API operation documents (one body for all of them)."""


def _rid(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def error_response(
    request: Request, status: int, code: str, message: str,
    details: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(code=code, message=message, request_id=_rid(request), details=details)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    async def parley_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ParleyError)
        headers = {"Retry-After": "1"} if exc.retryable else None
        return error_response(request, exc.http_status, exc.code, exc.message, headers=headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        details = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
            for e in exc.errors()
        ]
        first = details[0] if details else {"field": "", "message": "invalid request"}
        return error_response(
            request, 422, "invalid_request", f"{first['field']}: {first['message']}", details
        )

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = _HTTP_CODES.get(exc.status_code, "error")
        return error_response(
            request, exc.status_code, code, str(exc.detail),
            headers=dict(exc.headers) if exc.headers else None,
        )

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, SQLAlchemyError | OSError | TimeoutError):  # database unreachable
            log.warning("database unavailable on %s %s: %s", request.method,
                        request.url.path, type(exc).__name__)
            return error_response(request, 503, "unavailable",
                                  "the database is unavailable; retry")
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, 500, "internal", "internal error")

    app.add_exception_handler(ParleyError, parley_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
