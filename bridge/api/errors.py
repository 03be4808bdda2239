"""IMKIT's response envelope, and errors with machine-readable codes."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bridge.store.base import StoreUnavailable

#: Error codes of DESIGN section 2 (plus STORE_UNAVAILABLE / PAYLOAD_TOO_LARGE for operators).
CODES = (
    "MISSING_PARAMETER",
    "INVALID_PARAMETER",
    "INVALID_TOKEN",
    "FORBIDDEN",
    "NOT_FOUND",
    "RATE_LIMITED",
    "UPSTREAM_UNAVAILABLE",
)


class ApiError(Exception):
    """An error answered as ``{RC: status, RM, error: {code, message}}``."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
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
    return {"RC": status, "RM": message, "error": {"code": code, "message": message}}


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.status, exc.code, exc.message), status_code=exc.status, headers=exc.headers)


_HTTP_CODES = {400: "INVALID_PARAMETER", 401: "INVALID_TOKEN", 403: "FORBIDDEN", 404: "NOT_FOUND", 405: "INVALID_PARAMETER", 413: "INVALID_PARAMETER", 429: "RATE_LIMITED"}


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
        return error_response(ApiError(exc.status_code, code, str(exc.detail)))

    async def store_error(_: Request, exc: Exception) -> JSONResponse:
        return error_response(ApiError(503, "STORE_UNAVAILABLE", "device store unavailable, try again later", headers={"Retry-After": "5"}))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(StoreUnavailable, store_error)
