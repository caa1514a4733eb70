"""Stream tickets: how a browser's ``EventSource`` opens a job's event stream.

``EventSource`` cannot send an ``Authorization`` header, and an API token in a URL ends up
in access logs and browser history for as long as the token lives. So a client that holds
a token asks ``POST /v1/jobs/{id}/events/ticket`` for a ticket, and opens
``GET /v1/jobs/{id}/events?ticket=<ticket>``. A ticket opens that one job's stream only,
for its owner, for ``TICKET_SECONDS``; it is an HMAC-SHA256 over the job id, the owner and
the expiry with the server's secret (``stream_ticket_secret``; when unset, one generated
once and kept in ``<data dir>/stream-secret``, mode 0600, shared by the processes of one
host: set it on every API host of a deployment with several). The access log shows
``ticket=[redacted]``.
"""

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from functools import lru_cache
from pathlib import Path

from api.errors import Unauthorized
from descent.settings import Settings

TICKET_SECONDS = 60
MAX_TICKET_CHARS = 400


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@lru_cache(maxsize=8)
def _stored_secret(path: Path) -> bytes:
    """The secret in ``path``, made once (the first process to link its file wins)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if another process made it meanwhile: use theirs
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text().strip().encode()


def secret(settings: Settings) -> bytes:
    if settings.stream_ticket_secret:
        return settings.stream_ticket_secret.encode()
    return _stored_secret(settings.data_dir / "stream-secret")


def _signature(key: bytes, job_id: str, owner: str, expires: int) -> str:
    message = f"{job_id}\0{owner}\0{expires}".encode()
    return _b64(hmac.new(key, message, hashlib.sha256).digest())


def issue(key: bytes, job_id: str, owner: str, now: float | None = None) -> tuple[str, int]:
    """A ticket for this job and owner, and when it expires (Unix seconds)."""
    expires = int(now if now is not None else time.time()) + TICKET_SECONDS
    ticket = f"{expires}.{_b64(owner.encode())}.{_signature(key, job_id, owner, expires)}"
    return ticket, expires


def owner_of(key: bytes, job_id: str, ticket: str, now: float | None = None) -> str:
    """The owner a valid, unexpired ticket for this job was issued to; 401 otherwise."""
    invalid = Unauthorized("invalid or expired stream ticket: ask for a new one")
    parts = ticket.split(".") if len(ticket) <= MAX_TICKET_CHARS else []
    if len(parts) != 3 or not parts[0].isascii() or not parts[0].isdigit():
        raise invalid
    try:
        owner = _unb64(parts[1]).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid from None
    expires = int(parts[0])
    expected = _signature(key, job_id, owner, expires)
    if not hmac.compare_digest(expected, parts[2]):
        raise invalid
    if (now if now is not None else time.time()) >= expires:
        raise invalid
    return owner
