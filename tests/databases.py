"""Throwaway PostgreSQL databases and Redis key spaces, for tests and benchmarks alike:
each is made for one run and removed afterwards. Raises if the server cannot be reached."""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def throwaway_postgres(admin_url: str, prefix: str) -> Iterator[str]:
    """Make a database through ``admin_url``, yield its URL, drop it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextmanager
def throwaway_redis_prefix(url: str, prefix: str) -> Iterator[str]:
    """Yield a key prefix of one's own on the Redis at ``url``; delete its keys afterwards."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.ping()
        key_prefix = f"{prefix}-{uuid.uuid4().hex[:12]}:"
        try:
            yield key_prefix
        finally:
            for key in client.scan_iter(match=f"{key_prefix}*"):
                client.delete(key)
    finally:
        client.close()
