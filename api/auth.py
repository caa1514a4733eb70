"""Bearer-token authentication: who is asking.

Every route but ``/healthz`` and the documentation needs ``Authorization: Bearer <token>``;
a missing, unknown or revoked token answers 401. A token's owner is remembered for
``token_cache_seconds`` (keyed by the token's hash), so the hot polling routes cost no
database read for it, and a revoked token stops working within that time.
"""

import time

from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from api.errors import Unauthorized
from store.db import session_scope
from store.users import authenticate, hash_token

bearer = HTTPBearer(
    auto_error=False,
    description="An API token: `descent tokens create USER` makes one; the embedded "
    "default (`descent serve`) writes the local user's token to `<data dir>/token`.",
)

MAX_TOKEN_CHARS = 200  # far above a real token; refuses junk before hashing it


class TokenCache:
    """token hash → (owner, expiry). Used from the event loop only: no lock needed."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl, self.max_entries = ttl, max_entries
        self._entries: dict[str, tuple[str, float]] = {}

    def get(self, digest: str) -> str | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        owner, expires = entry
        if time.monotonic() >= expires:
            del self._entries[digest]
            return None
        return owner

    def put(self, digest: str, owner: str) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # rare; cheaper than tracking the oldest
        self._entries[digest] = (owner, time.monotonic() + self.ttl)


def _lookup(token: str) -> str | None:
    with session_scope() as session:
        return authenticate(session, token)


async def owner_of(credentials: HTTPAuthorizationCredentials | None, cache: TokenCache) -> str:
    if credentials is None:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    token = credentials.credentials.strip()
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise Unauthorized("invalid or revoked token")
    digest = hash_token(token)
    owner = cache.get(digest)
    if owner is None:
        owner = await run_in_threadpool(_lookup, token)
        if owner is None:
            raise Unauthorized("invalid or revoked token")
        cache.put(digest, owner)
    return owner


# Documented on every operation (FastAPI(responses=...)); /healthz and the docs never ask.
AUTH_RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"description": "Missing, unknown or revoked bearer token"},
    503: {"description": "The database is unavailable"},
}
