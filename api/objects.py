"""Downloads of files kept in an object store (``artifacts_url = s3://...``).

The file streams from the store through the API, one ranged GET per request, block by
block: never read whole into memory, and never copied to the API's disk. The conditional
headers and the Range header mean what they mean for a local file (``api.conditional``):
one range answers 206; several ranges answer the whole file (RFC 9110 lets a server ignore
Range). ``?redirect=true`` answers 307 to a presigned URL of the store instead, valid for
``s3_presign_seconds``: the bytes then never pass through the API.

Before a file is served its size and sha256 are checked against the recorded ones; the
sha256 is read from the stored bytes once per version of the object (its ETag), as for a
local file, and remembered.
"""

import hashlib
import hmac
import threading
from email.utils import formatdate

from starlette.datastructures import Headers
from starlette.responses import RedirectResponse, Response, StreamingResponse

from api import conditional
from store.artifacts import Artifacts, ObjectInfo

MEDIA_TYPE = "application/octet-stream"

# (key, ETag, size) of objects whose bytes hashed to their recorded sha256.
_VERIFIED: dict[str, tuple[str, int, str]] = {}
_VERIFIED_LOCK = threading.Lock()
_VERIFIED_MAX = 4096


def verified_info(artifacts: Artifacts, key: str, size: int, sha256: str) -> ObjectInfo | None:
    """The object's info when it holds what was recorded (size and sha256); None when it is
    missing or damaged (the caller answers 410)."""
    info = artifacts.info(key)
    if info is None or info.size != size:
        return None
    stamp = (info.etag, info.size, sha256)
    with _VERIFIED_LOCK:
        if _VERIFIED.get(key) == stamp:
            return info
    digest = hashlib.sha256()
    try:
        for block in artifacts.read(key):
            digest.update(block)
    except FileNotFoundError:
        return None
    if not hmac.compare_digest(digest.hexdigest(), sha256):
        return None
    with _VERIFIED_LOCK:
        if len(_VERIFIED) >= _VERIFIED_MAX:
            _VERIFIED.clear()
        _VERIFIED[key] = stamp
    return info


def download(
    method: str,
    headers: Headers,
    artifacts: Artifacts,
    key: str,
    info: ObjectInfo,
    *,
    etag: str,
    filename: str,
    redirect: bool = False,
    presign_seconds: int = 3600,
    extra: dict[str, str] | None = None,
) -> Response:
    """The object, a range of it, 304, or a 307 to a presigned URL of it."""
    extra = extra or {}
    answer = conditional.precondition(method, headers, etag, info.modified)
    if answer is not None:
        answer.headers.update(extra)
        return answer
    if redirect:
        url = artifacts.presigned_url(key, filename, presign_seconds)
        if url is not None:
            return RedirectResponse(
                url, status_code=307, headers={"Cache-Control": "no-store", **extra}
            )
    modified = formatdate(int(info.modified), usegmt=True)
    out = {
        "ETag": etag,
        "Last-Modified": modified,
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'attachment; filename="{filename}"',
        **extra,
    }
    start, end, status = 0, info.size - 1, 200
    http_range, if_range = headers.get("range"), headers.get("if-range")
    if http_range and info.size and (if_range is None or if_range in (etag, modified)):
        ranges = conditional.DownloadResponse._parse_range_header(http_range, info.size)
        if len(ranges) == 1:
            start, end, status = ranges[0][0], ranges[0][1] - 1, 206
            out["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    out["Content-Length"] = str(end - start + 1)
    if method == "HEAD" or info.size == 0:
        return Response(status_code=status, headers=out, media_type=MEDIA_TYPE)
    return StreamingResponse(
        artifacts.read(key, start, end), status_code=status, headers=out, media_type=MEDIA_TYPE
    )
