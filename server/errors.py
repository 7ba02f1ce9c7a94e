"""The sidecar's error answers: ``{"error": code, "detail": message, "status": n}`` for every one.

``APIError`` is what handlers raise; ``EXCEPTION_HANDLERS`` turn it, the library's
``PayloadError``, FastAPI's validation and HTTP errors and anything unexpected into that body.
"""

from __future__ import annotations

import logging
import sys

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from promptloop.wire import PayloadError

from .schemas import ErrorBody

logger = logging.getLogger("promptloop.server")

#: The error answers every endpoint may give, for the OpenAPI docs.
ERROR_RESPONSES = {status: {"model": ErrorBody} for status in (400, 401, 413, 422, 503, 504)}

_PAYLOAD_ERRORS = {400: "bad_payload", 413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_payload"}


class APIError(Exception):
    """An answer other than 200, with a message for the client."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The error body as a response."""
    # A message may quote client text: lone surrogates in it become escapes (JSON must be UTF-8).
    detail = detail.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": error, "detail": detail, "status": status}, status_code=status, headers=headers)


def unparsable_body(cause: BaseException) -> str:
    """What was wrong with a JSON body that FastAPI could not parse (its own message is generic)."""
    if isinstance(cause, RecursionError):
        return "JSON body nested too deeply to parse"
    if isinstance(cause, UnicodeDecodeError):
        return f"request body is not valid UTF-8 ({cause.reason} at byte {cause.start})"
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):
        return f"JSON body holds an integer with more than {sys.get_int_max_str_digits()} digits"
    return f"could not parse the JSON body ({type(cause).__name__}: {str(cause)[:200]})"


def validation_detail(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line: ``where: what; ...`` (``where`` without ``body.``)."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = err.get("msg", "invalid")
        problems.append(f"{where}: {msg}" if where else msg)
    return "; ".join(problems) or "invalid request"


async def api_error(request: Request, exc: APIError) -> JSONResponse:
    return error_response(exc.status, exc.error, exc.detail, exc.headers)


async def payload_error(request: Request, exc: PayloadError) -> JSONResponse:
    return error_response(exc.status, _PAYLOAD_ERRORS.get(exc.status, "bad_payload"), exc.message)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(422, "invalid_request", validation_detail(exc))


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI: the body did not parse
        return error_response(400, "invalid_json", unparsable_body(exc.__cause__))
    return error_response(exc.status_code, "http_error", str(exc.detail), getattr(exc, "headers", None))


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s", request.url.path)
    return error_response(500, "internal_error", f"internal error: {type(exc).__name__}")


#: ``FastAPI(exception_handlers=...)``: every failure answers with the error body.
EXCEPTION_HANDLERS = {
    APIError: api_error,
    PayloadError: payload_error,
    RequestValidationError: validation_error,
    StarletteHTTPException: http_error,
    Exception: unexpected,
}
