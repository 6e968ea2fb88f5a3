"""Every API error is JSON ``{"error": CODE, "message": ONE_SENTENCE}``: raised :class:`ApiError`,
request validation, HTTP errors, and any :class:`~studio.errors.StudioError` that escapes a
route (a user error: its one sentence is the message)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from studio.api.schemas import PATTERN_HELP, ErrorOut
from studio.errors import StudioError, first_line
from studio.models import ModelLoadError


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


# StudioError subclasses with their own (status, code); the first match in this order wins.
STUDIO_ERRORS: list[tuple[type[StudioError], int, str]] = [
    (ModelLoadError, 503, "model_unavailable"),
    (StudioError, 422, "invalid_request"),
]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing, malformed, unknown or revoked API key"},
    422: {"model": ErrorOut, "description": "invalid request (one-sentence message)"},
    429: {"model": ErrorOut, "description": "rate limit or quota of this key reached"},
}


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def from_studio_error(exc: StudioError) -> ApiError:
    """The API error a user error becomes."""
    status, code = next((s, c) for cls, s, c in STUDIO_ERRORS if isinstance(exc, cls))
    return ApiError(status, code, first_line(exc))


def validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "The request is not valid."
    e = errors[0]
    loc = [str(p) for p in e.get("loc", ()) if p not in ("body",)]
    if e.get("type") == "json_invalid":
        return "The request body is not valid JSON."
    where = f"Field '{'.'.join(loc)}': " if loc else ""
    msg = str(e.get("msg", "invalid value")).rstrip(".")
    if e.get("type") == "string_pattern_mismatch" and loc and loc[-1] in PATTERN_HELP:
        msg = PATTERN_HELP[loc[-1]]
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{where}{msg}{more}."


async def _api_error(_req: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _studio_error(req: Request, exc: StudioError) -> JSONResponse:
    return await _api_error(req, from_studio_error(exc))


async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(422, "invalid_request", validation_message(exc))


async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400:  # FastAPI could not decode the body at all
        return error_response(422, "invalid_request", "The request body is not valid JSON text.")
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else "The request was refused."
    return error_response(exc.status_code, code, detail, getattr(exc, "headers", None))


def install_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` as JSON with one sentence."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StudioError, _studio_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
