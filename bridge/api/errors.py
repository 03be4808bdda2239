"""IMKIT's response envelope, and errors with machine-readable codes."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from bridge.store.base import StoreUnavailable

#: The codes an error envelope carries: those of the API contract (docs/api.md), and
#: STORE_UNAVAILABLE for a store that cannot be written. The one list of them.
ErrorCode = Literal[
    "MISSING_PARAMETER",
    "INVALID_PARAMETER",
    "INVALID_TOKEN",
    "FORBIDDEN",
    "NOT_FOUND",
    "RATE_LIMITED",
    "UPSTREAM_UNAVAILABLE",
    "STORE_UNAVAILABLE",
]


class ApiError(Exception):
    """An error answered as ``{RC: status, RM, error: {code, message}}``."""

    def __init__(
        self, status: int, code: ErrorCode, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def ok(result: Any) -> dict[str, Any]:
    """The success envelope."""
    return {"RC": 0, "RM": "OK", "result": result}


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    """The error envelope: the HTTP status as ``RC``, the message as ``RM`` and in ``error``."""
    return {"RC": status, "RM": message, "error": {"code": code, "message": message}}


class ErrorDetail(BaseModel):
    code: ErrorCode
    message: str


class ErrorEnvelope(BaseModel):
    """How every error is answered (documents :func:`error_body` in the OpenAPI document)."""

    RC: int = Field(description="the HTTP status")
    RM: str = Field(description="the message, as IMKIT puts it")
    error: ErrorDetail

    model_config = ConfigDict(json_schema_extra={"examples": [error_body(404, "NOT_FOUND", "no such device")]})


_ERROR_DESCRIPTIONS = {
    400: "MISSING_PARAMETER or INVALID_PARAMETER: a parameter is missing, malformed or out of range",
    401: "INVALID_TOKEN: no client token, or IMKIT rejected it (or a wrong IM-API-KEY / admin token)",
    403: "FORBIDDEN: the device limit is reached, the deviceId is another user's (subscribe), or the client token belongs to another clientId",
    404: "NOT_FOUND: no such device for this user (or the admin API is off)",
    413: "INVALID_PARAMETER: the request body is over 16 KiB",
    429: "RATE_LIMITED: too many calls from this user, or too many invalid client tokens from this address; see Retry-After",
    503: "UPSTREAM_UNAVAILABLE (IMKIT) or STORE_UNAVAILABLE; see Retry-After",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: the envelope, documented for each of these error statuses."""
    return {status: {"model": ErrorEnvelope, "description": _ERROR_DESCRIPTIONS[status]} for status in statuses}


def drop_validation_422(spec: dict[str, Any]) -> dict[str, Any]:
    """Remove FastAPI's automatic 422 responses (and their schemas) from an OpenAPI document.

    Validation errors are answered 400 in our envelope (see :func:`install_error_handlers`), so
    the 422 FastAPI documents for every route with parameters never happens. Idempotent.
    """
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict):
                operation.get("responses", {}).pop("422", None)
    schemas = spec.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return spec


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.status, exc.code, exc.message), status_code=exc.status, headers=exc.headers)


_HTTP_CODES: dict[int, ErrorCode] = {400: "INVALID_PARAMETER", 401: "INVALID_TOKEN", 403: "FORBIDDEN", 404: "NOT_FOUND", 405: "INVALID_PARAMETER", 413: "INVALID_PARAMETER", 429: "RATE_LIMITED"}


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error in our envelope instead of FastAPI's default shape."""

    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        missing = [e for e in errors if e.get("type") == "missing"]
        first = (missing or errors or [{}])[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
        field = ".".join(loc) or "body"
        if missing:
            return error_response(ApiError(400, "MISSING_PARAMETER", f"{field} is required"))
        if first.get("type") == "json_invalid":
            return error_response(ApiError(400, "INVALID_PARAMETER", "request body is not valid JSON"))
        msg = str(first.get("msg", "invalid value"))
        return error_response(ApiError(400, "INVALID_PARAMETER", f"{field}: {msg}"))

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "INVALID_PARAMETER" if exc.status_code < 500 else "UPSTREAM_UNAVAILABLE")
        # Keep the exception's headers: a 405 must say which methods are allowed (``Allow``).
        return error_response(ApiError(exc.status_code, code, str(exc.detail), headers=dict(exc.headers) if exc.headers else None))

    async def store_error(_: Request, exc: Exception) -> JSONResponse:
        return error_response(ApiError(503, "STORE_UNAVAILABLE", "device store unavailable, try again later", headers={"Retry-After": "5"}))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(StoreUnavailable, store_error)
