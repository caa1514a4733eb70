"""NUL characters are refused before they reach the database.

PostgreSQL cannot store U+0000 in a text column (the driver raises), while SQLite stores it;
no id, name or cursor of this service ever holds one. So every request is checked once, here,
and both databases answer the same:

- a path holding NUL names nothing: 404;
- a query parameter holding NUL: 422 naming the parameter;
- a JSON body holding NUL in a key or a string: 422 naming the field (a body can hold NUL
  only as the escape ``\\u0000``, or in UTF-16/32, so other bodies pass after one scan).

Multipart forms (uploads) are parsed by their route, which checks its text values itself
(``refuse_nul``).
"""

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import InvalidParameter, clean_validation_errors

NUL = "\x00"
MESSAGE = "must not contain a NUL character (U+0000)"
_FORMS = (b"multipart/form-data", b"application/x-www-form-urlencoded")


def refuse_nul(loc: tuple[str | int, ...], value: str | None) -> None:
    """Raise a 422 naming ``loc`` if ``value`` holds NUL (for values parsed by a route)."""
    if value is not None and NUL in value:
        raise InvalidParameter.one(loc, MESSAGE, value)


def nul_paths(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """The paths in a parsed JSON document of the keys and strings that hold NUL."""
    if isinstance(value, str):
        if NUL in value:
            yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            if NUL in key:
                yield (*path, key)
            yield from nul_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from nul_paths(item, (*path, index))


class RefuseNulMiddleware:
    """Put it inside the body size limit: a JSON body is read whole here, before the route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if NUL in scope["path"]:
            response = JSONResponse({"detail": "Not Found"}, status_code=404)
            await response(scope, receive, send)
            return
        errors = self._query_errors(scope["query_string"])
        if not errors and _may_be_json(scope):
            body, receive = await _buffered(receive)
            errors = _body_errors(body)
        if errors:
            response = JSONResponse({"detail": clean_validation_errors(errors)}, status_code=422)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _query_errors(query: bytes) -> list[dict[str, Any]]:
        if b"%00" not in query:  # the only way a query string holds NUL
            return []
        # As Starlette reads it: latin-1 text, then percent-decoded as UTF-8.
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        names = [name for name, value in pairs if NUL in name or NUL in value]
        return [_error(("query", name), value) for name, value in pairs if name in names]


def _error(loc: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    return {"type": "string_nul", "loc": loc, "msg": MESSAGE, "input": value}


def _may_be_json(scope: Scope) -> bool:
    """A request with a body that is not a form (FastAPI reads a body without a type as JSON)."""
    if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
        return False
    for name, value in scope["headers"]:
        if name == b"content-type":
            return not value.lower().startswith(_FORMS)
    return True


async def _buffered(receive: Receive) -> tuple[bytes, Receive]:
    """The whole body, and a ``receive`` that hands it to the app as if unread."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away; the app sees the body so far, then this
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    replay: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    if message["type"] != "http.request":
        replay.append(message)

    async def replayed() -> Message:
        return replay.pop(0) if replay else await receive()

    return body, replayed


def _body_errors(body: bytes) -> list[dict[str, Any]]:
    if b"\\u0000" not in body and b"\x00" not in body:
        return []
    try:
        return [_error(("body", *path), None) for path in nul_paths(json.loads(body))]
    except (ValueError, RecursionError):
        return []  # not JSON (or nested past reason): the route answers that
