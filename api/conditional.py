"""Conditional and range requests on file downloads, as RFC 9110 (sections 13 and 14) says.

Preconditions are evaluated in the RFC's order (13.2.2): ``If-Match`` (strong comparison;
412 when no tag matches), else ``If-Unmodified-Since`` (412 when modified since); then
``If-None-Match`` (weak comparison, ``*`` matches any file; 304 on a GET or HEAD), else
``If-Modified-Since`` (304 when not modified since). ``If-Range`` and ``Range`` are left to
Starlette's ``FileResponse``, with two changes: a ``Range`` of an unknown unit or with no
valid range in it is ignored (the whole file, 200, as 14.2 allows), and an unsatisfiable
range answers 416 as JSON ``{"detail": ...}`` with ``Content-Range: bytes */<size>``.
"""

import os
import re
from collections.abc import Mapping
from datetime import datetime
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

from starlette.datastructures import Headers
from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable, Response

from api.errors import ServiceError

# One entity-tag of a list: optional weakness mark, then the quoted opaque tag.
ENTITY_TAG = re.compile(r'\s*(W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')


class PreconditionFailed(ServiceError):
    status_code = 412


class RangeNotSatisfiableError(ServiceError):
    status_code = 416

    def __init__(self, size: int) -> None:
        super().__init__(f"the requested range is outside the file ({size} bytes)")
        self.headers = {"Content-Range": f"bytes */{size}"}


def entity_tags(value: str) -> list[tuple[bool, str]] | None:
    """The (weak, opaque tag) pairs of an If-Match / If-None-Match list; None for ``*``.

    A list that does not parse yields the tags read before the error (none at worst).
    """
    if value.strip() == "*":
        return None
    tags, pos = [], 0
    while pos < len(value) and (match := ENTITY_TAG.match(value, pos)):
        if match.end() == pos:
            break
        tags.append((bool(match[1]), match[2]))
        pos = match.end()
    return tags


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None  # an invalid date is ignored (RFC 9110, 13.1.3 and 13.1.4)
    return parsed if parsed.tzinfo is not None else None


def precondition(method: str, headers: Headers, etag: str, modified: float) -> Response | None:
    """The 304 answer a conditional GET/HEAD gets, None to serve the file; raises 412.

    ``etag`` is the file's strong tag, quoted; ``modified`` its modification time.
    """
    seconds = int(modified)  # Last-Modified has a one-second resolution
    if_match = headers.get("if-match")
    if if_match is not None:
        tags = entity_tags(if_match)
        if tags is not None and not any(not weak and tag == etag for weak, tag in tags):
            raise PreconditionFailed("If-Match: the file's ETag is none of the given ones")
    else:
        since = _http_date(headers.get("if-unmodified-since"))
        if since is not None and seconds > since.timestamp():
            raise PreconditionFailed("If-Unmodified-Since: the file was modified since")
    not_modified = Response(
        status_code=304,
        headers={"ETag": etag, "Last-Modified": formatdate(seconds, usegmt=True)},
    )
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        tags = entity_tags(if_none_match)
        if tags is None or any(tag == etag for _, tag in tags):  # weak comparison
            if method in ("GET", "HEAD"):
                return not_modified
            raise PreconditionFailed("If-None-Match: the file's ETag is one of the given ones")
    elif method in ("GET", "HEAD"):
        since = _http_date(headers.get("if-modified-since"))
        if since is not None and seconds <= since.timestamp():
            return not_modified
    return None


class DownloadResponse(FileResponse):
    """A FileResponse whose range errors follow RFC 9110 and this API's JSON errors."""

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader:
            return []  # an unknown unit or no valid range: ignored, the whole file
        except RangeNotSatisfiable:
            # Raised before anything is sent: the app's handler answers it as JSON.
            raise RangeNotSatisfiableError(file_size) from None


def download(
    method: str,
    headers: Headers,
    path: Path,
    info: os.stat_result,
    *,
    etag: str,
    filename: str,
    media_type: str = "application/octet-stream",
    extra: Mapping[str, str] | None = None,
) -> Response:
    """The file, a part of it, or 304, as the request's conditional headers ask."""
    answer = precondition(method, headers, etag, info.st_mtime)
    if answer is not None:
        answer.headers.update(extra or {})
        return answer
    return DownloadResponse(
        path,
        media_type=media_type,
        filename=filename,
        stat_result=info,
        # Last-Modified in whole seconds, as the conditional checks above compare it.
        headers={
            "ETag": etag,
            "Last-Modified": formatdate(int(info.st_mtime), usegmt=True),
            **(extra or {}),
        },
    )
