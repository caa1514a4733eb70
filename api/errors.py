"""Errors: the services raise these; handlers turn every error into JSON ``{"detail": ...}``.

Services stay free of HTTP: they raise a ``ServiceError`` with the status it stands for.
Validation errors keep FastAPI's shape (a list of ``{"loc", "msg", "type"}``) and are made
JSON-safe (no exception objects, no NaN). A database that cannot be reached answers 503 with
a generic reason (its host and port go to the log only); a 405 names every method the path
takes in ``Allow``; anything unexpected answers 500 without a traceback and is logged.
"""

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.encoding import json_safe

logger = logging.getLogger("api")


class ServiceError(Exception):
    status_code = 400
    headers: dict[str, str] | None = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Unauthorized(ServiceError):
    status_code = 401
    headers = {"WWW-Authenticate": "Bearer"}


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class Gone(ServiceError):
    status_code = 410


class TooLarge(ServiceError):
    status_code = 413


class TooManyRequests(ServiceError):
    """An owner's limit on jobs at once or on compute is reached."""

    status_code = 429


class Unavailable(ServiceError):
    status_code = 503


class InvalidParameter(Exception):
    """Request values that passed their type check but are still wrong (a bad cursor).

    Answered as 422 in FastAPI's shape, like any other validation error.
    """

    def __init__(self, errors: Sequence[tuple[Sequence[str | int], str, Any]]) -> None:
        super().__init__("; ".join(msg for _, msg, _ in errors))
        self.errors = [
            {"type": "value_error", "loc": tuple(loc), "msg": msg, "input": value}
            for loc, msg, value in errors
        ]

    @classmethod
    def one(cls, loc: Sequence[str | int], msg: str, value: Any = None) -> "InvalidParameter":
        return cls([(loc, msg, value)])

    @classmethod
    def from_validation(
        cls, exc: ValidationError, prefix: Sequence[str | int] = ("body",)
    ) -> "InvalidParameter":
        """A pydantic ValidationError raised by a service (a body validated again with
        what only the database knows), its locations under ``prefix``, its types kept."""
        found = exc.errors()
        made = cls([((*prefix, *e["loc"]), e["msg"], e.get("input")) for e in found])
        for item, error in zip(made.errors, found, strict=True):
            item["type"] = error["type"]
        return made


def clean_validation_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """FastAPI's error shape, JSON-safe: the field path, the reason, the error type.

    The input is echoed only when it is a single value (never a whole body), and context
    values that are not plain JSON (a ValueError in ``ctx.error``) become text.
    """
    cleaned = []
    for error in errors:
        item: dict[str, Any] = {
            "type": str(error.get("type", "value_error")),
            "loc": [part if isinstance(part, int) else str(part) for part in error.get("loc", ())],
            "msg": str(error.get("msg", "")),
        }
        value = error.get("input")
        if value is None or isinstance(value, bool | int | float | str):
            item["input"] = json_safe(value)
        ctx = error.get("ctx")
        if isinstance(ctx, dict) and ctx:
            item["ctx"] = json_safe(ctx)
        cleaned.append(item)
    return cleaned


def database_reason(exc: BaseException) -> str:
    """The driver's first line of complaint, without the SQL statement SQLAlchemy appends."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else orig.__class__.__name__


async def _service_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError | InvalidParameter)
    errors = exc.errors() if isinstance(exc, RequestValidationError) else exc.errors
    return JSONResponse({"detail": clean_validation_errors(errors)}, status_code=422)


async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    # The driver's reason names the database's host and port: for the log, not the caller.
    logger.warning("database unavailable: %s", database_reason(exc))
    return JSONResponse({"detail": "database unavailable"}, status_code=503)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's HTTP errors as FastAPI answers them; a 405 lists in ``Allow`` the methods
    of every route of this path (Starlette names only those of the first route it tried)."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        allowed = allowed_methods(request.app, request.scope)
        if allowed:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)}
    return await http_exception_handler(request, exc)


METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """The methods some route of the app takes at this request's path (and OPTIONS, which
    every path that has a route answers: see api/methods.py); none for an unknown path."""
    found = {
        method
        for method in METHODS
        if any(
            route.matches({**scope, "method": method})[0] is Match.FULL
            for route in app.router.routes
        )
    }
    return [method for method in METHODS if method in found or (found and method == "OPTIONS")]


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(InvalidParameter, _validation_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(PoolTimeoutError, _database_unavailable)


class CatchAllMiddleware:
    """Any exception no handler took: log it, answer 500 JSON, never a traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # too late for a clean answer; let the server drop the connection
            response = JSONResponse({"detail": "internal server error"}, status_code=500)
            await response(scope, receive, send)
